"""The GPU check (benchmarks/gpu.py): its variants and time budget, and its pipeline run on a CPU with --smoke."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu import RunCost, Variant, dropped_for_time, main, variants


def test_the_recipes_precision_runs_first_and_bf16_only_where_the_card_has_it():
    planned = variants(smoke=False, bf16_supported=True, batch_seconds=30.0, steps=300, optional_steps=100)
    assert [(v.name, v.steps, v.required) for v in planned] == [
        ("16-mixed", 300, True),
        ("bf16-mixed", 100, False),
        ("batch_seconds", 100, False),
    ]
    on_older_card = variants(smoke=False, bf16_supported=False, batch_seconds=30.0, steps=300, optional_steps=100)
    assert [v.name for v in on_older_card] == ["16-mixed", "batch_seconds"]
    assert on_older_card[1].overrides == ("data.batch_seconds=30",) and on_older_card[1].systems == ("ours",)


def test_an_optional_variant_is_dropped_rather_than_overrun_the_budget_and_the_required_one_never():
    optional = Variant("bf16-mixed", (), ("ours", "theirs"), steps=100, required=False)
    required = Variant("16-mixed", (), ("ours", "theirs"), steps=300, required=True)
    cost = RunCost(start_s=20.0, step_s=0.8)  # a run of 100 steps: 100 s; two systems: 200 s
    assert dropped_for_time(optional, elapsed_s=300, cost=cost, budget_s=500) is None
    reason = dropped_for_time(optional, elapsed_s=300, cost=cost, budget_s=499)
    assert reason == "needs about 200 s; 199 s of the 499 s budget left"
    assert dropped_for_time(required, elapsed_s=900, cost=cost, budget_s=500) is None


def test_the_cost_of_a_run_is_measured_from_the_slowest_runs_start_and_steps():
    runs = [
        {"launch": 0.0, "exit": 100.0, "figures": {"fit_s": 80.0}},  # 20 s to start, 80 s for 100 steps
        {"launch": 100.0, "exit": 230.0, "figures": {"fit_s": 90.0}},  # 40 s to start, 90 s for 100 steps
    ]
    cost = RunCost.measured(runs, steps=100)
    assert cost == RunCost(start_s=40.0, step_s=0.9)
    assert cost.of(Variant("v", (), ("ours",), steps=50, required=False)) == pytest.approx(85.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_gpu_check_smoke_runs_the_recipe_and_the_hf_trainer_on_prepared_sets_then_batches_by_seconds(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer baseline needs the bench extra")
    main(["--smoke", f"--work={tmp_path}"])
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (tmp_path / "sets" / "set1" / "train.jsonl").exists()  # cut by broadclass.prepare
    overrides = result["settings"]["overrides"]
    assert "+experiment=onSet1" in overrides and "logger=csv" in overrides
    assert result["dropped"] == {} and list(result["variants"]) == ["bf16-mixed", "batch_seconds"]
    recipe = result["variants"]["bf16-mixed"]
    assert {run["system"] for run in recipe["runs"]} == {"ours", "theirs"}
    for run in recipe["runs"]:
        record = run["record"]
        assert len(record["step_end"]) == 10
        assert [v["after_step"] for v in record["validations"]] == [5, 10]  # every val_every optimizer steps
    for figure in ("train_s_per_step", "train_audio_s_per_s", "val_s_per_100_utts", "peak_rss_mb"):
        assert recipe["summary"][figure]["ours"]["median"] > 0 and recipe["summary"][figure]["ratio"] is not None
    # Ours logged to CSV: the recipe ran without MLflow.
    assert list((tmp_path / "bf16-mixed" / "ours-0").rglob("metrics.csv"))
    by_seconds = result["variants"]["batch_seconds"]
    [run] = by_seconds["runs"]
    assert run["system"] == "ours" and len(run["record"]["step_end"]) == 10
    budget = next(float(o.split("=", 1)[1]) for o in by_seconds["overrides"] if o.startswith("data.batch_seconds="))
    assert budget > 0
    # The run composed its config with the budget (Hydra's record of the run).
    [saved] = (tmp_path / "batch_seconds" / "ours-0").rglob(".hydra/config.yaml")
    assert f"batch_seconds: {budget:g}" in saved.read_text()
