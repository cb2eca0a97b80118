"""How well ``predict``'s token times match the phone timings of eSpeak-synthesised speech.

``python -m benchmarks.ctc_timing --model <checkpoint | exported folder | run id> [--utterances 40]
[--seed 0] [--tolerance 0.040] [--out timing.json]``

Synthesises new sentences (the demo's word list) with the demo's held-out validation voices, one per
category of the model, and records eSpeak NG's phoneme events: the start of every phone in the audio.
Each phone becomes its broad classes (a unit of two classes, ``əl``, splits its interval evenly). The
model's greedy-CTC segments (``broadclass.predict``) are aligned with these reference classes by the
same minimum-edit alignment as the TER; for every class-matched pair, the boundary error is the
decoded start minus eSpeak's start. The check passes when the median absolute error is within the
tolerance (40 ms: two wav2vec2 frames). Prints and writes the distribution of the errors.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from rapidfuzz.distance import Levenshtein

from broadclass.data.demo import load_words
from broadclass.data.espeak import ESpeak
from broadclass.data.labels import LabelMap, split_token
from broadclass.predict import Utterance, predict
from broadclass.tracking.run_model import load_model

# The demo's validation voices (broadclass/data/demo.py), by category name.
VOICES = {"male": "en-us+m6", "female": "en-us+f3", "whisper": "en-us+whisperf", "creaky": "en-us+croak"}


def reference_onsets(phones: Sequence[tuple[str, float]], end: float, labels: LabelMap) -> list[tuple[str, float]]:
    """(class tag, start in seconds) of each broad class eSpeak rendered; pauses and unknown units dropped."""
    tag = {name: spec["tag"] for name, spec in labels.classes.items()}
    onsets = []
    for i, (name, start) in enumerate(phones):
        classes = labels.classes_of(name) if name else None
        if not classes:
            continue
        stop = phones[i + 1][1] if i + 1 < len(phones) else end
        step = (stop - start) / len(classes)
        onsets += [(tag[c], start + n * step) for n, c in enumerate(classes) if c in tag]
    return onsets


def boundary_errors(reference: Sequence[tuple[str, float]], segments: Sequence[dict]) -> list[float]:
    """Decoded start − reference start of every class-matched pair of the minimum-edit alignment."""
    decoded = [(split_token(s["token"])[0], s["start"]) for s in segments if s["token"] != "|"]
    errors = []
    for op in Levenshtein.opcodes([c for c, _ in reference], [c for c, _ in decoded]):
        if op.tag == "equal":
            for r, h in zip(range(op.src_start, op.src_end), range(op.dest_start, op.dest_end), strict=True):
                errors.append(decoded[h][1] - reference[r][1])
    return errors


def measure(model: str, utterances: int, seed: int, tolerance: float) -> dict:
    trained = load_model(model)
    labels = trained.labels
    voices = [VOICES[name] for name in labels.category_names if name in VOICES]
    if not voices:
        raise SystemExit(f"the model's categories {labels.category_names} have no demo voice ({', '.join(VOICES)})")
    espeak, words, rng = ESpeak(), load_words(), random.Random(seed)
    references: dict[str, list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ctc-timing-") as tmp:
        items = []
        for i in range(utterances):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))
            samples, phones = espeak.synthesize_timed(text, voices[i % len(voices)], rng.randint(140, 200), 50)
            path = Path(tmp) / f"u{i:03d}.wav"
            sf.write(path, samples, espeak.sample_rate, subtype="PCM_16")
            references[path.stem] = reference_onsets(phones, samples.size / espeak.sample_rate, labels)
            items.append(Utterance(path.stem, str(path), str(path)))
        records = predict(trained, items).records
    errors = np.array([e for r in records for e in boundary_errors(references[r["id"]], r["segments"])])
    reference_count = sum(len(onsets) for onsets in references.values())
    if errors.size == 0:
        return {"utterances": utterances, "reference_classes": reference_count, "matched": 0, "passed": False}
    absolute = np.abs(errors)
    return {
        "utterances": utterances,
        "reference_classes": reference_count,
        "matched": int(errors.size),
        "median_abs_error_s": float(np.median(absolute)),
        "mean_abs_error_s": float(absolute.mean()),
        "p90_abs_error_s": float(np.quantile(absolute, 0.9)),
        "median_signed_error_s": float(np.median(errors)),
        "within_tolerance_share": float((absolute <= tolerance).mean()),
        "tolerance_s": tolerance,
        "passed": bool(np.median(absolute) <= tolerance),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint, exported folder or MLflow run id")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.040, help="seconds, on the median absolute error")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args.model, args.utterances, args.seed, args.tolerance)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
