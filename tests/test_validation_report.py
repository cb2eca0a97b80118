"""The validation report as MLflow holds it, read back with MlflowClient from real training runs.

Every logged number is checked against an independent recomputation (scikit-learn, jiwer) from the
``predictions.jsonl`` artifact logged at the same step, so the metric code path (torchmetrics states,
flattening, Lightning logging, the MLflow logger) is tested end to end rather than re-derived from itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from broadclass.data.manifest import read_manifest, write_manifest
from broadclass.train import train
from tests.helpers.runs import TrainedRun

# Logged as float32 by Lightning, as float64 by sklearn/jiwer.
CLOSE = {"rel": 1e-6, "abs": 1e-6}
FLAT_FIELD = {"precision": "precision", "recall": "recall", "f1": "f1-score", "support": "support"}


def artifact_text(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text(encoding="utf-8")


def metric_at(client: MlflowClient, run_id: str, name: str, step: int) -> float:
    values = [m.value for m in client.get_metric_history(run_id, name) if m.step == step]
    assert values, f"{name} was not logged at step {step}"
    return values[-1]


def tagged_words(tokens: str) -> str:
    """A sentence for jiwer whose words are the tagged tokens between ``|``, each word one string."""
    words = [word.split() for word in tokens.split("|")]
    return " ".join("+".join(word) for word in words if word)


def class_tokens(tokens: str) -> str:
    """A sentence for jiwer whose words are the tokens without category tag: jiwer's WER is then the TER."""
    return " ".join(token.rsplit("_", 1)[0] for token in tokens.split() if token != "|")


def validation_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run_id, "val/accuracy")})


def test_every_validation_logs_the_full_report_equal_to_sklearn_and_jiwer(trained_run: TrainedRun, tmp_path):
    client = MlflowClient(trained_run.tracking_uri)
    run_id = trained_run.run_id
    rule = trained_run.config.model.primary_rule
    steps = validation_steps(client, run_id)
    assert steps, "no validation was logged"
    for step in steps:
        lines = artifact_text(client, run_id, f"val/step_{step:06d}/predictions.jsonl", tmp_path).splitlines()
        predictions = [json.loads(line) for line in lines]
        categories = json.loads(artifact_text(client, run_id, f"val/step_{step:06d}/report.json", tmp_path))[
            "categories"
        ]
        targets = [p["category"] for p in predictions]
        expected = classification_report(
            targets,
            [p["predicted"][rule] for p in predictions],
            labels=list(range(len(categories))),
            output_dict=True,
            zero_division=0,
        )
        # The logged names are the categories' own (the demo's are plain ASCII: male, female …).
        for k, name in enumerate(categories):
            for field, sklearn_field in FLAT_FIELD.items():
                logged = metric_at(client, run_id, f"val/{name}/{field}", step)
                assert logged == pytest.approx(expected[str(k)][sklearn_field], **CLOSE), (step, k, field)
        for average in ("macro avg", "weighted avg"):
            for field, sklearn_field in FLAT_FIELD.items():
                logged = metric_at(client, run_id, f"val/{average.replace(' ', '_')}/{field}", step)
                assert logged == pytest.approx(expected[average][sklearn_field], **CLOSE), (step, average, field)
        assert metric_at(client, run_id, "val/accuracy", step) == pytest.approx(expected["accuracy"], **CLOSE)
        # Every rule the model has is scored on the same utterances, whichever rule the report uses.
        rules = predictions[0]["predicted"].keys()
        assert {"vote", "posterior"} <= set(rules)
        for other in rules:
            accuracy = accuracy_score(targets, [p["predicted"][other] for p in predictions])
            assert metric_at(client, run_id, f"val/rule/{other}/accuracy", step) == pytest.approx(accuracy, **CLOSE)
        refs, hyps = [p["reference"] for p in predictions], [p["hypothesis"] for p in predictions]
        # Decoded tokens to score: with empty hypotheses the WER and TER would be 1 whatever the code did.
        assert sum(bool(h.split()) for h in hyps) >= len(hyps) // 2, "the model decodes too little to score"
        wer = jiwer.wer([tagged_words(r) for r in refs], [tagged_words(h) for h in hyps])
        ter = jiwer.wer([class_tokens(r) for r in refs], [class_tokens(h) for h in hyps])
        assert metric_at(client, run_id, "val/wer", step) == pytest.approx(wer, **CLOSE)
        assert metric_at(client, run_id, "val/ter", step) == pytest.approx(ter, **CLOSE)
        assert math.isfinite(metric_at(client, run_id, "val/loss", step))


def test_every_validation_logs_the_confusion_matrix_as_json_and_png(trained_run: TrainedRun, tmp_path):
    client = MlflowClient(trained_run.tracking_uri)
    run_id = trained_run.run_id
    rule = trained_run.config.model.primary_rule
    for step in validation_steps(client, run_id):
        folder = f"val/step_{step:06d}"
        assert {a.path for a in client.list_artifacts(run_id, folder)} >= {
            f"{folder}/confusion.json",
            f"{folder}/confusion.png",
        }
        png = Path(client.download_artifacts(run_id, f"{folder}/confusion.png", str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        confusion = json.loads(artifact_text(client, run_id, f"{folder}/confusion.json", tmp_path))
        assert confusion["categories"] == ["male", "female", "whisper", "creaky"]
        lines = artifact_text(client, run_id, f"{folder}/predictions.jsonl", tmp_path).splitlines()
        predictions = [json.loads(line) for line in lines]
        expected = confusion_matrix(
            [p["category"] for p in predictions],
            [p["predicted"][rule] for p in predictions],
            labels=list(range(len(confusion["categories"]))),
        )
        assert confusion["rows_true_cols_pred"] == expected.tolist()


@pytest.fixture(scope="module")
def short_corpus(demo_corpus, tmp_path_factory) -> dict[str, Path]:
    """The test corpus cut to each utterance's first 0.4 s and first word: 400 training batches must stay
    cheap, and what is learnt does not matter to when validation runs."""
    root = tmp_path_factory.mktemp("short")
    manifests = {}
    for split in ("train", "validation"):
        rows = []
        for row in read_manifest(demo_corpus[split]):
            audio, rate = sf.read(row["audio_filepath"], dtype="float32")
            clip = root / f"{row['id']}.wav"
            sf.write(clip, audio[: int(0.4 * rate)], rate)
            rows.append({**row, "audio_filepath": str(clip), "duration": 0.4, "phones": row["phones"].split("|")[0]})
        manifests[split] = write_manifest(root / f"{split}.jsonl", rows)
    return manifests


@pytest.mark.timeout(1800)  # 200 optimizer steps: the longest fast test (~1-4 min on a 2-core machine)
def test_validation_runs_at_optimizer_steps_100_and_200_with_gradient_accumulation(train_config, short_corpus):
    # 400 training batches of 2 make 200 optimizer steps; validating every 100 optimizer steps must
    # validate after batches 200 and 400, not after 100 batches (Lightning counts batches).
    cfg = train_config(
        f"data.train_manifest={short_corpus['train']}",
        f"data.val_manifest={short_corpus['validation']}",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
        "val_every_n_optimizer_steps=100",
        "trainer.max_steps=200",
        "+trainer.limit_val_batches=1",
        "test_after_fit=false",
    )
    assert cfg.trainer.val_check_interval == 200  # batches
    train(cfg)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    run_id = run.info.run_id
    assert validation_steps(client, run_id) == [100, 200]
    # 24 batches of 2 per epoch (48 utterances): the epoch at a validation tells how many batches ran.
    batches_per_epoch = math.ceil(len(read_manifest(short_corpus["train"])) / 2)
    for step in (100, 200):
        report = json.loads(Path(client.download_artifacts(run_id, f"val/step_{step:06d}/report.json")).read_text())
        # The trainer's own optimizer-step counter (trainer.global_step) when it validated.
        assert report["step"] == step
        assert report["epoch"] == (2 * step - 1) // batches_per_epoch
