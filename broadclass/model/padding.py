"""Padding that changes nothing: each utterance of a padded batch gets the output it would get alone.

transformers' networks take an attention mask, and with it their attention ignores padded frames, but two
layers still read them:

- the **group norm** of a group-norm feature encoder (wav2vec2-base's layout: ``feat_extract_norm: group``)
  normalises each channel over the whole padded length, zeros included;
- the **depthwise convolution** of a conformer layer (wav2vec2-conformer) reaches ``kernel // 2`` frames
  past the end of the utterance, into padded frames that are no longer zero after the first sub-layer.

Within :func:`padding_ignored`, forward hooks give each of them what it would see without padding: the
group norm takes its statistics over the utterance's own frames, the depthwise convolution sees zeros past
the end (the zero padding it applies to an utterance alone). Every other layer works frame by frame, or
through the attention mask, or (the convolutions of the feature encoder, which pad nothing) produces its
valid frames from valid samples only.
"""

from __future__ import annotations

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
    first_layer = network.base_model.feature_extractor.conv_layers[0]
    if isinstance(getattr(first_layer, "layer_norm", None), nn.GroupNorm):
        conv = first_layer.conv
        first_lengths = (sample_lengths - conv.kernel_size[0]) // conv.stride[0] + 1
        handles.append(first_layer.layer_norm.register_forward_hook(_group_norm_over(first_lengths)))
    for layer in network.base_model.encoder.layers:
        depthwise = getattr(getattr(layer, "conv_module", None), "depthwise_conv", None)
        if depthwise is not None:
            handles.append(depthwise.register_forward_pre_hook(_zero_past(frame_lengths)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, 1, width) mask of the frames before each row's length."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1)


def _zero_past(lengths: torch.Tensor):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        frames = args[0]  # (batch, channels, time)
        return (frames * _valid(lengths, frames.shape[-1]).to(frames.dtype), *args[1:])

    return hook


def _group_norm_over(lengths: torch.Tensor):
    def hook(norm: nn.GroupNorm, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return masked_group_norm(norm, args[0], lengths).to(output.dtype)

    return hook


def masked_group_norm(norm: nn.GroupNorm, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``norm(frames)`` with each row's statistics taken over its first ``lengths`` frames (in fp32).

    ``frames`` is (batch, channels, time); frames past a row's length are normalised with its statistics
    too (they only ever feed padded frames later)."""
    batch, channels, width = frames.shape
    groups = norm.num_groups
    x = frames.float().reshape(batch, groups, channels // groups, width)
    valid = _valid(lengths, width).unsqueeze(1).float()  # (batch, 1, 1, time)
    count = (lengths.clamp_min(1) * (channels // groups)).float().view(batch, 1, 1, 1)
    mean = (x * valid).sum(dim=(2, 3), keepdim=True) / count
    variance = ((x - mean).square() * valid).sum(dim=(2, 3), keepdim=True) / count
    normalised = ((x - mean) * torch.rsqrt(variance + norm.eps)).reshape(batch, channels, width)
    if norm.affine:
        normalised = normalised * norm.weight.float()[:, None] + norm.bias.float()[:, None]
    return normalised
