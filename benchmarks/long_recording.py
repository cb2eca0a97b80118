"""Peak memory of ``predict`` on long recordings: it must not grow with the length.

``python -m benchmarks.long_recording [--model <exported folder>] [--minutes 1 10 60] [--pipeline]
[--threads 1] [--out experiments/throughput/long-recording.json]``

Each recording is the demo corpus's held-out utterances (one voice type, as a session is one speaker) played one
after another to the length, written as a 16 kHz 16-bit WAV. Each is predicted by its own ``python -m
broadclass.predict`` process (the default windows), and that process's peak RSS is read from the kernel when it
ends (``wait4``'s ``ru_maxrss``); its wall time and real-time factor are what predict prints. Without
``--model`` the demo's network (``+experiment=demo``, ``model=tiny``) with random weights is exported and used:
memory and speed do not depend on the weights. With ``--pipeline``, ``transformers.pipeline`` runs on the same
files in its own process too (the exported folder, ``chunk_length_s`` and ``stride_length_s`` as predict's
window and context, the same batch of 8 chunks; a fresh interpreter that never imports broadclass): its peak RSS,
real-time factor (decoding and the pipeline call, as predict's) and how far its text is from predict's (edit
distance over tokens). Not a timed test: the figures are recorded in ``experiments/throughput/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000
WINDOW_S, CONTEXT_S, BATCH = 20.0, 3.0, 8  # predict's defaults (broadclass/predict.py), given to the pipeline
# transformers only, offline; prints the text and the seconds the decoding and the pipeline call took.
PIPELINE = textwrap.dedent(
    """
    import json, sys, time
    import soundfile as sf
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=sys.argv[1])
    start = time.perf_counter()
    wave, rate = sf.read(sys.argv[2], dtype="float32")
    text = asr({"raw": wave, "sampling_rate": rate}, chunk_length_s=float(sys.argv[3]),
               stride_length_s=float(sys.argv[4]), batch_size=int(sys.argv[5]))["text"]
    seconds = time.perf_counter() - start
    print(json.dumps({"text": text, "seconds": seconds, "audio_s": len(wave) / rate,
                      "broadclass": any(m.startswith("broadclass") for m in sys.modules)}))
    """
)


def random_demo_model(work: Path) -> Path:
    """The demo's network with random weights, exported (what ``model=`` loads)."""
    import torch

    from benchmarks.config import compose_config
    from benchmarks.cost_curves import build_module
    from broadclass.model.exported_folder import export_model
    from broadclass.model.format import checkpoint_metadata
    from broadclass.model.module import TrainedModel

    cfg = compose_config(["+experiment=demo", f"paths.root_dir={work}"])
    torch.manual_seed(cfg.seed)
    module = build_module(cfg)
    metadata = checkpoint_metadata(module.labels, module.net.config, module.sample_rate)
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


def measured(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """Run ``cmd``; its output, peak RSS in MiB (the kernel's, from ``wait4``) and wall seconds."""
    start = time.time()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"long_recording: {' '.join(cmd[:4])} failed:\n{output[-3000:]}")
    return output, usage.ru_maxrss / 1024, time.time() - start


def environment(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_predict(model: str, recording: Path, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "broadclass.predict", f"model={model}", f"input={recording}", f"output={out}"]
    output, peak, wall = measured(cmd, environment(threads))
    factor = re.search(r"real-time factor\s+([\d.]+)", " ".join(output.split()))
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "peak_rss_mb": peak,
        "process_wall_s": wall,
        "real_time_factor": float(factor.group(1)) if factor else None,
        "windows": len(record.get("windows", [])),
        "tokens": len(record["tokens"]),
        "text": record["text"],
    }


def run_pipeline(model: str, recording: Path, threads: int | None) -> dict:
    env = {**environment(threads), "PYTHONPATH": ""}
    cmd = [sys.executable, "-c", PIPELINE, model, str(recording), str(WINDOW_S), str(CONTEXT_S), str(BATCH)]
    output, peak, wall = measured(cmd, env)
    result = json.loads(output.strip().splitlines()[-1])
    if result["broadclass"]:
        raise SystemExit("long_recording: the pipeline's interpreter imported broadclass")
    return {
        "peak_rss_mb": peak,
        "process_wall_s": wall,
        "real_time_factor": result["audio_s"] / result["seconds"],
        "tokens": len(result["text"].split()),
        "text": result["text"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="an exported folder (default: see above)")
    parser.add_argument("--pipeline", action="store_true", help="also transformers.pipeline on the same files")
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
    waves = [decode(row["audio_filepath"], RATE) for row in rows]
    model = args.model or str(random_demo_model(work))
    runs = []
    for minutes in args.minutes:
        recording = work / f"recording-{minutes:g}min.wav"
        seconds = write_recording(recording, minutes, waves)
        print(f"[long] predicting {seconds:.0f} s ...", flush=True)
        ours = run_predict(model, recording, work / f"{minutes:g}.jsonl", args.threads)
        run = {"minutes": minutes, "audio_s": seconds, "system": "predict", **ours}
        runs.append(run)
        if args.pipeline:
            print(f"[long] transformers.pipeline on {seconds:.0f} s ...", flush=True)
            theirs = run_pipeline(model, recording, args.threads)
            distance = Levenshtein.distance(ours["text"].split(), theirs["text"].split())
            theirs["token_distance_to_predict"] = distance / max(len(ours["text"].split()), 1)
            runs.append({"minutes": minutes, "audio_s": seconds, "system": "pipeline", **theirs})
        for done in runs[-2 if args.pipeline else -1 :]:
            print(
                f"[long] {minutes:g} min, {done['system']}: peak RSS {done['peak_rss_mb']:.0f} MiB, real-time factor "
                f"{done['real_time_factor']:.1f}, process {done['process_wall_s']:.1f} s",
                flush=True,
            )
    for run in runs:
        del run["text"]
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
