"""Errors of the retrieval-memory package (Ecphory memories and image banks)."""

from brainrecon.errors import BrainreconError


class MemoryStoreError(BrainreconError, ValueError):
    """A subject memory cannot be built, saved, loaded or searched as asked.

    Named so as not to shadow Python's built-in ``MemoryError`` (out of RAM).
    """


class BankError(BrainreconError, ValueError):
    """An image bank cannot be built, loaded or searched as asked."""
