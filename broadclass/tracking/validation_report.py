"""Per-validation artifacts: the report and confusion matrix, as JSON and a PNG, plus a console table.

The matrix is also an MLflow image with a step (key ``<stage>/confusion``): the UI's chart view shows it
with a step slider, and the compare view shows the runs' matrices side by side.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from rich.console import Console
from rich.table import Table

from broadclass.model.evaluation import EvaluationResult
from broadclass.tracking.figures import class_confusion_figure, confusion_figure, figure_image
from broadclass.tracking.mlflow_run import mlflow_logger


def report_table(last: EvaluationResult) -> Table:
    report, names = last.report, last.categories
    table = Table(title=f"{last.stage} @ step {last.step} (rule: {last.rule})")
    for column in ("category", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "category" else "right")
    rows = [(names[int(k)], report[k]) for k in map(str, range(len(names)))]
    rows += [(k, report[k]) for k in ("macro avg", "weighted avg")]
    for name, row in rows:
        table.add_row(name, *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1-score")), str(int(row["support"])))
    errors = last.errors
    table.caption = (
        f"accuracy {report['accuracy']:.3f}   WER {errors['wer']:.3f}   TER {errors['ter']:.3f}   "
        f"loss {last.metrics.get(last.stage + '/loss', float('nan')):.3f}"
    )
    return table


class ValidationReport(pl.Callback):
    """Logs ``<stage>/step_<N>/{report.json, confusion.json, confusion.png, predictions.jsonl}`` to MLflow,
    and the error analysis: ``class_confusion.{json,png}`` (broadclass.metrics.alignment) and
    ``durations.json`` (broadclass.metrics.durations).

    A validation's files are written by a background thread while training goes on (~0.4 s, most of
    it the figures); the next validation and the end of training wait for it and raise what it raised.
    A test's files are written before ``on_test_end`` returns: the model card reads them.
    """

    def __init__(self, figures: bool = True, console: bool = True):
        self.figures = figures
        self.console = Console() if console else None
        self._writer: ThreadPoolExecutor | None = None  # made on first use
        self._pending: Future | None = None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last: EvaluationResult | None = getattr(pl_module, "last_evaluation", None)
        if trainer.sanity_checking or last is None or not trainer.is_global_zero:
            return
        loss = trainer.callback_metrics.get(f"{last.stage}/loss")
        if loss is not None:  # the loss as logged (synced and reduced by Lightning)
            last = last.with_metric(f"{last.stage}/loss", float(loss))
        if self.console is not None:
            self.console.print(report_table(last))
        logger = mlflow_logger(trainer.loggers)
        if logger is None:
            return
        self.wait()
        write = partial(self._write, logger.experiment, logger.run_id, last)
        if last.stage == "test":
            write()
            return
        self._writer = self._writer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="validation-report")
        self._pending = self._writer.submit(write)

    def wait(self) -> None:
        """Until the last validation's files are written."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, client: Any, run_id: str, last: EvaluationResult) -> None:
        folder = f"{last.stage}/step_{last.step:06d}"
        client.log_text(run_id, json.dumps(last.summary(), indent=2), f"{folder}/report.json")
        client.log_text(
            run_id,
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in last.predictions),
            f"{folder}/predictions.jsonl",
        )
        client.log_text(
            run_id,
            json.dumps({"categories": last.categories, "rows_true_cols_pred": last.confusion}, indent=2),
            f"{folder}/confusion.json",
        )
        client.log_text(run_id, json.dumps(last.class_confusion, indent=2), f"{folder}/class_confusion.json")
        client.log_text(run_id, json.dumps(last.durations, indent=2), f"{folder}/durations.json")
        if self.figures:
            # Each figure drawn once, its image logged as the PNG and (the confusion) as the step's image: a
            # figure logged with log_figure is drawn again, and drawing is most of this thread's time.
            image = figure_image(confusion_figure(last.confusion, last.categories, title=f"{folder} ({last.rule})"))
            client.log_image(run_id, image, artifact_file=f"{folder}/confusion.png")
            client.log_image(run_id, image, key=f"{last.stage}/confusion", step=last.step)
            image = figure_image(class_confusion_figure(last.class_confusion, title=f"{folder}: broad classes"))
            client.log_image(run_id, image, artifact_file=f"{folder}/class_confusion.png")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before any on_fit_end (the model export reads the run's reports), whatever the callback order.
        self.wait()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Also reached when the run failed: a failed write is reported here, not raised over that error.
        try:
            self.wait()
        except Exception as err:  # any error of MLflow or matplotlib
            rank_zero_warn(f"the last validation report was not fully logged to MLflow: {err!r}")
