"""Self-supervised pretraining (python -m broadclass.pretrain): the task (masks and negatives inside each
utterance's own frames, drawn per utterance), the Gumbel temperature per optimizer step across resumes and
accumulation, learning without codebook collapse, the encoder folder fine-tuned by train (folder and models:/),
continued pretraining of an XLSR-layout checkpoint, the architecture guard, fp16 and the logged metrics."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from safetensors.torch import load_file

from broadclass.model.pretraining import (
    gumbel_temperature,
    read_provenance,
    sample_negatives,
    sample_time_masks,
    utterance_generators,
)
from tests.helpers.config import TEST_MODEL, compose_config
from tests.helpers.pretraining import csv_metrics, data_overrides
from tests.helpers.processes import REPO, environment
from tests.helpers.resume import histories

# The test model with a small codebook (2 groups of 8 code vectors) and 10 distractors per masked frame.
PRETRAIN_MODEL = [
    "pretraining=tiny_contrastive",
    *TEST_MODEL,
    "model.config.codevector_dim=16",
    "model.config.proj_codevector_dim=16",
    "model.config.num_codevectors_per_group=8",
    "model.num_negatives=10",
]
CODEBOOK = 2 * 8


def pretrain_overrides(corpus: dict[str, Path]) -> list[str]:
    """python -m broadclass.pretrain on the small corpus (audio only) with the test model."""
    return [*data_overrides(corpus), *PRETRAIN_MODEL]


@pytest.fixture
def pretrain_config(tmp_path, demo_corpus, empty_mlflow_db):
    """Factory: the pretraining config on the small corpus with the test model, into ``tmp_path/root``."""

    def make(*overrides: str, root: Path | None = None, model: list[str] = PRETRAIN_MODEL):
        root = root or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "mlflow.db").exists():
            shutil.copy(empty_mlflow_db, root / "mlflow.db")
        return compose_config(root, [*data_overrides(demo_corpus), *model, *overrides], config_name="pretrain")

    return make


# ---- 1. masks and negatives ------------------------------------------------------------------------------


def check_draw(masks: np.ndarray, negatives: np.ndarray, lengths, num_negatives: int) -> None:
    """Nothing masked at or past an utterance's length; every masked frame's negatives are other frames of its
    own utterance (never itself, never padding, never another utterance's)."""
    batch, width = masks.shape
    assert negatives.shape == (batch, width, num_negatives)
    for row, length in enumerate(lengths):
        assert not masks[row, length:].any(), f"masked padding: row {row}, length {length}"
        for frame in np.flatnonzero(masks[row]):
            drawn = negatives[row, frame] - row * width  # frame indices within the utterance
            assert ((drawn >= 0) & (drawn < length)).all(), (row, frame, length, drawn)
            assert (drawn != frame).all(), f"row {row}: frame {frame} is its own negative"


def test_masks_and_negatives_stay_inside_each_utterances_own_frames():
    meta = np.random.default_rng(0)
    for draw in range(500):
        batch = int(meta.integers(1, 6))
        # Very short utterances (1, 2, fewer frames than a span) as often as long ones.
        lengths = [int(meta.choice([1, 2, 3, 9, 10, 11, int(meta.integers(1, 300))])) for _ in range(batch)]
        width = max(lengths) + int(meta.integers(0, 20))
        rngs = utterance_generators(7, draw, [f"utt{draw}-{i}" for i in range(batch)])
        masks = sample_time_masks(lengths, width, 0.65, 10, 2, rngs)
        negatives = sample_negatives(masks, lengths, 10, rngs)
        check_draw(masks, negatives, lengths, 10)
        for row, length in enumerate(lengths):
            if length >= 2:  # every utterance with frames to contrast has a task (mask_min_spans)
                assert masks[row].any(), (row, length)


def test_the_masked_share_is_wav2vec2s():
    """wav2vec 2.0 (mask_prob 0.65, spans of 10 frames, overlapping) masks about half of the frames."""
    lengths = [500, 800, 1000, 1200]
    shares = []
    for step in range(50):
        rngs = utterance_generators(0, step, ["a", "b", "c", "d"])
        masks = sample_time_masks(lengths, 1200, 0.65, 10, 2, rngs)
        shares += [masks[row, :length].mean() for row, length in enumerate(lengths)]
    assert 0.4 < np.mean(shares) < 0.6, np.mean(shares)
    assert 0.3 < min(shares) and max(shares) < 0.7, (min(shares), max(shares))


@pytest.fixture
def pretraining_module_and_batch(pretrain_config):
    cfg = pretrain_config("logger=csv")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    # Make some utterances very short (1, 2 and 5 frames: fewer than a span), padded like the rest.
    for row, samples in {1: 400, 3: 720, 5: 400 + 4 * 320}.items():
        batch["attention_mask"][row, samples:] = 0
        batch["input_values"][row, samples:] = 0.0
    return instantiate(cfg.model), batch


def test_the_task_of_a_real_padded_batch_never_falls_on_padding(pretraining_module_and_batch):
    module, batch = pretraining_module_and_batch
    frames = module.net._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).tolist()
    assert frames[1] == 1 and frames[3] == 2 and frames[5] == 5
    assert len(set(frames)) > 3  # really padded
    for step in [None, *range(500)]:
        lengths, masks, negatives = module.draw_task(batch, step)
        assert lengths.tolist() == frames
        check_draw(masks.numpy(), negatives.numpy(), frames, module.hparams.num_negatives)


def test_an_utterances_task_does_not_depend_on_its_batch(pretraining_module_and_batch):
    module, batch = pretraining_module_and_batch
    lengths, masks, negatives = module.draw_task(batch, 3)
    width = masks.shape[1]
    for row, utt in enumerate(batch["ids"]):
        samples = int(batch["attention_mask"][row].sum())
        alone = {"ids": [utt], "attention_mask": batch["attention_mask"][row : row + 1, :samples]}
        _, alone_mask, alone_negatives = module.draw_task(alone, 3)
        length = int(lengths[row])
        assert torch.equal(alone_mask[0, :length], masks[row, :length]), utt
        assert torch.equal(alone_negatives[0, :length] + row * width, negatives[row, :length]), utt
    # Another step draws another task; validation (step None) draws the same one at every call.
    assert not torch.equal(module.draw_task(batch, 4)[1], masks)
    first, again = module.draw_task(batch, None), module.draw_task(batch, None)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], masks)


# ---- 2. the Gumbel temperature ---------------------------------------------------------------------------


class TemperatureRecorder(pl.Callback):
    """Per training batch, the optimizer step and the quantizer's temperature the batch was trained at."""

    seen: ClassVar[list[tuple[int, float]]] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        TemperatureRecorder.seen.append((int(trainer.global_step), float(pl_module.net.quantizer.temperature)))


# A fast decay, so a few steps reach the floor (0.5 from step 7 on).
SCHEDULE = dict(start=2.0, end=0.5, decay=0.8)
TEMPERATURE_RUN = [
    "logger=csv",
    "~callbacks.save_encoder",
    "trainer.precision=32-true",
    f"model.gumbel_temperature=[{SCHEDULE['start']},{SCHEDULE['end']}]",
    f"model.gumbel_decay={SCHEDULE['decay']}",
    "+callbacks.temperatures._target_=tests.test_pretraining.TemperatureRecorder",
]


def logged_temperatures(cfg) -> dict[int, float]:
    """train/gumbel_temperature by step, over every CSV version of the run folder (a resume writes a new one)."""
    logged: dict[int, list[float]] = {}
    for path in sorted(Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")):
        rows = pd.read_csv(path).dropna(subset=["train/gumbel_temperature"])
        for step, value in zip(rows["step"], rows["train/gumbel_temperature"], strict=True):
            logged.setdefault(int(step), []).append(float(value))
    return {step: values[-1] for step, values in logged.items()}


def test_the_temperature_follows_its_schedule_per_optimizer_step_across_a_resume(pretrain_config):
    from broadclass.pretrain import pretrain
    from broadclass.training.resume import find_resume_point

    overrides = [*TEMPERATURE_RUN, "trainer.max_steps=10", "val_every_n_optimizer_steps=5"]
    overrides += ["checkpoint_every_n_optimizer_steps=3", "+callbacks.crash._target_=tests.helpers.resume.CrashAt"]
    TemperatureRecorder.seen = []
    cfg = pretrain_config(*overrides, "+callbacks.crash.at_step=7")
    with pytest.raises(RuntimeError, match="crash at step 7"):
        pretrain(cfg)
    assert [step for step, _ in TemperatureRecorder.seen] == list(range(7))
    resumed_from = torch.load(find_resume_point(cfg.paths.output_dir, "auto").checkpoint, weights_only=False)
    resumed_from = resumed_from["global_step"]
    assert 0 < resumed_from < 7

    TemperatureRecorder.seen = []
    cfg = pretrain_config(*overrides, "+callbacks.crash.at_step=99")
    pretrain(cfg)
    steps = [step for step, _ in TemperatureRecorder.seen]
    assert steps == list(range(resumed_from, 10)), steps  # continued, not from step 0
    for step, temperature in TemperatureRecorder.seen:  # the quantizer's, at the resumed steps too
        assert temperature == pytest.approx(gumbel_temperature(step, **SCHEDULE), rel=1e-6), step
    logged = logged_temperatures(cfg)
    assert sorted(logged) == list(range(10))
    expected = {step: max(2.0 * 0.8**step, 0.5) for step in range(10)}
    assert logged == pytest.approx(expected, rel=1e-6)
    assert logged[9] == 0.5 and logged[1] == pytest.approx(1.6)


def test_with_gradient_accumulation_the_temperature_advances_per_optimizer_step(pretrain_config):
    from broadclass.pretrain import pretrain

    TemperatureRecorder.seen = []
    cfg = pretrain_config(
        *TEMPERATURE_RUN, "trainer.max_steps=4", "val_every_n_optimizer_steps=4", "trainer.accumulate_grad_batches=2"
    )
    pretrain(cfg)
    assert [step for step, _ in TemperatureRecorder.seen] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [t for _, t in TemperatureRecorder.seen] == pytest.approx([2.0, 2.0, 1.6, 1.6, 1.28, 1.28, 1.024, 1.024])
    assert logged_temperatures(cfg) == pytest.approx({0: 2.0, 1: 1.6, 2: 1.28, 3: 1.024})


# ---- 3. learning, without codebook collapse; 7. the metrics logged ----------------------------------------

# 50 optimizer steps (~10 s), validated every 10 on the same draw. Measured (bf16-mixed on CPU): val/contrastive_loss
# 2.70 at step 10, 2.36-2.38 from step 40 on (chance, ln 11, is 2.40); val/perplexity 11-16 of at most 16.
LEARNING_RUN = ["logger=csv", "trainer.max_steps=50", "val_every_n_optimizer_steps=10"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, demo_corpus):
    from broadclass.pretrain import pretrain

    root = tmp_path_factory.mktemp("csv_run")
    cfg = compose_config(root, [*pretrain_overrides(demo_corpus), *LEARNING_RUN], config_name="pretrain")
    pretrain(cfg)
    return cfg


def test_the_loss_falls_and_the_codebook_does_not_collapse(csv_run):
    val = csv_metrics(csv_run).dropna(subset=["val/contrastive_loss"]).sort_values("step")
    assert val["step"].tolist() == [10, 20, 30, 40, 50]
    loss = val["val/contrastive_loss"].tolist()
    assert loss[-1] < loss[0] - 0.2, loss
    assert min(loss) < math.log(1 + 10) + 0.05, loss  # about chance or better, not confidently wrong
    # Collapse would be one code vector per group: a perplexity of 2 (of at most 16).
    assert (val["val/perplexity"] >= CODEBOOK / 4).all(), val["val/perplexity"].tolist()
    assert (val["val/code_usage"] >= 0.5).all(), val["val/code_usage"].tolist()


def test_the_csv_logger_writes_every_pretraining_metric(csv_run):
    metrics = csv_metrics(csv_run)
    train_keys = ["train/loss", "train/contrastive_loss", "train/diversity_loss", "train/perplexity"]
    train_keys += ["train/code_usage", "train/masked_share", "train/gumbel_temperature", "train/grad_norm", "lr-AdamW"]
    for key in train_keys:
        logged = metrics.dropna(subset=[key])
        assert sorted(logged["step"].astype(int).unique()) == list(range(50)), key
        assert np.isfinite(logged[key]).all(), key
    for key in ["val/loss", "val/contrastive_loss", "val/perplexity", "val/code_usage"]:
        assert metrics[key].notna().sum() == 5, key
    share = metrics["train/masked_share"].dropna()
    assert share.between(0.3, 0.8).all(), share.describe()
    # The encoder folder is written without MLflow too, and its provenance names the best checkpoint.
    folder = Path(csv_run.encoder_dir)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    val = metrics.dropna(subset=["val/loss"])
    best_step = int(val["step"][val["val/loss"].idxmin()])
    assert Path(read_provenance(folder)["checkpoint"]).name == f"step{best_step:06d}.ckpt"  # the lowest loss


def test_fp16_with_the_loss_scaler_runs_pretraining_steps(pretrain_config):
    from broadclass.pretrain import pretrain

    cfg = pretrain_config(
        "trainer=cpu_fp16",
        "logger=csv",
        "~callbacks.save_encoder",
        "trainer.max_steps=3",
        "val_every_n_optimizer_steps=3",
    )
    pretrain(cfg)
    metrics = csv_metrics(cfg)
    losses = metrics["train/loss"].dropna()
    assert len(losses) == 3 and np.isfinite(losses).all()
    scale = metrics["train/loss_scale"].dropna()
    assert len(scale) == 3 and (scale > 1).all(), scale.tolist()  # the real GradScaler (65536 at first)
    assert np.isfinite(metrics["val/contrastive_loss"].dropna()).all()


# ---- 4. the saved folder fine-tuned by train -------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, demo_corpus, empty_mlflow_db):
    """4 steps of pretraining, validated at 2 and 4, into an MLflow store: the folder, the run, the checkpoint."""
    from broadclass.pretrain import pretrain

    root = tmp_path_factory.mktemp("pretrained")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    steps = ["trainer.max_steps=4", "val_every_n_optimizer_steps=2"]
    cfg = compose_config(root, [*pretrain_overrides(demo_corpus), *steps], config_name="pretrain")
    pretrain(cfg)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    folder = Path(cfg.encoder_dir)
    return {"cfg": cfg, "folder": folder, "run": run, "checkpoint": Path(read_provenance(folder)["checkpoint"])}


def fine_tune_config(root: Path, corpus, pretrained: str, tracking_uri: str, *overrides: str):
    from tests.helpers.config import SHORT_RUN

    root.mkdir(parents=True, exist_ok=True)
    steps = [o for o in SHORT_RUN if not o.startswith("model.config.")]  # the architecture comes from the folder
    return compose_config(
        root,
        [
            "+experiment=demo_pretrained",
            f"model.pretrained={pretrained}",
            f"logger.mlflow.tracking_uri={tracking_uri}",
            *data_overrides(corpus),
            *steps,
            *overrides,
        ],
    )


def ctc_module(cfg):
    """The fine-tuning module as train builds it (a models:/ source fetched first)."""
    from broadclass.tracking.pretraining import local_encoder

    cfg.model.pretrained = local_encoder(cfg.model.pretrained, cfg.logger.mlflow.tracking_uri, cfg.paths.cache_dir)
    datamodule = instantiate(cfg.data)
    return instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)


def check_encoder_from(network, pretraining_weights: dict[str, torch.Tensor], frozen: bool) -> None:
    """The CTC network's encoder is the pretraining network's, bit for bit; its head is new; no quantizer; the
    feature encoder frozen as the config says."""
    base = network.base_model_prefix  # wav2vec2_conformer
    ctc = network.state_dict()
    encoder = {k: v for k, v in pretraining_weights.items() if k.startswith(f"{base}.")}
    assert encoder and set(encoder) == {k for k in ctc if k.startswith(f"{base}.")}
    for key, value in encoder.items():
        assert torch.equal(ctc[key], value), key
    heads = [k for k in ctc if not k.startswith(f"{base}.")]
    assert heads and all(k.startswith("lm_head.") for k in heads), heads
    assert not any(k.startswith("lm_head.") for k in pretraining_weights)
    assert any(k.startswith(("quantizer.", "project_q.", "project_hid.")) for k in pretraining_weights)
    assert all(p.requires_grad != frozen for p in network.base_model.feature_extractor.parameters())
    assert any(p.requires_grad for p in network.base_model.encoder.parameters())


def test_the_encoder_folder_fine_tunes_with_train_and_tags_the_pretraining_run(pretrained_run, tmp_path, demo_corpus):
    from broadclass.train import train

    checkpoint = torch.load(pretrained_run["checkpoint"], weights_only=True)["state_dict"]
    best = {k[len("net.") :]: v for k, v in checkpoint.items() if k.startswith("net.")}
    folder = pretrained_run["folder"]
    assert all(torch.equal(best[k], v) for k, v in load_file(folder / "model.safetensors").items())
    uri = pretrained_run["cfg"].logger.mlflow.tracking_uri
    cfg = fine_tune_config(tmp_path / "folder", demo_corpus, str(folder), uri)
    check_encoder_from(ctc_module(cfg).net, best, frozen=False)  # the recipe trains everything
    frozen = fine_tune_config(tmp_path / "frozen", demo_corpus, str(folder), uri, "model.freeze_feature_encoder=true")
    check_encoder_from(ctc_module(frozen).net, best, frozen=True)

    train(fine_tune_config(tmp_path / "folder", demo_corpus, str(folder), uri))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo_pretrained").experiment_id])
    pretraining_run = pretrained_run["run"].info
    assert run.data.tags["pretrained/run_id"] == pretraining_run.run_id
    assert run.data.tags["pretrained/run_link"].endswith(
        f"#/experiments/{pretraining_run.experiment_id}/runs/{pretraining_run.run_id}"
    )
    assert run.info.status == "FINISHED"

    # The run's logged model (models:/<id>, from the run's tag) loads the same encoder.
    model_uri = client.get_run(pretraining_run.run_id).data.tags["encoder/model_uri"]
    assert model_uri.startswith("models:/")
    cfg = fine_tune_config(tmp_path / "models", demo_corpus, model_uri, uri)
    check_encoder_from(ctc_module(cfg).net, best, frozen=False)
    assert Path(cfg.model.pretrained).is_dir() and Path(cfg.model.pretrained) != folder


# ---- 5. continued pretraining of an XLSR-layout checkpoint -----------------------------------------------

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[32] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    codevector_dim=16,
    proj_codevector_dim=16,
    num_codevectors_per_group=8,
)


def save_pretraining_network(folder: Path, model_type: str, **config) -> dict[str, torch.Tensor]:
    """A randomly initialised pretraining network saved with save_pretrained (as a hub checkpoint is); its weights."""
    from transformers import AutoConfig, AutoModelForPreTraining

    torch.manual_seed(0)
    network = AutoModelForPreTraining.from_config(AutoConfig.for_model(model_type, **{**SMALL, **config}))
    network.save_pretrained(folder)
    return {k: v.clone() for k, v in network.state_dict().items()}


def test_continued_pretraining_of_an_xlsr_layout_checkpoint_loads_its_quantizer(pretrain_config, tmp_path):
    from broadclass.pretrain import pretrain

    folder = tmp_path / "xlsr"
    saved = save_pretraining_network(
        folder, "wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
    )
    overrides = ["pretraining=xlsr53", f"model.pretrained={folder}", "model.num_negatives=10", "logger=csv"]
    overrides += ["trainer.max_steps=2", "val_every_n_optimizer_steps=2", "data.batch_size=4"]
    cfg = pretrain_config(*overrides, model=[])
    module = instantiate(cfg.model)
    weights = module.net.state_dict()
    heads = [k for k in saved if k.startswith(("quantizer.", "project_q.", "project_hid."))]
    assert "quantizer.codevectors" in heads and any(k.startswith("project_hid.") for k in heads)
    for key in saved:  # the codebook and projections as saved, and the rest of the network too
        assert torch.equal(weights[key], saved[key]), key
    assert module.net.config.do_stable_layer_norm and module.net.config.feat_extract_norm == "layer"

    pretrain(cfg)
    metrics = csv_metrics(cfg)
    assert len(metrics["train/loss"].dropna()) == 2 and np.isfinite(metrics["train/loss"].dropna()).all()
    trained = load_file(Path(cfg.encoder_dir) / "model.safetensors")
    assert not torch.equal(trained["project_q.weight"], saved["project_q.weight"])  # trained from there
    assert torch.equal(
        trained["wav2vec2.feature_extractor.conv_layers.0.conv.weight"],
        saved["wav2vec2.feature_extractor.conv_layers.0.conv.weight"],
    )  # frozen (the recipe)


# ---- 6. the architecture guard ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layer_norm_folder(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A wav2vec2-conformer pretraining folder with XLSR's layer-norm feature encoder and a wider transformer."""
    folder = tmp_path_factory.mktemp("layer_norm")
    saved = save_pretraining_network(
        folder,
        "wav2vec2-conformer",
        position_embeddings_type="rotary",
        feat_extract_norm="layer",
        conv_bias=True,
        hidden_size=48,
        num_attention_heads=4,
    )
    return folder, saved


def test_model_tiny_over_another_architecture_is_refused_naming_every_key(layer_norm_folder, train_config, tmp_path):
    from transformers import AutoConfig

    from broadclass.model.encoder import TRAINING_TIME_KEYS, ArchitectureOverrideError
    from broadclass.train import train

    folder, _ = layer_norm_folder
    cfg = train_config(f"model.pretrained={folder}", "trainer.max_steps=2")
    folder_config = AutoConfig.from_pretrained(folder)
    differing = [
        key
        for key, value in cfg.model.config.items()
        if not TRAINING_TIME_KEYS.search(key) and getattr(folder_config, key, None) != value
    ]
    assert {"feat_extract_norm", "hidden_size", "num_attention_heads"} <= set(differing)
    with pytest.raises(ArchitectureOverrideError) as refused:
        train(cfg)
    for key in differing:
        assert f"model.config.{key}:" in str(refused.value), key
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # before any training


def test_a_folder_brings_its_own_architecture_and_takes_training_time_keys(layer_norm_folder, tmp_path, demo_corpus):
    folder, saved = layer_norm_folder
    cfg = fine_tune_config(tmp_path, demo_corpus, str(folder), "sqlite:///:memory:", "model.config.hidden_dropout=0.2")
    network = ctc_module(cfg).net
    check_encoder_from(network, saved, frozen=False)  # no unexpected or missing encoder weights
    assert network.config.hidden_dropout == 0.2 and network.config.feat_extract_norm == "layer"
    assert network.config.hidden_size == 48


def test_configuration_errors_reach_the_command_line_as_one_message(layer_norm_folder, tmp_path, demo_corpus):
    """train refusing the architecture, pretrain refusing manifest rows: `error: …`, exit 1, no traceback."""
    folder, _ = layer_norm_folder
    env = environment()
    common = [*data_overrides(demo_corpus), f"paths.root_dir={tmp_path}", "logger=csv"]
    train = [sys.executable, "-m", "broadclass.train", "+experiment=demo", f"model.pretrained={folder}", *common]
    refused = subprocess.run(train, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and "HYDRA_FULL_ERROR" not in refused.stderr, refused.stderr[-3000:]
    message = refused.stderr[refused.stderr.index("error: ") :]
    assert message.startswith(f"error: model.pretrained={folder} has its own architecture")
    for key in ["feat_extract_norm", "hidden_size", "num_hidden_layers", "conv_dim"]:  # model=tiny vs the folder
        assert f"model.config.{key}:" in message, key

    rows = demo_corpus["train"].read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*rows[:4], rows[4].replace(".wav", "-missing.wav")]) + "\n", encoding="utf-8")
    manifest = [f"data.train_manifest={broken}", "~callbacks.save_encoder"]
    pretrain = [sys.executable, "-m", "broadclass.pretrain", *common, *PRETRAIN_MODEL, *manifest]
    refused = subprocess.run(pretrain, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "error: Data check" in refused.stderr and "-missing.wav" in refused.stderr, refused.stderr[-3000:]


def test_configuration_errors_keep_their_traceback_with_hydra_full_error_and_in_sweeps(monkeypatch, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from broadclass.model.encoder import ArchitectureOverrideError
    from broadclass.training.errors import reporting_configuration_errors

    @reporting_configuration_errors
    def task(error: Exception):
        raise error

    compose_config(tmp_path, [])  # Hydra's runtime: a single run
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        task(ArchitectureOverrideError("model.config.hidden_size: 32 here, 48 in the folder"))
    assert stopped.value.code == 1
    with pytest.raises(RuntimeError):  # not a configuration error: Hydra's report, traceback and all
        task(RuntimeError("a bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ArchitectureOverrideError):
        task(ArchitectureOverrideError("shown with its traceback"))
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    with pytest.raises(ArchitectureOverrideError):
        task(ArchitectureOverrideError("a failed sweep job"))


# ---- 8. end to end, as commands (slow) -------------------------------------------------------------------


# The default task (pretraining=tiny, MFCC clusters) with the test model.
CLUSTER_MODEL = [*TEST_MODEL, "model.num_clusters=12", "model.cluster_fit_utterances=40"]


def pretrain_command(
    root: Path, corpus: dict[str, Path], *overrides: str, model: list[str] = PRETRAIN_MODEL
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "broadclass.pretrain",
        f"paths.root_dir={root}",
        f"data.cache_dir={root.parent / 'audio-cache'}",
        *data_overrides(corpus),
        *model,
        *overrides,
    ]


def store_root(tmp_path: Path, name: str, empty_mlflow_db: Path) -> Path:
    root = tmp_path / name
    root.mkdir()
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    return root


def last_line(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("model", [PRETRAIN_MODEL, CLUSTER_MODEL], ids=["contrastive", "clusters"])
def test_a_killed_pretraining_run_resumes_into_its_mlflow_run_and_prints_the_encoder(
    tmp_path, demo_corpus, empty_mlflow_db, model
):
    import signal
    import time

    from broadclass.training.resume import FINISHED_FILE
    from tests.helpers.resume import last_logged_step

    root = store_root(tmp_path, "killed", empty_mlflow_db)
    steps = ["trainer.max_steps=60", "val_every_n_optimizer_steps=20", "checkpoint_every_n_optimizer_steps=10"]
    cmd = pretrain_command(root, demo_corpus, *steps, "trainer.precision=32-true", model=model)
    log = (tmp_path / "killed.log").open("w+")
    process = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    # Killed between checkpoints (10, 20 and the validation at 20, 30): the steps after 30 are logged again.
    while last_logged_step(root / "mlflow.db") < 34:
        assert process.poll() is None, Path(log.name).read_text()[-3000:]
        assert time.monotonic() < deadline, "pretraining did not reach step 34"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (folder,) = (root / "outputs" / "pretrain" / "runs").iterdir()
    assert not (folder / FINISHED_FILE).exists() and not (folder / "encoder").exists()

    resumed = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {folder}/checkpoints/" in resumed.stderr + resumed.stdout
    assert [p.name for p in (root / "outputs" / "pretrain" / "runs").iterdir()] == [folder.name]
    runs, metrics = histories(root, "pretrain")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key, points in metrics.items():
        steps_logged = [step for step, _ in points]
        assert len(steps_logged) == len(set(steps_logged)), f"{key}: steps logged twice"
    assert [s for s, _ in metrics["train/loss"]] == list(range(60))
    assert [s for s, _ in metrics["val/loss"]] == [20, 40, 60]
    assert last_line(resumed.stdout) == str(folder / "encoder")
    assert (folder / "encoder" / "model.safetensors").is_file()


@pytest.mark.slow
def test_pretraining_on_two_cpu_processes_writes_the_encoder(tmp_path, demo_corpus, empty_mlflow_db):
    root = store_root(tmp_path, "ddp", empty_mlflow_db)
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    steps = ["trainer.max_steps=4", "val_every_n_optimizer_steps=2"]
    cmd = pretrain_command(root, demo_corpus, *ddp, *steps, model=CLUSTER_MODEL)
    done = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    (folder,) = (root / "outputs" / "pretrain" / "runs").iterdir()
    assert last_line(done.stdout) == str(folder / "encoder")
    assert (folder / "encoder" / "model.safetensors").is_file()
    runs, metrics = histories(root, "pretrain")
    assert len(runs) == 1 and [s for s, _ in metrics["train/loss"]] == list(range(4))
    assert [s for s, _ in metrics["val/masked_accuracy"]] == [2, 4]
    # Both processes predicted rank 0's clusters: the checkpoint holds them, and they are k-means centroids.
    checkpoint = torch.load(next((folder / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=True)
    assert bool(checkpoint["state_dict"]["centroids_fitted"]) and checkpoint["state_dict"]["centroids"].abs().sum() > 0
    assert runs[0].data.tags["encoder/model_uri"].startswith("models:/")


@pytest.mark.slow
def test_pretrain_then_fine_tune_as_commands(tmp_path, demo_corpus, empty_mlflow_db):
    from tests.helpers.config import SHORT_RUN

    root = store_root(tmp_path, "project", empty_mlflow_db)
    steps = ["trainer.max_steps=4", "val_every_n_optimizer_steps=2"]
    cmd = pretrain_command(root, demo_corpus, *steps, model=CLUSTER_MODEL)  # the default task
    pretrained = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    folder = last_line(pretrained.stdout)
    assert Path(folder, "config.json").is_file()

    steps = [o for o in SHORT_RUN if not o.startswith("model.config.")]
    fine_tune = [sys.executable, "-m", "broadclass.train", "+experiment=demo_pretrained", f"model.pretrained={folder}"]
    fine_tune += [f"paths.root_dir={root}", f"data.cache_dir={root.parent / 'audio-cache'}"]
    fine_tune += [*data_overrides(demo_corpus), *steps]
    done = subprocess.run(fine_tune, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (pretraining_run,), _ = histories(root, "pretrain")
    (run,), metrics = histories(root, "demo_pretrained")
    assert run.data.tags["pretrained/run_id"] == pretraining_run.info.run_id
    assert run.data.tags["pretrained/folder"] == folder
    assert run.info.status == "FINISHED" and "val/ter" in metrics
