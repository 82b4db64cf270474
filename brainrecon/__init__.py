"""brainrecon: reconstruct and retrieve seen images from fMRI."""

__version__ = "0.1.0"
