"""`brainrecon bench leaderboard`: every model on one simulated world, against the Bayes-optimal oracle.

    simulate the world -> for each model: train its sim preset (a child process, so its peak
    memory is its own) -> evaluate (retrieval, embedding cosine) -> reconstruct the first N test
    images of the common subject -> evaluate them -> one row
    + Psychometry with Ecphory (the same run, memories fused at the embedding and image level)
    + the oracle row -> leaderboard.json + leaderboard.md

Every figure is subj01's, the one subject every preset trains on (single-subject presets train
only it). Rows are written as they finish and skipped when present, so an interrupted leaderboard
resumes where it stopped. Simulated-world figures are a testbed, not NSD results.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from brainrecon.config import StrictConfig, load_config, validate_config
from brainrecon.data import open_store
from brainrecon.data.store import Store
from brainrecon.data.simworld import SIMULATED_NOTE, WorldConfig, simulate_world
from brainrecon.errors import ConfigError
from brainrecon.evaluate.ceilings import SPACE_LABELS, SPACE_OF_TARGET, space_targets, subject_ceilings
from brainrecon.evaluate.choice import make_choices
from brainrecon.evaluate.ecphory import ecphory_embedding_scores
from brainrecon.evaluate.evaluation import (EvaluateConfig, evaluate_run, feature_encoders, read_manifest,
                                            read_reconstructions, student_t_interval)
from brainrecon.evaluate.metrics import PROTOCOL_SIZE, pixcorr, score_with_network, ssim
from brainrecon.io import atomic_write_json, atomic_write_text
from brainrecon.models import model_class
from brainrecon.provenance import source_commit
from brainrecon.report.figures import validation_curves
from brainrecon.memory.choice import EcphoryGrid, EcphorySetting, paired_gain
from brainrecon.reconstruct import ReconstructConfig
from brainrecon.reconstruct import reconstruct as run_reconstruct
from brainrecon.train.config import TrainConfig
from brainrecon.train.run import RunContext, load_run

SUBJECT = "subj01"
IMAGE_METRICS = ("pixcorr", "ssim", "clip")  # those the simulated world can score (no AlexNet/Inception files)


ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
SEED_RUN = re.compile(r"-seed[0-9]+$")


def _distinct_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; list each training seed once")
    return seeds


# a bench's training seeds: at least one, each once (every seed past the first trains runs named NAME-seedN)
TrainingSeeds = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct_seeds)]


class Variant(StrictConfig):
    """An extra row: a model's sim preset with changes (an ablation), e.g. Psychometry with `moe: dense`."""

    model: str
    label: str
    train_overrides: dict[str, Any] = {}  # merged over the leaderboard's own train_overrides, one level deep
    # the earlier row it is paired with seed by seed (default: the first earlier row of the same model), e.g. an
    # ablation trained for longer against the model trained for as long
    against: str | None = None
    # this row's training seeds in place of the bench's, e.g. more of them where the row's question (does it beat
    # the ridge of its space?) needs a narrower interval; paired rows are compared over the seeds they share
    seeds: TrainingSeeds | None = None


class LeaderboardConfig(StrictConfig):
    world: str = "default"  # a world preset (configs/worlds) or YAML path
    models: list[str] = ["ridge", "mindeye1", "mindeye2", "mindbridge", "mindreader", "psychometry"]
    train_overrides: dict[str, Any] = {}  # merged into every sim-<model> preset (e.g. max_steps for a smoke run)
    # training seeds per model: the first seed's run is the row (reconstructed and scored in full); every seed's
    # held-out image retrieval gives the row's mean and 95% CI over seeds. A closed-form fit trains once.
    seeds: TrainingSeeds = [0]
    # a shipped model's row's own training seeds in place of the bench's, as a variant's `seeds`, e.g.
    # `{mindeye2: [0, ..., 7]}` where a variant is paired against that row over more seeds than the bench's
    model_seeds: dict[str, TrainingSeeds] = {}
    variants: dict[str, Variant] = {}  # extra rows by name, after the models
    recon_images: int = 30  # test images of subj01 reconstructed per row
    recon_steps: int = 25
    samples: int = 4  # samples per image in every row (with or without Ecphory); honest selection
    ecphory_grid: EcphoryGrid = EcphoryGrid()  # what the Ecphory row's run tries on its held-out training stimuli
    way: int = 300
    draws: int = 30
    seed: int = 42

    @model_validator(mode="after")
    def _rows_are_known_and_train(self) -> LeaderboardConfig:
        # checked before the world is simulated: a typo in a variant fails in a second, not after an hour
        unknown = [m for m in [*self.models, *(v.model for v in self.variants.values())] if m not in LABELS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(LABELS)}")
        if stray := sorted(set(self.model_seeds) - set(self.models)):
            raise ValueError(f"model_seeds names {stray}, which are not in models {self.models}; give a variant its "
                             f"own seeds under `seeds` in the variant")
        taken = set(self.models) | {"psychometry+ecphory"}
        if clash := sorted(taken & set(self.variants)):
            raise ValueError(f"variant name(s) {clash} are already row names; rename the variants")
        # a row's name names its files (rows/NAME.json, runs/NAME) and its extra seeds' runs (runs/NAME-seedN)
        if bad := sorted(name for name in self.variants if not ROW_NAME.fullmatch(name) or SEED_RUN.search(name)):
            raise ValueError(f"variant name(s) {bad} cannot name a row's files: use letters, digits and . _ + -, "
                             f"not ending in -seed<N> (the name of a row's extra training seeds)")
        earlier = list(self.models)
        for name, variant in self.variants.items():
            if variant.against is not None and variant.against not in earlier:
                raise ValueError(f"variant {name!r} is paired against {variant.against!r}, which is not an earlier "
                                 f"row; name one of {earlier}")
            earlier.append(name)
        load_config(WorldConfig, self.world, "worlds")  # a bad world is refused before the bench folder is claimed
        for name, model, overrides, _, _ in planned_rows(self):
            validate_config(TrainConfig, sim_train_config(model, overrides, self.way, self.draws, self.seed, seed=0),
                            source=f"the {name!r} row's training config")
        return self


def row_seeds(config: LeaderboardConfig, name: str) -> list[int]:
    """The training seeds of the row ``name``: its own (a variant's `seeds`, a model's `model_seeds`), else the
    bench's."""
    variant = config.variants.get(name)
    own = variant.seeds if variant is not None else config.model_seeds.get(name)
    return own or config.seeds


def sim_train_config(model: str, overrides: dict[str, Any], way: int, draws: int, eval_seed: int,
                     **fixed: Any) -> dict:
    """A `sim-<model>` preset with the bench's evaluation protocol, ``fixed`` keys and ``overrides`` merged in.

    Mapping overrides are merged one level deep (``batch_size: 8`` replaces, ``optim: {lr: ..}`` updates).
    """
    preset = load_config(TrainConfig, f"sim-{model}", "train").model_dump(mode="json")
    preset.update(fixed, eval={**preset["eval"], "way": way, "draws": draws, "seed": eval_seed})
    return merged_overrides(preset, overrides)


def _world_by_content(config: dict) -> dict:
    """A bench config with its world (a preset name or YAML path) replaced by the world's config, so that two
    names for one world are one bench: the folder of a bench begun on `benchmarks/worlds/X.yaml` goes on as the
    same bench once X is the `default` preset. A name that no longer resolves is compared as written. A world
    whose content changed under the same name is caught by the store checks (`bench_world`), not here."""
    world = config.get("world")
    if not isinstance(world, str):
        return config
    try:
        return {**config, "world": load_config(WorldConfig, world, "worlds").model_dump(mode="json")}
    except ConfigError:
        return config


def _own_seeds_saved(config: dict, name: str) -> list[int] | None:
    """A row's own training seeds in a saved (JSON) config, None where it has the bench's. A config saved before
    variants could list seeds, or before `model_seeds`, gives its rows none."""
    variant = config.get("variants", {}).get(name)
    return (variant or {}).get("seeds") if variant is not None else (config.get("model_seeds") or {}).get(name)


def _row_seeds_saved(config: dict, name: str) -> list[int]:
    """`row_seeds` of a saved (JSON) config."""
    return _own_seeds_saved(config, name) or config.get("seeds", [0])


def _extends(saved: dict, wanted: dict) -> bool:
    """Whether ``wanted`` is the ``saved`` leaderboard config with variant rows added, or training seeds added
    after a row's saved ones, and nothing else changed: the rows already made stay what they were, so the bench
    goes on, makes the new rows and trains the new seeds. Rows are matched by name, not position: bench.json is
    written with sorted keys, so its order is not the preset's."""
    saved_variants, wanted_variants = saved.get("variants"), wanted.get("variants")
    if not isinstance(saved_variants, dict) or not isinstance(wanted_variants, dict) \
            or not saved_variants.keys() <= wanted_variants.keys():
        return False
    for name in [*saved.get("models", []), *saved_variants]:
        kept = _row_seeds_saved(saved, name)
        if _row_seeds_saved(wanted, name)[:len(kept)] != kept:
            return False

    def without_seeds(config: dict) -> dict:
        return {**config, "seeds": None, "model_seeds": None,
                "variants": {name: {**config["variants"][name], "seeds": None} for name in saved_variants}}

    return without_seeds(saved) == without_seeds(wanted)


def _differing_keys(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def claim_workdir(out: Path, bench: str, config: StrictConfig) -> None:
    """A bench folder holds one bench with one config; resuming with another would mix their results. Its world
    is compared by content, not by name (`_world_by_content`), and a leaderboard config that only adds variant
    rows or training seeds to the saved ones extends the bench (`_extends`)."""
    marker = out / "bench.json"
    wanted = {"bench": bench, "config": config.model_dump(mode="json")}
    if marker.is_file():
        saved = json.loads(marker.read_text())
        saved_config, wanted_config = (_world_by_content(saved.get("config", {})),
                                       _world_by_content(wanted["config"]))
        if saved.get("bench") == bench and saved_config != wanted_config and _extends(saved_config, wanted_config):
            extended = {key: wanted["config"][key] for key in ("seeds", "model_seeds", "variants")}
            atomic_write_json(marker, {"bench": bench, "config": {**saved["config"], **extended}})
            return
        if saved.get("bench") != bench or saved_config != wanted_config:
            raise ConfigError(f"{out} holds a {saved.get('bench')} bench made with another config (differs in "
                              f"{_differing_keys(saved_config, wanted_config) or 'bench kind'}); choose another "
                              f"--out, or delete {out} to start over")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a brainrecon bench folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, wanted)


WORLD_FINGERPRINT = "world.json"  # in the bench folder: the fingerprint of the store its work was made on


def bench_world(out: Path, world: str | WorldConfig, echo=print) -> Path:
    """The bench's world (a preset name, YAML path or config), ``out/store``: simulated once; a store already
    there (a resumed bench, or one put there to save the build) must be that world, or the bench would mix
    worlds. Its data's fingerprint is recorded, so a store simulated again (finished work carried to another
    machine without its store) is checked to hold the same betas, not only the same config."""
    config = world if isinstance(world, WorldConfig) else load_config(WorldConfig, world, "worlds")
    name = world if isinstance(world, str) else "the configured world"
    store = out / "store"
    if not store.is_dir():
        started = time.perf_counter()
        simulate_world(config, store, progress=False)
        echo(f"simulated the world ({name}) in {time.perf_counter() - started:.0f} s")
    opened = open_store(store)
    if opened.source.get("config") != config.model_dump(mode="json"):
        raise ConfigError(f"{store} holds another world than {name!r}; delete it to simulate {name!r} there, "
                          f"or choose another --out")
    check_world_fingerprint(out, opened)
    return store


def world_record(world: str | WorldConfig) -> dict:
    """What a page keeps of its world: the name it was asked for, and its content (the resolved config and that
    config's sha256), so that a page still says which world it measured after a preset name, such as
    "default", comes to mean another."""
    config = world if isinstance(world, WorldConfig) else load_config(WorldConfig, world, "worlds")
    content = config.model_dump(mode="json")
    return {"name": world if isinstance(world, str) else "the configured world", "config": content,
            "sha256": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()}


def world_text(result: dict) -> list[str]:
    """The page's sentence on its world; none for a record from before pages kept it."""
    world = result.get("world")
    return [f"World: `{world['name']}`, whose config's sha256 begins {world['sha256'][:12]} (the config in full is "
            f"in this page's .json, under `world`)."] if world else []


def store_fingerprint(store: Store, values: int = 1000) -> dict[str, list[float]]:
    """About ``values`` values spread over each of the store's arrays (betas, the world's code): enough to tell
    another world from this one. Not a hash: builds of the same world differ in the last digits from machine to
    machine (measured: up to 7.7e-4 in a beta of isotropic-code64-noise3, docs/simulated-world.md), and builds before
    their thread count was fixed (simworld's ``WORLD_THREADS``) also by the builder's thread count."""
    fingerprint = {}
    for name in sorted(store.manifest["files"]):
        if name.endswith(".npy"):
            array = np.load(store.root / name, mmap_mode="r").reshape(-1)
            step = max(1, array.size // values)
            fingerprint[name] = np.asarray(array[::step][:values], dtype=np.float64).round(6).tolist()
    return fingerprint


def check_world_fingerprint(out: Path, store: Store) -> None:
    """Record the store's fingerprint on first use; afterwards refuse a store whose data differ from it by more
    than the last digits."""
    record, now = out / WORLD_FINGERPRINT, store_fingerprint(store)
    if not record.is_file():  # the machine too: a world built on another CPU differs in the last digits (the
        # machine that first fingerprinted the store, which built it unless the store was put there ready-made)
        atomic_write_json(record, {"fingerprint": now, "fingerprinted_on": machine()})
        return
    made_on = json.loads(record.read_text())["fingerprint"]
    differ = sorted(name for name in made_on.keys() | now.keys() if name not in made_on or name not in now
                    or not np.allclose(made_on[name], now[name], rtol=1e-2, atol=1e-2))
    if differ:
        raise ConfigError(f"{store.root} holds other betas than the store this bench's finished work was made on "
                          f"({', '.join(differ)} differ from {record}): the world did not simulate the same here "
                          f"(another numpy or torch version?); start the bench afresh with another --out")


COST_FILE = "bench_cost.json"  # in the run folder: the cost of the training that made it


def train_in_child(model: str, train_config: dict, store: Path, run: Path, log: Path) -> dict:
    """`brainrecon train` in a child process: wall time and the child's own peak resident memory.

    A run that finished earlier keeps the cost measured then; a run resumed after an interruption
    is flagged, since its cost counts only the resumed part.
    """
    import yaml

    if (run / COST_FILE).is_file():
        check_run_config(run, train_config)
        return json.loads((run / COST_FILE).read_text())

    config_path = run.parent / f"{model}.yaml"
    atomic_write_text(config_path, yaml.safe_dump(train_config, sort_keys=False))
    peak_file = run.parent / f"{model}.peak_kb"
    peak_file.unlink(missing_ok=True)
    command = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "train", "--config", str(config_path),
               "--data", str(store), "--out", str(run), "--no-progress"]
    resumed = (run / "config.yaml").is_file()
    if resumed:
        command.append("--resume")
    started = time.perf_counter()
    with open(log, "w") as handle:
        returncode = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - started
    if returncode != 0:
        raise RuntimeError(f"training {model} failed (exit {returncode}); its output is in {log}")
    cost = {"train_seconds": seconds, "peak_rss_mb": int(peak_file.read_text()) / 1024, "resumed": resumed}
    atomic_write_json(run / COST_FILE, cost)
    return cost


def check_run_config(run: Path, train_config: dict) -> None:
    """A finished run in a bench folder is reused only if it trained with the config the row asks for: a run
    carried in from another bench (to save its training) or left by an older preset must not stand for this one."""
    import yaml

    def resolved(data: dict, source: str) -> dict:  # defaults filled, so a run saved before a key existed compares
        return validate_config(TrainConfig, data, source=source).model_dump(mode="json")

    trained = resolved(yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml"))
    wanted = resolved(train_config, f"the row's training config for {run.name}")
    if trained != wanted:
        raise ConfigError(f"{run} was trained with another config than its row asks for (differs in "
                          f"{_differing_keys(trained, wanted)}); delete {run} to train it again, or choose another "
                          f"--out")


# The child reports its own VmHWM when it exits. Not ru_maxrss: Linux starts a forked child's ru_maxrss
# at the parent's RSS, even across exec, so a child smaller than this process would report this process.
PEAK_WRAPPER = """
import atexit, sys
path = sys.argv[1]
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])
atexit.register(report)
sys.argv = ["brainrecon"] + sys.argv[2:]
from brainrecon.cli import main
main()
"""


def _setting_text(setting: dict) -> str:
    if not setting["enabled"]:
        return "off"
    fused = setting.get("fused_image_top1")
    return (f"{setting['keys']} keys, k {setting['k']}, alpha {setting['alpha']}"
            + (f" (the fused embedding's own image retrieval: {100 * fused:.1f}%)" if fused is not None else ""))


def _gain_text(gain: dict) -> str:
    def one(label: str, g: dict, scale: float, unit: str, digits: int) -> str:
        return (f"{label} {scale * g['gain']:+.{digits}f}{unit} (95% CI {scale * g['gain_ci95_low']:+.{digits}f} to "
                f"{scale * g['gain_ci95_high']:+.{digits}f})")
    return ", ".join([one("CLIP two-way", gain["clip"], 100, " points", 1), one("SSIM", gain["ssim"], 1, "", 3),
                      one("PixCorr", gain["pixcorr"], 1, "", 3)])


def count_parameters(run: Path) -> int:
    model, _ = load_run(run)
    return int(sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))


def score_row(run: Path, recons: Path, out: Path, config: LeaderboardConfig, ecphory: bool) -> dict:
    """Reconstruct and evaluate one row. With Ecphory (the run's setting, chosen on its held-out training
    stimuli), retrieval stays the prediction's and the fused embedding's is added beside it, labelled."""
    started = time.perf_counter()
    settings = ReconstructConfig(ecphory=ecphory, samples=config.samples, n_images=config.recon_images,
                                 steps=config.recon_steps, batch_size=32, ecphory_grid=config.ecphory_grid)
    make_choices(run, settings, progress=False)  # Ecphory's setting, on the run's held-out training stimuli
    # a row is saved only once it is scored, so reconstructions already in `recons` are those of a bench stopped
    # while scoring it: made again (a folder that is not reconstructions is still refused)
    manifest = run_reconstruct(run, recons, settings, subjects=[SUBJECT], progress=False, overwrite=True)
    recon_seconds = time.perf_counter() - started
    metrics = evaluate_run(run, recons, config=EvaluateConfig(way=config.way, draws=config.draws, seed=config.seed),
                           out=out, progress=False)
    values = metrics["subjects"][SUBJECT]["values"]
    row = {"selection": manifest["selection"], "recon_seconds": recon_seconds, "metrics_file": str(out),
           "n_reconstructed": metrics["subjects"][SUBJECT]["n_reconstructed"],
           "image_top1": values["image_retrieval"]["value"], "image_ci95": values["image_retrieval"]["ci95"],
           "brain_top1": values["brain_retrieval"]["value"], "brain_ci95": values["brain_retrieval"]["ci95"],
           "embedding_cosine": values["embedding_cosine"]["value"], "way": values["image_retrieval"]["way"],
           "space": SPACE_OF_TARGET.get(metrics["retrieval_target"])}
    for name in IMAGE_METRICS:
        row[name] = values[name].get("value")
    if ecphory:
        setting = EcphorySetting.model_validate({key: manifest["ecphory"][key] for key in ("enabled", "keys", "k",
                                                                                         "alpha")})
        scores = ecphory_embedding_scores(RunContext.open(run), SUBJECT, setting, way=config.way, draws=config.draws,
                                          seed=config.seed)["rows"]
        row["ecphory"] = {**manifest["ecphory"], "fused_image_top1": scores.get("fused", {}).get("image_top1")}
    return row


def image_scores(truth: np.ndarray, images: np.ndarray, clip_encoder) -> dict[str, np.ndarray]:
    """Per-image CLIP two-way identification, SSIM and PixCorr of images against the true ones."""
    spec, encoder = clip_encoder
    return {"clip": score_with_network(truth, images, spec, encoder, per_item=True, preresize=PROTOCOL_SIZE),
            "ssim": np.asarray(ssim(truth, images, per_image=True)),
            "pixcorr": np.asarray(pixcorr(truth, images, per_image=True))}


def per_image_scores(context: RunContext, recons: Path, clip_encoder) -> dict[str, np.ndarray]:
    """`image_scores` of one reconstruction folder's subj01 images."""
    ids, images = read_reconstructions(recons, SUBJECT, read_manifest(recons))
    return image_scores(context.store.images_for(ids), images, clip_encoder)


def run_clip(context: RunContext):
    """The run's CLIP (the simulated world's) as a scoring network for CLIP two-way identification."""
    return feature_encoders(None, context.config.targets.clip, clip_note="the simulated world's CLIP")["clip"]


def ecphory_gains(out: Path, row: dict) -> dict:
    """Per metric, an Ecphory row's paired gain over its model's row (the same run, samples and seeds), with
    its 95% interval over the reconstructed images."""
    context = RunContext.open(out / "runs" / row["kind"])
    clip = run_clip(context)
    fused, control = (per_image_scores(context, out / "recons" / name, clip) for name in (row["model"], row["kind"]))
    return {metric: paired_gain(fused[metric], control[metric]) for metric in ("clip", "ssim", "pixcorr")}


def seed_retrievals(model: str, train_config: dict, store: Path, runs: Path, seeds: list[int],
                    first: float, echo=print) -> dict[str, float]:
    """subj01's held-out image retrieval for each training seed (``first``: the first seed's, already scored).

    The other seeds train in child processes; their figure is the `train` command's own evaluation
    (RUN/metrics.json), with the bench's protocol. Closed-form models train once: a seed changes nothing.
    """
    values = {str(seeds[0]): first}
    if model_class(train_config["model"]["kind"]).closed_form:
        return values
    for seed in seeds[1:]:
        name = f"{model}-seed{seed}"
        if not (runs / name / COST_FILE).is_file():
            echo(f"{model}: training seed {seed} (its output: {runs / f'{name}.log'})")
        train_in_child(name, {**train_config, "seed": seed}, store, runs / name, runs / f"{name}.log")
        metrics = json.loads((runs / name / "metrics.json").read_text())
        values[str(seed)] = metrics["subjects"][SUBJECT]["values"]["image_retrieval"]["value"]
    return values


def score_seeds(row: dict, name: str, train_config: dict, store: Path, runs: Path, seeds: list[int],
                echo=print) -> None:
    """The row's figure for each training seed (`seed_retrievals`; the first seed's is the row's own), the
    commits that trained and resumed them, and their mean and 95% CI where there are several."""
    row["seeds"] = seed_retrievals(name, train_config, store, runs, seeds, row["image_top1"], echo)
    row["commits"] = seed_commits(name, runs, list(row["seeds"]))
    row["resumed_at"] = seed_resumptions(name, runs, list(row["seeds"]))
    if len(row["seeds"]) > 1:
        row["seeds_mean"], row["seeds_ci95"] = student_t_interval(list(row["seeds"].values()))


def add_seeds(row: dict, name: str, train_config: dict, store: Path, runs: Path, seeds: list[int],
              echo=print) -> bool:
    """A finished row given more training seeds than it was scored with (the bench's config extended, as
    `claim_workdir` allows): trains the new seeds and scores the row's seeds again. False when it has them all,
    or when it is a closed-form fit (one figure for every seed)."""
    if model_class(train_config["model"]["kind"]).closed_form or "seeds" not in row:
        return False
    have, wanted = list(row["seeds"]), [str(seed) for seed in seeds]
    if have == wanted:
        return False
    if wanted[:len(have)] != have:
        raise ConfigError(f"the row {name!r} was scored over the training seeds {have}, which its seeds now "
                          f"{wanted} do not begin with; give the row its old seeds first, or delete its "
                          f"rows/{name}.json to score it again")
    score_seeds(row, name, train_config, store, runs, seeds, echo)
    return True


def seed_commits(model: str, runs: Path, seeds: list[str]) -> dict[str, str | None]:
    """The source commit each of a row's training seeds was trained at (``seeds``: the first one's run is
    RUNS/MODEL, the others' RUNS/MODEL-seedN, as `seed_retrievals` names them), read from the run's model.json;
    None where a run predates runs recording it. A bench resumed across commits so says which code made each
    row."""
    return {seed: run_commit(runs / name) for seed, name in _seed_runs(model, seeds).items()}


def seed_resumptions(model: str, runs: Path, seeds: list[str]) -> dict[str, list[str]]:
    """The commits each of a row's training seeds was resumed at (its model.json's ``resumed_at``): a run
    interrupted and continued, or a finished run resumed to choose its weights again under a newer rule. Read
    when the row is scored: a row saved before its runs were resumed says so only once its rows/NAME.json (and
    its recons/NAME, metrics/NAME.json) are deleted and the bench run again."""
    return {seed: json.loads((runs / name / "model.json").read_text()).get("resumed_at", [])
            for seed, name in _seed_runs(model, seeds).items()}


def _seed_runs(model: str, seeds: list[str]) -> dict[str, str]:
    """Each training seed's run folder name: the first seed's is the row's own name."""
    return {seed: model if index == 0 else f"{model}-seed{seed}" for index, seed in enumerate(seeds)}


def validation_curve(run: Path) -> dict | None:
    """The run's validation scores (step, val_retrieval), and how much they rose over the run's second half
    (the last score minus the score nearest the middle step): near 0 when the curve has flattened."""
    path = run / "validation.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    curve = [(entry["step"], entry["retrieval"]) for entry in record["curve"]]
    if not curve:
        return None
    middle = min(curve, key=lambda point: abs(point[0] - curve[-1][0] / 2))
    return {"curve": curve, "late_gain": curve[-1][1] - middle[1], "chosen_step": record.get("chosen_step"),
            "select": record["select"]}


def steps_trained(run: Path) -> int | None:
    """The optimiser steps a run took (its log's last step); None for a closed-form fit."""
    log = run / "log.csv"
    if not log.is_file():
        return None
    return max(int(line.split(",", 1)[0]) for line in log.read_text().splitlines()[1:] if line)


def oracle_row(store_path: Path, config: LeaderboardConfig) -> dict:
    """The oracle, and each target space's ceiling and plain ridge (the store's ceiling table)."""
    store = open_store(store_path)
    way = min(config.way, len(store.subject(SUBJECT).test()))
    table = subject_ceilings(store, SUBJECT, space_targets(store), way, config.draws, config.seed)
    score = table.oracle
    return {"model": "oracle", "label": "Bayes-optimal oracle (knows the true encoding model)",
            "image_top1": score.image_top1, "image_ci95": score.image_ci95, "brain_top1": score.brain_top1,
            "brain_ci95": score.brain_ci95, "way": way,
            "spaces": {name: space.to_dict() for name, space in table.spaces.items()}}


LABELS = {"ridge": "Ridge (Brain-Diffuser-style)", "mindeye1": "MindEye1-style", "mindeye2": "MindEye2-style",
          "mindbridge": "MindBridge-style", "mindreader": "Mind Reader-style", "psychometry": "Psychometry"}


def _validation_override(config: dict) -> str:
    """The page's words for a bench-wide change to how runs validate and choose their weights (none: empty)."""
    override = config.get("train_overrides", {}).get("validation")
    return (f"; this bench sets `validation: {override}` in every row, unless a variant's own overrides change it"
            if override else "")


def merged_overrides(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, mappings merged one level deep (as `sim_train_config` merges into a preset)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def planned_rows(config: LeaderboardConfig) -> list[tuple[str, str, dict[str, Any], str, bool]]:
    """(row name, model kind, train overrides, label, Ecphory) for every row, in order: the models (Psychometry
    followed by its Ecphory row, which scores the same run), then the variants."""
    rows = []
    for model in config.models:
        rows.append((model, model, config.train_overrides, LABELS[model], False))
        if model == "psychometry":
            rows.append(("psychometry+ecphory", model, config.train_overrides, LABELS[model] + " + Ecphory", True))
    for name, variant in config.variants.items():
        rows.append((name, variant.model, merged_overrides(config.train_overrides, variant.train_overrides),
                     variant.label, False))
    return rows


def run_leaderboard(config: LeaderboardConfig, out: Path, echo=print, preset: str = "custom") -> dict:
    """Build (or resume) the leaderboard in ``out``; returns what leaderboard.json holds."""
    commit = source_commit()  # the code that runs now, whatever is edited while it runs
    claim_workdir(out, "leaderboard", config)
    store, rows_dir, runs = bench_world(out, config.world, echo), out / "rows", out / "runs"
    rows_dir.mkdir(exist_ok=True)
    runs.mkdir(exist_ok=True)
    rows = []
    for name, model, overrides, label, ecphory in planned_rows(config):
        saved, seeds = rows_dir / f"{name}.json", row_seeds(config, name)
        train_config = sim_train_config(model, overrides, config.way, config.draws, config.seed, seed=seeds[0])
        if saved.is_file():
            row = json.loads(saved.read_text())
            echo(f"{name}: done earlier ({saved})")
            if not ecphory and add_seeds(row, name, train_config, store, runs, seeds, echo):
                atomic_write_json(saved, row)
            rows.append(row)
            continue
        run = runs / model  # an Ecphory row scores the model's own run
        if ecphory:
            trained = json.loads((rows_dir / f"{model}.json").read_text())
            row = {key: trained.get(key) for key in ("train_seconds", "peak_rss_mb", "resumed", "parameters",
                                                     "subjects", "steps", "validation", "commits")}
        else:
            run = runs / name
            if not (run / COST_FILE).is_file():
                echo(f"{name}: training seed {seeds[0]} (its output: {runs / f'{name}.log'})")
            row = train_in_child(name, train_config, store, run, runs / f"{name}.log")
            row.update(parameters=count_parameters(run), subjects=train_config.get("subjects") or "all",
                       steps=steps_trained(run), validation=validation_curve(run))
        row.update(model=name, kind=model, label=label)
        echo(f"{name}: reconstructing and scoring {config.recon_images} test images")
        row.update(score_row(run, out / "recons" / name, out / "metrics" / f"{name}.json", config, ecphory))
        if ecphory:  # paired with its model's row, over the two rows' reconstructions (both in OUT now)
            row["ecphory"]["gain"] = ecphory_gains(out, row)
        else:
            score_seeds(row, name, train_config, store, runs, seeds, echo)
        atomic_write_json(saved, row)
        rows.append(row)
        echo(f"{name}: image {100 * row['image_top1']:.1f}%, brain {100 * row['brain_top1']:.1f}%, "
             f"{row['train_seconds']:.0f} s, {row['peak_rss_mb']:.0f} MB")
    for row in rows:
        if row.get("ecphory") and "gain" not in row["ecphory"]:  # a row saved before rows kept their gain
            row["ecphory"]["gain"] = ecphory_gains(out, row)
    paired_seed_gains(rows, {name: v.against for name, v in config.variants.items() if v.against})
    gains_over_ridge(rows)
    oracle = oracle_row(store, config)
    for row in rows:
        row["ratio_to_oracle"] = row["image_top1"] / oracle["image_top1"]
        space = oracle["spaces"].get(row.get("space") or "")
        row["ratio_to_ceiling"] = row["image_top1"] / space["ceiling"]["image_top1"] if space else None
    result = {"preset": preset, "config": config.model_dump(mode="json"), "world": world_record(config.world),
              "subject": SUBJECT, "rows": rows, "oracle": oracle, "machine": machine(), "commit": commit,
              "date": datetime.now(UTC).isoformat(),
              "note": SIMULATED_NOTE, "curves_figure": write_validation_curves(rows, out, preset)}
    atomic_write_json(out / "leaderboard.json", result)
    atomic_write_text(out / "leaderboard.md", leaderboard_markdown(result))
    return result


def retrieval_over_seeds(row: dict) -> float:
    """A row's image retrieval as rows are ranked: its mean over training seeds where it has several (the first
    seed's figure alone can crown a lucky seed), else its one figure (a closed-form fit, a single seed)."""
    return row.get("seeds_mean", row["image_top1"])


def best_row_text(result: dict) -> str:
    """The best row by retrieval_over_seeds, with that figure's 95% CI over seeds and its ratio to the oracle."""
    best = max(result["rows"], key=retrieval_over_seeds)
    top1 = retrieval_over_seeds(best)
    spread = f" ± {100 * best['seeds_ci95']:.1f} over {len(best['seeds'])} training seeds" if "seeds_mean" in best \
        else ""
    return (f"Best: {best['label']}, {100 * top1:.1f}%{spread}, {top1 / result['oracle']['image_top1']:.2f} of the "
            f"oracle's image retrieval")


def write_validation_curves(rows: list[dict], out: Path, preset: str) -> str | None:
    """Plot every trained row's validation curve (its first seed's) into OUT/<preset>-curves.png, the name the
    page links and `--doc` copies it under; None (and no figure) when no row has a curve."""
    trained = [row for row in rows if row.get("validation") and not row.get("ecphory")]
    if not trained:
        return None
    name = f"{Path(preset).stem}-curves.png"
    validation_curves({row["label"]: row["validation"]["curve"] for row in trained}, out / name,
                      chosen={row["label"]: row["validation"].get("chosen_step") for row in trained})
    return name


def paired_seed_gains(rows: list[dict], against: dict[str, str] | None = None) -> None:
    """Each row trained over several seeds against an earlier row trained over them too: the row named in
    ``against`` (row name -> row name), else the first earlier row of the same model kind (an ablation against
    its model). The per-seed differences in image retrieval, mean and 95% Student-t half-width, go in
    ``row["paired"]``. A training seed fixes the initialisation's generator, the data order and the validation
    slice, so a seed's two runs differ only in what the variant changes, and the paired interval is narrower
    than the two rows' own intervals over seeds."""
    against = against or {}
    for index, row in enumerate(rows):
        if row.get("model") in against:
            base = next((r for r in rows[:index] if r.get("model") == against[row["model"]]), None)
        else:
            base = next((r for r in rows[:index]
                         if r.get("kind") == row.get("kind") and len(r.get("seeds", {})) > 1), None)
        common = [seed for seed in row.get("seeds", {}) if base is not None and seed in base.get("seeds", {})]
        if len(common) > 1:
            gain, ci95 = student_t_interval([row["seeds"][seed] - base["seeds"][seed] for seed in common])
            row["paired"] = {"against": base["model"], "label": base["label"], "gain": gain, "ci95": ci95,
                             "seeds": len(common)}


def gains_over_ridge(rows: list[dict]) -> None:
    """Each row trained over several seeds against the first ridge row of its own target space (the baseline a
    deep model in that space has to beat): its mean over seeds minus the ridge's figure, with the seeds' 95%
    Student-t half-width, in ``row["over_ridge"]``. The ridge is a closed-form fit, the same for every seed, so
    the interval is the row's own spread over seeds."""
    ridges: dict[str, dict] = {}
    for row in rows:
        if row.get("kind") == "ridge" and row.get("space"):
            ridges.setdefault(row["space"], row)
    for row in rows:
        ridge = ridges.get(row.get("space") or "")
        if ridge is not None and row.get("kind") != "ridge" and "seeds_mean" in row:
            row["over_ridge"] = {"label": ridge["label"], "gain": row["seeds_mean"] - ridge["image_top1"],
                                 "ci95": row["seeds_ci95"], "seeds": len(row["seeds"])}


def _budget_text(rows: list[dict]) -> str:
    steps = {row["steps"] for row in rows if isinstance(row.get("steps"), int)}
    if len(steps) == 1:
        return f"the same {steps.pop()} for every trained row, each at its preset's batch size"
    return "each preset's own budget, not an equal one"


def _paired_text(rows: list[dict], key: str = "paired") -> str:
    """Each row's ``row[key]`` gain (`paired_seed_gains`, `gains_over_ridge`) in points, with its 95% CI."""
    return "; ".join(f"{r['label']} against {r[key]['label']}: {100 * r[key]['gain']:+.1f} points "
                     f"(95% CI {100 * (r[key]['gain'] - r[key]['ci95']):+.1f} to "
                     f"{100 * (r[key]['gain'] + r[key]['ci95']):+.1f}, {r[key]['seeds']} seeds)"
                     for r in rows if r.get(key))


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def cpu_model() -> str:
    """This machine's CPU, as `describe_cpu` names it: float32 kernels differ between CPUs, so the same world or
    run can differ in the last digits from one machine to another."""
    try:
        return describe_cpu(Path("/proc/cpuinfo").read_text(), platform.machine())
    except OSError:  # not Linux
        return platform.processor() or platform.machine()


def describe_cpu(cpuinfo: str, fallback: str) -> str:
    """The first processor's model name (``fallback`` without one) and its x86 family and model or ARM
    implementer and part, and whether it runs AVX-512, from the text of /proc/cpuinfo."""
    first = cpuinfo.split("\n\n")[0]
    fields = {key.strip(): value.strip() for key, value in re.findall(r"^([^:\n]+):[ \t]*(.*)$", first, re.MULTILINE)}
    parts = [fields.get("model name") or fields.get("cpu") or fallback]
    if fields.get("cpu family") and fields.get("model"):
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    elif fields.get("CPU implementer") and fields.get("CPU part"):
        parts.append(f"implementer {fields['CPU implementer']} part {fields['CPU part']}")
    if " avx512f" in f" {fields.get('flags', '')}":
        parts.append("AVX-512")
    return ", ".join(parts)


def _trained_at_text(rows: list[dict]) -> str:
    trained = [row for row in rows if not row.get("ecphory")]  # an Ecphory row: its model's run
    text = trained_at_text({row["label"]: (row.get("commits") or {"": None}).values() for row in trained})
    resumed: dict[str, list[str]] = {}
    for row in trained:
        for commit in dict.fromkeys(c for commits in (row.get("resumed_at") or {}).values() for c in commits):
            resumed.setdefault(commit or "an unrecorded commit", []).append(row["label"])
    return text + "".join(f"; runs resumed at {commit} ({', '.join(labels)}): continued, or finished and their "
                          f"weights chosen again by that commit's rule" for commit, labels in resumed.items())


def trained_at_text(commits: dict[str, Iterable[str | None]]) -> str:
    """Which commits trained which rows (row label -> its runs' commits), grouped: one bench may be resumed
    across commits. None: a run made before runs recorded their commit."""
    by_commit: dict[str, list[str]] = {}
    for label, row_commits in commits.items():
        for commit in dict.fromkeys(row_commits):
            by_commit.setdefault(commit or "not recorded", []).append(label)
    if len(by_commit) == 1:
        return f"every run trained at {next(iter(by_commit))}"
    return "runs trained at " + "; ".join(f"{commit} ({', '.join(labels)})" for commit, labels in by_commit.items())


def run_commit(run: Path) -> str | None:
    """The commit a finished run was started at (its model.json), None where the run predates the record."""
    return json.loads((run / "model.json").read_text()).get("commit")


def _pct(value, ci=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def _over_seeds(row: dict) -> str:
    if "seeds_mean" in row:
        return f"{_pct(row['seeds_mean'], row['seeds_ci95'])} ({len(row['seeds'])})"
    if row.get("steps", 0) is None:
        return "closed form"
    return ""


def _own_seeds_text(result: dict) -> str:
    """The page's words for the rows that list their own training seeds (none: empty)."""
    own = [(row["label"], seeds) for row in result["rows"]
           if (seeds := _own_seeds_saved(result["config"], row.get("model", "")))]
    return f", or a row's own: {'; '.join(f'{seeds} for {label}' for label, seeds in own)}" if own else ""


def _late_gain(row: dict) -> str:
    validation = row.get("validation")
    return "" if not validation else f"{100 * validation['late_gain']:+.1f}"


def _steps(row: dict) -> str:
    steps = row.get("steps", "")
    return "closed form" if steps is None else f"{steps}"


def leaderboard_markdown(result: dict) -> str:
    oracle = result["oracle"]
    way = oracle["way"]
    lines = [
        "| model | image ret | over seeds | brain ret | ÷ oracle | ÷ ceiling | emb cos | PixCorr | SSIM | CLIP 2-way | "
        "params | steps | val Δ 2nd half | train s | peak MB | subjects |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in sorted(result["rows"], key=retrieval_over_seeds, reverse=True):
        fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        subjects = row["subjects"] if isinstance(row["subjects"], str) else ", ".join(row["subjects"])
        lines.append(f"| {row['label']} | {_pct(row['image_top1'], row.get('image_ci95'))} | {_over_seeds(row)} | "
                     f"{_pct(row['brain_top1'], row.get('brain_ci95'))} | {row['ratio_to_oracle']:.2f} | "
                     f"{fmt(row.get('ratio_to_ceiling'), 2)} | "
                     f"{fmt(row['embedding_cosine'])} | {fmt(row['pixcorr'])} | {fmt(row['ssim'])} | "
                     f"{_pct(row['clip'])} | {row['parameters']:,} | {_steps(row)} | {_late_gain(row)} | "
                     f"{row['train_seconds']:.0f}"
                     f"{'*' if row.get('resumed') else ''} | "
                     f"{row['peak_rss_mb']:.0f} | {subjects} |")
    lines.append(f"| **{oracle['label']}** | {_pct(oracle['image_top1'], oracle['image_ci95'])} | | "
                 f"{_pct(oracle['brain_top1'], oracle['brain_ci95'])} | 1.00 | | | | | | | | | | | |")
    for name, space in oracle.get("spaces", {}).items():
        for kind in ("ceiling", "ridge"):
            score = space[kind]
            label = (f"{SPACE_LABELS[name]} ceiling (the Bayes estimate of the code, read into the space)"
                     if kind == "ceiling" else f"plain ridge into {SPACE_LABELS[name]} (centred)")
            lines.append(f"| *{label}* | {_pct(score['image_top1'], score['image_ci95'])} | | "
                         f"{_pct(score['brain_top1'], score['brain_ci95'])} | "
                         f"{score['image_top1'] / oracle['image_top1']:.2f} | | | | | | | | | | | |")
    config = result["config"]
    machine_info = result["machine"]
    notes = [
        f"All figures are {result['subject']}'s. Retrieval: {way}-way top-1 in % over {config['draws']} draws "
        f"(seed {config['seed']}), chance {100 / way:.2f}%, ± 95% CI over draws, in each model's own target space "
        f"(the shipped small CLIP; the oracle in the world's true likelihood). ÷ oracle: image retrieval divided by "
        f"the oracle's. ÷ ceiling: divided by the ceiling of the model's own target space (small-CLIP tokens or "
        f"pooled): what a decoder that knows the encoding model reaches in that space (`brainrecon simulate` "
        f"computes it; "
        f"docs/simulated-world.md). Ceiling and ridge rows are scored with the training images' mean target "
        f"subtracted from prediction and candidates; model rows with the field's plain cosine.",
        f"over seeds: the image retrieval's mean ± 95% Student-t CI over the training seeds {config.get('seeds', [0])}"
        f"{_own_seeds_text(result)} "
        f"(n in brackets; the other columns are the first seed's run); a closed-form fit is the same for every "
        f"seed. The model rows are ranked by it (a closed-form fit or a single seed by its one figure). "
        f"steps: the optimiser steps the run took ({_budget_text(result['rows'])}). val Δ 2nd "
        f"half: the first seed's validation retrieval (top-1 among its held-out *training* stimuli, in points) at "
        f"the last step minus at the middle step; far above 0, the run was still learning. The final weights are "
        f"those the preset's `validation` keeps (the sim presets: the checkpoint with the best validation cosine; "
        f"since 2026-12-04 only if its gain over the last weights is beyond the slice's noise, else the last)"
        f"{_validation_override(config)}.",
        f"Reconstructions: the first {config['recon_images']} test images, {config['samples']} samples each "
        f"({config['recon_steps']} steps of the shipped small unCLIP decoder), honest selection (closest to the "
        f"brain-predicted embedding). PixCorr and SSIM at 425 px; CLIP two-way identification with the shipped "
        f"small CLIP. AlexNet, Inception, EffNet and SwAV are not scored: their weights are not on the machine.",
        *(["Psychometry + Ecphory: the same run, reconstructed with the Ecphory setting (memory keys, k, alpha) it "
           "chose on its held-out training stimuli (docs/benchmarks/ecphory.md), with the same number of samples; "
           "retrieval is the prediction's, as in the row above (Ecphory serves generation)"
           + "".join(f"; its setting: {_setting_text(r['ecphory'])}" for r in result["rows"] if r.get("ecphory"))
           + "".join(f"; against the row above, per image: {_gain_text(r['ecphory']['gain'])}"
                     for r in result["rows"] if r.get("ecphory", {}).get("gain"))
           + "."] if any(r.get("ecphory") for r in result["rows"]) else []),
        *([f"Paired over training seeds (image retrieval, a variant minus the row it is paired against: the first "
           f"row of its model unless the preset names another with `against`; seed by seed: the same "
           f"initialisation generator, data order and validation slice): {_paired_text(result['rows'])}."]
          if any(r.get("paired") for r in result["rows"]) else []),
        *([f"Against the ridge of the same target space (the first ridge row in it; a closed-form fit, one figure "
           f"for every seed): the row's mean over training seeds minus the ridge's image retrieval, with the "
           f"seeds' 95% CI: {_paired_text(result['rows'], 'over_ridge')}."]
          if any(r.get("over_ridge") for r in result["rows"]) else []),
        "train s: wall time of `brainrecon train` in a child process (imports and the final evaluation included); "
        "peak MB: that process's peak resident memory"
        + (" (* a run resumed after an interruption: its cost counts only the resumed part)."
           if any(r.get("resumed") for r in result["rows"]) else "."),
        *([f"Validation curves (each trained row's first seed; a ring marks the step whose weights were kept): "
           f"![validation curves]({result['curves_figure']})"] if result.get("curves_figure") else []),
        f"Machine: {machine_info['cpus']} CPUs{' (' + machine_info['cpu'] + ')' if machine_info.get('cpu') else ''}, "
        f"torch {machine_info['torch']} ({machine_info['threads']} threads), "
        f"GPU {machine_info['cuda'] or 'none'}; page written at commit {result['commit']}; {result['date'][:19]} UTC; "
        f"{_trained_at_text(result['rows'])}.",
        *world_text(result),
        f"**{result['note']}**",
    ]
    return (f"# Leaderboard on the simulated world (preset `{result['preset']}`)\n\n"
            f"Made by `brainrecon bench leaderboard --preset {result['preset']}`.\n\n" + "\n".join(lines)
            + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


__all__ = ["LeaderboardConfig", "Variant", "best_row_text", "claim_workdir", "gains_over_ridge",
           "leaderboard_markdown", "paired_seed_gains", "row_seeds", "run_leaderboard", "sim_train_config",
           "train_in_child"]
