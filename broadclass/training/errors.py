"""A configuration the run cannot start with, reported by ``train`` and ``pretrain`` as one message.

Hydra prints any exception of a task with its traceback; for the errors that name what the user must change
(a config key, a pretrained folder, manifest rows), the traceback only hides the message. They are printed as
``error: <message>`` on stderr with exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback. In a
sweep (multirun) they stay exceptions, so the sweeper records the failed job.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from broadclass.config import ConfigError
from broadclass.data.check import DataCheckError
from broadclass.data.manifest import ManifestError
from broadclass.model.encoder import ArchitectureOverrideError, PretrainedLoadError

CONFIGURATION_ERRORS = (ConfigError, ArchitectureOverrideError, PretrainedLoadError, DataCheckError, ManifestError)

T = TypeVar("T")


def reporting_configuration_errors(task: Callable[..., T]) -> Callable[..., T]:
    """Wraps a Hydra task function (under ``@hydra.main``): :data:`CONFIGURATION_ERRORS` as one message."""

    @functools.wraps(task)
    def run(*args, **kwargs) -> T:
        try:
            return task(*args, **kwargs)
        except CONFIGURATION_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return run
