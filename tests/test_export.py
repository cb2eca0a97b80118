"""The HuggingFace export: a standard folder that plain transformers runs, that fine-tunes further, in MLflow."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelStatus
from mlflow.tracking._tracking_service import utils as tracking_service_utils
from safetensors.torch import load_file
from transformers import AutoTokenizer

from benchmarks.pipeline_agreement import pipeline_texts
from broadclass import export, predict
from broadclass.data.audio import decode
from broadclass.data.manifest import read_manifest
from broadclass.tracking.run_model import load_model
from broadclass.train import train
from tests.helpers.config import SHORT_RUN, compose_config, demo_overrides
from tests.helpers.runs import FitRecorder


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-broadclass"
    assert export.main([str(trained_run.checkpoint), str(out)]) == 0
    return out


def test_export_writes_a_standard_huggingface_folder(exported, trained_run):
    tokens = load_model(trained_run.checkpoint).labels.tokens
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ConformerForCTC"]  # model=tiny
    assert config["ctc_loss_reduction"] == "mean"  # what training used (transformers' default is "sum")
    assert [config["id2label"][str(i)] for i in range(len(tokens))] == tokens
    assert config["label2id"] == {token: i for i, token in enumerate(tokens)}
    features = json.loads((exported / "preprocessor_config.json").read_text())
    assert features["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert (features["sampling_rate"], features["do_normalize"]) == (16_000, True)
    assert config["feat_extract_norm"] == "group"  # model=tiny
    # transformers' own convention for a group-norm feature encoder: no mask (one file at a time needs none).
    assert features["return_attention_mask"] is False
    assert json.loads((exported / "vocab.json").read_text()) == {token: i for i, token in enumerate(tokens)}
    metadata = json.loads((exported / "broadclass.json").read_text())
    assert [c["name"] for c in metadata["categories"]] == ["male", "female", "whisper", "creaky"]
    assert metadata["classes"]["vowel"] == "v"
    assert load_file(exported / "model.safetensors")  # weights in safetensors, nothing pickled
    card = (exported / "README.md").read_text()
    assert "### Validation at step 10" in card and "| true \\ predicted | male | female | whisper | creaky |" in card


def test_the_exported_tokenizer_keeps_multi_character_tokens_whole(exported):
    tokenizer = AutoTokenizer.from_pretrained(exported)
    vocab = json.loads((exported / "vocab.json").read_text())
    text = "v_m p_m | n_f l_w"
    ids = [vocab[token] for token in text.split()]
    assert tokenizer(text).input_ids == ids
    # CTC decoding: repeats merged, blanks (id 0) dropped, every token kept whole and space-separated.
    assert tokenizer.decode([0, ids[0], ids[0], 0, *ids[1:], 0]) == text
    assert len(tokenizer) == len(vocab)  # no token the CTC head has no output for


def test_a_plain_transformers_pipeline_transcribes_every_validation_file_like_predict_at_batch_size_8(
    exported, demo_corpus, tmp_path
):
    folder = tmp_path / "validation16k"
    folder.mkdir()
    for row in read_manifest(demo_corpus["validation"]):  # 16 kHz: no resampler in between
        sf.write(folder / f"{row['id']}.wav", decode(row["audio_filepath"], 16_000), 16_000, subtype="FLOAT")
    files = sorted(folder.glob("*.wav"))
    texts = pipeline_texts(exported, files)  # transformers alone, in an interpreter that never imports broadclass

    out = tmp_path / "predicted.jsonl"
    predict.main([f"model={exported}", f"input={folder}", f"output={out}", "batch_size=8"])
    records = {record["audio_filepath"]: record for record in map(json.loads, out.read_text().splitlines())}

    assert sorted(records) == sorted(texts) and len(records) == 16
    assert sum(bool(r["tokens"]) for r in records.values()) >= 8, "the model decodes too little to compare"
    for path, text in texts.items():
        assert text == records[path]["text"], path


def test_an_exported_folder_fine_tunes_further_as_model_pretrained(exported, train_config):
    cfg = train_config(
        f"model.pretrained={exported}",
        "++trainer.fast_dev_run=true",
        "model.warmup_steps=0",  # a warm-up's first step has a learning rate of 0 and moves nothing
        "+callbacks.recorder._target_=tests.helpers.runs.FitRecorder",
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    # Same vocabulary, so the trained CTC head is kept along with the encoder, not re-initialised.
    weights = load_file(exported / "model.safetensors")
    assert model.net.lm_head.weight.detach().equal(weights["lm_head.weight"])
    # In training mode (from_pretrained returns eval mode): dropout and SpecAugment must be on.
    assert model.net.training
    train(cfg)
    fit = FitRecorder.last
    # The run started from every exported weight, CTC head included, and its one step moved them.
    assert fit.before.keys() == weights.keys()
    assert all(fit.before[key].equal(weights[key]) for key in weights)
    assert fit.steps == 1 and len(fit.losses) == 1 and math.isfinite(fit.losses[0])
    assert not fit.after["lm_head.weight"].equal(weights["lm_head.weight"])


def test_training_logs_the_best_checkpoints_export_as_the_runs_logged_model(trained_run, tmp_path):
    client = MlflowClient(trained_run.tracking_uri)
    (output,) = client.get_run(trained_run.run_id).outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.source_run_id, model.status, model.name) == (
        trained_run.run_id,
        LoggedModelStatus.READY,
        trained_run.config.experiment_name,
    )
    assert output.step == 10  # the best (and only) validation's step
    local = Path(download_artifacts(artifact_uri=model.artifact_location, dst_path=str(tmp_path)))
    logged = {path.name for path in local.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "vocab.json"} <= logged
    assert {"tokenizer_config.json", "broadclass.json", "README.md"} <= logged
    assert json.loads((local / "broadclass.json").read_text())["source"] == str(trained_run.checkpoint)
    # The run's model card (broadclass.tracking.run_card), not the short one of a bare checkpoint.
    assert f"MLflow run `{trained_run.run_id}`" in (local / "README.md").read_text()


def test_a_registered_logged_model_loads_by_name_and_version(trained_run, exported, monkeypatch):
    client = MlflowClient(trained_run.tracking_uri)
    (output,) = client.get_run(trained_run.run_id).outputs.model_outputs
    name = f"broadclass-test-{output.model_id[-6:]}"
    # As a user registers it (mlflow.register_model, the process-wide store): MLflow 3.17's SQL registry looks
    # the logged model up there whatever the client's store, and another test's training may have moved it.
    # Patched rather than set: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, the later tests' store.
    monkeypatch.setattr(tracking_service_utils, "_tracking_uri", trained_run.tracking_uri)
    version = mlflow.register_model(f"models:/{output.model_id}", name).version
    trained = load_model(f"models:/{name}/{version}", tracking_uri=trained_run.tracking_uri)
    assert trained.source == f"models:/{name}/{version}"
    original = load_file(exported / "model.safetensors")
    state = trained.module.net.state_dict()
    assert all(state[k].equal(original[k]) for k in original)


def test_export_from_a_run_id_writes_the_logged_model(trained_run, exported, tmp_path):
    out = tmp_path / "from-run"
    assert export.main([trained_run.run_id, str(out), f"tracking_uri={trained_run.tracking_uri}"]) == 0
    again, original = load_file(out / "model.safetensors"), load_file(exported / "model.safetensors")
    assert again.keys() == original.keys() and all(again[k].equal(original[k]) for k in original)


# The reference recipe's own layout (XLSR-53's: plain wav2vec2, layer-norm feature encoder with conv biases,
# pre-LN transformer layers) at the tests' width, instead of the demo's conformer.
XLSR_LAYOUT = [
    "model.config.model_type=wav2vec2",
    "model.config.feat_extract_norm=layer",
    "+model.config.do_stable_layer_norm=true",
    "+model.config.conv_bias=true",
    "~model.config.position_embeddings_type",
    "~model.config.conv_depthwise_kernel_size",
    "~model.config.conformer_conv_dropout",
]


@pytest.fixture(scope="module")
def xlsr_layout(tmp_path_factory, demo_corpus, empty_mlflow_db) -> tuple[Path, Path, dict[str, str]]:
    """(exported folder, folder of the 16 validation files at 16 kHz, the pipeline's text of each file) of a
    Wav2Vec2ForCTC in XLSR's layout, trained 2 steps. Its CTC head's weights are scaled up 100-fold: a barely
    trained head has logits within float rounding of each other, and the comparison is of code, not of ties."""
    root = tmp_path_factory.mktemp("xlsr-layout")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    cfg = compose_config(root, [*demo_overrides(demo_corpus), *SHORT_RUN, *XLSR_LAYOUT])
    train(cfg)
    checkpoint = max((Path(cfg.paths.output_dir) / "checkpoints").glob("step*.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["state_dict"]["net.lm_head.weight"] *= 100
    sharpened = root / "sharpened.ckpt"
    torch.save(state, sharpened)
    out = root / "export"
    assert export.main([str(sharpened), str(out)]) == 0
    folder = root / "validation16k"
    folder.mkdir()
    for row in read_manifest(demo_corpus["validation"]):  # 16 kHz: no resampler in between
        sf.write(folder / f"{row['id']}.wav", decode(row["audio_filepath"], 16_000), 16_000, subtype="FLOAT")
    return out, folder, pipeline_texts(out, sorted(folder.glob("*.wav")))


def test_the_xlsr_layout_exports_as_a_layer_norm_wav2vec2_that_asks_for_the_attention_mask(xlsr_layout):
    exported, _, _ = xlsr_layout
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForCTC"]
    assert (config["feat_extract_norm"], config["do_stable_layer_norm"], config["conv_bias"]) == ("layer", True, True)
    # transformers' convention for a layer-norm feature encoder: batched input comes with its mask.
    assert json.loads((exported / "preprocessor_config.json").read_text())["return_attention_mask"] is True


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_plain_transformers_pipeline_transcribes_like_predict_in_the_xlsr_layout(xlsr_layout, tmp_path, batch_size):
    exported, folder, texts = xlsr_layout
    out = tmp_path / "predicted.jsonl"
    assert predict.main([f"model={exported}", f"input={folder}", f"output={out}", f"batch_size={batch_size}"]) == 0
    records = {record["audio_filepath"]: record for record in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == sorted(texts) and len(records) == 16
    assert sum(len(r["tokens"]) >= 3 for r in records.values()) >= 8, "the model decodes too little to compare"
    assert {path: records[path]["text"] for path in texts} == texts
