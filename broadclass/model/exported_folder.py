"""A trained model as a standard HuggingFace folder (``python -m broadclass.export`` is its command line).

The folder holds the CTC network's weights (``Wav2Vec2ForCTC``, ``Wav2Vec2ConformerForCTC``, …:
``model.safetensors``) and ``config.json`` (``id2label``/``label2id``), the feature extractor
(``preprocessor_config.json``: the model's sample rate, normalised, an attention mask for layer-norm feature
encoders, as transformers' own XLSR and wav2vec2-base folders do; ``broadclass.predict`` passes it for every
layout and gives each utterance of a batch the output it gets alone), the tokenizer (``vocab.json``,
``tokenizer_config.json``), ``broadclass.json`` (vocabulary, label config, categories, sample rate, the training
settings, validation report: what ``broadclass.predict`` and ``model.pretrained=<folder>`` read) and a model card
(``README.md``).

The tokenizer is a ``Wav2Vec2PhonemeCTCTokenizer`` over the same ``vocab.json`` a ``Wav2Vec2CTCTokenizer``
would use, with phonemization off: ``Wav2Vec2CTCTokenizer`` joins the tokens of a word without a separator
when it decodes (``v_mp_m n_m``), so multi-character tokens could not be read back; this one writes every
token, ``|`` included, separated by spaces (``v_m p_m | n_m``), and encodes that text back to the same ids.
So ``pipeline("automatic-speech-recognition", model=<folder>)`` returns exactly ``broadclass.predict``'s
``text``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2PhonemeCTCTokenizer

from broadclass.data.labels import BLANK, LabelMap
from broadclass.model.card_sections import checkpoint_card
from broadclass.model.format import METADATA_FILE
from broadclass.model.module import TrainedModel


def build_tokenizer(labels: LabelMap, folder: Path) -> Wav2Vec2PhonemeCTCTokenizer:
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(labels.vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Wav2Vec2PhonemeCTCTokenizer(
        str(vocab_file),
        pad_token=BLANK,
        # No token of ours plays these parts; the defaults would add ids the CTC head does not have.
        unk_token=None,
        bos_token=None,
        eos_token=None,
        # `|` stays a token of the text rather than being decoded away as a delimiter.
        word_delimiter_token=None,
        phone_delimiter_token=" ",
        do_phonemize=False,
        clean_up_tokenization_spaces=False,
    )


def export_metadata(trained: TrainedModel) -> dict[str, Any]:
    labels = trained.labels
    metadata = {key: value for key, value in trained.metadata.items() if key != "network"}  # config.json has it
    metadata.update(
        source=trained.source,
        classes={name: spec["tag"] for name, spec in labels.classes.items()},
        text_format="tokens separated by spaces; '|' is the word boundary; a token is <class tag>_<category tag>",
        rules=[rule for rule in trained.module.rules if rule != "head"],
        hparams=trained.module.training_settings(),
    )
    return metadata


def save_feature_extractor(folder: Path, sample_rate: int, attention_mask: bool) -> None:
    """The feature extractor of every folder we write: mono at ``sample_rate``, normalised as the data module
    normalises."""
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=sample_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=attention_mask,
    ).save_pretrained(folder)


def export_model(trained: TrainedModel, out_dir: str | Path, overwrite: bool = False, card: str | None = None) -> Path:
    """Write the folder; refuses a non-empty ``out_dir`` unless ``overwrite``.

    ``README.md`` is ``card`` if given (the run's card), else the card of the exported folder the model
    came from, else a short card from the checkpoint's metadata."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=true to replace its files)")
    out.mkdir(parents=True, exist_ok=True)
    labels = trained.labels
    network = trained.module.net
    network.config.id2label = dict(enumerate(labels.tokens))
    network.config.label2id = labels.vocab
    network.save_pretrained(out)
    save_feature_extractor(out, trained.module.sample_rate, attention_mask=network.config.feat_extract_norm == "layer")
    build_tokenizer(labels, out).save_pretrained(out)
    metadata = export_metadata(trained)
    (out / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    card = card or trained.card or checkpoint_card(metadata, out.name)
    (out / "README.md").write_text(card, encoding="utf-8")
    return out
