"""Errors in what the user gave (an option, a file, a data set) and how the entry points report them.

An exception class that also derives from :class:`UserError` carries a message that names the thing and says
what to do: ``d2csr/train.py`` and ``d2csr/test.py`` print that message (``error: ...``) and exit with status 1,
without a traceback (``d2csr.pipeline.run_entry_point``, ``d2csr.options_check.check_entry_options``). Any other exception is a bug and keeps its traceback.
The classes stay ``ValueError`` / ``FileNotFoundError`` subclasses, so code that catches those still does.
"""
import os
import sys


class UserError(Exception):
    """Mixin of the exceptions whose message is the whole story (see the module doc)."""


class OptionsError(UserError, ValueError):
    """An options file asks for something that cannot run; the message lists every problem."""


class ResumeError(UserError, ValueError):
    """A training state or its network cannot be resumed from; the message says which file and what to do."""


class TrainingStopped(UserError, FloatingPointError):
    """Training stopped on purpose: a non-finite loss or gradient under ``train: nan_policy: stop``. The message
    names the iteration and the loss terms, says that the last checkpoint is intact and what to do."""


def user_error_message(error):
    """``error: <message>``; under a launcher with several processes ``error (rank N): <message>``."""
    world = os.environ.get('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1'))
    rank = os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))
    return f'error{f" (rank {rank})" if world not in ("", "1") else ""}: {error}'
