"""The throughput benchmark (benchmarks/throughput.py): its arithmetic, and one short run of both systems."""

import json
import subprocess
import sys

import pytest

from benchmarks.throughput import figures, main, matmul_flops_per_second, summarize, train_flops_per_audio_second
from tests.helpers.config import TEST_MODEL
from tests.helpers.processes import REPO


def run(system: str, rep: int, step_seconds: float, val_seconds: float, last_val_seconds: float = 1.0) -> dict:
    """A record of 4 steps of 10 audio-seconds each, validating 50 utterances after step 2 and after step 4."""
    ends = [100 + step_seconds * k for k in (1, 2)]
    ends += [ends[-1] + val_seconds + step_seconds * k for k in (1, 2)]
    cpu = [0.5 * k for k in range(1, 5)]
    validation = {"start": ends[1], "end": ends[1] + val_seconds, "utterances": 50, "cpu_s": 0.25}
    last = {"start": ends[-1], "end": ends[-1] + last_val_seconds, "utterances": 50, "cpu_s": 0.1}
    record = {
        "warmup_steps": 1,
        "steps": 4,
        "fit_start": 99.0,
        "fit_end": ends[-1] + last_val_seconds + 1,
        "step_end": ends,
        "step_cpu": cpu,
        "step_audio_s": [10.0] * 4,
        "validations": [validation, last],
        "peak_rss_mb": 100.0,
        "peak_rss_mb_training": 90.0,
        "peak_rss_mb_validation": 95.0,
        "peak_gpu_mb": None,
    }
    return {"system": system, "rep": rep, "launch": 90.0, "record": record}


def test_throughput_window_leaves_out_warm_up_steps_and_validation_time():
    f = figures(run("ours", 0, step_seconds=2.0, val_seconds=5.0, last_val_seconds=2.5))
    # Steps 2..4 (3 steps, 30 audio-s) took 3 x 2 s of training; the 5 s validation in between is not training.
    assert f["train_s_per_step"] == pytest.approx(2.0)
    assert f["train_audio_s_per_s"] == pytest.approx(5.0)
    # The validation figure is the last validation's (50 utterances in 2.5 s), the first's given beside it.
    assert f["val_s_per_100_utts"] == pytest.approx(5.0)
    assert f["val_first_s_per_100_utts"] == pytest.approx(10.0)
    assert f["val_cpu_s_per_100_utts"] == pytest.approx(0.2)
    assert f["train_cpu_s_per_step"] == pytest.approx((1.5 - 0.25) / 3)
    assert f["startup_s"] == pytest.approx(9.0)


def test_ratio_is_the_median_of_each_repetitions_ours_over_theirs():
    # Pairing by repetition: a slow repetition (machine busy) slows both systems of that repetition.
    runs = [
        run("ours", 0, 1.0, 1.0),
        run("theirs", 0, 2.0, 1.0),
        run("ours", 1, 4.0, 1.0),
        run("theirs", 1, 8.0, 1.0),
        run("ours", 2, 3.0, 1.0),
        run("theirs", 2, 3.0, 1.0),
    ]
    for r in runs:
        r["figures"] = figures(r)
    summary = summarize(runs)
    assert summary["train_s_per_step"]["ratio"]["median"] == pytest.approx(0.5)
    assert summary["train_s_per_step"]["ratio"]["max"] == pytest.approx(1.0)


def demo_overrides(tmp_path, demo_corpus) -> list[str]:
    """Both systems on the test corpus and the test model, everything written under ``tmp_path``."""
    return [
        f"paths.root_dir={tmp_path}",
        f"data.train_manifest={demo_corpus['train']}",
        f"data.val_manifest={demo_corpus['validation']}",
        *TEST_MODEL,
    ]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_benchmark_runs_both_systems_and_writes_the_comparison(tmp_path, demo_corpus):
    pytest.importorskip("accelerate", reason="the HF Trainer baseline needs the bench extra")
    out = tmp_path / "result.json"
    overrides = demo_overrides(tmp_path, demo_corpus)
    # As `make bench` runs it: its own interpreter, which has registered none of the config's resolvers.
    args = ["--steps=3", "--warmup=1", "--reps=1", f"--out={out}", f"--work={tmp_path / 'work'}", "--", *overrides]
    subprocess.run([sys.executable, "-m", "benchmarks.throughput", *args], cwd=REPO, check=True)
    result = json.loads(out.read_text())
    assert {run["system"] for run in result["runs"]} == {"ours", "theirs"}
    # Both trained the asked-for steps and validated the whole validation set.
    for r in result["runs"]:
        assert len(r["record"]["step_end"]) == 3
        assert r["record"]["validations"][0]["utterances"] == 16
    assert result["summary"]["train_audio_s_per_s"]["ratio"]["median"] > 0
    # Each process kept the CPU kernels it ships with: ours what importing broadclass sets, the HF recipe oneDNN's
    # default (its import of broadclass for the config must not give it ours).
    kernels = {r["system"]: r["record"]["onednn_kernel_cache"] for r in result["runs"]}
    assert kernels == {"ours": "8192", "theirs": "1024"}
    mfu = result["mfu"]
    assert mfu["matmul"]["dtype"] == "bfloat16" and mfu["matmul"]["flops_per_s"] > 0
    for system in ("ours", "theirs"):
        throughput = result["summary"]["train_audio_s_per_s"][system]["median"]
        expected = throughput * mfu["train_flops_per_audio_s"] / mfu["matmul"]["flops_per_s"]
        assert mfu[system] == pytest.approx(expected) and 0 < mfu[system] < 1


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_the_profile_times_every_phase_of_ours(tmp_path, demo_corpus):
    out = tmp_path / "profile.txt"
    overrides = demo_overrides(tmp_path, demo_corpus)
    main(["--steps=3", "--warmup=1", "--profile=test", f"--out={out}", f"--work={tmp_path / 'work'}", "--", *overrides])
    table = out.read_text()
    phases = {line.split("[phase] ", 1)[1].split("|")[0].strip() for line in table.splitlines() if "[phase]" in line}
    # Each phase the probe wraps was called: the forward in training and in validation, the evaluation's parts.
    for phase in ("forward", "greedy decode", "category decisions", "class confusion update", "durations update"):
        assert any(p.startswith(f"{phase} (") and "VALIDATING" in p for p in phases), (phase, phases)
    assert any(p.startswith("forward (") and "TRAINING" in p for p in phases), phases


def conv_flops(config, samples: int) -> int:
    """The feature encoder's convolutions by hand: 2 x in x out channels x kernel per output frame, each layer."""
    flops, length, channels = 0, samples, 1
    for out, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True):
        length = (length - kernel) // stride + 1
        flops += 2 * channels * out * kernel * length
        channels = out
    return flops


def test_the_training_flop_count_holds_the_feature_encoders_convolutions_forward_and_backward(tmp_path, demo_corpus):
    """Frozen, the feature encoder runs forward only; trained, its backward adds the gradient of every weight
    (as much as the forward) and of every layer's input but the waveform's: 2 x forward - the first layer."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from benchmarks.config import compose_config

    overrides = ["+experiment=demo", *demo_overrides(tmp_path, demo_corpus)]
    trained = train_flops_per_audio_second([*overrides, "model.freeze_feature_encoder=false"], 1.0, 2)
    frozen = train_flops_per_audio_second([*overrides, "model.freeze_feature_encoder=true"], 1.0, 2)
    config = AutoConfig.for_model(**OmegaConf.to_container(compose_config(overrides).model.config, resolve=True))
    forward = conv_flops(config, 16_000)
    first_layer = 2 * 1 * 32 * config.conv_kernel[0] * ((16_000 - config.conv_kernel[0]) // config.conv_stride[0] + 1)
    assert trained - frozen == 2 * forward - first_layer
    assert frozen > forward  # the transformer's matmuls come on top


def test_the_matmul_benchmark_counts_2n3_flops_per_product_in_the_asked_dtype_and_threads():
    import torch

    threads = torch.get_num_threads()
    result = matmul_flops_per_second(torch.float32, threads=1, size=256)
    assert result == {"flops_per_s": result["flops_per_s"], "dtype": "float32", "size": 256, "threads": 1}
    assert 1e8 < result["flops_per_s"] < 1e13  # a CPU core does GFLOP/s, not MFLOP/s or PFLOP/s
    assert torch.get_num_threads() == threads  # the benchmark's own setting is given back
