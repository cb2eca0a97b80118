"""Hydra multiruns as the user runs them, and the cross-validation sets they sweep over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broadclass.data.manifest import read_manifest, write_manifest
from broadclass.data.sets import prepare_sets

DEMO_CATEGORIES = (
    "data.categories=[{name: male, tag: m}, {name: female, tag: f}, {name: whisper, tag: w}, {name: creaky, tag: c}]"
)


def multirun(root: Path, *overrides: str) -> Path:
    """``python -m broadclass.train -m ...`` with everything under ``root``; returns the sweep folder.

    That is the folder where the sweeper writes its record (``multirun.yaml``; Optuna's
    ``optimization_results.yaml``): the one Hydra prints, named after the base config's experiment.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "broadclass.train", "-m", f"paths.root_dir={root}", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    names = ("multirun.yaml", "optimization_results.yaml")
    records = [path for name in names for path in root.glob(f"outputs/*/multiruns/*/{name}")]
    assert len(records) == 1, records
    return records[0].parent


def demo_multirun(root: Path, corpus: dict[str, Path], *overrides: str) -> Path:
    """A multirun of the demo experiment on the tests' small corpus (manifests given, none made)."""
    return multirun(
        root,
        "+experiment=demo",
        f"data.train_manifest={corpus['train']}",
        f"data.val_manifest={corpus['validation']}",
        "data.manifests_from=null",
        *overrides,
    )


def prepare_demo_sets(root: Path, corpus: dict[str, Path], n_sets: int) -> Path:
    """``n_sets`` cross-validation sets of 32 demo utterances in ``root/sets`` (``paths.sets_dir``)."""
    rows = read_manifest(corpus["train"])[:32]  # 8 per category, several speakers each
    write_manifest(
        root / "corpus.jsonl", [{k: r[k] for k in ("audio_filepath", "phones", "category", "speaker")} for r in rows]
    )
    prepare_sets(root / "corpus.jsonl", root / "sets", n_sets=n_sets)
    return root / "sets"
