"""The numbers behind a sweep's HTML report (``analysis.report``), from its results table and the
JSON files beside it — plain JSON-ready dicts, so that a test can read them without a browser.

* ``model_records``: one entry per model (its last evaluated epoch, as Fig. 3 uses), every column
  of its row, and its hover text (model id, type, training data, seed, learning rate, weight
  decay, LL on every eval dataset, reward with the per-trial values, PETS provenance, env setting).
* ``scatter_panels``: Fig. 3's panels in the paper's order, as ``analysis.fig3`` lays them out —
  a PETS population puts every model on every eval dataset's panel; a per-dataset design puts the
  models trained on d on d's panel with their LL on d. One trace per model type, diverged models
  apart; a trace lists its models' positions in ``model_records`` so the page finds the row.
* ``epoch_curves``: reward and LL per model over its evaluated epochs (several ``eval_epochs``).
* ``correlation_tables``: Fig. 3's and the train × eval matrix's ρ with CIs, read from
  ``fig3_correlations.json`` / ``ll_reward_correlations.json`` when present, else computed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from mismatch_jax.analysis.correlation import cluster_correlate, correlate
from mismatch_jax.analysis.fig3 import PAPER_ORDER, dataset_label
from mismatch_jax.analysis.plots import MODEL_COLOURS, ll_reward_correlations, select_epoch

SYMLOG_SCALE = 10.0  # |LL| below this stays linear on a symlog axis (fig3's linthresh)
PROVENANCE = ("pets_seed", "pets_trial", "copy", "pets_trial_reward", "train_rows")


def _cell(value):
    """A table cell as JSON: arrays / lists as lists, NumPy scalars as numbers, NaN kept for
    ``files.json_safe`` to turn into null."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def ordered_names(names) -> list[str]:
    """Dataset names in the paper's order (expert, on-policy, grid, sampled), others after."""
    names = list(dict.fromkeys(names))
    return [n for n in PAPER_ORDER if n in names] + sorted(n for n in names if n not in PAPER_ORDER)


def eval_names(table: pd.DataFrame) -> list[str]:
    """The ``ll_<name>`` evaluation datasets of a table, in the paper's order."""
    return ordered_names(c[3:] for c in table.columns if c.startswith("ll_"))


def _evals_of(models: dict) -> list[str]:
    return ordered_names(c[3:] for c in models["columns"] if c.startswith("ll_"))


def hover_text(row: dict, evals: list[str]) -> str:
    """One model's hover text (HTML lines for Plotly): id, type, data, seed, lr, wd, LL, reward."""
    esc = lambda v: html.escape(str(v))
    lines = [f"<b>model {int(row['model_id'])}</b> · {esc(row['model_type'])} · trained on "
             f"{esc(row['train_dataset'])}"]
    seed = f"seed {esc(row.get('seed', 'n/a'))}"
    if "replicate" in row:
        seed += f" · replicate {esc(row['replicate'])}"
    if "pets_seed" in row:
        seed += (f" · PETS seed {esc(row['pets_seed'])}, trial {esc(row['pets_trial'])}, "
                 f"copy {esc(row.get('copy', 'n/a'))}")
    lines.append(seed)
    lines.append(f"lr {_num(row.get('learning_rate'), 3)} · wd {_num(row.get('weight_decay'), 3)} · "
                 f"epoch {esc(row['epoch'])}")
    lines.append("LL " + " · ".join(f"{esc(name)} {_num(row.get(f'll_{name}'), 5)}" for name in evals))
    trials = row.get("reward")
    trials = "" if trials is None else " (trials " + ", ".join(_num(float(r), 4) for r in np.ravel(trials)) + ")"
    lines.append(f"reward {_num(row['reward_mean'], 5)}{trials}")
    if "pets_trial_reward" in row:
        lines.append(f"PETS's own reward in that trial {_num(row['pets_trial_reward'], 4)} · "
                     f"train rows {esc(row.get('train_rows', 'n/a'))}")
    env = [c for c in row if c.startswith("env_")]
    if env:
        lines.append("env " + " · ".join(f"{esc(c[4:])} {esc(_cell(row[c]))}" for c in env))
    if bool(row["diverged"]):
        lines.append("<b>diverged</b> (left out of every ρ)")
    return "<br>".join(lines)


def model_records(table: pd.DataFrame) -> dict:
    """Every model's last evaluated row → {"columns": [...], "values": {column: [M]},
    "hover": [M] strings}, sorted by model id (position k is model ``values["model_id"][k]``)."""
    rows = select_epoch(table, "last").sort_values("model_id", kind="stable").reset_index(drop=True)
    evals = eval_names(rows)
    columns = list(rows.columns)
    records = rows.to_dict("records")
    return {"columns": columns,
            "values": {c: [_cell(v) for v in rows[c].tolist()] for c in columns},
            "hover": [hover_text(r, evals) for r in records]}


def _symlog(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log10(1.0 + np.abs(values) / SYMLOG_SCALE)


def _symlog_ticks(values: np.ndarray) -> tuple[list[float], list[str]]:
    """Tick positions (on the symlog scale) and labels at 0 and ±10^k up to the data's range."""
    lo, hi = float(np.min(values)), float(np.max(values))
    decades = lambda v: range(1, int(np.ceil(np.log10(max(v, SYMLOG_SCALE)))) + 1)
    raw = [0.0] + [-(10.0 ** k) for k in decades(-lo)] * (lo < 0) + [10.0 ** k for k in decades(hi)] * (hi > 0)
    raw = sorted(set(raw))
    return [float(_symlog(np.asarray(v))) for v in raw], [f"{v:g}" for v in raw]


def _wide(values: np.ndarray) -> bool:
    """fig3's rule: symlog when some models sit more than 100 nats below the median LL."""
    values = values[np.isfinite(values)]
    return bool(values.size) and bool(values.min() < np.median(values) - 100.0)


def scatter_panels(models: dict, dataset_notes: dict | None = None) -> dict:
    """Fig. 3's panels from ``model_records`` → {"design", "panels": [{name, title, x_title,
    symlog (fig3's choice of a symmetric-log LL axis; the page can switch every panel),
    tickvals / ticktext (that axis's ticks, at sign(v) log10(1 + |v| / SYMLOG_SCALE)),
    traces: [{name, color, diverged, index [n], x [n] LL, y [n] reward}], not_plotted}],
    "unplaced": model positions on no panel}. Models with a non-finite LL or reward cannot be
    drawn and are counted in ``not_plotted``. ``dataset_notes``: the manifest's, which name
    "expert" data that no PETS trial earned (``fig3.dataset_label``)."""
    evals = _evals_of(models)
    frame = pd.DataFrame({c: models["values"][c] for c in
                          ("model_id", "model_type", "train_dataset", "reward_mean", "diverged")
                          + tuple(f"ll_{n}" for n in evals)})
    pets = "pets_trial" in models["columns"] and bool((frame["train_dataset"] == "pets").all())
    if pets:
        names = evals
        members = {n: np.arange(len(frame)) for n in names}
    else:
        names = [n for n in ordered_names(frame["train_dataset"]) if n in evals]
        members = {n: np.flatnonzero((frame["train_dataset"] == n).to_numpy()) for n in names}
    placed = np.zeros(len(frame), bool)
    panels = []
    for name in names:
        index = members[name]
        placed[index] = True
        part = frame.iloc[index]
        x = part[f"ll_{name}"].to_numpy(float)
        y = part["reward_mean"].to_numpy(float)
        finite = np.isfinite(x) & np.isfinite(y)
        symlog = _wide(x)
        diverged = part["diverged"].astype(bool).to_numpy()
        traces = []
        for kind in sorted(part["model_type"].unique(), key=lambda k: (k not in MODEL_COLOURS, k)):
            for gone in (False, True):
                keep = finite & (part["model_type"].to_numpy() == kind) & (diverged == gone)
                if not keep.any():
                    continue
                traces.append({"name": f"{kind} (diverged)" if gone else kind, "type": kind, "diverged": gone,
                               "color": to_hex(MODEL_COLOURS.get(kind, "tab:gray")),
                               "index": index[keep].tolist(), "x": x[keep].tolist(), "y": y[keep].tolist()})
        title = dataset_label(name, dataset_notes)
        panel = {"name": name, "ll_column": f"ll_{name}", "symlog": symlog,
                 "title": f"LL on {title} data — " + ("all models" if pets else f"models trained on {title}"),
                 "x_title": f"one-step LL on held-out {title} data",
                 "traces": traces, "not_plotted": int((~finite).sum())}
        if np.isfinite(x).any():
            panel["tickvals"], panel["ticktext"] = _symlog_ticks(x[np.isfinite(x)])
        panels.append(panel)
    return {"design": "pets_population" if pets else "per_dataset", "panels": panels,
            "unplaced": np.flatnonzero(~placed).tolist()}


def epoch_curves(table: pd.DataFrame, model_ids: list[int]) -> dict | None:
    """Per model (in ``model_ids`` order) its reward and LL at each evaluated epoch →
    {"epochs": [E], "series": {"reward_mean" | "ll_<name>": [M][E] (null where not evaluated)}};
    None when no model was evaluated at more than one epoch."""
    if table.groupby("model_id")["epoch"].nunique().max() < 2:
        return None
    epochs = sorted(int(e) for e in table["epoch"].unique())
    series = {}
    for column in ["reward_mean", *(f"ll_{n}" for n in eval_names(table))]:
        wide = table.pivot_table(index="model_id", columns="epoch", values=column, aggfunc="first", dropna=False)
        wide = wide.reindex(index=model_ids, columns=epochs)
        series[column] = np.round(wide.to_numpy(float), 6).tolist()
    return {"epochs": epochs, "series": series}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _computed_fig3(rows: pd.DataFrame, panels: dict, num_bootstrap: int) -> dict:
    """fig3_correlations.json's panels, per type only, computed without drawing."""
    pets = panels["design"] == "pets_population"
    kept = rows[~rows["diverged"].astype(bool)]
    out = []
    for panel in panels["panels"]:
        name = panel["name"]
        part = kept if pets else kept[kept["train_dataset"] == name]
        per_type = {}
        for kind, group in part.groupby("model_type"):
            x, y = group[f"ll_{name}"].to_numpy(float), group["reward_mean"].to_numpy(float)
            stats = correlate(x, y, num_bootstrap=num_bootstrap)
            if pets:
                stats.update(cluster_correlate(x, y, group[["pets_seed", "pets_trial"]].to_numpy(),
                                               num_bootstrap=num_bootstrap))
            per_type[kind] = stats
        out.append({("eval_dataset" if pets else "train_dataset"): name, "ll_column": f"ll_{name}",
                    "per_type": per_type, "pooled_by_ll_definition": {}})
    return {"design": panels["design"], "panels": out, "expert_minus_grid": {}}


def correlation_tables(run_dir: Path, table: pd.DataFrame, panels: dict, num_bootstrap: int = 1000) -> dict:
    """{"fig3": fig3_correlations.json's content, "fig3_source", "matrix": the train × eval
    records, "matrix_source"}: read from the run's JSON files when present and readable, else
    computed here (per type; without pooled ρ or ρ_expert − ρ_grid)."""
    run_dir = Path(run_dir)
    fig3 = _read_json(run_dir / "fig3_correlations.json")
    fig3_source = "fig3_correlations.json"
    if fig3 is None or "panels" not in fig3:
        fig3 = _computed_fig3(select_epoch(table, "last"), panels, num_bootstrap)
        fig3_source = f"computed by the report ({num_bootstrap} bootstrap resamples; no fig3_correlations.json)"
    matrix = _read_json(run_dir / "ll_reward_correlations.json")
    matrix_source = "ll_reward_correlations.json"
    if matrix is None or "correlations" not in matrix:
        matrix = {"correlations": ll_reward_correlations(table, num_bootstrap=num_bootstrap)}
        matrix_source = f"computed by the report ({num_bootstrap} bootstrap resamples; no ll_reward_correlations.json)"
    return {"fig3": fig3, "fig3_source": fig3_source, "matrix": matrix["correlations"], "matrix_source": matrix_source}


def divergence_counts(models: dict) -> list[dict]:
    """Per (model type, training dataset): models, diverged ones, and ones with a non-finite
    LL or reward (drawn on no panel)."""
    frame = pd.DataFrame({c: models["values"][c] for c in ("model_type", "train_dataset", "diverged", "reward_mean")})
    lls = [np.asarray(models["values"][f"ll_{n}"], float) for n in _evals_of(models)]
    frame["finite"] = np.isfinite(np.asarray(frame["reward_mean"], float)) & np.all(np.isfinite(lls), axis=0)
    out = []
    for (kind, train), group in frame.groupby(["model_type", "train_dataset"]):
        out.append({"model_type": kind, "train_dataset": train, "models": int(len(group)),
                    "diverged": int(group["diverged"].astype(bool).sum()),
                    "non_finite": int((~group["finite"]).sum())})
    return out
