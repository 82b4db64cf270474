"""Building a simulated world into a brainrecon store, streaming in chunks.

Protocol, modelled on NSD: every subject sees its own training images and a
shared test set, each image ``n_repeats`` times in a random order, in sessions
of ``trials_per_session`` trials. Each session has its own per-voxel gain and
offset (removed by per-session z-scoring) and a linear drift (not removed: it
is part of the noise). A trial's beta is::

    beta = gain[s, v] * (signal[image, v] + noise + slope[s, v] * u(t)) + offset[s, v]

with u(t) running from -1 to 1 across the session, and noise = code noise read out
through the voxel's weights (shared across voxels) plus the voxel's own white noise. The ground truth needed to
compute noise ceilings and the Bayes-optimal oracle is saved under
``extra/simworld/`` in the store.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from brainrecon.data.simworld import scenes as sc
from brainrecon.data.simworld.config import WorldConfig
from brainrecon.data.simworld.encoding import (KINDS, ImageFeatures, SharedCode, SubjectModel, feature_covariance,
                                               fit_readout, image_features, make_archetypes, make_subject,
                                               session_position, set_ncsnr, subject_archetypes,
                                               voxel_coordinates)
from brainrecon.data.simworld.vision_model import VisionModel
from brainrecon.data.store import Store, is_store
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.data.writer import StoreWriter
from brainrecon.io import atomic_write_json, atomic_write_text, check_output_dir
from brainrecon.rng import derive_rng

EXTRA = "simworld"
# The world is built with this many torch and BLAS threads whatever the machine has: a float32 matrix product
# splits its sums by thread count, so the `tiny` world's betas differed between 1 and 2 threads (the default
# world's code values by up to 1.8e-7; docs/simulated-world.md). 2 is the development machine's count, so worlds
# built there before this pin keep their bytes. The caller's count is restored afterwards.
WORLD_THREADS = 2


def subject_name(index: int) -> str:
    return f"subj{index + 1:02d}"


@dataclass(frozen=True)
class StimulusPlan:
    test_ids: np.ndarray
    train_ids: list[np.ndarray]  # per subject

    @classmethod
    def from_config(cls, config: WorldConfig) -> "StimulusPlan":
        n_test, n_train = config.n_test_images, config.n_train_images
        return cls(test_ids=np.arange(n_test),
                   train_ids=[n_test + s * n_train + np.arange(n_train) for s in range(config.n_subjects)])

    @property
    def n_stimuli(self) -> int:
        return len(self.test_ids) + sum(len(t) for t in self.train_ids)


def make_schedule(config: WorldConfig, test_ids: np.ndarray, train_ids: np.ndarray,
                  rng: np.random.Generator) -> tuple[TrialTable, np.ndarray]:
    """Random presentation order; returns the trial table and each trial's position in its session."""
    ids = np.concatenate([test_ids, train_ids])
    order = rng.permutation(np.repeat(ids, config.n_repeats))
    per_session = config.session.trials_per_session
    position = np.arange(order.size)
    split = np.where(np.isin(order, test_ids), "test", "train")
    table = TrialTable(stimulus_id=order.astype(np.int64), session=(position // per_session + 1).astype(np.int64),
                       repeat=repeat_index(order), split=split)
    return table, position % per_session


def _render_chunk(config: WorldConfig, ids: np.ndarray, key: str):
    images, semantic, caption_lists, descriptions = [], [], [], []
    for stim in ids.tolist():
        scene = sc.sample_scene(derive_rng(config.seed, key, stim))
        rendered = sc.render_scene(scene, config.image_size)
        images.append(rendered.image)
        semantic.append(sc.semantic_features(scene, rendered.visible_area))
        caption_lists.append(sc.captions(scene, rendered))
        descriptions.append(scene.to_dict())
    return np.stack(images), np.stack(semantic), caption_lists, descriptions


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@contextmanager
def _fixed_threads(n: int):
    """Run the block with ``n`` torch and BLAS threads, then restore the caller's counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def simulate_world(config: WorldConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Simulate ``config``'s world into a store at ``out``; returns the path. Same config, same bytes, whatever
    the machine's thread count (``WORLD_THREADS``), on CPUs that run the same float kernels."""
    with _fixed_threads(WORLD_THREADS):
        return _simulate_world(config, Path(out), overwrite, progress)


def _simulate_world(config: WorldConfig, out: Path, overwrite: bool, progress: bool) -> Path:
    """simulate_world's body, under its fixed thread count."""
    check_output_dir(out, "a brainrecon store", is_store, overwrite)  # before the slow part; again when writing
    plan = StimulusPlan.from_config(config)
    all_ids = np.arange(plan.n_stimuli)
    bar = lambda it, desc, total=None: tqdm(it, desc=desc, total=total, disable=not progress,  # noqa: E731
                                            file=sys.stderr, leave=False)
    # the vision model is loaded (and a bad directory refused) before anything is written
    vision = VisionModel(config.vision_model) if config.vision_model else None
    vision_dims = (vision.token_dim, vision.pooled_dim) if vision else None
    source = {"kind": "simulated", "config": config.model_dump(mode="json"),
              "vision_model": vision.describe() if vision else None}
    with StoreWriter(out, source=source, overwrite=overwrite) as writer:
        extra = writer.extra_dir(EXTRA)
        # 1. stimuli: render in chunks straight into the memory-mapped image array
        semantic = np.zeros((plan.n_stimuli, len(sc.SEMANTIC_FEATURES)), dtype=np.float32)
        captions: list[list[str]] = []
        descriptions: list[dict] = []
        images = writer.create_images(plan.n_stimuli, (config.image_size, config.image_size, 3))
        for part in bar(list(_chunks(plan.n_stimuli, config.chunk_images)), "render scenes"):
            images[part], semantic[part], caps, desc = _render_chunk(config, all_ids[part], "scene")
            captions += caps
            descriptions += desc
        writer.write_stimulus_table(StimulusTable(stimulus_id=all_ids, captions=captions))
        np.save(extra / "semantic.npy", semantic, allow_pickle=False)
        atomic_write_text(extra / "scenes.jsonl", "".join(json.dumps(d) + "\n" for d in descriptions))
        code_files: dict[str, str] = {}

        # 2. the shared code(s), then each subject: read-out, then betas session by session
        calib_images, calib_semantic, _, _ = _render_chunk(config, np.arange(config.calibration_images),
                                                           "calibration")
        calib_vision = None  # the calibration scenes' normalised vision features, embedded once
        if vision is not None:
            calib_vision = vision.calibrate(calib_images)
            save_file({k: np.ascontiguousarray(v) for k, v in vision.normaliser.arrays().items()},
                      str(extra / "vision-normaliser.safetensors"))
        calib_features = image_features(calib_images, calib_semantic, config.feature_grid, vision, calib_vision)
        covariance = feature_covariance(calib_features) if config.vision_tuning == "feature_covariance" else None
        shared = make_archetypes(config, derive_rng(config.seed, "archetypes"), vision_dims, covariance)
        codes: dict[str, tuple[SharedCode, np.ndarray]] = {}  # one code per archetype set
        for s in bar(range(config.n_subjects), "subjects"):
            archetypes = subject_archetypes(config, s, shared, vision_dims, covariance)
            code_files[subject_name(s)] = code_name = "code.safetensors" if config.shared_archetypes \
                else f"code-{subject_name(s)}.safetensors"
            if code_name not in codes:
                code = SharedCode.fit(archetypes, calib_features, config.feature_grid, config.code_dims,
                                      config.code_scaling)
                code.save(extra / code_name)
                values = _encode_all(config, code, images, semantic, vision, bar)
                np.save(extra / code_values_name(code_name), values, allow_pickle=False)
                codes[code_name] = (code, values)
            _simulate_subject(writer, config, s, archetypes, *codes[code_name], plan, calib_features)
        atomic_write_json(extra / "world.json", {"config": config.model_dump(mode="json"),
                                                 "semantic_features": sc.SEMANTIC_FEATURES, "kinds": list(KINDS),
                                                 "code_files": code_files, "vision_model": source["vision_model"]})
    return out


def _simulate_subject(writer: StoreWriter, config: WorldConfig, s: int, archetypes: dict[str, np.ndarray],
                      code: SharedCode, code_values: np.ndarray, plan: StimulusPlan,
                      calib_features: ImageFeatures) -> None:
    """Draw subject ``s``, fit its read-out of the code, and write its trials and betas."""
    name = subject_name(s)
    model = make_subject(config, s, archetypes)
    fit_readout(model, code, calib_features, config.feature_grid)
    set_ncsnr(model, config.noise.code_noise, config.session.trials_per_session)
    trials, position = make_schedule(config, plan.test_ids, plan.train_ids[s], derive_rng(config.seed, "schedule", s))
    roi = np.asarray([f"sim-{KINDS[k]}" for k in model.kind.tolist()])
    kinds = {k: int((model.kind == i).sum()) for i, k in enumerate(KINDS)}
    voxels = VoxelTable(ijk=voxel_coordinates(model, config.voxel_layout), roi=roi)
    betas = writer.add_subject(name, trials, voxels, config.betas_dtype,
                               extra_info={"voxel_kinds": kinds, "voxel_layout": config.voxel_layout})
    gains, offsets = _write_sessions(config, s, model, trials, position, code_values, betas)
    model.save(writer.extra_dir(EXTRA) / f"{name}.safetensors", {"session_gain": gains, "session_offset": offsets})


def code_values_name(code_name: str) -> str:
    """The file holding every stimulus's value of the code saved as ``code_name``."""
    return code_name.replace(".safetensors", "-values.npy")


def _encode_all(config: WorldConfig, code: SharedCode, images, semantic, vision, bar) -> np.ndarray:
    """Every stimulus's shared code (n_stimuli, code_dims): small, so held in memory (and saved: the
    oracle and the ceilings read the exact values the betas were drawn from)."""
    out = np.empty((len(images), config.code_dims), dtype=np.float64)
    for part in bar(list(_chunks(len(images), config.chunk_images)), "encode"):
        out[part] = code.encode(image_features(np.asarray(images[part]), semantic[part], config.feature_grid,
                                               vision), config.feature_grid)
    return out


def _write_sessions(config, s, model: SubjectModel, trials: TrialTable, position, code_values, betas):
    """Betas session by session (bounded memory); returns the sessions' gains and offsets."""
    n_sessions = int(trials.session.max())
    gains = np.empty((n_sessions, model.n_voxels), dtype=np.float32)
    offsets = np.empty((n_sessions, model.n_voxels), dtype=np.float32)
    baseline = derive_rng(config.seed, "baseline", s).normal(0, 1, model.n_voxels)
    for session in range(1, n_sessions + 1):
        rng = derive_rng(config.seed, "session", s, session)
        rows = np.flatnonzero(trials.session == session)
        gain = np.exp(rng.normal(0, config.session.log_gain_sd, model.n_voxels))
        offset = baseline + rng.normal(0, config.session.offset_sd, model.n_voxels)
        slope = rng.normal(0, 1, model.n_voxels) * model.drift_sd
        code_noise = rng.normal(0, np.sqrt(config.noise.code_noise), (rows.size, config.code_dims))
        own_noise = rng.normal(0, 1, (rows.size, model.n_voxels)) * model.noise_sd
        u = session_position(position[rows], config.session.trials_per_session)
        signal = model.signal(code_values[trials.stimulus_id[rows]] + code_noise).astype(np.float64)
        betas[rows] = (gain * (signal + own_noise + u[:, None] * slope) + offset).astype(betas.dtype)
        gains[session - 1], offsets[session - 1] = gain, offset
    return gains, offsets


@dataclass(frozen=True)
class SubjectTruth:
    model: SubjectModel
    code: SharedCode
    session_gain: np.ndarray  # (sessions, V)
    session_offset: np.ndarray  # (sessions, V)


def load_subject_truth(store: Store, subject: str) -> SubjectTruth:
    """The subject's encoding model, its shared code, and per-session gains and offsets."""
    world = json.loads(store.extra_path(f"{EXTRA}/world.json").read_text())
    model, extra = SubjectModel.load(store.extra_path(f"{EXTRA}/{subject}.safetensors"))
    code = SharedCode.load(store.extra_path(f"{EXTRA}/{world['code_files'][subject]}"))
    return SubjectTruth(model, code, extra["session_gain"], extra["session_offset"])


def load_code_values(store: Store, subject: str, stimulus_ids: np.ndarray) -> np.ndarray:
    """The noise-free shared code (n, code_dims) of the given stimuli, as the subject's betas were drawn."""
    world = json.loads(store.extra_path(f"{EXTRA}/world.json").read_text())
    values = np.load(store.extra_path(f"{EXTRA}/{code_values_name(world['code_files'][subject])}"),
                     mmap_mode="r", allow_pickle=False)
    return np.asarray(values[store.stimuli.rows(np.asarray(stimulus_ids))], dtype=np.float64)


def load_world_config(store: Store) -> WorldConfig:
    if store.source.get("kind") != "simulated":
        raise ValueError(f"{store.root} is not a simulated world (source {store.source.get('kind')!r})")
    return WorldConfig.model_validate(store.source["config"])
