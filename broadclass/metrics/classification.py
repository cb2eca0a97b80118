"""Per-category classification report built from a confusion matrix.

The numbers are those of ``sklearn.metrics.classification_report(targets, preds, labels=range(K),
output_dict=True, zero_division=0)``, but computed from a K×K count matrix so that a metric accumulated
across batches and processes (``CategoryConfusion``) yields the same report as one pass over all the data,
without keeping every prediction around and without scikit-learn at run time.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from broadclass.data.markdown import markdown_table

FIELDS = ("precision", "recall", "f1-score", "support")
AVERAGES = ("macro avg", "weighted avg")
# Metric names: MLflow 3.17 takes word characters of any script, "_", "-", ".", " ", ":" and "/" (no ":" on
# Windows), but Lightning's MLflow logger and MLflow's image keys take ASCII [A-Za-z0-9_/. -] only.
_FLAT_FIELD = {"precision": "precision", "recall": "recall", "f1-score": "f1", "support": "support"}

Report = dict[str, Any]


def _as_array(values: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0: sklearn's ``zero_division=0``."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den != 0)


def report_from_confusion(confmat: torch.Tensor | np.ndarray) -> Report:
    """Classification report from a confusion matrix whose rows are true and columns predicted classes."""
    counts = _as_array(confmat)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {tuple(counts.shape)}")
    counts = counts.astype(np.int64)
    true_positives = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    total = int(support.sum())

    precision = _safe_div(true_positives, predicted.astype(np.float64))
    recall = _safe_div(true_positives, support.astype(np.float64))
    # 2·tp / (2·tp + fp + fn) rather than the harmonic mean of precision and recall: sklearn's formula,
    # so results agree to the last bit, and it is 0 (not 0/0) for a class never seen nor predicted.
    f1 = _safe_div(2 * true_positives, (support + predicted).astype(np.float64))

    report: Report = {
        str(k): {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1-score": float(f1[k]),
            "support": int(support[k]),
        }
        for k in range(counts.shape[0])
    }
    report["accuracy"] = float(true_positives.sum() / total) if total else 0.0
    report["macro avg"] = {
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1-score": float(np.mean(f1)),
        "support": total,
    }
    weights = support.astype(np.float64)
    report["weighted avg"] = {
        "precision": float(np.average(precision, weights=weights)) if total else 0.0,
        "recall": float(np.average(recall, weights=weights)) if total else 0.0,
        "f1-score": float(np.average(f1, weights=weights)) if total else 0.0,
        "support": total,
    }
    return report


def confusion_matrix(
    preds: torch.Tensor | np.ndarray | Sequence[int],
    targets: torch.Tensor | np.ndarray | Sequence[int],
    num_classes: int,
) -> np.ndarray:
    """K×K counts, rows true and columns predicted class."""
    pred_ids = _as_array(preds).astype(np.int64).ravel()
    true_ids = _as_array(targets).astype(np.int64).ravel()
    if pred_ids.shape != true_ids.shape:
        raise ValueError(f"preds and targets differ in length: {pred_ids.size} vs {true_ids.size}")
    for name, ids in (("preds", pred_ids), ("targets", true_ids)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} must be class ids in [0, {num_classes}), got {ids.min()}..{ids.max()}")
    flat = np.bincount(true_ids * num_classes + pred_ids, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def classification_report(
    preds: torch.Tensor | np.ndarray | Sequence[int],
    targets: torch.Tensor | np.ndarray | Sequence[int],
    num_classes: int,
) -> Report:
    """``sklearn.metrics.classification_report(targets, preds, labels=range(num_classes), output_dict=True,
    zero_division=0)``, except that ``support`` is an int and ``"accuracy"`` is always present."""
    return report_from_confusion(confusion_matrix(preds, targets, num_classes))


# Keys of the report's own rows, and the metric names beside the categories: a category may not take them.
RESERVED_KEYS = frozenset({"accuracy", "macro_avg", "weighted_avg", "loss", "wer", "ter", "rule"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def category_keys(names: Sequence[str]) -> list[str]:
    """The name of each category in metric keys (``val/<key>/f1``), in id order.

    The rule: letters lose their accents (``é`` → ``e``, by Unicode decomposition); every run of other
    characters outside ``A-Z a-z 0-9 _ . -`` (spaces, ``/``, other scripts) becomes one ``_``; ``_`` and
    ``.`` are trimmed from both ends. A name left empty, equal to a reserved key (``accuracy``,
    ``macro_avg`` …) or to an earlier category's key gets ``_<id>`` appended (``category_<id>`` when empty).

    Why: Lightning's MLflow logger silently deletes other characters from metric names (``Männer`` would
    log as ``Mnner``), a ``/`` would add a level to the key, and spaces need quoting in MLflow searches.
    """
    keys: list[str] = []
    for index, name in enumerate(names):
        plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
        key = _UNSAFE.sub("_", plain).strip("_.")
        if not key:
            key = f"category_{index}"
        elif key in RESERVED_KEYS or key in keys:
            key = f"{key}_{index}"
        keys.append(key)
    return keys


def flatten_report(report: Mapping[str, Any], names: Sequence[str], prefix: str = "val") -> dict[str, float]:
    """``{"val/male/f1": ..., "val/accuracy": ..., "val/macro_avg/precision": ...}``: MLflow-safe metric names.

    ``names`` are the categories in id order (the report's rows ``"0"``, ``"1"`` …), named by :func:`category_keys`.
    """
    rows = {str(k): key for k, key in enumerate(category_keys(names))}
    if set(rows) != {key for key in report if key not in ("accuracy", *AVERAGES)}:
        raise ValueError(f"{len(names)} category names given for a report of rows {sorted(report)}")
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}/{rows.get(key, key.replace(' ', '_'))}"
        if isinstance(value, Mapping):
            for field, number in value.items():
                flat[f"{name}/{_FLAT_FIELD[field]}"] = float(number)
        else:
            flat[name] = float(value)
    return flat


def _class_rows(report: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, Mapping[str, float]]]:
    classes = [key for key in report if key not in ("accuracy", *AVERAGES)]
    if len(classes) != len(names):
        raise ValueError(f"{len(names)} names given for a report of {len(classes)} classes")
    return [(name, report[str(k)]) for k, name in enumerate(names)]


def format_report(report: Mapping[str, Any], names: Sequence[str], digits: int = 2) -> str:
    """Fixed-width table laid out exactly like sklearn's printed report, rows named by category."""
    rows = _class_rows(report, names)
    width = max(*(len(name) for name in names), len("weighted avg"), digits)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = ("{:>{width}s} " + " {:>9}" * len(FIELDS)).format("", *FIELDS, width=width) + "\n\n"
    for name, scores in rows:
        text += row_fmt.format(name, *(scores[f] for f in FIELDS), width=width, digits=digits)
    support = report["macro avg"]["support"]
    text += "\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", report["accuracy"], support, width=width, digits=digits
    )
    for average in AVERAGES:
        text += row_fmt.format(average, *(report[average][f] for f in FIELDS), width=width, digits=digits)
    return text


def report_markdown(report: Mapping[str, Any], names: Sequence[str], digits: int = 2) -> str:
    """The report as a Markdown table (model cards, MLflow text artifacts)."""

    def cells(label: str, scores: Mapping[str, float]) -> list[object]:
        return [label, *(f"{scores[f]:.{digits}f}" for f in FIELDS[:3]), scores["support"]]

    rows = [cells(name, scores) for name, scores in _class_rows(report, names)]
    rows.append(["**accuracy**", "", "", f"{report['accuracy']:.{digits}f}", report["macro avg"]["support"]])
    rows += [cells(average, report[average]) for average in AVERAGES]
    header = ["category", "precision", "recall", "f1-score", "support"]
    return markdown_table(header, rows, align=["---", "---:", "---:", "---:", "---:"])
