"""Typed configuration: pydantic models that load from and save to YAML.

Unknown keys are errors (a typo must never be silently ignored), and presets
shipped with the package can be named instead of given as paths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from brainrecon.errors import ConfigError
from brainrecon.io import atomic_write_text

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base for every brainrecon config: unknown keys rejected, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())


def _available_device(value: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N or mps (checked before any work starts)."""
    import torch  # a third-party import, kept lazy so that reading a config costs no torch start-up

    kind, _, index = value.partition(":")
    if kind == "cpu" and not index:
        return value
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{value!r} was asked for, but torch sees no CUDA device on this machine; use cpu")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"{value!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
        return value
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise ValueError("'mps' was asked for, but this machine has no Apple GPU available to torch; use cpu")
        return value
    raise ValueError(f"unknown device {value!r}; use cpu, cuda, cuda:N or mps")


Device = Annotated[str, AfterValidator(_available_device)]


def check_device(value: str, flag: str = "--device") -> str:
    """``value`` if this machine has that torch device, else a ConfigError naming the flag."""
    try:
        return _available_device(value)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None


def preset_names(kind: str) -> list[str]:
    folder = resources.files("brainrecon") / "configs" / kind
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str | Path, kind: str) -> Path:
    """A YAML file (a path ending in .yaml or .yml), or else the name of a preset in brainrecon/configs/<kind>/.

    The two never mix: a preset name is never looked up in the working directory, so a file or
    folder that happens to be called ``tiny`` cannot shadow the ``tiny`` preset.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ConfigError(f"config file {candidate} does not exist; give an existing YAML path or one of the "
                              f"presets by name: {', '.join(preset_names(kind))}")
        return candidate
    preset = resources.files("brainrecon") / "configs" / kind / f"{name_or_path}.yaml"
    if not preset.is_file():
        hint = (f"; to use the file {candidate}, give it a .yaml name" if candidate.is_file() else
                ", or give a YAML path ending in .yaml")
        raise ConfigError(f"no {kind} preset named {str(name_or_path)!r}; choose one of: "
                          f"{', '.join(preset_names(kind))}{hint}")
    return Path(str(preset))


def load_config(cls: type[C], name_or_path: str | Path, kind: str, **overrides) -> C:
    path = resolve_config_path(name_or_path, kind)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; a config holds a mapping of keys to values (start from a preset: "
                          f"{', '.join(preset_names(kind))})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(cls, data, source=str(path))


def validate_config(cls: type[C], data: dict, source: str = "config", as_flags: bool = False) -> C:
    """``cls`` validated from ``data``; any problem becomes one ConfigError naming each bad key.

    ``as_flags``: the keys came from command-line options, so they are named as the flags
    (``n_images`` as ``--n-images``).
    """
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} {'are' if as_flags else 'is'} invalid: {describe(exc, as_flags)}") from None


def describe(exc: ValidationError, as_flags: bool = False) -> str:
    """A pydantic error as one line: each bad key (or flag) with its problem."""
    def one(err) -> str:
        message = err["msg"].removeprefix("Value error, ")  # our validators' messages stand on their own
        if not err["loc"]:
            return message
        dotted = ".".join(str(p) for p in err["loc"])
        return f"{'--' + dotted.replace('_', '-') if as_flags else dotted}: {message}"

    return "; ".join(one(err) for err in exc.errors())
