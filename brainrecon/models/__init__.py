"""Brain models: one file per method."""

from brainrecon.models.ridge import Ridge, RidgeConfig

__all__ = ["Ridge", "RidgeConfig"]
