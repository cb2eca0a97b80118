"""``python -m broadclass.report <run id or run name>``: the Markdown model card of an MLflow run.

``--compare <experiment name or sweep dir>`` hands over to ``broadclass.tracking.compare`` (side-by-side
tables of several runs). ``--compare A B`` with two runs (ids or names) scored on the same utterances:
their bootstrap intervals side by side and the paired tests (McNemar on the category decisions, a paired
bootstrap on TER), on the evaluation both logged (the test where both have one, else the best validation).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from broadclass.config import _project_root
from broadclass.tracking.error_analysis import paired_runs_markdown
from broadclass.tracking.model_card import RunRecord, build_card, evaluation_predictions, evaluations_of

RUN_ID = re.compile(r"[0-9a-f]{32}")


class RunLookupError(LookupError):
    pass


def default_tracking_uri() -> str:
    """What training logs to by default (conf/logger/mlflow.yaml): $MLFLOW_TRACKING_URI or ./mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(_project_root()).resolve()}/mlflow.db"


def open_store(uri: str) -> MlflowClient:
    """A client for ``uri``; a SQLite file that does not exist is an error (MLflow would create an empty one)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise RunLookupError(f"no MLflow store at {path} (tracking URI {uri}); pass --tracking-uri")
    return MlflowClient(uri)


def _describe(client: MlflowClient, run: Run) -> str:
    started = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    experiment = client.get_experiment(run.info.experiment_id).name
    return f"  {run.info.run_id}  experiment {experiment!r}, started {started}, {run.info.status}"


def find_run(client: MlflowClient, ref: str) -> Run:
    """The run whose id or name is ``ref``; a name shared by several runs is an error listing their ids."""
    if RUN_ID.fullmatch(ref):
        try:
            return client.get_run(ref)
        except MlflowException:
            pass  # a 32-hex-digit run *name* is possible
    quote = next((q for q in ("'", '"') if q not in ref), None)
    if quote is None:
        raise RunLookupError(f"run name {ref!r} contains both quote characters: give the run id instead")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = {quote}{ref}{quote}")
    if not runs:
        raise RunLookupError(f"no run with id or name {ref!r} in {client.tracking_uri}")
    if len(runs) > 1:
        listing = "\n".join(_describe(client, run) for run in runs)
        raise RunLookupError(f"{len(runs)} runs are named {ref!r}; give one of their ids:\n{listing}")
    return runs[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m broadclass.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="MLflow run id or run name (with --compare RUN: the second run)")
    parser.add_argument(
        "--compare",
        metavar="EXPERIMENT_OR_SWEEP_DIR",
        help="compare the runs of an MLflow experiment or a Hydra sweep instead (broadclass.tracking.compare); "
        "--compare RUN_A RUN_B: two runs on the same utterances, with paired tests",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db")
    parser.add_argument(
        "--out", type=Path, default=None, help="the card's file (default: stdout); with --compare, see compare"
    )
    parser.add_argument("--over", action="append", help="with --compare: an override key to aggregate over too")
    args = parser.parse_args(argv)
    if args.run is None and args.compare is None:
        parser.error("give a run id or name, --compare EXPERIMENT_OR_SWEEP_DIR, or --compare RUN_A RUN_B")
    return args


def shared_evaluations(records: Sequence[RunRecord]) -> list[tuple[str, dict]]:
    """(folder, report.json) of each run's test when all have one, else of each best validation."""
    per_run = [{report["stage"]: (folder, report) for _, folder, report in evaluations_of(r)} for r in records]
    for stage in ("test", "val"):
        if all(stage in evaluations for evaluations in per_run):
            return [evaluations[stage] for evaluations in per_run]
    names = ", ".join(r.name for r, evaluations in zip(records, per_run, strict=True) if not evaluations)
    raise RunLookupError(f"the runs have no evaluation in common to pair (none logged by: {names or 'none'})")


def compare_two_runs(args: argparse.Namespace) -> str:
    """The paired comparison of ``--compare A B`` as Markdown."""
    client = open_store(args.tracking_uri or default_tracking_uri())
    records = [RunRecord.load(client, find_run(client, ref).info.run_id) for ref in (args.compare, args.run)]
    parts = []
    for record, (folder, report) in zip(records, shared_evaluations(records), strict=True):
        predictions = evaluation_predictions(record, folder)
        if not predictions:
            raise RunLookupError(f"run {record.name} logged no {folder}/predictions.jsonl")
        parts += [record.name, report, predictions]
    return paired_runs_markdown(*parts)


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
            comparison = compare_two_runs(args)
        except (RunLookupError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        write_or_print(comparison, args.out, f"comparison of {args.compare} and {args.run}")
        return 0
    if args.compare is not None:
        # Imported here: the comparison is its own module and pulls in what only it (pandas) needs. It
        # finds its own default store (the mlflow.db above a sweep folder), so tracking_uri may be None.
        from broadclass.tracking import compare

        return compare.main(args)
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
