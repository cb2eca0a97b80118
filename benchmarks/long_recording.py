"""Peak memory of ``predict`` on long recordings: it must not grow with the length.

``python -m benchmarks.long_recording [--model <checkpoint | exported folder | run id>] [--minutes 1 10 60]
[--threads 1] [--out experiments/throughput/long-recording.json]``

Each recording is the demo corpus's held-out utterances (one voice type, as a session is one speaker) played one
after another to the length, written as a 16 kHz 16-bit WAV. Each is predicted by its own ``python -m
broadclass.predict`` process (the default windows), and that process's peak RSS is read from the kernel when it
ends (``wait4``'s ``ru_maxrss``); its wall time and real-time factor are what predict prints. Without
``--model`` the demo's network (``+experiment=demo``, ``model=tiny``) with random weights is exported and used:
memory and speed do not depend on the weights. Not a timed test: the figures are recorded in
``experiments/throughput/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000


def random_demo_model(work: Path) -> Path:
    """The demo's network with random weights, exported (what ``model=`` loads)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from broadclass.model.checkpoint import TrainedModel, checkpoint_metadata
    from broadclass.model.export import export_model

    with initialize_config_dir(config_dir=str(ROOT / "broadclass" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=demo", f"paths.root_dir={work}"])
    datamodule = instantiate(cfg.data, manifests_from=None)
    module = instantiate(cfg.model, _partial_=True)(labels=datamodule.label_map)
    metadata = checkpoint_metadata(datamodule.label_map, module.net.config)
    return export_model(TrainedModel(module.eval(), metadata, "random init (+experiment=demo)"), work / "model")


def write_recording(path: Path, minutes: float, waves: list[np.ndarray]) -> float:
    """``waves`` one after another, round and round, to ``minutes``, written in blocks; its seconds."""
    total = int(minutes * 60 * RATE)
    written = 0
    with sf.SoundFile(str(path), "w", RATE, 1, subtype="PCM_16") as handle:
        while written < total:
            wave = waves[(written // RATE) % len(waves)][: total - written]
            handle.write(wave)
            written += len(wave)
    return written / RATE


def run_predict(model: str, recording: Path, out: Path, threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "broadclass.predict", f"model={model}", f"input={recording}", f"output={out}"]
    start = time.time()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"long_recording: predict failed on {recording}:\n{output[-3000:]}")
    factor = re.search(r"real-time factor\s+([\d.]+)", " ".join(output.split()))
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "process_wall_s": wall,
        "real_time_factor": float(factor.group(1)) if factor else None,
        "windows": len(record.get("windows", [])),
        "tokens": len(record["tokens"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint, exported folder or run id (default: see above)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the predict processes")
    parser.add_argument("--work", type=Path, default=None, help="folder for the recordings and outputs")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "throughput" / "long-recording.json")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = (args.work or ROOT / "outputs" / "bench" / f"long-{stamp}").resolve()
    work.mkdir(parents=True, exist_ok=True)

    from broadclass.data.audio import decode
    from broadclass.data.demo import build_demo_corpus
    from broadclass.data.manifest import read_manifest

    corpus = build_demo_corpus(work / "demo", categories="voice", n_train=4, n_val=40, seed=0)
    rows = [row for row in read_manifest(corpus["validation"]) if row["category"] == "male"]
    waves = [decode(row["audio_filepath"]) for row in rows]
    model = args.model or str(random_demo_model(work))
    runs = []
    for minutes in args.minutes:
        recording = work / f"recording-{minutes:g}min.wav"
        seconds = write_recording(recording, minutes, waves)
        print(f"[long] predicting {seconds:.0f} s ...", flush=True)
        run = {
            "minutes": minutes,
            "audio_s": seconds,
            **run_predict(model, recording, work / f"{minutes:g}.jsonl", args.threads),
        }
        print(
            f"[long] {minutes:g} min: peak RSS {run['peak_rss_mb']:.0f} MiB, {run['windows']} windows, "
            f"real-time factor {run['real_time_factor']}, process {run['process_wall_s']:.1f} s",
            flush=True,
        )
        runs.append(run)
    from benchmarks.throughput import machine

    result = {
        "command": " ".join(["python", "-m", "benchmarks.long_recording", *(argv or sys.argv[1:])]),
        "date_utc": stamp,
        "model": model if args.model else "random init, +experiment=demo (model=tiny)",
        "threads": args.threads,
        "machine": machine(),
        "load_avg_1min": os.getloadavg()[0],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[long] wrote {args.out}")


if __name__ == "__main__":
    main()
