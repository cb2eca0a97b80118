"""The saved model's format: what a checkpoint and an exported folder hold besides the weights, and reading it.

Every checkpoint carries a ``"broadclass"`` section (written by ``BroadClassModule.on_save_checkpoint``)
with what inference needs: the token list, the label config and categories the LabelMap is rebuilt
from, the full network config (not only the overrides the run was configured with, so a model
fine-tuned from a hub checkpoint is rebuilt without the hub), the audio sample rate and the validation
report it was saved after. An exported folder (``broadclass.model.exported_folder``) keeps the same section in
``broadclass.json``. Loading a model from them is the module's own (``BroadClassModule.restore_from``); this
module imports no model.

Nothing is unpickled: checkpoints are read with ``torch.load(weights_only=True)`` and exported weights
from safetensors, so a file someone hands over cannot run code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from broadclass.data.labels import LabelMap

METADATA_KEY = "broadclass"
METADATA_FILE = "broadclass.json"
MODEL_TYPE = "broadclass-ctc"  # the logged model's type in MLflow
FORMAT_VERSION = 1


class ModelLoadError(RuntimeError):
    """A model source that cannot be used; the message names it and says why."""


class VocabularyMismatchError(ModelLoadError):
    """Weights trained for other tokens: restoring them would mislabel every output."""


def label_config(labels: LabelMap) -> dict[str, Any]:
    """A label config (``conf/labels/*.yaml`` form) that rebuilds ``labels``, as plain types."""
    classes = {
        name: {"tag": str(spec["tag"]), "phones": [str(p) for p in spec.get("phones", [])]}
        for name, spec in labels.classes.items()
    }
    drop = [str(name) for name in labels.drop]
    # LabelMap takes the classes named in `drop` out of `classes` (they get no tokens) but keeps their
    # phones known; they are written back from its phone table, after the others so token ids are kept,
    # under a tag no class uses (a dropped class's tag names no token).
    for name in drop:
        phones = sorted(phone for phone, owner in labels._phone_to_class.items() if owner == name)
        classes[name] = {"tag": f"({name})", "phones": phones}
    return {
        "name": labels.name,
        "classes": classes,
        "strip": [str(mark) for mark in labels.strip],
        "unknown": labels.unknown,
        "drop": drop,
    }


def checkpoint_metadata(
    labels: LabelMap, network_config: PretrainedConfig, sample_rate: int, report: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``"broadclass"`` section: plain types only, so ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": FORMAT_VERSION,
        "tokens": labels.tokens,
        "labels": label_config(labels),
        "categories": [{"name": c.name, "tag": c.tag} for c in labels.categories],
        "network": network_config.to_dict(),
        "sample_rate": int(sample_rate),
        # The summary of the validation the checkpoint was saved after (EvaluationResult.summary()).
        "report": dict(report) if report else None,
    }


def saved_tokens(checkpoint: Mapping[str, Any]) -> list[str] | None:
    """The vocabulary a Lightning checkpoint was trained with."""
    if METADATA_KEY in checkpoint:
        return list(checkpoint[METADATA_KEY]["tokens"])
    return None


def check_vocabulary(expected: Sequence[str], found: Sequence[str] | None, source: str) -> None:
    """Raise VocabularyMismatchError naming ``source`` and the first differing token ids."""
    if found is None:
        raise VocabularyMismatchError(f"{source} records no vocabulary: it was not written by broadclass")
    expected, found = list(expected), list(found)
    if expected == found:
        return
    size = max(len(expected), len(found))
    padded_expected, padded_found = (tokens + ["(none)"] * (size - len(tokens)) for tokens in (expected, found))
    differences = [
        f"  id {i}: {there!r} there, {here!r} here"
        for i, (there, here) in enumerate(zip(padded_found, padded_expected, strict=True))
        if there != here
    ]
    raise VocabularyMismatchError(
        f"{source} was trained with another vocabulary ({len(found)} tokens) than the config's "
        f"({len(expected)} tokens):\n"
        + "\n".join(differences[:10])
        + (f"\n  … and {len(differences) - 10} more" if len(differences) > 10 else "")
        + "\nThe vocabulary comes from the label config (labels=...) and data.categories (names, tags and "
        "order): use the ones the model was trained with."
    )


def labels_from_metadata(metadata: Mapping[str, Any], source: str) -> LabelMap:
    labels = LabelMap.from_config(metadata["labels"], metadata["categories"])
    check_vocabulary(labels.tokens, metadata.get("tokens"), source)
    return labels


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Lightning checkpoint read without unpickling, and its ``"broadclass"`` section."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for disallowed types, RuntimeError/EOFError for a damaged file
        raise ModelLoadError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True), which refuses anything but "
            f"tensors and plain types (so that a checkpoint cannot run code): {err}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelLoadError(f"{path} is not a Lightning checkpoint (no state_dict)")
    metadata = checkpoint.get(METADATA_KEY)
    if metadata is None:
        raise ModelLoadError(
            f"checkpoint {path} has no '{METADATA_KEY}' section (label config, network config): it was "
            "not written by this version of broadclass"
        )
    return checkpoint, dict(metadata)


def read_exported(folder: str | Path) -> tuple[dict[str, Any], str | None]:
    """An exported folder's ``"broadclass"`` section, its vocabulary checked against its ``config.json``, and
    its model card (``README.md``), kept when the model is exported again."""
    folder = Path(folder)
    metadata_file = folder / METADATA_FILE
    if not metadata_file.is_file():
        raise ModelLoadError(f"{folder} has no {METADATA_FILE}: not a folder written by `python -m broadclass.export`")
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    id2label = {int(i): token for i, token in config.get("id2label", {}).items()}
    check_vocabulary(metadata["tokens"], [id2label.get(i) for i in range(len(id2label))], f"{folder}/config.json")
    card_file = folder / "README.md"
    return metadata, card_file.read_text(encoding="utf-8") if card_file.is_file() else None
