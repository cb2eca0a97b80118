"""Phone → broad class mapping and the CTC token vocabulary.

A token is ``<class tag>_<category tag>`` (``v_m``: a vowel in a male-voice utterance); ``|`` marks a
word boundary and ``<pad>`` (id 0) is both padding and the CTC blank. The vocabulary is derived from
the label config and the category list only, never from data order, so two runs with the same config
share token ids.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BLANK = "<pad>"
WORD_BOUNDARY = "|"
# Between a token's class tag and its category tag: ``v_m``.
TAG_SEPARATOR = "_"


def join_token(class_tag: str, category_tag: str) -> str:
    """``v``, ``m`` → ``v_m``: a broad class's tag with the tag of its utterance's category."""
    return f"{class_tag}{TAG_SEPARATOR}{category_tag}"


def split_token(token: str) -> tuple[str, str | None]:
    """``v_m`` → (``v``, ``m``); the one reader of the token format.

    The category tag is what follows the last ``_``, so class tags may contain ``_`` but category tags may
    not; a token without ``_`` (``|``, ``<pad>``) is its own class tag and has no category tag.
    """
    class_tag, _, category_tag = token.rpartition(TAG_SEPARATOR)
    return (class_tag, category_tag) if class_tag else (token, None)


class UnknownPhoneError(ValueError):
    """Phones with no broad class; names every phone and the utterances it occurs in."""

    def __init__(self, unknown: Mapping[str, Sequence[str]]):
        self.unknown = {phone: list(utts) for phone, utts in unknown.items()}
        lines = [
            f"  {phone!r} in {len(utts)} utterance(s): {', '.join(utts[:5])}{' …' if len(utts) > 5 else ''}"
            for phone, utts in sorted(self.unknown.items())
        ]
        super().__init__(
            f"{len(self.unknown)} phone(s) have no broad class in the label config:\n"
            + "\n".join(lines)
            + "\nAdd them to a class in conf/labels/, or set labels.unknown=drop or labels.unknown=<class name>."
        )


@dataclass(frozen=True)
class Category:
    name: str
    tag: str


@dataclass
class LabelMap:
    """Maps phone strings (``"h ə l oʊ | w ɜː l d"``) to broad-class token ids.

    ``classes`` maps a class name to its tag and phones; ``strip`` lists marks removed before lookup
    (stress, length); combining diacritics are always removed. A phone unit that is not in the map
    but splits into known phones (eSpeak writes ``əl``, ``ɔːɹ`` as single units) becomes their classes.
    ``unknown`` decides what happens to any other phone: ``raise``, ``drop``, or the name of a class.
    ``drop`` names classes whose phones are known but removed from every transcription (TIMIT's
    closures and pauses): those classes get no tokens.
    """

    classes: Mapping[str, Mapping[str, object]]
    categories: Sequence[Category]
    strip: Sequence[str] = ()
    unknown: str = "raise"
    name: str = "labels"
    drop: Sequence[str] = ()
    _phone_to_class: dict[str, str] = field(init=False, repr=False)
    _letters: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.categories = [c if isinstance(c, Category) else Category(**c) for c in self.categories]
        if not self.categories:
            raise ValueError("at least one category is needed (data.categories)")
        tags = [c.tag for c in self.categories]
        if len(set(tags)) != len(tags):
            raise ValueError(f"category tags must be unique, got {tags}")
        self._letters = {
            ch
            for spec in self.classes.values()
            for phone in spec.get("phones", [])
            for ch in unicodedata.normalize("NFC", phone)
            if unicodedata.category(ch) != "Mn"
        }
        self._phone_to_class = {}
        class_tags = []
        for class_name, spec in self.classes.items():
            class_tags.append(spec["tag"])
            for phone in spec.get("phones", []):
                key = self.normalize(phone)
                if key in self._phone_to_class and self._phone_to_class[key] != class_name:
                    raise ValueError(
                        f"phone {phone!r} is listed under both {self._phone_to_class[key]!r} and {class_name!r}"
                    )
                self._phone_to_class[key] = class_name
        if len(set(class_tags)) != len(class_tags):
            raise ValueError(f"class tags must be unique, got {class_tags}")
        not_classes = [name for name in self.drop if name not in self.classes]
        if not_classes:
            raise ValueError(f"labels.drop must name classes ({', '.join(self.classes)}), got {not_classes}")
        # Phones of dropped classes stay known (never 'unknown') but the classes leave the vocabulary.
        self.classes = {name: spec for name, spec in self.classes.items() if name not in self.drop}
        if self.unknown not in ("raise", "drop") and self.unknown not in self.classes:
            raise ValueError(
                f"labels.unknown must be 'raise', 'drop' or a class name ({', '.join(self.classes)}), "
                f"got {self.unknown!r}"
            )

    @classmethod
    def from_config(cls, labels: Mapping, categories: Iterable[Mapping | Category]) -> LabelMap:
        return cls(
            classes={k: dict(v) for k, v in labels["classes"].items()},
            categories=list(categories),
            strip=list(labels.get("strip", [])),
            unknown=labels.get("unknown", "raise"),
            name=labels.get("name", "labels"),
            drop=list(labels.get("drop", [])),
        )

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        return [BLANK, WORD_BOUNDARY] + [
            join_token(spec["tag"], cat.tag) for spec in self.classes.values() for cat in self.categories
        ]

    @property
    def vocab(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def word_boundary_id(self) -> int:
        return 1

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def category_index(self, name: str) -> int:
        for i, cat in enumerate(self.categories):
            if cat.name == name:
                return i
        raise KeyError(name)

    def token_category(self) -> list[int]:
        """Category index of each token id; -1 for the blank and the word boundary."""
        return [-1, -1] + [i for _ in self.classes for i in range(len(self.categories))]

    def token_class(self) -> list[str | None]:
        """Broad-class tag of each token id; None for the blank, ``|`` for the word boundary."""
        return [None, WORD_BOUNDARY] + [spec["tag"] for spec in self.classes.values() for _ in self.categories]

    def save_vocab(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "vocab": self.vocab,
            "blank": BLANK,
            "word_boundary": WORD_BOUNDARY,
            "classes": {name: spec["tag"] for name, spec in self.classes.items()},
            "categories": [{"name": c.name, "tag": c.tag} for c in self.categories],
        }
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    # ---- phones → classes ---------------------------------------------------------------------
    def normalize(self, phone: str) -> str:
        """Lookup key: marks in ``strip`` and combining diacritics removed.

        A precomposed letter that the map lists itself (``ç``) is kept whole; any other letter with a
        diacritic (``ã``, ``ñ``) loses the diacritic.
        """
        letters = []
        for ch in unicodedata.normalize("NFC", phone):
            if ch not in self._letters:
                ch = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
            letters.append(ch)
        kept = "".join(letters)
        for mark in self.strip:
            kept = kept.replace(mark, "")
        return kept

    def _split(self, unit: str) -> list[str] | None:
        """Greedy longest-match split of a unit into known phones; None if any part is unknown."""
        parts, i = [], 0
        while i < len(unit):
            for j in range(len(unit), i, -1):
                if unit[i:j] in self._phone_to_class:
                    parts.append(unit[i:j])
                    i = j
                    break
            else:
                return None
        return parts

    def classes_of(self, phone: str) -> list[str] | None:
        """Class names for one phone unit; [] for a unit that is only marks; None if unknown."""
        unit = self.normalize(phone)
        if not unit:
            return []
        if unit in self._phone_to_class:
            return [self._phone_to_class[unit]]
        parts = self._split(unit)
        return None if parts is None else [self._phone_to_class[p] for p in parts]

    def class_sequence(self, phones: str) -> tuple[list[str], set[str]]:
        """Class names (and ``|``) for a phone string, plus the set of unknown phones."""
        out: list[str] = []
        unknown: set[str] = set()
        for phone in phones.split():
            if phone == WORD_BOUNDARY:
                if out and out[-1] != WORD_BOUNDARY:
                    out.append(WORD_BOUNDARY)
                continue
            classes = self.classes_of(phone)
            if classes is None:
                unknown.add(phone)
                if self.unknown == "drop" or self.unknown == "raise":
                    continue
                classes = [self.unknown]
            out.extend(c for c in classes if c in self.classes)
        while out and out[-1] == WORD_BOUNDARY:
            out.pop()
        return out, unknown

    def encode(self, phones: str, category: str) -> list[int]:
        """Token ids for one utterance; raises UnknownPhoneError unless unknown phones are allowed."""
        classes, unknown = self.class_sequence(phones)
        if unknown and self.unknown == "raise":
            raise UnknownPhoneError({p: ["<this utterance>"] for p in unknown})
        vocab = self.vocab
        cat_tag = self.categories[self.category_index(category)].tag
        return [
            self.word_boundary_id if c == WORD_BOUNDARY else vocab[join_token(self.classes[c]["tag"], cat_tag)]
            for c in classes
        ]

    def check(self, utterances: Iterable[tuple[str, str]]) -> None:
        """Raise one UnknownPhoneError naming every unknown phone across (utterance id, phones) pairs."""
        if self.unknown != "raise":
            return
        seen: dict[str, list[str]] = {}
        for utt_id, phones in utterances:
            for phone in self.class_sequence(phones)[1]:
                seen.setdefault(phone, []).append(utt_id)
        if seen:
            raise UnknownPhoneError(seen)

    def decode(self, ids: Iterable[int]) -> list[str]:
        tokens = self.tokens
        return [tokens[i] for i in ids]
