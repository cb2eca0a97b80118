"""What each benchmarked process records about itself, identically for both systems.

A process records the wall-clock end of every optimizer step with the real audio seconds that step
trained on, the start and end of every validation, the start and end of the fit, and its peak memory,
and writes them as JSON when the fit ends. The orchestrator (``benchmarks/throughput.py``) turns the
records into throughput figures. On CUDA the device is synchronised only at the edges of the measured
window (the end of the warm-up step and of the last step) and around validation, so the measurement
adds no per-step host sync to either system.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB), and of any exited child (workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _scale(scaler: torch.amp.GradScaler | None) -> float | None:
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None


@dataclass
class Record:
    system: str
    warmup_steps: int
    steps: int
    fit_start: float = float("nan")
    fit_end: float = float("nan")
    # Index k: optimizer step k + 1.
    step_end: list[float] = field(default_factory=list)
    # Process CPU seconds (all threads) at each step end: less sensitive than wall time to other load.
    step_cpu: list[float] = field(default_factory=list)
    step_audio_s: list[float] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)
    peak_rss_mb: float = float("nan")
    # Peak so far at the end of the last step and at the end of the last validation: where the peak arose.
    peak_rss_mb_training: float = float("nan")
    peak_rss_mb_validation: float = float("nan")
    peak_gpu_mb: float | None = None
    # The fp16 loss scaler's scale at the start and the end of the fit (None without a scaler): read only at
    # the two edges, so no per-step host sync. Within a scaler's growth interval (2,000 steps by default, in
    # torch and accelerate alike) the scale only halves, once per overflow step: overflows = log2(start / end).
    loss_scale_start: float | None = None
    loss_scale_end: float | None = None
    device: str = ""
    _pending_audio_s: float = 0.0
    _validation_start: float = float("nan")
    _validation_cpu: float = float("nan")
    _validation_utterances: int = 0

    def start_fit(self, scaler: torch.amp.GradScaler | None = None) -> None:
        self.device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.loss_scale_start = _scale(scaler)
        self.fit_start = time.time()

    def add_audio(self, seconds: float) -> None:
        self._pending_audio_s += seconds

    def end_step(self) -> None:
        """Called once per optimizer step, after the optimizer and scheduler stepped."""
        if len(self.step_end) + 1 in (self.warmup_steps, self.steps):
            synchronize()
        self.step_end.append(time.time())
        self.step_cpu.append(time.process_time())
        if len(self.step_end) == self.steps:
            self.peak_rss_mb_training = peak_rss_mb()
        self.step_audio_s.append(self._pending_audio_s)
        self._pending_audio_s = 0.0

    def start_validation(self) -> None:
        synchronize()
        self._validation_start = time.time()
        self._validation_cpu = time.process_time()
        self._validation_utterances = 0

    def add_validation_utterances(self, count: int) -> None:
        self._validation_utterances += count

    def end_validation(self) -> None:
        synchronize()
        self.validations.append(
            {
                "start": self._validation_start,
                "end": time.time(),
                "cpu_s": time.process_time() - self._validation_cpu,
                "utterances": self._validation_utterances,
                "after_step": len(self.step_end),
            }
        )
        self.peak_rss_mb_validation = peak_rss_mb()

    def end_fit(self, out: str | Path, scaler: torch.amp.GradScaler | None = None) -> None:
        synchronize()
        self.fit_end = time.time()
        self.loss_scale_end = _scale(scaler)
        self.peak_rss_mb = peak_rss_mb()
        if torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        record = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        # the oneDNN kernels this process kept (None: oneDNN's default), for the comparison's record
        record["onednn_kernel_cache"] = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
        Path(out).write_text(json.dumps(record, indent=1))
