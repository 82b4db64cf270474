"""`brainrecon bench`: the leaderboard and data-efficiency pipelines on their smoke presets.

These check that every row is produced, scored and written, and that an interrupted bench
resumes; they assert nothing about speed, and the smoke figures (two optimiser steps) mean nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from brainrecon.bench.efficiency import EfficiencyConfig, cells, efficiency_markdown, plan_runs, run_efficiency
from brainrecon.bench.leaderboard import LeaderboardConfig, claim_workdir, run_leaderboard, world_record
from brainrecon.config import load_config, validate_config
from brainrecon.data import open_store
from brainrecon.data.simworld import WorldConfig
from brainrecon.provenance import source_commit

pytestmark = pytest.mark.slow


def with_world(out, bench: str, config, world):
    """A bench folder that already holds its world (the session's tiny world): the bench uses it."""
    claim_workdir(out, bench, config)
    shutil.copytree(world, out / "store")
    return out


def test_leaderboard_smoke_has_every_model_ecphory_and_the_oracle(tmp_path, tiny_world):
    config = load_config(LeaderboardConfig, "smoke", "bench")
    messages = []
    result = run_leaderboard(config, with_world(tmp_path / "lb", "leaderboard", config, tiny_world),
                             echo=messages.append, preset="smoke")
    names = [row["model"] for row in result["rows"]]
    assert names == ["ridge", "mindeye1", "mindeye2", "mindbridge", "mindreader", "psychometry",
                     "psychometry+ecphory"]
    oracle = result["oracle"]
    assert oracle["image_top1"] > 10 / oracle["way"]  # the Bayes-optimal oracle is far above chance
    assert set(oracle["spaces"]) == {"clip_tokens", "clip_pooled", "handcrafted"}
    for row in result["rows"]:
        assert row["ratio_to_oracle"] == pytest.approx(row["image_top1"] / oracle["image_top1"])
        ceiling = oracle["spaces"][row["space"]]["ceiling"]["image_top1"]  # each model's own space's ceiling
        assert row["ratio_to_ceiling"] == pytest.approx(row["image_top1"] / ceiling)
        assert row["parameters"] > 0 and row["peak_rss_mb"] > 50 and row["resumed"] is False
        assert row["n_reconstructed"] == config.recon_images and row["selection"] == "brain-predicted (honest)"
        assert -1.0 <= row["pixcorr"] <= 1.0 and 0.0 <= row["clip"] <= 1.0
    ecphory = result["rows"][-1]
    assert ecphory["ecphory"]["source"].startswith("chosen on held-out training stimuli")  # never on test
    for gain in ecphory["ecphory"]["gain"].values():  # paired over the same images, against the row above
        assert gain["gain_ci95_low"] <= gain["gain"] <= gain["gain_ci95_high"]
    assert set(ecphory["ecphory"]["gain"]) == {"clip", "ssim", "pixcorr"}
    assert ecphory["image_top1"] == result["rows"][-2]["image_top1"]  # retrieval stays the prediction's
    assert ecphory["parameters"] == result["rows"][-2]["parameters"]  # the same run
    assert result["rows"][0]["steps"] is None and result["rows"][1]["steps"] == 2  # ridge: closed form
    assert result["rows"][0]["validation"] is None and result["rows"][1]["validation"]["curve"][-1][0] == 2
    assert all(list(row["seeds"]) == ["0"] for row in result["rows"] if row["model"] != "psychometry+ecphory")
    # every row says which code trained it (each run's model.json), and the page says it too
    assert all(row["commits"] == {"0": source_commit()} for row in result["rows"])
    # the trained rows' validation curves, in a figure the page links by the name --doc copies it under
    assert result["curves_figure"] == "smoke-curves.png"
    assert (tmp_path / "lb" / "smoke-curves.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "![validation curves](smoke-curves.png)" in markdown
    for label in ("MindEye2-style", "Psychometry + Ecphory", "Bayes-optimal oracle", "not NSD results",
                  "small-CLIP pooled ceiling", "÷ ceiling", "over seeds", "| closed form |", "val Δ 2nd half",
                  "against the row above, per image: CLIP two-way", f"every run trained at {source_commit()}"):
        assert label in markdown
    assert json.loads((tmp_path / "lb" / "leaderboard.json").read_text())["rows"] == json.loads(
        json.dumps(result["rows"]))
    # the page keeps its world by content, not only by a preset name that may come to mean another world
    world = result["world"]
    assert world["name"] == config.world and world["config"] == open_store(tmp_path / "lb" / "store").source["config"]
    assert world_record(config.world) == world  # the same world: the same record
    assert f"World: `{config.world}`, whose config's sha256 begins {world['sha256'][:12]}" in markdown
    other = load_config(WorldConfig, config.world, "worlds").model_copy(update={"seed": 1})
    assert world_record(other)["sha256"] != world["sha256"]

    assert "mindeye1: training seed 0 (its output: " in "\n".join(messages)  # long work says what it is doing
    messages.clear()  # a second call finds every row done and only re-scores the oracle
    again = run_leaderboard(config, tmp_path / "lb", echo=messages.append, preset="smoke")
    assert all("done earlier" in m for m in messages) and len(messages) == len(names)
    assert [r["image_top1"] for r in again["rows"]] == [r["image_top1"] for r in result["rows"]]


def test_a_bench_folder_refuses_another_config_or_another_world(tmp_path, tiny_world):
    from brainrecon.bench.leaderboard import bench_world
    from brainrecon.errors import ConfigError

    smoke = load_config(LeaderboardConfig, "smoke", "bench")
    claim_workdir(tmp_path / "lb", "leaderboard", smoke)
    claim_workdir(tmp_path / "lb", "leaderboard", smoke)  # the same bench resumes
    with pytest.raises(ConfigError, match=r"another config \(differs in \['draws', "):
        claim_workdir(tmp_path / "lb", "leaderboard", load_config(LeaderboardConfig, "default", "bench"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a brainrecon bench folder"):
        claim_workdir(tmp_path / "mine", "leaderboard", smoke)
    with_world(tmp_path / "other", "leaderboard", smoke, tiny_world)
    assert bench_world(tmp_path / "other", "tiny") == tmp_path / "other" / "store"  # the world it asks for
    with pytest.raises(ConfigError, match="holds another world than 'default'"):
        bench_world(tmp_path / "other", "default")


def test_a_bench_folder_knows_its_world_by_content_not_by_name(tmp_path):
    from brainrecon.config import resolve_config_path
    from brainrecon.errors import ConfigError

    smoke = load_config(LeaderboardConfig, "smoke", "bench")
    copy = tmp_path / "my-tiny.yaml"  # the tiny preset's world under another name
    copy.write_text(resolve_config_path("tiny", "worlds").read_text())
    claim_workdir(tmp_path / "lb", "leaderboard", smoke.model_copy(update={"world": str(copy)}))
    claim_workdir(tmp_path / "lb", "leaderboard", smoke)  # "tiny" is that world: the same bench goes on
    with pytest.raises(ConfigError, match=r"another config \(differs in \['world'\]\)"):
        claim_workdir(tmp_path / "lb", "leaderboard", smoke.model_copy(update={"world": "default"}))
    with pytest.raises(ConfigError, match="another config"):  # the same config is another bench's
        claim_workdir(tmp_path / "lb", "efficiency", smoke)


def test_a_leaderboard_config_that_adds_rows_extends_its_bench_folder(tmp_path):
    import json

    from brainrecon.bench.leaderboard import Variant
    from brainrecon.errors import ConfigError

    smoke = load_config(LeaderboardConfig, "smoke", "bench")
    extra = Variant(model="ridge", label="Ridge, pooled", train_overrides={"model": {"target": "image_pooled"}})
    longer = smoke.model_copy(update={"variants": {**smoke.variants, "ridge-pooled": extra}})
    claim_workdir(tmp_path / "lb", "leaderboard", smoke)
    claim_workdir(tmp_path / "lb", "leaderboard", longer)  # a row added after the saved ones: the bench goes on
    saved = json.loads((tmp_path / "lb" / "bench.json").read_text())["config"]
    assert list(saved["variants"]) == [*smoke.variants, "ridge-pooled"]
    claim_workdir(tmp_path / "lb", "leaderboard", longer)  # and is that bench from now on
    first = {"a-ridge": extra, **longer.variants}  # a name that sorts before the saved rows (saved sorted)
    claim_workdir(tmp_path / "lb", "leaderboard", longer.model_copy(update={"variants": first}))
    saved = json.loads((tmp_path / "lb" / "bench.json").read_text())["config"]
    assert set(saved["variants"]) == {"a-ridge", *longer.variants}
    with pytest.raises(ConfigError, match=r"differs in \['variants'\]"):  # a saved row taken away
        claim_workdir(tmp_path / "lb", "leaderboard", smoke)
    changed = {**first, "ridge-pooled": extra.model_copy(update={"label": "another"})}
    with pytest.raises(ConfigError, match=r"differs in \['variants'\]"):  # a saved row changed
        claim_workdir(tmp_path / "lb", "leaderboard", longer.model_copy(update={"variants": changed}))
    more = {**first, "ridge-2": extra}
    with pytest.raises(ConfigError, match=r"differs in \['draws', 'variants'\]"):  # rows added, and more changed
        claim_workdir(tmp_path / "lb", "leaderboard", longer.model_copy(update={"variants": more, "draws": 4}))


def test_a_leaderboard_config_that_adds_seeds_extends_its_bench_folder(tmp_path):
    from brainrecon.bench.leaderboard import Variant, row_seeds
    from brainrecon.errors import ConfigError

    extra = Variant(model="mindreader", label="Mind Reader, per-channel",
                    train_overrides={"model": {"fc": "per_channel"}})
    base = load_config(LeaderboardConfig, "smoke", "bench").model_copy(update={"seeds": [0, 1],
                                                                            "variants": {"per-channel": extra}})
    claim_workdir(tmp_path / "lb", "leaderboard", base)
    marker = tmp_path / "lb" / "bench.json"
    saved = json.loads(marker.read_text())  # as a bench begun before variants could list their seeds wrote it
    del saved["config"]["variants"]["per-channel"]["seeds"]
    marker.write_text(json.dumps(saved))
    claim_workdir(tmp_path / "lb", "leaderboard", base)  # still the same bench
    more = base.model_copy(update={"variants": {"per-channel": extra.model_copy(update={"seeds": [0, 1, 2, 3]})}})
    assert row_seeds(more, "per-channel") == [0, 1, 2, 3] and row_seeds(more, "mindreader") == [0, 1]
    claim_workdir(tmp_path / "lb", "leaderboard", more)  # a row's seeds extended: the bench goes on
    assert json.loads(marker.read_text())["config"]["variants"]["per-channel"]["seeds"] == [0, 1, 2, 3]
    claim_workdir(tmp_path / "lb", "leaderboard", more.model_copy(update={"seeds": [0, 1, 5]}))  # every row's too
    for seeds in ([0, 5], [1, 2, 3, 4, 5]):  # a saved seed taken away or replaced: the saved rows would be wrong
        other = more.model_copy(update={"variants": {"per-channel": extra.model_copy(update={"seeds": seeds})},
                                        "seeds": [0, 1, 5]})
        with pytest.raises(ConfigError, match=r"differs in \['variants'\]"):
            claim_workdir(tmp_path / "lb", "leaderboard", other)
    with pytest.raises(ConfigError, match=r"differs in \['seeds'\]"):
        claim_workdir(tmp_path / "lb", "leaderboard", more.model_copy(update={"seeds": [0]}))
    # a model's row given its own seeds, after the bench's: the bench goes on; its saved seeds taken away: refused
    model_more = more.model_copy(update={"seeds": [0, 1, 5], "model_seeds": {"mindreader": [0, 1, 5, 6]}})
    assert row_seeds(model_more, "mindreader") == [0, 1, 5, 6] and row_seeds(model_more, "ridge") == [0, 1, 5]
    claim_workdir(tmp_path / "lb", "leaderboard", model_more)
    assert json.loads(marker.read_text())["config"]["model_seeds"] == {"mindreader": [0, 1, 5, 6]}
    with pytest.raises(ConfigError, match=r"differs in \['model_seeds'\]"):
        claim_workdir(tmp_path / "lb", "leaderboard", model_more.model_copy(update={"model_seeds": {}}))
    with pytest.raises(ValueError, match=r"model_seeds names \['per-channel'\], which are not in models"):
        LeaderboardConfig(**{**base.model_dump(), "model_seeds": {"per-channel": [0, 1, 2]}})
    with pytest.raises(ValueError, match="repeat a seed"):
        Variant(model="mindreader", label="x", seeds=[0, 0])


def test_a_finished_row_whose_seeds_are_not_extended_is_refused(tmp_path):
    from brainrecon.bench.leaderboard import add_seeds, sim_train_config
    from brainrecon.errors import ConfigError

    row = {"image_top1": 0.5, "seeds": {"0": 0.5, "1": 0.6}}
    config = sim_train_config("mindbridge", {}, 50, 3, 42, seed=0)
    assert not add_seeds(row, "mindbridge", config, tmp_path, tmp_path, [0, 1])  # nothing new: nothing trains
    with pytest.raises(ConfigError, match=r"scored over the training seeds \['0', '1'\], which its seeds now "
                                          r"\['0', '2'\] do not begin with"):
        add_seeds(row, "mindbridge", config, tmp_path, tmp_path, [0, 2])


def test_a_finished_run_is_reused_only_for_the_config_it_trained_with(tmp_path):
    import json

    import yaml

    from brainrecon.bench.leaderboard import COST_FILE, sim_train_config, train_in_child
    from brainrecon.errors import ConfigError

    config = sim_train_config("mindbridge", {}, 50, 3, 42, seed=0)
    run = tmp_path / "runs" / "mindbridge"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / COST_FILE).write_text(json.dumps({"train_seconds": 1.0, "peak_rss_mb": 2.0, "resumed": False}))
    store = tmp_path / "no-store"  # never read: nothing trains
    assert train_in_child("mindbridge", config, store, run, tmp_path / "log")["train_seconds"] == 1.0
    with pytest.raises(ConfigError, match=r"trained with another config than its row asks for \(differs in \['seed'\]"):
        train_in_child("mindbridge", {**config, "seed": 1}, store, run, tmp_path / "log")


def test_efficiency_plan_and_smoke_run(tmp_path, tiny_world):
    config = load_config(EfficiencyConfig, "efficiency-smoke", "bench")
    two_counts = config.model_copy(update={"session_counts": [1, 2]})  # the plan's shape; the run uses one
    plan = plan_runs(two_counts, ["subj01", "subj02"], list(range(1, 13)), tmp_path / "runs")
    assert [p["name"] for p in plan] == ["single-1", "multi-1", "single-2", "multi-2", "single-all", "multi-all",
                                         "pretrain-others", "adapt-1"]
    assert plan[0]["config"]["subject_sessions"] == {"subj01": [1]} and plan[0]["config"]["subjects"] == ["subj01"]
    assert plan[1]["config"]["subjects"] == ["subj01", "subj02"]
    assert plan[-1]["config"]["init_from"].endswith("pretrain-others")
    assert all(p["config"]["steps"] == config.steps for p in plan)

    result = run_efficiency(config, with_world(tmp_path / "eff", "efficiency", config, tiny_world),
                            echo=lambda _: None, preset="efficiency-smoke")
    kinds = {row["name"]: row for row in result["rows"]}
    assert set(kinds) == {"single-1", "multi-1", "single-all", "multi-all", "pretrain-others", "adapt-1"}
    assert "image_top1" not in kinds["pretrain-others"] and 0 <= kinds["adapt-1"]["image_top1"] <= 1
    record = json.loads((tmp_path / "eff" / "runs" / "single-1" / "training_stimuli.json").read_text())
    assert list(record["subjects"]) == ["subj01"]
    adapted = json.loads((tmp_path / "eff" / "runs" / "adapt-1" / "training_stimuli.json").read_text())
    assert set(adapted["subjects"]) == {"subj01", "subj02"}  # the pretraining's stimuli are part of its history
    page = (tmp_path / "eff" / "efficiency.md").read_text()
    assert "New-subject adaptation" in page and f"every run trained at {source_commit()}" in page
    assert f"World: `{config.world}`, whose config's sha256 begins {result['world']['sha256'][:12]}" in page
    assert all(row["commit"] == source_commit() for row in result["rows"])
    assert Image.open(tmp_path / "eff" / "efficiency.png").size[0] > 200


def test_efficiency_seeds_plan_and_page(tmp_path):
    """Every training seed trains the whole plan (the first under the plain names), each adaptation from its own
    seed's pretraining; the page gives the mean and Student-t CI over seeds and the one-session ratio per seed."""
    config = load_config(EfficiencyConfig, "efficiency-smoke", "bench").model_copy(update={"seeds": [0, 3]})
    plan = plan_runs(config, ["subj01", "subj02"], list(range(1, 13)), tmp_path / "runs")
    names = [p["name"] for p in plan]
    assert names[:4] == ["single-1", "multi-1", "single-all", "multi-all"] and "adapt-1-seed3" in names
    assert {p["config"]["seed"] for p in plan if p["name"].endswith("-seed3")} == {3}
    assert {p["config"]["seed"] for p in plan if "seed3" not in p["name"]} == {0}
    assert [p["config"]["init_from"] for p in plan if p["kind"] == "adapted"] == [
        str(tmp_path / "runs" / "pretrain-others"), str(tmp_path / "runs" / "pretrain-others-seed3")]
    with pytest.raises(ValueError, match="repeat a seed"):
        validate_config(EfficiencyConfig, {**config.model_dump(), "seeds": [1, 1]}, "test")

    def row(kind, sessions, seed, image):
        return {"name": f"{kind}-{sessions}-{seed}", "kind": kind, "sessions": sessions, "seed": seed,
                "image_top1": image, "image_ci95": 0.01, "brain_top1": image, "brain_ci95": 0.01,
                "train_seconds": 60, "commit": "abc1234"}

    rows = [row("per-subject", 1, 0, 0.10), row("per-subject", 1, 3, 0.20), row("multi-subject", 1, 0, 0.30),
            row("multi-subject", 1, 3, 0.50)]
    result = {"preset": "p", "config": config.model_dump(mode="json"), "target": "subj01", "n_sessions": 12,
              "train_trials_per_session": 5, "rows": rows, "machine": {"cpus": 2}, "commit": "abc1234",
              "date": "2026-12-04T00:00:00", "note": "note",
              "weights": {"fraction": 0.1, "select": "last", "metric": "centred_cosine", "confirm": True}}
    single = cells(result, "per-subject")[0]
    assert single["n"] == 2 and single["image"] == pytest.approx(0.15)
    assert single["image_ci95"] == pytest.approx(12.706 * 0.05, rel=1e-3)  # t(0.975, 1) x std / sqrt(2)
    page = efficiency_markdown(result)
    assert "over the 2 training seeds [0, 3]" in page and "3.00 (seed 0), 2.50 (seed 3)" in page
    one = efficiency_markdown({**result, "config": {**result["config"], "seeds": [0]}, "rows": rows[::2]})
    assert "one training seed" in one and "10.0 ± 1.0" in one
    assert "Each run keeps its last weights (10% of the training stimuli held out" in page
    assert "| sessions of the target |" in page.split("\n\n")[3]  # the table starts a paragraph of its own
    best = {"fraction": 0.1, "select": "best", "metric": "centred_cosine", "confirm": True}
    early = [{**rows[0], "kept_step": 13, "last_step": 300}] + [{**r, "kept_step": 300, "last_step": 300}
                                                                 for r in rows[1:]]
    chose = efficiency_markdown({**result, "weights": best, "rows": early})
    assert ("best validation centred_cosine, if its paired gain over the last weights is beyond the slice's noise "
            "(else the last weights) (10% of the training stimuli") in chose
    assert "before their last step: per-subject-1-0 (step 13 of 300)." in chose
    unconfirmed = efficiency_markdown({**result, "weights": {**best, "confirm": False}, "rows": early})
    assert "best validation centred_cosine (10% of the training stimuli" in unconfirmed
    late = efficiency_markdown({**result, "weights": best, "rows": early[1:] + [{**early[0], "kept_step": 300}]})
    assert "Every run kept its last step." in late
    last = efficiency_markdown({**result, "weights": {**best, "select": "last"}, "rows": early})
    assert "Each run keeps its last weights (10% of the training stimuli held out" in last and "step 13" not in last


def test_gpu_check_runs_at_toy_sizes_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh is ready for a GPU slot: the same code runs end to end at --tiny sizes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--tiny", "--json",
                             str(tmp_path / "gpu.json")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "| MindEye2-style training, bf16 |" in result.stdout and "ms/query" in result.stdout
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert [r["stage"].split(",")[0] for r in rows] == ["MindEye2-style training", "ridge",
                                                         "Ecphory memory search"]
    assert all(r["seconds"] > 0 for r in rows)


def test_every_training_seed_is_scored_and_a_closed_form_fit_trains_once(train_world, tmp_path):
    from brainrecon.bench.leaderboard import seed_commits, seed_retrievals, sim_train_config

    overrides = {"max_steps": 2, "batch_size": 8, "validation": {"fraction": 0.0}}
    config = sim_train_config("mindreader", overrides, 50, 3, 42, seed=0)
    values = seed_retrievals("mindreader", config, train_world, tmp_path, [0, 3], first=0.5)
    assert values["0"] == 0.5 and 0.0 <= values["3"] <= 1.0
    (tmp_path / "mindreader").mkdir()  # the first seed's run, trained by the bench before (as if at another commit)
    (tmp_path / "mindreader" / "model.json").write_text(json.dumps({"commit": "0ld"}))
    assert seed_commits("mindreader", tmp_path, list(values)) == {"0": "0ld", "3": source_commit()}
    assert (tmp_path / "mindreader-seed3" / "metrics.json").is_file()
    assert "seed: 3" in (tmp_path / "mindreader-seed3" / "config.yaml").read_text()
    ridge = sim_train_config("ridge", {}, 50, 3, 42, seed=0)
    assert seed_retrievals("ridge", ridge, train_world, tmp_path, [0, 1, 2], first=0.25) == {"0": 0.25}
    assert not list(tmp_path.glob("ridge-seed*"))


def test_leaderboard_rows_are_planned_and_checked_before_anything_runs():
    from brainrecon.bench.leaderboard import planned_rows, sim_train_config
    from brainrecon.errors import ConfigError

    ablation = load_config(LeaderboardConfig, "psychometry-ablation", "bench")
    rows = planned_rows(ablation)
    assert [r[0] for r in rows] == ["mindbridge", "psychometry-moe", "psychometry-dense", "psychometry-one-expert",
                                    "psychometry-512-steps", "psychometry-dense-512-steps"]
    pinned = {"steps": None, "validation": {"every": 25}}  # the budget its page ran with (see PAGE_BUDGETS)
    assert rows[2][2] == {**pinned, "epochs": 1, "model": {"moe": "dense"}} and rows[4][2] == {**pinned, "epochs": 4}
    assert rows[5][2] == {**pinned, "epochs": 4, "model": {"moe": "dense"}}
    assert ablation.variants["psychometry-dense-512-steps"].against == "psychometry-512-steps"
    assert not any(r[4] for r in rows)  # no Ecphory row: the ablation compares decoders
    equal = load_config(LeaderboardConfig, "equal-budget", "bench")
    budgets = [sim_train_config(model, overrides, 300, 30, 42, seed=0) for _, model, overrides, _, _ in
               planned_rows(equal) if model != "ridge"]
    # 512 steps, or 4 epochs (MindBridge-style and Psychometry: 128 steps an epoch on
    # isotropic-code64-noise3, the world this page was made on)
    assert all(c.get("steps") == 512 or (c.get("steps") is None and c["epochs"] == 4) for c in budgets)
    from brainrecon.config import preset_names

    presets = preset_names("bench")
    assert {"default", "equal-budget", "convergence", "convergence-mindeye"} <= set(presets)
    for preset in presets:  # every bench preset validates (a leaderboard's rows with their training configs)
        load_config(EfficiencyConfig if preset.startswith("efficiency") else LeaderboardConfig, preset, "bench")
    mindeye = planned_rows(load_config(LeaderboardConfig, "convergence-mindeye", "bench"))
    every25 = {"validation": {"every": 25}}
    assert [(r[0], r[2]) for r in mindeye] == [("mindeye2-512-steps", {"steps": 512}),
                                               ("mindeye2-2048-steps", {"steps": 2048}),
                                               ("mindeye1-512-steps", {"steps": 512, **every25}),
                                               ("mindeye1-2048-steps", {"steps": 2048, **every25})]
    base = {"world": "tiny", "models": ["psychometry"]}
    with pytest.raises(ConfigError, match="unknown model"):
        validate_config(LeaderboardConfig, {**base, "models": ["mindeye3"]})
    with pytest.raises(ConfigError, match="'typo' row's training config is invalid.*moee"):
        validate_config(LeaderboardConfig, {**base, "variants": {"typo": {
            "model": "psychometry", "label": "x", "train_overrides": {"model": {"moee": "dense"}}}}})
    with pytest.raises(ConfigError, match="repeat a seed"):
        validate_config(LeaderboardConfig, {**base, "seeds": [0, 0]})
    for name in ("psychometry-seed1", "../elsewhere", "a b"):  # an extra seed's folder, or not a file name
        with pytest.raises(ConfigError, match="cannot name a row's files"):
            validate_config(LeaderboardConfig, {**base, "variants": {name: {"model": "psychometry", "label": "x"}}})


# (bench preset, row) -> (steps, epochs, validation every) of the runs its page reports; Psychometry: 128 steps an
# epoch on isotropic-code64-noise3, the default world when those pages were made
PAGE_BUDGETS = {("psychometry-ablation", "psychometry-moe"): (None, 1, 25),
                ("psychometry-ablation", "psychometry-dense-512-steps"): (None, 4, 25),
                ("psychometry-width", "psychometry-wide-512-steps"): (None, 4, 25),
                ("psychometry-decoder", "psychometry-linear-512-steps"): (None, 4, 25),
                ("equal-budget", "psychometry-512-steps"): (None, 4, 25),
                ("equal-budget", "mindeye1-512-steps"): (512, None, 25),
                ("convergence-mindeye", "mindeye1-2048-steps"): (2048, None, 25),
                ("convergence-psychometry", "psychometry-2048-steps"): (2048, None, 64)}


@pytest.mark.parametrize("preset,row", sorted(PAGE_BUDGETS))
def test_bench_rows_keep_their_pages_budget_when_a_train_preset_changes(preset, row):
    """A page's runs are reproduced by its bench preset: a row pins the budget and validation cadence it ran with,
    so a train preset trained longer since (sim-psychometry and sim-mindeye1 on 2026-12-04) does not change it."""
    from brainrecon.bench.leaderboard import planned_rows, sim_train_config

    planned = {name: (model, overrides) for name, model, overrides, _, _ in
               planned_rows(load_config(LeaderboardConfig, preset, "bench"))}
    config = sim_train_config(*planned[row], 300, 30, 42, seed=0)
    steps, epochs, every = PAGE_BUDGETS[preset, row]
    assert config.get("steps") == steps and config["validation"]["every"] == every
    if epochs is not None:
        assert config["epochs"] == epochs


def test_leaderboard_page_describes_ecphory_only_when_it_has_an_ecphory_row():
    from brainrecon.bench.leaderboard import leaderboard_markdown

    def row(label, **extra):
        return {"label": label, "image_top1": 0.5, "image_ci95": 0.01, "brain_top1": 0.5, "brain_ci95": 0.01,
                "ratio_to_oracle": 0.5, "ratio_to_ceiling": 0.6, "embedding_cosine": 0.1, "pixcorr": 0.2,
                "ssim": 0.3, "clip": 0.8, "parameters": 10, "steps": 128, "validation": None,
                "train_seconds": 1.0, "peak_rss_mb": 100.0, "subjects": "all", **extra}

    result = {"preset": "psychometry-ablation", "subject": "subj01", "commit": "abc", "date": "2026-12-02T00:00:00",
              "note": "a testbed", "rows": [row("Psychometry, dense FFN")],
              "oracle": {"label": "oracle", "image_top1": 1.0, "image_ci95": 0.0, "brain_top1": 1.0,
                         "brain_ci95": 0.0, "way": 300, "spaces": {}},
              "config": {"draws": 30, "seed": 42, "seeds": [0], "recon_images": 30, "samples": 4, "recon_steps": 25},
              "machine": {"cpus": 2, "torch": "2", "threads": 2, "cuda": None}}
    assert "Psychometry, dense FFN" in leaderboard_markdown(result)
    assert "Machine: 2 CPUs, torch" in leaderboard_markdown(result)  # a record from before the CPU was kept
    assert "World:" not in leaderboard_markdown(result)  # nor its world's content
    result["machine"]["cpu"] = "Some Xeon (family 6, model 1), AVX-512"
    assert "Machine: 2 CPUs (Some Xeon (family 6, model 1), AVX-512), torch" in leaderboard_markdown(result)
    result["rows"][0].update(commits={"0": "abc1234", "1": "abc1234"}, resumed_at={"0": [], "1": []})
    assert "every run trained at abc1234." in leaderboard_markdown(result)  # none resumed: nothing said
    result["rows"][0]["resumed_at"]["1"] = ["def5678"]  # a finished run resumed to choose its weights again
    assert ("every run trained at abc1234; runs resumed at def5678 (Psychometry, dense FFN): continued, or "
            "finished and their weights chosen again by that commit's rule." in leaderboard_markdown(result))
    result["rows"][0]["resumed_at"]["1"] = [None]  # resumed where git could not name the commit
    assert "runs resumed at an unrecorded commit (Psychometry, dense FFN)" in leaderboard_markdown(result)
    assert "Ecphory" not in leaderboard_markdown(result)  # no Ecphory row: no note about one
    assert "validation curves" not in leaderboard_markdown(result)  # no curve: no figure to link
    assert "Paired over training seeds" not in leaderboard_markdown(result)
    assert "the same 128 for every trained row" in leaderboard_markdown(result)  # one budget: said so
    assert "this bench sets" not in leaderboard_markdown(result)
    result["config"]["train_overrides"] = {"validation": {"select": "last"}}  # how weights are kept: said so
    assert "this bench sets `validation: {'select': 'last'}` in every row" in leaderboard_markdown(result)
    result["rows"].append(row("Ridge", steps=None))  # a closed-form row has no budget to compare
    assert "the same 128 for every trained row" in leaderboard_markdown(result)
    result["rows"].append(row("Psychometry, 512 steps", steps=512))
    assert "each preset's own budget, not an equal one" in leaderboard_markdown(result)
    del result["rows"][1:]
    result["rows"][0]["paired"] = {"against": "moe", "label": "Psychometry", "gain": 0.02, "ci95": 0.01, "seeds": 3}
    assert ("Psychometry, dense FFN against Psychometry: +2.0 points (95% CI +1.0 to +3.0, 3 seeds)"
            in leaderboard_markdown(result))
    result["rows"].append(row("Psychometry + Ecphory", ecphory={"enabled": True, "keys": "prediction", "k": 20,
                                                                    "alpha": 0.25}))
    assert "Psychometry + Ecphory: the same run" in leaderboard_markdown(result)


def test_the_best_row_is_the_best_over_training_seeds_not_the_luckiest_first_seed():
    from brainrecon.bench.leaderboard import best_row_text, leaderboard_markdown

    seeds = {"0": 0.8, "1": 0.8, "2": 0.8}
    rows = [{"label": "lucky", "image_top1": 0.83, "seeds_mean": 0.80, "seeds_ci95": 0.02, "seeds": seeds},
            {"label": "steady", "image_top1": 0.82, "seeds_mean": 0.82, "seeds_ci95": 0.01, "seeds": seeds},
            {"label": "ridge", "image_top1": 0.81}]  # a closed-form fit: one figure
    result = {"rows": rows, "oracle": {"image_top1": 0.98}}
    assert best_row_text(result) == ("Best: steady, 82.0% ± 1.0 over 3 training seeds, 0.84 of the oracle's image "
                                     "retrieval")
    rows[1]["seeds_mean"] = 0.70
    assert best_row_text(result) == "Best: ridge, 81.0%, 0.83 of the oracle's image retrieval"
    for row in rows:  # what the page's table needs besides
        row.update(image_ci95=0.01, brain_top1=0.5, brain_ci95=0.01, ratio_to_oracle=0.8, embedding_cosine=0.1,
                   pixcorr=0.2, ssim=0.3, clip=0.9, parameters=1, steps=128, validation=None, train_seconds=1.0,
                   peak_rss_mb=1.0, subjects="all")
    page = leaderboard_markdown({**result, "preset": "p", "subject": "subj01", "commit": "abc", "note": "a testbed",
                                 "date": "2026-12-05T00:00:00", "oracle": {**result["oracle"], "label": "oracle",
                                 "image_ci95": 0.0, "brain_top1": 1.0, "brain_ci95": 0.0, "way": 300, "spaces": {}},
                                 "config": {"draws": 30, "seed": 42, "seeds": [0, 1, 2], "recon_images": 30,
                                            "samples": 4, "recon_steps": 25},
                                 "machine": {"cpus": 2, "torch": "2", "threads": 2, "cuda": None}})
    assert page.index("| ridge |") < page.index("| lucky |") < page.index("| steady |")  # the table ranks alike


def test_leaderboard_page_says_which_commits_trained_its_rows():
    from brainrecon.bench.leaderboard import _trained_at_text

    rows = [{"label": "Ridge", "commits": {"0": "aaa"}}, {"label": "MindEye1-style", "commits": {"0": "aaa"}}]
    assert _trained_at_text(rows) == "every run trained at aaa"
    rows[1]["commits"] = {"0": "aaa", "1": "bbb", "2": "bbb"}  # a bench resumed at another commit
    rows.append({"label": "MindEye2-style", "commits": {"0": None}})  # a run from before runs recorded it
    rows.append({"label": "MindEye2-style + Ecphory", "ecphory": {"enabled": True}, "commits": {"0": "ccc"}})
    assert _trained_at_text(rows) == ("runs trained at aaa (Ridge, MindEye1-style); bbb (MindEye1-style); "
                                      "not recorded (MindEye2-style)")


def test_variants_are_paired_seed_by_seed_with_the_first_row_of_their_model():
    from brainrecon.bench.leaderboard import paired_seed_gains

    rows = [{"model": "mindbridge", "kind": "mindbridge", "label": "MB", "seeds": {"0": 0.7, "1": 0.6, "2": 0.65}},
            {"model": "psychometry+ecphory", "kind": "psychometry", "label": "E"},  # not trained: no seeds
            {"model": "moe", "kind": "psychometry", "label": "MoE", "seeds": {"0": 0.40, "1": 0.30, "2": 0.35}},
            {"model": "dense", "kind": "psychometry", "label": "Dense", "seeds": {"0": 0.42, "1": 0.33, "2": 0.36}},
            {"model": "one", "kind": "psychometry", "label": "One", "seeds": {"0": 0.5}}]
    paired_seed_gains(rows)
    assert [("paired" in r) for r in rows] == [False, False, False, True, False]  # one seed: nothing to pair
    dense = rows[3]["paired"]
    assert dense["against"] == "moe" and dense["seeds"] == 3
    assert dense["gain"] == pytest.approx(0.02)  # differences 0.02, 0.03, 0.01
    # their spread is far below either row's spread over seeds, which pairing removes
    assert dense["ci95"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
    # a variant named against another row is paired with that one instead
    rows.append({"model": "dense-long", "kind": "psychometry", "label": "Dense, long",
                 "seeds": {"0": 0.52, "1": 0.40, "2": 0.45}})
    paired_seed_gains(rows, {"dense-long": "dense"})
    assert rows[-1]["paired"]["against"] == "dense"
    assert rows[-1]["paired"]["gain"] == pytest.approx((0.10 + 0.07 + 0.09) / 3)


def test_a_variant_paired_against_a_row_that_is_not_earlier_is_refused():
    from brainrecon.bench.leaderboard import LeaderboardConfig

    variants = {"long": {"model": "psychometry", "label": "long", "train_overrides": {"epochs": 2},
                         "against": "short"},
                "short": {"model": "psychometry", "label": "short"}}
    with pytest.raises(ValueError, match="variant 'long' is paired against 'short', which is not an earlier row"):
        LeaderboardConfig(models=["mindbridge"], variants=variants)


def test_validation_curves_figure_only_for_rows_that_have_a_curve(tmp_path):
    from brainrecon.bench.leaderboard import write_validation_curves

    closed_form = {"label": "Ridge", "validation": None}
    assert write_validation_curves([closed_form], tmp_path, "equal-budget") is None
    assert not list(tmp_path.iterdir())  # nothing written
    trained = {"label": "MindBridge-style", "validation": {"curve": [[25, 0.1], [50, 0.3]], "chosen_step": 50}}
    ecphory = {**trained, "label": "MindBridge-style + Ecphory", "ecphory": {"enabled": True}}  # the same run
    name = write_validation_curves([closed_form, trained, ecphory], tmp_path, "brainrecon/configs/bench/x.yaml")
    assert name == "x-curves.png" and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def bench_progress():
    """benchmarks/bench_progress.py, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_progress.py"
    spec = importlib.util.spec_from_file_location("bench_progress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_progress_keeps_finished_rows_and_extra_seeds_and_refuses_another_bench(tmp_path):
    """The few files a resumed leaderboard reads instead of redoing the work, and nothing it would trip on."""
    progress = bench_progress()
    out = tmp_path / "out"
    config = {"models": ["ridge", "mindeye1", "psychometry"], "seeds": [0, 1]}
    for relative, text in {"bench.json": json.dumps({"bench": "leaderboard", "config": config}),
                           "world.json": '{"fingerprint": {}}',
                           "rows/ridge.json": "{}", "runs/ridge/model.safetensors": "weights",
                           "rows/psychometry.json": "{}",  # its Ecphory row, unfinished, reconstructs its run
                           "runs/mindeye1/bench_cost.json": "{}",  # a first seed: retrained, never kept
                           "runs/mindeye1-seed1/bench_cost.json": "{}", "runs/mindeye1-seed1/metrics.json": "{}",
                           "runs/mindeye1-seed1/config.yaml": "seed: 1",
                           "runs/mindeye1-seed1/model.json": "{}", "runs/mindeye1-seed1/model.safetensors": "w",
                           "runs/mindeye1-seed2/config.yaml": "not a planned seed"}.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(text)

    assert progress.save(out, tmp_path / "keep") == (["ridge"], ["mindeye1-seed1"])
    kept = sorted(str(p.relative_to(tmp_path / "keep")) for p in (tmp_path / "keep").rglob("*") if p.is_file())
    assert kept == ["bench.json", "rows/ridge.json", "runs/mindeye1-seed1/bench_cost.json",
                    "runs/mindeye1-seed1/config.yaml", "runs/mindeye1-seed1/metrics.json",
                    "runs/mindeye1-seed1/model.json", "world.json"]
    assert progress.restore(tmp_path / "keep", tmp_path / "fresh") == (["ridge"], ["mindeye1-seed1"])
    assert (tmp_path / "fresh" / "runs" / "mindeye1-seed1" / "metrics.json").is_file()
    assert progress.restore(tmp_path / "keep", tmp_path / "fresh") == (["ridge"], [])  # already there: kept
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bench.json").write_text(json.dumps({"bench": "leaderboard", "config": {"seeds": [0]}}))
    for keep, target, words in [(tmp_path / "keep", tmp_path / "other", "another config"),
                                (tmp_path / "keep", tmp_path / "keep" / "runs", "overlap"),
                                (tmp_path / "keep", tmp_path / "out" / "rows", "not a brainrecon bench folder"),
                                (tmp_path / "other" / "rows", tmp_path / "new", "not a bench folder")]:
        with pytest.raises(SystemExit, match=words):
            progress.restore(keep, target)
    assert not (tmp_path / "other" / "rows").exists()  # nothing copied into a bench of another config
    with pytest.raises(SystemExit, match="overlap"):
        progress.save(out, out / "keep")  # saving into the bench would replace the bench
    (out / "rows" / "psychometry+ecphory.json").write_text("{}")  # an Ecphory row without its gain: unfinished
    assert progress.save(out, tmp_path / "keep")[0] == ["ridge"]
    (out / "rows" / "psychometry+ecphory.json").write_text('{"ecphory": {"gain": {}}}')  # done: both kept
    assert progress.save(out, tmp_path / "keep")[0] == ["psychometry", "psychometry+ecphory", "ridge"]


def test_a_bench_stopped_while_scoring_a_row_scores_it_again_when_resumed(tmp_path, tiny_world):
    """The row's reconstructions were written but not its row file (the bench was stopped while scoring it): the
    resumed bench reconstructs again over them instead of refusing the folder, and gets the same figures."""
    config = load_config(LeaderboardConfig, "smoke", "bench").model_copy(update={"models": ["mindreader"]})
    first = run_leaderboard(config, with_world(tmp_path / "lb", "leaderboard", config, tiny_world), echo=print)
    (tmp_path / "lb" / "rows" / "mindreader.json").unlink()
    assert (tmp_path / "lb" / "recons" / "mindreader" / "manifest.json").is_file()
    again = run_leaderboard(config, tmp_path / "lb", echo=print)["rows"][0]
    assert again["image_top1"] == first["rows"][0]["image_top1"] and again["clip"] == first["rows"][0]["clip"]


def test_a_finished_row_given_more_seeds_trains_only_the_new_ones(tmp_path, tiny_world):
    """A bench extended with seeds after its rows were written: the row keeps its first seed's run and scores, and
    gains the new seeds' figures, mean and CI; its variant's own seeds replace the bench's for it alone."""
    from brainrecon.bench.leaderboard import Variant

    ridge = Variant(model="ridge", label="Ridge, again")
    config = load_config(LeaderboardConfig, "smoke", "bench").model_copy(update={"models": ["mindreader"],
                                                                              "variants": {"ridge-2": ridge}})
    first = run_leaderboard(config, with_world(tmp_path / "lb", "leaderboard", config, tiny_world), echo=print)
    assert first["rows"][0]["seeds"] == {"0": first["rows"][0]["image_top1"]} and "seeds_mean" not in first["rows"][0]
    weights = tmp_path / "lb" / "runs" / "mindreader" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    more = config.model_copy(update={"seeds": [0, 2],
                                     "variants": {"ridge-2": ridge.model_copy(update={"seeds": [0, 3]})}})
    messages = []
    again = run_leaderboard(more, tmp_path / "lb", echo=messages.append)
    row, ridge_row = again["rows"]
    assert list(row["seeds"]) == ["0", "2"] and row["seeds"]["0"] == first["rows"][0]["image_top1"]
    assert row["seeds_mean"] == pytest.approx((row["seeds"]["0"] + row["seeds"]["2"]) / 2)
    assert row["commits"]["2"] == source_commit() and weights.stat().st_mtime_ns == before  # seed 0 not retrained
    assert any("training seed 2" in m for m in messages)
    assert ridge_row["seeds"] == {"0": ridge_row["image_top1"]}  # a closed-form fit trains once, whatever its seeds
    assert json.loads((tmp_path / "lb" / "rows" / "mindreader.json").read_text())["seeds"] == row["seeds"]
    messages.clear()
    run_leaderboard(more, tmp_path / "lb", echo=messages.append)  # resumed again: nothing left to train
    assert not any("training" in m for m in messages)


def test_every_row_is_set_against_the_ridge_of_its_own_space():
    from brainrecon.bench.leaderboard import _own_seeds_text, _paired_text, gains_over_ridge

    rows = [{"model": "ridge", "kind": "ridge", "label": "Ridge", "space": "tokens", "image_top1": 0.30},
            {"model": "ridge-pooled", "kind": "ridge", "label": "Ridge, pooled", "space": "pooled",
             "image_top1": 0.79},
            {"model": "me2", "kind": "mindeye2", "label": "ME2", "space": "tokens", "image_top1": 0.78,
             "seeds": {"0": 0.78, "1": 0.80}, "seeds_mean": 0.79, "seeds_ci95": 0.12},
            {"model": "me2-pooled", "kind": "mindeye2", "label": "ME2, pooled", "space": "pooled",
             "image_top1": 0.83, "seeds": {"0": 0.83, "1": 0.81, "2": 0.82}, "seeds_mean": 0.82, "seeds_ci95": 0.02},
            {"model": "one", "kind": "mindeye2", "label": "One seed", "space": "pooled", "image_top1": 0.5,
             "seeds": {"0": 0.5}},
            {"model": "nowhere", "kind": "mindeye2", "label": "No ridge", "space": "other", "image_top1": 0.5,
             "seeds": {"0": 0.5, "1": 0.6}, "seeds_mean": 0.55, "seeds_ci95": 0.6}]
    gains_over_ridge(rows)
    assert [r.get("over_ridge", {}).get("label") for r in rows] == [None, None, "Ridge", "Ridge, pooled", None, None]
    assert rows[2]["over_ridge"]["gain"] == pytest.approx(0.49) and rows[2]["over_ridge"]["seeds"] == 2
    assert rows[3]["over_ridge"] == {"label": "Ridge, pooled", "gain": pytest.approx(0.03), "ci95": 0.02, "seeds": 3}
    result = {"rows": rows, "config": {"seeds": [0, 1], "variants": {"me2-pooled": {"seeds": [0, 1, 2]},
                                                                     "nowhere": {"seeds": None}}}}
    assert _own_seeds_text(result) == ", or a row's own: [0, 1, 2] for ME2, pooled"
    assert _own_seeds_text({**result, "config": {"seeds": [0, 1]}}) == ""
    with_model = {**result, "config": {**result["config"], "model_seeds": {"me2": [0, 1, 4]}}}
    assert _own_seeds_text(with_model) == ", or a row's own: [0, 1, 4] for ME2; [0, 1, 2] for ME2, pooled"
    assert _paired_text(rows, "over_ridge").endswith("ME2, pooled against Ridge, pooled: +3.0 points (95% CI +1.0 to "
                                                     "+5.0, 3 seeds)")


def test_a_bench_restored_from_its_saved_work_retrains_only_what_was_unfinished(tmp_path, tiny_world):
    """Save an interrupted bench, restore it elsewhere with the same world: its finished extra seed is read,
    not trained again, and the row comes out with that seed's figure and commit."""
    from brainrecon.bench.leaderboard import WORLD_FINGERPRINT
    from brainrecon.errors import ConfigError

    progress = bench_progress()
    config = load_config(LeaderboardConfig, "smoke", "bench").model_copy(update={"models": ["mindreader"],
                                                                              "seeds": [0, 1]})
    first = run_leaderboard(config, with_world(tmp_path / "lb", "leaderboard", config, tiny_world), echo=print)
    row = first["rows"][0]
    (tmp_path / "lb" / "rows" / "mindreader.json").unlink()  # as if the bench stopped before writing the row
    assert progress.save(tmp_path / "lb", tmp_path / "keep") == ([], ["mindreader-seed1"])
    progress.restore(tmp_path / "keep", tmp_path / "fresh")
    shutil.copytree(tiny_world, tmp_path / "fresh" / "store")  # saves simulating it again
    again = run_leaderboard(config, tmp_path / "fresh", echo=print)["rows"][0]
    assert not (tmp_path / "fresh" / "runs" / "mindreader-seed1" / "model.safetensors").exists()  # never retrained
    assert again["seeds"]["1"] == row["seeds"]["1"] and again["commits"] == row["commits"]
    assert again["resumed_at"] == {"0": [], "1": []}  # each seed's run read for resumptions: none here
    assert again["image_top1"] == pytest.approx(row["image_top1"])  # the first seed, retrained: the same run
    record = json.loads((tmp_path / "fresh" / WORLD_FINGERPRINT).read_text())
    betas = "subjects/subj01/betas.npy"
    assert betas in record["fingerprint"]
    assert record["fingerprinted_on"]["cpu"] and record["fingerprinted_on"]["cpus"] >= 1  # the machine: said
    record["fingerprint"][betas] = [value + 0.001 for value in record["fingerprint"][betas]]  # the last digits
    (tmp_path / "fresh" / WORLD_FINGERPRINT).write_text(json.dumps(record))
    run_leaderboard(config, tmp_path / "fresh", echo=print)  # a world simulated again, up to float noise: accepted
    record["fingerprint"][betas] = [value + 0.5 for value in record["fingerprint"][betas]]
    (tmp_path / "fresh" / WORLD_FINGERPRINT).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="other betas than the store"):
        run_leaderboard(config, tmp_path / "fresh", echo=print)  # a world simulated differently is refused


@pytest.mark.parametrize("cpuinfo, named", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
     "model name\t: Intel(R) Xeon(R) Platinum 8480\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\n"
     "processor\t: 1\nmodel name\t: another\n", "Intel(R) Xeon(R) Platinum 8480, family 6 model 143, AVX-512"),
    ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu avx2 avx512\n",
     "AMD EPYC 7763, family 25 model 1"),  # 'avx512' alone is not the AVX-512 foundation flag
    ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n",
     "aarch64, implementer 0x41 part 0xd0c"),
    ("processor\t: 0\nmodel name\t:\nflags\t\t: fpu avx512f\n", "x86_64, AVX-512"),  # an empty name, not the next line
])
def test_a_bench_names_the_cpu_from_its_cpuinfo(cpuinfo, named):
    from brainrecon.bench.leaderboard import describe_cpu

    fallback = "aarch64" if "implementer" in cpuinfo else "x86_64"
    assert describe_cpu(cpuinfo, fallback) == named
