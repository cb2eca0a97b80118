"""The manifests as MLflow dataset inputs when the runs of a sweep start together."""

import json
import threading

import mlflow
import pytest
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from broadclass.tracking.datasets import file_digest, log_inputs, manifest_dataset

RUNS = 8  # 8 runs at once break MLflow's own log_inputs several times in every try (measured: 3 to 5 of 8)


def test_runs_that_log_the_same_manifest_at_the_same_moment_all_get_it_and_the_store_keeps_one_dataset(tmp_path):
    manifest = tmp_path / "voice" / "train.jsonl"
    manifest.parent.mkdir()
    rows = [
        {"audio_filepath": f"{i}.wav", "duration": 1.5, "category": "male" if i % 2 else "female"} for i in range(4)
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sweep")
    runs = [client.create_run(experiment).info.run_id for _ in range(RUNS)]
    together = threading.Barrier(RUNS)
    errors = []

    def start(run_id: str) -> None:
        dataset = manifest_dataset(manifest, rows, ["male", "female"])
        inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
        own_client = mlflow.MlflowClient(uri)  # each run of a sweep is its own process with its own client
        together.wait()
        try:
            log_inputs(own_client, run_id, inputs)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=start, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run_id in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("voice/train", file_digest(manifest))]
    assert {i.dataset.profile for r in runs for i in client.get_run(r).inputs.dataset_inputs} == {
        json.dumps({"rows": 4, "hours": 0.0017, "categories": {"male": 2, "female": 2}})
    }


def test_an_error_that_is_not_a_conflict_is_raised_at_the_first_try(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    manifest = tmp_path / "voice" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 1.0, "category": "male"}) + "\n")
    calls = []
    log = client.log_inputs
    client.log_inputs = lambda *args, **kwargs: calls.append(1) or log(*args, **kwargs)
    dataset = manifest_dataset(manifest, [], ["male"])
    with pytest.raises(MlflowException, match="not found|does not exist|No run"):
        log_inputs(client, "0" * 32, [DatasetInput(dataset)])
    assert calls == [1]
