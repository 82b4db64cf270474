"""The simulated multi-subject world: procedural scenes, virtual subjects with a known
encoding model, an NSD-like protocol, and the Bayes-optimal oracle.

It is a testbed with a known ceiling, not a stand-in for NSD results.
"""

from brainrecon.data.simworld.config import SIMULATED_NOTE, WorldConfig, check_way
from brainrecon.data.simworld.world import load_subject_truth, load_world_config, simulate_world, subject_name

__all__ = ["SIMULATED_NOTE", "WorldConfig", "check_way", "simulate_world", "load_subject_truth", "load_world_config", "subject_name"]
