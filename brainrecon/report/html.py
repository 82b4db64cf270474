"""`brainrecon report`: one self-contained HTML page for a run, plus its PNG figures.

    RUN/metrics.json (+ the reconstructions it names, RUN/log.csv)
      -> OUT/figures/grid-<subject>.png, training-curves.png, per-subject.png
      -> OUT/index.html (figures embedded as data URIs: the page is one file that can be mailed)

The page states the data source and the selection mode at the top, shows this run's table
with 95% CIs, and the published NSD table in a separate, labelled section: the two are
never mixed in one table.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path


from brainrecon.evaluate.ceilings import SPACE_LABELS, SPACE_OF_TARGET, load_ceilings
from brainrecon.data import open_store
from brainrecon.data.simworld import SIMULATED_NOTE
from brainrecon.errors import BrainreconError, EvaluationError
from brainrecon.evaluate.evaluation import (METRIC_COLUMNS, METRICS_FORMAT, format_cell, is_available,
                                            read_manifest, read_reconstructions)
from brainrecon.evaluate.published import PUBLISHED_CAVEAT, PUBLISHED_NSD
from brainrecon.io import atomic_write_text, sha256_file
from brainrecon.reconstruct import ECPHORY_CHOICE
from brainrecon.report import figures
from brainrecon.train.run import CLOSED_FORM_FIT
from brainrecon.train.validation import VALIDATION

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1b1b1b; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
.banner { padding: 0.6rem 0.9rem; border-radius: 6px; margin: 0.6rem 0; }
.simulated { background: #fff4d6; border: 1px solid #e0b84c; }
.honest { background: #e7f5ea; border: 1px solid #77b88a; }
.oracle { background: #fde3e1; border: 1px solid #d9534f; font-weight: bold; }
.warning { background: #fde3e1; border: 1px solid #d9534f; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.average td { font-weight: bold; background: #f3f3f3; }
td.na { color: #999; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
.published { background: #f4f6fb; border: 1px solid #aab4cf; padding: 0.4rem 0.9rem; border-radius: 6px; }
"""

# After load, the page records how many of its images decoded: a browser test reads it from the DOM.
LOAD_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesDecoded = decoded.length;
});
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, alt: str, element_id: str) -> str:
    return f'<img class="figure" id="{element_id}" alt="{html.escape(alt)}" src="{_data_uri(path)}">'


def metrics_html(metrics: dict) -> str:
    """This run's table: one row per subject, the average in bold; n/a cells carry their reason."""
    rows = {**{s: e["values"] for s, e in metrics["subjects"].items()}, "average": metrics["average"]}
    names = [n for n in METRIC_COLUMNS if any(n in values for values in rows.values())]
    head = "".join(f"<th>{html.escape(METRIC_COLUMNS[n][0])}{'' if METRIC_COLUMNS[n][1] else ' ↓'}</th>"
                   for n in names)
    body = []
    for subject, values in rows.items():
        cells = []
        for name in names:
            entry = values.get(name)
            if entry is not None and not is_available(entry):
                cells.append(f'<td class="na" title="{html.escape(entry["reason"])}">n/a</td>')
            else:
                cells.append(f"<td>{html.escape(format_cell(entry, METRIC_COLUMNS[name][2]))}</td>")
        css = ' class="average"' if subject == "average" else ""
        body.append(f"<tr{css}><td>{html.escape(subject)}</td>{''.join(cells)}</tr>")
    reasons = [f"<li>{html.escape(METRIC_COLUMNS[n][0])}: not available "
               f"({html.escape(metrics['average'][n]['reason'])})</li>"
               for n in names if not is_available(metrics["average"].get(n, {}))]
    return (f'<table id="metrics-table"><thead><tr><th>subject</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
            + (f"<ul id=\"unavailable\">{''.join(reasons)}</ul>" if reasons else ""))


def published_html() -> str:
    names = list(PUBLISHED_NSD[0].values)
    head = "".join(f"<th>{html.escape(METRIC_COLUMNS[n][0])}{'' if METRIC_COLUMNS[n][1] else ' ↓'}</th>"
                   for n in names)
    body = "".join(f"<tr><td>{html.escape(row.model)}<br><small>{html.escape(row.source)}</small></td>"
                   + "".join(f"<td>{row.values[n]:g}</td>" for n in names) + "</tr>" for row in PUBLISHED_NSD)
    return (f'<div class="published" id="published"><h2>Published on NSD, for context</h2>'
            f"<p><strong>{html.escape(PUBLISHED_CAVEAT)}</strong></p>"
            f'<table id="published-table"><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>'
            f"</div>")


def _selection_banner(selection: dict) -> str:
    if selection["oracle"]:
        return (f'<div class="banner oracle" id="selection">Selection: {html.escape(selection["label"])}. '
                f"Samples were chosen by comparing them with the true image: an upper bound, not a "
                f"brain-decoding result.</div>")
    return f'<div class="banner honest" id="selection">Selection: {html.escape(selection["label"])}.</div>'


def ecphory_html(metrics: dict, run: Path) -> str:
    """What Ecphory the reconstructions used, and the run's choice on held-out training stimuli with its grid."""
    parts = []
    recons = metrics.get("reconstructions")
    used = read_manifest(recons).get("ecphory") if recons and Path(recons).is_dir() else None
    if used:
        setting = (f"keys {used['keys']}, k {used['k']}, alpha {used['alpha']} ({used['fusion']} fusion, "
                   f"{used['neighbours']} neighbours)" if used["enabled"] else "off")
        parts.append(f'<p id="ecphory-used">These reconstructions: Ecphory {html.escape(setting)}; '
                     f'{html.escape(used["source"])}.</p>')
    choice_path = run / ECPHORY_CHOICE
    if choice_path.is_file():
        record = json.loads(choice_path.read_text())
        rows = sorted(record.get("grid", []), key=lambda row: -row["gain"])[:8]
        body = "".join(f"<tr><td>{html.escape(r['keys'])}</td><td>{r['k']}</td><td>{r['alpha']}</td>"
                       f"<td>{100 * r['two_way']:.1f}</td><td>{100 * r['gain']:+.1f} ({100 * r['gain_ci95_low']:+.1f} "
                       f"to {100 * r['gain_ci95_high']:+.1f})</td></tr>" for r in rows)
        parts.append(f'<p id="ecphory-choice">The run\'s choice ({html.escape(str(choice_path))}): '
                     f'{html.escape(record["reason"])}. Criterion: {html.escape(record["criterion"])}.</p>')
        if body:
            parts.append('<table id="ecphory-grid"><thead><tr><th>keys</th><th>k</th><th>alpha</th>'
                         '<th>two-way %</th><th>gain over no memory, points (95% CI)</th></tr></thead>'
                         f'<tbody>{body}</tbody></table>')
    return "".join(parts) or '<p id="ecphory-used">No Ecphory record for this run.</p>'


def _grids(metrics: dict, out: Path, max_images: int) -> list[str]:
    """One grid per subject, truth above reconstruction, from the reconstructions metrics.json names."""
    recons = metrics.get("reconstructions")
    if not recons:
        return ['<p id="no-grid">No reconstructions were scored for this run (evaluate with --recons DIR).</p>']
    if not Path(recons).is_dir():
        raise EvaluationError(f"the reconstructions {recons} named in metrics.json are gone; evaluate again")
    expected = metrics.get("reconstructions_manifest_sha256")
    if expected and sha256_file(Path(recons) / "manifest.json") != expected:
        raise EvaluationError(f"the reconstructions in {recons} changed after they were evaluated; run "
                              f"`brainrecon evaluate --recons {recons}` again so the page shows what was scored")
    manifest = read_manifest(recons)
    store = open_store(metrics["store"])
    parts = []
    for subject in metrics["subjects"]:
        ids, images = read_reconstructions(Path(recons), subject, manifest)
        ids, images = ids[:max_images], images[:max_images]
        truth = store.images_for(ids)
        path = out / "figures" / f"grid-{subject}.png"
        figures.truth_and_reconstruction_grid(truth, images, path)
        parts.append(f'<h3>{html.escape(subject)}</h3><p>First {len(ids)} test images: ground truth (top) and '
                     f'reconstruction (bottom).</p>' + _figure(path, f"{subject}: truth and reconstructions",
                                                               f"grid-{subject}"))
    return parts


def _curves(run: Path, out: Path) -> str:
    log = run / "log.csv"
    if not log.is_file():
        fit = next((run / name for name in (CLOSED_FORM_FIT, "ridge_fit.json") if (run / name).is_file()),
                   run / CLOSED_FORM_FIT)  # ridge_fit.json: runs made before the name was generic
        detail = ""
        if fit.is_file():
            fits = json.loads(fit.read_text())
            detail = " " + "; ".join(f"{s}: alpha {f.get('alpha', '?')}" for s, f in fits.items()
                                     if isinstance(f, dict))
        return (f'<p id="no-curves">No training curves: a closed-form fit, not iterative training.'
                f'{html.escape(detail)}</p>')
    path = out / "figures" / "training-curves.png"
    record = json.loads((run / VALIDATION).read_text()) if (run / VALIDATION).is_file() else None
    names = figures.training_curves(log, path, record.get("chosen_step") if record else None)
    if not names:
        return '<p id="no-curves">The training log holds no loss values.</p>'
    return _validation_note(record) + _figure(path, "training curves", "training-curves")


def _validation_note(record: dict | None) -> str:
    """What the validation slice was and which weights it kept (none: the run had no slice)."""
    if not record or not record.get("curve"):
        return ""
    chosen = record.get("chosen_step")
    entry = next((e for e in record["curve"] if e["step"] == chosen), record["curve"][-1])
    stimuli = ", ".join(f"{s} {n}" for s, n in record["stimuli"].items())
    rule = "last step" if record["select"] == "last" else f"best val_{record.get('metric', 'retrieval')}"
    if comparison := record.get("best_against_last"):
        # an interval that JSON could not hold (one item, or NaN scores) is stored as null
        interval = "n/a" if comparison["ci95"] is None else f"{comparison['ci95']:.4f}"
        gain = (f"step {comparison['best_step']}'s paired gain over the last weights {comparison['gain']:+.4f} "
                f"± {interval} over {comparison['items']} stimuli")
        rule = (f"{rule}; {gain}" if chosen == comparison["best_step"]
                else f"last step: the best val_{comparison['metric']}, {gain}, is within the slice's noise")
    kept = (f"The final weights are those of step {chosen} ({rule}: val_retrieval "
            f"{100 * entry['retrieval']:.1f}%, val_cosine {entry['cosine']:.3f}"
            + (f", val_centred_cosine {entry['centred_cosine']:.3f}" if "centred_cosine" in entry else "")
            + (f", val_slice_centred_cosine {entry['slice_centred_cosine']:.3f}"
               if "slice_centred_cosine" in entry else "")
            + (f", val_lowlevel_corr {entry['lowlevel_corr']:.3f}" if "lowlevel_corr" in entry else "")
            + "; dashed line)." if chosen is not None
            else "Training did not finish, so no weights were chosen yet.")
    return (f'<p id="validation">Validation: {100 * record["fraction"]:.0f}% of the training stimuli held out '
            f'by stimulus ({html.escape(stimuli)} stimuli), scored at {len(record["curve"])} steps: top-1 '
            f'retrieval among each subject\'s held-out stimuli (not the 300-way test figure) and the mean '
            f'cosine to the truth. {html.escape(kept)} The test set was not read during training.</p>')


def _per_subject(metrics: dict, out: Path) -> str:
    labels = {n: METRIC_COLUMNS[n][0] for n in ("image_retrieval", "brain_retrieval", "clip", "ssim", "pixcorr")}
    values = {}
    for subject, entry in metrics["subjects"].items():
        values[subject] = {n: (v["value"], v.get("ci95", 0.0)) for n, v in entry["values"].items()
                           if n in labels and is_available(v)}
    if not values or not any(values.values()):
        return ""
    path = out / "figures" / "per-subject.png"
    figures.per_subject_bars(values, labels, path)
    return _figure(path, "per-subject metrics", "per-subject")


def ceilings_html(metrics: dict) -> str:
    """This run's retrieval beside the world's oracle and its target space's ceiling (simulated worlds
    whose store holds a current ceilings.json); empty otherwise."""
    from_target = SPACE_OF_TARGET.get(metrics["retrieval_target"])
    try:
        table = load_ceilings(open_store(metrics["store"]))
    except BrainreconError:
        table = None
    if table is None or from_target is None:
        return ""
    stored = {row["subject"]: row for row in table["subjects"]}
    rows = []
    for subject, entry in metrics["subjects"].items():
        value = entry["values"].get("image_retrieval", {}).get("value")
        if (subject not in stored or value is None or stored[subject]["oracle"] is None
                or from_target not in stored[subject]["spaces"]):  # a table of other spaces (the demo's has one)
            continue
        oracle = stored[subject]["oracle"]["image_top1"]
        ceiling = stored[subject]["spaces"][from_target]["ceiling"]["image_top1"]
        rows.append(f"<tr><td>{html.escape(subject)}</td><td>{100 * value:.1f}</td><td>{100 * ceiling:.1f}</td>"
                    f"<td>{value / ceiling:.2f}</td><td>{100 * oracle:.1f}</td><td>{value / oracle:.2f}</td></tr>")
    if not rows:
        return ""
    return (f'<h2>Against the world\'s ceilings</h2><p>Image retrieval of this run beside the Bayes-optimal oracle '
            f'and the ceiling of its target space ({html.escape(SPACE_LABELS[from_target])}): the best a decoder '
            f'into that space reaches with what the simulated brain carries ({table["way"]}-way, from the store\'s '
            f'ceilings.json; ceilings are scored with the training images\' mean target subtracted). '
            f'{html.escape(SIMULATED_NOTE)}</p><table id="ceilings"><thead><tr><th>subject</th>'
            f'<th>this run</th><th>space ceiling</th><th>÷ ceiling</th><th>oracle</th><th>÷ oracle</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def _clip_label(clip: str | None) -> str:
    if clip == "simworld":
        return "the shipped small CLIP of the simulated world, not OpenAI ViT-L/14"
    return str(clip) if clip else "not scored"


def build_report(run: str | Path, out: str | Path | None = None, metrics_path: str | Path | None = None,
                 max_images: int = 12) -> Path:
    """Write OUT/index.html (default RUN/report/) from RUN/metrics.json; returns the page's path."""
    run = Path(run)
    metrics_path = Path(metrics_path) if metrics_path else run / "metrics.json"
    if not metrics_path.is_file():
        raise EvaluationError(f"{metrics_path} not found: run `brainrecon evaluate --run {run}` first")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{metrics_path} is not valid JSON ({exc}); run `brainrecon evaluate --run {run}` "
                              f"again") from None
    if not isinstance(metrics, dict) or metrics.get("format") != METRICS_FORMAT:
        raise EvaluationError(f"{metrics_path} is not a metrics file written by `brainrecon evaluate` (format "
                              f"{metrics.get('format') if isinstance(metrics, dict) else None!r}, expected "
                              f"{METRICS_FORMAT!r}); pass the metrics.json that `brainrecon evaluate` wrote")
    out = Path(out) if out else run / "report"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    title = f"brainrecon report: {metrics['model']} run"
    source = metrics["data_source"]
    banners = [_selection_banner(metrics["selection"])]
    if metrics.get("note"):
        banners.insert(0, f'<div class="banner simulated" id="source-note">{html.escape(metrics["note"])}</div>')
    for warning in metrics["leakage"]["warnings"]:
        banners.append(f'<div class="banner warning">{html.escape(warning)}</div>')
    protocol = metrics["protocol"]
    retrieval = next(iter(metrics["subjects"].values()))["values"].get("image_retrieval", {})
    checks = "".join(f"<li>{html.escape(c)}</li>" for c in metrics["leakage"]["checks"])
    versions = ", ".join(f"{k} {v}" for k, v in metrics["versions"].items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">run {html.escape(metrics['run'])} · data: {html.escape(source)} ({html.escape(metrics['store'])}) ·
retrieval target {html.escape(metrics['retrieval_target'])}</p>
{''.join(banners)}
<h2>Reconstructions</h2>
{''.join(_grids(metrics, out, max_images))}
<h2>Ecphory</h2>
{ecphory_html(metrics, run)}
<h2>Metrics</h2>
<p>Two-way identification (AlexNet, Inception, CLIP) and retrieval in %; ↓ lower is better; ± 95% CI (per subject
over images or retrieval draws; average: over subjects). Retrieval: {retrieval.get('way', '?')}-way top-1 over
{protocol['draws']} draws (seed {protocol['seed']}). Images: resized to {protocol['preresize']} then to each
metric's size, antialias {protocol['antialias']}. CLIP metric: {html.escape(_clip_label(protocol.get('clip')))}.</p>
{metrics_html(metrics)}
{ceilings_html(metrics)}
<h2>Per subject</h2>
{_per_subject(metrics, out)}
<h2>Training curves</h2>
{_curves(run, out)}
{published_html()}
<h2>Honesty checks</h2>
<ul id="leakage">{checks}</ul>
<p class="meta">{html.escape(versions)}</p>
<script>{LOAD_SCRIPT}</script>
</body></html>
"""
    path = out / "index.html"
    atomic_write_text(path, page)
    return path


__all__ = ["build_report", "metrics_html", "published_html"]
