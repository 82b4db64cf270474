"""Retrieval-enhanced inference: subject memories (Psychometry's Ecphory), sample selection, image banks.

- `SubjectMemory` (subject_memory.py): per-subject keys (model predictions for training
  trials) -> values (true embeddings), compact search keys in a faiss index,
  float16 values memory-mapped from disk.
- `fuse` (ecphory.py): top-k retrieval and the alpha blend of prediction and values.
- `select_samples` (selection.py): choose one of k generated samples by the
  brain prediction (honest); `select_samples_oracle` only for comparison.
- `build_bank` / `ImageBank` (bank.py): MindEye1-style retrieval of images
  from a large local image folder.
"""

from brainrecon.memory.bank import ImageBank, build_bank
from brainrecon.memory.ecphory import EcphoryConfig, EcphoryResult, fuse
from brainrecon.memory.errors import BankError, MemoryStoreError
from brainrecon.memory.selection import (
    Selection,
    SelectionKind,
    select_first,
    select_samples,
    select_samples_oracle,
)
from brainrecon.memory.subject_memory import MemoryConfig, SubjectMemory

__all__ = [
    "BankError", "EcphoryConfig", "EcphoryResult", "ImageBank", "MemoryConfig", "MemoryStoreError", "Selection",
    "SelectionKind", "SubjectMemory", "build_bank", "fuse", "select_first", "select_samples",
    "select_samples_oracle",
]
