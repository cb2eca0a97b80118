import json

import pytest
from omegaconf import OmegaConf

from broadclass.data.labels import LabelMap, UnknownPhoneError, join_token, split_token
from tests.helpers.config import CONF_DIR

CATEGORIES = [{"name": "male", "tag": "m"}, {"name": "female", "tag": "f"}]


@pytest.fixture
def ipa() -> LabelMap:
    return LabelMap.from_config(OmegaConf.load(CONF_DIR / "labels" / "ipa.yaml"), CATEGORIES)


def test_tokens_are_class_tag_times_category_tag_after_blank_and_boundary(ipa):
    tokens = ipa.tokens
    assert tokens[:2] == ["<pad>", "|"]
    assert {"v_m", "v_f", "p_m", "f_f", "n_m", "a_f", "l_m"} <= set(tokens)
    assert len(tokens) == 2 + len(ipa.classes) * len(CATEGORIES)


def test_every_token_splits_back_into_the_tags_it_was_joined_from(ipa):
    tags = [(spec["tag"], category.tag) for spec in ipa.classes.values() for category in ipa.categories]
    assert [split_token(token) for token in ipa.tokens[2:]] == tags
    assert [join_token(*pair) for pair in tags] == ipa.tokens[2:]
    # A class tag may hold "_"; the category tag is what follows the last one. Tokens without one have none.
    assert split_token("long_v_m") == ("long_v", "m")
    assert split_token("|") == ("|", None) and split_token("<pad>") == ("<pad>", None)


def test_vocabulary_follows_the_config_not_the_data(ipa):
    again = LabelMap.from_config(OmegaConf.load(CONF_DIR / "labels" / "ipa.yaml"), CATEGORIES)
    ipa.encode("k æ t", "female")
    assert again.vocab == ipa.vocab


def test_stress_length_and_diacritics_are_stripped(ipa):
    assert ipa.encode("ˈaː", "male") == ipa.encode("a", "male")
    assert ipa.encode("ñ", "male") == ipa.encode("n", "male")


def test_word_boundaries_become_bar_and_are_not_doubled_or_trailing(ipa):
    ids = ipa.encode("k æ t | | d ɒ ɡ |", "male")
    assert ipa.decode(ids) == ["p_m", "v_m", "p_m", "|", "p_m", "v_m", "p_m"]


def test_unit_mixing_classes_is_split_into_its_phones(ipa):
    assert ipa.decode(ipa.encode("əl", "male")) == ["v_m", "l_m"]


def test_unknown_phone_error_names_phone_and_utterances(ipa):
    with pytest.raises(UnknownPhoneError) as err:
        ipa.check([("utt-1", "k ☃ t"), ("utt-2", "☃"), ("utt-3", "k æ t")])
    assert "'☃'" in str(err.value) and "utt-1" in str(err.value) and "utt-2" in str(err.value)
    assert "utt-3" not in str(err.value)


def test_unknown_phones_can_be_dropped_or_mapped_to_a_class():
    cfg = OmegaConf.load(CONF_DIR / "labels" / "ipa.yaml")
    dropped = LabelMap.from_config({**cfg, "unknown": "drop"}, CATEGORIES)
    assert dropped.decode(dropped.encode("k ☃ t", "male")) == ["p_m", "p_m"]
    mapped = LabelMap.from_config({**cfg, "unknown": "vowel"}, CATEGORIES)
    assert mapped.decode(mapped.encode("k ☃ t", "male")) == ["p_m", "v_m", "p_m"]


def test_unknown_setting_must_name_a_real_class():
    cfg = OmegaConf.load(CONF_DIR / "labels" / "ipa.yaml")
    with pytest.raises(ValueError, match="labels.unknown"):
        LabelMap.from_config({**cfg, "unknown": "click"}, CATEGORIES)


def test_saved_vocabulary_round_trips(ipa, tmp_path):
    saved = json.loads(ipa.save_vocab(tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert saved["vocab"] == ipa.vocab
    assert saved["categories"] == CATEGORIES


def test_token_category_marks_blank_and_boundary_as_none(ipa):
    cats = ipa.token_category()
    assert cats[:2] == [-1, -1]
    assert cats[ipa.vocab["v_f"]] == 1 and cats[ipa.vocab["p_m"]] == 0


def test_a_listed_precomposed_letter_keeps_its_diacritic(ipa):
    # ç is the palatal fricative, not c (a plosive) with a cedilla.
    assert ipa.decode(ipa.encode("ç", "male")) == ["f_m"]
