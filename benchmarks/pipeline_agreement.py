"""Does ``predict`` (batched) transcribe every file of a manifest as a plain ``transformers.pipeline`` does?

``python -m benchmarks.pipeline_agreement --model <checkpoint | run id | exported folder> --manifest
<manifest.jsonl> [--batch-size 8]``

The model is exported (``broadclass.export``) unless it already is a folder; each manifest row's audio is
written as a 16 kHz float WAV, so no resampler differs between the two; ``transformers.pipeline`` runs on
each file alone in a fresh interpreter that never imports broadclass; ``broadclass.predict`` runs on the
folder at ``--batch-size``. Prints the number of files with the same text, and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf

from broadclass import export, predict
from broadclass.data.audio import decode
from broadclass.data.manifest import read_manifest

# transformers only, offline; one file at a time, so the pipeline pads nothing.
PIPELINE = textwrap.dedent(
    """
    import json, sys
    import soundfile as sf
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=sys.argv[1])
    texts = {}
    for path in sys.argv[2:]:
        wave, rate = sf.read(path, dtype="float32")
        texts[path] = asr({"raw": wave, "sampling_rate": rate})["text"]
    print(json.dumps({"texts": texts, "broadclass": any(m.startswith("broadclass") for m in sys.modules)}))
    """
)


def pipeline_texts(exported: Path, files: Sequence[Path]) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(exported), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=exported.parent,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["broadclass"]:
        raise RuntimeError("the pipeline's interpreter imported broadclass: the comparison would not be independent")
    return out["texts"]


def agreement(model: str, manifest: str, batch_size: int, work: Path) -> tuple[int, list[str]]:
    """(files compared, paths whose texts differ)."""
    exported = Path(model)
    if not (exported.is_dir() and (exported / "config.json").exists()):
        exported = work / "export"
        if export.main([model, str(exported)]) != 0:
            raise SystemExit(f"cannot export {model}")
    folder = work / "audio16k"
    folder.mkdir()
    for row in read_manifest(manifest):
        sf.write(folder / f"{row['id']}.wav", decode(row["audio_filepath"], 16_000), 16_000, subtype="FLOAT")
    files = sorted(folder.glob("*.wav"))
    reference = pipeline_texts(exported, files)
    out = work / "predicted.jsonl"
    predict.main([f"model={exported}", f"input={folder}", f"output={out}", f"batch_size={batch_size}"])
    ours = {r["audio_filepath"]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    return len(files), [path for path in reference if ours.get(path) != reference[path]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint, run id, models:/ URI or exported folder")
    parser.add_argument("--manifest", required=True, help="the files to transcribe (a JSONL manifest)")
    parser.add_argument("--batch-size", type=int, default=8, help="predict's batch size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        total, differ = agreement(args.model, args.manifest, args.batch_size, Path(tmp))
    print(f"predict batch_size={args.batch_size} and transformers.pipeline agree on {total - len(differ)} of {total}")
    for path in differ:
        print(f"  differs: {Path(path).name}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
