"""One self-contained HTML page per run: the answer to "which model is that point?".

``sweep_report`` writes ``report.html`` for a sweep: Fig. 3's panels as interactive scatters (hover:
the model's id, type, training data, seed, learning rate, weight decay, LL, reward with its
per-trial values and, for a PETS population, its (seed, trial, copy) provenance; click: the
model's row and, with several evaluated epochs, its reward / NLL curve), the correlation tables
with CIs, the competence check, divergence counts, the run's PNG figures and its JSON files.
``run_page`` writes the page of any other command's run (figures and JSON summaries).

Plotly draws the scatters: its whole JavaScript library ships inside the ``plotly`` wheel
(``plotly.offline.get_plotlyjs``), so the page inlines it and opens offline with no network, and
its WebGL trace (``scattergl``) keeps thousands of points responsive; the page switches to it
above ``WEBGL_FROM`` points (SVG below, which is crisper) when the browser offers WebGL. The data
sit once in the page as JSON (``<script id="report-data">``); the traces refer to models by
position, so a model's hover text and row are stored once however many panels show it.
"""

from __future__ import annotations

import base64
import html
import importlib.resources
from pathlib import Path

import pandas as pd

from mismatch_jax.analysis import report_data
from mismatch_jax.analysis.plots import check_table
from mismatch_jax.errors import InputError
from mismatch_jax.files import atomic_write_text, dumps_json

WEBGL_FROM = 2000  # points on the page from which the scatters are WebGL (scattergl)
JSON_SHOWN_CHARS = 200_000  # a longer JSON file is shown cut (the page says so)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2em 2em;color:#222;max-width:1500px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 7px;text-align:left}
th{background:#f3f3f3}.note{color:#555;font-size:.9em}.partial{background:#fff3cd;border:1px solid #e0b000;padding:.6em}
.fail{color:#b00020;font-weight:bold}.pass{color:#1a7f37;font-weight:bold}img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.5em;overflow:auto;max-height:30em;font-size:.8em}
#detail{display:flex;gap:1.5em;flex-wrap:wrap}#detail-row{max-height:32em;overflow:auto}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _ci(stats: dict, key: str, ci_key: str | None = None) -> str:
    lo, hi = stats.get(ci_key or f"{key}_ci") or (None, None)
    if stats.get(key) is None:
        return "n/a"
    return _fmt(stats[key]) + ("" if lo is None else f" [{_fmt(lo)}, {_fmt(hi)}]")


def _table(header: list[str], rows: list[list], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``."""
    cell = (lambda v: str(v)) if raw else _esc
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(run_dir: Path) -> str:
    """Every PNG of the run inlined as base64 (the page needs no file beside it)."""
    parts = []
    for path in sorted(run_dir.glob("*.png")):
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<figure><figcaption>{_esc(path.name)}</figcaption>'
                     f'<img alt="{_esc(path.name)}" src="data:image/png;base64,{data}"></figure>')
    return "".join(parts) or '<p class="note">no PNG figure in the run directory</p>'


def _json_files(run_dir: Path) -> str:
    parts = []
    for path in sorted(run_dir.glob("*.json")):
        text = path.read_text(errors="replace")
        cut = len(text) > JSON_SHOWN_CHARS
        note = f" (first {JSON_SHOWN_CHARS} of {len(text)} characters)" if cut else ""
        parts.append(f"<details><summary>{_esc(path.name)}{note}</summary>"
                     f"<pre>{_esc(text[:JSON_SHOWN_CHARS])}</pre></details>")
    return "".join(parts) or '<p class="note">no JSON file in the run directory</p>'


def _correlations(tables: dict) -> str:
    fig3 = tables["fig3"]
    pets = fig3.get("design") == "pets_population"
    rows = []
    for panel in fig3["panels"]:
        name = panel.get("eval_dataset") or panel.get("train_dataset")
        entries = list(panel["per_type"].items())
        entries += [(f"pooled {d} LL ({', '.join(s['types'])})", s) for d, s in panel.get("pooled_by_ll_definition", {}).items()]
        for kind, stats in entries:
            row = [name, kind, stats.get("n"), _ci(stats, "pearson"), _ci(stats, "spearman")]
            if pets:
                row += [_ci(stats, "pearson", "pearson_cluster_ci"), _ci(stats, "spearman", "spearman_cluster_ci"),
                        _fmt(stats.get("spearman_within_trial"))]
            rows.append(row)
    header = ["panel", "type", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]"]
    if pets:
        header += ["Pearson r [CI over (seed, trial)]", "Spearman ρ [CI over (seed, trial)]",
                   "mean Spearman ρ within a trial"]
    out = [f'<p class="note">source: {_esc(tables["fig3_source"])}; diverged models left out</p>', _table(header, rows)]
    diff = fig3.get("expert_minus_grid") or {}
    if diff:
        out.append("<h3>ρ on expert − ρ on grid / sampled, per type</h3>")
        out.append(_table(["type", "minus", "n", "Pearson difference [95% CI]", "Spearman difference [95% CI]"],
                          [[k, s.get("minus"), s.get("n"), _ci(s, "pearson"), _ci(s, "spearman")] for k, s in diff.items()]))
    if fig3.get("reward_distribution"):
        out.append("<h3>mean episode reward per model</h3>")
        out.append(_table(["type", "trained on", "n", "min", "q25", "median", "q75", "max", "< 50", "≥ 150"],
                          [[r["model_type"], r["train_dataset"], r["n"],
                            *(f"{r[k]:.1f}" for k in ("min", "q25", "median", "q75", "max")),
                            f"{r['below_50']:.0%}", f"{r['at_least_150']:.0%}"] for r in fig3["reward_distribution"]]))
    out.append(f'<h3>train × eval matrix</h3><p class="note">source: {_esc(tables["matrix_source"])}</p>')
    out.append(_table(["train", "eval", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]"],
                      [[r["train_dataset"], r["eval_dataset"], r["n"], _ci(r, "pearson"), _ci(r, "spearman")]
                       for r in tables["matrix"]]))
    return "".join(out)


def _competence(run_dir: Path) -> str:
    report = report_data._read_json(run_dir / "competence.json")
    if report is None:
        return '<p class="note">no competence.json (the sweep ran without <code>[competence] enabled</code>)</p>'
    verdict = lambda ok: f'<span class="{"pass" if ok else "fail"}">{"pass" if ok else "FAIL"}</span>'
    target = report.get("target", {})
    rows = []
    for name, rule in (("expert", f"≥ {target.get('min_expert_successes')} of {target.get('trials')} "
                                  f"episodes ≥ {target.get('expert_threshold')}"),
                       ("untrained", f"every episode < {target.get('untrained_ceiling')}")):
        part = report.get(name, {})
        rows.append([_esc(name), _esc(part.get("model", "")), _esc(part.get("rewards", "")), _esc(rule),
                     verdict(bool(part.get("passed")))])
    return (f"<p>controller competence: {verdict(bool(report.get('passed')))}</p>"
            + _table(["model", "architecture", "episode rewards", "rule", "verdict"], rows, raw=True))


def _page(title: str, body: str, scripts: str = "") -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}{scripts}</body></html>")


def _script_json(obj) -> str:
    """JSON for a ``<script type="application/json">`` block (``</`` escaped so it cannot close it)."""
    return dumps_json(obj, indent=None).replace("</", "<\\/")


def report_html(run_dir: str | Path, table: pd.DataFrame, partial: str | None = None,
                num_bootstrap: int = 1000) -> str:
    """The HTML text of a sweep's report (see the module docstring) from its results ``table``
    and the files in ``run_dir``; ``partial`` names what is missing from an unfinished run."""
    from plotly.offline import get_plotlyjs

    run_dir = Path(run_dir)
    check_table(table)
    models = report_data.model_records(table)
    notes = (report_data._read_json(run_dir / "manifest.json") or {}).get("dataset_notes")
    panels = report_data.scatter_panels(models, notes if isinstance(notes, dict) else None)
    curves = report_data.epoch_curves(table, models["values"]["model_id"])
    points = sum(len(t["index"]) for p in panels["panels"] for t in p["traces"])
    data = {"models": models, "panels": panels, "curves": curves, "webgl": points >= WEBGL_FROM,
            "symlog_scale": report_data.SYMLOG_SCALE}
    tables = report_data.correlation_tables(run_dir, table, panels, num_bootstrap)
    divergence = report_data.divergence_counts(models)
    n_models = len(models["hover"])
    epochs = sorted(int(e) for e in table["epoch"].unique())
    design = {"pets_population": "one PETS population, every model on every eval dataset's panel",
              "per_dataset": "one population per training dataset, its LL on that dataset"}[panels["design"]]
    banner = f'<p class="partial"><b>partial run</b>: {_esc(partial)}</p>' if partial else ""
    unplaced = (f'<p class="note">{len(panels["unplaced"])} model(s) trained on a dataset without an LL column '
                "are on no panel (their rows are in results.parquet)</p>") if panels["unplaced"] else ""
    not_plotted = sum(p["not_plotted"] for p in panels["panels"])
    body = f"""<h1>mismatch-jax sweep report: {_esc(run_dir.resolve().name)}</h1>{banner}
<p>{n_models} models, {len(table)} rows, evaluated epochs {_esc(epochs)}; Fig. 3 design: {_esc(design)}.
Hover a point for its model; click it for its row{' and its curves over epochs' if curves else ''}.
The model id box finds a model by id.</p>
<h2>Fig. 3: one-step LL vs episode reward</h2>
<p class="note">{points} points; {not_plotted} point(s) with a non-finite LL or reward not drawn;
diverged models drawn as crosses (left out of every ρ). {'WebGL scatter (many points).' if data['webgl'] else ''}</p>
{unplaced}<div id="scatter" style="height:520px"></div>
<p><label>model id <input id="model-id" type="number" min="0" style="width:7em"></label>
<button id="model-go" type="button">show</button> <span id="model-msg" class="note"></span>
&nbsp; <label><input id="symlog" type="checkbox"> symmetric-log LL axes (fig3's choice is preset)</label></p>
<div id="detail"><div id="detail-row"><p class="note">click a point to see its model here</p></div>
<div id="detail-curve" style="width:620px;height:360px"></div></div>
<h2>Correlations (ρ with 95 % bootstrap CIs)</h2>{_correlations(tables)}
<h2>Controller competence</h2>{_competence(run_dir)}
<h2>Divergence</h2>{_table(["type", "trained on", "models", "diverged", "non-finite LL / reward"],
                           [[d["model_type"], d["train_dataset"], d["models"], d["diverged"], d["non_finite"]]
                            for d in divergence])}
<h2>Figures</h2>{_figures(run_dir)}
<h2>JSON files</h2>{_json_files(run_dir)}"""
    script = importlib.resources.files("mismatch_jax.analysis").joinpath("report.js").read_text()
    scripts = (f'<script type="application/json" id="report-data">{_script_json(data)}</script>'
               f"<script>{get_plotlyjs()}</script><script>{script}</script>")
    return _page(f"mismatch-jax report: {run_dir.resolve().name}", body, scripts)


def sweep_report(run_dir: str | Path, table: pd.DataFrame, out: str | Path | None = None,
                 partial: str | None = None, num_bootstrap: int = 1000) -> Path:
    """Writes a sweep's ``report.html`` (or ``out``) atomically; returns its path."""
    path = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_text(path, report_html(run_dir, table, partial, num_bootstrap))
    return path


def run_page(run_dir: str | Path, command: str, out: str | Path | None = None) -> Path:
    """Writes the report of a non-sweep run (``command``: the command that wrote ``run_dir``):
    its PNG figures inlined and its JSON summaries; returns the page's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                    if p.suffix not in (".png", ".json", ".html") and not p.name.startswith("."))
    body = (f"<h1>mismatch-jax {_esc(command)} report: {_esc(run_dir.resolve().name)}</h1>"
            f"<h2>Figures</h2>{_figures(run_dir)}<h2>JSON summaries</h2>{_json_files(run_dir)}"
            + (f"<h2>Other files</h2><p>{_esc(', '.join(others))}</p>" if others else ""))
    path = Path(out) if out else run_dir / "report.html"
    atomic_write_text(path, _page(f"mismatch-jax {command} report: {run_dir.resolve().name}", body))
    return path
