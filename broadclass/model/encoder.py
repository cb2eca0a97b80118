"""Build the transformers CTC network (``Wav2Vec2ForCTC`` and its kin): from pretrained weights or a config.

Any model ``AutoModelForCTC`` knows and that has wav2vec2's layout (a convolutional feature encoder, a
transformer, ``lm_head``) works: wav2vec2 (the default, XLSR), wav2vec2-conformer, HuBERT, WavLM. A
pretrained folder or hub id says what it is; a model trained from scratch is a ``wav2vec2`` unless its
config names another ``model_type`` (the demo's tiny model is a ``wav2vec2-conformer``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, AutoModelForCTC, AutoModelForPreTraining, PretrainedConfig, PreTrainedModel


class PretrainedLoadError(RuntimeError):
    pass


# Config keys that change how a network trains, not what it is: a run may set them over a pretrained folder's
# config (dropouts, SpecAugment masking, LayerDrop, the CTC loss, the pretraining losses). Any other key that
# differs from the folder's would build another architecture than the one whose weights are loaded.
TRAINING_TIME_KEYS = re.compile(
    r"dropout|^mask_|^layerdrop$|^apply_spec_augment$|^ctc_|^vocab_size$|^pad_token_id$"
    r"|^diversity_loss_weight$|^contrastive_logits_temperature$|^num_negatives$"
)


class ArchitectureOverrideError(ValueError):
    """model.config would change the architecture of model.pretrained's network."""


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, list | tuple) else value


def check_architecture_kept(pretrained: str, folder_config: PretrainedConfig, overrides: Mapping[str, Any]) -> None:
    """Refuse, in one error naming every key, ``overrides`` that would change ``folder_config``'s architecture.

    Keys whose value is the folder's own (``model=tiny`` over a tiny folder) and training-time keys
    (:data:`TRAINING_TIME_KEYS`) pass."""
    changed = []
    for key, value in overrides.items():
        if TRAINING_TIME_KEYS.search(key):
            continue
        found = getattr(folder_config, key, "(not in its config)")
        if _comparable(found) != _comparable(value):
            changed.append(f"model.config.{key}: {value!r} here, {found!r} in the folder")
    if changed:
        raise ArchitectureOverrideError(
            f"model.pretrained={pretrained} has its own architecture, and model.config would change it:\n  "
            + "\n  ".join(changed)
            + "\nThe folder's weights would load into another network (unexpected or missing weights, a partly "
            "random encoder). With model.pretrained set, model.config may only hold training-time keys (dropouts, "
            "mask_*, layerdrop): use a model config without the architecture (e.g. model=xlsr53 or "
            "+experiment=demo_pretrained), or remove these keys."
        )


def _pretrained_config(pretrained: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(pretrained)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise PretrainedLoadError(
            f"could not load pretrained weights from {pretrained!r}"
            f"{' (HF_HUB_OFFLINE=1: the hub is not asked)' if offline else ''}.\n"
            f"Download them where there is network (e.g. `huggingface-cli download {pretrained} "
            f"--local-dir <dir>`) and set model.pretrained=<local dir>, or train from scratch with "
            f"model=tiny.\nCause: {err}"
        ) from err


def _load(auto_class: type, pretrained: str, overrides: dict[str, Any], **kwargs: Any) -> PreTrainedModel:
    """``auto_class.from_pretrained`` with the architecture check; the network in training mode."""
    folder_config = _pretrained_config(pretrained)
    check_architecture_kept(pretrained, folder_config, overrides)
    overrides.pop("model_type", None)
    network = auto_class.from_pretrained(pretrained, **overrides, **kwargs)
    # from_pretrained returns the network in eval mode and Lightning keeps a module's mode: left so,
    # dropout, LayerDrop and SpecAugment masking would stay off for the whole training.
    return _without_idle_parameters(network.train())


def build_network(
    vocab_size: int,
    pretrained: str | None,
    config: Mapping[str, Any] | None = None,
    pad_token_id: int = 0,
) -> PreTrainedModel:
    """A CTC network with a head sized for our vocabulary.

    ``pretrained`` is a hub id or a local folder written by ``save_pretrained``, our export or ``pretrain``;
    its encoder weights are kept and the CTC head is re-initialised for the vocabulary (a pretraining folder's
    quantizer and projections are left out). Without ``pretrained`` the network is randomly initialised from
    ``config`` (the demo's tiny model). Over a pretrained folder, ``config`` may set training-time keys only
    (:func:`check_architecture_kept`).
    """
    overrides = dict(config or {})
    overrides.update(vocab_size=vocab_size, pad_token_id=pad_token_id)
    if not pretrained:
        model_type = overrides.pop("model_type", "wav2vec2")
        return _without_idle_parameters(AutoModelForCTC.from_config(AutoConfig.for_model(model_type, **overrides)))
    return _load(AutoModelForCTC, pretrained, overrides, ignore_mismatched_sizes=True)


def build_pretraining_network(pretrained: str | None, config: Mapping[str, Any] | None = None) -> PreTrainedModel:
    """A wav2vec2-family network with its quantizer and projection heads (``Wav2Vec2ForPreTraining`` or
    ``Wav2Vec2ConformerForPreTraining``): from ``pretrained`` (its codebook and heads load with it: continued
    pretraining), else randomly initialised from ``config``."""
    overrides = dict(config or {})
    if not pretrained:
        model_type = overrides.pop("model_type", "wav2vec2")
        network = AutoModelForPreTraining.from_config(AutoConfig.for_model(model_type, **overrides))
        return _without_idle_parameters(network)
    return _load(AutoModelForPreTraining, pretrained, overrides)


def enable_activation_checkpointing(network: PreTrainedModel) -> None:
    """Recompute each encoder layer's activations in backward instead of keeping them.

    Non-reentrant: it works with a frozen feature encoder (inputs without gradient), LayerDrop and DDP; the
    reentrant variant marks a parameter ready twice under DDP when layers are skipped. transformers 5.2x
    renamed the method (``gradient_checkpointing_enable`` is its deprecated alias); older 5.x has only the
    old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(network, "activation_checkpointing_enable"):
        network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing_activations(network: PreTrainedModel) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in network.modules())


def _without_idle_parameters(network: PreTrainedModel) -> PreTrainedModel:
    """Freeze weights the forward pass never uses, so DDP does not wait for their gradients.

    transformers' wav2vec2-conformer encoder builds wav2vec2's convolutional position embedding and never
    calls it (positions come from rotary or relative embeddings inside attention, or from nothing)."""
    if network.config.model_type == "wav2vec2-conformer":
        network.base_model.encoder.pos_conv_embed.requires_grad_(False)
    return network
