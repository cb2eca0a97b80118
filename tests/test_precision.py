"""16-mixed with the real fp16 loss scaler (the CUDA recipe's code path), run on a CPU with trainer=cpu_fp16.

Overflow steps are the scaler's job (skipped, scale halved, the run goes on); a non-finite loss is the
guard's; gradients are clipped in true units, after unscaling; the learning-rate schedule advances only
with the steps the optimizer took.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch

from broadclass.model.optimization import loss_scaler
from broadclass.train import train
from tests.helpers.faults import PoisonBatches, run_of, same

FP16 = [
    "trainer=cpu_fp16",
    "trainer.log_every_n_steps=1",
    "test_after_fit=false",
    "data.batch_size=4",
    "callbacks.export_model.enabled=false",
]


class StepRecorder(pl.Callback):
    """Per training batch: weights, loss scale and learning rate before it, and the gradient norm (true units)
    before clipping and as the optimizer stepped with it (read in a post-hook: without a scaler, Lightning runs the
    closure inside ``step()``). With ``overflow_at``, one gradient of that batch is set to inf after backward,
    as an fp16 overflow would."""

    steps: ClassVar[dict[int, dict]] = {}
    fused: ClassVar[bool | None] = None

    def __init__(self, overflow_at: int | None = None):
        self.overflow_at = overflow_at
        StepRecorder.steps = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        scaler = loss_scaler(trainer)
        StepRecorder.steps[batch_idx] = {
            "weights": {name: p.detach().clone() for name, p in pl_module.named_parameters()},
            "scale": scaler.get_scale() if scaler is not None else None,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if batch_idx == 0:
            trainer.optimizers[0].register_step_post_hook(self._at_optimizer_step)
            StepRecorder.fused = trainer.optimizers[0].defaults["fused"]
        self._batch = batch_idx

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._batch == self.overflow_at:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # after unscaling, before clipping
        StepRecorder.steps[self._batch]["norm_before_clipping"] = self._norm(optimizer)

    def _at_optimizer_step(self, optimizer, args, kwargs) -> None:
        StepRecorder.steps[self._batch]["norm_at_step"] = self._norm(optimizer)

    @staticmethod
    def _norm(optimizer) -> float:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads))


def recorded(train_config, *overrides: str):
    return train_config(*FP16, "+callbacks.recorder._target_=tests.test_precision.StepRecorder", *overrides)


def test_cpu_fp16_trainer_runs_fp16_autocast_with_a_loss_scaler(train_config):
    from hydra.utils import instantiate

    trainer = instantiate(train_config(*FP16).trainer, logger=False)
    scaler = loss_scaler(trainer)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert trainer.precision == "16-mixed" and trainer.precision_plugin.device == "cpu"


def test_an_fp16_overflow_is_skipped_by_the_scaler_which_halves_its_scale_and_the_run_goes_on(train_config):
    cfg = recorded(
        train_config,
        "+callbacks.recorder.overflow_at=3",
        "trainer.max_steps=6",
        "val_every_n_optimizer_steps=6",
        "model.warmup_steps=10",
    )
    train(cfg)
    steps = StepRecorder.steps
    assert sorted(steps) == list(range(6))  # training continued to the end
    assert same(steps[3]["weights"], steps[4]["weights"])  # the overflow step left every weight as it was
    assert steps[4]["scale"] == steps[3]["scale"] / 2
    assert steps[4]["lr"] == steps[3]["lr"]  # ... and did not move the warm-up on
    # A step the scaler took at a learning rate above 0 (the warm-up's first step has 0) changes the weights and
    # the learning rate and keeps the scale: the checks above can fail.
    clean = next(i for i in range(5) if steps[i]["lr"] > 0 and steps[i + 1]["scale"] == steps[i]["scale"])
    assert not same(steps[clean]["weights"], steps[clean + 1]["weights"])
    assert steps[clean + 1]["lr"] > steps[clean]["lr"]
    client, run = run_of(cfg)
    overflows = client.get_metric_history(run.info.run_id, "train/overflow_steps")
    assert (
        overflows[-1].value >= 1
        and dict((m.step, m.value) for m in overflows)[4] > dict((m.step, m.value) for m in overflows)[2]
    )
    assert {m.value for m in client.get_metric_history(run.info.run_id, "train/skipped_steps")} == {0.0}
    scales = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_scale")]
    assert len(scales) == 6 and scales[4] == scales[3] / 2
    assert run.info.status == "FINISHED"


def test_a_nan_loss_under_fp16_is_a_skipped_step_not_an_overflow(train_config):
    cfg = train_config(
        *FP16,
        "+callbacks.poison._target_=tests.helpers.faults.PoisonBatches",
        "+callbacks.poison.batches=[2]",
        "trainer.max_steps=4",
        "val_every_n_optimizer_steps=4",
        "model.warmup_steps=0",
    )
    train(cfg)
    assert same(PoisonBatches.weights[2], PoisonBatches.weights[3])
    client, run = run_of(cfg)
    skipped = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/skipped_steps")}
    assert (skipped[1], skipped[2]) == (0.0, 1.0)
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("precision", ["fp16", "bf16-mixed"])
def test_gradients_are_clipped_in_true_units_after_unscaling(train_config, precision):
    # fp16: through the loss scaler and a plain AdamW; bf16: no scaler, clipped by the module before a fused AdamW.
    extra = ["trainer.plugins=null", "trainer.precision=bf16-mixed"] if precision == "bf16-mixed" else []
    train(
        recorded(
            train_config,
            "trainer.gradient_clip_val=1.0",
            "trainer.max_steps=5",
            "val_every_n_optimizer_steps=5",
            *extra,
        )
    )
    assert StepRecorder.fused == (precision == "bf16-mixed")
    taken = [s for s in StepRecorder.steps.values() if "norm_at_step" in s]  # overflow steps never reach step()
    assert taken
    clipped = [s for s in taken if s["norm_before_clipping"] > 1.0]
    assert clipped, "no step had a gradient norm above 1.0: the test cannot tell clipping from no clipping"
    for step in taken:
        # Clipping scaled gradients would leave a true-unit norm of 1/scale, far below 1.0.
        assert step["norm_at_step"] == pytest.approx(min(step["norm_before_clipping"], 1.0), rel=1e-3)


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16"])
def test_the_optimizer_is_fused_only_without_a_loss_scaler(train_config, precision):
    from hydra.utils import instantiate

    overrides = ["trainer=cpu_fp16"] if precision == "fp16" else ["trainer.precision=bf16-mixed"]
    fused = {}
    for clip in (None, 1.0):
        cfg = train_config(*overrides, f"trainer.gradient_clip_val={'null' if clip is None else clip}")
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
        trainer = instantiate(cfg.trainer, logger=False, max_steps=1)
        trainer.strategy.connect(model)
        model.trainer = trainer
        fused[clip] = model.configure_optimizers()["optimizer"].defaults["fused"]
    assert fused == {None: precision == "bf16-mixed", 1.0: precision == "bf16-mixed"}
