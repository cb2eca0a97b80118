"""The fast suite again on another CPU's kernels: tests must not depend on the kernels of the machine they run on.

`make test` once failed on a machine with other bf16 kernels than the developers' (issue 21). Here the whole fast
suite runs in a second pytest process told to use the kernels of a CPU without AVX-512 and without native bf16:
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's convolutions and matmuls) and ``ATEN_CPU_CAPABILITY=avx2`` (torch's own
vectorised kernels). On such a CPU torch does not send bf16 convolutions to oneDNN at all, so the bf16 training
steps, the fp32 evaluation and every numeric test run on kernels other than those of the outer run (on CI's AMD
EPYC: AVX-512 with native bf16).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.processes import REPO

OTHER_CPU = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def kernels(env: dict[str, str]) -> str:
    """torch's CPU capability and whether it sends bf16 convolutions to oneDNN, in a fresh interpreter."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a limit for hangs: the fast suite takes ~5 minutes on the 2-core machine
def test_the_fast_suite_passes_on_the_kernels_of_a_cpu_without_avx512_or_native_bf16(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | OTHER_CPU
    assert kernels(env).split() == ["AVX2", "False"], "the variables did not change the kernels"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'tmp'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 400, summary  # the whole fast suite, not a few tests
