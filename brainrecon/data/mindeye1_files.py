"""Import MindEye1's released, preprocessed NSD files (``webdataset_avg_split/``) into a brainrecon store.

MindEye1 (Scotti et al., NeurIPS 2023), §3: NSD single-trial betas of the "nsdgeneral" voxels,
three repeats per image, test = the shared-1000 images. :func:`import_mindeye1` reads the tar shards
of ``webdataset_avg_split/`` from the ``pscotti/naturalscenesdataset`` release; the file layout is
described in docs/nsd.md, "MindEye published files". Shared conventions and helpers are in
:mod:`brainrecon.data.mindeye_common`.

Everything is checked before the store writer opens; the writer builds ``OUT.partial`` and publishes
``OUT`` only when complete, so a failure leaves nothing.
"""

from __future__ import annotations

import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from brainrecon.data.mindeye_common import (
    NORMALIZATION,
    ROI,
    MindEyeSummary,
    MomentAccumulator,
    _check_split,
    _input_records,
    _integer_values,
    _npy,
    _split_summary,
    _subject_name,
    iter_tar_samples,
)
from brainrecon.data.nsd_files import TRIALS_PER_SESSION
from brainrecon.data.tables import StimulusTable, TrialTable, VoxelTable, repeat_index
from brainrecon.data.writer import StoreWriter
from brainrecon.errors import StoreError

ME1_FIX = "Download it again from the Hugging Face dataset pscotti/naturalscenesdataset (see docs/nsd.md)."
ME1_SPLITS = ("train", "val", "test")  # train + val are training data (MindEye1 trains on both)
ME1_ARRAYS = ("nsdgeneral.npy", "coco73k.npy", "trial.npy", "num_uniques.npy")
ME1_IMAGES = ("jpg", "png")


@dataclass(frozen=True)
class MindEye1Paths:
    """Shards of ``webdataset_avg_split/`` (root may be that folder or the folder holding it)."""

    root: Path
    subject: int

    @classmethod
    def locate(cls, root: Path, subject: int) -> MindEye1Paths:
        if (root / "webdataset_avg_split").is_dir():
            root = root / "webdataset_avg_split"
        return cls(root, subject)

    @property
    def name(self) -> str:
        return f"subj{self.subject:02d}"

    @property
    def metadata(self) -> Path:
        return self.root / f"metadata_{self.name}.json"

    def shard(self, split: str, index: int) -> Path:
        return self.root / split / f"{split}_{self.name}_{index}.tar"

    def shards(self, split: str) -> list[Path]:
        """Shards 0..k-1 of a split; a gap in the numbering (a missing shard) is an error."""
        pattern = re.compile(rf"^{split}_{self.name}_(\d+)\.tar$")
        folder = self.root / split
        found = sorted(int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
                       if (m := pattern.match(p.name)))
        if not found:
            raise StoreError(f"{self.shard(split, 0)} is missing: no {split} shards for {self.name} in "
                             f"{folder}. {ME1_FIX}")
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        if missing:
            raise StoreError(f"{self.shard(split, missing[0])} is missing ({split} shards "
                             f"{found[0]}..{found[-1]} are expected without gaps). {ME1_FIX}")
        return [self.shard(split, i) for i in found]


@dataclass
class Me1Sample:
    """What pass 1 learned about one webdataset sample."""

    shard: Path
    key: str
    split: str  # "train", "val" or "test"
    image_id: int
    real_rows: list[int]  # rows of nsdgeneral.npy that are genuine repeats, in stored order
    trials: np.ndarray | None  # global trial of each real row, if trial.npy gives one per repeat


def real_repeat_rows(voxels: np.ndarray, where: str) -> list[int]:
    """Rows of a (3, V) sample that are genuine repeats.

    The 3 rows always exist; a missing repeat is padding (the release gives the count in
    ``num_uniques.npy`` but not the padding). A row is padding if it is all NaN, all zero, or an
    exact copy of an earlier row (MindEye's convention for fewer than 3 repeats is to repeat the
    available ones; two real single-trial betas are never bit-identical).
    """
    rows = []
    for r, row in enumerate(voxels):
        finite = np.isfinite(row)
        if not finite.any() or not np.any(row):
            continue
        if not finite.all():
            raise StoreError(f"{where}: repeat {r} of nsdgeneral.npy has {int((~finite).sum())} NaN/Inf values "
                             f"among real ones; a repeat must be all real or all padding. {ME1_FIX}")
        if any(np.array_equal(row, voxels[k]) for k in rows):
            continue
        rows.append(r)
    return rows


def _scalar(array: np.ndarray, where: str) -> int:
    if array.size != 1:
        raise StoreError(f"{where} must hold one number, got shape {array.shape}. {ME1_FIX}")
    return int(_integer_values(array.ravel(), where, ME1_FIX)[0])


def _per_repeat_trials(trial: np.ndarray, n_rows: int, real_rows: list[int]) -> np.ndarray | None:
    """Global trial numbers of the real repeats, if trial.npy holds one whole number >= 0 per row."""
    flat = trial.ravel()
    if flat.size != n_rows or not np.issubdtype(flat.dtype, np.number):
        return None
    picked = flat[real_rows]
    if not np.all(np.isfinite(picked)) or np.any(picked < 0) or np.any(picked != np.round(picked)):
        return None
    return picked.astype(np.int64)


def _scan_me1_sample(shard: Path, split: str, key: str, members: dict[str, bytes]) -> tuple[Me1Sample, tuple]:
    where = f"{shard} sample {key!r}"
    missing = [s for s in ME1_ARRAYS if s not in members]
    if not any(s in members for s in ME1_IMAGES):
        missing.append("jpg/png")
    if missing:
        raise StoreError(f"{where} lacks member(s) {', '.join(missing)}; is this a MindEye1 webdataset_avg_split "
                         f"shard? {ME1_FIX}")
    voxels = _npy(members["nsdgeneral.npy"], f"{where} nsdgeneral.npy", ME1_FIX)
    if voxels.ndim != 2 or voxels.shape[0] != 3 or not np.issubdtype(voxels.dtype, np.floating):
        raise StoreError(f"{where}: nsdgeneral.npy must be a float array (3, voxels) holding the 3 repeats, got "
                         f"{voxels.dtype} {voxels.shape}. {ME1_FIX}")
    image_id = _scalar(_npy(members["coco73k.npy"], f"{where} coco73k.npy", ME1_FIX), f"{where} coco73k.npy")
    if image_id < 0:
        raise StoreError(f"{where}: coco73k.npy holds {image_id}; 73k indices are 0-based and >= 0. {ME1_FIX}")
    n_uniques = _scalar(_npy(members["num_uniques.npy"], f"{where} num_uniques.npy", ME1_FIX),
                        f"{where} num_uniques.npy")
    real = real_repeat_rows(voxels, where)
    if len(real) != n_uniques:
        raise StoreError(f"{where}: num_uniques.npy says {n_uniques} repeat(s) but nsdgeneral.npy holds {len(real)} "
                         f"distinct non-padding row(s); the sample is inconsistent. {ME1_FIX}")
    trials = _per_repeat_trials(_npy(members["trial.npy"], f"{where} trial.npy", ME1_FIX), 3, real)
    image_format = next(s for s in ME1_IMAGES if s in members)
    size = _image_size(members[image_format], f"{where} {image_format}")
    return Me1Sample(shard, key, split, image_id, real, trials), (voxels.shape[1], size)


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size  # (W, H)
    except (UnidentifiedImageError, OSError) as exc:
        raise StoreError(f"{where} is not a readable image ({exc}). {ME1_FIX}") from None


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise StoreError(f"{where} is not a readable image ({exc}). {ME1_FIX}") from None


def scan_mindeye1(paths: MindEye1Paths, progress: bool) -> tuple[list[Me1Sample], int, tuple[int, int]]:
    """Pass 1 over every shard: per-sample metadata, voxel count and image size, all checked."""
    samples, shapes, counts = [], set(), {}
    for split in ME1_SPLITS:
        shards = paths.shards(split)
        counts[split] = 0
        for shard in tqdm(shards, desc=f"scan {split}", unit="shard", file=sys.stderr, disable=not progress):
            for key, members in iter_tar_samples(shard, set(ME1_ARRAYS) | set(ME1_IMAGES), ME1_FIX):
                sample, shape = _scan_me1_sample(shard, split, key, members)
                if shapes and shape not in shapes:
                    raise StoreError(f"{shard} sample {key!r} has {shape[0]} voxels and a {shape[1][0]}x"
                                     f"{shape[1][1]} image, unlike earlier samples {next(iter(shapes))}; all "
                                     f"samples of a subject must match. {ME1_FIX}")
                shapes.add(shape)
                samples.append(sample)
                counts[split] += 1
    _check_metadata(paths, counts)
    n_voxels, (width, height) = next(iter(shapes))
    return samples, n_voxels, (height, width)


def _check_metadata(paths: MindEye1Paths, counts: dict[str, int]) -> None:
    """metadata_subjAA.json's totals, when the file is present, must match the samples found."""
    if not paths.metadata.is_file():
        return
    try:
        totals = json.loads(paths.metadata.read_text())["totals"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{paths.metadata} is not MindEye1 metadata with 'totals' ({exc}). {ME1_FIX}") from None
    for split, found in counts.items():
        if split in totals and int(totals[split]) != found:
            raise StoreError(f"{paths.metadata} lists {totals[split]} {split} samples but the {split} shards hold "
                             f"{found}; a shard is missing or incomplete. {ME1_FIX}")


@dataclass
class Me1Plan:
    """Where every real repeat of every sample goes in the store."""

    image_ids: np.ndarray  # per trial row
    sessions: np.ndarray
    repeats: np.ndarray
    is_test: np.ndarray
    destination: list[np.ndarray]  # per sample: trial rows of its real repeats
    global_trials_known: bool


def plan_mindeye1(samples: list[Me1Sample]) -> Me1Plan:
    """Trial order: by global trial when every sample gives per-repeat trial numbers, else sample order."""
    ids = np.asarray([s.image_id for s in samples], dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        image = unique[counts > 1][0]
        where = [f"{s.shard} ({s.key})" for s in samples if s.image_id == image][:2]
        raise StoreError(f"73k image {image} has more than one sample ({' and '.join(where)}); MindEye1 stores one "
                         f"sample per image. The shards are mixed up. {ME1_FIX}")
    n_real = np.asarray([len(s.real_rows) for s in samples], dtype=np.int64)
    image_ids = np.repeat(ids, n_real)
    is_test = np.repeat([s.split == "test" for s in samples], n_real)
    known = all(s.trials is not None for s in samples)
    if known:
        global_trials = np.concatenate([s.trials for s in samples])
        values, seen = np.unique(global_trials, return_counts=True)
        if np.any(seen > 1):
            raise StoreError(f"trial.npy lists global trial {values[seen > 1][0]} in more than one repeat; each "
                             f"trial must occur once. The shards are mixed up. {ME1_FIX}")
        order = np.argsort(global_trials, kind="stable")
        sessions = global_trials[order] // TRIALS_PER_SESSION + 1
        repeats = repeat_index(image_ids[order])
    else:
        order = np.arange(len(image_ids))
        sessions = np.ones(len(image_ids), dtype=np.int64)
        repeats = np.concatenate([np.arange(n) for n in n_real]).astype(np.int64)
    row_of = np.empty(len(order), dtype=np.int64)
    row_of[order] = np.arange(len(order))  # position before sorting -> trial row
    bounds = np.concatenate([[0], np.cumsum(n_real)])
    destination = [row_of[bounds[i]:bounds[i + 1]] for i in range(len(samples))]
    return Me1Plan(image_ids[order], sessions, repeats, is_test[order], destination, known)


def import_mindeye1(root: str | Path, subject: int, out: str | Path, *, overwrite: bool = False,
                    progress: bool = True) -> MindEyeSummary:
    """Import one subject from MindEye1's ``webdataset_avg_split/`` (``pscotti/naturalscenesdataset``).

    Reads (layout: docs/nsd.md) ``train/train_subjAA_{0..}.tar``, ``val/val_subjAA_{0..}.tar`` and
    ``test/test_subjAA_{0..}.tar`` (plain POSIX tars, webdataset member names ``<key>.<suffix>``) and,
    when present, ``metadata_subjAA.json`` (its ``totals`` are checked against the samples). Each
    sample is one image: ``nsdgeneral.npy`` (3, V) its 3 repeats, ``coco73k.npy`` its 0-based 73k
    index, ``trial.npy``, ``num_uniques.npy`` its number of real repeats, and the image as ``jpg`` or
    ``png``. The shards are read twice (pass 1 plans and checks everything, pass 2 writes), so memory
    holds one sample at a time.

    Conventions:

    * **Repeats.** One trial row per *real* repeat. Padding rows of images seen fewer than 3 times
      (all NaN, all zero, or copies of an earlier row) are dropped; their number must agree with
      ``num_uniques.npy``.
    * **Sessions and order.** When ``trial.npy`` holds one whole number >= 0 per repeat in every
      sample, it is taken as the 0-based global trial (MindEye2's convention): trials are stored in
      that order, session = trial // 750 + 1, repeat = earlier presentations. Otherwise sessions are
      unknown: every trial gets session 1, trials follow the shards (train, val, test) and repeat =
      position among the sample's real repeats.
    * **Split.** train + val shards -> "train" (MindEye1 trains on both); test shards -> "test".
    * **Images** are decoded to RGB uint8 at their stored size (256 x 256 for the real data).
    * **Normalisation** ``session-zscore-all``: MindEye1's betas come from an unreleased pipeline
      (fMRI-reconstruction-NSD GitHub issue #48) in the per-session z-scoring lineage, whose only
      public code (MindEye2's notebook) uses all of a session's trials; the store therefore uses
      them as stored and evaluation flags the possible test-statistics leak. Moments of the
      imported betas are recorded as ``betas_moments``.
    """
    root = Path(root)
    name = _subject_name(subject)
    if not root.is_dir():
        raise StoreError(f"MindEye1 root {root} is not a folder; pass --root the webdataset_avg_split folder "
                         f"(or the folder holding it).")
    paths = MindEye1Paths.locate(root, int(subject))
    samples, n_voxels, (height, width) = scan_mindeye1(paths, progress)
    plan = plan_mindeye1(samples)
    _check_split(plan.image_ids, plan.is_test, f"the shards in {paths.root}",
                 "Check that the test shards belong to this subject.")

    stimulus_ids = np.unique(plan.image_ids)
    image_row = {int(i): r for r, i in enumerate(stimulus_ids.tolist())}
    trials = TrialTable(stimulus_id=plan.image_ids, session=plan.sessions, repeat=plan.repeats,
                        split=np.where(plan.is_test, "test", "train"))
    table = StimulusTable(stimulus_id=stimulus_ids, captions=[[] for _ in stimulus_ids],
                          source_id=[str(i) for i in stimulus_ids.tolist()])
    shards = [s for split in ME1_SPLITS for s in paths.shards(split)]
    inputs = shards + ([paths.metadata] if paths.metadata.is_file() else [])
    source = _mindeye1_source(paths, plan.global_trials_known)
    summary = {"mindeye_subject": int(subject), "global_trials_known": plan.global_trials_known,
               **_split_summary(plan.image_ids, plan.is_test)}

    with StoreWriter(out, source, overwrite=overwrite) as writer:
        images = writer.write_stimuli(table, image_shape=(height, width, 3))
        moments = MomentAccumulator(n_voxels)
        betas = writer.add_subject(name, trials, VoxelTable.unknown(n_voxels, np.full(n_voxels, ROI)),
                                   normalization=NORMALIZATION, extra_info=summary)
        _write_mindeye1(samples, plan, images, image_row, betas, moments, progress)
        source["betas_moments"] = moments.summary()  # the writer reads `source` when it closes
        source["inputs"] = _input_records(inputs, paths.root, progress)
    return MindEyeSummary(out=Path(out), subject=name,
                          sessions=int(plan.sessions.max()) if plan.global_trials_known else None,
                          n_stimuli=len(table), n_voxels=n_voxels, info=summary)


def _mindeye1_source(paths: MindEye1Paths, global_trials_known: bool) -> dict:
    """The manifest's record of what was read and how it was interpreted (checksums are added later)."""
    session_rule = ("global trial // 750 + 1 (trial.npy read as the 0-based global trial of each repeat)"
                    if global_trials_known else "unknown (trial.npy gives no per-repeat trial): 1 for all")
    return {"kind": "mindeye1", "root": str(paths.root.resolve()), "brainrecon_function": "import_mindeye1",
            "options": {"subject": paths.subject},
            "conventions": {
                "stimulus_id": "NSD 73k index, 0-based (coco73k.npy)",
                "repeats": "one trial per real repeat; all-NaN, all-zero or duplicated rows are padding",
                "trial_order": "global trial" if global_trials_known else "shard order (train, val, test)",
                "session": session_rule,
                "split": "test = test shards; train = train + val shards",
                "images": "decoded jpg/png as RGB uint8 at stored size",
                "normalization": "session-zscore-all: MindEye1's (unreleased) normalisation, used as stored"}}


def _write_mindeye1(samples: list[Me1Sample], plan: Me1Plan, images: np.ndarray, image_row: dict[int, int],
                    betas: np.ndarray, moments: MomentAccumulator, progress: bool) -> None:
    """Pass 2: each sample's real repeats to their trial rows, its image to its stimulus row."""
    by_key = {(s.shard, s.key): (s, dest) for s, dest in zip(samples, plan.destination, strict=True)}
    for shard in tqdm(list(dict.fromkeys(s.shard for s in samples)), desc="write", unit="shard",
                      file=sys.stderr, disable=not progress):
        for key, members in iter_tar_samples(shard, {"nsdgeneral.npy", *ME1_IMAGES}, ME1_FIX):
            where = f"{shard} sample {key!r}"
            if (shard, key) not in by_key or "nsdgeneral.npy" not in members:
                raise StoreError(f"{where} was not there (or not complete) when the shards were first read: the "
                                 f"file changed during the import. Run the import again.")
            sample, dest = by_key[(shard, key)]
            voxels = _npy(members["nsdgeneral.npy"], f"{where} nsdgeneral.npy", ME1_FIX)
            rows = np.asarray(voxels[sample.real_rows], dtype=np.float32)
            betas[dest] = rows
            moments.add(rows, plan.sessions[dest], plan.is_test[dest])
            image_format = next(s for s in ME1_IMAGES if s in members)
            image = _decode_image(members[image_format], f"{where} {image_format}")
            if image.shape != images.shape[1:]:
                raise StoreError(f"{where} {image_format} decodes to {image.shape}, unlike the other images "
                                 f"{images.shape[1:]}. {ME1_FIX}")
            images[image_row[sample.image_id]] = image
