"""Build the transformers ``Wav2Vec2ForCTC`` network: from pretrained weights or from a config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import Wav2Vec2Config, Wav2Vec2ForCTC


class PretrainedLoadError(RuntimeError):
    pass


def build_network(
    vocab_size: int,
    pretrained: str | None,
    config: Mapping[str, Any] | None = None,
    pad_token_id: int = 0,
) -> Wav2Vec2ForCTC:
    """A CTC network with a head sized for our vocabulary.

    ``pretrained`` is a hub id or a local folder written by ``save_pretrained``/our export; its encoder
    weights are kept and the CTC head is re-initialised for the vocabulary. Without ``pretrained`` the
    network is randomly initialised from ``config`` (the demo's tiny model). ``config`` entries override
    the pretrained config either way (dropouts, SpecAugment masking, layerdrop).
    """
    overrides = dict(config or {})
    overrides.update(vocab_size=vocab_size, pad_token_id=pad_token_id, ctc_zero_infinity=True)
    if not pretrained:
        return Wav2Vec2ForCTC(Wav2Vec2Config(**overrides))
    try:
        network = Wav2Vec2ForCTC.from_pretrained(pretrained, ignore_mismatched_sizes=True, **overrides)
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
    return network.train()
