"""CPU training steps against the number of batch shapes a run cycles over, with oneDNN's kernel cache at each size.

``python -m benchmarks.kernel_cache [--shapes 1 8 16 24 32 40 100] [--caches 1024 8192] [--steps 40] [--threads 2]
[--out experiments/throughput/kernel-cache.json]``

torch's CPU kernels (oneDNN) are built for each input shape and kept in a cache of ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``
kernels (oneDNN's default 1,024; importing ``broadclass`` sets 8,192). Each point (cache size, number of shapes K)
runs in its own process with that cache: the demo's network (``+experiment=demo``) is built as ``train`` builds it,
trains one step on each of K batch lengths (8 rows of noise, four of them an eighth shorter; from 1.5 s, one frame
apart: the demo's length, where its grid of 0.6-3 s utterances has about 36 lengths), then ``--steps`` steps
cycling over the K lengths, timed (bf16 autocast, CTC-free loss: the network's own cost). A cache too small for
K shapes rebuilds kernels at every step. The process's peak RSS shows what the held kernels cost. Not a timed
test: the figures are recorded in ``experiments/throughput/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.throughput import ROOT, machine

RATE = 16_000
FIRST_LENGTH_S = 1.5
FRAME = 320  # samples: the feature encoder's stride, 20 ms
ROWS = 8


def batch_lengths(count: int) -> list[int]:
    """``count`` distinct batch lengths (samples) of about the demo's utterances: from 1.5 s, one frame (20 ms) apart.
    All about as long, so a step costs the same whichever it is; the grid of a corpus of 0.6-3 s has about 36."""
    return [int(FIRST_LENGTH_S * RATE) + FRAME * k for k in range(count)]


def point(shapes: int, steps: int) -> dict:
    """One point, in this process (its cache set by the parent): seconds per step cycling over ``shapes`` lengths."""
    import torch

    from benchmarks.config import compose_config
    from benchmarks.cost_curves import build_module

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        cfg = compose_config(["+experiment=demo", f"paths.root_dir={work}"])
        module = build_module(cfg)
    lengths = batch_lengths(shapes)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()

    def step(length: int) -> None:
        audio = torch.randn(ROWS, length)
        mask = torch.ones(ROWS, length, dtype=torch.long)
        mask[ROWS // 2 :, length - length // 8 :] = 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module(audio, mask)["logits"].float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for length in lengths:  # every shape's kernels built once
        step(length)
    start = time.perf_counter()
    for k in range(steps):
        step(lengths[k % shapes])
    return {
        "shapes": shapes,
        "kernel_cache": int(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]),
        "s_per_step": (time.perf_counter() - start) / steps,
        "lengths_s": [n / RATE for n in lengths],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_point(cache: int, shapes: int, steps: int, threads: int | None) -> dict:
    env = dict(os.environ, ONEDNN_PRIMITIVE_CACHE_CAPACITY=str(cache), PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.kernel_cache", "--point", f"--shapes={shapes}", f"--steps={steps}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kernel_cache: the point (cache {cache}, {shapes} shapes) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(points: list[dict]) -> str:
    caches = sorted({p["kernel_cache"] for p in points})
    header = " | ".join(f"cache {c:,}: s / step | peak RSS (MiB)" for c in caches)
    lines = [f"| shapes cycled | {header} |", "|---|" + "---|---|" * len(caches)]
    for shapes in sorted({p["shapes"] for p in points}):
        cells = []
        for cache in caches:
            p = next(p for p in points if p["shapes"] == shapes and p["kernel_cache"] == cache)
            cells.append(f"{p['s_per_step']:.3f} | {p['peak_rss_mib']:,.0f}")
        lines.append(f"| {shapes} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=int, default=[1, 8, 16, 24, 32, 40, 100])
    parser.add_argument("--caches", nargs="+", type=int, default=[1024, 8192], help="ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per point, after one on each shape")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the points (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "throughput" / "kernel-cache.json")
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        print(json.dumps(point(args.shapes[0], args.steps)))
        return
    points = []
    for shapes in args.shapes:
        for cache in args.caches:  # the sizes alternate, so a drift in load falls on both
            print(f"[kernel-cache] {shapes} shapes, cache {cache} ...", flush=True)
            points.append(run_point(cache, shapes, args.steps, args.threads))
    result = {
        "command": " ".join(["python", "-m", "benchmarks.kernel_cache", *(argv or sys.argv[1:])]),
        "date_utc": datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        "machine": machine(),
        "load_avg_1min": os.getloadavg()[0],
        "points": points,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(points))
    print(f"[kernel-cache] wrote {args.out}")


if __name__ == "__main__":
    main()
