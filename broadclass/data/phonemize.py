"""Phones from orthographic text with eSpeak NG (``prepare phonemize=<voice>``).

The whole text of a row goes to eSpeak at once, so words are said in context (eSpeak may join short
words, ``in the`` → one word; its words are kept as it makes them). Phone units are separated by
spaces and words by `` | ``, as in every manifest.

A word eSpeak cannot say is one it turns into no phonemes, or one holding a symbol (``☃``, ``€``,
emoji), which eSpeak reads out by its name: the recording does not say that name. Such words are
returned by row, so the corpus can be fixed before anything is written.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from broadclass.data.espeak import ESpeak, ESpeakError
from broadclass.data.sources import CorpusError

WORD_SEPARATOR = " | "


def _is_symbol(char: str) -> bool:
    return unicodedata.category(char).startswith("S")


@dataclass
class Phonemizer:
    """Text → IPA phones with one eSpeak voice (``en-us``, ``es``, ``de`` …)."""

    voice: str
    _espeak: ESpeak = field(init=False, repr=False)
    _sayable: dict[str, bool] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._espeak = ESpeak()
            self._espeak.phonemes("a", self.voice)  # sets the voice: an unknown one fails here
        except ESpeakError as err:
            raise CorpusError(f"phonemize={self.voice}: {err}") from None

    @property
    def version(self) -> str:
        return self._espeak.version

    def phones(self, text: str) -> str:
        words = self._espeak.phonemes(text, self.voice)
        return WORD_SEPARATOR.join(" ".join(units) for units in words)

    def unsayable(self, text: str) -> list[str]:
        """The words of ``text`` eSpeak cannot say (see the module docstring), in order."""
        found = []
        for token in text.split():
            word = token.strip("".join(ch for ch in token if unicodedata.category(ch).startswith("P")))
            if not word:
                continue
            if word not in self._sayable:
                self._sayable[word] = not any(map(_is_symbol, word)) and bool(self._espeak.phonemes(word, self.voice))
            if not self._sayable[word]:
                found.append(word)
        return found

    def describe(self) -> dict[str, str]:
        """What made the phones, for the sets' records."""
        return {"phonemizer": "espeak-ng", "voice": self.voice, "espeak_version": self.version}


def phonemize_rows(rows: Sequence[dict], voice: str) -> tuple[dict[str, str], list[str]]:
    """Set every row's ``phones`` from its ``text``; returns the phonemizer's description and the rows'
    problems (words eSpeak cannot say, texts with no phonemes), one line per row."""
    phonemizer = Phonemizer(voice)
    problems = []
    for row in rows:
        bad = phonemizer.unsayable(row["text"])
        if bad:
            problems.append(f"{row['_source']}: eSpeak voice {voice} cannot say {', '.join(map(repr, bad))}")
        row["phones"] = phonemizer.phones(row["text"])
    return phonemizer.describe(), problems
