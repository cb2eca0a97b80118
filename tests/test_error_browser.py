"""The error browser (broadclass/tracking/error_browser.py): the data the page embeds, checked against jiwer and
sklearn; its audio limits; and the page itself in headless Chromium (Debian's), driven through the DevTools
protocol by Playwright, offline, from a real trained run's MLflow artifact and from ``predict``."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
from mlflow import MlflowClient
from sklearn.metrics import confusion_matrix

from broadclass import predict
from broadclass.data.manifest import read_manifest
from broadclass.metrics.errors import strip_tags
from broadclass.tracking.error_browser import (
    ARTIFACT,
    BrowserLimits,
    Vocabulary,
    evaluation_page,
    from_evaluation,
    page_data,
)
from tests.helpers.browser import OpenPage, page_json

FOLDER = "val/step_000010"  # trained_run validates once, at step 10: its best validation
JIWER_KINDS = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}


def logged(trained_run) -> tuple[dict, list[dict], dict]:
    """The run's page data, its predictions.jsonl and report.json of the best validation."""
    client = MlflowClient(trained_run.tracking_uri)

    def read(name: str) -> str:
        return Path(client.download_artifacts(trained_run.run_id, f"{FOLDER}/{name}")).read_text(encoding="utf-8")

    predictions = [json.loads(line) for line in read("predictions.jsonl").splitlines()]
    return page_json(read(ARTIFACT)), predictions, json.loads(read("report.json"))


def jiwer_kinds(reference: list[str], hypothesis: list[str]) -> list[str]:
    """jiwer's alignment of the class tags, one mark per aligned position."""
    ref, hyp = " ".join(strip_tags(reference)), " ".join(strip_tags(hypothesis))
    (chunks,) = jiwer.process_words(ref, hyp).alignments
    kinds = []
    for chunk in chunks:
        size = max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
        kinds += [JIWER_KINDS[chunk.type]] * size
    return kinds


def jiwer_class_cells(reference: list[str], hypothesis: list[str], classes: list[str]) -> set[tuple[int, int]]:
    """The (reference class, hypothesis class) cells jiwer's alignment fills; the gap is len(classes)."""
    ref, hyp = strip_tags(reference), strip_tags(hypothesis)
    (chunks,) = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments
    gap, cells = len(classes), set()
    for c in chunks:
        if c.type == "delete":
            cells |= {(classes.index(r), gap) for r in ref[c.ref_start_idx : c.ref_end_idx]}
        elif c.type == "insert":
            cells |= {(gap, classes.index(h)) for h in hyp[c.hyp_start_idx : c.hyp_end_idx]}
        else:
            pairs = zip(ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx], strict=True)
            cells |= {(classes.index(r), classes.index(h)) for r, h in pairs}
    return cells


def check_against_references(data: dict, predictions: list[dict]) -> None:
    """Every utterance's alignment, S/D/I and TER against jiwer, the category confusion against sklearn."""
    by_id = {p["id"]: p for p in predictions}
    assert [u["id"] for u in data["utterances"]] == [p["id"] for p in predictions]
    for u in data["utterances"]:
        p, view = by_id[u["id"]], u["runs"][0]
        reference, hypothesis = p["reference"].split(), p["hypothesis"].split()
        assert u["reference"] == reference and view["hypothesis"] == hypothesis
        kinds = [kind for *_, kind in view["alignment"]]
        assert kinds == jiwer_kinds(reference, hypothesis), u["id"]
        measures = jiwer.process_words(" ".join(strip_tags(reference)), " ".join(strip_tags(hypothesis)))
        assert view["sdi"] == [measures.substitutions, measures.deletions, measures.insertions]
        assert view["ter"] == pytest.approx(measures.wer)
        # The aligned positions point at the tokens they name (word boundaries skipped).
        for i, j, kind in view["alignment"]:
            assert (i is None) == (kind == "I") and (j is None) == (kind == "D")
            assert i is None or reference[i] != "|"
            assert j is None or hypothesis[j] != "|"
        assert view["decided"] == p["predicted"]
        assert view["posterior"] == {rule: p["posteriors"][k] for rule, k in p["predicted"].items()}
        assert view["segments"] == p["segments"]
    k = len(data["categories"])
    expected = confusion_matrix(
        [p["category"] for p in predictions],
        [p["predicted"][data["primary_rule"]] for p in predictions],
        labels=range(k),
    )
    assert data["category_confusion"][0] == expected.tolist()


def test_the_logged_page_embeds_jiwers_alignment_sklearns_confusion_and_the_reports_class_matrix(trained_run):
    data, predictions, report = logged(trained_run)
    assert data["has_references"] and data["runs"] == [data["title"]]
    assert data["primary_rule"] == report["rule"] and data["categories"] == report["categories"]
    # The run's model decodes tokens: the alignments are not all deletions.
    assert any(p["hypothesis"] for p in predictions)
    check_against_references(data, predictions)
    # The class matrix is the one the validation logged (summed over its per-category matrices).
    assert data["class_confusion"]["matrices"][0] == report["class_confusion"]["total"]["matrix"]
    assert data["class_confusion"]["rows"] == report["class_confusion"]["rows"]
    # Each token's class number, which the page colours and filters by: its class tag's place, -1 for "|".
    tags = data["class_tags"]

    def numbers(tokens: list[str]) -> list[int]:
        return [-1 if token == "|" else tags.index(token.rsplit("_", 1)[0]) for token in tokens]

    for u in data["utterances"]:
        assert u["reference_classes"] == numbers(u["reference"])
        assert u["runs"][0]["hypothesis_classes"] == numbers(u["runs"][0]["hypothesis"])
    # 16 validation utterances, all within the default limits: all embedded, playable Ogg/Opus.
    assert all(u["audio"] for u in data["utterances"])
    assert "Nothing was left out" in data["audio_note"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(data["utterances"][0]["audio"]["src"].split(",", 1)[1])))
    assert rate == 16_000 and len(wave) / rate == pytest.approx(data["utterances"][0]["audio"]["end"], abs=0.03)


def test_other_hypotheses_align_as_jiwer_aligns_them(trained_run, demo_corpus):
    """Each reference against another utterance's (a mix of substitutions, deletions and insertions)."""
    _, predictions, report = logged(trained_run)
    shifted = [
        {**p, "hypothesis": q["reference"], "segments": []}
        for p, q in zip(predictions, predictions[1:] + predictions[:1], strict=True)
    ]
    limits = BrowserLimits.from_config({**vars(BrowserLimits.from_config()), "max_audio_utterances": 0})
    vocabulary = Vocabulary.of_report(report["class_confusion"])
    data = evaluation_page(shifted, lambda _: None, vocabulary, ["vote", "posterior"], "posterior", limits, "t")
    check_against_references(data, shifted)
    kinds = {kind for u in data["utterances"] for *_, kind in u["runs"][0]["alignment"]}
    assert kinds == {"C", "S", "D", "I"}
    classes = report["class_confusion"]["class_tags"]
    for u, p in zip(data["utterances"], shifted, strict=True):
        view = u["runs"][0]
        cells = {
            (
                classes.index(strip_tags([u["reference"][i]])[0]) if i is not None else len(classes),
                classes.index(strip_tags([view["hypothesis"][j]])[0]) if j is not None else len(classes),
            )
            for i, j, _ in view["alignment"]
        }
        assert cells == jiwer_class_cells(p["reference"].split(), p["hypothesis"].split(), classes)


def test_audio_stays_within_the_utterance_and_byte_limits_worst_first_and_says_what_was_left_out(
    trained_run, demo_corpus
):
    _, predictions, report = logged(trained_run)
    paths = {row["id"]: row["audio_filepath"] for row in read_manifest(demo_corpus["validation"])}
    vocabulary = Vocabulary.of_report(report["class_confusion"])
    defaults = vars(BrowserLimits.from_config())

    def page(**limits) -> dict:
        chosen = BrowserLimits.from_config({**defaults, **limits})
        return evaluation_page(predictions, paths.get, vocabulary, ["vote", "posterior"], "posterior", chosen, "t")

    # The utterance limit: 6 embedded, the 3 worst (wrong decision, then TER, then edits) among them.
    data = page(max_audio_utterances=6, worst_share=0.5)
    embedded = [u for u in data["utterances"] if u["audio"]]
    assert len(embedded) == 6
    badness = sorted(
        data["utterances"],
        key=lambda u: (
            u["runs"][0]["decided"]["posterior"] != u["category"],
            u["runs"][0]["ter"],
            sum(u["runs"][0]["sdi"]),
        ),
        reverse=True,
    )
    assert {u["id"] for u in badness[:3]} <= {u["id"] for u in embedded}
    assert "Audio is embedded for 6 of 16 utterances" in data["audio_note"]
    assert "10 beyond the utterance limit" in data["audio_note"]
    # The byte limit: what fits in 3 utterances' worth of bytes, the rest counted as left out for bytes.
    sizes = sorted(len(u["audio"]["src"]) for u in embedded)
    data = page(max_audio_utterances=6, max_audio_bytes=sum(sizes[:3]))
    embedded = [u for u in data["utterances"] if u["audio"]]
    assert sum(len(u["audio"]["src"]) for u in embedded) <= sum(sizes[:3])
    assert 3 <= len(embedded) < 6
    assert f"{6 - len(embedded)} beyond the byte limit" in data["audio_note"]
    # Long recordings as excerpts: 1 s of each longer one, decoded back to 1 s.
    durations = {row["id"]: row["duration"] for row in read_manifest(demo_corpus["validation"])}
    data = page(excerpt_seconds=1.0)
    for u in data["utterances"]:
        audio = u["audio"]
        wave, rate = sf.read(io.BytesIO(base64.b64decode(audio["src"].split(",", 1)[1])))
        length = min(1.0, durations[u["id"]])
        assert audio["end"] - audio["start"] == pytest.approx(length, abs=0.01)
        assert len(wave) / rate == pytest.approx(length, abs=0.03)
    longer = sum(1 for d in durations.values() if d > 1.0)
    assert longer and f"{longer} recording(s) longer than 1 s are excerpts" in data["audio_note"]
    # Two runs must be over the same utterances.
    utterances = [from_evaluation(p, None) for p in predictions]
    with pytest.raises(ValueError, match="has no utterance"):
        page_data(
            [("a", utterances), ("b", utterances[1:])],
            vocabulary,
            ["posterior"],
            "posterior",
            BrowserLimits.from_config(),
            "t",
        )


# ---- in the browser -----------------------------------------------------------------------------------------
def screenshot(page, name: str) -> None:
    folder = os.environ.get("BROADCLASS_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.mark.slow  # a browser: a few seconds
@pytest.mark.timeout(600)
def test_the_page_filters_by_confusion_cells_plays_tokens_and_marks_jiwers_edits_in_chromium(
    trained_run, browser, tmp_path
):
    data, predictions, _ = logged(trained_run)
    client = MlflowClient(trained_run.tracking_uri)
    page_file = Path(client.download_artifacts(trained_run.run_id, f"{FOLDER}/{ARTIFACT}", str(tmp_path)))
    opened = OpenPage(browser, page_file.as_uri())
    page = opened.page
    rule = data["primary_rule"]
    assert sorted(opened.shown_ids()) == sorted(p["id"] for p in predictions)

    # A category cell: exactly its utterances.
    confusion = np.asarray(data["category_confusion"][0])
    row, col = max(np.ndindex(confusion.shape), key=lambda rc: confusion[rc])
    page.click(f'td[data-matrix="category"][data-run="0"][data-row="{row}"][data-col="{col}"]')
    expected = [p["id"] for p in predictions if p["category"] == row and p["predicted"][rule] == col]
    assert sorted(opened.shown_ids()) == sorted(expected) and expected
    page.click("#clear-cell")
    assert len(opened.shown_ids()) == len(predictions)

    # A class cell (the commonest error): the utterances whose jiwer alignment pairs those classes.
    tags = data["class_tags"]
    matrix = np.asarray(data["class_confusion"]["matrices"][0])
    errors = [(r, c) for r, c in np.ndindex(matrix.shape) if r != c and matrix[r, c]]
    cell = max(errors, key=lambda rc: matrix[rc])
    page.click(f'td[data-matrix="class"][data-run="0"][data-row="{cell[0]}"][data-col="{cell[1]}"]')
    expected = [
        p["id"] for p in predictions if cell in jiwer_class_cells(p["reference"].split(), p["hypothesis"].split(), tags)
    ]
    assert sorted(opened.shown_ids()) == sorted(expected) and expected
    page.click("#clear-cell")

    # A class filter: the utterances with an edit (S, D or I) of that class in jiwer's alignment.
    page.select_option("#filter-class", str(cell[0]))
    expected = [
        p["id"]
        for p in predictions
        if any(
            r != c and cell[0] in (r, c)
            for r, c in jiwer_class_cells(p["reference"].split(), p["hypothesis"].split(), tags)
        )
    ]
    assert sorted(opened.shown_ids()) == sorted(expected) and expected
    page.select_option("#filter-class", "")

    # The worst utterance with decoded tokens: its audio plays from a data URI, a token click seeks to its start,
    # and its alignment's marks are jiwer's.
    worst = max(
        (p for p in predictions if p["hypothesis"]),
        key=lambda p: len(jiwer_kinds(p["reference"].split(), p["hypothesis"].split())),
    )
    page.click(f'#utterances tr[data-id="{worst["id"]}"]')
    page.wait_for_function("document.querySelector('#detail audio').readyState >= 1")
    audio = page.eval_on_selector(
        "#detail audio",
        "a => ({src: a.src.slice(0, 30), duration: a.duration, canPlay: a.canPlayType('audio/ogg; codecs=opus')})",
    )
    assert audio["src"].startswith("data:audio/ogg;base64,") and audio["canPlay"] in ("probably", "maybe")
    entry = next(u for u in data["utterances"] if u["id"] == worst["id"])
    assert audio["duration"] == pytest.approx(entry["audio"]["end"] - entry["audio"]["start"], abs=0.05)
    token = page.locator("#detail .token[data-start]").nth(len(worst["segments"]) // 2)
    start = float(token.get_attribute("data-start"))
    token.click()
    current = page.eval_on_selector("#detail audio", "a => a.currentTime")
    assert current == pytest.approx(start - entry["audio"]["start"], abs=0.03)
    marks = page.eval_on_selector_all(
        "#detail table.alignment tr:nth-child(2) td", "cells => cells.map(c => c.dataset.kind)"
    )
    assert marks == jiwer_kinds(worst["reference"].split(), worst["hypothesis"].split())

    # Sorting by TER puts the highest first.
    page.click('th[data-column="TER"]')
    ters = [u["runs"][0]["ter"] for u in data["utterances"]]
    first = opened.shown_ids()[0]
    assert next(u for u in data["utterances"] if u["id"] == first)["runs"][0]["ter"] == max(ters)
    screenshot(page, "error_browser.png")
    assert opened.errors == [] and opened.requests == []
    opened.context.close()


@pytest.mark.slow  # predict, then a browser
@pytest.mark.timeout(600)
def test_predict_writes_a_page_beside_its_output_without_alignment_when_there_are_no_references(
    trained_run, demo_corpus, browser, tmp_path
):
    folder = Path(read_manifest(demo_corpus["validation"])[0]["audio_filepath"]).parent
    out = tmp_path / "plain.jsonl"
    assert predict.main([f"model={trained_run.checkpoint}", f"input={folder}", f"output={out}"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    page_file = out.with_suffix(".error_browser.html")
    data = page_json(page_file.read_text(encoding="utf-8"))
    assert not data["has_references"] and "category_confusion" not in data
    assert all("alignment" not in u["runs"][0] for u in data["utterances"])
    assert [u["runs"][0]["segments"] for u in data["utterances"]] == [
        [[s["start"], s["end"]] for s in r["segments"]] for r in records
    ]
    opened = OpenPage(browser, page_file.as_uri())
    assert sorted(opened.shown_ids()) == sorted(r["id"] for r in records)
    assert opened.page.locator("td[data-matrix]").count() == 0
    opened.page.click(f'#utterances tr[data-id="{records[0]["id"]}"]')
    assert opened.page.locator("#detail table.alignment").count() == 0
    assert opened.page.locator("#detail .token[data-start]").count() == len(
        [t for t in records[0]["tokens"] if t != "|"]
    )
    assert opened.errors == [] and opened.requests == []
    opened.context.close()


@pytest.mark.slow  # an mlflow server and its UI in a browser
@pytest.mark.timeout(900)
def test_the_page_works_inside_the_mlflow_uis_artifact_view(trained_run, browser, tmp_path):
    from tests.helpers.mlflow_server import MlflowServer

    data, predictions, _ = logged(trained_run)
    database = Path(trained_run.tracking_uri.removeprefix("sqlite:///"))
    server = MlflowServer(tmp_path, database)
    server.start()
    try:
        client = MlflowClient(server.uri)
        experiment = client.get_run(trained_run.run_id).info.experiment_id
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        elsewhere: list[str] = []

        def outside(route):
            elsewhere.append(route.request.url)
            route.abort()

        context.route(lambda url: not url.startswith(server.uri) and url.split(":", 1)[0] in ("http", "https"), outside)
        page = context.new_page()
        page.goto(f"{server.uri}/#/experiments/{experiment}/runs/{trained_run.run_id}/artifacts/{FOLDER}/{ARTIFACT}")
        frame = page.frame_locator("iframe.mlflow-html-iframe")
        rows = frame.locator("#utterances tbody tr")
        rows.first.wait_for(timeout=60_000)
        assert rows.count() == len(predictions)
        confusion = np.asarray(data["category_confusion"][0])
        row, col = max(np.ndindex(confusion.shape), key=lambda rc: confusion[rc])
        frame.locator(f'td[data-matrix="category"][data-row="{row}"][data-col="{col}"]').click()
        rule = data["primary_rule"]
        assert rows.count() == sum(1 for p in predictions if p["category"] == row and p["predicted"][rule] == col)
        rows.first.click()
        frame.locator("#detail audio").wait_for()
        screenshot(page, "error_browser_in_mlflow.png")
        assert elsewhere == []
        context.close()
    finally:
        server.stop()


def test_limits_out_of_range_are_one_error_naming_each_key():
    defaults = vars(BrowserLimits.from_config())
    with pytest.raises(ValueError) as error:
        BrowserLimits.from_config({**defaults, "worst_share": 1.5, "max_audio_bytes": -1})
    assert str(error.value) == (
        "error_browser.max_audio_bytes=-1 must be >= 0; error_browser.worst_share=1.5 must be between 0 and 1"
    )
