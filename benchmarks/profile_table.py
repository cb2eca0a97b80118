"""Where the time goes, side by side, from two ``--profile`` reports of ``benchmarks/throughput.py``.

``python -m benchmarks.profile_table experiments/throughput/profile-{before,after}.txt``

Prints a Markdown table: milliseconds per optimizer step for the training phases, milliseconds per
validation (of the whole validation set) for the validation phases. Each report is one run: on a
shared machine read it as a breakdown, not as a timing to the millisecond.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from broadclass.data.markdown import markdown_table

TRAINING = "RunningStage.TRAINING"
VALIDATING = "RunningStage.VALIDATING"
# (label, profiler actions summed; a name ending in "*" matches every action it starts)
TRAIN_PHASES = [
    ("data loading (next batch)", ["[_TrainingEpochLoop].train_dataloader_next"]),
    ("forward", [f"[phase] forward ({TRAINING})"]),
    ("loss", [f"[phase] loss ({TRAINING})"]),
    ("backward", ["[Strategy]SingleDeviceStrategy.backward"]),
    ("non-finite check (callback)", ["[Callback]SkipNonFiniteSteps.on_before_optimizer_step"]),
    ("learning-rate monitor (callback)", ["[Callback]LearningRateMonitor.on_train_batch_start"]),
    ("MLflow log_metrics", [f"[phase] BufferedMLFlowLogger.log_metrics ({TRAINING})"]),
    ("periodic checkpoint", ["[Callback]ModelCheckpoint{'monitor': None*"]),
]
VALIDATION_PHASES = [
    ("data loading", ["[_EvaluationLoop].val_next"]),
    ("forward", [f"[phase] forward ({VALIDATING})"]),
    ("loss", [f"[phase] loss ({VALIDATING})"]),
    ("greedy decode", [f"[phase] greedy decode ({VALIDATING})"]),
    ("category decisions", [f"[phase] category decisions ({VALIDATING})"]),
    ("metric updates", [f"[phase] confusion update ({VALIDATING})", f"[phase] WER/TER update ({VALIDATING})"]),
    ("epoch end (report, metric compute)", ["[LightningModule]BroadClassModule.on_validation_epoch_end"]),
    ("MLflow log_metrics", [f"[phase] BufferedMLFlowLogger.log_metrics ({VALIDATING})"]),
    ("report artifacts (ValidationReport)", ["[Callback]ValidationReport.on_validation_end"]),
]


def read_profile(path: Path) -> dict[str, tuple[int, float]]:
    """Action → (calls, total seconds) from a SimpleProfiler report."""
    actions = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("\t|")]
        if len(cells) == 5 and cells[2].isdigit():
            actions[cells[0]] = (int(cells[2]), float(cells[3]))
    return actions


def total(actions: dict[str, tuple[int, float]], names: Sequence[str]) -> float:
    def matches(action: str, name: str) -> bool:
        return action.startswith(name[:-1]) if name.endswith("*") else action == name

    return sum(seconds for action, (_, seconds) in actions.items() if any(matches(action, n) for n in names))


def table(paths: Sequence[Path]) -> str:
    profiles = [read_profile(path) for path in paths]
    steps = [actions["run_training_batch"][0] for actions in profiles]

    def row(label: str, names: Sequence[str], per_step: bool) -> list[str]:
        values = [total(a, names) / (n if per_step else 1) * 1000 for a, n in zip(profiles, steps, strict=True)]
        return [label, *(f"{v:.1f}" for v in values)]

    def heading(label: str) -> list[str]:
        return [f"**{label}**", *([""] * len(paths))]

    optimizer = [
        (
            total(a, ["[LightningModule]BroadClassModule.optimizer_step"])
            - total(a, ["[Strategy]SingleDeviceStrategy.training_step", "[Strategy]SingleDeviceStrategy.backward"])
        )
        / n
        * 1000
        for a, n in zip(profiles, steps, strict=True)
    ]
    rows = [
        heading("training, ms per optimizer step"),
        row("whole step (run_training_batch)", ["run_training_batch"], True),
        *(row(label, names, True) for label, names in TRAIN_PHASES),
        ["optimizer step (AdamW, with its hooks)", *(f"{v:.1f}" for v in optimizer)],
        heading("validation, ms per validation (100 utterances)"),
        row("validation steps (validation_step)", ["[Strategy]SingleDeviceStrategy.validation_step"], False),
        *(row(label, names, False) for label, names in VALIDATION_PHASES),
    ]
    return markdown_table(["phase", *(path.stem for path in paths)], rows).rstrip("\n")


def main(argv: Sequence[str] | None = None) -> None:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        raise SystemExit(__doc__)
    print(table(paths))


if __name__ == "__main__":
    main()
