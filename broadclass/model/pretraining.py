"""Self-supervised pretraining of a wav2vec2-family encoder on audio without transcriptions.

Two masked-prediction tasks on the same network, transformers' ``Wav2Vec2ForPreTraining`` /
``Wav2Vec2ConformerForPreTraining``: spans of the feature encoder's frames are masked, and at each masked frame
the transformer's output must

- pick the frame's own quantized feature (a Gumbel-softmax codebook) out of ``num_negatives`` quantized features
  drawn from other frames of the same utterance: wav2vec 2.0's contrastive task
  (:class:`ContrastivePretrainingModule`), XLSR-53's own; or
- name the k-means cluster of the frame's MFCCs: HuBERT's first iteration (:class:`ClusterPretrainingModule`),
  which transferred better from scratch at the demo's scale (experiments/pretraining/README.md).

What this module adds to transformers' forward:

- **Masks and negatives from each utterance's own frames.** :func:`sample_time_masks` places spans inside the
  utterance's valid frames only, :func:`sample_negatives` draws from them only (never from padding, the classic
  bug), each utterance from its own generator seeded by (seed, step, utterance id): the task of an utterance
  does not depend on its batch, and a resumed run draws what the uninterrupted run drew. Validation uses the
  same draw at every evaluation.
- **The Gumbel temperature decays per optimizer step** (``start · decay^step``, floored at ``end``), set from
  ``global_step`` before every training batch, so it continues exactly across a resume.
- **Losses per masked frame**: transformers sums the contrastive loss over masked frames; logged here as means,
  so runs with other lengths and batch sizes compare.
- **The codebook watched for collapse**: validation counts, over the whole validation set, which code vector
  every masked frame's features select in each group, and reports the perplexity of that distribution and the
  share of code vectors in use (independent of batching).
- Padding that changes nothing (:mod:`broadclass.model.padding`), the shared optimisation
  (:mod:`broadclass.model.optimization`), evaluation in fp32.

The encoder it writes (:func:`save_encoder`) is a HuggingFace folder: ``train``'s ``model.pretrained`` loads its
encoder into a CTC network (the quantizer and projections are left out there), and ``pretrain``'s
``model.pretrained`` continues pretraining it, codebook included.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric, SumMetric
from transformers import PreTrainedModel

from broadclass.model.cluster_targets import FrameMfcc, fit_centroids, nearest, receptive_field
from broadclass.model.encoder import build_pretraining_network, enable_activation_checkpointing
from broadclass.model.exported_folder import save_feature_extractor
from broadclass.model.optimization import ScheduledAdamW
from broadclass.model.padding import padding_ignored

# The checkpoint section that lets the network be rebuilt without the training config (the full network config).
METADATA_KEY = "broadclass_pretraining"
# Written into the encoder folder: which run, step and data it came from (a fine-tuning run tags it).
PROVENANCE_FILE = "broadclass_pretraining.json"


def sample_time_masks(
    lengths: Sequence[int], width: int, mask_prob: float, span: int, min_spans: int, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """(batch, width) boolean masks: for an utterance of ``L`` valid frames, ``max(min_spans, ⌊mask_prob·L/span
    + u⌋)`` spans of ``span`` frames (fewer where ``L`` has no room for them) start at distinct frames drawn
    uniformly from ``0 … L - span``; spans may overlap (wav2vec 2.0's masking: mask_prob 0.65, span 10 masks
    about half of the frames). Nothing at or past ``L`` is ever masked, and nothing in an utterance of one frame
    (no other frame to draw its negatives from: its only candidate would be the frame itself)."""
    masks = np.zeros((len(lengths), width), dtype=bool)
    for row, (length, rng) in enumerate(zip(lengths, rngs, strict=True)):
        length = int(length)
        if length < 2:
            continue
        span_here = min(span, length)
        starts_possible = length - span_here + 1
        count = max(min_spans, int(mask_prob * length / span + rng.random()))
        starts = rng.choice(starts_possible, size=min(count, starts_possible), replace=False)
        for start in starts:
            masks[row, start : start + span_here] = True
    return masks


def sample_negatives(
    masks: np.ndarray, lengths: Sequence[int], num_negatives: int, rngs: Sequence[np.random.Generator]
) -> np.ndarray:
    """(batch, width, num_negatives) indices into the batch's flattened (batch · width) frames: for every masked
    frame ``t`` of an utterance of ``L`` valid frames, ``num_negatives`` frames drawn uniformly from its frames
    ``0 … L - 1`` other than ``t`` (with replacement, as fairseq does). Unmasked frames point at their own
    utterance's first frame; transformers ignores them in the loss."""
    batch, width = masks.shape
    negatives = np.repeat((np.arange(batch) * width)[:, None, None], width, axis=1).repeat(num_negatives, axis=2)
    for row, (length, rng) in enumerate(zip(lengths, rngs, strict=True)):
        length = int(length)
        frames = np.flatnonzero(masks[row])
        if len(frames) == 0 or length < 2:
            continue
        drawn = rng.integers(0, length - 1, size=(len(frames), num_negatives))
        drawn += drawn >= frames[:, None]  # skip the frame itself, keeping the draw uniform over the others
        negatives[row, frames] = drawn + row * width
    return negatives


def utterance_generators(seed: int, step: int | None, ids: Sequence[str]) -> list[np.random.Generator]:
    """One generator per utterance, from (seed, step, id): ``step`` None for validation's fixed draw."""
    keys = [zlib.crc32(str(utt_id).encode("utf-8")) for utt_id in ids]
    prefix = [seed] if step is None else [seed, 1 + step]
    return [np.random.default_rng([*prefix, key]) for key in keys]


def gumbel_temperature(step: int, start: float, end: float, decay: float) -> float:
    """The Gumbel-softmax temperature at optimizer step ``step``: ``start · decay^step``, never below ``end``."""
    return max(start * decay**step, end)


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """Summed over groups, the perplexity of each group's code-vector distribution (counts: groups × vectors):
    ``groups × vectors`` when every vector is used equally, ``groups`` when one per group takes everything."""
    probs = counts.float() / counts.sum(-1, keepdim=True).clamp_min(1)
    return torch.exp(-torch.xlogy(probs, probs).sum(-1)).sum()


class CodeCounts(Metric):
    """How often each code vector of each group was selected, summed over batches and processes."""

    def __init__(self, groups: int, vectors: int):
        super().__init__()
        self.add_state("counts", torch.zeros(groups, vectors), dist_reduce_fx="sum")

    def update(self, selected: torch.Tensor) -> None:
        """``selected``: (frames, groups) code-vector indices."""
        for group in range(self.counts.shape[0]):
            self.counts[group] += torch.bincount(selected[:, group], minlength=self.counts.shape[1]).float()

    def compute(self) -> torch.Tensor:
        return self.counts


class MaskedPretrainingModule(ScheduledAdamW):
    """What both self-supervised tasks share: the network (from scratch from ``config``, or a checkpoint's), spans
    of frames masked inside each utterance (:func:`sample_time_masks`, one generator per utterance), the
    optimisation, validation in fp32 on the same masks every time, and the network's full config in every
    checkpoint. A task implements :meth:`task_step` (training's and validation's losses of one batch) and the
    validation metrics; ``val/loss`` is what the best checkpoint is chosen by (conf/pretrain.yaml's monitor)."""

    def __init__(
        self,
        pretrained: str | None,
        config: Mapping[str, Any] | None,
        sample_rate: int,
        freeze_feature_encoder: bool,
        gradient_checkpointing: bool,
        mask_time_prob: float,
        mask_time_length: int,
        mask_min_spans: int,
        lr: float,
        betas: Sequence[float],
        eps: float,
        weight_decay: float,
        warmup_steps: int,
        seed: int,
    ):
        super().__init__()
        if not 0 < mask_time_prob <= 1:
            raise ValueError(f"model.mask_time_prob must be in (0, 1], got {mask_time_prob}")
        # Also the arguments of the task's own constructor (Lightning collects every __init__ on the way).
        self.save_hyperparameters(logger=False)
        # The network masks with its own embedding, which transformers builds only for a positive mask_time_prob.
        masking = {"mask_time_prob": mask_time_prob, "mask_time_length": mask_time_length}
        self.net = build_pretraining_network(pretrained, {**(config or {}), **masking})
        if freeze_feature_encoder:
            self.net.freeze_feature_encoder()
        if gradient_checkpointing:
            enable_activation_checkpointing(self.net)
        self.val_masked = SumMetric()

    def draw_masks(
        self, batch: dict, step: int | None
    ) -> tuple[torch.Tensor, np.ndarray, list[int], list[np.random.Generator]]:
        """Frame lengths, masks (on the host, where the contrastive task draws its negatives from them), the
        lengths on the host and the utterances' generators (drawn on after the masks) for ``batch``; ``step``
        None: validation's fixed draw."""
        mask = batch["attention_mask"]
        lengths = self.net._get_feat_extract_output_lengths(mask.sum(-1)).long()
        width = int(self.net._get_feat_extract_output_lengths(torch.tensor(mask.shape[1])))
        host_lengths = lengths.tolist()
        rngs = utterance_generators(self.hparams.seed, step, batch["ids"])
        h = self.hparams
        masks = sample_time_masks(host_lengths, width, h.mask_time_prob, h.mask_time_length, h.mask_min_spans, rngs)
        return lengths, masks, host_lengths, rngs

    def task_step(self, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:  # before clipping: the norm the clipping sees
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # fp32 whatever the training precision, and the same masks (and negatives) at every validation.
        with torch.autocast(batch["input_values"].device.type, enabled=False):
            self.update_validation(self.task_step(batch, None))

    def update_validation(self, result: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The full network config, so the encoder is rebuilt without the training config (or the hub).
        checkpoint[METADATA_KEY] = {
            "config": self.net.config.to_dict(),
            "sample_rate": int(self.hparams.sample_rate),
            "step": int(self.global_step),
        }


class ContrastivePretrainingModule(MaskedPretrainingModule):
    """wav2vec 2.0's task: at each masked frame, the transformer's output picks the frame's own quantized feature
    out of ``num_negatives`` drawn from other frames of the same utterance (:func:`sample_negatives`); a diversity
    loss keeps the Gumbel-softmax codebook in use. Continued pretraining of XLSR-53 keeps this, its own task."""

    def __init__(self, num_negatives: int, gumbel_temperature: Sequence[float], gumbel_decay: float, **shared: Any):
        if len(gumbel_temperature) != 2 or not gumbel_temperature[0] >= gumbel_temperature[1] > 0:
            raise ValueError(
                f"model.gumbel_temperature must be [start, end] with start >= end > 0, got {gumbel_temperature}"
            )
        super().__init__(**shared)
        quantizer = self.net.quantizer
        self.groups, self.vectors = quantizer.num_groups, quantizer.num_vars
        # Which code vector each masked frame selects (the argmax of the quantizer's projection), read by a hook.
        self._selected: list[torch.Tensor] = []
        quantizer.weight_proj.register_forward_hook(self._record_selection)
        self._frames_for_selection: torch.Tensor | None = None
        self.code_counts = CodeCounts(self.groups, self.vectors)
        self.val_contrastive = SumMetric()
        self.val_diversity = SumMetric()

    def temperature(self, step: int) -> float:
        start, end = self.hparams.gumbel_temperature
        return gumbel_temperature(step, start, end, self.hparams.gumbel_decay)

    def draw_task(self, batch: dict, step: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame lengths, masks and negatives for ``batch`` (``step`` None: validation's fixed draw)."""
        lengths, masks, host_lengths, rngs = self.draw_masks(batch, step)
        negatives = sample_negatives(masks, host_lengths, self.hparams.num_negatives, rngs)
        device = lengths.device
        return lengths, torch.from_numpy(masks).to(device), torch.from_numpy(negatives).long().to(device)

    def _record_selection(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._frames_for_selection is None:
            return
        chosen = output.detach().view(*output.shape[:2], self.groups, self.vectors).argmax(-1)  # (b, t, groups)
        self._selected.append(chosen[self._frames_for_selection])  # (masked frames, groups)

    def task_step(self, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
        """The losses per masked frame and the code vectors the masked frames selected."""
        lengths, masks, negatives = self.draw_task(batch, step)
        self._frames_for_selection, self._selected = masks, []
        try:
            with padding_ignored(self.net, batch["attention_mask"]):
                out = self.net(
                    batch["input_values"],
                    attention_mask=batch["attention_mask"],
                    mask_time_indices=masks,
                    sampled_negative_indices=negatives,
                )
        finally:
            self._frames_for_selection = None
        masked = masks.sum()
        return {
            "loss": out.loss / masked,
            "contrastive": out.contrastive_loss.detach() / masked,
            # transformers' diversity loss is (G·V - perplexity) / (G·V) times the masked frames.
            "diversity": out.diversity_loss.detach() / masked,
            "perplexity": out.codevector_perplexity.detach(),
            "masked": masked,
            "frames": lengths.sum(),
            "selected": self._selected[0] if self._selected else torch.zeros(0, self.groups, dtype=torch.long),
        }

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.net.set_gumbel_temperature(self.temperature(int(self.global_step)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        result = self.task_step(batch, int(self.global_step))
        size = len(batch["ids"])
        selected = result["selected"]
        usage = sum(len(selected[:, g].unique()) for g in range(self.groups)) / (self.groups * self.vectors)
        self.log("train/loss", result["loss"], on_step=True, prog_bar=True, batch_size=size)
        self.log_dict(
            {
                "train/contrastive_loss": result["contrastive"],
                "train/diversity_loss": result["diversity"],
                "train/perplexity": result["perplexity"],
                "train/code_usage": usage,
                "train/masked_share": result["masked"].float() / result["frames"],
                "train/gumbel_temperature": self.temperature(int(self.global_step)),
            },
            on_step=True,
            on_epoch=False,
            batch_size=size,
        )
        return result["loss"]

    def update_validation(self, result: dict[str, torch.Tensor]) -> None:
        masked = result["masked"].float()
        self.val_contrastive.update(result["contrastive"] * masked)
        self.val_diversity.update(result["diversity"] * masked)
        self.val_masked.update(masked)
        self.code_counts.update(result["selected"])

    def on_validation_epoch_end(self) -> None:
        masked = self.val_masked.compute().clamp_min(1)
        counts = self.code_counts.compute()
        contrastive = self.val_contrastive.compute() / masked
        diversity = self.val_diversity.compute() / masked
        metrics = {
            "val/loss": contrastive + self.net.config.diversity_loss_weight * diversity,
            "val/contrastive_loss": contrastive,
            "val/perplexity": code_perplexity(counts),
            "val/code_usage": (counts > 0).float().mean(),
            "step": float(self.global_step),
        }
        self.log_dict(metrics, on_step=False, on_epoch=True)
        for metric in (self.val_contrastive, self.val_diversity, self.val_masked, self.code_counts):
            metric.reset()


class ClusterPretrainingModule(MaskedPretrainingModule):
    """HuBERT's first iteration on the same network: at each masked frame, the transformer's output predicts which
    of ``num_clusters`` k-means clusters the frame's MFCCs fall in (:mod:`broadclass.model.cluster_targets`). The
    clusters are fitted once, before the first step, on ``cluster_fit_utterances`` training utterances chosen by the
    seed, and kept in the checkpoint (a resumed run predicts the same targets). The codebook and the contrastive
    projections of the network take no part (frozen); the folder it writes has the same layout as the contrastive
    task's, so ``train`` and ``pretrain`` load it alike."""

    def __init__(self, num_clusters: int, cluster_fit_utterances: int, unmasked_weight: float, **shared: Any):
        if num_clusters < 2 or cluster_fit_utterances < 1 or unmasked_weight < 0:
            raise ValueError(
                "model.num_clusters must be at least 2, model.cluster_fit_utterances at least 1 and "
                f"model.unmasked_weight at least 0; got {num_clusters}, {cluster_fit_utterances}, {unmasked_weight}"
            )
        super().__init__(**shared)
        config = self.net.config
        window, hop = receptive_field(config.conv_kernel, config.conv_stride)
        self.mfcc = FrameMfcc(window, hop, self.hparams.sample_rate)
        self.register_buffer("centroids", torch.zeros(num_clusters, self.mfcc.dim))
        self.register_buffer("centroids_fitted", torch.zeros((), dtype=torch.bool))
        self.cluster_head = nn.Linear(config.hidden_size, num_clusters)
        for module in (self.net.quantizer, self.net.project_q, self.net.project_hid):
            module.requires_grad_(False)
        self.val_loss = SumMetric()
        self.val_correct = SumMetric()

    def on_fit_start(self) -> None:
        if bool(self.centroids_fitted):  # restored from the checkpoint of the run being resumed
            return
        dataset = self.trainer.datamodule.datasets["train"]
        order = np.random.default_rng(self.hparams.seed).permutation(len(dataset))
        chosen = order[: self.hparams.cluster_fit_utterances]
        with torch.no_grad():
            features = [self.mfcc(torch.from_numpy(dataset[int(i)]["input_values"])).numpy() for i in chosen]
        centroids = torch.from_numpy(fit_centroids(features, self.hparams.num_clusters, self.hparams.seed))
        # Every process trains on rank 0's clusters.
        self.centroids.copy_(self.trainer.strategy.broadcast(centroids, src=0).to(self.centroids.device))
        self.centroids_fitted.fill_(True)

    def frame_targets(self, batch: dict, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(batch, width) cluster indices of each utterance's frames, -100 past its last frame."""
        targets = torch.full((len(lengths), width), -100, dtype=torch.long, device=lengths.device)
        samples = batch["attention_mask"].sum(-1).tolist()
        with torch.no_grad(), torch.autocast(lengths.device.type, enabled=False):
            for row, (wave, count) in enumerate(zip(batch["input_values"], samples, strict=True)):
                features = self.mfcc(wave[:count])
                targets[row, : len(features)] = nearest(features, self.centroids)
        return targets

    def task_step(self, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
        """Cross-entropy of the cluster predictions, masked frames and unmasked frames apart."""
        lengths, host_masks, _, _ = self.draw_masks(batch, step)
        masks = torch.from_numpy(host_masks).to(lengths.device)
        targets = self.frame_targets(batch, lengths, masks.shape[1])
        with padding_ignored(self.net, batch["attention_mask"]):
            hidden = self.net.base_model(
                batch["input_values"], attention_mask=batch["attention_mask"], mask_time_indices=masks
            ).last_hidden_state
        valid = targets >= 0
        logits = self.cluster_head(hidden[valid]).float()
        losses = nn.functional.cross_entropy(logits, targets[valid], reduction="none")
        correct = (logits.argmax(-1) == targets[valid]).float()
        on_mask = masks[valid]
        masked = on_mask.sum()
        masked_sum, unmasked_sum = losses[on_mask].sum(), losses[~on_mask].sum()
        masked_loss = masked_sum / masked.clamp_min(1)
        unmasked_loss = unmasked_sum / (~on_mask).sum().clamp_min(1)
        return {
            "loss": masked_loss + self.hparams.unmasked_weight * unmasked_loss,
            "masked_loss": masked_loss.detach(),
            "unmasked_loss": unmasked_loss.detach(),
            "masked_correct": correct[on_mask].sum(),
            "masked": masked,
            "frames": lengths.sum(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        result = self.task_step(batch, int(self.global_step))
        size = len(batch["ids"])
        self.log("train/loss", result["loss"], on_step=True, prog_bar=True, batch_size=size)
        self.log_dict(
            {
                "train/masked_loss": result["masked_loss"],
                "train/unmasked_loss": result["unmasked_loss"],
                "train/masked_accuracy": result["masked_correct"] / result["masked"].clamp_min(1),
                "train/masked_share": result["masked"].float() / result["frames"],
            },
            on_step=True,
            on_epoch=False,
            batch_size=size,
        )
        return result["loss"]

    def update_validation(self, result: dict[str, torch.Tensor]) -> None:
        masked = result["masked"].float()
        self.val_loss.update(result["masked_loss"] * masked)
        self.val_correct.update(result["masked_correct"])
        self.val_masked.update(masked)

    def on_validation_epoch_end(self) -> None:
        masked = self.val_masked.compute().clamp_min(1)
        self.log_dict(
            {
                "val/loss": self.val_loss.compute() / masked,
                "val/masked_accuracy": self.val_correct.compute() / masked,
                "step": float(self.global_step),
            },
            on_step=False,
            on_epoch=True,
        )
        for metric in (self.val_loss, self.val_correct, self.val_masked):
            metric.reset()


def network_from_checkpoint(path: str | Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The pretraining network of a checkpoint of :class:`MaskedPretrainingModule`, and its metadata."""
    from transformers import AutoConfig, AutoModelForPreTraining

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    metadata = checkpoint.get(METADATA_KEY)
    if metadata is None:
        raise ValueError(f"{path} is not a pretraining checkpoint (no {METADATA_KEY!r} section)")
    config = dict(metadata["config"])
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    network = AutoModelForPreTraining.from_config(config)
    weights = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    network.load_state_dict(weights)
    return network, metadata


def save_encoder(checkpoint: str | Path, folder: str | Path, provenance: Mapping[str, Any]) -> Path:
    """The checkpoint's network as a HuggingFace folder (config, safetensors, feature extractor) with
    ``provenance`` (run, step, data) in :data:`PROVENANCE_FILE`; returns the folder."""
    network, metadata = network_from_checkpoint(checkpoint)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(out)
    # The attention mask is passed for every layout (broadclass.model.padding keeps padding out of the group norm).
    save_feature_extractor(out, metadata["sample_rate"], attention_mask=True)
    record = {"checkpoint": str(Path(checkpoint).resolve()), "step": metadata["step"], **provenance}
    (out / PROVENANCE_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """What :func:`save_encoder` recorded in a folder, or None (another folder, a hub id)."""
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
