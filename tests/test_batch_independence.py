"""One utterance, one answer: the tokens of an utterance do not depend on what else is in its batch.

For every network layout we build or load: the demo's tiny wav2vec2-conformer (conf/model/tiny.yaml at the
tests' width), XLSR-53's layout (wav2vec2, layer-norm feature encoder, pre-LN layers) and wav2vec2-base's
(group-norm feature encoder, post-LN layers), small and randomly initialised (seeded), in eval mode.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn

from broadclass import predict
from broadclass.data.manifest import read_manifest, write_manifest
from broadclass.model.module import BroadClassModule, TrainedModel
from broadclass.model.padding import masked_group_norm
from tests.helpers.config import compose_config, demo_overrides

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
LAYOUTS = {
    "tiny": None,  # conf/model/tiny.yaml (conformer layers, group-norm feature encoder)
    "xlsr53": {**SMALL, "model_type": "wav2vec2", "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    "wav2vec2-base": {**SMALL, "model_type": "wav2vec2", "feat_extract_norm": "group", "do_stable_layer_norm": False},
}
# Seconds: a batch of 8 whose longest utterance is 7 times its shortest.
MIXED_SECONDS = [0.6, 0.25, 1.4, 1.0, 0.3, 1.75, 0.8, 1.2]


@pytest.fixture(scope="module")
def corpus_config(demo_corpus, tmp_path_factory):
    """The demo experiment (the real data pipeline, model=tiny at the tests' width) on 8 validation
    utterances of the small corpus: batch 8 is one batch, each utterance padded to the longest."""
    root = tmp_path_factory.mktemp("batch-independence")
    rows = read_manifest(demo_corpus["validation"])[:8]
    assert len({round(sf.info(row["audio_filepath"]).duration, 1) for row in rows}) > 4, "lengths should vary"
    write_manifest(root / "validation.jsonl", rows)
    return compose_config(root, [*demo_overrides(demo_corpus), f"data.val_manifest={root / 'validation.jsonl'}"])


@pytest.fixture(scope="module", params=list(LAYOUTS))
def module(request, corpus_config) -> BroadClassModule:
    datamodule = instantiate(corpus_config.data)
    config = OmegaConf.to_container(corpus_config.model.config, resolve=True)
    if LAYOUTS[request.param] is not None:
        config = LAYOUTS[request.param]
    torch.manual_seed(0)
    built = instantiate(corpus_config.model, _partial_=True)(
        labels=datamodule.label_map, pretrained=None, config=config, freeze_feature_encoder=False
    )
    assert built.net.config.feat_extract_norm == ("layer" if request.param == "xlsr53" else "group")
    return built.eval()


def mixed_batch(seconds=MIXED_SECONDS, seed=0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waves = [torch.randn(int(s * 16_000), generator=generator) for s in seconds]
    width = max(len(w) for w in waves)
    audio, mask = torch.zeros(len(waves), width), torch.zeros(len(waves), width, dtype=torch.long)
    for row, wave in enumerate(waves):
        audio[row, : len(wave)], mask[row, : len(wave)] = wave, 1
    return waves, audio, mask


def frame_tokens(module: BroadClassModule, audio: torch.Tensor, mask: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    """Each utterance's frame tokens from the evaluation forward, run as Lightning runs it: inside the training
    precision's autocast (bf16-mixed) or without one."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module.infer(audio, mask)
    return [row[:length].argmax(-1) for row, length in zip(out["logits"], out["output_lengths"], strict=True)]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-mixed"])
def test_every_frame_gets_the_same_token_alone_and_in_a_batch_of_mixed_lengths(module, bf16):
    waves, audio, mask = mixed_batch()
    batched = frame_tokens(module, audio, mask, bf16)
    alone = [frame_tokens(module, wave[None], torch.ones(1, len(wave), dtype=torch.long), bf16)[0] for wave in waves]
    assert [len(a) for a in alone] == [len(b) for b in batched]
    assert len({int(t) for a in alone for t in a}) > 3, "a model that outputs one token would pass trivially"
    differ = sum(int((a != b).sum()) for a, b in zip(alone, batched, strict=True))
    assert differ == 0, f"{differ} of {sum(len(a) for a in alone)} frames differ"


def test_the_evaluation_forward_is_fp32_under_a_mixed_precision_autocast(module):
    """The guarantee by construction, on any CPU: inside bf16 autocast (where training's forward runs its
    matmuls in bf16), evaluation computes exactly what it computes without autocast."""
    _, audio, mask = mixed_batch()
    with torch.inference_mode():
        plain = module.infer(audio, mask)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = module.infer(audio, mask)["logits"]
            training_forward = module(audio, mask)["logits"]
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, plain)
    # The autocast is real: the training forward under it differs (so the equality above is not vacuous).
    assert not torch.equal(training_forward.float(), plain)


@pytest.fixture(scope="module")
def validation_files(corpus_config):
    return [
        predict.Utterance(row["id"], row["audio_filepath"], row["audio_filepath"])
        for row in read_manifest(corpus_config.data.val_manifest)
    ]


def test_predict_gives_the_same_tokens_at_batch_size_1_and_8_and_by_seconds(module, validation_files):
    trained = TrainedModel(module, metadata={}, source="random init")
    one = predict.predict(trained, validation_files, batch_size=1).records
    eight = predict.predict(trained, validation_files, batch_size=8).records
    by_seconds = predict.predict(trained, validation_files, batch_seconds=4.0).records
    sizes = [
        len(b)
        for b in predict.length_sorted_batches(
            [predict.Utterance(r["id"], "", "", duration=r["duration"]) for r in one], 1, 4.0
        )
    ]
    assert max(sizes) > 1 and len(set(sizes)) > 1, f"batches of {sizes}"
    assert any(r["tokens"] for r in one)
    assert [r["tokens"] for r in eight] == [r["tokens"] for r in by_seconds] == [r["tokens"] for r in one]


def validation_hypotheses(
    module: BroadClassModule, corpus_config, batch_size: int, precision: str, batch_seconds: float | None = None
) -> dict[str, list]:
    pl.seed_everything(0)
    datamodule = instantiate(corpus_config.data, eval_batch_size=batch_size, eval_batch_seconds=batch_seconds)
    # 16-mixed: the CUDA recipe's fp16 autocast, run on the CPU through the plugin (trainer=cpu_fp16).
    amp = {"plugins": [MixedPrecision("16-mixed", "cpu")]} if precision == "16-mixed" else {"precision": precision}
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, **amp)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {p["id"]: p["hypothesis"].split() for p in module.last_evaluation.predictions}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_validation_gives_the_same_tokens_at_batch_size_1_and_8(module, corpus_config, precision):
    one = validation_hypotheses(module, corpus_config, 1, precision)
    eight = validation_hypotheses(module, corpus_config, 8, precision)
    assert sorted(one) == sorted(eight) and any(one.values())
    ids = sorted(one)
    # Exactly, under bf16-mixed too: validation runs the network in fp32 (BroadClassModule.infer).
    assert [eight[i] for i in ids] == [one[i] for i in ids]


def test_validation_gives_the_same_tokens_at_batch_size_1_and_in_batches_by_seconds(module, corpus_config):
    datamodule = instantiate(corpus_config.data, eval_batch_seconds=4.0)
    datamodule.setup("validate")
    sizes = [len(batch) for batch in datamodule.val_dataloader().batch_sampler]
    assert max(sizes) > 1 and len(set(sizes)) > 1, f"batches of {sizes}: nothing is batched differently"
    one = validation_hypotheses(module, corpus_config, 1, "32-true")
    by_seconds = validation_hypotheses(module, corpus_config, 1, "32-true", batch_seconds=4.0)
    assert sorted(one) == sorted(by_seconds) and any(one.values())
    assert [by_seconds[i] for i in sorted(one)] == [one[i] for i in sorted(one)]


def test_without_the_padding_hooks_only_the_xlsr_layout_is_independent_of_padding(module):
    """transformers alone, mask passed: the group norm and the conformer's depthwise convolution read the
    padding (so the tests above can fail), the XLSR layout does not."""
    waves, audio, mask = mixed_batch()
    with torch.inference_mode():
        batched = module.net(audio, attention_mask=mask).logits
        alone = [module.net(wave[None]).logits[0] for wave in waves]
    lengths = module.net._get_feat_extract_output_lengths(mask.sum(-1))
    gap = max(float((a - b[:n]).abs().max()) for a, b, n in zip(alone, batched, lengths, strict=True))
    if module.net.config.model_type == "wav2vec2" and module.net.config.feat_extract_norm == "layer":
        assert gap < 1e-4
    else:
        assert gap > 1e-2


@pytest.mark.parametrize("groups", [6, 2])
def test_the_masked_group_norm_of_a_padded_row_is_torchs_group_norm_of_the_row_alone(groups):
    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, 6)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    lengths = torch.tensor([50, 17, 33])
    frames = torch.randn(3, 6, 50) * 3 + 1
    frames.requires_grad_(True)
    masked = masked_group_norm(norm, frames, lengths)
    weights = torch.randn_like(masked)  # a loss that weighs every output differently
    (masked * weights).sum().backward()
    batched_grads = frames.grad.clone(), norm.weight.grad.clone()
    norm.zero_grad()
    alone_weight_grad = torch.zeros_like(norm.weight)
    for row, length in enumerate(lengths):
        piece = frames.detach()[row : row + 1, :, :length].clone().requires_grad_(True)
        alone = norm(piece)
        assert torch.equal(masked[row, :, :length], alone[0])  # the same kernel on the same frames: bit for bit
        assert not masked[row, :, length:].any()
        (alone * weights[row : row + 1, :, :length]).sum().backward()
        torch.testing.assert_close(batched_grads[0][row, :, :length], piece.grad[0])
        assert not batched_grads[0][row, :, length:].any()  # padding gets no gradient
        alone_weight_grad += norm.weight.grad
        norm.zero_grad()
    torch.testing.assert_close(batched_grads[1], alone_weight_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # statistics still in fp32, output in fp32 like group_norm
        under_autocast = masked_group_norm(norm, frames, lengths)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, masked)
