"""`brainrecon demo`: the main job on the simulated world, end to end.

simulate a world -> fit ridge decoders -> 300-way retrieval against the Bayes-optimal
oracle -> (with the shipped small model set) decode brain-predicted CLIP embeddings
into images. Every figure it prints is measured here; nothing is selected by looking at
the true image (one sample per embedding, no selection at all).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainrecon import __version__
from brainrecon.baseline import ceiling_table, fit_ridge_decoder, format_table
from brainrecon.config import load_config
from brainrecon.data import Store, open_store
from brainrecon.data.simworld import WorldConfig, simulate_world
from brainrecon.errors import BrainreconError
from brainrecon.evaluate.retrieval import RetrievalScore, cosine_scores, retrieval_top1
from brainrecon.io import atomic_write_json, atomic_write_text

SIMULATED_NOTE = ("Simulated world: a testbed with a known ceiling. These figures are not NSD results and are "
                  "not comparable with published tables.")


@dataclass(frozen=True)
class Reconstructions:
    subject: str
    stimulus_ids: np.ndarray
    originals: np.ndarray  # uint8 (n, H, W, 3)
    from_truth: np.ndarray  # decoded from the true small-CLIP embedding (the decoder's ceiling)
    from_brain: np.ndarray  # decoded from the ridge-predicted embedding
    clip_retrieval: RetrievalScore  # ridge into small-CLIP space, 300-way
    two_way_brain: float  # two-way identification of from_brain in small-CLIP space (chance 0.5)
    two_way_truth: float

    def to_dict(self) -> dict:
        return {"subject": self.subject, "n_images": int(len(self.stimulus_ids)),
                "stimulus_ids": self.stimulus_ids.tolist(), "selection": "none (one sample per embedding)",
                "ridge_small_clip_retrieval": self.clip_retrieval.to_dict(),
                "two_way_identification_from_brain": self.two_way_brain,
                "two_way_identification_from_true_embedding": self.two_way_truth}


def reconstruct_with_assets(store: Store, subject: str, assets: Path, n_images: int = 30, steps: int = 25,
                            seed: int = 0) -> Reconstructions:
    """Ridge from voxels to the small CLIP's pooled embedding, then decode with the small unCLIP decoder."""
    from brainrecon.embed.clip import ClipImageEmbedder
    from brainrecon.evaluate.metrics import two_way_identification
    from brainrecon.generate.base import GenerationRequest, quiet_model_loading
    from brainrecon.generate.unclip import UnclipGenerator

    quiet_model_loading()
    embedder = ClipImageEmbedder(assets / "clip", batch_size=128)
    ridge, mean, std = fit_ridge_decoder(store, subject, embedder.pooled)
    test = store.subject(subject).test()
    predicted = ridge.predict(test.betas).numpy() * std + mean
    truth = embedder.pooled(store.images_for(test.stimulus_ids))
    retrieval = retrieval_top1(cosine_scores(predicted, truth))

    pick = np.arange(min(n_images, len(test)))
    generator = UnclipGenerator(assets / "decoder", batch_size=32)
    decode = lambda embeds: generator.generate(GenerationRequest(  # noqa: E731
        image_pooled=embeds.astype(np.float32), steps=steps, seed=seed))
    from_brain, from_truth = decode(predicted[pick]), decode(truth[pick])
    originals = store.images_for(test.stimulus_ids[pick])
    reference = embedder.pooled(originals)
    return Reconstructions(subject, test.stimulus_ids[pick], originals, from_truth, from_brain, retrieval,
                           two_way_identification(reference, embedder.pooled(from_brain)),
                           two_way_identification(reference, embedder.pooled(from_truth)))


def save_reconstruction_grid(rec: Reconstructions, path: Path, columns: int = 10, scale: int = 2) -> None:
    """Blocks of three rows: originals, decoded from the true embedding, decoded from the brain."""
    from PIL import Image

    size, gap = rec.originals.shape[1] * scale, 4
    blocks = int(np.ceil(len(rec.originals) / columns))
    canvas = Image.new("RGB", (columns * (size + gap) + gap, blocks * (3 * size + 4 * gap) + gap), "white")
    for i in range(len(rec.originals)):
        block, col = divmod(i, columns)
        for row, images in enumerate((rec.originals, rec.from_truth, rec.from_brain)):
            tile = Image.fromarray(images[i]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (gap + col * (size + gap), gap + block * (3 * size + 4 * gap) + row * (size + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run_demo(out: Path, config: str = "default", progress: bool = True, echo=print) -> dict:
    """Run the demo into ``out`` (replacing an earlier demo there); return what it wrote to results.json."""
    from brainrecon.assets import SIMWORLD_ASSETS

    marker = out / "demo.json"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise BrainreconError(f"{out} exists and was not made by `brainrecon demo`; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    world = load_config(WorldConfig, config, "worlds")
    started = time.perf_counter()
    simulate_world(world, out / "store", overwrite=True, progress=progress)
    seconds = {"simulate": time.perf_counter() - started}
    echo(f"1/3 simulated {world.n_subjects} subjects ({world.n_train_images} training + {world.n_test_images} "
         f"shared test images each, {world.n_repeats} repeats) in {seconds['simulate']:.1f} s -> {out / 'store'}")
    store = open_store(out / "store")
    started = time.perf_counter()
    results = ceiling_table(store)
    seconds["ridge_and_oracle"] = time.perf_counter() - started
    table = format_table(results)
    echo(f"2/3 fitted ridge decoders and the Bayes-optimal oracle in {seconds['ridge_and_oracle']:.1f} s\n")
    echo(table + "\n")
    summary = {"brainrecon_version": __version__, "python": platform.python_version(), "data_source": "simulated",
               "world": world.model_dump(mode="json"), "note": SIMULATED_NOTE, "seconds": seconds,
               "subjects": [r.to_dict() for r in results]}
    report = f"# brainrecon demo\n\n## Retrieval\n\n{table}\n"
    if (SIMWORLD_ASSETS / "manifest.json").is_file():
        started = time.perf_counter()
        rec = reconstruct_with_assets(store, store.subjects[0], SIMWORLD_ASSETS)
        seconds["reconstruct"] = time.perf_counter() - started
        save_reconstruction_grid(rec, out / "reconstructions.png")
        summary["reconstructions"] = rec.to_dict()
        r = rec.clip_retrieval
        lines = (f"3/3 reconstructed {len(rec.stimulus_ids)} test images of {rec.subject} in "
                 f"{seconds['reconstruct']:.1f} s (ridge -> small-CLIP embedding -> small unCLIP decoder; one "
                 f"sample per embedding, no selection)\n"
                 f"    ridge in small-CLIP space, 300-way: image {100 * r.image_top1:.1f}%, brain "
                 f"{100 * r.brain_top1:.1f}% (chance {100 * r.chance:.2f}%)\n"
                 f"    two-way identification of the reconstructions (small CLIP, chance 50%): from brain "
                 f"{100 * rec.two_way_brain:.1f}%, from the true embedding {100 * rec.two_way_truth:.1f}%\n"
                 f"    grid (original / from true embedding / from brain): {out / 'reconstructions.png'}")
        echo(lines)
        report += f"\n## Reconstructions\n\n![reconstructions](reconstructions.png)\n\n```\n{lines}\n```\n"
    else:
        echo("3/3 skipped reconstruction: the small model set is not installed (brainrecon/assets/simworld)")
    echo(f"\n{SIMULATED_NOTE}")
    atomic_write_text(out / "report.md", report + f"\n{SIMULATED_NOTE}\n")
    atomic_write_text(out / "retrieval.md", f"# brainrecon demo: retrieval\n\n{table}\n\n{SIMULATED_NOTE}\n")
    atomic_write_json(out / "results.json", summary)
    atomic_write_json(marker, {"brainrecon_version": __version__, "config": config})
    echo(f"Wrote {out / 'results.json'}, {out / 'report.md'}")
    return summary
