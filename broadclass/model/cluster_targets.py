"""Frame targets for masked prediction (HuBERT's first iteration): MFCCs computed on the encoder's own frames,
clustered with k-means over the training audio.

Each frame of the convolutional feature encoder sees ``window`` samples every ``hop`` samples (for wav2vec2's
layout 400 and 320: 25 ms every 20 ms at 16 kHz), so an MFCC frame with that window and hop lines up with it one to
one and the two sequences have the same length. The MFCCs (13 cepstra with their first and second differences)
are normalised per utterance (mean 0, variance 1), so a cluster stands for a kind of sound rather than a speaker or
a recording level: what a broad phonetic class is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """(window, hop) in samples of one frame of a convolutional feature encoder."""
    window, hop = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        window += (kernel - 1) * hop
        hop *= stride
    return window, hop


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the mel scale from 0 Hz to Nyquist."""

    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(0.0, mel(np.array(sample_rate / 2)), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) orthonormal DCT-II."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def differences(frames: torch.Tensor) -> torch.Tensor:
    """Centred first differences along time (edges repeated): (frames[t+1] - frames[t-1]) / 2."""
    padded = torch.cat([frames[:1], frames, frames[-1:]])
    return (padded[2:] - padded[:-2]) / 2


class FrameMfcc(nn.Module):
    """39 normalised MFCC features per encoder frame of one utterance's waveform."""

    def __init__(self, window: int, hop: int, sample_rate: int, n_mels: int = 40, n_cepstra: int = 13):
        super().__init__()
        self.window, self.hop = window, hop
        self.n_fft = 1 << (window - 1).bit_length()
        self.register_buffer("taper", torch.hamming_window(window, periodic=False), persistent=False)
        self.register_buffer(
            "filters", torch.from_numpy(mel_filterbank(sample_rate, self.n_fft, n_mels)), persistent=False
        )
        self.register_buffer("dct", torch.from_numpy(dct_matrix(n_mels, n_cepstra)), persistent=False)

    @property
    def dim(self) -> int:
        return 3 * self.dct.shape[1]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(frames, 39) for a 1-D waveform; ``frames`` = (len - window) // hop + 1, the encoder's frame count."""
        if wave.shape[0] < self.window:
            return wave.new_zeros(0, self.dim)
        frames = wave.float().unfold(0, self.window, self.hop)
        frames = (frames - frames.mean(-1, keepdim=True)) * self.taper
        power = torch.fft.rfft(frames, n=self.n_fft).abs().square()
        energies = power @ self.filters
        # A floor relative to the utterance's level (60 dB under its mean band energy), so the gain changes nothing.
        cepstra = torch.log(energies + 1e-6 * energies.mean() + 1e-20) @ self.dct
        first = differences(cepstra)
        features = torch.cat([cepstra, first, differences(first)], dim=-1)
        return (features - features.mean(0)) / features.std(0, unbiased=False).clamp_min(1e-5)


def fit_centroids(features: Sequence[np.ndarray], clusters: int, seed: int) -> np.ndarray:
    """(clusters, dim) k-means centroids of the frames of ``features`` (one array of frames per utterance)."""
    from sklearn.cluster import MiniBatchKMeans

    frames = np.concatenate(features).astype(np.float32)
    if len(frames) < clusters:
        raise ValueError(f"{len(frames)} frames of audio cannot make {clusters} clusters: use more utterances")
    kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=4096, n_init=3, max_iter=100)
    kmeans.fit(frames)
    return kmeans.cluster_centers_.astype(np.float32)


def nearest(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The index of each frame's nearest centroid (Euclidean)."""
    distances = (features.square().sum(-1, keepdim=True) - 2 * features @ centroids.T) + centroids.square().sum(-1)
    return distances.argmin(-1)
