"""The kernel cache benchmark (benchmarks/kernel_cache.py): the batch lengths it cycles over, and one short run."""

import json
import subprocess
import sys

import pytest

from benchmarks.kernel_cache import batch_lengths
from tests.helpers.processes import REPO


def test_the_lengths_are_distinct_and_all_about_the_demos_length():
    lengths = batch_lengths(100)
    assert len(set(lengths)) == 100
    # One frame apart from 1.5 s: a step costs about the same on each, only the shape changes.
    assert lengths[0] == 24_000 and lengths[-1] == 24_000 + 99 * 320


@pytest.mark.slow
@pytest.mark.timeout(900)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_each_point_runs_with_the_cache_it_is_given(tmp_path):
    out = tmp_path / "kernel-cache.json"
    args = ["--shapes", "1", "2", "--caches", "0", "8192", "--steps", "2", "--threads", "1", f"--out={out}"]
    subprocess.run([sys.executable, "-m", "benchmarks.kernel_cache", *args], cwd=REPO, check=True)
    points = json.loads(out.read_text())["points"]
    assert sorted((p["shapes"], p["kernel_cache"]) for p in points) == [(1, 0), (1, 8192), (2, 0), (2, 8192)]
    for p in points:
        assert len(p["lengths_s"]) == p["shapes"] and p["s_per_step"] > 0 and p["peak_rss_mib"] > 0
