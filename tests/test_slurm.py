"""On a real SLURM cluster (the one-node cluster of `make slurm-up`, started here): a sweep through the SLURM
launcher, jobs warned of preemption or requeued that resume into the same MLflow run, and DDP over srun's tasks.

Every job reports to one `mlflow server`. The cluster is started for this module and stopped after it (left
running when it was up before). Where it cannot start (no root, no apt) the tests skip, except in CI (`CI` set,
or `BROADCLASS_REQUIRE_SLURM=1` as .ci/run sets it), where that is a failure.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.helpers.config import SHORT_RUN, TEST_MODEL
from tests.helpers.ddp import SHARED as DDP_SHARED
from tests.helpers.ddp import assert_single_process_report, ddp_command
from tests.helpers.processes import REPO, environment
from tests.helpers.resume import STEPS as RESUME_STEPS
from tests.helpers.sweeps import DEMO_CATEGORIES, prepare_demo_sets

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a limit for hangs, several times their duration

CLUSTER = REPO / "scripts" / "local-slurm.sh"
# The preemption test's steps: the interruptions come after step 12, which MLflow shows a few steps late, so a run of
# 16 fast steps could end before its job was warned or requeued (it did once, with Restarts 0).
PREEMPTED_STEPS = 24
PREEMPTED_RUN = [
    *(o for o in RESUME_STEPS if not o.startswith("trainer.max_steps=")),
    f"trainer.max_steps={PREEMPTED_STEPS}",
]
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("BROADCLASS_REQUIRE_SLURM") == "1"
# The SLURM launcher (conf/hydra/launcher/slurm.yaml) sized for this CPU-only cluster: one core per job.
ON_LOCAL_CLUSTER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=3",
    "hydra.launcher.timeout_min=30",
]


@pytest.fixture(scope="module")
def slurm() -> None:
    was_up = subprocess.run([CLUSTER, "status"], capture_output=True).returncode == 0
    if not was_up:
        started = subprocess.run([CLUSTER, "up"], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            why = f"the local SLURM cluster did not start ({CLUSTER} up):\n{started.stdout}{started.stderr}"
            if REQUIRED:
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
    yield
    if not was_up:
        subprocess.run([CLUSTER, "down"], check=True, timeout=120)


def job_environment(uri: str) -> dict[str, str]:
    """What the jobs inherit (sbatch exports the submitting environment): this checkout's package, the
    server, one thread per process (the jobs share two cores)."""
    return {**environment(), "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def launch(root: Path, uri: str, *overrides: str) -> subprocess.Popen:
    """``python -m broadclass.train -m hydra/launcher=slurm …`` as a user runs it: it submits the sweep and waits
    for its jobs (requeued ones included)."""
    command = [sys.executable, "-m", "broadclass.train", "-m", f"paths.root_dir={root}", *ON_LOCAL_CLUSTER, *overrides]
    log = (root / "launcher.log").open("w")
    return subprocess.Popen(command, cwd=REPO, env=job_environment(uri), stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, root: Path, timeout: float = 900) -> Path:
    """Waits for the launcher; returns the sweep folder."""
    assert process.wait(timeout=timeout) == 0, (root / "launcher.log").read_text()[-4000:] + job_logs(root)
    (record,) = root.glob("outputs/*/multiruns/*/multirun.yaml")
    return record.parent


def job_logs(root: Path) -> str:
    return "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in root.glob("outputs/*/multiruns/*/.submitit/*/*.err"))


def ended_job(job_id: str, timeout: float = 120) -> dict[str, str]:
    """``scontrol show job``'s fields once the job has ended (without accounting, a finished job is shown for
    MinJobAge seconds). The launcher returns when the job has written its result, a moment before SLURM sees
    the job's script end."""
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True)
        fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
        if fields["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return fields
        time.sleep(0.5)


def runs_named(client: mlflow.MlflowClient, experiment: str, names: list[str]) -> dict[str, mlflow.entities.Run]:
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {r.info.run_name: r for r in runs if r.info.run_name in names}


def test_a_sweep_over_three_sets_is_three_slurm_jobs_on_one_server_and_compares_as_mean_and_std(
    slurm, server, tmp_path, demo_corpus
):
    sets = prepare_demo_sets(tmp_path, demo_corpus, n_sets=3)
    sweep = finish(
        launch(
            tmp_path,
            server.uri,
            "+experiment=onSet1,onSet2,onSet3",
            "model=tiny",
            "model.pretrained=null",
            "trainer=cpu",
            f"paths.sets_dir={sets}",
            DEMO_CATEGORIES,
            "data.num_workers=0",
            *SHORT_RUN,
        ),
        tmp_path,
    )
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("seed-recipe").experiment_id
    runs = client.search_runs([experiment], f"tags.`sweep/id` = '{sweep.name}'", order_by=["tags.`sweep/job`"])
    # One SLURM job (an array task) per sweep job, each its own MLflow run named by its swept value.
    assert [r.info.run_name for r in runs] == [
        "model_broadclass_onSet1",
        "model_broadclass_onSet2",
        "model_broadclass_onSet3",
    ]
    jobs = [r.data.tags["slurm/job_id"] for r in runs]
    assert len(set(jobs)) == 3 and len({job.split("_")[0] for job in jobs}) == 1  # one array, three tasks
    assert [ended_job(job)["JobState"] for job in jobs] == ["COMPLETED"] * 3
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert [r.data.params["data/manifests_from/set_name"] for r in runs] == ["set1", "set2", "set3"]

    out = tmp_path / "compare"
    compared = subprocess.run(
        [sys.executable, "-m", "broadclass.report", f"compare={sweep}", f"tracking_uri={server.uri}", f"out={out}"],
        cwd=REPO,
        env=job_environment(server.uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    table = pd.read_csv(out / "runs.csv")
    aggregate = pd.read_csv(out / "aggregate.csv")
    best = list(table["val/macro_avg/f1 best"])
    assert len(aggregate) == 1 and aggregate.loc[0, "n"] == 3 and aggregate.loc[0, "sets"] == "set1 set2 set3"
    assert aggregate.loc[0, "val/macro_avg/f1 best mean"] == pytest.approx(statistics.fmean(best))
    assert aggregate.loc[0, "val/macro_avg/f1 best std"] == pytest.approx(statistics.stdev(best))
    assert "| +experiment=onSet* | 3 | set1 set2 set3 |" in compared.stdout and " ± " in compared.stdout


def wait_for_step(client: mlflow.MlflowClient, process: subprocess.Popen, root: Path, name: str, step: int) -> str:
    """Waits until the run ``name`` has logged ``train/loss`` at ``step``; returns its SLURM job."""
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None, (root / "launcher.log").read_text()[-3000:] + job_logs(root)
        assert time.monotonic() < deadline, f"{name} did not reach step {step}" + job_logs(root)
        run = runs_named(client, "demo", [name]).get(name)
        if (
            run is not None
            and max((m.step for m in client.get_metric_history(run.info.run_id, "train/loss")), default=-1) >= step
        ):
            return run.data.tags["slurm/job_id"]
        time.sleep(0.2)


def test_a_warned_job_and_a_requeued_job_resume_into_their_mlflow_runs_with_an_uninterrupted_runs_numbers(
    slurm, server, tmp_path, demo_corpus
):
    # Three jobs of one sweep that differ only in their run name: one warned as SLURM warns before preemption
    # or the time limit (USR1), one requeued without a warning (the crash case: SIGTERM, then SIGKILL), one
    # left alone. Checkpoints every 5 steps; the interruptions come after step 12.
    names = ["warned", "requeued", "uninterrupted"]
    process = launch(
        tmp_path,
        server.uri,
        "+experiment=demo",
        f"data.train_manifest={demo_corpus['train']}",
        f"data.val_manifest={demo_corpus['validation']}",
        "data.manifests_from=null",
        "trainer.enable_progress_bar=false",
        *TEST_MODEL,
        *PREEMPTED_RUN,
        f"run_name={','.join(names)}",
    )
    client = mlflow.MlflowClient(server.uri)
    warned = wait_for_step(client, process, tmp_path, "warned", 12)
    # Not checked: scancel may report "Job can not be altered now" once the signal has reached the job and it is
    # requeueing itself; what the job did is checked below (resumed from the checkpoint it saved when warned).
    subprocess.run(["scancel", "--signal=USR1", warned])
    requeued = wait_for_step(client, process, tmp_path, "requeued", 12)
    subprocess.run(["scontrol", "requeue", requeued], check=True)
    sweep = finish(process, tmp_path)

    runs = runs_named(client, "demo", names)
    assert sorted(runs) == sorted(names)  # one MLflow run each: the requeued jobs went on in theirs
    for name, job in (("warned", warned), ("requeued", requeued)):
        state = ended_job(job)
        assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), (name, state)
    # The same run folders (sweep/<job number>): the warned job from the checkpoint it saved when warned,
    # the requeued one from its newest periodic checkpoint.
    logs = {p.name: p.read_text() for p in sweep.glob(".submitit/*/*.err")} | {
        p.name: p.read_text() for p in sweep.glob(".submitit/*/*.out")
    }
    text = "\n".join(logs.values())
    # The warned job saved requeue.ckpt after its step; the periodic latest.ckpt of that same step, or (when that
    # step validates) last.ckpt at the validation's end, may be written just after it while the job waits for
    # SLURM's SIGTERM, and the resume takes the newest: each is the warned step's state (the histories below
    # hold it bit for bit, no step logged twice).
    assert (sweep / "0" / "checkpoints" / "requeue.ckpt").is_file()
    restored = re.escape(f"Restoring states from the checkpoint path at {sweep}/0/checkpoints/")
    assert re.search(restored + r"(requeue|latest|last)\.ckpt", text), text[-4000:]
    # The requeued job: from its own folder's checkpoints (the periodic latest.ckpt, or under load one written
    # later by the same callbacks); which step it resumed from is what the histories below hold bit for bit.
    assert f"Restoring states from the checkpoint path at {sweep}/1/checkpoints/" in text, text[-4000:]

    def history(run) -> dict[str, list[tuple[int, float]]]:
        return {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }

    reference = history(runs["uninterrupted"])
    assert [s for s, _ in reference["train/loss"]] == list(range(PREEMPTED_STEPS))
    for name in ("warned", "requeued"):
        assert runs[name].info.status == "FINISHED"
        resumed = history(runs[name])
        for key, points in resumed.items():
            assert len({s for s, _ in points}) == len(points), f"{name} {key}: a step logged twice"
        assert resumed == reference, name  # bit for bit: every metric at every step


def test_srun_tasks_train_as_one_ddp_group_that_reports_what_one_process_reports(
    slurm, server, tmp_path, demo_corpus, train_config
):
    # Two tasks of one srun, as an sbatch script would start them: Lightning reads SLURM's environment
    # (ranks, world size, the master address) and starts no processes of its own.
    folder = tmp_path / "run"
    command = [
        "srun",
        "--nodes=1",
        "--ntasks-per-node=2",  # 2 tasks; Lightning refuses a bare --ntasks (SLURM_NTASKS_PER_NODE unset)
        "--cpus-per-task=1",
        "--job-name=broadclass-ddp",
        *ddp_command(
            tmp_path,
            demo_corpus,
            f"hydra.run.dir={folder}",  # every task must write to one folder (see experiments/reliability/README.md)
            *TEST_MODEL,
            *DDP_SHARED,
            "run_name=srun-ddp",
        ),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=job_environment(server.uri), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    client = mlflow.MlflowClient(server.uri)
    (run,) = runs_named(client, "demo", ["srun-ddp"]).values()
    assert run.data.tags["slurm/job_id"].isdigit()
    assert_single_process_report(client, run, folder, train_config, tmp_path)
