"""``python -m broadclass.report <run id or run name>``: the Markdown model card of an MLflow run.

``--compare <experiment name or sweep dir>`` hands over to ``broadclass.tracking.compare`` (side-by-side
tables of several runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from broadclass.tracking.model_card import build_card
from broadclass.tracking.store import RunLookupError, default_tracking_uri, find_run, open_store


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
