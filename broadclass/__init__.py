"""broadclass: fine-tune wav2vec2 to transcribe speech into broad phonetic classes tagged by category."""

import os

# torch's CPU kernels (oneDNN) are built for each input shape, about 0.4 s for a training step's kernels, and kept in
# a cache of 1,024 kernels by default: 10-16 shapes of a training step (bf16 forward and backward; the evaluation's
# fp32 ones come on top). Batches are padded to a grid of lengths (data.padded_lengths_per_octave) so that shapes
# repeat; with 1,024 kernels they did not stay cached, and a CPU step cost 0.147 s instead of 0.113 (make bench,
# experiments/throughput/README.md). 8,192 holds 40 shapes of the demo's length, not 100 (its grid has about 36).
# oneDNN reads it when it builds its first kernel, so it is set on import, before any; a value already in the
# environment is kept (lower: less memory held, README "Shapes that repeat").
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")

# The `bc.*` resolvers the Hydra tree (broadclass/conf) uses are registered on import of the package, so any
# module that composes the config, whatever its layer, finds them.
from broadclass import config as _config  # noqa: E402, F401

__version__ = "0.1.0"
