"""``python -m broadclass.check [MANIFEST ...] [OVERRIDE ...]``: check manifests as training would, and report
every problem row by kind, with its file and line (exit status 1 when any row has one).

Without manifests, the training config's own are checked (made by ``data.manifests_from`` where they are unset);
Hydra overrides of the training config (``+experiment=onSet1``, ``data.max_duration=null``) choose them and the
limits. The checks themselves: :mod:`broadclass.data.check`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from broadclass.arguments import argument, extra_overrides, parse_arguments
from broadclass.data.audio import AudioCache
from broadclass.data.check import EncoderGeometry, check_manifests
from broadclass.data.labels import LabelMap

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class CheckArguments:
    manifests: list[str] = argument([], "manifest paths; a manifest's split is its file stem", positional=True)
    overrides: list[str] = extra_overrides("Hydra overrides of the training config (data.max_duration=null …)")
    json: Path | None = argument(None, "also write the report as JSON")
    labels: str | None = argument(None, "label config: a name in conf/labels/ or a YAML file (default: the config's)")
    unlabeled: bool = argument(
        False,
        "check as unlabeled audio (self-supervised pretraining): rows need only audio_filepath (duration from the "
        "header when missing); the audio checks run, the label checks (phones, category) do not",
    )


def compose_training_config(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def config_manifests(cfg: DictConfig) -> dict[str, str]:
    """The config's manifests by split, made by ``data.manifests_from`` where the config names none."""
    from hydra.utils import instantiate

    manifests = {"train": cfg.data.train_manifest, "validation": cfg.data.val_manifest}
    manifests["test"] = cfg.data.get("test_manifest")
    if not manifests["train"] and cfg.data.manifests_from is not None:
        built = instantiate(cfg.data.manifests_from)()
        manifests = {split: manifests.get(split) or str(path) for split, path in built.items()}
    return {split: str(path) for split, path in manifests.items() if path}


def main(argv: Sequence[str] | None = None, print_fn: Callable[[str], None] = print) -> int:
    args = parse_arguments(CheckArguments, argv, "python -m broadclass.check", __doc__)
    overrides = list(args.overrides)
    manifests = {Path(item).stem: item for item in args.manifests}
    from_file = args.labels is not None and args.labels.endswith((".yaml", ".yml"))
    if args.labels is not None and not from_file:
        overrides.append(f"labels={args.labels}")
    cfg = compose_training_config(overrides)
    labels = None
    if not args.unlabeled:
        label_config = OmegaConf.load(args.labels) if from_file else cfg.data.labels
        labels = LabelMap.from_config(label_config, cfg.data.categories)
    conv = cfg.model.get("config") or {}
    encoder = (
        EncoderGeometry(tuple(conv.conv_kernel), tuple(conv.conv_stride))
        if "conv_kernel" in conv and "conv_stride" in conv
        else EncoderGeometry()
    )
    _, report = check_manifests(
        manifests or config_manifests(cfg),
        labels,
        AudioCache(cfg.data.get("cache_dir"), cfg.data.sample_rate),
        encoder,
        allow_speaker_overlap=bool(cfg.data.get("allow_speaker_overlap", False)),
        max_duration=cfg.data.get("max_duration"),
    )
    print_fn(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
