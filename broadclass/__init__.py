"""broadclass: fine-tune wav2vec2 to transcribe speech into broad phonetic classes tagged by category."""

__version__ = "0.1.0"
