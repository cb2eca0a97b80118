"""The GPU check: the reference recipe at XLSR-53's full size, ours against the HF Trainer, in one command.

``python -m benchmarks.gpu`` (``make gpu-check``) on a CUDA machine, with no network:

1. synthesizes the demo corpus (eSpeak NG) and cuts it into speaker sets with ``broadclass.prepare``;
2. builds the full-size XLSR-53 architecture (``model=xlsr53_random``: random weights, its published
   configuration) and saves it with ``save_pretrained``, so the recipe loads it as it loads the real
   weights (``model.pretrained=<folder>``);
3. runs ``+experiment=onSet1`` (the recipe's values: ``16-mixed``, batch 8 x accumulation 2, clipping 1.0,
   gradient checkpointing, validation every 100 optimizer steps) for ``--steps`` optimizer steps, and the
   HF Trainer with the same settings on the same data (``benchmarks/hf_trainer_baseline.py``), side by side;
4. prints, for both: seconds per optimizer step, audio seconds per second, peak GPU memory, fp16 overflow
   steps, and model FLOP utilisation; and writes every figure to ``--out``.

Logging goes to CSV (``logger=csv``): the check needs neither MLflow nor its SQL stack, which the offline
GPU machine lacks. ``--smoke`` runs the same pipeline on a CPU in a minute or two: the tiny model, 10 steps,
``bf16-mixed`` (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.throughput import ROOT, add_model_flop_utilization, compare, prepare_data, table, utilization_text

FULL = {"steps": 300, "warmup": 20, "val_every": 100, "n_train": 3200, "n_val": 100}
SMOKE = {"steps": 10, "warmup": 3, "val_every": 5, "n_train": 48, "n_val": 16}
# Figures the check prints; the rest of the comparison is in the JSON.
CHECK_FIGURES = {
    "train_s_per_step",
    "train_audio_s_per_s",
    "val_s_per_100_utts",
    "peak_gpu_mb",
    "peak_rss_mb",
    "overflow_steps",
    "fit_s",
}


def demo_categories() -> str:
    """The demo corpus's categories as one Hydra override (conf/data/demo.yaml states them)."""
    from benchmarks.config import compose_config

    categories = compose_config(["+experiment=demo"]).data.categories
    return "data.categories=[" + ",".join(f"{{name: {c.name}, tag: {c.tag}}}" for c in categories) + "]"


def make_sets(work: Path, n_train: int, n_val: int) -> Path:
    """The demo corpus, synthesized and cut into 5 speaker sets by the real ``broadclass.prepare`` CLI."""
    from broadclass.data.demo import build_demo_corpus

    manifests = build_demo_corpus(work / "demo", categories="voice", n_train=n_train, n_val=n_val, seed=0)
    corpus = manifests["train"].parent / "corpus.jsonl"  # beside the manifests: their audio paths stay valid
    corpus.write_text("".join(manifests[split].read_text() for split in ("train", "validation")))
    sets = work / "sets"
    subprocess.run([sys.executable, "-m", "broadclass.prepare", str(corpus), "sets=5", f"out={sets}"], check=True)
    return sets


def save_full_size_xlsr53(folder: Path) -> Path:
    """XLSR-53's architecture with random weights, written as a pretrained folder (config + safetensors)."""
    from omegaconf import OmegaConf

    from benchmarks.config import compose_config
    from broadclass.model.encoder import build_network

    cfg = compose_config(["model=xlsr53_random"])
    build_network(vocab_size=2, pretrained=None, config=OmegaConf.to_container(cfg.model.config)).save_pretrained(
        folder
    )
    return folder


def recipe_overrides(work: Path, sets: Path, smoke: bool, steps: int, val_every: int) -> list[str]:
    model = ["model=tiny", "trainer=cpu"] if smoke else [f"model.pretrained={save_full_size_xlsr53(work / 'xlsr53')}"]
    return [
        "+experiment=onSet1",
        *model,
        f"paths.sets_dir={sets}",
        demo_categories(),
        "logger=csv",
        "~callbacks.export_model",
        "~callbacks.model_card",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={steps}",
        f"val_every_n_optimizer_steps={val_every}",
        # A checkpoint at each validation, as the HF Trainer saves at each evaluation.
        f"checkpoint_every_n_optimizer_steps={val_every}",
        "trainer.enable_progress_bar=false",
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 10 steps, on a CPU: checks the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300; smoke 10)")
    parser.add_argument("--work", type=Path, default=None, help="folder for data, models, logs (default outputs/)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default <work>/gpu-check.json)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense fp16 peak, for MFU")
    args = parser.parse_args(argv)
    plan = dict(SMOKE if args.smoke else FULL)
    if args.steps:
        plan["steps"] = args.steps
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    work = (args.work or ROOT / "outputs" / "gpu-check" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device; use --smoke to check the pipeline on a CPU")
    sets = make_sets(work, plan["n_train"], plan["n_val"])
    base = recipe_overrides(work, sets, args.smoke, plan["steps"], plan["val_every"])
    shared = [*base, *prepare_data(base)]
    result = compare(
        shared, work, reps=1, warmup=plan["warmup"], steps=plan["steps"], threads=None, systems=["ours", "theirs"]
    )
    result.update(command=" ".join(["python", "-m", "benchmarks.gpu", *(argv or sys.argv[1:])]), date_utc=stamp)
    result["settings"] = {**plan, "overrides": shared}
    add_model_flop_utilization(result, shared, args.peak_tflops)
    print(table({key: value for key, value in result["summary"].items() if key in CHECK_FIGURES}))
    if "mfu" in result:
        print(utilization_text(result["mfu"]))
    out = args.out or work / "gpu-check.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"[gpu-check] wrote {out}")
    return result


if __name__ == "__main__":
    main()
