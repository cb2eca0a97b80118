"""``python -m broadclass.demo_corpus [root=data/demo] [categories=voice]``: build the eSpeak demo corpus
(:mod:`broadclass.data.demo`), reused if already built, and print its manifests and utterances per category."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadclass.arguments import argument, parse_arguments
from broadclass.data.demo import CATEGORY_SETS, build_demo_corpus
from broadclass.data.manifest import corpus_summary


@dataclass
class DemoArguments:
    root: Path = argument(Path("data/demo"), "folder for <categories>/ corpora")
    categories: str = argument("voice", "what the categories are", choices=sorted(CATEGORY_SETS))
    n_train: int = argument(3200, "training utterances")
    n_val: int = argument(100, "validation utterances")
    seed: int = argument(0, "seed of the words, voices and variants")
    min_words: int = argument(3, "fewest words in an utterance")
    max_words: int = argument(6, "most words in an utterance")


def main(argv: Sequence[str] | None = None) -> None:
    about = "Build the eSpeak demo corpus (reused if already built)."
    args = parse_arguments(DemoArguments, argv, "python -m broadclass.demo_corpus", about)
    manifests = build_demo_corpus(
        args.root, args.categories, args.n_train, args.n_val, args.seed, args.min_words, args.max_words
    )
    print(corpus_summary(manifests, [c.name for c in CATEGORY_SETS[args.categories]]))


if __name__ == "__main__":
    main()
