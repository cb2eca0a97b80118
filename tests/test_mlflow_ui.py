"""What a researcher sees in the MLflow UI: a 2-job sweep on a real `mlflow server`, rendered in headless Chromium.

The pages are read from the DOM that Chromium dumps after the app has rendered (``--dump-dom`` with a
virtual-time budget); the screenshots are written to ``BROADCLASS_UI_SCREENSHOTS`` when it is set
(``experiments/ui/`` keeps the last ones).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import mlflow
import numpy as np
import pytest
from PIL import Image

from broadclass.tracking.datasets import file_digest
from broadclass.tracking.ui import runs_page as printed_runs_page
from tests.helpers.browser import CHROMIUM, REQUIRE_BROWSER
from tests.helpers.config import TEST_MODEL
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.sweeps import demo_multirun

SWEPT = "model.lr=1e-3,3e-3"
RUN_NAMES = {"lr=0.001", "lr=0.003"}
CATEGORIES = ("male", "female", "whisper", "creaky")  # the demo's, in the test corpus


def chromium(url: str, *, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """The page's rendered text (scripts and styles dropped, tags removed), or a screenshot of it."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1900,1150",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={screenshot}" if screenshot else "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    if screenshot:
        assert_rendered(screenshot)
        return ""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def assert_rendered(png: Path) -> None:
    """A screenshot of a rendered page at the window's size: not blank, not one colour, not a bare spinner."""
    with Image.open(png) as image:
        assert image.size == (1900, 1150), image.size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    # A blank or loading page is one background colour with a few pixels of something else; a page of tables,
    # charts and text has hundreds of colours (anti-aliased text) and no colour covering nearly all of it.
    assert len(colours) > 100, f"{png.name}: {len(colours)} colours"
    assert counts.max() / len(pixels) < 0.95, f"{png.name}: one colour covers {counts.max() / len(pixels):.0%}"
    # Text and lines in more than one part of the page (a centred spinner or error box leaves the rest empty).
    rows = np.asarray(Image.open(png).convert("L"), dtype=np.int16)
    busy_bands = [band for band in np.array_split(rows, 5) if np.abs(np.diff(band, axis=1)).mean() > 1.0]
    assert len(busy_bands) >= 3, f"{png.name}: content in {len(busy_bands)} of 5 bands"


@pytest.fixture(scope="module")
def sweep_on_server(tmp_path_factory, demo_corpus, empty_mlflow_db):
    """A 2-job sweep (4 optimizer steps, validated at 2 and 4, tested, exported) served by `mlflow server`."""
    if CHROMIUM is None:
        if REQUIRE_BROWSER:
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    root = tmp_path_factory.mktemp("ui")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    demo_multirun(
        root,
        demo_corpus,
        *TEST_MODEL,
        "trainer.max_steps=4",
        "val_every_n_optimizer_steps=2",
        "model.warmup_steps=1",
        "trainer.enable_progress_bar=false",
        "+callbacks.report.console=false",
        SWEPT,
    )
    server = MlflowServer(root, root / "mlflow.db")
    server.start()
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    yield server, client, experiment, runs
    server.stop()


def save(name: str) -> Path | None:
    folder = os.environ.get("BROADCLASS_UI_SCREENSHOTS")
    return Path(folder) / name if folder else None


@pytest.mark.slow  # a sweep, a server and four page renders: ~2-4 min on 2 CPU cores
@pytest.mark.timeout(1800)  # a limit for hangs, several times its duration on a loaded 2-core machine
def test_the_ui_shows_readable_runs_swept_params_categories_images_datasets_and_models(sweep_on_server, tmp_path):
    server, client, experiment, runs = sweep_on_server
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens in "Model training"
    assert {run.info.run_name for run in runs} == RUN_NAMES
    first, second = (run.data.params for run in runs)
    differing = {key for key in {*first, *second} if first.get(key) != second.get(key)}
    assert differing == {"model/lr"}

    # The runs table: names from the swept value, each run's datasets with their digests, its logged model.
    # The link `make ui` prints (python -m broadclass.ui), rendered: it is the experiment's runs table.
    runs_page = printed_runs_page(server.uri, experiment.experiment_id)
    text = chromium(runs_page)
    assert "Training runs" in text
    for name in RUN_NAMES:
        assert name in text
    digest = file_digest(first["data/train_manifest"])
    assert f"voice/train ({digest})" in text
    assert "training" in text and "validation" in text

    # The compare view: the parallel-coordinates plot preselects the params that differ, here only the swept one.
    ids = quote(json.dumps([run.info.run_id for run in runs], separators=(",", ":")))
    compare_page = f"{server.uri}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([experiment.experiment_id]))}"
    text = chromium(compare_page)
    (selected,) = re.findall(r"Parameters: (.*?) Metrics:", text)
    assert selected.strip() == "model/lr"
    (metric,) = re.findall(r"Metrics: (\S+)", text)
    assert metric.split("/")[1] in CATEGORIES  # the plot's metric is a category's, by name
    # (Its metrics table renders only its first rows, alphabetically: the category-named metrics are checked on
    # the run's page below.)

    # The chart view: sections named by category (val/male …), not by id.
    chart_page = f"{runs_page}?compareRunsMode=CHART"
    text = chromium(chart_page)
    for section in (*(f"val/{category}" for category in CATEGORIES), "val/macro_avg"):
        assert re.search(rf"{section} \(\d+\)", text), section

    # A run's page: its category-named metrics and its logged model.
    run = runs[0]
    text = chromium(f"{runs_page}/{run.info.run_id}")
    assert all(f"val/{category}/f1" in text for category in CATEGORIES)
    assert "Logged models (1)" in text
    # The confusion matrix as an image per validation step (the chart view's step slider).
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for step in (2, 4):
        assert any(path.startswith(f"images/val~confusion+step+{step}+") and path.endswith(".png") for path in images)
    inputs = {(d.dataset.name, t.value) for d in run.inputs.dataset_inputs for t in d.tags}
    assert {("voice/train", "training"), ("voice/validation", "validation")} <= inputs

    for name, url in (("runs.png", runs_page), ("charts.png", chart_page), ("compare.png", compare_page)):
        target = save(name) or tmp_path / name
        chromium(url, screenshot=target, budget_ms=40000)
