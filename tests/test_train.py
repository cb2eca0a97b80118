"""End-to-end: the real composed config, a real (tiny) wav2vec2, real audio, a real MLflow store."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf

from broadclass.config import ConfigError, check_config
from broadclass.data.check import DataCheckError
from broadclass.model.encoder import build_network
from broadclass.tracking.logger import BufferedMLFlowLogger
from broadclass.train import train
from tests.helpers.config import CONF_DIR, compose_config
from tests.helpers.processes import REPO
from tests.helpers.runs import FitRecorder

RECORDER = "+callbacks.recorder._target_=tests.helpers.runs.FitRecorder"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def finished_run(cfg):
    client = mlflow.MlflowClient(cfg.logger.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_passes_the_schema(tmp_path, experiment):
    cfg = compose_config(tmp_path, [f"+experiment={experiment}"])
    # A recipe for the user's own data names what it still needs; Hydra's own node is not ours to fill.
    if any(not key.startswith("hydra.") for key in OmegaConf.missing_keys(cfg)):
        with pytest.raises(ConfigError, match="required config values"):
            check_config(cfg)
    else:
        check_config(cfg)
    OmegaConf.to_container(cfg.trainer, resolve=True)


def test_the_accent_demo_is_the_demo_recipe_with_accents_as_categories(tmp_path):
    demo = compose_config(tmp_path, ["+experiment=demo"])
    cfg = compose_config(
        tmp_path, ["+experiment=demo_accent", "data.manifests_from.n_train=4", "data.manifests_from.n_val=4"]
    )
    assert cfg.experiment_name == "demo_accent"
    assert [c.name for c in cfg.data.categories] == ["us", "gb", "scotland", "caribbean"]
    assert (cfg.model, cfg.trainer, cfg.monitor) == (demo.model, demo.trainer, demo.monitor)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # a corpus synthesized with accents as its categories, checked against them
    assert {row["category"] for row in datamodule.datasets["train"].rows} == {"us", "gb", "scotland", "caribbean"}


def test_schema_rejects_a_wrong_type_with_the_section_named(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=demo", "model.lr=fast"])
    with pytest.raises(ConfigError, match="section 'model'"):
        check_config(cfg)


def test_a_section_is_checked_against_its_constructor_keys_that_it_lacks_and_keys_it_does_not_take(tmp_path):
    # The schema is BroadClassModule's / BroadClassDataModule's signature: no list of keys to keep beside it.
    with pytest.raises(ConfigError, match=r"section 'model' lacks warmup_steps: .*BroadClassModule takes them"):
        check_config(compose_config(tmp_path, ["+experiment=demo", "~model.warmup_steps"]))
    with pytest.raises(ConfigError, match=r"section 'data'.*learning_rate"):
        check_config(compose_config(tmp_path, ["+experiment=demo", "+data.learning_rate=0.1"]))
    with pytest.raises(ConfigError, match=r"(?s)section .data.*full_key: batch_seconds"):
        check_config(compose_config(tmp_path, ["+experiment=demo", "data.batch_seconds=long"]))
    check_config(compose_config(tmp_path, ["+experiment=demo", "data.batch_seconds=12.5"]))


def test_demo_trains_and_logs_config_vocab_and_metrics_to_mlflow(train_config):
    cfg = train_config("trainer.max_steps=40", "val_every_n_optimizer_steps=20", "model.warmup_steps=5")
    train(cfg)
    client, run = finished_run(cfg)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 3
    first, last = history[0].value, min(h.value for h in history[-3:])
    assert last < first, f"training loss did not fall: {first:.3f} → {last:.3f}"
    for name in ("val/accuracy", "val/wer", "val/ter", "val/loss", "val/macro_avg/f1", "test/accuracy"):
        assert name in run.data.metrics, name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")] == [20, 40]
    assert float(run.data.params["model/lr"]) == cfg.model.lr
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert artifacts == {"config/config.yaml", "config/vocab.json"}


def test_training_from_a_saved_pretrained_folder_goes_through_from_pretrained(train_config, tmp_path):
    # No warm-up: the schedule's first step would have a learning rate of 0 and move nothing.
    cfg = train_config("+trainer.fast_dev_run=true", "model.warmup_steps=0", RECORDER)
    saved = tmp_path / "saved-encoder"
    # XLSR's layout (plain wav2vec2, layer-norm feature encoder, pre-LN layers), not the tiny conformer:
    # the default recipe fine-tunes that family.
    xlsr_like = OmegaConf.to_container(cfg.model.config, resolve=True)
    xlsr_like.update(model_type="wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True)
    network = build_network(10, None, xlsr_like)
    network.save_pretrained(saved)
    cfg.model.pretrained = str(saved)
    cfg.model.config = {"mask_time_prob": 0.0}
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    # The encoder comes from the folder; only the CTC head is new (our vocabulary is not 10 tokens).
    assert type(model.net).__name__ == "Wav2Vec2ForCTC"
    assert model.net.config.hidden_size == network.config.hidden_size
    assert model.net.lm_head.out_features == len(datamodule.label_map.tokens)
    train(cfg)
    fit = FitRecorder.last
    saved_weights = network.state_dict()
    # The run trained the folder's encoder: every weight but the new head was the saved one at the start …
    encoder = [key for key in saved_weights if not key.startswith("lm_head.")]
    assert encoder and all(fit.before[key].equal(saved_weights[key]) for key in encoder)
    assert fit.before["lm_head.weight"].shape[0] == len(datamodule.label_map.tokens)
    # … and fast_dev_run's one batch made one optimizer step on a finite loss, which moved the weights.
    assert fit.steps == 1 and len(fit.losses) == 1 and math.isfinite(fit.losses[0])
    moved = [key for key in encoder if not fit.after[key].equal(fit.before[key])]
    assert moved and not fit.after["lm_head.weight"].equal(fit.before["lm_head.weight"])
    # Its one validation batch was decoded and scored by every rule.
    (evaluation,) = fit.evaluations
    assert {"val/rule/vote/accuracy", "val/rule/posterior/accuracy", "val/ter"} <= evaluation.metrics.keys()


# Run in a fresh interpreter with an empty HuggingFace cache, every socket connection recorded and refused: what
# the machine has cached, and how loaded it is, change nothing.
OFFLINE_LOAD = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args))
    raise OSError("network refused by the test")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = refuse
from broadclass.model.encoder import PretrainedLoadError, build_network
try:
    build_network(10, sys.argv[1])
    outcome = {"error": None}
except PretrainedLoadError as err:
    outcome = {"error": "PretrainedLoadError", "message": str(err)}
print(json.dumps({**outcome, "attempts": attempts}))
"""


def test_unreachable_pretrained_weights_fail_saying_what_to_set_without_asking_the_hub(tmp_path):
    hub_id = "facebook/wav2vec2-large-xlsr-53"
    cache = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOAD, hub_id], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "PretrainedLoadError", outcome
    message = outcome["message"]
    assert f"could not load pretrained weights from {hub_id!r} (HF_HUB_OFFLINE=1: the hub is not asked)" in message
    assert "model.pretrained=<local dir>" in message and f"huggingface-cli download {hub_id}" in message
    # Offline means no connection at all, so no retries against the hub either.
    assert outcome["attempts"] == []


def test_missing_audio_is_reported_with_the_manifest_row(train_config, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"audio_filepath": "nowhere.wav", "duration": 1.0, "phones": "k æ t", "category": "male"}\n')
    cfg = train_config(f"data.train_manifest={manifest}")
    datamodule = instantiate(cfg.data)
    with pytest.raises(DataCheckError, match=r"bad.jsonl:1.*nowhere.wav"):
        datamodule.setup("fit")


def test_unknown_category_is_reported_with_the_manifest_row(train_config, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    wav = Path(train_config().data.val_manifest).parent
    manifest.write_text(
        f'{{"audio_filepath": "{next(wav.rglob("*.wav"))}", "duration": 1.0, "phones": "k", "category": "robot"}}\n'
    )
    datamodule = instantiate(train_config(f"data.train_manifest={manifest}").data)
    with pytest.raises(ValueError, match=r"bad.jsonl:1.*'robot'"):
        datamodule.setup("fit")


def test_runs_of_the_same_seed_get_different_names_and_keep_the_seeded_random_stream(tmp_path):
    # MLflow names runs from Python's global random, which seed_everything has seeded by then.
    def named_logger():
        pl.seed_everything(42)
        return BufferedMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", spool_dir=str(tmp_path / "spool"))

    first, second = named_logger(), named_logger()
    assert first._run_name != second._run_name
    pl.seed_everything(42)
    expected = random.random()
    named_logger()
    assert random.random() == expected
