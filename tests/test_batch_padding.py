"""Batch lengths rounded up to a few lengths per octave, so that batch shapes repeat (CPU kernel reuse)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from broadclass.data.datamodule import collate, padded_length
from tests.helpers.config import compose_config, demo_overrides
from tests.helpers.processes import REPO

KERNEL_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def kernel_cache_after_import(environment_value: str | None) -> str:
    """The oneDNN kernel cache a fresh interpreter has after ``import broadclass``."""
    env = {k: v for k, v in os.environ.items() if k != KERNEL_CACHE}
    if environment_value is not None:
        env[KERNEL_CACHE] = environment_value
    code = f"import os, broadclass; print(os.environ['{KERNEL_CACHE}'])"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_importing_broadclass_keeps_the_kernels_of_every_padded_shape_and_a_users_own_setting():
    # oneDNN keeps 1,024 kernels by default: fewer than the padded grid's training and evaluation shapes need, so
    # the grid's shapes were rebuilt again and again (experiments/throughput/README.md).
    assert int(kernel_cache_after_import(None)) == 8192
    assert kernel_cache_after_import("2048") == "2048"


def item(n_samples: int) -> dict:
    return {"input_values": np.ones(n_samples, np.float32), "labels": [2], "category": 0, "id": str(n_samples)}


def test_padded_length_adds_at_most_a_sixteenth_and_gives_sixteen_lengths_per_octave():
    lengths = np.arange(2**14 + 1, 2**15 + 1)  # one octave, about 1 to 2 s at 16 kHz
    padded = np.array([padded_length(int(n), 16) for n in lengths])
    assert (padded >= lengths).all()
    assert ((padded - lengths) / lengths).max() <= 1 / 16
    # Few distinct shapes is the point: every new shape makes oneDNN build kernels again.
    assert len(set(padded)) == 16


def test_padded_length_zero_keeps_the_length():
    assert padded_length(12_345, 0) == 12_345


def test_collate_pads_to_the_rounded_length_and_masks_only_real_samples():
    batch = collate([item(1025), item(1000)], lengths_per_octave=16)
    assert batch["input_values"].shape == (2, 1088)  # 1025 → next multiple of 1024/16
    assert batch["attention_mask"].sum(dim=1).tolist() == [1025, 1000]
    assert batch["input_values"][0, 1025:].abs().sum() == 0


def test_datamodule_rejects_a_count_that_is_not_a_power_of_two(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=demo", "data.padded_lengths_per_octave=12"])
    with pytest.raises(InstantiationException, match="power of two"):
        instantiate(cfg.data)


def test_training_batches_of_the_demo_config_are_padded_to_the_configured_lengths(tmp_path, demo_corpus):
    # The wiring: the configured count reaches the loader's collate function.
    cfg = compose_config(tmp_path, demo_overrides(demo_corpus))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    for batch in datamodule.train_dataloader():
        longest = int(batch["attention_mask"].sum(dim=1).max())
        assert batch["input_values"].shape[1] == padded_length(longest, cfg.data.padded_lengths_per_octave)
