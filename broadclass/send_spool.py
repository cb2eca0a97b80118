"""``python -m broadclass.send_spool <spool_dir> [tracking_uri=<uri>] [timeout=60]``: send the MLflow records a
run kept in its ``mlflow_spool`` folder while its server was away or refused it (:mod:`broadclass.tracking.spool`).
Exit status 1 while records are still waiting."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.tracking.spool import upload


@dataclass
class SendSpoolArguments:
    spool_dir: Path = argument(help="the run's mlflow_spool folder", positional=True)
    tracking_uri: str | None = argument(None, "default: the run's own (from <spool_dir>/run.json)")
    timeout: float = argument(60.0, "seconds to keep trying")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(
        SendSpoolArguments,
        argv,
        "python -m broadclass.send_spool",
        "Send the MLflow records a run kept while its server was away.",
    )
    left = upload(args.spool_dir, args.tracking_uri, args.timeout)
    print(f"{left} record(s) still waiting in {args.spool_dir}" if left else f"all records sent from {args.spool_dir}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
