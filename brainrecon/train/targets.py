"""Training targets: every stimulus of a store embedded once, kept on disk as float16 memmaps.

A run names an embedding space (a CLIP directory, optionally a VAE for the
low-level targets); the targets of every stimulus in the store are computed in
chunks, written into a `.partial` file whose progress is recorded after each
chunk (an interrupted computation resumes there), then renamed into place. The
cache key combines the model directory's identity, the store's image checksum
and the target name, so two stores never share rows by accident.

Test stimuli are embedded too: evaluation needs their true embeddings. Nothing
computed here depends on brain data, so no test statistic can leak through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from brainrecon.config import StrictConfig
from brainrecon.data.store import Store
from brainrecon.embed.cache import model_identity
from brainrecon.embed.clip import ClipImageEmbedder, ClipTextEmbedder, TokenStyle
from brainrecon.errors import ConfigError
from brainrecon.generate.vae import VaePath
from brainrecon.io import atomic_write_json
from brainrecon.models.base import TargetSpace
from brainrecon.pretrained import SIMWORLD, resolve_model_dir

__all__ = ["TargetsConfig", "Targets", "load_targets"]



class TargetsConfig(StrictConfig):
    """Which embedding space a run predicts, and from which local model directories."""

    clip: str | None = SIMWORLD  # a local CLIP directory, or "simworld" for the shipped small CLIP
    vae: str | None = None  # for `lowlevel`: a local AutoencoderKL (or pipeline) dir, or "simworld"
    image_tokens: bool = True
    # "versatile": projected, CLS-normalised, CLS included (257x768 for ViT-L/14; MindEye1, Psychometry, MindBridge);
    # "open_clip": post-layernorm patch tokens, no CLS, unprojected (256x1664 for bigG; MindEye2)
    image_token_style: TokenStyle = "versatile"
    image_pooled: bool = False
    text_tokens: bool = False
    text_pooled: bool = False
    lowlevel: bool = False
    caption: Literal["first"] = "first"  # which of a stimulus's captions gives the text targets
    batch_size: int = 64
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # model dtype while embedding
    cache_dir: str | None = None  # default: $BRAINRECON_CACHE or ~/.cache/brainrecon/targets

    def wanted(self) -> list[str]:
        return [name for name in ("image_tokens", "image_pooled", "text_tokens", "text_pooled", "lowlevel")
                if getattr(self, name)]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BRAINRECON_CACHE", Path.home() / ".cache" / "brainrecon")) / "targets"


@dataclass
class Targets:
    """Per-stimulus targets of one store: `array(name)` rows follow `stimulus_ids`."""

    space: TargetSpace
    stimulus_ids: np.ndarray
    arrays: dict[str, np.ndarray]  # name -> float16 memmap (n_stimuli, *shape)

    def __post_init__(self):
        self._row = {int(s): i for i, s in enumerate(self.stimulus_ids.tolist())}

    def rows(self, stimulus_ids: np.ndarray) -> np.ndarray:
        return np.asarray([self._row[int(s)] for s in np.asarray(stimulus_ids).tolist()], dtype=np.int64)

    def get(self, name: str, stimulus_ids: np.ndarray) -> np.ndarray:
        """float32 targets for the given stimuli, in the order given."""
        rows = self.rows(stimulus_ids)
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, *self.space[name]), dtype=np.float32)
        out[order] = self.arrays[name][rows[order]]
        return out

    def get_all(self, stimulus_ids: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.get(name, stimulus_ids) for name in self.arrays}

    def columns(self, name: str, stimulus_ids: np.ndarray) -> TrialColumns:
        """``get(name, stimulus_ids)`` flattened to (n, t), read a block of columns at a time (closed-form fits)."""
        return TrialColumns(self.arrays[name], self.rows(stimulus_ids))


class TrialColumns:
    """A (trials, targets) float32 array that is read by blocks of columns, ``[:, start:stop]``, and never
    formed whole: each block is read from the per-stimulus memmap and spread to the trials.

    NSD's ViT-L/14 tokens are 197,376 numbers a trial: 20 GB in float32 for one subject's 25k trials,
    which a ridge reading 8,192 columns at a time never needs at once.
    """

    def __init__(self, values: np.ndarray, rows: np.ndarray):
        self.values = values.reshape(len(values), -1)  # a view of the memmap: nothing is read here
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), self.values.shape[1])
        self.ndim = 2

    def __len__(self) -> int:
        return len(self.rows)

    def reshape(self, *shape) -> TrialColumns:
        if shape not in ((len(self), -1), self.shape):
            raise ValueError(f"TrialColumns is {self.shape}; it reshapes only to (n, -1)")
        return self

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
        if rows != slice(None) or not isinstance(cols, slice):
            raise IndexError(f"TrialColumns reads blocks of whole columns, [:, start:stop]; got {key!r}")
        return np.asarray(self.values[:, cols], dtype=np.float32)[self.rows]


class _Embedders:
    """Loads the models a targets config needs, once, and says what each target is computed from."""

    def __init__(self, config: TargetsConfig):
        import torch

        self.config = config
        self.dtype = getattr(torch, config.dtype)
        self._image = self._text = self._vae = None

    def image(self):
        if self._image is None:
            self._image = ClipImageEmbedder(resolve_model_dir(self.config.clip, "clip", "clip"), self.config.device,
                                            self.dtype, self.config.batch_size,
                                            token_style=self.config.image_token_style)
        return self._image

    def text(self):
        if self._text is None:
            self._text = ClipTextEmbedder(resolve_model_dir(self.config.clip, "clip", "clip"), self.config.device,
                                          self.dtype, self.config.batch_size)
        return self._text

    def vae(self):
        if self._vae is None:
            self._vae = VaePath(resolve_model_dir(self.config.vae, "vae", "decoder"), self.config.device, self.dtype,
                                self.config.batch_size)
        return self._vae

    def model_dir(self, name: str) -> Path:
        if name == "lowlevel":
            return resolve_model_dir(self.config.vae, "vae", "decoder")
        return resolve_model_dir(self.config.clip, "clip", "clip")

    def compute(self, names: list[str], store: Store, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Targets of one source (`_source`) for ``ids``: one forward pass serves all of ``names``."""
        source = _source(names[0])
        if source == "image":
            tokens, pooled = self.image().embed(store.images_for(ids))
            out = {"image_tokens": tokens, "image_pooled": pooled}
        elif source == "text":
            captions = [caps[0] if caps else "" for caps in store.captions_for(ids)]
            tokens, pooled = self.text().embed(captions)
            out = {"text_tokens": tokens, "text_pooled": pooled}
        else:
            out = {"lowlevel": self.vae().encode(store.images_for(ids)).numpy()}
        return {name: out[name] for name in names}


def _source(name: str) -> str:
    """What a target is computed from: the CLIP image tower (tokens and pooled in one pass), the text
    tower, or the VAE."""
    return "image" if name.startswith("image_") else "text" if name.startswith("text_") else "vae"


def _cache_key(model_dir: Path, store: Store, name: str, config: TargetsConfig) -> str:
    images = store.manifest.get("files", {}).get("stimuli/images.npy", {}).get("sha256") or str(store.root)
    # the default token style adds nothing, so caches made before the option existed stay valid
    style = f"|{config.image_token_style}" if name == "image_tokens" and config.image_token_style != "versatile" else ""
    digest = hashlib.sha256(f"{model_identity(model_dir, weights='stat')}|{images}|{name}{style}|"
                            f"{config.caption}|{config.dtype}".encode()).hexdigest()[:20]
    return f"{name}-{digest}"


def load_targets(store: Store, config: TargetsConfig, progress: bool = True) -> Targets:
    """Targets for every stimulus in `store`, computed on first use and memory-mapped afterwards."""
    wanted = config.wanted()
    if not wanted:
        raise ConfigError("targets: no target is enabled; set at least one of image_tokens, image_pooled, "
                          "text_tokens, text_pooled, lowlevel to true")
    if "lowlevel" in wanted and config.vae is None:
        raise ConfigError("targets.lowlevel needs targets.vae: a local VAE directory, or 'simworld'")
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    embedders = _Embedders(config)
    ids = np.asarray(store.stimuli.stimulus_id)
    arrays, shapes = {}, {}
    paths = {name: cache / f"{_cache_key(embedders.model_dir(name), store, name, config)}.npy" for name in wanted}
    missing = [name for name in wanted if not paths[name].is_file()]
    for source in dict.fromkeys(_source(name) for name in missing):
        group = [name for name in missing if _source(name) == source]
        _compute_to_files({name: paths[name] for name in group}, store, ids, embedders, progress)
    arrays, shapes = {}, {}
    for name in wanted:
        arrays[name] = np.load(paths[name], mmap_mode="r")
        if len(arrays[name]) != len(ids):
            raise ConfigError(f"{paths[name]} holds {len(arrays[name])} rows for a store of {len(ids)} stimuli; "
                              f"delete it to recompute")
        shapes[name] = tuple(arrays[name].shape[1:])
    return Targets(TargetSpace(shapes), ids, arrays)


def _compute_to_files(paths: dict[str, Path], store: Store, ids: np.ndarray, embedders: _Embedders,
                      progress: bool) -> None:
    """Fill the targets of one source chunk by chunk, each through a resumable `.partial` file, then
    rename them into place. A resumed group restarts at the row its least advanced file had reached."""
    names = list(paths)
    chunk = max(1, embedders.config.batch_size) * 8
    partials = {n: p.with_suffix(".partial.npy") for n, p in paths.items()}
    states = {n: p.with_suffix(".partial.json") for n, p in paths.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    resumable = all(partials[n].is_file() and states[n].is_file() for n in names)
    if resumable:
        done = min(int(json.loads(states[n].read_text())["rows_done"]) for n in names)
        outs = {n: np.load(partials[n], mmap_mode="r+") for n in names}
    else:
        done = 0
        for state in states.values():  # a partial of another group's run: its rows are not this group's
            state.unlink(missing_ok=True)
        first = embedders.compute(names, store, ids[:1])
        outs = {n: np.lib.format.open_memmap(partials[n], mode="w+", dtype=np.float16,
                                             shape=(len(ids), *first[n].shape[1:])) for n in names}
    bar = tqdm(total=len(ids), initial=done, desc=f"embedding {', '.join(names)}", unit="img",
               disable=not progress)
    while done < len(ids):
        stop = min(done + chunk, len(ids))
        values = embedders.compute(names, store, ids[done:stop])
        for name in names:
            outs[name][done:stop] = values[name].astype(np.float16)
            outs[name].flush()
            atomic_write_json(states[name], {"rows_done": stop})  # after the flush: never claims unwritten rows
        bar.update(stop - done)
        done = stop
    bar.close()
    outs.clear()
    for name in names:
        os.replace(partials[name], paths[name])
        states[name].unlink(missing_ok=True)
