"""torchmetrics metrics of the evaluation loop, accumulated batch by batch (arithmetic: classification.py, errors.py).

Every state is a count summed across processes (``dist_reduce_fx="sum"``), so under DDP the epoch's
numbers are those one process would get from the whole evaluation set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from broadclass.metrics.classification import Report, report_from_confusion
from broadclass.metrics.errors import error_counts


class CategoryConfusion(Metric):
    """K×K confusion matrix of utterance categories (rows true, columns predicted)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    confmat: torch.Tensor
    samples: torch.Tensor

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        # How many pairs update() was given: compute() compares it with the matrix total to catch ids
        # outside [0, K), which update() cannot check without waiting on the device.
        self.add_state("samples", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Count a batch of predicted and true category ids (1-D, same length)."""
        if preds.ndim != 1 or preds.shape != targets.shape:
            raise ValueError(
                f"preds and targets must be 1-D class ids of one shape, got {tuple(preds.shape)} "
                f"and {tuple(targets.shape)}"
            )
        # One-hot rows by comparison with arange rather than torch.bincount: CUDA bincount reads the
        # input's min and max back to the host, a sync every batch. The N×K×K boolean outer product is
        # small (a batch of utterances, a handful of categories), exact and deterministic.
        classes = torch.arange(self.num_classes, device=self.confmat.device)
        true = targets.to(self.confmat.device).unsqueeze(1) == classes
        pred = preds.to(self.confmat.device).unsqueeze(1) == classes
        self.confmat += (true.unsqueeze(2) & pred.unsqueeze(1)).sum(dim=0)
        self.samples += targets.numel()

    def compute(self) -> torch.Tensor:
        if int(self.samples) != int(self.confmat.sum()):
            raise ValueError(
                f"{int(self.samples) - int(self.confmat.sum())} of {int(self.samples)} predictions or targets "
                f"were not category ids in [0, {self.num_classes})"
            )
        return self.confmat

    def report(self) -> Report:
        """Per-category precision, recall, F1 and support, accuracy and averages (see ``report_from_confusion``)."""
        return report_from_confusion(self.compute())


class RecognitionErrors(Metric):
    """Corpus word error rate (whole tagged words) and token error rate (class tags only)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    word_errors: torch.Tensor
    words: torch.Tensor
    token_errors: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("word_errors", "words", "token_errors", "tokens"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> None:
        """Add one batch of reference and hypothesis token sequences (``["v_m", "p_m", "|", ...]``)."""
        if len(refs) != len(hyps):
            raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
        totals = [0, 0, 0, 0]
        for ref, hyp in zip(refs, hyps, strict=True):
            for i, count in enumerate(error_counts(ref, hyp)):
                totals[i] += count
        self.word_errors += totals[0]
        self.words += totals[1]
        self.token_errors += totals[2]
        self.tokens += totals[3]

    def compute(self) -> dict[str, torch.Tensor]:
        return {"wer": _rate(self.word_errors, self.words), "ter": _rate(self.token_errors, self.tokens)}


def _rate(errors: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """errors / total, and 0.0 (not NaN) when there was no reference to score against."""
    return torch.where(total > 0, errors / total.clamp_min(1), torch.zeros((), device=total.device))
