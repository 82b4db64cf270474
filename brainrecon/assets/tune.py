"""Choose a small model set's guidance scale on validation scenes, before the held-out check sees it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from brainrecon.assets.check import decode_true_embeddings, load_set
from brainrecon.assets.manifest import read_manifest, write_manifest
from brainrecon.assets.scenes import VALIDATION_KEY, validation_scenes

DEFAULT_TUNE_SCALES = (1.5, 3.0, 5.0, 8.0)  # guidance scales `tune_guidance` tries unless told otherwise


def tune_guidance(folder: Path, scales: Sequence[float] = DEFAULT_TUNE_SCALES, n: int = 200, steps: int = 25,
                  seed: int = 0, log=print) -> dict:
    """Pick the guidance scale on *validation* scenes (never the held-out check set); record it.

    The choice goes to manifest["sampling"], which `check_assets` then uses by default, so the
    held-out figure is measured at a setting fixed before the held-out scenes were decoded.
    """
    folder = Path(folder)
    if not scales:
        raise ValueError("tune_guidance needs at least one guidance scale")
    originals, _ = validation_scenes(n)
    embedder, generator = load_set(folder)
    by_scale = {}
    for scale in scales:
        *_, identification = decode_true_embeddings(embedder, generator, originals, steps, scale, seed)
        by_scale[f"{scale:g}"] = identification
        log(f"guidance {scale:g}: 2-way identification on {n} validation scenes {identification:.3f}")
    best = max(scales, key=lambda scale: by_scale[f"{scale:g}"])
    sampling = {"guidance_scale": float(best), "chosen_on": f"{n} validation scenes derive_rng(0, "
                f"'{VALIDATION_KEY}', i)", "steps": steps, "seed": seed,
                "two_way_identification_by_guidance": by_scale}
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        manifest["sampling"] = sampling
        write_manifest(folder, manifest)
    log(f"chose guidance {best:g}")
    return sampling

