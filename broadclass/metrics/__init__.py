"""Evaluation metrics: the per-category classification report and word/token error rates."""

from broadclass.metrics.classification import (
    category_keys,
    classification_report,
    confusion_matrix,
    flatten_report,
    format_report,
    report_from_confusion,
    report_markdown,
)
from broadclass.metrics.errors import edit_distance, error_counts, split_words, strip_tags
from broadclass.metrics.streaming import CategoryConfusion, RecognitionErrors

__all__ = [
    "CategoryConfusion",
    "RecognitionErrors",
    "category_keys",
    "classification_report",
    "confusion_matrix",
    "edit_distance",
    "error_counts",
    "flatten_report",
    "format_report",
    "report_from_confusion",
    "report_markdown",
    "split_words",
    "strip_tags",
]
