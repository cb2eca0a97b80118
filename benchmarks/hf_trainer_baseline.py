"""The reference recipe: HuggingFace ``Trainer`` + our CTC network (``Wav2Vec2ForCTC`` or kin), on our config.

``python -m benchmarks.hf_trainer_baseline --out rec.json --work DIR --warmup 10 -- <Hydra overrides>``

The Hydra overrides are the ones our run gets, composed with our config tree, so both systems see the
same manifests, the same 16 kHz audio (our audio cache), the same token ids, the same network config
and initial weights (same seed), batch size, optimizer (AdamW with our betas, eps and weight decay),
learning-rate schedule (linear warm-up and decay), gradient clipping, gradient checkpointing, precision
(``16-mixed`` → ``fp16``, ``bf16-mixed`` → ``bf16``), dataloader workers, number of optimizer steps and
validation interval.

The recipe's own parts are kept: a ``Wav2Vec2Processor`` (feature extractor normalising each utterance,
CTC tokenizer), a padding collator, ``train_sampling_strategy="group_by_length"`` (transformers 5.x's
name for ``group_by_length=True``), evaluation through ``Trainer.evaluate`` with ``compute_metrics``
(greedy decode, WER with jiwer, category vote and scikit-learn's classification report), MLflow
logging (``report_to="mlflow"``, or none where ours logs to CSV) and a checkpoint at the evaluation step.
One help it gets: utterance lengths for the length-grouped samplers come from the manifest, as a
``datasets`` length column would give them, instead of the Trainer reading every utterance's audio to measure it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import classification_report
from torch.utils.data import Dataset
from transformers import (
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from benchmarks.config import compose_config
from benchmarks.probe import Record
from broadclass.data.audio import AudioCache
from broadclass.data.labels import LabelMap
from broadclass.data.manifest import read_manifest
from broadclass.model.decoding import vote
from broadclass.model.encoder import build_network

PRECISION_FLAGS = {"16-mixed": {"fp16": True}, "bf16-mixed": {"bf16": True}, "32-true": {}, "32": {}}


class RecipeDataset(Dataset):
    """The recipe's prepared split: normalised input values and token ids per utterance."""

    def __init__(self, manifest: str, labels: LabelMap, audio: AudioCache, extractor: Wav2Vec2FeatureExtractor):
        self.rows = read_manifest(manifest)
        self.audio = audio
        self.extractor = extractor
        self.targets = [labels.encode(row["phones"], row["category"]) for row in self.rows]
        self.lengths = [round(row["duration"] * audio.sample_rate) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        wave = self.audio.load(self.rows[index]["audio_filepath"])
        values = self.extractor(wave, sampling_rate=self.audio.sample_rate).input_values[0]
        return {"input_values": values, "labels": self.targets[index]}


@dataclass
class CTCPaddingCollator:
    """The recipe's ``DataCollatorCTCWithPadding``, plus each utterance's length for the probe."""

    extractor: Wav2Vec2FeatureExtractor

    def __call__(self, features: list[dict]) -> dict:
        batch = self.extractor.pad(
            [{"input_values": f["input_values"]} for f in features], padding=True, return_tensors="pt"
        )
        width = max(len(f["labels"]) for f in features)
        batch["labels"] = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features])
        batch["input_lengths"] = [len(f["input_values"]) for f in features]
        return batch


class MeasuredTrainer(Trainer):
    """The stock Trainer; the overrides only record what the probe needs (and pass manifest lengths)."""

    def __init__(self, *args, record: Record, record_path: str, sample_rate: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.record, self.record_path, self.sample_rate = record, record_path, sample_rate

    def train(self, *args, **kwargs):
        self.record.start_fit(self.accelerator.scaler)
        result = super().train(*args, **kwargs)
        self.record.end_fit(self.record_path, self.accelerator.scaler)
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.record.add_audio(sum(inputs.pop("input_lengths")) / self.sample_rate)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.record.add_validation_utterances(len(inputs.pop("input_lengths")))
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluate(self, *args, **kwargs):
        self.record.start_validation()
        metrics = super().evaluate(*args, **kwargs)
        self.record.end_validation()
        return metrics

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=dataset.lengths)

    def _get_eval_sampler(self, eval_dataset):
        generator = torch.Generator().manual_seed(self.args.seed)
        return LengthGroupedSampler(self.args.eval_batch_size, lengths=eval_dataset.lengths, generator=generator)


class StepEnd(TrainerCallback):
    def __init__(self, record: Record):
        self.record = record

    def on_step_end(self, args, state, control, **kwargs):
        self.record.end_step()


def metrics_fn(tokenizer: Wav2Vec2CTCTokenizer, labels: LabelMap):
    """The recipe's ``compute_metrics``: greedy decode, WER, category vote and its classification report."""
    token_category = labels.token_category()
    num_categories = len(labels.categories)
    pad = tokenizer.pad_token_id

    def compute(pred: EvalPrediction) -> dict[str, float]:
        pred_ids = np.argmax(pred.predictions, axis=-1)
        label_ids = np.where(pred.label_ids == -100, pad, pred.label_ids)
        hyps = tokenizer.batch_decode(pred_ids)
        refs = tokenizer.batch_decode(label_ids, group_tokens=False)
        collapsed = [[k for k, _ in itertools.groupby(row) if k != pad] for row in pred_ids.tolist()]
        truth = vote([[t for t in row if t != pad] for row in label_ids.tolist()], token_category, num_categories)
        guess = vote(collapsed, token_category, num_categories)
        report = classification_report(truth.numpy(), guess.numpy(), output_dict=True, zero_division=0)
        return {
            "wer": jiwer.wer(refs, hyps),
            "accuracy": report["accuracy"],
            "macro_f1": report["macro avg"]["f1-score"],
        }

    return compute


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the probe's record (JSON) goes")
    parser.add_argument("--work", required=True, help="folder for the Trainer's output (checkpoints)")
    parser.add_argument("--warmup", type=int, required=True, help="optimizer steps before the measured window")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as given to our run")
    args = parser.parse_args(argv)

    cfg = compose_config(args.overrides)
    data, model_cfg, trainer_cfg = cfg.data, cfg.model, cfg.trainer
    if not data.train_manifest or not data.val_manifest:
        raise SystemExit("hf_trainer_baseline: give data.train_manifest and data.val_manifest (the orchestrator does)")
    precision = str(trainer_cfg.precision)
    if precision not in PRECISION_FLAGS:
        raise SystemExit(f"hf_trainer_baseline: precision {precision!r} has no HF Trainer equivalent")
    steps = int(trainer_cfg.max_steps)
    eval_every = int(cfg.val_every_n_optimizer_steps)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    labels = LabelMap.from_config(data.labels, data.categories)
    (work / "vocab.json").write_text(json.dumps(labels.vocab, ensure_ascii=False))
    tokenizer = Wav2Vec2CTCTokenizer(str(work / "vocab.json"), pad_token="<pad>", word_delimiter_token="|")
    set_seed(int(cfg.seed))
    network_config = {
        **OmegaConf.to_container(model_cfg.config),
        "ctc_loss_reduction": model_cfg.ctc_loss_reduction,
        "ctc_zero_infinity": model_cfg.ctc_zero_infinity,
    }
    model = build_network(len(labels.tokens), model_cfg.pretrained, network_config)
    if model_cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=data.sample_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=model.config.feat_extract_norm == "layer",
    )
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
    audio = AudioCache(data.cache_dir, data.sample_rate)
    train_set = RecipeDataset(data.train_manifest, labels, audio, extractor)
    val_set = RecipeDataset(data.val_manifest, labels, audio, extractor)

    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=int(data.batch_size),
        per_device_eval_batch_size=int(data.eval_batch_size),
        gradient_accumulation_steps=int(trainer_cfg.accumulate_grad_batches),
        max_steps=steps,
        learning_rate=float(model_cfg.lr),
        adam_beta1=float(model_cfg.betas[0]),
        adam_beta2=float(model_cfg.betas[1]),
        adam_epsilon=float(model_cfg.eps),
        weight_decay=float(model_cfg.weight_decay),
        warmup_steps=int(model_cfg.warmup_steps),
        lr_scheduler_type="linear",
        max_grad_norm=float(trainer_cfg.gradient_clip_val or 0.0),
        gradient_checkpointing=bool(model_cfg.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as ours (broadclass.model.module)
        train_sampling_strategy="group_by_length",
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        logging_steps=int(trainer_cfg.log_every_n_steps),
        # Logged where ours logs: MLflow, or nowhere when ours runs with logger=csv (no MLflow installed).
        report_to=["mlflow"] if "mlflow" in cfg.logger else "none",
        dataloader_num_workers=int(data.num_workers),
        seed=int(cfg.seed),
        use_cpu=not torch.cuda.is_available(),
        **PRECISION_FLAGS[precision],
    )
    record = Record("theirs", args.warmup, steps)
    trainer = MeasuredTrainer(
        model=model,
        args=training_args,
        data_collator=CTCPaddingCollator(extractor),
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=processor,
        compute_metrics=metrics_fn(tokenizer, labels),
        callbacks=[StepEnd(record)],
        record=record,
        record_path=args.out,
        sample_rate=int(data.sample_rate),
    )
    trainer.train()


if __name__ == "__main__":
    main()
