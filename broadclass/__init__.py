"""broadclass: fine-tune wav2vec2 to transcribe speech into broad phonetic classes tagged by category."""

# The `bc.*` resolvers the Hydra tree (broadclass/conf) uses are registered on import of the package, so any
# module that composes the config, whatever its layer, finds them.
from broadclass import config as _config  # noqa: F401

__version__ = "0.1.0"
