"""DDP on CPU: the command of a two-process run and the check that it reports what one process does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

# Evaluation batches of 5 over 16 utterances (5, 5, 5, 1): the processes get 10 and 6 utterances, so
# a mean of per-process means would differ from the single-process number.
SHARED = [
    "trainer.max_steps=4",
    "val_every_n_optimizer_steps=4",
    "data.eval_batch_size=5",
    "trainer.precision=32-true",
    "test_after_fit=false",
    "~callbacks.export_model",
    "~callbacks.model_card",
]


def ddp_command(root: Path, corpus: dict[str, Path], *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "broadclass.train",
        "+experiment=demo",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"paths.root_dir={root}",
        f"data.train_manifest={corpus['train']}",
        f"data.val_manifest={corpus['validation']}",
        "data.manifests_from=null",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]


def assert_single_process_report(client, run, folder: Path, train_config, tmp_path: Path) -> None:
    """The DDP run's logged validation report (``SHARED``'s step 4) equals one process validating its checkpoint."""
    ddp = {key: value for key, value in run.data.metrics.items() if key.startswith("val/")}
    # The same checkpoint, validated by one process on the same data.
    cfg = train_config(*SHARED)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False)
    trainer.validate(model, datamodule=datamodule, ckpt_path=folder / "checkpoints" / "step000004.ckpt", verbose=False)
    # As logged: Lightning hands loggers float32 values.
    single = {key: float(np.float32(value)) for key, value in model.last_evaluation.metrics.items()}

    assert set(ddp) == set(single)
    assert ddp.pop("val/loss") == pytest.approx(single.pop("val/loss"), rel=1e-6)  # float sums, other order
    assert ddp == single  # counts summed across processes: exactly the single-process report
    predictions = client.download_artifacts(run.info.run_id, "val/step_000004/predictions.jsonl", str(tmp_path))
    ids = [json.loads(line)["id"] for line in Path(predictions).read_text().splitlines()]
    assert sorted(ids) == sorted(row["id"] for row in datamodule.datasets["validation"].rows)
