"""LightningDataModule: manifests → length-bucketed, padded batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from broadclass.data.audio import AudioCache, normalize
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest


class UtteranceDataset(Dataset):
    """Items are dicts: normalised 16 kHz waveform, token ids, category index, utterance id."""

    def __init__(self, rows: Sequence[dict], labels: LabelMap, audio: AudioCache):
        # Checked here, before training starts, so a bad row costs seconds rather than an epoch.
        missing = [
            f"  {row['_source']}: {row['audio_filepath']}" for row in rows if not Path(row["audio_filepath"]).is_file()
        ]
        if missing:
            raise FileNotFoundError(f"{len(missing)} audio file(s) not found:\n" + "\n".join(missing[:20]))
        names = set(labels.category_names)
        unknown = [f"  {row['_source']}: {row['category']!r}" for row in rows if row["category"] not in names]
        if unknown:
            raise ValueError(
                f"{len(unknown)} row(s) have a category not in data.categories ({', '.join(sorted(names))}):\n"
                + "\n".join(unknown[:20])
            )
        labels.check((row["_source"], row["phones"]) for row in rows)
        self.rows = list(rows)
        self.audio = audio
        self.targets = [labels.encode(row["phones"], row["category"]) for row in self.rows]
        self.categories = [labels.category_index(row["category"]) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def durations(self) -> list[float]:
        return [row["duration"] for row in self.rows]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {
            "input_values": normalize(self.audio.load(row["audio_filepath"])),
            "labels": self.targets[index],
            "category": self.categories[index],
            "id": row["id"],
        }


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar duration, in random order between batches.

    Utterances are sorted by duration with a small per-epoch jitter (so batch composition varies from
    epoch to epoch), cut into batches, and the batches shuffled. The order depends only on
    ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one. With several
    processes each takes every ``num_replicas``-th batch. ``multiple_of`` (the gradient accumulation)
    repeats the first batches of the epoch so every epoch is a whole number of optimizer steps:
    otherwise Lightning steps on a short accumulation at each epoch end, and "validate every N
    optimizer steps", counted by Lightning in batches, drifts away from optimizer step N.
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
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.jitter = jitter
        self.num_replicas = num_replicas
        self.rank = rank
        self.multiple_of = multiple_of
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        keys = self.durations
        if self.shuffle and self.jitter > 0:
            keys = keys * (1 + rng.uniform(-self.jitter, self.jitter, size=len(keys)))
        order = np.argsort(keys, kind="stable")
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            # Every training process must run the same number of batches, a multiple of the
            # accumulation, so the tail is filled by wrapping round to the start of the epoch's order.
            total = len(self) * self.num_replicas
            batches = (batches * math.ceil(total / len(batches)))[:total]
        # Evaluation batches are split as they are: repeating utterances would bias the report.
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        num_batches = math.ceil(len(self.durations) / self.batch_size)
        if not self.shuffle:
            return len(range(self.rank, num_batches, self.num_replicas))
        per_rank = math.ceil(num_batches / self.num_replicas)
        return math.ceil(per_rank / self.multiple_of) * self.multiple_of


def collate(items: Sequence[dict]) -> dict:
    """Pad audio with zeros (attention_mask marks real samples) and labels with -100."""
    lengths = torch.tensor([len(item["input_values"]) for item in items])
    label_lengths = torch.tensor([len(item["labels"]) for item in items])
    audio = torch.zeros(len(items), int(lengths.max()))
    mask = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    labels = torch.full((len(items), max(int(label_lengths.max()), 1)), -100, dtype=torch.long)
    for i, item in enumerate(items):
        audio[i, : lengths[i]] = torch.from_numpy(item["input_values"])
        mask[i, : lengths[i]] = 1
        labels[i, : label_lengths[i]] = torch.tensor(item["labels"], dtype=torch.long)
    return {
        "input_values": audio,
        "attention_mask": mask,
        "labels": labels,
        "label_lengths": label_lengths,
        "categories": torch.tensor([item["category"] for item in items]),
        "ids": [item["id"] for item in items],
    }


class BroadClassDataModule(pl.LightningDataModule):
    """Train/validation/test manifests with a shared label map and audio cache.

    ``prepare`` (optional) builds the corpus (the demo synthesiser, a user's prepare step); it runs
    once, in ``prepare_data``, and returns a mapping of split name to manifest path.
    """

    def __init__(
        self,
        labels: Mapping,
        categories: Sequence[Mapping],
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        prepare: Callable[[], Mapping[str, str | Path]] | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        sample_rate: int = 16_000,
        cache_dir: str | None = None,
        seed: int = 0,
        bucket_jitter: float = 0.1,
    ):
        super().__init__()
        self.label_map = LabelMap.from_config(labels, categories)
        self.manifests = {"train": train_manifest, "validation": val_manifest, "test": test_manifest}
        self.prepare = prepare
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.audio = AudioCache(cache_dir, sample_rate)
        self.seed = seed
        self.bucket_jitter = bucket_jitter
        self.datasets: dict[str, UtteranceDataset] = {}

    def prepare_data(self) -> None:
        if self.prepare is not None:
            built = self.prepare()
            for split, path in built.items():
                if self.manifests.get(split) is None:
                    self.manifests[split] = str(path)

    def setup(self, stage: str | None = None) -> None:
        if not self.manifests.get("train") and self.prepare is not None:
            # prepare_data runs on rank 0 only; other ranks (and direct setup() calls) still need paths.
            self.prepare_data()
        for split, path in self.manifests.items():
            if path and split not in self.datasets:
                self.datasets[split] = UtteranceDataset(read_manifest(path), self.label_map, self.audio)
        if stage in ("fit", None) and "train" not in self.datasets:
            raise ValueError("data.train_manifest is not set and no prepare step produced one")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
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
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "validation", self.eval_batch_size, False)
