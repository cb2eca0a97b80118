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
   steps, and model FLOP utilisation; and writes every figure to ``--out``;
5. then, as the time budget allows, the same comparison under ``bf16-mixed`` (on Ampere and later: no loss
   scaler) and ours with batches by seconds of audio (``data.batch_seconds``, the budget of the recipe's
   batch 8 at the training set's median length), each printing the same figures.

The whole check must fit a lent machine's time (``--budget-s``, default 9 minutes of the 12 that include the
machine's start). It estimates each variant's time before it starts — before the first, from a prior per
run; after it, from what the first variant's runs really took — and drops an optional variant rather than
overrun; what it dropped, and why, is printed and written to the JSON.

Logging goes to CSV (``logger=csv``): the check needs neither MLflow nor its SQL stack, which the offline
GPU machine lacks. ``--smoke`` runs the same pipeline on a CPU in a minute or two: the tiny model, 10 steps,
``bf16-mixed`` (a test runs it), then ours with ``data.batch_seconds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.throughput import (
    FIGURES,
    ROOT,
    add_model_flop_utilization,
    compare,
    fmt,
    prepare_data,
    table,
    utilization_text,
)

# optional_steps: the optional variants' steps (throughput needs fewer than the recipe's run; one validation at the
# end). prior_start_s / prior_step_s: a guess at a run's process start and seconds per optimizer step (validations
# included), for the estimate made before anything ran; the first variant's measured runs replace it.
FULL = {
    "steps": 300,
    "optional_steps": 100,
    "warmup": 20,
    "val_every": 100,
    "n_train": 3200,
    "n_val": 100,
    "prior_start_s": 60.0,
    "prior_step_s": 0.3,
}
SMOKE = {
    "steps": 10,
    "optional_steps": 10,
    "warmup": 3,
    "val_every": 5,
    "n_train": 48,
    "n_val": 16,
    "prior_start_s": 15.0,
    "prior_step_s": 2.0,
}

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


@dataclass(frozen=True)
class Variant:
    """One comparison of the check: its name, its Hydra overrides, the systems it runs, its optimizer steps, and
    whether it may be dropped."""

    name: str
    overrides: tuple[str, ...]
    systems: tuple[str, ...]
    steps: int
    required: bool


@dataclass(frozen=True)
class RunCost:
    """A run's wall time on this machine: its process start and seconds per optimizer step, validations included."""

    start_s: float
    step_s: float

    def of(self, variant: Variant) -> float:
        """The wall seconds ``variant``'s runs take in all."""
        return len(variant.systems) * (self.start_s + variant.steps * self.step_s)

    @classmethod
    def measured(cls, runs: list[dict], steps: int) -> RunCost:
        """From finished runs: the slowest run's start and steps (launch to exit minus the fit is its start)."""
        walls = [run["exit"] - run["launch"] for run in runs]
        fits = [run["figures"]["fit_s"] for run in runs]
        return cls(max(w - f for w, f in zip(walls, fits, strict=True)), max(fits) / steps)


def variants(smoke: bool, bf16_supported: bool, batch_seconds: float, steps: int, optional_steps: int) -> list[Variant]:
    """The check's variants in the order they run: the recipe's precision first (required), then the optional
    ones. On a CPU (smoke) the recipe runs ``bf16-mixed`` (``trainer=cpu``), and there is no other precision."""
    both = ("ours", "theirs")
    seconds = f"data.batch_seconds={batch_seconds:g}"
    by_seconds = Variant("batch_seconds", (seconds,), ("ours",), optional_steps, required=False)
    if smoke:
        return [Variant("bf16-mixed", (), both, steps, required=True), by_seconds]
    bf16 = Variant("bf16-mixed", ("trainer.precision=bf16-mixed",), both, optional_steps, required=False)
    recipe = Variant("16-mixed", ("trainer.precision=16-mixed",), both, steps, required=True)
    return [recipe, *([bf16] if bf16_supported else []), by_seconds]


def dropped_for_time(variant: Variant, elapsed_s: float, cost: RunCost, budget_s: float) -> str | None:
    """Why ``variant`` is dropped (its estimate would take the check past its budget), or None to run it."""
    needed = cost.of(variant)
    if variant.required or elapsed_s + needed <= budget_s:
        return None
    return f"needs about {needed:.0f} s; {max(budget_s - elapsed_s, 0):.0f} s of the {budget_s:.0f} s budget left"


def recipe_batch_seconds(shared: list[str]) -> float:
    """The recipe's batch size times the training set's median utterance length: batches by seconds that hold,
    on average, what the recipe's batches of rows hold. Read from the pinned training manifest's durations (which
    ``broadclass.prepare`` writes): the data was checked once already, by ``prepare_data``."""
    from benchmarks.config import compose_config
    from broadclass.data.manifest import read_manifest

    data = compose_config(shared).data
    durations = [row["duration"] for row in read_manifest(data.train_manifest, required=("duration",))]
    return round(int(data.batch_size) * statistics.median(durations), 1)


def variants_table(results: dict[str, dict]) -> str:
    """The check's figures, a column per variant and system (each run's own figures; one repetition each)."""
    columns = [(name, run) for name, result in results.items() for run in result["runs"]]
    names = {"ours": "ours", "theirs": "HF Trainer"}
    lines = [
        "| figure | " + " | ".join(f"{name}: {names[run['system']]}" for name, run in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label, _, _ in FIGURES:
        if key not in CHECK_FIGURES:
            continue
        values = [run["figures"].get(key) for _, run in columns]
        if all(value is None for value in values):
            continue
        cells = ["–" if value is None else fmt(value, key) for value in values]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


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


def recipe_overrides(model: list[str], sets: Path, steps: int, val_every: int) -> list[str]:
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
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 10 steps, on a CPU: checks the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300; smoke 10)")
    parser.add_argument("--work", type=Path, default=None, help="folder for data, models, logs (default outputs/)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default <work>/gpu-check.json)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense fp16 peak, for MFU")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="wall seconds the whole check may take (default 540: 9 of a lent machine's 12 minutes, the rest for "
        "its start); optional variants that would overrun it are dropped",
    )
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
    model = (
        ["model=tiny", "trainer=cpu"] if args.smoke else [f"model.pretrained={save_full_size_xlsr53(work / 'xlsr53')}"]
    )
    base = recipe_overrides(model, sets, plan["steps"], plan["val_every"])
    data = prepare_data(base)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    planned = variants(args.smoke, bf16, recipe_batch_seconds([*base, *data]), plan["steps"], plan["optional_steps"])
    cost = RunCost(plan["prior_start_s"], plan["prior_step_s"])
    elapsed = time.monotonic() - started
    print(
        f"[gpu-check] {elapsed:.0f} s spent on data and model; estimated "
        + ", ".join(f"{v.name} {cost.of(v):.0f} s" for v in planned)
        + f" (a guess: {cost.start_s:.0f} s a start, {cost.step_s:.2f} s a step); budget {args.budget_s:.0f} s in all",
        flush=True,
    )
    results: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    for variant in planned:
        elapsed = time.monotonic() - started
        reason = dropped_for_time(variant, elapsed, cost, args.budget_s)
        if reason:
            dropped[variant.name] = reason
            print(f"[gpu-check] {variant.name} dropped: {reason}", flush=True)
            continue
        print(f"[gpu-check] {variant.name} ({', '.join(variant.systems)}, {variant.steps} steps) ...", flush=True)
        val_every = min(plan["val_every"], variant.steps)
        overrides = [*recipe_overrides(model, sets, variant.steps, val_every), *data, *variant.overrides]
        (work / variant.name).mkdir(exist_ok=True)
        result = compare(
            overrides,
            work / variant.name,
            reps=1,
            warmup=plan["warmup"],
            steps=variant.steps,
            threads=None,
            systems=list(variant.systems),
        )
        result["overrides"] = overrides
        add_model_flop_utilization(result, overrides, args.peak_tflops)
        results[variant.name] = result
        if variant.required:  # what a run really takes here, for the optional variants' estimates
            cost = RunCost.measured(result["runs"], variant.steps)
            print(f"[gpu-check] measured: {cost.start_s:.0f} s a start, {cost.step_s:.2f} s a step", flush=True)
    for name, result in results.items():
        print(f"\n[gpu-check] {name}")
        if result["summary"]:
            print(table({key: value for key, value in result["summary"].items() if key in CHECK_FIGURES}))
        if "mfu" in result:
            print(utilization_text(result["mfu"]))
    print("\n[gpu-check] every variant's runs, side by side\n" + variants_table(results))
    for name, reason in dropped.items():
        print(f"[gpu-check] not run: {name} ({reason})")
    check = {
        "command": " ".join(["python", "-m", "benchmarks.gpu", *(argv or sys.argv[1:])]),
        "date_utc": stamp,
        "settings": {**plan, "overrides": [*base, *data], "budget_s": args.budget_s},
        "variants": results,
        "dropped": dropped,
        "wall_s": time.monotonic() - started,
    }
    out = args.out or work / "gpu-check.json"
    out.write_text(json.dumps(check, indent=1))
    print(f"[gpu-check] wrote {out} ({check['wall_s']:.0f} s in all)")
    return check


if __name__ == "__main__":
    main()
