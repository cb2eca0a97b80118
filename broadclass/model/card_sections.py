"""Model cards: the Markdown ``README.md`` of an exported folder and of an MLflow run, one builder for both.

A card starts with HF front matter, says what the model transcribes, and gives each evaluation's report and
confusion matrix; those pieces need only what a checkpoint records (its metadata and validation report), so
they are here, and :func:`checkpoint_card` is the whole card of a checkpoint exported without its run.
``broadclass.tracking.run_card`` builds a run's card from the same pieces and adds what only the run has
(the config's hyperparameters, a row per validation, the error analysis, framework versions). Tables come
from :mod:`broadclass.data.markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from broadclass.data.markdown import matrix_table
from broadclass.metrics import report_markdown

TAGS = ["automatic-speech-recognition", "wav2vec2", "ctc", "broad-phonetic-classes", "broadclass"]


def number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def front_matter(name: str, base_model: str | None = None) -> str:
    """The card's YAML header, as the HF Hub reads it."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "automatic-speech-recognition"}
    if base_model:
        meta["base_model"] = base_model
    meta["tags"] = TAGS
    meta["metrics"] = ["accuracy", "f1", "wer"]
    meta["model-index"] = [{"name": name, "results": []}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def transcription_sentence(classes: Mapping[str, str], categories: Sequence[Mapping[str, str]]) -> str:
    """What the model writes: ``classes`` maps each broad class's name to its tag, ``categories`` are {name, tag}."""
    class_list = ", ".join(f"{name} (`{tag}`)" for name, tag in classes.items())
    category_list = ", ".join(f"{c['name']} (`{c['tag']}`)" for c in categories)
    return (
        f"It transcribes speech into broad phonetic classes ({class_list}); every token also carries the "
        f"utterance's category tag ({category_list}), written `<class>_<tag>`, with `|` between words."
    )


def evaluation_section(title: str, report: Mapping[str, Any], artifacts: str | None = None) -> str:
    """One evaluation's ``report.json`` (an :class:`~broadclass.model.evaluation.EvaluationResult` summary):
    its loss, accuracy, WER and TER, the full report and the confusion matrix; ``artifacts``: its folder in a run."""
    names = report["categories"]
    errors = report.get("errors", {})
    loss = report.get("metrics", {}).get(f"{report.get('stage')}/loss")
    where = (
        f"; artifacts `{artifacts}/` (report.json, confusion.json, confusion.png, predictions.jsonl)"
        if artifacts
        else ""
    )
    lines = [
        f"### {title}",
        "",
        f"Decision rule `{report['rule']}`{where}.",
        "",
        f"- Loss: {number(loss)}",
        f"- Accuracy: {number(report['report']['accuracy'])}",
        f"- Wer: {number(errors.get('wer'))}",
        f"- Ter: {number(errors.get('ter'))}",
        "",
        report_markdown(report["report"], names, digits=4),
    ]
    if report.get("confusion"):
        lines += [
            "Confusion matrix (rows: true category, columns: predicted):",
            "",
            matrix_table("true \\ predicted", names, report["confusion"]),
        ]
    return "\n".join(lines)


def checkpoint_card(metadata: Mapping[str, Any], folder_name: str) -> str:
    """The card of an exported folder from its metadata alone (``broadclass.json``): a run's export gets the
    run's card instead (``broadclass.tracking.run_card``)."""
    lines = [
        front_matter(folder_name),
        f"# {folder_name}",
        "",
        f"A wav2vec2 CTC model exported by broadclass from `{metadata['source']}`. "
        + transcription_sentence(metadata["classes"], metadata["categories"]),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'asr = pipeline("automatic-speech-recognition", model="{folder_name}")',
        'asr({"raw": waveform_16khz_mono, "sampling_rate": 16000})["text"]  # "v_m p_m | n_m ..."',
        "```",
        "",
        f"`python -m broadclass.predict model={folder_name} input=<file, folder or manifest>` adds the "
        f"utterance category under each decision rule ({', '.join(metadata['rules'])}) with its confidence, and "
        "scores a manifest with references.",
    ]
    report = metadata.get("report")
    if report:
        lines += ["", "## Evaluation", "", evaluation_section(f"Validation at step {report['step']}", report)]
    return "\n".join(lines) + "\n"
