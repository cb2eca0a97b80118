"""The HuggingFace export: a standard folder that plain transformers runs, that fine-tunes further, in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile as sf
from hydra.utils import instantiate
from mlflow import MlflowClient
from safetensors.torch import load_file
from transformers import AutoTokenizer

from broadclass import export, predict
from broadclass.data.audio import decode
from broadclass.data.manifest import read_manifest
from broadclass.model.checkpoint import RUN_ARTIFACT, load_model
from broadclass.train import train

# Run in a fresh interpreter: transformers only, offline, and broadclass never imported.
PIPELINE = textwrap.dedent(
    """
    import json, sys
    import soundfile as sf
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=sys.argv[1])
    texts = {}
    for path in sys.argv[2:]:
        wave, rate = sf.read(path, dtype="float32")
        texts[path] = asr({"raw": wave, "sampling_rate": rate})["text"]
    print(json.dumps({"texts": texts, "broadclass": any(m.startswith("broadclass") for m in sys.modules)}))
    """
)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-broadclass"
    assert export.main([str(trained_run.checkpoint), str(out)]) == 0
    return out


def test_export_writes_a_standard_huggingface_folder(exported, trained_run):
    tokens = load_model(trained_run.checkpoint).labels.tokens
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ConformerForCTC"]  # model=tiny
    assert [config["id2label"][str(i)] for i in range(len(tokens))] == tokens
    assert config["label2id"] == {token: i for i, token in enumerate(tokens)}
    features = json.loads((exported / "preprocessor_config.json").read_text())
    assert features["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert (features["sampling_rate"], features["do_normalize"]) == (16_000, True)
    assert config["feat_extract_norm"] == "layer"  # XLSR-53's layout
    assert features["return_attention_mask"] is True  # as in training, for a layer-norm feature encoder
    assert json.loads((exported / "vocab.json").read_text()) == {token: i for i, token in enumerate(tokens)}
    metadata = json.loads((exported / "broadclass.json").read_text())
    assert [c["name"] for c in metadata["categories"]] == ["male", "female", "whisper", "creaky"]
    assert metadata["classes"]["vowel"] == "v"
    assert load_file(exported / "model.safetensors")  # weights in safetensors, nothing pickled
    assert "## Validation at step 10" in (exported / "README.md").read_text()


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
        sf.write(folder / f"{row['id']}.wav", decode(row["audio_filepath"]), 16_000, subtype="FLOAT")
    files = sorted(folder.glob("*.wav"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(exported), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    pipeline_out = json.loads(result.stdout.strip().splitlines()[-1])
    assert pipeline_out["broadclass"] is False

    out = tmp_path / "predicted.jsonl"
    predict.main([f"model={exported}", f"input={folder}", f"output={out}", "batch_size=8"])
    records = {record["audio_filepath"]: record for record in map(json.loads, out.read_text().splitlines())}

    assert sorted(records) == sorted(pipeline_out["texts"]) and len(records) == 16
    assert sum(bool(r["tokens"]) for r in records.values()) >= 8, "the model decodes too little to compare"
    for path, text in pipeline_out["texts"].items():
        assert text == records[path]["text"], path


def test_an_exported_folder_fine_tunes_further_as_model_pretrained(exported, train_config):
    cfg = train_config(f"model.pretrained={exported}", "++trainer.fast_dev_run=true")
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    # Same vocabulary, so the trained CTC head is kept along with the encoder, not re-initialised.
    weights = load_file(exported / "model.safetensors")
    assert model.net.lm_head.weight.detach().equal(weights["lm_head.weight"])
    # In training mode (from_pretrained returns eval mode): dropout and SpecAugment must be on.
    assert model.net.training
    train(cfg)


def test_training_logs_the_best_checkpoints_export_to_its_run(trained_run):
    client = MlflowClient(trained_run.tracking_uri)
    logged = {Path(a.path).name for a in client.list_artifacts(trained_run.run_id, RUN_ARTIFACT)}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "vocab.json"} <= logged
    assert {"tokenizer_config.json", "broadclass.json", "README.md"} <= logged
    local = Path(client.download_artifacts(trained_run.run_id, RUN_ARTIFACT))
    assert json.loads((local / "broadclass.json").read_text())["source"] == str(trained_run.checkpoint)
    # The run's model card (broadclass.tracking.model_card), not the short one of a bare checkpoint.
    assert f"MLflow run `{trained_run.run_id}`" in (local / "README.md").read_text()


def test_export_from_a_run_id_writes_the_logged_model(trained_run, exported, tmp_path):
    out = tmp_path / "from-run"
    assert export.main([trained_run.run_id, str(out), "--tracking-uri", trained_run.tracking_uri]) == 0
    again, original = load_file(out / "model.safetensors"), load_file(exported / "model.safetensors")
    assert again.keys() == original.keys() and all(again[k].equal(original[k]) for k in original)
