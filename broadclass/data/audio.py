"""Audio headers and decoding (soundfile), down-mixing, resampling (soxr) and a disk cache of the result.

Decoding and resampling happen once per file: the 16 kHz float32 waveform is cached as ``.npy`` keyed
by the file's path, size, mtime and the target rate, so epochs 2..N only read an array from disk (the
page cache keeps it in memory on small corpora) and a changed file is never served stale.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message names the file and the reason.

    ``reason``: ``missing`` (no such file), ``unreadable`` (soundfile cannot open or decode it) or
    ``empty`` (no samples)."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AudioHeader:
    """What an audio file's header says, read without decoding the samples."""

    path: Path
    frames: int  # samples per channel
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate


def existing(path: str | Path) -> Path:
    """``path`` as a Path; an :class:`AudioError` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}", "missing")
    return path


def read_header(path: str | Path) -> AudioHeader:
    """The header of the audio file ``path``; an :class:`AudioError` naming the file when it is missing,
    unreadable or has no samples."""
    path = existing(path)
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by format
        raise AudioError(f"cannot decode audio file {path}: {err}") from None
    if info.frames <= 0:
        raise AudioError(f"audio file has no samples: {path}", "empty")
    return AudioHeader(path, int(info.frames), int(info.samplerate), int(info.channels))


def decode(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform of ``path`` at ``sample_rate``."""
    path = existing(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by format
        raise AudioError(f"cannot decode audio file {path}: {err}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {path}", "empty")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_span(path: str | Path, start: int, stop: int, sample_rate: int) -> np.ndarray:
    """Samples ``start`` to ``stop`` (counted at ``sample_rate``) of ``path``, mono float32 at ``sample_rate``,
    read without decoding the rest of the file: a window of a long recording. Resampled on its own, so its
    first and last milliseconds differ slightly from :func:`decode`'s (a window's edges are context)."""
    path = existing(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            first, last = start * rate // sample_rate, -(-stop * rate // sample_rate)
            handle.seek(first)
            data = handle.read(last - first, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by format
        raise AudioError(f"cannot decode audio file {path}: {err}") from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")[: stop - start]
    return np.ascontiguousarray(mono, dtype=np.float32)


def change_speed(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """``wave`` played ``factor`` times faster, pitch and formants moving with it (speed perturbation, as
    Kaldi's 0.9/1.0/1.1 copies): read as if sampled at ``factor * sample_rate`` and resampled back."""
    if factor == 1.0:
        return wave
    return np.ascontiguousarray(soxr.resample(wave, factor * sample_rate, sample_rate, quality="HQ"), dtype=np.float32)


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the utterance's real length, as Wav2Vec2FeatureExtractor does."""
    wave = wave.astype(np.float32, copy=False)
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


class AudioCache:
    """Resampled waveforms on disk, one ``.npy`` per (file, size, mtime, rate)."""

    def __init__(self, directory: str | Path | None, sample_rate: int):
        self.directory = Path(directory) if directory else None
        self.sample_rate = sample_rate
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> str:
        stat = path.stat()
        ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.sample_rate}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def load(self, path: str | Path) -> np.ndarray:
        if self.directory is None:
            return decode(path, self.sample_rate)
        path = existing(path)
        cached = self.directory / f"{self._key(path)}.npy"
        try:
            return np.load(cached)
        except (FileNotFoundError, ValueError, OSError):
            pass
        wave = decode(path, self.sample_rate)
        # Written under a temporary name and renamed, so concurrent workers never read half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, wave)
        os.replace(tmp, cached)
        return wave
