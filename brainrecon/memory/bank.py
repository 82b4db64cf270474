"""A searchable bank of images embedded with CLIP: MindEye1's LAION-5B retrieval, run locally.

MindEye1 reported "retrieval" reconstructions by querying the hosted
LAION-5B CLIP-retrieval service with the brain-predicted embedding; that
service no longer exists. An `ImageBank` does the same over any local image
folder: `build_bank` embeds every image with an embedder's `.pooled` (e.g.
`ClipImageEmbedder`), and `ImageBank.search` returns the images whose
embeddings have the highest cosine with a query.

Building is resumable: embeddings are written in shards of `shard_size`
images, each atomically, and a rerun skips the shards that exist, so an
interrupted build of millions of images loses at most one shard. The index is
made at the end from the shards:

- "exact" (IndexFlatIP): 4 * dim bytes an image (2 GB per million at dim 512);
- "ivfpq": inverted lists + 8-bit product quantisation, dim / 8 bytes of code
  plus an 8-byte id an image (72 MB per million at dim 512), approximate scores;
- "hnsw" / "ivf": faster search over uncompressed vectors;
- "auto": exact below 200,000 images, ivfpq above.

Layout of a bank directory::

    bank.json         settings, image folder, counts, status ("building" until the index is written)
    paths.txt         image paths relative to the image folder, one a line, in index order
    shards/shard-00000.npy ...   (n, dim) float32 L2-normalised embeddings
    index.faiss
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from brainrecon.io import atomic_save_npy, atomic_write_json, atomic_write_text, check_output_dir
from brainrecon.memory._arrays import l2_normalize, to_numpy
from brainrecon.memory._files import read_faiss_index, write_faiss_index
from brainrecon.memory._index import (
    configure_search,
    faiss_search,
    fill_index,
    make_index,
    sample_rows,
    training_sample_size,
)
from brainrecon.memory.errors import BankError

FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
BANK_INDEX_KINDS = ("exact", "ivf", "ivfpq", "hnsw", "auto")
AUTO_EXACT_BELOW = 200_000


def list_images(image_dir: str | Path) -> list[str]:
    """Image files under `image_dir` (recursively), as sorted POSIX paths relative to it."""
    root = Path(image_dir)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(found)


def load_image(path: Path, image_size: int | None) -> np.ndarray:
    """uint8 (H, W, 3); with `image_size`, resized (shorter side) and centre-cropped to a square.

    CLIP preprocessing does the same resize and crop, so pre-applying it at the
    model's input size loses nothing, and it lets images of any size share a batch.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image_size is not None:
                width, height = image.size
                scale = image_size / min(width, height)
                size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
                image = image.resize(size, Image.BICUBIC)
                left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
                image = image.crop((left, top, left + image_size, top + image_size))
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BankError(f"cannot read image {path}: {exc}; fix or remove it and run build_bank again "
                        f"(finished shards are kept)") from None


def _embed(embedder, images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Embed a batch; images of different sizes (image_size=None) are embedded in same-size groups."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    out = None
    for members in groups.values():
        part = to_numpy(embedder.pooled(np.stack([images[i] for i in members])), np.float32)
        if part.ndim != 2 or part.shape[0] != len(members):
            raise BankError(f"embedder.pooled returned shape {part.shape} for {len(members)} images "
                            f"(first: {names[members[0]]}); it must return (n_images, dim)")
        if not np.isfinite(part).all():
            raise BankError(f"embedder.pooled returned non-finite values for a batch starting at {names[members[0]]}")
        if out is None:
            out = np.empty((len(images), part.shape[1]), np.float32)
        out[members] = part
    return out


def _files_digest(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / "shards" / f"shard-{shard:05d}.npy"


def _shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def resolve_bank_index(kind: str, n: int) -> str:
    if kind not in BANK_INDEX_KINDS:
        raise BankError(f"unknown index kind {kind!r}; choose one of {', '.join(BANK_INDEX_KINDS)}")
    if kind == "auto":
        return "exact" if n < AUTO_EXACT_BELOW else "ivfpq"
    if kind == "ivfpq" and n < 256 * 39:
        raise BankError(f"index 'ivfpq' needs at least {256 * 39} images to train its codebooks; this bank has "
                        f"{n}: use index='exact' (compression does not matter at this size)")
    return kind


def build_bank(image_dir: str | Path, embedder, out_dir: str | Path, batch_size: int = 64, index: str = "auto",
               resume: bool = True, *, shard_size: int = 8192, image_size: int | None = 224,
               nprobe: int = 32, hnsw_ef_search: int = 128, workers: int = 4, progress: bool = True) -> ImageBank:
    """Embed every image under `image_dir` with `embedder.pooled` and index them in `out_dir`.

    embedder: any object with `.pooled(uint8 (n, H, W, 3)) -> (n, dim)`.
    resume=True reuses the finished shards of an interrupted build of the same
    folder (same files, shard size and image size); resume=False starts over.
    image_size: images are resized and centre-cropped to this square before
    embedding (None: embed them as they are, grouped by size).
    """
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise BankError(f"image folder {image_dir} does not exist")
    if batch_size < 1 or shard_size < 1:
        raise BankError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be positive")
    # a file, or a folder of something else, is refused; a bank's own folder is resumed or started over below
    check_output_dir(out_dir, "an image bank", lambda path: (path / "bank.json").is_file(), overwrite=True,
                     flag="out_dir")
    paths = list_images(image_dir)
    if not paths:
        raise BankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {image_dir}; point build_bank at a "
                        f"folder of images")
    kind = resolve_bank_index(index, len(paths))
    settings = {"format": "brainrecon.image_bank", "format_version": FORMAT_VERSION,
                "image_dir": str(image_dir.resolve()), "n_images": len(paths), "files_sha256": _files_digest(paths),
                "shard_size": shard_size, "image_size": image_size}
    meta_path = out_dir / "bank.json"
    if meta_path.is_file() and resume:
        previous = json.loads(meta_path.read_text())
        changed = [key for key in ("format_version", "files_sha256", "shard_size", "image_size")
                   if previous.get(key) != settings[key]]
        if changed:
            raise BankError(f"{out_dir} holds a build with different {changed} (e.g. images were added or removed "
                            f"since: {previous.get('n_images')} then, {len(paths)} now); pass resume=False to "
                            f"start over, or use another out_dir")
    elif not resume:
        for stale in sorted((out_dir / "shards").glob("shard-*.npy")):
            stale.unlink()
        (out_dir / "index.faiss").unlink(missing_ok=True)
    atomic_write_json(meta_path, {**settings, "status": "building"})
    atomic_write_text(out_dir / "paths.txt", "\n".join(paths) + "\n")

    ranges = _shard_ranges(len(paths), shard_size)
    dim = None
    todo = []
    for shard, (start, stop) in enumerate(ranges):
        path = _shard_path(out_dir, shard)
        if path.is_file():
            try:
                existing = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                existing = None  # unreadable: recompute it
            if existing is not None and existing.ndim == 2 and existing.shape[0] == stop - start:
                if dim is not None and existing.shape[1] != dim:
                    raise BankError(f"{path} has dim {existing.shape[1]} but other shards have {dim}; pass "
                                    f"resume=False to start over")
                dim = existing.shape[1]
                continue
        todo.append(shard)

    with tqdm(total=len(paths), initial=len(paths) - sum(ranges[s][1] - ranges[s][0] for s in todo),
              desc="embedding image bank", unit="img", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard in todo:
            start, stop = ranges[shard]
            parts = []
            for batch_start in range(start, stop, batch_size):
                names = paths[batch_start:min(batch_start + batch_size, stop)]
                images = list(pool.map(lambda name: load_image(image_dir / name, image_size), names))
                embedded = _embed(embedder, images, names)
                if dim is not None and embedded.shape[1] != dim:
                    raise BankError(f"the embedder returns dim {embedded.shape[1]}, but the bank's finished shards "
                                    f"have dim {dim}: was the build resumed with another embedder? pass "
                                    f"resume=False to start over")
                dim = embedded.shape[1]
                parts.append(l2_normalize(embedded))
                bar.update(len(names))
            atomic_save_npy(_shard_path(out_dir, shard), np.concatenate(parts).astype(np.float32))

    def shards():
        for shard in range(len(ranges)):
            yield np.load(_shard_path(out_dir, shard))

    faiss_index = make_index(kind, dim, len(paths))
    rows = sample_rows(len(paths), training_sample_size(faiss_index, len(paths)))
    training = None
    if len(rows):
        training = np.concatenate([np.load(_shard_path(out_dir, s), mmap_mode="r")[
            rows[(rows >= a) & (rows < b)] - a] for s, (a, b) in enumerate(ranges)])
    fill_index(faiss_index, shards(), training=training)
    write_faiss_index(faiss_index, out_dir / "index.faiss")
    atomic_write_json(meta_path, {**settings, "status": "complete", "dim": int(dim), "index_kind": kind,
                                  "nprobe": nprobe, "hnsw_ef_search": hnsw_ef_search,
                                  "index_bytes": (out_dir / "index.faiss").stat().st_size})
    return ImageBank.load(out_dir)


class ImageBank:
    """A built image bank: cosine top-k search from query embeddings to image paths."""

    def __init__(self, directory: Path, meta: dict, paths: list[str], index):
        self.directory, self.meta, self.paths, self.index = directory, meta, paths, index
        self.image_dir = Path(meta["image_dir"])

    @classmethod
    def load(cls, directory: str | Path) -> ImageBank:
        directory = Path(directory)
        meta_path = directory / "bank.json"
        if not meta_path.is_file():
            raise BankError(f"{directory} is not an image bank (no bank.json); make one with build_bank(...)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "brainrecon.image_bank" or meta.get("format_version") != FORMAT_VERSION:
            raise BankError(f"{meta_path} is not an image bank of format version {FORMAT_VERSION}; rebuild it")
        if meta.get("status") != "complete":
            raise BankError(f"the build of {directory} did not finish; run build_bank(...) again with "
                            f"resume=True to complete it")
        for name in ("paths.txt", "index.faiss"):
            if not (directory / name).is_file():
                raise BankError(f"{directory / name} is missing; run build_bank(...) again (resume=True)")
        paths = (directory / "paths.txt").read_text().splitlines()
        try:
            index = read_faiss_index(directory / "index.faiss")
        except RuntimeError as exc:
            raise BankError(f"cannot read {directory / 'index.faiss'}: {exc}; run build_bank(...) again") from None
        if index.ntotal != len(paths) or index.ntotal != meta["n_images"] or index.d != meta["dim"]:
            raise BankError(f"{directory}: index has {index.ntotal} vectors of dim {index.d}, paths.txt "
                            f"{len(paths)} lines, bank.json {meta['n_images']} images of dim {meta['dim']}; "
                            f"run build_bank(..., resume=True) again to rebuild the index")
        return cls(directory, meta, paths, index)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def index_kind(self) -> str:
        return self.meta["index_kind"]

    def search(self, queries, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k images per query: (scores (B, k) float32 cosine, paths: B lists of k image paths, best first).

        queries: (B, dim) embeddings in the bank's space (e.g. a brain model's
        predicted CLIP image embedding); normalised here.
        """
        queries = to_numpy(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BankError(f"queries have shape {queries.shape}, but this bank holds dim-{self.dim} embeddings; "
                            f"embed the queries in the same space as the bank (same CLIP model)")
        if not 1 <= k <= len(self):
            raise BankError(f"k = {k} must be between 1 and the bank's {len(self)} images")
        configure_search(self.index, k, nprobe=self.meta.get("nprobe", 32),
                         hnsw_ef_search=self.meta.get("hnsw_ef_search", 128))
        scores, indices = faiss_search(self.index, l2_normalize(queries), k)
        paths = [[str(self.image_dir / self.paths[i]) if i >= 0 else "" for i in row] for row in indices]
        return scores.astype(np.float32), paths

    def __repr__(self) -> str:
        return f"ImageBank({self.directory}, images={len(self)}, dim={self.dim}, index={self.index_kind!r})"


__all__ = ["IMAGE_EXTENSIONS", "ImageBank", "build_bank", "list_images", "load_image", "resolve_bank_index"]
