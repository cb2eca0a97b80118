"""Shared fixtures: the real Hydra config, shrunk; a small synthesized corpus; a tiny saved model."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

# Set before transformers/huggingface_hub are imported anywhere: a hub lookup would stall ~25 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import broadclass.config  # noqa: E402,F401  (registers the resolvers)

CONF_DIR = Path(__file__).resolve().parents[1] / "broadclass" / "conf"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run installs Chromium and sets this: there, a missing browser fails instead of skipping.
REQUIRE_BROWSER = os.environ.get("BROADCLASS_REQUIRE_BROWSER") == "1"

# A smaller network than model=tiny: the tests check behaviour, not accuracy.
TEST_MODEL = [
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=2",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "model.config.conv_dim=[32,32,32,32,32,32,32]",
    "model.config.num_conv_pos_embeddings=16",
    "model.config.num_conv_pos_embedding_groups=4",
]


# Two optimizer steps of the test model, each validated; no figures, no export, no test pass (the tests read
# metrics).
SHORT_RUN = [
    *TEST_MODEL,
    "trainer.max_steps=2",
    "val_every_n_optimizer_steps=1",
    "model.warmup_steps=1",
    "test_after_fit=false",
    "callbacks.export_model.enabled=false",
    "trainer.enable_progress_bar=false",
    "+callbacks.report.figures=false",
    "+callbacks.report.console=false",
]


def compose_config(root: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """The real composed config (``train``, or ``pretrain``), with every path under ``root`` and Hydra's
    runtime set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"paths.root_dir={root}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "out")
        cfg.hydra.runtime.output_dir = str(root / "out")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict[str, Path]:
    """A small voice-type corpus shared by the tests that train (24 + 8 utterances per category set)."""
    from broadclass.data.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    return build_demo_corpus(root, categories="voice", n_train=48, n_val=16, seed=0)


def demo_overrides(corpus: dict[str, Path]) -> list[str]:
    """The demo experiment on the small corpus with the test model."""
    return [
        "+experiment=demo",
        f"data.train_manifest={corpus['train']}",
        f"data.val_manifest={corpus['validation']}",
        "data.manifests_from=null",
        "trainer.enable_progress_bar=false",
        *TEST_MODEL,
    ]


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


@dataclass
class TrainedRun:
    config: DictConfig
    checkpoint: Path  # the best (and only validated) checkpoint
    run_id: str
    tracking_uri: str


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


class FitRecorder(pl.Callback):
    """A Lightning callback (``+callbacks.recorder._target_=tests.conftest.FitRecorder``) that keeps what a
    run did, for tests of runs that log nothing (``fast_dev_run``): the network's weights when training
    started and ended, each training batch's loss, the optimizer steps taken and the last evaluation."""

    last: ClassVar[FitRecorder | None] = None

    def __init__(self) -> None:
        self.before: dict | None = None
        self.after: dict | None = None
        self.losses: list[float] = []
        self.steps = 0
        self.evaluations: list = []
        FitRecorder.last = self

    @staticmethod
    def _weights(module) -> dict:
        return {key: value.detach().clone() for key, value in module.net.state_dict().items()}

    def on_train_start(self, trainer, module) -> None:
        self.before = self._weights(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_end(self, trainer, module) -> None:
        self.evaluations.append(module.last_evaluation)

    def on_train_end(self, trainer, module) -> None:
        self.after = self._weights(module)
        self.steps = trainer.global_step


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


class OpenPage:
    """A page opened offline; every request that is not the file itself or a data URI is recorded and refused,
    every console error and page error kept."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(offline=True, viewport={"width": 1600, "height": 1100})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def refuse(route):
            self.requests.append(route.request.url)
            route.abort()

        self.page.route(re.compile(r"^(https?|wss?|ftp)://"), refuse)
        self.page.goto(url)

    def shown_ids(self) -> list[str]:
        return self.page.eval_on_selector_all("#utterances tbody tr", "rows => rows.map(r => r.dataset.id)")
