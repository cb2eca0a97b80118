"""What the MLflow UI lists: run names from a sweep's swept values, params without the run's locations."""

from __future__ import annotations

import re

from broadclass.tracking.mlflow_run import split_locations
from broadclass.training.run_naming import single_run_name, sweep_run_name


def test_a_sweep_job_is_named_by_its_swept_values_in_override_order() -> None:
    job = {"experiment": "demo", "model.lr": "0.001", "model.warmup_steps": "100", "trainer.max_steps": "300"}
    assert sweep_run_name(job, {"model.warmup_steps", "model.lr"}) == "lr=0.001,warmup_steps=100"
    assert sweep_run_name(job, {"experiment"}) == "experiment=demo"
    assert sweep_run_name(job, set()) == ""


def test_swept_keys_sharing_a_last_part_are_named_in_full() -> None:
    job = {"model.seed": "1", "data.seed": "2", "model.lr": "0.1"}
    assert sweep_run_name(job, {"model.seed", "data.seed", "model.lr"}) == "model.seed=1,data.seed=2,lr=0.1"


def test_a_single_run_is_named_by_its_experiment_and_a_short_id() -> None:
    names = {single_run_name("demo") for _ in range(20)}
    assert all(re.fullmatch(r"demo-[0-9a-f]{6}", name) for name in names)
    assert len(names) == 20


def test_locations_are_split_from_params() -> None:
    paths = {
        "root_dir": "/p",
        "data_dir": "/p/data",
        "cache_dir": "/p/cache",
        "log_dir": "/p/outputs",
        "output_dir": "/p/outputs/demo/runs/1",
    }
    flat = {
        **{f"paths/{key}": value for key, value in paths.items()},
        "model/lr": 0.001,
        "callbacks/model_checkpoint/dirpath": "/p/outputs/demo/runs/1/checkpoints",
        "logger/mlflow/spool_dir": "/p/outputs/demo/runs/1/mlflow_spool",
        "data/cache_dir": "/p/cache/audio16k",
        "trainer/default_root_dir": "/tmp/elsewhere/run",  # the run's folder, outside the project
        "data/train_manifest": "/p/data/demo/train.jsonl",  # input data: configuration
        "monitor/metric": "val/ter",  # looks like a path, is not one
        "logger/mlflow/tracking_uri": "sqlite:////p/mlflow.db",
    }
    params, locations = split_locations(flat, {**paths, "output_dir": "/tmp/elsewhere/run"})
    assert set(params) == {"model/lr", "data/train_manifest", "monitor/metric", "logger/mlflow/tracking_uri"}
    assert set(locations) == {
        *(f"paths/{key}" for key in paths),
        "callbacks/model_checkpoint/dirpath",
        "logger/mlflow/spool_dir",
        "data/cache_dir",
        "trainer/default_root_dir",
    }
