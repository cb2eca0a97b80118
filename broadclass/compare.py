"""``python -m broadclass.compare TARGET [out=…] [over=seed]``: runs side by side, and their mean ± std over
sets, printed as Markdown and written as Markdown and CSV (:mod:`broadclass.tracking.compare`).

TARGET is a sweep folder, an MLflow experiment name or a sweep id. ``python -m broadclass.report
compare=TARGET`` hands over to this command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.tracking.compare import CompareError, write_comparison


@dataclass
class CompareArguments:
    compare: str = argument(help="a sweep folder, an MLflow experiment name or a sweep id", positional=True)
    tracking_uri: str | None = argument(None, "default: $MLFLOW_TRACKING_URI, or the mlflow.db above the sweep")
    out: Path | None = argument(None, "a folder, or a .md file (CSVs beside it); default: the sweep folder")
    over: list[str] = argument([], "an override key to aggregate over too (e.g. seed); repeat for more")


def print_comparison(args: CompareArguments) -> int:
    """Print the comparison of ``args.compare`` and write its files; the exit status: 0, or 2 when there is
    nothing to compare."""
    try:
        markdown, written = write_comparison(args.compare, args.tracking_uri, args.out, args.over)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"Written: {', '.join(str(path) for path in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return print_comparison(parse_arguments(CompareArguments, argv, "python -m broadclass.compare", __doc__))


if __name__ == "__main__":
    sys.exit(main())
