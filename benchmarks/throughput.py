"""Training and validation throughput: our pipeline against the HF Trainer recipe, side by side.

``python -m benchmarks.throughput [--model tiny|xlsr53] [--steps 60] [--reps 3] [-- <Hydra overrides>]``
(``make bench`` runs it; ``make bench BENCH_ARGS="--model xlsr53"`` on a GPU machine).

Both systems train the same network config from the same seed on the same manifests, 16 kHz audio
and token ids, with the same batch size, dataloader workers and number of optimizer steps, and
validate on the same set at the warm-up's last step and at the last step (the figure is the last validation:
a run validates many times, and its first validation, like its first epoch, builds what the later ones reuse).
Ours is the real ``python -m broadclass.train`` (Hydra config, datamodule, LightningModule, Lightning Trainer,
MLflow logging, the validation report and its artifacts, checkpointing), theirs
``benchmarks/hf_trainer_baseline.py``. Each run is its own process launch; the order alternates (ours-theirs,
theirs-ours, ...) so a drift in machine load falls on both.

Each system validates at the precision its validation really uses: ours runs the evaluation forward in fp32
whatever the training precision (``BroadClassModule.infer``: one utterance, one answer on any machine), the
HF Trainer under the training precision's autocast (``bf16=True``/``fp16=True``). Training is at the same
precision in both.

On a CPU each system runs with the kernel cache it ships with: ours with the 8,192 oneDNN kernels that importing
``broadclass`` sets (its batches are padded to a grid of lengths, so their shapes repeat and stay cached), theirs
with oneDNN's default 1,024, as the HF recipe runs. ``--theirs-kernel-cache 8192`` runs theirs with ours:
faster too, and its memory grows with every new batch length it meets (experiments/throughput/README.md).

Measured from each process's own record (``benchmarks/probe.py``):

* training throughput: real audio seconds trained on per wall second, and wall seconds per optimizer
  step, over steps ``warmup+1 .. steps`` (the first ``warmup`` steps are excluded for both);
* validation: wall seconds per 100 utterances, from validation start to end (forward, decoding,
  metrics, logging of metrics and artifacts);
* peak RSS (and peak CUDA memory); the process's start (launch to fit start: interpreter, imports,
  config, model build, logger set-up), reported apart and excluded from the above.

The corpus is built and its 16 kHz audio cache filled before the first run, so neither system pays
for it. Per figure the table shows the median over repetitions with min–max, and the ratio ours/theirs
as the median of the per-repetition ratios (each repetition's two runs are adjacent in time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "experiments" / "throughput"

PRESETS = {
    "tiny": ["+experiment=demo"],
    # facebook/wav2vec2-large-xlsr-53's architecture at full size, random weights (conf/model/xlsr53_random.yaml).
    "xlsr53": ["model=xlsr53_random", "trainer.max_epochs=-1"],
}
# Dense fp16/bf16 tensor-core peak of the cards a session may be lent, for model FLOP utilization.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}

# (key, label, higher is better, target for ours/theirs or None)
FIGURES = [
    ("train_audio_s_per_s", "training throughput (audio s / wall s)", True, 1.3),
    ("train_all_audio_s_per_s", "training throughput, steps 2..N, warm-up included", True, None),
    ("train_s_per_step", "time per optimizer step (s)", False, None),
    ("val_s_per_100_utts", "validation time per 100 utterances (s)", False, 1 / 1.3),
    ("val_first_s_per_100_utts", "the first validation's time per 100 utterances (s)", False, None),
    ("train_cpu_s_per_step", "CPU time per optimizer step (s, all threads)", False, None),
    ("val_cpu_s_per_100_utts", "validation CPU time per 100 utterances (s)", False, None),
    ("peak_rss_mb", "peak RSS (MiB)", False, 1.0),
    ("peak_rss_mb_training", "peak RSS by the end of the last step (MiB)", False, None),
    ("peak_rss_mb_validation", "peak RSS by the end of validation (MiB)", False, None),
    ("peak_gpu_mb", "peak CUDA memory allocated (MiB)", False, None),
    ("overflow_steps", "fp16 overflow steps (loss scale halvings)", False, None),
    ("startup_s", "process start to fit start (s)", False, None),
    ("fit_s", "fit wall time, all steps + validation (s)", False, None),
]


def prepare_data(overrides: Sequence[str]) -> list[str]:
    """Build the corpus if needed, fill the audio cache, and pin both systems to its manifests."""
    from hydra.utils import instantiate

    from benchmarks.config import compose_config

    cfg = compose_config(overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    for dataset in datamodule.datasets.values():
        for row in dataset.rows:
            datamodule.audio.load(row["audio_filepath"])
    manifests = datamodule.manifests
    if not manifests.get("validation"):
        raise SystemExit("throughput: the config gives no validation manifest")
    return [
        f"data.train_manifest={manifests['train']}",
        f"data.val_manifest={manifests['validation']}",
        "data.manifests_from=null",
    ]


def command(system: str, shared: list[str], work: Path, rep: int, warmup: int, steps: int) -> list[str]:
    record = work / f"{system}-{rep}.json"
    if system == "theirs":
        return [
            sys.executable,
            "-m",
            "benchmarks.hf_trainer_baseline",
            f"--out={record}",
            f"--work={work / f'theirs-{rep}'}",
            f"--warmup={warmup}",
            "--",
            *shared,
        ]
    probe = "+callbacks.throughput_probe"
    store = [
        f"logger.mlflow.tracking_uri=sqlite:///{work / 'ours-mlflow.db'}",
        f"logger.mlflow.artifact_location={work / 'ours-mlruns'}",
    ]
    return [
        sys.executable,
        "-m",
        "broadclass.train",
        *shared,
        "test_after_fit=false",
        f"hydra.run.dir={work / f'ours-{rep}'}",
        *([] if "logger=csv" in shared else store),
        f"{probe}._target_=benchmarks.lightning_probe.ThroughputProbe",
        f"{probe}.out={record}",
        f"{probe}.warmup_steps={warmup}",
        f"{probe}.steps={steps}",
    ]


# oneDNN's own default size of its kernel cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY), which the HF recipe runs with.
ONEDNN_DEFAULT_KERNEL_CACHE = 1024


def launch(
    system: str,
    cmd: list[str],
    work: Path,
    rep: int,
    threads: int | None,
    theirs_kernel_cache: int = ONEDNN_DEFAULT_KERNEL_CACHE,
) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if system == "theirs":
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{work / 'theirs-mlflow.db'}",
            MLFLOW_EXPERIMENT_NAME="hf-baseline",
            # Set, so that the baseline's import of broadclass (for the config) does not give it ours.
            ONEDNN_PRIMITIVE_CACHE_CAPACITY=str(theirs_kernel_cache),
        )
    log = work / f"{system}-{rep}.log"
    load = os.getloadavg()[0]
    start = time.time()
    with log.open("w") as handle:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    end = time.time()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"throughput: {system} run {rep} failed (exit {rc}); log {log}:\n{tail}")
    record = json.loads((work / f"{system}-{rep}.json").read_text())
    return {"system": system, "rep": rep, "launch": start, "exit": end, "load_avg_1min": load, "record": record}


def figures(run: dict) -> dict[str, float | None]:
    """The table's figures for one run, from its record."""
    rec = run["record"]
    warmup, steps = rec["warmup_steps"], rec["steps"]
    ends, audio = rec["step_end"], rec["step_audio_s"]
    if len(ends) < steps:
        raise SystemExit(f"throughput: {run['system']} run {run['rep']} recorded {len(ends)} of {steps} steps")
    window_start, window_end = ends[warmup - 1], ends[steps - 1]
    inside = [v for v in rec["validations"] if window_start <= v["start"] < window_end]
    train_s = window_end - window_start - sum(v["end"] - v["start"] for v in inside)
    between = [v for v in rec["validations"] if ends[0] <= v["start"] < window_end]
    all_s = window_end - ends[0] - sum(v["end"] - v["start"] for v in between)
    cpu = rec["step_cpu"]
    train_cpu_s = cpu[steps - 1] - cpu[warmup - 1] - sum(v["cpu_s"] for v in inside)
    first_val, last_val = rec["validations"][0], rec["validations"][-1]
    return {
        "train_audio_s_per_s": sum(audio[warmup:steps]) / train_s,
        "train_s_per_step": train_s / (steps - warmup),
        "train_all_audio_s_per_s": sum(audio[1:steps]) / all_s,
        "val_s_per_100_utts": (last_val["end"] - last_val["start"]) / last_val["utterances"] * 100,
        "val_first_s_per_100_utts": (first_val["end"] - first_val["start"]) / first_val["utterances"] * 100,
        "train_cpu_s_per_step": train_cpu_s / (steps - warmup),
        "val_cpu_s_per_100_utts": last_val["cpu_s"] / last_val["utterances"] * 100,
        "peak_rss_mb": rec["peak_rss_mb"],
        "peak_rss_mb_training": rec["peak_rss_mb_training"],
        "peak_rss_mb_validation": rec["peak_rss_mb_validation"],
        "peak_gpu_mb": rec["peak_gpu_mb"],
        "overflow_steps": (
            math.log2(rec["loss_scale_start"] / rec["loss_scale_end"]) if rec.get("loss_scale_start") else None
        ),
        "startup_s": rec["fit_start"] - run["launch"],
        "fit_s": rec["fit_end"] - rec["fit_start"],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict]) -> dict[str, dict]:
    by_rep: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_rep.setdefault(run["rep"], {})[run["system"]] = run["figures"]
    summary = {}
    for key, _, _, _ in FIGURES:
        ours = [rep["ours"][key] for rep in by_rep.values() if rep["ours"][key] is not None]
        theirs = [rep["theirs"][key] for rep in by_rep.values() if rep["theirs"][key] is not None]
        if not ours or not theirs:
            continue
        ratios = [rep["ours"][key] / rep["theirs"][key] for rep in by_rep.values() if rep["theirs"][key]]
        summary[key] = {"ours": spread(ours), "theirs": spread(theirs), "ratio": spread(ratios) if ratios else None}
    return summary


def train_flops_per_audio_second(overrides: Sequence[str], seconds: float, batch_size: int) -> float:
    """FLOPs of one forward + backward of the network per second of audio, counted with torch's FLOP counter
    (``torch.utils.flop_counter``: matmuls and convolutions, the feature encoder's included; its backward too
    unless the config freezes it) on one batch of ``batch_size`` utterances of ``seconds``, layerdrop and
    masking off (eval mode). A count of the useful work: real audio, no padding."""
    import torch
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.config import compose_config
    from broadclass.data.labels import LabelMap
    from broadclass.model.encoder import build_network

    cfg = compose_config(overrides)
    labels = LabelMap.from_config(cfg.data.labels, cfg.data.categories)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = (
        build_network(len(labels.tokens), cfg.model.pretrained, OmegaConf.to_container(cfg.model.config))
        .to(device)
        .eval()
    )
    if cfg.model.freeze_feature_encoder:
        net.freeze_feature_encoder()
    samples = int(seconds * cfg.data.sample_rate)
    audio = torch.randn(batch_size, samples, device=device)
    with FlopCounterMode(display=False) as counter:
        net(audio).logits.float().sum().backward()
    return counter.get_total_flops() / (batch_size * seconds)


def training_dtype(overrides: Sequence[str]):
    """The dtype training's matmuls run in under the config's ``trainer.precision`` (16-mixed is bf16 on a CPU)."""
    import torch

    from benchmarks.config import compose_config

    precision = str(compose_config(overrides).trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16 if torch.cuda.is_available() else torch.bfloat16
    return torch.float32


def matmul_flops_per_second(dtype, threads: int | None, size: int | None = None) -> dict:
    """The attainable FLOP/s: the best of 5 timings of a dense ``size`` x ``size`` matmul in ``dtype`` with the
    benchmark's threads (torch's default when None), each timing at least 0.3 s of repeated products."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = size or (8192 if device == "cuda" else 1024)
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        for _ in range(3):
            a @ b
        best = 0.0
        for _ in range(5):
            count, start = 0, time.perf_counter()
            while True:
                a @ b
                count += 1
                if device == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                if elapsed >= 0.3:
                    break
            best = max(best, 2 * size**3 * count / elapsed)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(default_threads)
    return {"flops_per_s": best, "dtype": str(dtype).removeprefix("torch."), "size": size, "threads": used}


def peak_tflops(device: str, given: float | None) -> float | None:
    if given:
        return given
    return next((value for name, value in PEAK_TFLOPS.items() if name in device), None)


def machine() -> dict:
    import pytorch_lightning
    import torch
    import transformers

    from benchmarks.cost_curves import cpu_name

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
    }


def profile(args: argparse.Namespace, shared: list[str], work: Path) -> None:
    cmd = command("ours", shared, work, 0, args.warmup, args.steps) + [
        "+trainer.profiler._target_=pytorch_lightning.profilers.SimpleProfiler",
        f"+trainer.profiler.dirpath={work}",
        "+trainer.profiler.filename=profile",
        "+callbacks.phase_profile._target_=benchmarks.lightning_probe.PhaseProfile",
    ]
    print(f"[bench] profiling ours: {args.steps} steps, 1 validation ...", flush=True)
    run = launch("ours", cmd, work, 0, args.threads)
    f = figures(run)
    out = args.out or RESULTS_DIR / f"profile-{args.profile}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# python -m benchmarks.throughput {' '.join(sys.argv[1:])}\n"
        f"# {machine()['cpu']}, load average before the run {run['load_avg_1min']:.1f}\n"
        f"# window steps {args.warmup + 1}..{args.steps}: {f['train_audio_s_per_s']:.1f} audio-s/s, "
        f"{f['train_s_per_step']:.3f} s/step ({f['train_cpu_s_per_step']:.3f} CPU s); validation "
        f"{f['val_s_per_100_utts']:.2f} s/100 utt\n"
    )
    out.write_text(header + (work / "fit-profile.txt").read_text())
    print(f"[bench] wrote {out}")


def fmt(value: float, key: str) -> str:
    return (
        f"{value:.3f}"
        if key.startswith("train_") and "per_step" in key
        else f"{value:.1f}"
        if value >= 10
        else f"{value:.2f}"
    )


def table(summary: dict[str, dict]) -> str:
    lines = [
        "| figure | ours: median [min–max] | HF Trainer: median [min–max] | ours/theirs [min–max] | target |",
        "|---|---|---|---|---|",
    ]
    for key, label, higher, target in FIGURES:
        if key not in summary:
            continue
        row = summary[key]
        cells = [
            f"{fmt(row[side]['median'], key)} [{fmt(row[side]['min'], key)}–{fmt(row[side]['max'], key)}]"
            for side in ("ours", "theirs")
        ]
        ratio = row["ratio"]
        cells.append(f"{ratio['median']:.2f} [{ratio['min']:.2f}–{ratio['max']:.2f}]" if ratio else "–")
        goal = ""
        if target is not None and ratio:
            met = row["ratio"]["median"] >= target if higher else row["ratio"]["median"] <= target
            goal = f"{'≥' if higher else '≤'} {target:.2f} {'✓' if met else '✗'}"
        lines.append(f"| {label} | {' | '.join(cells)} | {goal} |")
    return "\n".join(lines)


def compare(
    shared: list[str],
    work: Path,
    reps: int,
    warmup: int,
    steps: int,
    threads: int | None,
    systems: list[str],
    theirs_kernel_cache: int = ONEDNN_DEFAULT_KERNEL_CACHE,
) -> dict:
    """Each system's runs, alternating order per repetition, and their summary (medians, ratios)."""
    runs = []
    for rep in range(reps):
        order = systems if rep % 2 == 0 else systems[::-1]
        for system in order:
            print(f"[bench] rep {rep + 1}/{reps}: {system} ...", flush=True)
            run = launch(
                system, command(system, shared, work, rep, warmup, steps), work, rep, threads, theirs_kernel_cache
            )
            run["figures"] = figures(run)
            f = run["figures"]
            print(
                f"[bench]   {f['train_audio_s_per_s']:.1f} audio-s/s, {f['train_s_per_step']:.3f} s/step, "
                f"validation {f['val_s_per_100_utts']:.2f} s/100 utt, peak RSS {f['peak_rss_mb']:.0f} MiB, "
                f"start {f['startup_s']:.1f} s (load avg {run['load_avg_1min']:.1f})",
                flush=True,
            )
            runs.append(run)
    summary = summarize(runs) if set(systems) == {"ours", "theirs"} else {}
    return {"machine": machine(), "summary": summary, "runs": runs}


def add_model_flop_utilization(
    result: dict, shared: list[str], given_peak_tflops: float | None, threads: int | None = None
) -> None:
    """Model FLOP utilisation of both systems: the network's training FLOPs per audio second
    (:func:`train_flops_per_audio_second`) times each system's throughput, over the attainable FLOP/s measured
    in the same run (:func:`matmul_flops_per_second`, training's dtype, the benchmark's threads); on a GPU also
    over the card's dense fp16 peak (``PEAK_TFLOPS`` or ``--peak-tflops``)."""
    summary, runs = result["summary"], result["runs"]
    if "train_audio_s_per_s" not in summary:
        return
    batch = int(next((o.split("=", 1)[1] for o in shared if o.startswith("data.batch_size=")), 8))
    step_audio = statistics.median([d for run in runs[:1] for d in run["record"]["step_audio_s"]])
    per_audio_s = train_flops_per_audio_second(shared, step_audio / batch, batch)
    matmul = matmul_flops_per_second(training_dtype(shared), threads)
    peak = peak_tflops(result["machine"]["gpu"], given_peak_tflops) if result["machine"]["gpu"] else None
    achieved = {system: summary["train_audio_s_per_s"][system]["median"] * per_audio_s for system in ("ours", "theirs")}
    result["mfu"] = {
        "train_flops_per_audio_s": per_audio_s,
        "train_flops_per_step": per_audio_s * step_audio,
        "matmul": matmul,
        **{system: flops / matmul["flops_per_s"] for system, flops in achieved.items()},
        "peak_tflops": peak,
        **({f"{system}_of_peak": flops / (peak * 1e12) for system, flops in achieved.items()} if peak else {}),
    }


def utilization_text(mfu: dict) -> str:
    matmul = mfu["matmul"]
    lines = [
        f"model FLOPs per training step (forward + backward, feature encoder included, real audio): "
        f"{mfu['train_flops_per_step'] / 1e9:.2f} GFLOP ({mfu['train_flops_per_audio_s'] / 1e9:.2f} GFLOP per audio s)",
        f"attainable: {matmul['size']}x{matmul['size']} {matmul['dtype']} matmul, {matmul['threads']} thread(s): "
        f"{matmul['flops_per_s'] / 1e9:.1f} GFLOP/s",
        f"model FLOP utilisation (of that matmul): ours {mfu['ours']:.1%}, HF Trainer {mfu['theirs']:.1%}",
    ]
    if mfu.get("peak_tflops"):
        lines.append(
            f"of the card's {mfu['peak_tflops']:g} TFLOP/s peak: ours {mfu['ours_of_peak']:.1%}, "
            f"HF Trainer {mfu['theirs_of_peak']:.1%}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=sorted(PRESETS), default="tiny", help="tiny (the demo's) or xlsr53 (random weights)"
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="optimizer steps per run; validation runs every steps - warmup"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=50,
        help="steps excluded from the throughput window (default: the demo's first epoch, 50 batches)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (each: one run of each system)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for both (OMP_NUM_THREADS); 1 on a CPU shared with other work, where "
        "threads waiting on each other at every op multiply step times",
    )
    parser.add_argument(
        "--profile",
        metavar="LABEL",
        default=None,
        help="instead of the comparison: one run of ours under Lightning's SimpleProfiler with our phases "
        "(benchmarks/lightning_probe.py:PhaseProfile); the table goes to experiments/throughput/profile-LABEL.txt",
    )
    parser.add_argument("--systems", default="ours,theirs", help=argparse.SUPPRESS)
    parser.add_argument(
        "--theirs-kernel-cache",
        type=int,
        default=ONEDNN_DEFAULT_KERNEL_CACHE,
        help="oneDNN kernels the HF Trainer's process keeps (default: oneDNN's own 1,024, as the recipe runs; "
        "8192: ours)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's dense fp16 peak, for MFU beside the matmul's"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default experiments/throughput/<model>-<device>.json); with --profile, the table "
        "(default experiments/throughput/profile-LABEL.txt)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for logs, checkpoints, MLflow stores")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for both systems (after --), e.g. data=manifest ..."
    )
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")

    os.environ["HF_HUB_OFFLINE"] = "1"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = (args.work or ROOT / "outputs" / "bench" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = [*PRESETS[args.model], *args.overrides]
    shared = [
        *base,
        *prepare_data(base),
        f"trainer.max_steps={args.steps}",
        # at the warm-up's last step and at the last (both, when the warm-up is half the steps, as by default)
        f"val_every_n_optimizer_steps={args.steps - args.warmup}",
    ]
    if args.profile:
        profile(args, shared, work)
        return
    result = compare(
        shared,
        work,
        args.reps,
        args.warmup,
        args.steps,
        args.threads,
        args.systems.split(","),
        args.theirs_kernel_cache,
    )
    result.update(
        command=" ".join([Path(sys.executable).name, "-m", "benchmarks.throughput", *(argv or sys.argv[1:])]),
        date_utc=stamp,
        settings={
            "model": args.model,
            "steps": args.steps,
            "warmup": args.warmup,
            "reps": args.reps,
            "threads": args.threads,
            "theirs_kernel_cache": args.theirs_kernel_cache,
            # what importing broadclass (prepare_data did) set, or the environment had
            "ours_kernel_cache": int(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]),
            "overrides": shared,
        },
        work_dir=str(work),
    )
    add_model_flop_utilization(result, shared, args.peak_tflops, args.threads)
    summary = result["summary"]
    if summary:
        print(table(summary))
    if "mfu" in result:
        print(utilization_text(result["mfu"]))
    out = args.out or RESULTS_DIR / f"{args.model}-{'cuda' if result['machine']['gpu'] else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[bench] wrote {out} (logs and stores in {work})")


if __name__ == "__main__":
    main()
