"""Recordings of any length: predict transcribes them in overlapping windows stitched on their own timeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rapidfuzz.distance import Levenshtein

from broadclass import predict
from broadclass.data.audio import decode, decode_span, normalize, read_header
from broadclass.data.manifest import read_manifest
from broadclass.model.windows import infer_windows, plan_windows
from broadclass.tracking.run_model import load_model
from tests.helpers.config import compose_config

RATE = 16_000


def frames_of(net):
    return lambda n: int(net._get_feat_extract_output_lengths(torch.tensor(n)))


@pytest.mark.parametrize("total", [64_000, 64_320, 100_000, 160_000, 480_123, 1_000_000])
def test_the_windows_kept_frames_tile_the_recordings_frames_exactly(trained_run, total):
    net = load_model(trained_run.checkpoint).module.net
    frames = frames_of(net)
    windows = plan_windows(total, 64_000, 16_000, 320, frames)  # 4 s windows, 1 s context each side
    assert windows[0].keep_start == 0 and windows[-1].keep_stop == frames(total)  # as an unchunked forward
    for before, after in zip(windows, windows[1:], strict=False):
        assert before.keep_stop == after.keep_start
        assert after.start - before.start == 32_000
    for window in windows:
        assert window.start % 320 == 0 and window.first_frame == window.start // 320
        # A window gives only frames its own forward computes, and drops its context at inner edges.
        assert window.first_frame <= window.keep_start < window.keep_stop
        assert window.keep_stop <= window.first_frame + frames(window.stop - window.start)
    assert windows[-1].stop == total and (len(windows) == 1) == (total <= 64_000)


def test_a_window_needs_context_at_both_ends_and_something_left_to_keep(trained_run):
    frames = frames_of(load_model(trained_run.checkpoint).module.net)
    for window, context in [(64_000, 0), (64_000, 32_000), (64_000, 100)]:
        with pytest.raises(ValueError):
            plan_windows(200_000, window, context, 320, frames)


def test_a_recording_of_one_window_gives_exactly_the_unchunked_output(trained_run, demo_corpus, tmp_path):
    module = load_model(trained_run.checkpoint).module.eval()
    path = read_manifest(demo_corpus["validation"])[0]["audio_filepath"]
    wave = decode(path, 16_000)
    frames = frames_of(module.net)
    (window,) = plan_windows(len(wave), 20 * RATE, 3 * RATE, 320, frames)
    with torch.inference_mode():
        stitched = infer_windows(module, lambda a, b: decode_span(path, a, b, 16_000), [window], [[0]])
        whole = module.infer(torch.from_numpy(normalize(wave))[None], torch.ones(1, len(wave), dtype=torch.long))
    assert torch.equal(stitched.logits, whole["logits"].float())
    assert stitched.output_lengths.tolist() == whole["output_lengths"].tolist()
    # and predict's record of it: one pass over the whole file, with no windows listed.
    trained = load_model(trained_run.checkpoint)
    utterance = [predict.Utterance("u", path, path)]
    duration = read_header(path).duration  # what predict reads (the demo's files are 22.05 kHz)
    (just_fits,) = predict.predict(trained, utterance, window_seconds=duration, window_context_seconds=0.2).records
    (default,) = predict.predict(trained, utterance).records
    assert just_fits == default and "windows" not in default and default["tokens"]
    (cut,) = predict.predict(trained, utterance, window_seconds=duration - 0.1, window_context_seconds=0.2).records
    assert len(cut["windows"]) == 2


def test_a_long_file_is_predicted_in_windows_with_its_real_time_factor_beside_a_short_one(
    trained_run, demo_corpus, tmp_path, capsys
):
    rows = read_manifest(demo_corpus["validation"])
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(rows[0]["audio_filepath"], folder / "utterance.wav")
    waves = [decode(row["audio_filepath"], 16_000) for row in rows]
    session = np.concatenate([waves[i % len(waves)] for i in range(70)])  # about two minutes
    sf.write(folder / "session.wav", session, RATE, subtype="PCM_16")
    out = tmp_path / "long.jsonl"

    args = [f"model={trained_run.checkpoint}", f"input={folder}", f"output={out}", "batch_seconds=60"]
    assert predict.main(args) == 0

    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"session", "utterance"} and "windows" not in records["utterance"]
    long = records["session"]
    assert long["duration"] == pytest.approx(len(session) / RATE, abs=1e-3)
    spans = long["windows"]
    assert len(spans) == len(
        plan_windows(len(session), 20 * RATE, 3 * RATE, 320, frames_of(load_model(trained_run.checkpoint).module.net))
    )
    assert spans[0]["start"] == 0 and spans[-1]["end"] == pytest.approx(long["duration"], abs=0.03)
    assert all(a["end"] == b["start"] for a, b in zip(spans, spans[1:], strict=False))
    for span in spans:
        assert set(span["category"]) == set(long["category"])
    starts = [s["start"] for s in long["segments"]]
    assert starts == sorted(starts) and starts[-1] > 60  # tokens on the recording's timeline, to its end
    err = " ".join(capsys.readouterr().err.split())
    assert "real-time factor" in err and f"{long['duration'] + records['utterance']['duration']:.1f} s of audio" in err


# A session: held-out utterances of one voice played one after another, each about 1.75 s; windows of 4 s with
# 1 s of context, so the session is cut in several windows and most utterances meet a window's edge.
SESSION_UTTERANCES = 8
# Tolerance: the stitched tokens may differ from the utterances' own by this share of their tokens (edit
# distance). An utterance heard after another is not heard alone: the encoder attends to its neighbours and
# normalises over the window; with the demo trained 3,000 steps (fine-tuned from its pretrained encoder) the
# difference was 5-17 % in 4-s windows.
TOKEN_TOLERANCE = 0.25


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains the demo 1,500 steps (~4-5 min on an idle 2-core machine)
def test_a_session_of_known_utterances_gives_each_utterances_tokens_in_its_own_time(tmp_path_factory, empty_mlflow_db):
    from broadclass.train import train

    root = tmp_path_factory.mktemp("session")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    steps = ["trainer.max_steps=1500", "val_every_n_optimizer_steps=1500", "test_after_fit=false"]
    cfg = compose_config(root, ["+experiment=demo", *steps, "trainer.enable_progress_bar=false"])
    train(cfg)
    (checkpoint,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("step*.ckpt")
    trained = load_model(checkpoint)
    validation = Path(cfg.paths.data_dir) / "demo" / "voice" / "validation.jsonl"
    rows = [row for row in read_manifest(validation) if row["category"] == "male"][:SESSION_UTTERANCES]
    waves = [decode(row["audio_filepath"], 16_000) for row in rows]
    session = root / "session.wav"
    sf.write(session, np.concatenate(waves), RATE, subtype="FLOAT")

    alone = predict.predict(trained, [predict.Utterance(r["id"], r["audio_filepath"], r["id"]) for r in rows]).records
    (whole,) = predict.predict(
        trained, [predict.Utterance("session", str(session), "session")], window_seconds=4, window_context_seconds=1
    ).records

    assert len(whole["windows"]) >= 4
    expected = [token for record in alone for token in record["tokens"]]
    owner = [n for n, record in enumerate(alone) for _ in record["tokens"]]
    assert len(expected) > 10 * SESSION_UTTERANCES / 2, "the model should decode the utterances"
    distance = Levenshtein.distance(expected, whole["tokens"])
    assert distance <= TOKEN_TOLERANCE * len(expected), (distance, len(expected))
    # Each token matched to an utterance's own starts inside that utterance's stretch of the session.
    bounds = np.cumsum([0.0] + [len(w) / RATE for w in waves])
    matched = [
        (owner[i], whole["segments"][j]["start"])
        for block in Levenshtein.opcodes(expected, whole["tokens"])
        if block.tag == "equal"
        for i, j in zip(range(block.src_start, block.src_end), range(block.dest_start, block.dest_end), strict=True)
    ]
    outside = [(n, start) for n, start in matched if not bounds[n] - 0.02 <= start < bounds[n + 1]]
    assert len(matched) >= (1 - TOKEN_TOLERANCE) * len(expected) and not outside, outside


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_the_long_recording_benchmark_measures_predict_and_the_pipeline(tmp_path):
    from benchmarks.long_recording import main

    out = tmp_path / "long.json"
    main(["--minutes", "0.5", "--pipeline", "--threads", "1", f"--work={tmp_path / 'work'}", f"--out={out}"])
    ours, theirs = json.loads(out.read_text())["runs"]
    assert (ours["system"], theirs["system"]) == ("predict", "pipeline")
    assert ours["windows"] == 2 and ours["tokens"] > 0 and ours["peak_rss_mb"] > 100 and ours["real_time_factor"] > 0
    assert theirs["token_distance_to_predict"] < 0.2 and theirs["peak_rss_mb"] > 100
