"""Token-level error analysis: which broad classes are substituted, deleted or inserted, per category.

Each reference is aligned with its hypothesis by a minimum-edit alignment over class tags (category tags
stripped, word boundaries removed), the alignment whose length the token error rate counts. The aligned
pairs fill a (C + 1) × (C + 1) matrix per reference category: rows are reference classes plus a last
row for insertions, columns hypothesis classes plus a last column for deletions. Where the class is
right, the two tokens' category tags fill a K × K tag confusion per class: the token-level evidence
behind each utterance's category decision.

The alignment is RapidFuzz's Levenshtein edit script, the one jiwer reports, so the S/D/I counts here
are jiwer's for the same class sequences (several minimum alignments can exist; this picks jiwer's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein
from torchmetrics import Metric

from broadclass.data.labels import WORD_BOUNDARY, split_token

# (reference token, hypothesis token); None on the side an insertion or deletion lacks.
AlignedPair = tuple[str | None, str | None]
RATES = ("sub", "del", "ins", "err")


def aligned_positions(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> list[tuple[int | None, int | None]]:
    """The minimum-edit alignment of the class tags as positions in the given token lists (word boundaries
    skipped): ``(i, j)`` pairs ``ref_tokens[i]`` with ``hyp_tokens[j]``; None on the side an insertion or
    deletion lacks."""
    ref = [i for i, t in enumerate(ref_tokens) if t != WORD_BOUNDARY]
    hyp = [j for j, t in enumerate(hyp_tokens) if t != WORD_BOUNDARY]
    ref_classes = [split_token(ref_tokens[i])[0] for i in ref]
    hyp_classes = [split_token(hyp_tokens[j])[0] for j in hyp]
    pairs: list[tuple[int | None, int | None]] = []
    for op in Levenshtein.opcodes(ref_classes, hyp_classes):
        refs, hyps = ref[op.src_start : op.src_end], hyp[op.dest_start : op.dest_end]
        if op.tag == "delete":
            pairs += [(i, None) for i in refs]
        elif op.tag == "insert":
            pairs += [(None, j) for j in hyps]
        else:  # "equal" and "replace" blocks pair position by position
            pairs += list(zip(refs, hyps, strict=True))
    return pairs


def align_tokens(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> list[AlignedPair]:
    """Reference and hypothesis tokens paired by a minimum-edit alignment of their class tags."""
    return [
        (None if i is None else ref_tokens[i], None if j is None else hyp_tokens[j])
        for i, j in aligned_positions(ref_tokens, hyp_tokens)
    ]


def edit_counts(pairs: Sequence[AlignedPair]) -> dict[str, int]:
    """Substitutions, deletions and insertions (of class tags) in an alignment."""
    counts = {"substitutions": 0, "deletions": 0, "insertions": 0}
    for ref, hyp in pairs:
        if hyp is None:
            counts["deletions"] += 1
        elif ref is None:
            counts["insertions"] += 1
        elif split_token(ref)[0] != split_token(hyp)[0]:
            counts["substitutions"] += 1
    return counts


class TokenIndex:
    """Row/column numbers of class tags and category tags in the count arrays."""

    def __init__(self, class_tags: Sequence[str], category_tags: Sequence[str]):
        self.class_tags = list(class_tags)
        self.category_tags = list(category_tags)
        self._class = {tag: i for i, tag in enumerate(self.class_tags)}
        self._category = {tag: i for i, tag in enumerate(self.category_tags)}

    @property
    def gap(self) -> int:
        """The insertion row and the deletion column."""
        return len(self.class_tags)

    def split(self, token: str | None) -> tuple[int, int | None]:
        """(class row, category tag number or None) of a token; None (a gap) is the last row."""
        if token is None:
            return self.gap, None
        class_tag, category_tag = split_token(token)
        if class_tag not in self._class:
            raise ValueError(f"token {token!r}: class tag {class_tag!r} is not one of {self.class_tags}")
        return self._class[class_tag], self._category.get(category_tag) if category_tag is not None else None


def alignment_counts(pairs: Sequence[AlignedPair], index: TokenIndex) -> tuple[np.ndarray, np.ndarray]:
    """One utterance's class matrix ((C+1) × (C+1)) and tag confusion (C × K × K, class-matched tokens)."""
    classes, categories = len(index.class_tags), len(index.category_tags)
    matrix = np.zeros((classes + 1, classes + 1), dtype=np.int64)
    tags = np.zeros((classes, categories, categories), dtype=np.int64)
    for ref, hyp in pairs:
        row, ref_tag = index.split(ref)
        col, hyp_tag = index.split(hyp)
        matrix[row, col] += 1
        if row == col and ref_tag is not None and hyp_tag is not None:
            tags[row, ref_tag, hyp_tag] += 1
    return matrix, tags


def class_rates(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class: substitution, deletion, insertion and total error rates per reference token of that class.

    A class's insertions are hypothesis tokens of that class aligned with nothing; all rates are 0 for a
    class with no reference token (and ``support`` says so).
    """
    matrix = np.asarray(matrix)
    gap = len(class_names)
    rates = {}
    for c, name in enumerate(class_names):
        support = int(matrix[c, :].sum())
        sub = int(matrix[c, :gap].sum() - matrix[c, c])
        dele, ins = int(matrix[c, gap]), int(matrix[gap, c])

        def rate(n: int, support: int = support) -> float:
            return n / support if support else 0.0

        rates[name] = {
            "sub_rate": rate(sub),
            "del_rate": rate(dele),
            "ins_rate": rate(ins),
            "err_rate": rate(sub + dele + ins),
            "support": support,
        }
    return rates


class ClassConfusion(Metric):
    """Class confusion matrices per reference category and category-tag confusions per class.

    States (summed across processes): ``matrix`` K × (C+1) × (C+1), ``tags`` C × K × K (rows the
    reference token's tag, columns the hypothesis token's, over tokens whose class is right).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    matrix: torch.Tensor
    tags: torch.Tensor

    def __init__(
        self,
        class_names: Sequence[str],
        class_tags: Sequence[str],
        category_names: Sequence[str],
        category_tags: Sequence[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(class_names) != len(class_tags) or len(category_names) != len(category_tags):
            raise ValueError("each class and each category needs one name and one tag")
        self.class_names = list(class_names)
        self.category_names = list(category_names)
        self.index = TokenIndex(class_tags, category_tags)
        c, k = len(class_names), len(category_names)
        self.add_state("matrix", default=torch.zeros(k, c + 1, c + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tags", default=torch.zeros(c, k, k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]], categories: Sequence[int]) -> None:
        """Add a batch: reference and hypothesis tokens, and each utterance's reference category id."""
        if not len(refs) == len(hyps) == len(categories):
            raise ValueError(f"{len(refs)} references, {len(hyps)} hypotheses and {len(categories)} categories")
        matrix = np.zeros(tuple(self.matrix.shape), dtype=np.int64)
        tags = np.zeros(tuple(self.tags.shape), dtype=np.int64)
        for ref, hyp, category in zip(refs, hyps, categories, strict=True):
            one_matrix, one_tags = alignment_counts(align_tokens(ref, hyp), self.index)
            matrix[int(category)] += one_matrix
            tags += one_tags
        self.matrix += torch.from_numpy(matrix).to(self.matrix.device)
        self.tags += torch.from_numpy(tags).to(self.tags.device)

    def compute(self) -> dict[str, Any]:
        """The JSON-ready analysis: see :func:`class_confusion_report`."""
        return class_confusion_report(
            self.matrix.cpu().numpy(), self.tags.cpu().numpy(), self.class_names, self.category_names, self.index
        )


def class_confusion_report(
    matrix: np.ndarray,
    tags: np.ndarray,
    class_names: Sequence[str],
    category_names: Sequence[str],
    index: TokenIndex,
) -> dict[str, Any]:
    """Matrices and per-class rates in total and per reference category, and the tag confusions.

    ``labels`` names the matrix rows and columns (the classes, then ``<ins>`` as a row and ``<del>`` as a
    column); ``tag_confusion`` has rows for the reference token's category and columns for the
    hypothesis token's, in total and per class.
    """
    total = matrix.sum(axis=0)
    return {
        "classes": list(class_names),
        "class_tags": index.class_tags,
        "categories": list(category_names),
        "category_tags": index.category_tags,
        "rows": [*class_names, "<ins>"],
        "columns": [*class_names, "<del>"],
        "total": {"matrix": total.tolist(), "rates": class_rates(total, class_names)},
        "by_category": {
            name: {"matrix": matrix[k].tolist(), "rates": class_rates(matrix[k], class_names)}
            for k, name in enumerate(category_names)
        },
        "tag_confusion": {
            "total": tags.sum(axis=0).tolist(),
            "by_class": {name: tags[c].tolist() for c, name in enumerate(class_names)},
        },
    }


def class_rate_metrics(report: dict[str, Any], prefix: str) -> dict[str, float]:
    """``<prefix>/class/<class>/{sub,del,ins,err}_rate`` from a :func:`class_confusion_report`."""
    return {
        f"{prefix}/class/{name}/{rate}_rate": float(values[f"{rate}_rate"])
        for name, values in report["total"]["rates"].items()
        for rate in RATES
    }


def class_analysis_text(analysis: dict[str, Any], durations: dict[str, Any] | None = None) -> str:
    """Plain-text tables of :func:`class_confusion_report` (and of ``ClassDurations.compute()``): per
    class, its rates in all categories and in each, with the median and IQR of decoded segment lengths."""
    blocks = [("all categories", "all", analysis["total"]["rates"])]
    blocks += [(name, name, part["rates"]) for name, part in analysis["by_category"].items()]
    header = f"{'class':<14}{'support':>8}{'sub':>8}{'del':>8}{'ins':>8}{'err':>8}"
    if durations is not None:
        header += f"{'median s':>10}{'IQR s':>8}{'n':>6}"
    lines = ["broad classes: error rates per reference token; decoded segment durations"]
    for title, key, rates in blocks:
        lines += ["", title, header]
        for name, row in rates.items():
            line = f"{name:<14}{row['support']:>8}" + "".join(f"{row[f'{r}_rate']:>8.3f}" for r in RATES)
            if durations is not None:
                spans = durations["classes"][name][key]
                line += f"{spans['median']:>10.3f}{spans['iqr']:>8.3f}{spans['count']:>6}"
            lines.append(line)
    tags = np.asarray(analysis["tag_confusion"]["total"])
    names = analysis["categories"]
    lines += ["", "category tags of class-matched tokens (rows reference, columns hypothesis)"]
    lines.append(f"{'':<14}" + "".join(f"{name:>10}" for name in names))
    lines += [f"{name:<14}" + "".join(f"{int(n):>10}" for n in row) for name, row in zip(names, tags, strict=True)]
    return "\n".join(lines)
