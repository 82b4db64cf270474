"""Local pretrained weights: brainrecon never downloads, so every model path is checked here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from brainrecon.errors import ConfigError, ModelPathError

SIMWORLD = "simworld"  # names the shipped small model set (brainrecon/assets/simworld) instead of a directory
# where the shipped set lives (package data; trained by `brainrecon assets train`)
SIMWORLD_ASSETS = Path(__file__).resolve().parent / "assets" / "simworld"


def require_local_dir(path: str | Path, argument: str, expect: Sequence[str] = ()) -> Path:
    """Return `path` as a Path if it is an existing directory, else raise ModelPathError.

    brainrecon never reaches the network, so a hub id such as
    "openai/clip-vit-large-patch14" is rejected with instructions instead of
    being handed to `from_pretrained`, which would try to download it.
    `expect` names files or folders that must exist inside the directory.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        looks_like_hub_id = (isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/", "~")))
        hint = (f"{str(path)!r} looks like a Hugging Face hub id, but brainrecon only loads local directories. "
                if looks_like_hub_id else f"{str(path)!r} is not an existing directory. ")
        raise ModelPathError(
            f"{argument}: {hint}Pass the path of a local model directory instead — e.g. one written by "
            f"`save_pretrained(...)` or fetched on a machine with network access by "
            f"`huggingface-cli download <repo> --local-dir <dir>` and copied here.")
    missing = [name for name in expect if not (folder / name).exists()]
    if missing:
        raise ModelPathError(f"{argument}: local directory {folder} lacks {', '.join(missing)}; "
                             f"it does not look like the expected model layout (see docs/embedders-and-generators.md)")
    return folder


def resolve_model_dir(value: str | None, what: str, simworld_sub: str, label: str | None = None) -> Path:
    """The local directory a config value names: a path, or "simworld" for the shipped small model set.

    ``label`` is how the value is named in errors (default ``targets.<what>``).
    """
    label = label or f"targets.{what}"
    if value is None:
        raise ConfigError(f"{label} is not set; give a local model directory (e.g. `--{what} PATH` on "
                          f"the command line or `{label}: /path/to/model` in the config), "
                          f"or '{SIMWORLD}' for the simulated world's shipped model")
    if value == SIMWORLD:
        return SIMWORLD_ASSETS / simworld_sub
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{label} = {value!r} is not a local directory; nothing is downloaded, so "
                          f"point it at a model saved on disk")
    return path
