"""`brainrecon evaluate`: the schema, intervals against hand computations, unavailable metrics, the leakage guard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from brainrecon.cli import app
from brainrecon.config import validate_config
from brainrecon.data import open_store
from brainrecon.evaluate.evaluation import (
    METRICS_FORMAT,
    EvaluateConfig,
    evaluate_run,
    final_evaluation,
    feature_encoders,
    image_values,
    metrics_table,
    predict_test,
)
from brainrecon.evaluate.feature_nets import AlexNet
from brainrecon.evaluate.leakage import LeakageError, check_leakage
from brainrecon.evaluate.metrics import pixcorr, ssim
from brainrecon.evaluate.retrieval import cosine_scores, retrieval_top1
from brainrecon.reconstruct import ReconstructConfig, memory_dir, reconstruct
from brainrecon.train.run import RunContext
from brainrecon.train.config import TrainConfig
from brainrecon.train.trainer import train

torch.set_num_threads(1)
RECON = {"n_images": 6, "steps": 6, "batch_size": 8}
SETTINGS = EvaluateConfig(way=50, draws=5)


@pytest.fixture(scope="module")
def two_subject_run(train_world, tmp_path_factory):
    config = validate_config(TrainConfig, {
        "model": {"kind": "ridge", "target": "image_pooled", "alphas": [1000.0], "folds": 2},
        "targets": {"clip": "simworld", "image_tokens": False, "image_pooled": True},
        "subjects": ["subj01", "subj02"], "eval": {"way": 50, "draws": 5}})
    run = train(config, train_world, tmp_path_factory.mktemp("eval") / "run", progress=False)
    final_evaluation(run)
    return run


@pytest.fixture(scope="module")
def recons(two_subject_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "recons"
    reconstruct(two_subject_run, out, ReconstructConfig(samples=2, k=2, alpha=0.6, **RECON), progress=False)
    return out


@pytest.fixture(scope="module")
def metrics(two_subject_run, recons):
    return evaluate_run(two_subject_run, recons, config=SETTINGS, progress=False)


def _load(recons, subject):
    manifest = json.loads((recons / "manifest.json").read_text())
    entries = [e for e in manifest["images"] if e["subject"] == subject]
    ids = np.array([e["stimulus_id"] for e in entries])
    return ids, np.stack([np.asarray(Image.open(recons / e["file"])) for e in entries])


def test_metrics_json_schema_and_values_match_direct_computation(two_subject_run, recons, metrics):
    saved = json.loads((two_subject_run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert metrics["format"] == METRICS_FORMAT and metrics["model"] == "ridge"
    assert metrics["data_source"] == "simulated" and "not NSD results" in metrics["note"]
    assert metrics["selection"] == {"mode": "brain", "label": "brain-predicted (honest)", "oracle": False}
    assert set(metrics["versions"]) >= {"brainrecon", "torch", "python"}
    assert metrics["leakage"]["held_out"] and len(metrics["leakage"]["checks"]) >= 3
    # the Ecphory memories the reconstructions were made with were read, where `reconstruct` saved them
    memory_checks = [c for c in metrics["leakage"]["checks"] if "Ecphory memory" in c]
    assert [c.split(":")[0] for c in memory_checks] == ["subj01", "subj02"], memory_checks

    store = open_store(metrics["store"])
    for subject in ("subj01", "subj02"):
        values = metrics["subjects"][subject]["values"]
        ids, images = _load(recons, subject)
        truth = store.images_for(ids)
        per_image = pixcorr(truth, images, per_image=True)
        assert values["pixcorr"]["value"] == pytest.approx(per_image.mean(), abs=1e-12)
        # the 95% interval, by hand: 1.96 standard errors of the per-image scores
        assert values["pixcorr"]["ci95"] == pytest.approx(1.96 * per_image.std(ddof=1) / np.sqrt(len(ids)))
        assert values["ssim"]["value"] == pytest.approx(ssim(truth, images), abs=1e-12)
        assert values["pixcorr"]["n"] == len(ids) == RECON["n_images"]
        # retrieval: the protocol's draws on the run's own predictions
        context = RunContext.open(two_subject_run)
        predicted, test_ids = predict_test(context.model, store, subject)
        scores = cosine_scores(predicted["image_pooled"], context.targets.get("image_pooled", test_ids))
        expected = retrieval_top1(scores, 50, 5, 42)
        assert values["image_retrieval"]["value"] == expected.image_top1
        assert values["brain_retrieval"]["ci95"] == expected.brain_ci95
        assert values["embedding_cosine"]["value"] == pytest.approx(np.diag(scores).mean())
        # CLIP is available on the simulated world (the shipped small CLIP), the others are not
        assert 0.0 <= values["clip"]["value"] <= 1.0 and "small CLIP" in values["clip"]["network"]
        for name in ("alexnet2", "alexnet5", "inception", "effnet", "swav"):
            assert values[name] == {"available": False, "reason": values[name]["reason"]}
            assert "--weights" in values[name]["reason"]

    # the average: mean of subject means, Student-t interval over the two subjects
    means = np.array([metrics["subjects"][s]["values"]["ssim"]["value"] for s in ("subj01", "subj02")])
    average = metrics["average"]["ssim"]
    assert average["value"] == pytest.approx(means.mean())
    assert average["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * means.std(ddof=1) / np.sqrt(2))
    assert metrics["average"]["swav"]["available"] is False


def test_printed_table_has_every_subject_and_names_missing_metrics(metrics):
    table = metrics_table(metrics)
    lines = table.splitlines()
    assert lines[0].startswith("| subject | PixCorr | SSIM | Alex(2)")
    assert any(line.startswith("| subj02 |") for line in lines)
    assert any(line.startswith("| average |") for line in lines)
    assert "n/a" in table and "SwAV: not available" in table
    assert "Selection: brain-predicted (honest)" in table and "not NSD results" in table


def test_a_feature_network_from_standard_weights_is_scored_deterministically(tmp_path, train_world):
    torch.manual_seed(0)
    torch.save(AlexNet().state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    store = open_store(train_world)
    truth = store.images[:5]
    recon = np.ascontiguousarray(truth[::-1])
    encoders = feature_encoders(tmp_path, None)
    assert encoders["clip"].reason.startswith("no CLIP given")
    assert "inception_v3_google-0cc3c7bd.pth" in encoders["inception"].reason  # names the file it looked for
    first = image_values(truth, recon, encoders, SETTINGS)
    again = image_values(truth, recon, feature_encoders(tmp_path, None), SETTINGS)
    for name in ("alexnet2", "alexnet5"):
        assert first[name]["value"] == again[name]["value"]
        assert 0.0 <= first[name]["value"] <= 1.0 and first[name]["n"] == 5
    assert image_values(truth, truth, encoders, SETTINGS)["alexnet5"]["value"] == 1.0  # identical images identify


def test_oracle_selection_is_labelled_in_the_metrics(two_subject_run, tmp_path):
    out = tmp_path / "oracle"
    reconstruct(two_subject_run, out, ReconstructConfig(k=2, selection="oracle", **RECON), subjects=["subj01"],
                progress=False)
    result = evaluate_run(two_subject_run, out, config=SETTINGS, out=tmp_path / "metrics.json")
    assert result["selection"]["oracle"] is True and "ORACLE" in result["selection"]["label"]
    assert list(result["subjects"]) == ["subj01"]  # only the subjects reconstructed are scored
    assert "ORACLE" in metrics_table(result)


# --------------------------------------------------------------------------- the leakage guard


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_refuses_a_run_that_trained_on_a_test_stimulus(two_subject_run, tmp_path):
    run = _copy_run(two_subject_run, tmp_path)
    before = (run / "metrics.json").read_bytes()
    record = json.loads((run / "training_stimuli.json").read_text())
    test_id = int(open_store(record["store"]).subject("subj01").test().stimulus_ids[3])
    record["subjects"]["subj02"].append(test_id)  # seen through another subject still counts
    (run / "training_stimuli.json").write_text(json.dumps(record))
    with pytest.raises(LeakageError, match=rf"test stimulus id\(s\) of subj01 appear among the training trials.*"
                                           rf"subj02.*{test_id}"):
        evaluate_run(run, config=SETTINGS)
    assert (run / "metrics.json").read_bytes() == before  # nothing written for a refused evaluation


def test_record_of_training_stimuli_is_exactly_the_training_split(two_subject_run):
    record = json.loads((two_subject_run / "training_stimuli.json").read_text())
    store = open_store(record["store"])
    for subject in ("subj01", "subj02"):
        data = store.subject(subject)
        assert record["subjects"][subject] == np.unique(data.trials.stimulus_id[data.train_rows()]).tolist()


def test_runs_without_a_record_have_it_rebuilt_from_their_config(two_subject_run, tmp_path):
    from brainrecon.train.run import training_stimuli

    run = _copy_run(two_subject_run, tmp_path)
    recorded = training_stimuli(run)
    (run / "training_stimuli.json").unlink()  # a run made before the record existed
    assert training_stimuli(run) == recorded


def test_reconstructions_are_scored_only_with_the_run_that_made_them(two_subject_run, recons, tmp_path):
    from brainrecon.errors import EvaluationError

    other = _copy_run(two_subject_run, tmp_path)
    with pytest.raises(EvaluationError, match=r"were made from run .* evaluate them with --run"):
        evaluate_run(other, recons, config=SETTINGS, out=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_refuses_memories_or_reconstructions_holding_a_test_stimulus(two_subject_run, recons, tmp_path):
    from safetensors.numpy import save_file

    test_ids = {"subj01": np.array([5, 6, 7])}
    record = {"subj01": [1, 2, 3]}
    run = tmp_path / "run"
    for keys in ("prediction", "brain"):  # where `brainrecon memory build` saves each kind of memory
        folder = memory_dir(run, "subj01", keys)
        folder.mkdir(parents=True)
        save_file({"stimulus_ids": np.array([1, 2, 7])}, str(folder / "keys.safetensors"))
        with pytest.raises(LeakageError, match=f"in the Ecphory memory {folder}"):
            check_leakage(run, test_ids, record, {"subj01": "none"})
        save_file({"stimulus_ids": np.array([1, 2, 3])}, str(folder / "keys.safetensors"))
    checks = check_leakage(run, test_ids, record, {"subj01": "none"}).checks
    assert [c for c in checks if "Ecphory memory" in c] == [
        "subj01: no test stimulus in the Ecphory memory with prediction keys (3 entries)",
        "subj01: no test stimulus in the Ecphory memory with brain keys (3 entries)"]
    shutil.rmtree(run / "memory")
    manifest = {"images": [{"subject": "subj01", "file": "subj01/5.png", "retrieved_stimuli": [1, 6]}]}
    with pytest.raises(LeakageError, match="subj01/5.png was built from"):
        check_leakage(run, test_ids, record, {"subj01": "none"}, manifest)
    report = check_leakage(run, test_ids, record, {"subj01": "none"}, {"images": []})
    assert report.held_out and report.warnings == []


def test_test_set_normalisation_is_refused_unless_asked_and_then_labelled(tmp_path):
    test_ids, record = {"subj01": np.array([5, 6])}, {"subj01": [1, 2]}
    with pytest.raises(LeakageError, match="session-zscore-all.*--allow-test-normalization"):
        check_leakage(tmp_path, test_ids, record, {"subj01": "session-zscore-all"})
    report = check_leakage(tmp_path, test_ids, record, {"subj01": "session-zscore-all"},
                           allow_test_normalization=True)
    assert not report.held_out and "NOT a held-out result" in report.warnings[0]


def test_cli_evaluate_prints_the_table_and_refuses_leaks_with_a_message(two_subject_run, recons, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["evaluate", "--run", str(two_subject_run), "--recons", str(recons), "--way", "50",
                                 "--draws", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| average |" in result.output and "Img ret" in result.output
    assert json.loads(out.read_text())["format"] == METRICS_FORMAT

    run = _copy_run(two_subject_run, tmp_path)
    manifest = json.loads((recons / "manifest.json").read_text())
    manifest["images"][0]["retrieved_stimuli"] = [manifest["images"][0]["stimulus_id"]]
    leaky = tmp_path / "leaky"
    shutil.copytree(recons, leaky)
    (leaky / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--recons", str(leaky), "--way", "50"])
    assert result.exit_code != 0 and isinstance(result.exception, LeakageError)
    assert "evaluation refused" in str(result.exception)


# --------------------------------------------------------------------------- the report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class _Page(HTMLParser):
    """Elements by id, the body's attributes and the first cell of each metrics-table row."""

    def __init__(self):
        super().__init__()
        self.ids, self.body, self.rows, self._in_table, self._row_cells = {}, {}, [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = (tag, attrs)
        if tag == "body":
            self.body = attrs
        if tag == "table":
            self._in_table = attrs.get("id") == "metrics-table"
        if self._in_table and tag == "tr":
            self._row_cells = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        if self._in_table and tag == "tr" and self._row_cells:
            self.rows.append(self._row_cells[0].strip())
            self._row_cells = None

    def handle_data(self, data):
        if self._in_table and self._row_cells is not None:
            self._row_cells.append(data) if not self._row_cells else None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def report(two_subject_run, recons, metrics):
    from brainrecon.report.html import build_report

    return build_report(two_subject_run)


def test_report_is_one_self_contained_page_with_grids_table_and_published_figures(report, two_subject_run):
    text = report.read_text()
    page = _parse(text)
    for element in ("grid-subj01", "grid-subj02", "metrics-table", "published-table", "selection", "source-note",
                    "per-subject", "leakage", "no-curves"):
        assert element in page.ids, element
    assert page.rows == ["subject", "subj01", "subj02", "average"]
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(sources) >= 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing fetched
    assert "Not comparable with simulated-world numbers" in text
    for name in ("grid-subj01.png", "grid-subj02.png", "per-subject.png"):
        assert Image.open(two_subject_run / "report" / "figures" / name).size[0] > 100


def test_report_draws_training_curves_from_the_log(two_subject_run, metrics, tmp_path):
    from brainrecon.report.html import build_report

    run = _copy_run(two_subject_run, tmp_path)
    rows = ["step,epoch,metric,value"] + [f"{s},0,{m},{v}" for s in range(1, 21) for m, v in
                                          (("loss", 2.0 / s), ("clip_loss", 1.0 / s), ("lr", 1e-3))]
    (run / "log.csv").write_text("\n".join(rows) + "\n")
    page = _parse(build_report(run, tmp_path / "report").read_text())
    assert "training-curves" in page.ids and "no-curves" not in page.ids and "validation" not in page.ids
    assert Image.open(tmp_path / "report" / "figures" / "training-curves.png").size[1] > 100
    # a run with a validation slice: the report says what was held out and which step's weights were kept
    curve = [{"step": s, "retrieval": r, "cosine": c, "subjects": {}} for s, r, c in ((10, 0.2, 0.3), (20, 0.25, 0.31))]
    (run / "validation.json").write_text(json.dumps({"fraction": 0.1, "select": "best", "metric": "cosine",
                                                     "chosen_step": 20,
                                                     "stimuli": {"subj01": 15}, "curve": curve}))
    text = build_report(run, tmp_path / "report-2").read_text()
    assert "validation" in _parse(text).ids
    assert "weights are those of step 20 (best val_cosine: val_retrieval 25.0%" in text and "subj01 15 stimuli" in text
    # the best checkpoint within the slice's noise of the last weights: the report says the last were kept
    within = {"best_step": 10, "metric": "centred_cosine", "gain": 0.002, "ci95": 0.01, "items": 15,
              "beyond_noise": False}
    (run / "validation.json").write_text(json.dumps({"fraction": 0.1, "select": "best", "metric": "centred_cosine",
                                                     "chosen_step": 20, "best_against_last": within,
                                                     "stimuli": {"subj01": 15}, "curve": curve}))
    text = build_report(run, tmp_path / "report-3").read_text()
    assert ("step 20 (last step: the best val_centred_cosine, step 10&#x27;s paired gain over the last weights "
            "+0.0020 ± 0.0100 over 15 stimuli, is within the slice&#x27;s noise") in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`apt-get install -y chromium`; CI installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    def chromium(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                              capture_output=True, text=True, timeout=180)

    url = report.resolve().as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    # the page's load handler counted its images after the browser decoded them
    assert int(page.body["data-images-total"]) >= 3
    assert page.body["data-images-decoded"] == page.body["data-images-total"]
    assert page.rows == ["subject", "subj01", "subj02", "average"]
    assert "grid-subj01" in page.ids and "published-table" in page.ids

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    result = chromium("--window-size=1280,2600", f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2600, 1280)
    assert pixels[200:900].std() > 20  # the grids' region holds pictures, not a blank page
