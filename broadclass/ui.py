"""``python -m broadclass.ui <tracking URI> <UI URL>``: print each experiment's training-runs page in the MLflow
UI (runs table, chart view and compare view start there). ``make ui`` prints them before it starts the UI."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from broadclass.arguments import argument, parse_arguments
from broadclass.tracking.ui import experiment_pages


@dataclass
class UiArguments:
    tracking_uri: str = argument(help="the store, e.g. sqlite:///<project>/mlflow.db", positional=True)
    ui_url: str = argument(help="where the UI serves, e.g. http://127.0.0.1:5000", positional=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(UiArguments, argv, "python -m broadclass.ui", __doc__)
    pages = experiment_pages(args.tracking_uri, args.ui_url)
    print("Training runs, per experiment:" if pages else f"No runs yet in {args.tracking_uri}.")
    print("\n".join(f"  {page}" for page in pages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
