"""The real Hydra config, shrunk: the test model, a short run, the demo experiment on the tests' corpus."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "broadclass" / "conf"


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


# The recipe's layout (XLSR: layer-norm feature encoder, stable layer norm) at the test model's size.
SMALL_XLSR = [
    "model=xlsr53_random",
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=2",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "model.config.conv_dim=[16,16,16,16,16,16,16]",
    "model.config.num_conv_pos_embeddings=16",
    "model.config.num_conv_pos_embedding_groups=4",
    "model.config.layerdrop=0.5",
]
