"""Fixtures several test modules use: a small synthesized corpus, an empty MLflow store, the real Hydra config
shrunk, a run trained once per session, a sweep, a tracking server, a browser. Their helpers are in
tests/helpers/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# Set before transformers/huggingface_hub are imported anywhere: a hub lookup would stall ~25 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import broadclass.config  # noqa: E402,F401  (registers the resolvers)
from tests.helpers.browser import CHROMIUM, REQUIRE_BROWSER  # noqa: E402
from tests.helpers.config import SHORT_RUN, compose_config, demo_overrides  # noqa: E402
from tests.helpers.mlflow_server import MlflowServer  # noqa: E402
from tests.helpers.runs import TrainedRun  # noqa: E402
from tests.helpers.sweeps import DEMO_CATEGORIES, multirun, prepare_demo_sets  # noqa: E402


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict[str, Path]:
    """A small voice-type corpus shared by the tests that train (24 + 8 utterances per category set)."""
    from broadclass.data.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    return build_demo_corpus(root, categories="voice", n_train=48, n_val=16, seed=0)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made: making them takes 5-20 s, copying the file milliseconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def train_config(tmp_path, demo_corpus, empty_mlflow_db):
    """Factory: the demo experiment on the small corpus with the test model, a few steps, into tmp."""

    def make(*overrides: str) -> DictConfig:
        if not (tmp_path / "mlflow.db").exists():  # the default store is <paths.root_dir>/mlflow.db
            shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
        return compose_config(tmp_path, [*demo_overrides(demo_corpus), *overrides])

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_corpus, empty_mlflow_db) -> TrainedRun:
    """The demo trained once per session for 10 optimizer steps, validated at step 10, into its own MLflow
    store (shared by the prediction and export tests: training is the slow part)."""
    from mlflow import MlflowClient

    from broadclass.train import train

    root = tmp_path_factory.mktemp("trained")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    steps = ["trainer.max_steps=10", "val_every_n_optimizer_steps=10", "test_after_fit=false", "data.batch_size=4"]
    cfg = compose_config(root, [*demo_overrides(demo_corpus), *steps])
    train(cfg)
    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    (checkpoint,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("step*.ckpt")
    return TrainedRun(cfg, checkpoint, run.info.run_id, client.tracking_uri)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright through the DevTools protocol (nothing downloads a browser)."""
    if CHROMIUM is None:
        if REQUIRE_BROWSER:
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, empty_mlflow_db) -> Iterator[MlflowServer]:
    """A real `mlflow server` on a copy of the empty store, one per test module that asks for it."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    server = MlflowServer(folder, folder / "mlflow.db")
    server.start()
    yield server
    if server.process.poll() is None:  # a test may have stopped it
        server.stop()


@pytest.fixture(scope="session")
def set_sweep(tmp_path_factory, demo_corpus) -> tuple[Path, Path]:
    """The reference recipe on 2 sets of 32 demo utterances, with the test model, as 2 parallel jobs.

    Returns the project root and the sweep folder Hydra printed; the sweep tests and the notebook test read the
    same store (the costly part: ~45 s of CPU).
    """
    root = tmp_path_factory.mktemp("set-sweep")
    prepare_demo_sets(root, demo_corpus, n_sets=2)
    sweep = multirun(
        root,
        "+experiment=onSet1,onSet2",
        "model=tiny",
        "model.pretrained=null",
        "trainer=cpu",
        f"paths.sets_dir={root / 'sets'}",
        DEMO_CATEGORIES,
        "data.num_workers=0",
        *SHORT_RUN,
        "hydra/launcher=local",  # joblib, 2 processes
    )
    return root, sweep
