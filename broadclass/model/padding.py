"""Padding that changes nothing: each utterance of a padded batch gets the output it would get alone.

transformers' networks take an attention mask, and with it their attention ignores padded frames, but two
layers still read them:

- the **group norm** of a group-norm feature encoder (wav2vec2-base's layout: ``feat_extract_norm: group``)
  normalises each channel over the whole padded length, zeros included;
- the **depthwise convolution** of a conformer layer (wav2vec2-conformer) reaches ``kernel // 2`` frames
  past the end of the utterance, into padded frames that are no longer zero after the first sub-layer.

Within :func:`padding_ignored` each of them gets what it would see without padding: the group norm takes
its statistics over the utterance's own frames, the depthwise convolution (through a forward hook) sees
zeros past the end (the zero padding it applies to an utterance alone). Every other layer works frame by frame, or
through the attention mask, or (the convolutions of the feature encoder, which pad nothing) produces its
valid frames from valid samples only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel


@contextmanager
def padding_ignored(network: PreTrainedModel, attention_mask: torch.Tensor) -> Iterator[None]:
    """Forward passes of ``network`` inside this block treat ``attention_mask``'s padded samples as absent."""
    sample_lengths = attention_mask.sum(-1)
    frame_lengths = network._get_feat_extract_output_lengths(sample_lengths)
    handles = []
    replaced: list[nn.Module] = []
    first_layer = network.base_model.feature_extractor.conv_layers[0]
    norm = getattr(first_layer, "layer_norm", None)
    if isinstance(norm, nn.GroupNorm):
        conv = first_layer.conv
        first_lengths = (sample_lengths - conv.kernel_size[0]) // conv.stride[0] + 1
        # Its forward replaced, not hooked: a hook would compute the unmasked norm too (10 % of an eval step).
        norm.forward = functools.partial(masked_group_norm, norm, lengths=first_lengths)
        replaced.append(norm)
    for layer in network.base_model.encoder.layers:
        depthwise = getattr(getattr(layer, "conv_module", None), "depthwise_conv", None)
        if depthwise is not None:
            handles.append(depthwise.register_forward_pre_hook(_zero_past(frame_lengths)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in replaced:
            del module.forward


def _zero_past(lengths: torch.Tensor):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        frames = args[0]  # (batch, channels, time)
        valid = torch.arange(frames.shape[-1], device=frames.device)[None, None, :] < lengths[:, None, None]
        return (frames * valid.to(frames.dtype), *args[1:])

    return hook


def masked_group_norm(norm: nn.GroupNorm, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``norm(frames)`` with each row's statistics taken over its first ``lengths`` frames only.

    ``frames`` is (batch, channels, time). Each row's own frames go through torch's group norm, the kernel the
    row alone goes through, so a row gets exactly its output alone; frames past a row's length are zeros (they
    only ever feed padded frames later). One fused pass per row: 2-4x faster than statistics over a mask
    (experiments/throughput/README.md). Run under the caller's autocast, so in the dtype the whole batch's norm
    would run in (bf16 under CPU autocast, fp32 under CUDA autocast)."""
    weight, bias = (norm.weight, norm.bias) if norm.affine else (None, None)
    total = frames.shape[-1]
    rows = zip(frames.split(1), lengths.tolist(), strict=True)

    def normed(row: torch.Tensor, length: int) -> torch.Tensor:
        return nn.functional.group_norm(row[..., : min(max(length, 1), total)], norm.num_groups, weight, bias, norm.eps)

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (frames, weight, bias)):
        # Split and joined, not sliced from the batch and written into a zero tensor row by row: the backward of
        # either makes a whole batch's gradient once per row.
        return torch.cat([nn.functional.pad(y, (0, total - y.shape[-1])) for y in (normed(*r) for r in rows)])
    # Nothing to differentiate (evaluation, predict, a frozen feature encoder): each row written into one output,
    # so the batch is held once more, not three times (normed rows, padded rows, their join).
    out = None
    for index, row in enumerate(rows):
        y = normed(*row)[0]
        if out is None:
            out = frames.new_empty(frames.shape, dtype=y.dtype)
        out[index, :, : y.shape[-1]] = y
        out[index, :, y.shape[-1] :] = 0
    return out
