"""The learning-rate schedule of BroadClassModule.configure_optimizers: linear warm-up, then linear decay to 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import get_linear_schedule_with_warmup

from broadclass.data.labels import LabelMap
from tests.helpers.config import TEST_MODEL, compose_config


def learning_rates(tmp_path, total: int, warmup: int) -> tuple[list[float], float, torch.optim.Optimizer]:
    """The rate of every optimizer step of a run of ``total`` steps, and the rate after the last one."""
    cfg = compose_config(tmp_path, ["+experiment=demo", *TEST_MODEL, f"model.warmup_steps={warmup}", "model.lr=0.01"])
    labels = LabelMap.from_config(OmegaConf.to_container(cfg.labels, resolve=True), cfg.data.categories)
    module = instantiate(cfg.model, _partial_=True)(labels=labels)
    # What configure_optimizers reads of the trainer: the run's optimizer steps, and no fp16 loss scaler.
    module._trainer = SimpleNamespace(estimated_stepping_batches=total, precision_plugin=SimpleNamespace())
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates, optimizer.param_groups[0]["lr"], optimizer


def test_linear_warm_up_then_linear_decay_to_exactly_zero_after_the_last_step(tmp_path):
    rates, after, _ = learning_rates(tmp_path, total=10, warmup=3)
    by_hand = [0, 1 / 3, 2 / 3, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7]
    assert rates == pytest.approx([0.01 * f for f in by_hand], abs=1e-12)
    assert after == 0.0  # exactly: the schedule ends at 0, it does not go negative or stop short


@pytest.mark.parametrize(("total", "warmup"), [(10, 3), (7, 0), (5, 5), (4, 200)])
def test_the_schedule_is_the_hf_trainers_linear_schedule(tmp_path, total, warmup):
    rates, after, _ = learning_rates(tmp_path, total, warmup)
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    # The HF Trainer's warm-up is capped at the run's length, as ours is.
    hf = get_linear_schedule_with_warmup(reference, min(warmup, total), total)
    expected = []
    for _ in range(total):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        hf.step()
    assert rates == pytest.approx(expected, abs=1e-12)
    assert after == reference.param_groups[0]["lr"] == 0.0
