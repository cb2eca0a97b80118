"""Export a trained model as a standard HuggingFace folder: ``python -m broadclass.export <source> <out dir>``
(or ``source=<source> out_dir=<out dir>``; ``--help`` lists every key).

``<source>`` is a Lightning checkpoint, an exported folder, an MLflow run (id or name) or a ``models:/`` URI.
What the folder holds: ``broadclass.model.exported_folder``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from broadclass.arguments import argument, parse_arguments
from broadclass.model.exported_folder import export_model
from broadclass.model.format import ModelLoadError
from broadclass.tracking.run_model import load_model


@dataclass
class ExportArguments:
    source: str = argument(
        help="Lightning checkpoint, exported folder, MLflow run id or name, models:/ URI", positional=True
    )
    out_dir: str = argument(help="folder to write (must be empty or new)", positional=True)
    tracking_uri: str | None = argument(None, "default: $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db")
    overwrite: bool = argument(False, "replace the files of a non-empty out_dir")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(ExportArguments, argv, "python -m broadclass.export", __doc__.split("\n\n")[0])
    try:
        trained = load_model(args.source, tracking_uri=args.tracking_uri)
        if trained.module.category_head is not None:
            print("note: the category head is not exported (the HF format has no place for it)", file=sys.stderr)
        out = export_model(trained, args.out_dir, overwrite=args.overwrite)
    except (ModelLoadError, FileExistsError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"exported {args.source} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
