"""A model set's `manifest.json`: how it was trained (`train`), the sampling settings chosen for it
(`tune`, under "sampling") and how well it decodes (`check`, under "quality")."""

from __future__ import annotations

import json
from pathlib import Path

from brainrecon.io import atomic_write_text

DEFAULT_GUIDANCE = 3.0  # what `check` uses when the set records no guidance chosen on validation scenes


def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def read_manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def recorded_guidance(folder: Path) -> float:
    """The guidance scale `tune_guidance` chose for this set, else DEFAULT_GUIDANCE."""
    manifest_path = Path(folder) / "manifest.json"
    if manifest_path.is_file():
        sampling = read_manifest(folder).get("sampling") or {}
        if "guidance_scale" in sampling:
            return float(sampling["guidance_scale"])
    return DEFAULT_GUIDANCE
