"""LightningDataModule: manifests → length-bucketed, padded batches.

Labeled (a label config and categories) for fine-tuning with CTC; or unlabeled audio (``labels`` and
``categories`` None) for self-supervised pretraining, whose items and batches carry the audio and the ids only.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from broadclass.data.audio import AudioCache, change_speed, normalize
from broadclass.data.check import DataReport, EncoderGeometry, apply_report, check_manifests
from broadclass.data.labels import LabelMap

log = logging.getLogger(__name__)


class UtteranceDataset(Dataset):
    """Items are dicts: normalised 16 kHz waveform and utterance id; with ``labels``, also the token ids,
    category index and speaker (without: unlabeled audio)."""

    def __init__(self, rows: Sequence[dict], labels: LabelMap | None, audio: AudioCache):
        # Rows come checked (broadclass.data.check, run by the datamodule's setup), every one with a duration.
        self.rows = list(rows)
        self.audio = audio
        self.labeled = labels is not None
        if self.labeled:
            self.targets = [labels.encode(row["phones"], row["category"]) for row in self.rows]
            self.categories = [labels.category_index(row["category"]) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def durations(self) -> list[float]:
        return [row["duration"] for row in self.rows]

    def __getitem__(self, item: int | tuple[int, float]) -> dict:
        """``item`` is an index, or ``(index, speed)`` from a sampler that perturbs speed."""
        index, speed = item if isinstance(item, tuple) else (item, 1.0)
        row = self.rows[index]
        wave = change_speed(self.audio.load(row["audio_filepath"]), speed, self.audio.sample_rate)
        item = {"input_values": normalize(wave), "id": row["id"]}
        if self.labeled:
            item |= {"labels": self.targets[index], "category": self.categories[index], "speaker": row.get("speaker")}
        return item


def effective_seconds(seconds: np.ndarray | float, quadratic_duration: float | None) -> np.ndarray | float:
    """Seconds as a batch budget counts them: ``d + d²/quadratic_duration`` with the penalty (Lhotse's
    ``quadratic_duration``, NeMo's ``quadratic_factor``: self-attention's cost grows with the square of the
    length), ``d`` without."""
    return seconds if quadratic_duration is None else seconds + seconds * seconds / quadratic_duration


def seconds_batches(
    order: Sequence[int], seconds: Sequence[float], batch_seconds: float, quadratic_duration: float | None = None
) -> list[list[int]]:
    """``order`` cut into consecutive batches whose padded cost, rows × the longest row's
    :func:`effective_seconds`, stays within ``batch_seconds``; a row over the budget alone is a batch of one.

    The cost is the padded batch's (what memory and compute go by), not the sum of the rows' seconds. Cutting
    greedily gives the fewest batches any cut into consecutive runs of ``order`` can."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for index in order:
        cost = float(effective_seconds(seconds[index], quadratic_duration))
        if current and (len(current) + 1) * max(longest, cost) > batch_seconds:
            batches.append(current)
            current, longest = [], 0.0
        current.append(index)
        longest = max(longest, cost)
    if current:
        batches.append(current)
    return batches


def split_to(batches: list[list], count: int) -> list[list]:
    """``batches`` with the ones of most rows halved until there are ``count`` (halving keeps a budget)."""
    batches = list(batches)
    while len(batches) < count:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        if len(batches[largest]) < 2:
            break
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


class LengthBucketBatchSampler(Sampler[list]):
    """Batches of similar duration, in random order between batches.

    Utterances are sorted by duration with a small per-epoch jitter (so batch composition varies from
    epoch to epoch), cut into batches, and the batches shuffled. The order depends only on
    ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one. With several
    processes each takes every ``num_replicas``-th batch. ``multiple_of`` (the gradient accumulation)
    repeats the first batches of the epoch so every epoch is a whole number of optimizer steps:
    otherwise Lightning steps on a short accumulation at each epoch end, and "validate every N
    optimizer steps", counted by Lightning in batches, drifts away from optimizer step N.

    With ``batch_seconds`` the batches are cut by seconds of audio instead of ``batch_size`` rows
    (:func:`seconds_batches`: rows × the longest row's seconds, with ``quadratic_duration``'s penalty, within
    the budget). Lightning reads an epoch's length once, and every process must run as many batches, so a
    training epoch has the same number of batches whatever the epoch's jitter and speeds: the count a cut of
    every utterance at its longest possible duration (slowest speed, largest jitter) needs, which no epoch's
    cut exceeds; an epoch that fits in fewer has its largest batches halved up to that count.

    With ``speeds`` other than ``(1.0,)`` (training only: ignored when not shuffling) every utterance of
    an epoch is given one of them at random and the batches hold ``(index, speed)`` pairs; the buckets
    are cut on the perturbed durations, so padding stays as low as without perturbation.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        jitter: float = 0.1,
        num_replicas: int = 1,
        rank: int = 0,
        multiple_of: int = 1,
        speeds: Sequence[float] = (1.0,),
        batch_seconds: float | None = None,
        quadratic_duration: float | None = None,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        self.speeds = np.asarray(speeds, dtype=np.float64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.jitter = jitter
        self.num_replicas = num_replicas
        self.rank = rank
        self.multiple_of = multiple_of
        self.batch_seconds = batch_seconds
        self.quadratic_duration = quadratic_duration
        self.epoch = 0
        self._resume_after: tuple[int, int] | None = None  # (epoch, batches already trained on)
        self.num_batches = self._count_batches()

    @property
    def perturbed(self) -> bool:
        return self.shuffle and bool((self.speeds != 1.0).any())

    def _count_batches(self) -> int:
        """Batches in an epoch, before the split between processes."""
        if self.batch_seconds is None:
            return math.ceil(len(self.durations) / self.batch_size)
        longest = self.durations
        if self.shuffle:
            slowest = float(self.speeds.min()) if self.perturbed else 1.0
            # A key (duration × (1 ± jitter)) sorts a row among rows up to (1 + jitter) / (1 - jitter) longer.
            longest = longest / slowest * (1 + self.jitter) / (1 - self.jitter)
        order = np.argsort(longest, kind="stable").tolist()
        return len(seconds_batches(order, longest, self.batch_seconds, self.quadratic_duration))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Go on with ``epoch`` after its first ``batches`` batches (with the next epoch if it was done)."""
        self.epoch = epoch + 1 if batches >= len(self) else epoch
        self._resume_after = (epoch, batches) if batches < len(self) else None

    def _batches(self) -> list[list]:
        rng = np.random.default_rng([self.seed, self.epoch])
        seconds = self.durations
        if self.perturbed:
            speed = np.random.default_rng([self.seed, self.epoch, 1]).choice(self.speeds, size=len(seconds))
            seconds = seconds / speed
        keys = seconds
        if self.shuffle and self.jitter > 0:
            keys = keys * (1 + rng.uniform(-self.jitter, self.jitter, size=len(keys)))
        order = np.argsort(keys, kind="stable").tolist()
        if self.batch_seconds is None:
            cuts = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            greedy = seconds_batches(order, seconds, self.batch_seconds, self.quadratic_duration)
            cuts = split_to(greedy, self.num_batches)
        batches = [[(i, float(speed[i])) for i in cut] for cut in cuts] if self.perturbed else cuts
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            # Every training process must run the same number of batches, a multiple of the
            # accumulation, so the tail is filled by wrapping round to the start of the epoch's order.
            total = len(self) * self.num_replicas
            batches = (batches * math.ceil(total / len(batches)))[:total]
        # Evaluation batches are split as they are: repeating utterances would bias the report.
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list]:
        resume, self._resume_after = self._resume_after, None
        skip = resume[1] if resume is not None and resume[0] == self.epoch else 0
        yield from self._batches()[skip:]

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.num_batches, self.num_replicas))
        per_rank = math.ceil(self.num_batches / self.num_replicas)
        return math.ceil(per_rank / self.multiple_of) * self.multiple_of


class ResumableDataLoader(DataLoader):
    """The training loader, with the state Lightning keeps in checkpoints (``state_dict``).

    Without it a run resumed mid-epoch would start the epoch's batches again. ``consumed`` tells how
    many batches of the epoch training has taken (the trainer's progress, not what the loader has
    handed out: Lightning may fetch ahead).
    """

    def __init__(self, *args, consumed: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches": self.consumed()}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batch_sampler.resume(state_dict["epoch"], state_dict["batches"])


def padded_length(length: int, lengths_per_octave: int) -> int:
    """``length`` rounded up to one of ``lengths_per_octave`` (a power of two) lengths per octave; 0: as is.

    16 per octave pads by at most 1/16 (about 3 % on average) and makes batch shapes repeat: on a CPU,
    oneDNN builds kernels for every new input shape, which made a step on a never-seen length about
    twice as slow as on a seen one (experiments/throughput/README.md).
    """
    if lengths_per_octave <= 0 or length <= lengths_per_octave:
        return length
    quantum = 1 << max(length.bit_length() - lengths_per_octave.bit_length(), 0)
    return -(-length // quantum) * quantum


def pad_waves(waves: Sequence[np.ndarray], lengths_per_octave: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms zero-padded into one batch, and the attention mask marking their real samples (1) against
    the padding (0); the padded length is the longest wave's, rounded up by :func:`padded_length`."""
    lengths = [len(wave) for wave in waves]
    width = padded_length(max(lengths, default=0), lengths_per_octave)
    audio = torch.zeros(len(waves), width)
    mask = torch.zeros(len(waves), width, dtype=torch.long)
    for i, wave in enumerate(waves):
        audio[i, : lengths[i]] = torch.from_numpy(wave)
        mask[i, : lengths[i]] = 1
    return audio, mask


def collate(items: Sequence[dict], lengths_per_octave: int = 0) -> dict:
    """Pad audio with zeros (:func:`pad_waves`) and labels with -100; items without labels (unlabeled audio)
    give the audio, its attention mask and the ids only."""
    audio, mask = pad_waves([item["input_values"] for item in items], lengths_per_octave)
    if "labels" not in items[0]:
        return {"input_values": audio, "attention_mask": mask, "ids": [item["id"] for item in items]}
    label_lengths = torch.tensor([len(item["labels"]) for item in items])
    labels = torch.full((len(items), max(int(label_lengths.max()), 1)), -100, dtype=torch.long)
    for i, item in enumerate(items):
        labels[i, : label_lengths[i]] = torch.tensor(item["labels"], dtype=torch.long)
    return {
        "input_values": audio,
        "attention_mask": mask,
        "labels": labels,
        "label_lengths": label_lengths,
        "categories": torch.tensor([item["category"] for item in items]),
        "ids": [item["id"] for item in items],
        "speakers": [item.get("speaker") for item in items],
    }


class BroadClassDataModule(pl.LightningDataModule):
    """Train/validation/test manifests with a shared label map and audio cache. Every argument comes from the
    ``data`` config (conf/data/manifest.yaml), where each is explained.

    ``manifests_from`` (optional) gives the manifests that are made, not given (the demo synthesiser, a set
    folder); it runs once, in ``prepare_data``, and returns a mapping of split name to manifest path.
    ``labels`` and ``categories`` both None: unlabeled audio (``label_map`` None), rows need only
    ``audio_filepath`` and the label checks are skipped.
    """

    def __init__(
        self,
        labels: Mapping | None,
        categories: Sequence[Mapping] | None,
        train_manifest: str | None,
        val_manifest: str | None,
        test_manifest: str | None,
        manifests_from: Callable[[], Mapping[str, str | Path]] | None,
        batch_size: int,
        eval_batch_size: int,
        batch_seconds: float | None,
        eval_batch_seconds: float | None,
        batch_quadratic_duration: float | None,
        num_workers: int,
        sample_rate: int,
        cache_dir: str | None,
        seed: int,
        bucket_jitter: float,
        padded_lengths_per_octave: int,
        on_error: str,
        allow_speaker_overlap: bool,
        max_duration: float | None,
        speed_perturbation: Sequence[float] | None,
    ):
        super().__init__()
        if speed_perturbation is not None and (not speed_perturbation or min(speed_perturbation) <= 0):
            raise ValueError(f"data.speed_perturbation must be positive speed factors, got {speed_perturbation}")
        if padded_lengths_per_octave < 0 or padded_lengths_per_octave & (padded_lengths_per_octave - 1):
            raise ValueError(
                f"data.padded_lengths_per_octave must be 0 or a power of two, got {padded_lengths_per_octave}"
            )
        if (labels is None) != (categories is None):
            raise ValueError(
                "data.labels and data.categories are both set (labeled utterances) or both null (unlabeled audio); "
                f"got data.labels={'null' if labels is None else 'set'}, "
                f"data.categories={'null' if categories is None else 'set'}"
            )
        self.label_map = LabelMap.from_config(labels, categories) if labels is not None else None
        self.manifests = {"train": train_manifest, "validation": val_manifest, "test": test_manifest}
        self.manifests_from = manifests_from
        for name, value in (
            ("batch_seconds", batch_seconds),
            ("eval_batch_seconds", eval_batch_seconds),
            ("batch_quadratic_duration", batch_quadratic_duration),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"data.{name} must be positive seconds or null, got {value}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.batch_seconds = batch_seconds
        self.eval_batch_seconds = eval_batch_seconds
        self.batch_quadratic_duration = batch_quadratic_duration
        self.num_workers = num_workers
        self.audio = AudioCache(cache_dir, sample_rate)
        self.seed = seed
        self.bucket_jitter = bucket_jitter
        self.padded_lengths_per_octave = padded_lengths_per_octave
        self.on_error = on_error
        self.allow_speaker_overlap = allow_speaker_overlap
        self.max_duration = max_duration
        self.speeds = tuple(speed_perturbation or (1.0,))
        self.check_report: DataReport | None = None
        self.datasets: dict[str, UtteranceDataset] = {}

    def prepare_data(self) -> None:
        if self.manifests_from is not None:
            built = self.manifests_from()
            for split, path in built.items():
                if self.manifests.get(split) is None:
                    self.manifests[split] = str(path)

    def setup(self, stage: str | None = None) -> None:
        if not self.manifests.get("train") and self.manifests_from is not None:
            # prepare_data runs on rank 0 only; other ranks (and direct setup() calls) still need paths.
            self.prepare_data()
        paths = {split: path for split, path in self.manifests.items() if path and split not in self.datasets}
        if paths:
            for split, rows in self._checked(paths).items():
                self.datasets[split] = UtteranceDataset(rows, self.label_map, self.audio)
        if stage in ("fit", None) and "train" not in self.datasets:
            raise ValueError("data.train_manifest is not set and data.manifests_from gave none")

    def _checked(self, manifests: dict[str, str]) -> dict[str, list[dict]]:
        """Every line and row of the manifests checked before any training (broadclass.data.check), all in one
        report. It stays in ``check_report`` (broadclass.tracking.datasets.DataCheckLog puts it on the MLflow
        run)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        net = getattr(module, "net", None)
        encoder = EncoderGeometry.of(net.config) if net is not None else EncoderGeometry()
        splits, self.check_report = check_manifests(
            manifests,
            self.label_map,
            self.audio,
            encoder,
            self.allow_speaker_overlap,
            max_duration=self.max_duration,
        )
        kept = apply_report(splits, self.check_report, self.on_error)
        if self.check_report.problems:
            log.warning(self.check_report.format())
        return kept

    def _loader(self, split: str, batch_size: int, batch_seconds: float | None, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        trainer = self.trainer
        training = split == "train"
        sampler = LengthBucketBatchSampler(
            dataset.durations,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            jitter=self.bucket_jitter if shuffle else 0.0,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            multiple_of=trainer.accumulate_grad_batches if trainer is not None and training else 1,
            speeds=self.speeds,
            batch_seconds=batch_seconds,
            quadratic_duration=self.batch_quadratic_duration,
        )
        kwargs = {
            "batch_sampler": sampler,
            "collate_fn": functools.partial(collate, lengths_per_octave=self.padded_lengths_per_octave),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            # Its own generator (worker seeds): the global one is left to the model, so a resumed run
            # draws the same dropout and masks as an uninterrupted one.
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if not training:
            return DataLoader(dataset, **kwargs)
        return ResumableDataLoader(dataset, consumed=self._batches_trained, **kwargs)

    def _batches_trained(self) -> int:
        """Training batches of the current epoch whose step has run."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.batch_seconds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, self.eval_batch_seconds, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        split = "test" if "test" in self.datasets else "validation"
        return self._loader(split, self.eval_batch_size, self.eval_batch_seconds, shuffle=False)
