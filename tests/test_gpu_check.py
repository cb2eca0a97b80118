"""The GPU check's pipeline, run on a CPU with --smoke: corpus, sets, the recipe and the HF Trainer side by side."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu import main


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_gpu_check_smoke_runs_the_recipe_and_the_hf_trainer_on_prepared_sets(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer baseline needs the bench extra")
    main(["--smoke", f"--work={tmp_path}"])
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (tmp_path / "sets" / "set1" / "train.jsonl").exists()  # cut by broadclass.prepare
    overrides = result["settings"]["overrides"]
    assert "+experiment=onSet1" in overrides and "logger=csv" in overrides
    assert {run["system"] for run in result["runs"]} == {"ours", "theirs"}
    for run in result["runs"]:
        record = run["record"]
        assert len(record["step_end"]) == 10
        assert [v["after_step"] for v in record["validations"]] == [5, 10]  # every val_every optimizer steps
    for figure in ("train_s_per_step", "train_audio_s_per_s", "val_s_per_100_utts", "peak_rss_mb"):
        assert result["summary"][figure]["ours"]["median"] > 0 and result["summary"][figure]["ratio"] is not None
    # Ours logged to CSV: the recipe ran without MLflow.
    assert list((tmp_path / "ours-0").rglob("metrics.csv"))
