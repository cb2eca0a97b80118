"""The error analysis of a logged evaluation as Markdown: bootstrap intervals, the broad classes' S/D/I
rates and durations per category, the category-tag confusion; and the paired tests of two runs.

Reads what ``ValidationReport`` logged in an evaluation folder (``report.json`` with its
``class_confusion`` and ``durations``, and ``predictions.jsonl``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from broadclass.data.markdown import markdown_table, matrix_table
from broadclass.metrics.intervals import (
    UtteranceScores,
    bootstrap_intervals,
    interval_text,
    intervals_markdown,
    paired_comparison,
    paired_markdown,
    utterance_scores,
)


def parse_predictions(text: str) -> list[dict[str, Any]]:
    """The records of a ``predictions.jsonl`` artifact."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def evaluation_scores(report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> UtteranceScores:
    """Per-utterance counts of an evaluation under the decision rule its report used."""
    analysis = report["class_confusion"]
    return utterance_scores(
        predictions, report["rule"], analysis["classes"], analysis["class_tags"], len(report["categories"])
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Names left, numbers right."""
    return markdown_table(header, rows, align=[":--"] + ["--:"] * (len(header) - 1))


def class_table(report: Mapping[str, Any]) -> str:
    """Per class and category: reference tokens, S/D/I/error rates and decoded segment durations."""
    analysis, durations = report["class_confusion"], report.get("durations")
    blocks = [("all", analysis["total"]["rates"])]
    blocks += [(name, part["rates"]) for name, part in analysis["by_category"].items()]
    header = ["class", "category", "tokens", "sub", "del", "ins", "err"]
    if durations is not None:
        header += ["median s", "IQR s", "decoded"]
    rows = []
    for name in analysis["classes"]:
        for category, rates in blocks:
            row = rates[name]
            cells = [name, category, row["support"], *(f"{row[f'{r}_rate']:.3f}" for r in ("sub", "del", "ins", "err"))]
            if durations is not None:
                spans = durations["classes"][name][category]
                cells += [f"{spans['median']:.3f}", f"{spans['iqr']:.3f}", spans["count"]]
            rows.append(cells)
    return _table(header, rows)


def tag_table(report: Mapping[str, Any]) -> str:
    """Category tags of tokens whose class is right (rows: the utterance's category, columns: tag decoded)."""
    names = report["class_confusion"]["categories"]
    matrix = report["class_confusion"]["tag_confusion"]["total"]
    return matrix_table("reference \\ decoded tag", names, matrix)


def error_analysis_markdown(report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> str:
    """The error analysis section of one evaluation (``report.json`` and ``predictions.jsonl``)."""
    if "class_confusion" not in report:
        return "No error analysis was logged with this evaluation.\n"
    intervals = bootstrap_intervals(evaluation_scores(report, predictions))
    return "\n".join(
        [
            "#### Confidence intervals",
            "",
            intervals_markdown(intervals),
            "",
            "#### Broad classes: substitutions, deletions, insertions and durations",
            "",
            "Rates per reference token of the class (minimum-edit alignment of class tags, as the TER counts; "
            "an insertion counts for the class inserted). Durations: decoded CTC segments, from a token's "
            "first frame to the next token's.",
            "",
            class_table(report),
            "#### Category tags of correctly recognised classes",
            "",
            tag_table(report),
        ]
    )


def paired_runs_markdown(
    name_a: str,
    report_a: Mapping[str, Any],
    predictions_a: Sequence[Mapping[str, Any]],
    name_b: str,
    report_b: Mapping[str, Any],
    predictions_b: Sequence[Mapping[str, Any]],
) -> str:
    """Two evaluations side by side with their intervals, then the paired tests."""
    scores_a, scores_b = evaluation_scores(report_a, predictions_a), evaluation_scores(report_b, predictions_b)
    intervals = {name: bootstrap_intervals(s) for name, s in ((name_a, scores_a), (name_b, scores_b))}
    first = intervals[name_a]
    header = ["metric"] + [cell for name in intervals for cell in (name, f"{name} interval")]
    rows = []
    for metric in first["metrics"]:
        row: list[object] = [metric]
        for result in intervals.values():
            m = result["metrics"].get(metric)
            row += [f"{m['value']:.4f}", interval_text(m)] if m else ["–", "–"]
        rows.append(row)
    return "\n".join(
        [
            f"## {name_a} vs {name_b}",
            "",
            f"{first['confidence']:.0%} bootstrap intervals ({first['resamples']} resamples over "
            f"{first['clustered_by']}s):",
            "",
            _table(header, rows),
            paired_markdown(paired_comparison(scores_a, scores_b), name_a, name_b),
            "",
        ]
    )
