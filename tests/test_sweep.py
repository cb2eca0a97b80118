"""Hydra multirun as the user runs it (a subprocess), one MLflow run per job, and the comparison of a sweep."""

from __future__ import annotations

import statistics
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.entities import Param, Run, RunData, RunInfo

from broadclass.compare import CompareArguments, print_comparison
from broadclass.tracking import compare
from tests.helpers.config import SHORT_RUN, compose_config
from tests.helpers.sweeps import demo_multirun


def runs_of(root: Path, experiment: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["tags.`sweep/job`"])


def test_every_job_of_a_parallel_sweep_is_one_mlflow_run_tagged_with_the_sweep(set_sweep):
    root, sweep = set_sweep
    runs = runs_of(root, "seed-recipe")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.tags["sweep/job"] for r in runs] == ["0", "1"]
    # Same sweep id for both jobs (the folder's timestamp), although the jobs' experiment name differs
    # from the one the sweep folder Hydra printed was named with.
    assert {r.data.tags["sweep/id"] for r in runs} == {sweep.name}
    assert [r.data.params["data/manifests_from/set_name"] for r in runs] == ["set1", "set2"]
    assert ["+experiment=onSet1" in r.data.tags["hydra/overrides"] for r in runs] == [True, False]
    assert [r.info.run_name for r in runs] == ["model_broadclass_onSet1", "model_broadclass_onSet2"]


def test_compare_aggregates_the_sets_into_mean_and_std(set_sweep, tmp_path, capsys):
    root, sweep = set_sweep
    args = CompareArguments(compare=str(sweep), tracking_uri=None, out=tmp_path / "cmp")
    assert print_comparison(args) == 0
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    aggregate = pd.read_csv(tmp_path / "cmp" / "aggregate.csv")
    assert list(runs["set"]) == ["set1", "set2"] and list(runs["+experiment"]) == ["onSet1", "onSet2"]
    # One configuration (onSet*) over both sets; the mean and std are those of the runs' best values.
    assert len(aggregate) == 1 and aggregate.loc[0, "n"] == 2 and aggregate.loc[0, "sets"] == "set1 set2"
    best = list(runs["val/macro_avg/f1 best"])
    assert aggregate.loc[0, "val/macro_avg/f1 best mean"] == pytest.approx(statistics.fmean(best))
    assert aggregate.loc[0, "val/macro_avg/f1 best std"] == pytest.approx(statistics.stdev(best))
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| +experiment=onSet* | 2 | set1 set2 |" in markdown and " ± " in markdown
    assert markdown in capsys.readouterr().out


def test_compare_by_experiment_name_or_sweep_id_finds_the_same_runs(set_sweep, tmp_path):
    root, sweep = set_sweep
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = [list(compare.compare(t, uri)["runs"]["run_id"]) for t in ("seed-recipe", sweep.name, str(sweep))]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 2


def test_compare_of_nothing_names_what_it_looked_for_and_the_experiments(set_sweep, tmp_path, capsys):
    root, _ = set_sweep
    args = CompareArguments(compare="no-such-run", tracking_uri=f"sqlite:///{root / 'mlflow.db'}", out=tmp_path)
    assert print_comparison(args) == 2
    error = capsys.readouterr().err
    assert "no runs found for 'no-such-run'" in error and "experiments there: Default, seed-recipe" in error


def test_overrides_with_spaces_in_values_are_parsed_whole():
    text = "+experiment=onSet1 data.categories=[{name: a, tag: a}, {name: b, tag: b}] model.lr=0.001"
    assert compare.parse_overrides(text) == {
        "+experiment": "onSet1",
        "data.categories": "[{name: a, tag: a}, {name: b, tag: b}]",
        "model.lr": "0.001",
    }


def test_a_runs_set_is_its_logged_set_name_and_runs_on_other_sets_group_together():
    info = RunInfo("run", "0", "user", "FINISHED", 0, 1, "active")
    assert compare.set_of(Run(info, RunData(params=[Param("data/manifests_from/set_name", "set2")]))) == "set2"
    assert compare.set_of(Run(info, RunData(params=[Param("model/lr", "0.1")]))) is None
    two = compare.group_key({"+experiment": "onSet2", "data.manifests_from.set_name": "set2", "model.lr": "0.1"})
    one = compare.group_key({"+experiment": "onSet1", "data.manifests_from.set_name": "set1", "model.lr": "0.1"})
    other = compare.group_key({"+experiment": "onSet1", "data.manifests_from.set_name": "set1", "model.lr": "0.2"})
    assert one == two == "+experiment=onSet* model.lr=0.1" != other


@pytest.mark.parametrize("mode", ["max", "min"])
def test_optuna_search_optimises_the_monitored_metric_in_its_direction(tmp_path, mode):
    cfg = compose_config(tmp_path, ["+experiment=demo", "+hparams_search=demo_optuna", f"monitor.mode={mode}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == f"{mode}imize"
    assert set(sweeper.params) == {"model.lr", "model.warmup_steps"}


def test_slurm_launcher_is_submitit_with_one_gpu_per_job(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=onSet1", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.partition) == (1, "gpu")
    # The warning SLURM is asked to send before preemption or the time limit is the one the callback handles.
    warning, seconds = cfg.hydra.launcher.additional_parameters.signal.split("@")
    assert warning == cfg.callbacks.requeue_when_warned.signal_name and int(seconds) > 0
    assert cfg.hydra.launcher.additional_parameters.requeue is True


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_demo_2x2_sweep_in_parallel_gives_a_table_with_both_swept_overrides(tmp_path, demo_corpus):
    sweep = demo_multirun(
        tmp_path,
        demo_corpus,
        "model.lr=1e-3,2e-3",
        "model.warmup_steps=2,5",
        *(o for o in SHORT_RUN if not o.startswith("model.warmup_steps")),
        "hydra/launcher=local",
    )
    result = compare.compare(str(sweep), f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = result["runs"]
    assert sorted(zip(runs["model.lr"], runs["model.warmup_steps"], strict=True)) == [
        ("0.001", "2"),
        ("0.001", "5"),
        ("0.002", "2"),
        ("0.002", "5"),
    ]
    assert (runs["status"] == "FINISHED").all() and runs["val/ter best"].notna().all()  # the demo monitors TER


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_optuna_sweep_reports_the_best_of_the_values_train_returned(tmp_path, demo_corpus):
    sweep = demo_multirun(tmp_path, demo_corpus, "+hparams_search=demo_optuna", "hydra.sweeper.n_trials=2", *SHORT_RUN)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_of(tmp_path, "demo")
    assert len(runs) == 2
    # train() returns the best monitored value of its run (the demo's: lowest TER), which Optuna
    # minimises over the trials.
    run_best = [min(m.value for m in client.get_metric_history(r.info.run_id, "val/ter")) for r in runs]
    assert best == pytest.approx(min(run_best))
