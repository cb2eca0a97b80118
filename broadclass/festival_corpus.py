"""``python -m broadclass.festival_corpus [root=data/festival]``: build the Festival corpus
(:mod:`broadclass.data.festival`), reused if already built, and print its manifests and utterances per voice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.data.festival import INSTALL_HINT, VOICES, build_festival_corpus
from broadclass.data.manifest import corpus_summary


@dataclass
class FestivalArguments:
    root: Path = argument(Path("data/festival"), "folder of the corpus")
    n_train: int = argument(900, "training utterances")
    n_val: int = argument(100, "validation utterances")
    n_test: int = argument(100, "test utterances")
    seed: int = argument(0, "seed of the sentences and speakers")
    min_words: int = argument(3, "fewest words in an utterance")
    max_words: int = argument(6, "most words in an utterance")


def main(argv: Sequence[str] | None = None) -> None:
    about = "Build the Festival corpus (reused if already built). Needs: " + INSTALL_HINT
    args = parse_arguments(FestivalArguments, argv, "python -m broadclass.festival_corpus", about)
    manifests = build_festival_corpus(
        args.root, args.n_train, args.n_val, args.n_test, args.seed, args.min_words, args.max_words
    )
    print(corpus_summary(manifests, [voice.name for voice in VOICES]))


if __name__ == "__main__":
    main()
