import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from broadclass.data.check import DataCheckError
from broadclass.data.datamodule import LengthBucketBatchSampler, collate, seconds_batches
from broadclass.data.manifest import ManifestError, read_manifest, write_manifest
from tests.helpers.config import compose_config


def item(n_samples: int, labels: list[int], category: int = 0) -> dict:
    return {
        "input_values": np.ones(n_samples, np.float32),
        "labels": labels,
        "category": category,
        "id": str(n_samples),
    }


def test_collate_pads_audio_with_zeros_and_labels_with_minus_100():
    batch = collate([item(5, [2, 3, 4]), item(3, [5])])
    assert batch["input_values"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_values"][1, 3:].tolist() == [0, 0]
    assert batch["labels"].tolist() == [[2, 3, 4], [5, -100, -100]]
    assert batch["label_lengths"].tolist() == [3, 1]


def test_buckets_group_similar_durations():
    durations = np.random.default_rng(0).uniform(1, 10, 200)
    sampler = LengthBucketBatchSampler(durations, batch_size=10, seed=1)
    spreads = [np.ptp(durations[b]) for b in sampler]
    assert np.mean(spreads) < 1.5  # random batches spread ~7 s


def test_every_utterance_is_seen_once_per_epoch_and_order_changes_between_epochs():
    sampler = LengthBucketBatchSampler([1.0 + i % 7 for i in range(50)], batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(50))
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_order_depends_only_on_seed_and_epoch():
    durations = np.random.default_rng(0).uniform(1, 5, 40)
    a, b = LengthBucketBatchSampler(durations, 4, seed=7), LengthBucketBatchSampler(durations, 4, seed=7)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)


def test_training_epoch_is_a_whole_number_of_accumulated_steps():
    sampler = LengthBucketBatchSampler([1.0] * 50, batch_size=8, multiple_of=2)  # 7 batches → 8
    assert len(sampler) == len(list(sampler)) == 8


def test_ranks_split_training_batches_evenly_and_evaluation_batches_without_repeats():
    durations = [1.0 + i for i in range(50)]
    train = [list(LengthBucketBatchSampler(durations, 8, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 4
    evaluation = [list(LengthBucketBatchSampler(durations, 8, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    seen = sorted(i for rank in evaluation for b in rank for i in b)
    assert seen == list(range(50))


# 1-15 s, spread as real corpora are: many short utterances, a long tail.
SPREAD = np.clip(np.random.default_rng(4).lognormal(np.log(4.0), 0.6, 300), 1.0, 15.0)


def batch_cost(batch: list, durations: np.ndarray, quadratic: float | None = None) -> float:
    """Rows × the longest row's seconds (with the quadratic penalty), for index or (index, speed) batches."""
    seconds = [durations[i] / speed for i, speed in batch] if isinstance(batch[0], tuple) else durations[batch]
    longest = max(seconds)
    return len(batch) * (longest + (longest**2 / quadratic if quadratic else 0.0))


@pytest.mark.parametrize("quadratic", [None, 20.0])
@pytest.mark.parametrize("speeds", [(1.0,), (0.9, 1.0, 1.1)])
def test_batches_by_seconds_keep_the_padded_batch_within_the_budget(quadratic, speeds):
    sampler = LengthBucketBatchSampler(
        SPREAD, 8, seed=1, jitter=0.02, batch_seconds=40.0, quadratic_duration=quadratic, speeds=speeds
    )
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        over = [b for b in batches if len(b) > 1 and batch_cost(b, SPREAD, quadratic) > 40.0 + 1e-9]
        assert not over, f"epoch {epoch}: {len(over)} batches over 40 s"
        # The budget is used, not batches of one: short utterances come many to a batch.
        assert np.mean([batch_cost(b, SPREAD, quadratic) for b in batches]) > 0.6 * 40.0
        assert max(len(b) for b in batches) >= 4 * min(len(b) for b in batches)
        indices = [i if isinstance(i, int) else i[0] for b in batches for i in b]
        assert set(indices) == set(range(len(SPREAD)))  # every utterance, some again to fill the count


def test_the_quadratic_penalty_gives_long_utterances_smaller_batches():
    plain = LengthBucketBatchSampler(SPREAD, 8, seed=1, batch_seconds=40.0)
    penalised = LengthBucketBatchSampler(SPREAD, 8, seed=1, batch_seconds=40.0, quadratic_duration=10.0)
    rows_of_longest = [next(len(b) for b in sampler if int(np.argmax(SPREAD)) in b) for sampler in (plain, penalised)]
    assert rows_of_longest[1] < rows_of_longest[0]
    assert len(penalised) > len(plain)


def test_an_utterance_longer_than_the_budget_is_a_batch_of_its_own():
    assert seconds_batches([0, 1, 2, 3], [1.0, 1.0, 50.0, 1.0], 10.0) == [[0, 1], [2], [3]]


def test_batches_by_seconds_depend_only_on_seed_and_epoch_and_change_between_epochs():
    def epoch(seed: int, number: int) -> list:
        sampler = LengthBucketBatchSampler(SPREAD, 8, seed=seed, jitter=0.02, batch_seconds=30.0, speeds=(0.9, 1.1))
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(7, 3) == epoch(7, 3)
    assert epoch(7, 3) != epoch(7, 4) and epoch(7, 3) != epoch(8, 3)


@pytest.mark.parametrize("speeds", [(1.0,), (0.9, 1.0, 1.1)])
def test_every_epoch_by_seconds_has_the_length_lightning_reads_once(speeds):
    """Lightning reads a training loader's length at the start and ends every epoch there; jitter and speeds
    change each epoch's cut, never its count."""
    sampler = LengthBucketBatchSampler(SPREAD, 8, seed=2, jitter=0.02, batch_seconds=25.0, speeds=speeds, multiple_of=2)
    assert len(sampler) % 2 == 0
    for epoch in range(6):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == len(sampler)


def test_ranks_get_the_same_number_of_batches_by_seconds_and_all_utterances_between_them():
    ranks = [
        LengthBucketBatchSampler(SPREAD, 8, seed=5, batch_seconds=35.0, num_replicas=3, rank=r, multiple_of=2)
        for r in range(3)
    ]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        batches = [list(sampler) for sampler in ranks]
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(ranks[0])
        assert {i for rank in batches for b in rank for i in b} == set(range(len(SPREAD)))
    evaluation = [
        list(LengthBucketBatchSampler(SPREAD, 8, shuffle=False, batch_seconds=35.0, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert sorted(i for rank in evaluation for b in rank for i in b) == list(range(len(SPREAD)))


def test_batches_by_seconds_even_out_the_padded_seconds_of_batches_of_eight():
    """What it is for: on 1-15 s utterances batch 8's padded seconds range widely (memory must hold the
    largest); by seconds, with batch 8's mean as the budget, none is over it and they vary much less."""
    fixed = list(LengthBucketBatchSampler(SPREAD, 8, seed=1, jitter=0.02))
    budget = float(np.mean([batch_cost(b, SPREAD) for b in fixed]))
    by_seconds = list(LengthBucketBatchSampler(SPREAD, 8, seed=1, jitter=0.02, batch_seconds=budget))
    costs = [[batch_cost(b, SPREAD) for b in batches] for batches in (fixed, by_seconds)]
    assert max(costs[1]) <= budget < max(costs[0])
    assert np.std(costs[1]) < np.std(costs[0]) / 2


def test_speed_perturbation_gives_each_utterance_one_speed_per_epoch_and_buckets_the_perturbed_durations():
    durations = np.random.default_rng(0).uniform(1, 5, 60)
    sampler = LengthBucketBatchSampler(durations, 6, seed=2, jitter=0.0, speeds=(0.9, 1.0, 1.1))
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i, _ in b) == list(range(60))
        speeds = dict(pair for b in batches for pair in b)
        assert set(speeds.values()) == {0.9, 1.0, 1.1}
        # Sorted on the perturbed durations, buckets do not overlap.
        spans = sorted((min(durations[i] / s for i, s in b), max(durations[i] / s for i, s in b)) for b in batches)
        assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:], strict=False))
        epochs.append(speeds)
    assert epochs[0] != epochs[1]


def test_a_single_speed_factor_is_applied_to_every_utterance():
    sampler = LengthBucketBatchSampler([1.0, 2.0, 3.0], 2, speeds=(1.25,))
    assert sorted(pair for b in sampler for pair in b) == [(0, 1.25), (1, 1.25), (2, 1.25)]


def test_evaluation_batches_are_never_speed_perturbed():
    sampler = LengthBucketBatchSampler([1.0, 2.0, 3.0], 2, shuffle=False, speeds=(0.9, 1.1))
    assert list(sampler) == [[0, 1], [2]]


def test_manifest_errors_name_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio_filepath": "a.wav", "duration": 1, "phones": "a", "category": "x"}\n{"duration": 2}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing field\(s\) audio_filepath, phones, category"):
        read_manifest(path)
    path.write_text("not json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: not valid JSON"):
        read_manifest(path)
    path.write_text("\n")
    with pytest.raises(ManifestError, match="manifest is empty"):
        read_manifest(path)


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    path = write_manifest(
        tmp_path / "sub" / "m.jsonl", [{"audio_filepath": "w/a.wav", "duration": 1.5, "phones": "a", "category": "x"}]
    )
    row = read_manifest(path)[0]
    assert row["audio_filepath"] == str(tmp_path / "sub" / "w" / "a.wav")
    assert row["id"] == "m-1"


def test_collate_output_is_what_the_network_takes():
    batch = collate([item(400, [2]), item(320, [3, 4])])
    assert batch["input_values"].dtype == torch.float32 and batch["attention_mask"].dtype == torch.long


def test_configured_speed_perturbation_changes_training_audio_lengths_and_leaves_validation_alone(train_config):
    from hydra.utils import instantiate

    datamodule = instantiate(train_config("data.speed_perturbation=[0.8,1.25]").data)
    datamodule.setup("fit")

    def length_ratios(split: str, loader) -> list[float]:
        dataset = datamodule.datasets[split]
        plain = {row["id"]: len(dataset[i]["input_values"]) for i, row in enumerate(dataset.rows)}
        batch = next(iter(loader))
        return [plain[u] / n for u, n in zip(batch["ids"], batch["attention_mask"].sum(-1).tolist(), strict=True)]

    ratios = length_ratios("train", datamodule.train_dataloader())
    assert all(r == pytest.approx(0.8, abs=0.01) or r == pytest.approx(1.25, abs=0.01) for r in ratios), ratios
    assert set(length_ratios("validation", datamodule.val_dataloader())) == {1.0}


def test_speed_perturbation_must_be_positive_factors(train_config):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises(InstantiationException, match="positive speed factors"):
        instantiate(train_config("data.speed_perturbation=[0.0,1.0]").data)


# ---- unlabeled audio (self-supervised pretraining) ---------------------------------------------------------------
def unlabeled_manifests(tmp_path: Path) -> dict[str, Path]:
    """Audio-only manifests: ids and paths, a duration on one row only (the others come from the header)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate((0.5, 1.0, 1.5, 2.0)):
        path = tmp_path / "audio" / f"u{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(22_050 * seconds))).astype(np.float32), 22_050)
        rows.append({"id": f"u{i}", "audio_filepath": f"audio/u{i}.wav"} | ({"duration": seconds} if i == 0 else {}))
    return {
        "train": write_manifest(tmp_path / "train.jsonl", rows[:3]),
        "validation": write_manifest(tmp_path / "validation.jsonl", rows[3:]),
    }


def unlabeled(tmp_path: Path, *overrides: str):
    from hydra.utils import instantiate

    cfg = compose_config(tmp_path, ["data.labels=null", "data.categories=null", "data.batch_size=3", *overrides])
    return instantiate(cfg.data)


def test_unlabeled_audio_gives_batches_of_audio_and_ids_without_labels(tmp_path):
    manifests = unlabeled_manifests(tmp_path)
    datamodule = unlabeled(
        tmp_path,
        "data=manifest",
        f"data.train_manifest={manifests['train']}",
        f"data.val_manifest={manifests['validation']}",
    )
    datamodule.setup("fit")
    assert datamodule.label_map is None and datamodule.check_report.ok
    assert datamodule.datasets["train"].durations == [0.5, 1.0, 1.5]  # two read from the headers
    assert set(datamodule.datasets["train"][1]) == {"input_values", "id"}
    (batch,) = list(datamodule.train_dataloader())
    assert set(batch) == {"input_values", "attention_mask", "ids"}
    assert sorted(batch["ids"]) == ["u0", "u1", "u2"]
    lengths = dict(zip(batch["ids"], batch["attention_mask"].sum(-1).tolist(), strict=True))
    assert lengths == {"u0": 8000, "u1": 16000, "u2": 24000}  # resampled to 16 kHz
    (batch,) = list(datamodule.val_dataloader())
    assert batch["ids"] == ["u3"] and batch["attention_mask"].sum().item() == 32000


def test_unlabeled_audio_is_checked_like_labeled_audio_in_one_report(tmp_path):
    manifests = unlabeled_manifests(tmp_path)
    sf.write(tmp_path / "audio" / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    lines = manifests["train"].read_text(encoding="utf-8").splitlines()
    lines += [
        json.dumps({"id": "silent", "audio_filepath": "audio/silent.wav", "category": "robot", "phones": "ж"}),
        json.dumps({"id": "u0", "audio_filepath": "audio/u1.wav"}),
        json.dumps({"id": "gone", "audio_filepath": "audio/gone.wav"}),
        json.dumps({"id": "no-audio"}),
    ]
    manifests["train"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    datamodule = unlabeled(
        tmp_path,
        "data=manifest",
        f"data.train_manifest={manifests['train']}",
        f"data.val_manifest={manifests['validation']}",
    )
    with pytest.raises(DataCheckError) as raised:
        datamodule.setup("fit")
    found = {(p.source.rsplit(":", 1)[1], p.kind) for p in raised.value.report.problems}
    # The silent row's unknown category and phones are no problem of unlabeled audio.
    assert found == {("4", "silent_audio"), ("5", "duplicate_id"), ("6", "missing_audio"), ("7", "broken_line")}
    assert "missing field(s) audio_filepath" in str(raised.value)


def test_the_demo_corpus_serves_as_unlabeled_audio(tmp_path):
    datamodule = unlabeled(tmp_path, "data=demo", "data.manifests_from.n_train=4", "data.manifests_from.n_val=4")
    datamodule.setup("fit")
    assert datamodule.label_map is None
    assert len(datamodule.datasets["train"]) == 4 and len(datamodule.datasets["validation"]) == 4
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"input_values", "attention_mask", "ids"} and len(batch["ids"]) == 3


def test_labels_and_categories_are_null_together_or_not_at_all(tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="both null"):
        unlabeled(tmp_path, "data.categories=[{name: a, tag: a}]")
