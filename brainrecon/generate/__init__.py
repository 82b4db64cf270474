"""Image generators over pretrained diffusion models loaded from local directories.

Import the concrete generators from their modules (`brainrecon.generate.unclip`,
`.versatile`, `.vae`); this package only exposes the light-weight interface so
that importing it does not import diffusers.
"""

from brainrecon.generate.base import GenerationRequest, Generator

__all__ = ["GenerationRequest", "Generator"]
