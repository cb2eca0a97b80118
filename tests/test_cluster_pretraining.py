"""Masked prediction of MFCC clusters (HuBERT's first iteration, pretraining=tiny): frame targets that
line up with the encoder's frames, MFCCs against scipy's DCT and the mel scale, targets independent of gain,
padding and batch, clusters fitted once and kept across a resume, and a task that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.fft
import torch
from hydra.utils import instantiate

from broadclass.model.cluster_targets import (
    FrameMfcc,
    dct_matrix,
    fit_centroids,
    mel_filterbank,
    nearest,
    receptive_field,
)
from tests.helpers.config import TEST_MODEL, compose_config
from tests.helpers.pretraining import csv_metrics, data_overrides

CLUSTERS = 12
CLUSTER_MODEL = [
    "pretraining=tiny",
    *TEST_MODEL,
    f"model.num_clusters={CLUSTERS}",
    "model.cluster_fit_utterances=40",
]


def test_a_frame_of_mfccs_is_a_frame_of_the_encoder():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config()  # wav2vec2's and XLSR-53's layout: 25 ms every 20 ms
    assert receptive_field(config.conv_kernel, config.conv_stride) == (400, 320)
    config = Wav2Vec2Config(
        conv_kernel=[10, 3, 2],
        conv_stride=[5, 2, 2],
        conv_dim=[8, 8, 8],
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    network = Wav2Vec2Model(config)
    window, hop = receptive_field(config.conv_kernel, config.conv_stride)
    assert (window, hop) == (10 + 2 * 5 + 1 * 10, 20)
    mfcc = FrameMfcc(window, hop, 16_000)
    for samples in [window, window + 1, window + hop - 1, window + hop, 1234, 16_000, 33_333]:
        frames = int(network._get_feat_extract_output_lengths(torch.tensor(samples)))
        assert mfcc(torch.randn(samples)).shape == (frames, 39), samples


def test_the_cepstra_are_scipys_orthonormal_dct_of_the_mel_energies():
    np.testing.assert_allclose(dct_matrix(40, 13), scipy.fft.dct(np.eye(40), type=2, norm="ortho")[:, :13], atol=1e-6)


def test_a_tone_lights_the_mel_band_around_its_frequency():
    filters = mel_filterbank(16_000, 512, 40)
    assert filters.shape == (257, 40)
    centres = filters.argmax(0) * 16_000 / 512
    assert np.all(np.diff(centres) > 0) and np.all(np.diff(np.diff(centres)) >= -16_000 / 512)  # widening bands
    time = np.arange(16_000) / 16_000
    for hz in [300.0, 1000.0, 4000.0]:
        frames = torch.from_numpy(np.sin(2 * np.pi * hz * time).astype(np.float32)).unfold(0, 400, 320)
        power = torch.fft.rfft(frames * torch.hamming_window(400, periodic=False), n=512).abs().square()
        band = int((power @ torch.from_numpy(filters)).mean(0).argmax())
        mel = 2595 * np.log10(1 + np.array([hz, centres[band]]) / 700)
        assert abs(mel[0] - mel[1]) < 2595 * np.log10(1 + 8000 / 700) / 41 * 1.01, (hz, centres[band])


def test_sounds_of_different_kinds_fall_in_different_clusters_whatever_the_gain():
    rng = np.random.default_rng(0)
    time = np.arange(8_000) / 16_000
    mfcc = FrameMfcc(400, 320, 16_000)

    def utterance(gain: float) -> torch.Tensor:  # a vowel-like harmonic sound, then a noise, then silence-like hum
        voiced = sum(np.sin(2 * np.pi * 120 * k * time) / k for k in range(1, 20))
        noise = rng.normal(size=time.size)
        noise = np.diff(noise, prepend=0.0)  # high-passed, fricative-like
        hum = 0.01 * np.sin(2 * np.pi * 50 * time)
        wave = np.concatenate([voiced, noise, hum])
        wave += 1e-3 * rng.normal(size=wave.size)  # a recording's noise floor
        return torch.from_numpy((gain * wave).astype(np.float32))

    features = [mfcc(utterance(1.0)).numpy() for _ in range(4)]
    centroids = torch.from_numpy(fit_centroids(features, 6, seed=0))
    wave = utterance(1.0)
    loud, quiet = mfcc(wave), mfcc(0.01 * wave)
    labels = nearest(loud, centroids)
    # Away from the joins (which mix two sounds), each kind of sound has clusters of its own.
    inner = [set(labels[idx[2:-2]].tolist()) for idx in np.array_split(np.arange(len(loud)), 3)]
    assert not (inner[0] & inner[1] or inner[1] & inner[2] or inner[0] & inner[2]), inner
    # Normalised per utterance, with a floor relative to its level: 40 dB quieter changes nothing.
    torch.testing.assert_close(quiet, loud, atol=1e-3, rtol=1e-3)
    assert (nearest(quiet, centroids) == labels).float().mean() > 0.97


def test_too_few_frames_for_the_clusters_is_one_clear_error():
    with pytest.raises(ValueError, match="3 frames of audio cannot make 10 clusters"):
        fit_centroids([np.zeros((3, 39), np.float32)], 10, seed=0)


# ---- the module ------------------------------------------------------------------------------------------


@pytest.fixture
def cluster_config(tmp_path, demo_corpus):
    def make(*overrides: str):
        return compose_config(
            tmp_path, [*data_overrides(demo_corpus), *CLUSTER_MODEL, "logger=csv", *overrides], config_name="pretrain"
        )

    return make


def fitted_module_and_batch(cfg):
    from types import SimpleNamespace

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = instantiate(cfg.model)

    class Strategy:
        @staticmethod
        def broadcast(obj, src=0):
            return obj

    module.trainer = SimpleNamespace(datamodule=datamodule, strategy=Strategy())
    module.on_fit_start()
    return module, next(iter(datamodule.val_dataloader()))


def test_targets_never_fall_on_padding_and_do_not_depend_on_the_batch(cluster_config):
    cfg = cluster_config()
    module, batch = fitted_module_and_batch(cfg)
    assert bool(module.centroids_fitted) and module.centroids.abs().sum() > 0
    lengths = module.net._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).long()
    assert len(set(lengths.tolist())) > 1  # really padded
    width = int(module.net._get_feat_extract_output_lengths(torch.tensor(batch["attention_mask"].shape[1])))
    targets = module.frame_targets(batch, lengths, width)
    for row, length in enumerate(lengths.tolist()):
        assert (targets[row, :length] >= 0).all() and (targets[row, length:] == -100).all()
        samples = int(batch["attention_mask"][row].sum())
        alone = {
            "input_values": batch["input_values"][row : row + 1, :samples],
            "attention_mask": batch["attention_mask"][row : row + 1, :samples],
        }
        assert torch.equal(module.frame_targets(alone, lengths[row : row + 1], length)[0], targets[row, :length])
    used = targets[targets >= 0].unique()
    assert len(used) >= CLUSTERS // 2, used  # the clusters are in use, not one kind of frame


def test_the_clusters_are_kept_in_the_checkpoint_and_not_fitted_again(cluster_config):
    cfg = cluster_config()
    module, _ = fitted_module_and_batch(cfg)
    resumed = instantiate(cfg.model)
    resumed.load_state_dict(module.state_dict())
    resumed.trainer = None  # fitting again would need the data: it must not be asked for
    resumed.on_fit_start()
    assert torch.equal(resumed.centroids, module.centroids)
    other_seed = cluster_config("seed=7")
    assert not torch.equal(fitted_module_and_batch(other_seed)[0].centroids, module.centroids)


def test_the_cluster_task_learns(cluster_config):
    from broadclass.pretrain import pretrain

    cfg = cluster_config("trainer.max_steps=40", "val_every_n_optimizer_steps=10", "trainer.log_every_n_steps=1")
    pretrain(cfg)
    metrics = csv_metrics(cfg)
    val = metrics.dropna(subset=["val/loss"]).sort_values("step")
    assert val["step"].tolist() == [10, 20, 30, 40]
    loss = val["val/loss"].tolist()
    assert loss[-1] < loss[0] - 0.1 and loss[-1] < math.log(CLUSTERS), loss
    assert val["val/masked_accuracy"].iloc[-1] > 1.5 / CLUSTERS, val["val/masked_accuracy"].tolist()
    for key in ["train/loss", "train/masked_loss", "train/unmasked_loss", "train/masked_accuracy", "train/grad_norm"]:
        assert sorted(metrics.dropna(subset=[key])["step"].astype(int).unique()) == list(range(40)), key
    share = metrics["train/masked_share"].dropna()
    assert share.between(0.3, 0.8).all(), share.describe()
    # The codebook and the contrastive projections took no part: untouched by the optimizer.
    from safetensors.torch import load_file

    pl.seed_everything(cfg.seed)  # as the run built it
    fresh = instantiate(cfg.model).net.state_dict()
    saved = load_file(f"{cfg.encoder_dir}/model.safetensors")
    for key in [k for k in saved if k.startswith(("quantizer.", "project_q.", "project_hid."))]:
        assert torch.equal(saved[key], fresh[key]), key
    assert any(not torch.equal(saved[k], fresh[k]) for k in saved if k.startswith("wav2vec2_conformer.encoder."))
