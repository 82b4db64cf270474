"""Exceptions raised at brainrecon's boundaries.

Every message names the thing that is wrong and how to fix it, so that a user
reading only the last line of a traceback knows what to do next.
"""


class BrainreconError(Exception):
    """Base class for all errors brainrecon raises on bad input."""


class StoreError(BrainreconError, ValueError):
    """A data store is missing, inconsistent, or fails validation."""


class ConfigError(BrainreconError, ValueError):
    """A configuration file or value is invalid."""


class EvaluationError(BrainreconError, ValueError):
    """An evaluation or fit cannot run as asked (e.g. too few test items for N-way retrieval)."""


class ModelPathError(BrainreconError, ValueError):
    """A pretrained-model path is not an existing local directory (e.g. a hub id was given)."""


class OutputError(BrainreconError, ValueError):
    """An output path is a file, holds something else, already exists, or another process is writing it."""


class DivergenceError(BrainreconError, ArithmeticError):
    """Training produced a non-finite loss or weights; nothing was saved as final."""
