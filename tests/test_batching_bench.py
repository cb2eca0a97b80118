"""The batching benchmark's padding arithmetic (benchmarks/batching.py), on lengths whose batches are known."""

import pytest

from benchmarks.batching import padding


def test_padding_of_batches_of_rows_is_the_share_of_padded_seconds_and_the_largest_batch_is_rows_times_longest():
    # Sorted without jitter: [1, 2] and [3, 4] -> padded 2*2 + 2*4 = 12 s for 10 s of audio.
    result = padding([4.0, 1.0, 3.0, 2.0], "data.batch_size=2", seed=0, jitter=0.0, epochs=1)
    assert result["padding"] == pytest.approx(2 / 12)
    assert result["largest_batch_padded_s"] == 8.0 and result["batches_per_epoch"] == 2


def test_padding_of_batches_by_seconds_keeps_every_batch_within_the_budget():
    # A budget of 6 s: [1, 2] (2*2 = 4 s), [3], [4] -> padded 11 s for 10 s of audio.
    result = padding([4.0, 1.0, 3.0, 2.0], "data.batch_seconds=6", seed=0, jitter=0.0, epochs=1)
    assert result["padding"] == pytest.approx(1 / 11)
    assert result["largest_batch_padded_s"] == 4.0 and result["batches_per_epoch"] == 3
