import numpy as np
import pytest
import soundfile as sf

from broadclass.data.audio import AudioCache, AudioError, change_speed, decode, normalize, read_header


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.mark.parametrize(("rate", "channels"), [(22_050, 1), (44_100, 2), (8_000, 1)])
def test_decode_gives_16k_mono_of_the_right_length(tmp_path, rate, channels):
    path = tmp_path / f"{rate}.wav"
    sf.write(path, tone(rate, 1.5, channels), rate)
    wave = decode(path, 16_000)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - 24_000) <= 1


def test_stereo_is_downmixed_by_averaging(tmp_path):
    path = tmp_path / "lr.wav"
    left_only = np.stack([tone(16_000, 0.5), np.zeros(8_000)], axis=1)
    sf.write(path, left_only, 16_000, subtype="FLOAT")
    np.testing.assert_allclose(decode(path, 16_000), tone(16_000, 0.5) / 2, atol=1e-6)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="not found: .*nowhere.wav"):
        decode(tmp_path / "nowhere.wav", 16_000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x01garbage" * 10)
    with pytest.raises(AudioError, match="cannot decode .*junk.wav"):
        decode(junk, 16_000)


def test_the_header_gives_length_rate_and_channels_and_names_the_file_it_cannot_use(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(22_050, 1.5, channels=2), 22_050)
    header = read_header(path)
    assert (header.frames, header.sample_rate, header.channels) == (33_075, 22_050, 2)
    assert header.duration == pytest.approx(1.5)
    junk, empty = tmp_path / "junk.wav", tmp_path / "empty.wav"
    junk.write_bytes(b"RIFF\x00\x01garbage" * 10)
    sf.write(empty, np.zeros(0), 16_000)
    reasons = {}
    for bad in (tmp_path / "nowhere.wav", junk, empty):
        with pytest.raises(AudioError, match=bad.name) as err:
            read_header(bad)
        reasons[bad.name] = err.value.reason
    assert reasons == {"nowhere.wav": "missing", "junk.wav": "unreadable", "empty.wav": "empty"}


def test_normalize_gives_zero_mean_unit_variance():
    wave = normalize(np.random.default_rng(0).normal(3, 5, 16_000).astype(np.float32))
    assert abs(wave.mean()) < 1e-5 and abs(wave.std() - 1) < 1e-3


def test_cache_reuses_the_resampled_audio_and_notices_a_changed_file(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    sf.write(path, tone(22_050, 0.5), 22_050)
    cache = AudioCache(tmp_path / "cache", 16_000)
    first = cache.load(path)
    calls = []
    monkeypatch.setattr("broadclass.data.audio.decode", lambda *a, **k: calls.append(a) or first)
    np.testing.assert_array_equal(cache.load(path), first)
    assert calls == []  # served from the cache, not decoded again
    sf.write(path, tone(22_050, 0.7), 22_050)
    cache.load(path)
    assert len(calls) == 1


def test_speed_perturbation_shortens_the_audio_and_raises_its_pitch_by_the_factor():
    faster = change_speed(tone(16_000, 1.0).astype(np.float32), 1.1, 16_000)
    assert abs(len(faster) - 16_000 / 1.1) <= 2
    spectrum = np.abs(np.fft.rfft(faster * np.hanning(len(faster))))
    peak_hz = np.argmax(spectrum) * 16_000 / len(faster)
    assert peak_hz == pytest.approx(440 * 1.1, abs=2)
