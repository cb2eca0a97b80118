"""Build the transformers CTC network (``Wav2Vec2ForCTC`` and its kin): from pretrained weights or a config.

Any model ``AutoModelForCTC`` knows and that has wav2vec2's layout (a convolutional feature encoder, a
transformer, ``lm_head``) works: wav2vec2 (the default, XLSR), wav2vec2-conformer, HuBERT, WavLM. A
pretrained folder or hub id says what it is; a model trained from scratch is a ``wav2vec2`` unless its
config names another ``model_type`` (the demo's tiny model is a ``wav2vec2-conformer``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, AutoModelForCTC, PreTrainedModel


class PretrainedLoadError(RuntimeError):
    pass


def build_network(
    vocab_size: int,
    pretrained: str | None,
    config: Mapping[str, Any] | None = None,
    pad_token_id: int = 0,
) -> PreTrainedModel:
    """A CTC network with a head sized for our vocabulary.

    ``pretrained`` is a hub id or a local folder written by ``save_pretrained``/our export; its encoder
    weights are kept and the CTC head is re-initialised for the vocabulary. Without ``pretrained`` the
    network is randomly initialised from ``config`` (the demo's tiny model). ``config`` entries override
    the pretrained config either way (dropouts, SpecAugment masking, layerdrop).
    """
    overrides = dict(config or {})
    model_type = overrides.pop("model_type", "wav2vec2")
    overrides.update(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_zero_infinity=True)
    if not pretrained:
        return _without_idle_parameters(AutoModelForCTC.from_config(AutoConfig.for_model(model_type, **overrides)))
    try:
        network = AutoModelForCTC.from_pretrained(pretrained, ignore_mismatched_sizes=True, **overrides)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise PretrainedLoadError(
            f"could not load pretrained weights from {pretrained!r}"
            f"{' (HF_HUB_OFFLINE=1: the hub is not asked)' if offline else ''}.\n"
            f"Download them where there is network (e.g. `huggingface-cli download {pretrained} "
            f"--local-dir <dir>`) and set model.pretrained=<local dir>, or train from scratch with "
            f"model=tiny.\nCause: {err}"
        ) from err
    # from_pretrained returns the network in eval mode and Lightning keeps a module's mode: left so,
    # dropout, LayerDrop and SpecAugment masking would stay off for the whole fine-tuning.
    return _without_idle_parameters(network.train())


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
