"""How cost grows: the network against utterance length and batch size, the manifest-level work against rows.

``python -m benchmarks.cost_curves [--models tiny xlsr53_small] [--seconds 1 2 4 8 15 30] [--batches 1 4 8]
[--rows 10000 100000 1000000] [--threads 1] [--out experiments/throughput/cost-curves.json]``

**The network.** Each point (model, seconds, batch) runs in its own process, so its peak RSS is its own (read
from the kernel when it ends, ``wait4``'s ``ru_maxrss``), and that less the RSS of the same process once the
model is built (``base_rss``): what training adds (gradients, AdamW's two moments, the batch's activations). A
point builds the module as ``train`` does (the composed config: ``+experiment=demo`` for ``tiny``;
``model=xlsr53_random`` at 4 layers for ``xlsr53_small``, XLSR-53's widths and feature encoder) and times, on
``batch`` utterances of ``seconds`` of noise, a training step (forward, CTC loss, backward, AdamW step;
``--warmup`` untimed first) and an evaluation forward (``BroadClassModule.infer``, fp32, no grad), the median of
``--repeats``. Throughput is audio seconds per wall second.

**The manifest-level work.** A manifest of ``rows`` rows (phones, category, speaker: 40 speakers, 4 categories)
whose audio paths cycle over a pool of 200 short WAV files, so every row's header is read but no file is decoded.
One process per size times ``read_manifest`` (parse and field checks) and ``prepare_sets`` (reading the table,
row and label checks, the headers, 5 speaker folds, writing the sets), and reports its peak RSS.

Writes the JSON record, a Markdown table beside it (``.md``) and the figure (``.png``). Not a timed test: the
figures are recorded in ``experiments/throughput/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000
MODELS = {
    "tiny": ["+experiment=demo"],
    # XLSR-53's layout (1024 wide, layer-norm feature encoder of 512 channels) at 4 of its 24 layers.
    "xlsr53_small": ["+experiment=demo", "model=xlsr53_random", "model.config.num_hidden_layers=4"],
}
POOL = 200  # distinct WAV files behind the manifest rows
SPEAKERS, CATEGORIES = 40, ("male", "female", "whisper", "creaky")
PHONES = "h ə l oʊ | w ɜ l d"


def rss_mib() -> float:
    """This process's resident set now, MiB (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def build_module(cfg):
    """The module ``train`` builds from the composed config ``cfg`` (the data's labels; no corpus is built)."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, manifests_from=None)
    return instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)


def network_point(model: str, seconds: float, batch: int, warmup: int, repeats: int) -> dict:
    """Times one point in this process; its peak RSS is read by the parent."""
    import torch

    torch.manual_seed(0)
    from benchmarks.config import compose_config

    with tempfile.TemporaryDirectory() as work:
        module = build_module(compose_config([*MODELS[model], f"paths.root_dir={work}"]))
    base_rss = rss_mib()
    samples = int(seconds * RATE)
    audio = torch.randn(batch, samples)
    mask = torch.ones(batch, samples, dtype=torch.long)
    frames = int(module.net._get_feat_extract_output_lengths(torch.tensor(samples)))
    tokens = max(1, frames // 5)  # a speech rate of 10 tokens a second
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(1, len(module.labels.tokens), (batch, tokens), generator=generator)
    targets = {"labels": labels, "label_lengths": torch.full((batch,), tokens), "categories": torch.zeros(batch).long()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()

    def train_step() -> None:
        out = module(audio, mask)
        loss, _ = module._loss(out, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(step) -> float:
        for _ in range(warmup):
            step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return median(times)

    train_s = timed(train_step)
    module.eval()
    with torch.no_grad():
        infer_s = timed(lambda: module.infer(audio, mask))
    return {
        "model": model,
        "seconds": seconds,
        "batch": batch,
        "train_step_s": train_s,
        "train_audio_per_s": batch * seconds / train_s,
        "infer_s": infer_s,
        "infer_audio_per_s": batch * seconds / infer_s,
        "base_rss_mib": base_rss,
        "parameters": sum(p.numel() for p in module.parameters()),
    }


def write_pool(folder: Path) -> list[str]:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(POOL):
        path = folder / f"{i:03d}.wav"
        sf.write(path, (rng.standard_normal(int(RATE * (1 + i % 15) / 10)) * 0.1).astype("float32"), RATE)
        paths.append(str(path))
    return paths


def data_point(rows: int) -> dict:
    from broadclass.data.manifest import read_manifest
    from broadclass.data.sets import prepare_sets

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pool = write_pool(work / "audio")
        manifest = work / "corpus.jsonl"
        with manifest.open("w", encoding="utf-8") as handle:
            for i in range(rows):
                speaker = i % SPEAKERS
                record = {
                    "id": f"u{i}",
                    "audio_filepath": pool[i % POOL],
                    "phones": PHONES,
                    "category": CATEGORIES[speaker % len(CATEGORIES)],
                    "speaker": f"s{speaker}",
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        size_mb = manifest.stat().st_size / 1e6
        start = time.perf_counter()
        read = read_manifest(manifest, required=("audio_filepath", "phones", "category", "speaker"))
        read_s = time.perf_counter() - start
        del read
        start = time.perf_counter()
        prepare_sets(manifest, work / "sets", n_sets=5, labels="ipa")
        prepare_s = time.perf_counter() - start
    return {"rows": rows, "manifest_mb": size_mb, "read_manifest_s": read_s, "prepare_sets_s": prepare_s}


def run_point(kind: str, args: list[str], threads: int) -> dict:
    """One point in a fresh interpreter; its record plus its peak RSS (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.cost_curves", "--point", kind, *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"point {kind} {args} failed:\n{stderr[-3000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    record["peak_rss_mib"] = usage.ru_maxrss / 1024
    if "base_rss_mib" in record:
        record["batch_rss_mib"] = record["peak_rss_mib"] - record["base_rss_mib"]
    return record


def markdown(result: dict) -> str:
    lines = [
        "| model | seconds | batch | training step (s) | training audio s / s | eval forward (s) | eval audio s / s |"
        " peak RSS (MiB) | above the built model (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["network"]:
        lines.append(
            f"| {p['model']} | {p['seconds']:g} | {p['batch']} | {p['train_step_s']:.3f}"
            f" | {p['train_audio_per_s']:.1f} | {p['infer_s']:.3f} | {p['infer_audio_per_s']:.1f}"
            f" | {p['peak_rss_mib']:.0f} | {p['batch_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "| rows | manifest (MB) | read_manifest (s) | prepare_sets (s) | peak RSS (MiB) | KB per row added |",
        "|---|---|---|---|---|---|",
    ]
    previous = None
    for p in sorted(result["data"], key=lambda p: p["rows"]):
        # Memory per row as the slope from the size before: the interpreter's own RSS is in every figure.
        slope = (
            f"{(p['peak_rss_mib'] - previous['peak_rss_mib']) * 1024 / (p['rows'] - previous['rows']):.2f}"
            if previous
            else "–"
        )
        lines.append(
            f"| {p['rows']:,} | {p['manifest_mb']:.1f} | {p['read_manifest_s']:.2f} | {p['prepare_sets_s']:.2f}"
            f" | {p['peak_rss_mib']:.0f} | {slope} |"
        )
        previous = p
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for model in sorted({p["model"] for p in result["network"]}):
        for batch in sorted({p["batch"] for p in result["network"]}):
            points = sorted(
                (p for p in result["network"] if p["model"] == model and p["batch"] == batch),
                key=lambda p: p["seconds"],
            )
            xs = [p["seconds"] for p in points]
            label = f"{model}, batch {batch}"
            axes[0].plot(xs, [p["train_audio_per_s"] for p in points], marker="o", label=label)
            axes[1].plot(xs, [p["infer_audio_per_s"] for p in points], marker="o", label=label)
            axes[2].plot(xs, [p["batch_rss_mib"] for p in points], marker="o", label=label)
    for axis, title in zip(
        axes,
        ("training (audio s per wall s)", "evaluation forward (audio s per wall s)", "peak RSS above the model (MiB)"),
        strict=True,
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("utterance length (s)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"cost against utterance length: {result['cpu']}, {result['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="none: no network")
    parser.add_argument("--seconds", nargs="+", type=float, default=[1, 2, 4, 8, 15, 30])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--rows", nargs="*", type=int, default=[10_000, 100_000, 1_000_000], help="none: no data")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first at each point")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (the median is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "throughput" / "cost-curves.json"))
    parser.add_argument("--point", choices=["network", "data"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point == "network":
        print(json.dumps(network_point(args.model, args.seconds[0], args.batches[0], args.warmup, args.repeats)))
        return
    if args.point == "data":
        print(json.dumps(data_point(args.rows[0])))
        return
    started = time.time()
    result = {
        "command": " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "threads": args.threads,
        "load_average_before": os.getloadavg()[0],
        "network": [],
        "data": [],
    }
    for model in args.models:
        for batch in args.batches:
            for seconds in args.seconds:
                point = [
                    "--model",
                    model,
                    "--seconds",
                    str(seconds),
                    "--batches",
                    str(batch),
                    "--repeats",
                    str(args.repeats),
                ]
                result["network"].append(run_point("network", point, args.threads))
                print(json.dumps(result["network"][-1]), flush=True)
    for rows in args.rows:
        result["data"].append(run_point("data", ["--rows", str(rows)], args.threads))
        print(json.dumps(result["data"][-1]), flush=True)
    result["load_average_after"] = os.getloadavg()[0]
    result["wall_s"] = time.time() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    if result["network"]:
        figure(result, out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {out} and the table and figure beside it")


if __name__ == "__main__":
    main()
