"""What one evaluation (a validation, the test, or predict on a manifest with references) found: built once by
the module (``BroadClassModule.evaluation_result``), read by attribute."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class EvaluationResult:
    stage: str  # "val" or "test"
    step: int  # the optimizer step it ran after
    epoch: int
    rule: str  # the primary rule (model.primary_rule): the decision rule the report and confusion matrix are for
    categories: list[str]  # category names, by category id
    report: dict[str, Any]  # the classification report of ``rule`` (broadclass.metrics.classification)
    rule_reports: dict[str, dict[str, Any]]  # the classification report of every rule, by rule
    confusion: list[list[int]]  # rows: true category, columns: decided category
    errors: dict[str, float]  # WER and TER
    metrics: dict[str, float]  # every logged metric of this evaluation, by key
    class_confusion: dict[str, Any]  # broadclass.metrics.alignment.ClassConfusion's result
    durations: dict[str, Any]  # broadclass.metrics.durations.ClassDurations' result
    predictions: list[dict[str, Any]]  # one per utterance: reference, hypothesis, decisions, speaker

    def summary(self) -> dict[str, Any]:
        """Everything but the per-utterance predictions, as plain types: ``report.json``, checkpoint metadata."""
        return {key: value for key, value in asdict(self).items() if key != "predictions"}

    def with_metric(self, key: str, value: float) -> EvaluationResult:
        return replace(self, metrics={**self.metrics, key: value})
