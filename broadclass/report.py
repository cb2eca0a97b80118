"""``python -m broadclass.report <run id or run name>``: the Markdown model card of an MLflow run.

``compare=<experiment name or sweep dir>`` hands over to ``python -m broadclass.compare`` (side-by-side
tables of several runs). ``compare=A B`` with two runs (ids or names) scored on the same utterances:
their bootstrap intervals side by side and the paired tests (McNemar on the category decisions, a paired
bootstrap on TER), on the evaluation both logged (the test where both have one, else the best validation), and
the error browser of both runs side by side, opened on the utterances where they disagree (``<out
stem>.error_browser.html``, or ``outputs/comparison/<A>_vs_<B>/error_browser.html``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.tracking.error_analysis import paired_runs_markdown
from broadclass.tracking.error_browser import ARTIFACT, BrowserLimits, comparison_page, write_page
from broadclass.tracking.run_card import RunRecord, build_card, evaluation_predictions, evaluations_of
from broadclass.tracking.store import RunLookupError, default_tracking_uri, find_run, open_store


@dataclass
class ReportArguments:
    run: str | None = argument(None, "MLflow run id or run name (with compare=RUN: the second run)", positional=True)
    compare: str | None = argument(
        None,
        "compare the runs of an MLflow experiment or a Hydra sweep folder instead (python -m broadclass.compare); "
        "with a run: two runs on the same utterances, with paired tests",
    )
    tracking_uri: str | None = argument(None, "default: $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db")
    out: Path | None = argument(
        None, "the card's file (default: stdout); with compare, see python -m broadclass.compare"
    )
    over: list[str] = argument([], "with compare: an override key to aggregate over too; repeat for more")


def parse_args(argv: Sequence[str] | None = None) -> ReportArguments:
    args = parse_arguments(ReportArguments, argv, "python -m broadclass.report", __doc__)
    if args.run is None and args.compare is None:
        what = "a run id or name, compare=EXPERIMENT_OR_SWEEP_DIR, or compare=RUN_A RUN_B"
        print(f"python -m broadclass.report: error: give {what} (see --help)", file=sys.stderr)
        raise SystemExit(2)
    return args


def shared_evaluations(records: Sequence[RunRecord]) -> list[tuple[str, dict]]:
    """(folder, report.json) of each run's test when all have one, else of each best validation."""
    per_run = [{report["stage"]: (folder, report) for _, folder, report in evaluations_of(r)} for r in records]
    for stage in ("test", "val"):
        if all(stage in evaluations for evaluations in per_run):
            return [evaluations[stage] for evaluations in per_run]
    names = ", ".join(r.name for r, evaluations in zip(records, per_run, strict=True) if not evaluations)
    raise RunLookupError(f"the runs have no evaluation in common to pair (none logged by: {names or 'none'})")


def compare_two_runs(args: ReportArguments) -> tuple[str, dict]:
    """The paired comparison of ``compare=A B`` as Markdown, and the error browser's data of the two runs."""
    client = open_store(args.tracking_uri or default_tracking_uri())
    records = [RunRecord.load(client, find_run(client, ref).info.run_id) for ref in (args.compare, args.run)]
    parts, evaluations = [], []
    for record, (folder, report) in zip(records, shared_evaluations(records), strict=True):
        predictions = evaluation_predictions(record, folder)
        if not predictions:
            raise RunLookupError(f"run {record.name} logged no {folder}/predictions.jsonl")
        parts += [record.name, report, predictions]
        evaluations.append((record, folder, report, predictions))
    return paired_runs_markdown(*parts), comparison_page(evaluations, BrowserLimits.from_config())


def comparison_page_path(args: ReportArguments) -> Path:
    """Beside ``out=`` (``<stem>.error_browser.html``), else in ``outputs/comparison/<A>_vs_<B>/``."""
    if args.out is not None:
        return args.out.with_suffix(".error_browser.html")
    from broadclass.tracking.compare import default_out  # pandas, as in main

    return default_out(f"{args.compare}_vs_{args.run}") / ARTIFACT


def write_or_print(text: str, out: Path | None, what: str) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"{what} written to {out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None and args.run is not None:
        try:
            comparison, page = compare_two_runs(args)
        except (RunLookupError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        write_or_print(comparison, args.out, f"comparison of {args.compare} and {args.run}")
        written = write_page(comparison_page_path(args), page)
        print(f"error browser of both runs (where they disagree) written to {written}", file=sys.stderr)
        return 0
    if args.compare is not None:
        # Imported here: the comparison pulls in what only it needs (pandas). It finds its own default store
        # (the mlflow.db above a sweep folder), so tracking_uri may be None.
        from broadclass.compare import CompareArguments, print_comparison

        return print_comparison(CompareArguments(args.compare, args.tracking_uri, args.out, args.over))
    try:
        client = open_store(args.tracking_uri or default_tracking_uri())
        run = find_run(client, args.run)
    except RunLookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    card = build_card(client, run.info.run_id)
    write_or_print(card, args.out, f"model card of run {run.info.run_id} ({run.info.run_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
