"""``python -m broadclass.report <run id or run name>``: the Markdown model card of an MLflow run.

``--compare <experiment name or sweep dir>`` hands over to ``broadclass.tracking.compare`` (side-by-side
tables of several runs).
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
from broadclass.tracking.model_card import build_card

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
    parser.add_argument("run", nargs="?", help="MLflow run id or run name")
    parser.add_argument(
        "--compare",
        metavar="EXPERIMENT_OR_SWEEP_DIR",
        help="compare the runs of an MLflow experiment or a Hydra sweep instead (broadclass.tracking.compare)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db")
    parser.add_argument(
        "--out", type=Path, default=None, help="the card's file (default: stdout); with --compare, see compare"
    )
    parser.add_argument("--over", action="append", help="with --compare: an override key to aggregate over too")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.compare is None):
        parser.error("give either a run id or name, or --compare EXPERIMENT_OR_SWEEP_DIR")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
    if args.out is None:
        sys.stdout.write(card)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(card, encoding="utf-8")
        print(f"model card of run {run.info.run_id} ({run.info.run_name}) written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
