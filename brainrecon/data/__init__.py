"""Data: the one store format and the sources that write it."""

from brainrecon.data.store import BrainSet, Store, SubjectData, open_store
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable
from brainrecon.data.writer import StoreWriter

__all__ = ["BrainSet", "Store", "SubjectData", "open_store", "StimulusTable", "TrialTable", "VoxelTable",
           "StoreWriter"]
