"""Batches by seconds of audio against batches of 8 rows, on a corpus with a realistic spread of lengths.

``python -m benchmarks.batching [--budgets 40 60] [--reps 2] [--steps 60] [--warmup 20] [--out FILE]``

The demo corpus's utterances last 0.6-3 s; a lab's last 1-15 s. This benchmark makes such a corpus from the
demo corpus (each utterance the concatenation of 1-9 demo utterances of one category, 0.2 s apart, phones
joined; 0.7-19 s, median 3.9 s for the default 800) and measures, for ``data.batch_size=8`` and for each
``data.batch_seconds`` budget:

* padding: the share of padded audio in an epoch's training batches (``LengthBucketBatchSampler`` on the corpus's
  durations, 3 epochs, the demo's seed and jitter) and the padded seconds of the largest batch (what memory holds);
* training throughput (real audio seconds per wall second over steps ``warmup+1 .. steps``) and peak RSS, from
  the real ``python -m broadclass.train +experiment=demo`` on that corpus (``benchmarks/throughput.py``'s runs,
  ours only: the HF Trainer has no batches by seconds), the settings alternating within each repetition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.config import compose_config
from benchmarks.throughput import ROOT, command, figures, launch, machine

GAP_S = 0.2
MAX_PARTS = 9


def spread_corpus(work: Path, n_train: int, n_val: int, seed: int = 0) -> dict[str, Path]:
    """The demo corpus's utterances joined, 1-9 of one category at a time, into longer utterances (0.7-19 s for
    the default 800)."""
    from hydra.utils import instantiate

    datamodule = instantiate(compose_config(["+experiment=demo", f"paths.root_dir={work}"]).data)
    datamodule.prepare_data()
    rng = np.random.default_rng(seed)
    manifests = {}
    for split, count in (("train", n_train), ("validation", n_val)):
        source = Path(datamodule.manifests[split])
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        by_category: dict[str, list[dict]] = {}
        for row in rows:
            by_category.setdefault(row["category"], []).append(row)
        categories = sorted(by_category)
        out_dir = work / "spread" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(count):
            pool = by_category[categories[index % len(categories)]]
            parts = int(np.clip(np.round(rng.lognormal(np.log(2.5), 0.6)), 1, min(MAX_PARTS, len(pool))))
            chosen = [pool[i] for i in rng.choice(len(pool), parts, replace=False)]
            waves = []
            for row in chosen:
                wave, rate = sf.read(source.parent / row["audio_filepath"], dtype="float32")
                waves += [wave, np.zeros(int(GAP_S * rate), dtype=np.float32)]
            wave = np.concatenate(waves[:-1])
            path = out_dir / f"{split}-{index:05d}.wav"
            sf.write(path, wave, rate, subtype="PCM_16")
            lines.append(
                json.dumps(
                    {
                        "id": f"{split}-{index:05d}",
                        "audio_filepath": str(path),
                        "duration": len(wave) / rate,
                        "phones": " | ".join(row["phones"] for row in chosen),
                        "category": chosen[0]["category"],
                        "speaker": chosen[0]["speaker"],
                        "text": " ".join(row["text"] for row in chosen),
                    },
                    ensure_ascii=False,
                )
            )
        manifests[split] = work / "spread" / f"{split}.jsonl"
        manifests[split].write_text("\n".join(lines) + "\n")
    return manifests


def padding(durations: list[float], batching: str, seed: int, jitter: float, epochs: int = 3) -> dict:
    """The share of padded audio over ``epochs`` training epochs of ``batching`` and the largest batch's seconds."""
    from broadclass.data.datamodule import LengthBucketBatchSampler

    key, value = batching.split("=")
    seconds = float(value) if key == "data.batch_seconds" else None
    size = int(value) if key == "data.batch_size" else 8
    sampler = LengthBucketBatchSampler(durations, size, seed=seed, jitter=jitter, batch_seconds=seconds)
    lengths = np.asarray(durations)
    padded = real = 0.0
    largest = 0.0
    batches = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            cost = len(batch) * lengths[batch].max()
            padded += cost
            real += lengths[batch].sum()
            largest = max(largest, cost)
            batches += 1
    return {"padding": 1 - real / padded, "largest_batch_padded_s": largest, "batches_per_epoch": batches / epochs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[40.0, 60.0], help="batch_seconds to compare")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (each: one run of every setting)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the throughput window")
    parser.add_argument("--n-train", type=int, default=800, help="utterances of the spread corpus's training set")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--work", type=Path, default=None, help="folder for the corpus, logs and stores")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default <work>/batching.json)")
    args = parser.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = (args.work or ROOT / "outputs" / "batching" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifests = spread_corpus(work, args.n_train, 40)
    durations = [json.loads(line)["duration"] for line in manifests["train"].read_text().splitlines()]
    cfg = compose_config(["+experiment=demo"])
    settings = ["data.batch_size=8", *(f"data.batch_seconds={budget:g}" for budget in args.budgets)]
    shared = [
        "+experiment=demo",
        f"paths.root_dir={work}",
        f"data.train_manifest={manifests['train']}",
        f"data.val_manifest={manifests['validation']}",
        "data.manifests_from=null",
        f"trainer.max_steps={args.steps}",
        f"val_every_n_optimizer_steps={args.steps}",
    ]
    results: dict[str, dict] = {
        setting: padding(durations, setting, int(cfg.seed), float(cfg.data.bucket_jitter)) for setting in settings
    }
    for rep in range(args.reps):
        for setting in settings if rep % 2 == 0 else settings[::-1]:
            folder = work / setting.split(".", 1)[1].replace("=", "-")
            folder.mkdir(exist_ok=True)
            print(f"[batching] rep {rep + 1}/{args.reps}: {setting} ...", flush=True)
            run = launch(
                "ours",
                command("ours", [*shared, setting], folder, rep, args.warmup, args.steps),
                folder,
                rep,
                args.threads,
            )
            run["figures"] = figures(run)
            results[setting].setdefault("runs", []).append(run)
            f = run["figures"]
            print(
                f"[batching]   {f['train_audio_s_per_s']:.1f} audio-s/s, peak RSS {f['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
    lines = [
        "| batching | batches / epoch | padding | largest batch, padded s | training audio s / wall s | "
        "vs batch 8 | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = statistics.median(r["figures"]["train_audio_s_per_s"] for r in results[settings[0]]["runs"])
    for setting, result in results.items():
        throughput = statistics.median(r["figures"]["train_audio_s_per_s"] for r in result["runs"])
        rss = statistics.median(r["figures"]["peak_rss_mb"] for r in result["runs"])
        result.update(train_audio_s_per_s=throughput, peak_rss_mb=rss)
        lines.append(
            f"| `{setting.split('.', 1)[1]}` | {result['batches_per_epoch']:.0f} | {result['padding']:.1%} | "
            f"{result['largest_batch_padded_s']:.1f} | {throughput:.1f} | {throughput / base:.2f} | {rss:,.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    lengths = np.asarray(durations)
    corpus = {
        "utterances": len(durations),
        "seconds": {
            "min": round(float(lengths.min()), 2),
            "median": round(float(np.median(lengths)), 2),
            "mean": round(float(lengths.mean()), 2),
            "max": round(float(lengths.max()), 2),
        },
    }
    print(f"[batching] corpus: {corpus}")
    result = {
        "command": " ".join(["python", "-m", "benchmarks.batching", *(argv or sys.argv[1:])]),
        "date_utc": stamp,
        "machine": machine(),
        "corpus": corpus,
        "settings": {**vars(args), "work": str(work), "out": str(args.out), "overrides": shared},
        "results": results,
        "table": table,
    }
    out = args.out or work / "batching.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"[batching] wrote {out}")
    return result


if __name__ == "__main__":
    main()
