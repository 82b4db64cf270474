"""The three disjoint scene sets of the small model set: training, validation and held-out.

Every scene is `sample_scene(derive_rng(seed, key, id))`, the rule `simulate_world` uses, rendered
at 64 px with its four template captions. The keys keep the sets apart:

- training   key "assets-train" (`brainrecon assets train`);
- validation key "assets-val", for choosing sampling settings (`brainrecon assets tune`): neither
  trained on nor the held-out set;
- held-out   the default world's shared test images (seed 0, key "scene", ids 0..n-1), exactly what
  `brainrecon simulate` stores first (`brainrecon assets check`); never rendered for training.
"""

from __future__ import annotations

import numpy as np

from brainrecon.data.simworld import scenes as sc
from brainrecon.rng import derive_rng

IMAGE_SIZE = 64
TRAIN_KEY = "assets-train"   # scenes for training; the world's own scenes use the key "scene"
HELDOUT_WORLD_SEED = 0       # the default world's seed: its shared test images are the held-out set
HELDOUT_KEY = "scene"
VALIDATION_KEY = "assets-val"  # scenes for choosing sampling settings: neither trained on nor the held-out set


def render_scenes(seed: int, key: str, ids, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[list[str]]]:
    """Scenes sampled from derive_rng(seed, key, id) — the same rule `simulate_world` uses."""
    images, caption_lists = [], []
    for stim in ids:
        scene = sc.sample_scene(derive_rng(seed, key, int(stim)))
        rendered = sc.render_scene(scene, size)
        images.append(rendered.image)
        caption_lists.append(sc.captions(scene, rendered))
    return np.stack(images), caption_lists


def heldout_scenes(n: int) -> tuple[np.ndarray, list[list[str]]]:
    """The first n shared test images of the default world (`brainrecon simulate` stores them as ids 0..n-1)."""
    return render_scenes(HELDOUT_WORLD_SEED, HELDOUT_KEY, range(n))


def validation_scenes(n: int, seed: int = 0) -> tuple[np.ndarray, list[list[str]]]:
    """Scenes for choosing sampling settings: neither trained on nor the held-out check set."""
    return render_scenes(seed, VALIDATION_KEY, range(n))
