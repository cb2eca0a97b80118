"""The reference recipe: +experiment=onSet1 composes to the published run's settings; onSetK only moves the set."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from broadclass.config import ConfigError
from broadclass.model.encoder import is_checkpointing_activations
from broadclass.train import train
from tests.helpers.config import SMALL_XLSR, compose_config


def plain(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra")
    return container


def test_onset1_has_every_setting_of_the_published_run(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1"])
    model, trainer, data = cfg.model, cfg.trainer, cfg.data
    assert model.pretrained == "facebook/wav2vec2-large-xlsr-53"
    assert model._target_ == "broadclass.model.module.BroadClassModule"  # wav2vec2 + CTC head
    assert model.freeze_feature_encoder is True
    assert model.lr == 3e-4
    assert (list(model.betas), model.eps, model.weight_decay) == ([0.9, 0.999], 1e-8, 0.0)  # Adam
    assert model.warmup_steps == 200  # linear warm-up, then linear decay (the module's only schedule)
    assert (data.batch_size, data.eval_batch_size, trainer.accumulate_grad_batches) == (8, 8, 2)
    assert (trainer.max_epochs, trainer.max_steps) == (70, -1)
    assert cfg.seed == 42 and data.seed == 42
    assert (trainer.accelerator, trainer.precision) == ("gpu", "16-mixed")
    # Every 100 optimizer steps = every 200 training batches at accumulation 2.
    assert cfg.val_every_n_optimizer_steps == 100 and trainer.val_check_interval == 200
    assert data.manifests_from.set_name == "set1" and cfg.run_name == "model_broadclass_onSet1"
    assert model.primary_rule == "vote"
    # The sets are read from the project's data/sets; the categories (4 in the published run) are required.
    assert data.manifests_from.set_dir == str(tmp_path / "data" / "sets")
    assert {k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")} == {"data.categories"}


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_onset_k_differs_from_onset1_only_in_its_set(tmp_path, k):
    first = plain(compose_config(tmp_path, ["+experiment=onSet1"]))
    other = plain(compose_config(tmp_path, [f"+experiment=onSet{k}"]))
    assert other["data"]["manifests_from"].pop("set_name") == f"set{k}"
    assert other.pop("run_name") == f"model_broadclass_onSet{k}"
    first["data"]["manifests_from"].pop("set_name")
    first.pop("run_name")
    assert other == first


def test_onset1_as_written_stops_before_training_naming_the_values_to_set(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1"])
    with pytest.raises(ConfigError, match=r"not set \(\?\?\?\): data\.categories$"):
        train(cfg)


def test_trainer_cpu_on_the_command_line_replaces_the_recipe_gpu_trainer(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1", "trainer=cpu"])
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("cpu", "bf16-mixed")
    assert cfg.trainer.accumulate_grad_batches == 2  # the recipe's own trainer settings stay


def test_set_manifests_come_from_the_set_folder_named_by_the_experiment(tmp_path):
    folder = tmp_path / "sets" / "set3"
    folder.mkdir(parents=True)
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").touch()
    cfg = compose_config(tmp_path, ["+experiment=onSet3", f"paths.sets_dir={tmp_path / 'sets'}"])
    # data.manifests_from is what the datamodule calls in prepare_data for the manifest paths.
    assert instantiate(cfg.data.manifests_from)() == {s: folder / f"{s}.jsonl" for s in ("train", "validation")}


def test_onset1_clips_as_the_hf_trainer_does_and_checkpoints_gradients(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1"])
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm) == (1.0, "norm")  # max_grad_norm
    assert cfg.model.gradient_checkpointing is True


def test_onset1_with_another_model_takes_that_models_weights(tmp_path):
    # The recipe states no model values of its own but the primary rule: model=tiny is the tiny model.
    cfg = compose_config(tmp_path, ["+experiment=onSet1", "model=tiny"])
    assert cfg.model.pretrained is None and cfg.model.config.model_type == "wav2vec2-conformer"
    assert cfg.model.primary_rule == "vote"


def test_the_recipe_network_recomputes_activations_with_layerdrop_and_a_frozen_feature_encoder(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1", "data.categories=[{name: a, tag: a}]", *SMALL_XLSR])
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map).train()
    assert is_checkpointing_activations(model.net)
    assert model.net.config.do_stable_layer_norm and model.net.config.feat_extract_norm == "layer"
    torch.manual_seed(0)
    audio = torch.randn(2, 16_000)
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[1, 12_000:] = 0
    out = model(audio, mask)
    out["logits"].float().logsumexp(-1).sum().backward()
    encoder_grads = [p.grad for p in model.net.base_model.encoder.parameters() if p.grad is not None]
    assert encoder_grads and all(torch.isfinite(g).all() for g in encoder_grads)
    assert all(p.grad is None and not p.requires_grad for p in model.net.base_model.feature_extractor.parameters())
