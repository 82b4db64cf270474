"""Typed configuration: pydantic models that load from and save to YAML.

Unknown keys are errors (a typo must never be silently ignored), and presets
shipped with the package can be named instead of given as paths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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


def preset_names(kind: str) -> list[str]:
    folder = resources.files("brainrecon") / "configs" / kind
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str | Path, kind: str) -> Path:
    """A path to a YAML file, or the name of a preset in brainrecon/configs/<kind>/."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"config file {candidate} does not exist; "
                              f"give a YAML path or one of the presets: {', '.join(preset_names(kind))}")
        return candidate
    preset = resources.files("brainrecon") / "configs" / kind / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(f"no {kind} preset named {name_or_path!r}; "
                          f"choose one of: {', '.join(preset_names(kind))}, or give a YAML path")
    return Path(str(preset))


def load_config(cls: type[C], name_or_path: str | Path, kind: str, **overrides) -> C:
    path = resolve_config_path(name_or_path, kind)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(cls, data, source=str(path))


def validate_config(cls: type[C], data: dict, source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source} is invalid: {problems}") from None
