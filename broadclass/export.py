"""Export a trained model as a standard HuggingFace folder: ``python -m broadclass.export <source> <out dir>``.

``<source>`` is a Lightning checkpoint, an exported folder, an MLflow run (id or name) or a ``models:/`` URI.
What the folder holds: ``broadclass.model.export``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from broadclass.model.checkpoint import ModelLoadError
from broadclass.model.export import export_model
from broadclass.tracking.run_model import load_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broadclass.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Lightning checkpoint, exported folder, or MLflow run id or name")
    parser.add_argument("out_dir", help="folder to write (must be empty or new)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty out_dir")
    args = parser.parse_args(argv)
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
