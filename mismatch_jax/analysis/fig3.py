"""Lambert et al. 2020 Fig. 3 — one-step LL against episode reward, three panels — drawn from a
results table alone, in either of the sweep's designs:

* a **PETS population** (``[population] source = "pets"``, rows carry ``pets_seed`` /
  ``pets_trial``): the paper's design (§4.1, "models trained with PETS"). One population; panel d
  puts every model's LL on held-out dataset d (expert, on-policy, grid / sampled) against its
  reward. Copies of one (seed, trial) share their training data, so each ρ also gets a bootstrap
  over whole (seed, trial) clusters; and since the panels hold the same models, ρ_expert − ρ_grid
  gets a paired bootstrap CI per type.
* **one population per training dataset** (``source = "datasets"``): panel d shows the models
  trained on d, with their LL on d.

LL is defined per model type: P / PE / PETS score their own predicted Gaussian (mixture), D / DE a
Gaussian with a variance the sweep fixes (``population.deterministic_ll``). Types whose LL is
defined differently are never pooled: each legend entry gives one type's Pearson r and Spearman ρ
with 95 % bootstrap CIs, and the JSON pools only within an LL definition. Early PETS models can
sit orders of magnitude lower in LL than late ones; Spearman's ρ (ranks) is the statistic robust
to them, and the LL axis turns symmetric-log (linear within ±10 nats) when some models sit more than 100 nats
below the median.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mismatch_jax.analysis.correlation import (bootstrap_interval, cluster_correlate, correlate,  # noqa: E402
                                               correlation_difference, rank_or_pearson)
from mismatch_jax.analysis.plots import MODEL_COLOURS, check_table, reward_distribution, select_epoch  # noqa: E402
from mismatch_jax.files import write_json  # noqa: E402

PAPER_ORDER = ("expert", "on_policy", "grid", "sampled")  # the paper's panels a-c (d-f)
LL_DEFINITIONS = {"P": "predicted", "PE": "predicted", "PETS": "predicted", "D": "fixed", "DE": "fixed"}
"""How each type's LL is defined: its own predicted Gaussian, or a Gaussian around a
deterministic mean with a variance fixed by ``population.deterministic_ll``."""
PANEL_TITLES = {"expert": "expert", "on_policy": "on-policy", "grid": "grid", "sampled": "sampled"}


def is_pets_population(table: pd.DataFrame) -> bool:
    """Whether the table is a PETS population's (rows carry their (seed, trial) provenance)."""
    return "pets_trial" in table.columns and (table["train_dataset"] == "pets").all()


def _ordered(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in PAPER_ORDER if n in names] + sorted(n for n in names if n not in PAPER_ORDER)


def _stats(x, y, clusters, num_bootstrap: int, seed: int) -> dict:
    stats = correlate(x, y, num_bootstrap=num_bootstrap, seed=seed)
    if clusters is not None:
        stats.update(cluster_correlate(x, y, clusters, num_bootstrap=num_bootstrap, seed=seed))
    return stats


def _ci(stats: dict, key: str, ci_key: str | None = None) -> str:
    value, (lo, hi) = stats.get(key), stats.get(ci_key or f"{key}_ci", [None, None])
    if value is None:
        return "n/a"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{value:+.2f}"


def _clusters(rows: pd.DataFrame, pets: bool):
    return rows[["pets_seed", "pets_trial"]].to_numpy() if pets else None


def _symlog_if_wide(ax, values: np.ndarray) -> bool:
    values = values[np.isfinite(values)]
    # A few early models far below the rest (hundreds of nats) would squash every other point
    # into one column on a linear axis.
    if values.size and values.min() < np.median(values) - 100.0:
        ax.set_xscale("symlog", linthresh=10.0)
        return True
    return False


def dataset_label(name: str, notes: dict | None) -> str:
    """The panel name of dataset ``name``; "expert" data whose PETS trials all stayed below the
    expert threshold (the manifest's ``dataset_notes`` say so) are not called expert."""
    if name == "expert" and notes and any(k == "expert" or k.startswith("expert@") for k in notes):
        return "best PETS trials (none above the expert threshold)"
    return PANEL_TITLES.get(name, name)


def fig3_panels(table: pd.DataFrame, out_dir: str | Path, epoch: str | int = "last",
                num_bootstrap: int = 1000, seed: int = 0, dataset_notes: dict | None = None) -> dict:
    """Draws ``fig3_ll_reward.png`` and writes ``fig3_correlations.json`` into ``out_dir``
    (see the module docstring); returns the JSON: design, panels in the paper's order (each
    with per-type and per-LL-definition ρ and their CIs; ``cluster_ci`` ones for a PETS
    population, with ``spearman_within_trial``: the mean ρ among the models of one PETS trial),
    ``expert_minus_grid`` per type (ρ_expert − ρ_grid, or − ρ_sampled, with a
    bootstrap CI), the reward distribution per type and the number of diverged models left out.
    dataset_notes: the sweep manifest's ``dataset_notes`` (how the datasets fell back)."""
    check_table(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_rows = select_epoch(table, epoch)
    diverged = all_rows["diverged"].astype(bool)
    rows = all_rows[~diverged]
    pets = is_pets_population(rows)
    if pets:
        names = _ordered(c[3:] for c in rows.columns if c.startswith("ll_"))
        panel_rows = {name: rows for name in names}
    else:
        names = [n for n in _ordered(rows["train_dataset"].unique()) if f"ll_{n}" in rows.columns]
        panel_rows = {name: rows[rows["train_dataset"] == name] for name in names}
    names = names or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.4 * len(names), 4.8), squeeze=False)
    panels = []
    for ax, name in zip(axes[0], names):
        part = panel_rows.get(name, rows.iloc[:0])
        if not len(part):
            continue
        column = f"ll_{name}"
        per_type, pooled = {}, {}
        for kind, group in part.groupby("model_type"):
            x, y = group[column].to_numpy(float), group["reward_mean"].to_numpy(float)
            stats = per_type[kind] = _stats(x, y, _clusters(group, pets), num_bootstrap, seed)
            if pets:
                stats["spearman_within_trial"] = _within_trial_spearman(group, column)
            finite = np.isfinite(x)
            ci_key = "spearman_cluster_ci" if pets else None
            ax.scatter(x[finite], y[finite], s=10 if len(part) > 300 else 14, alpha=0.55,
                       color=MODEL_COLOURS.get(kind, "tab:purple"), edgecolors="none",
                       label=f"{kind} n={stats['n']}: Pearson r {_ci(stats, 'pearson')}\n"
                             f"   Spearman ρ {_ci(stats, 'spearman', ci_key)}")
        for definition in ("predicted", "fixed"):
            kinds = [k for k in per_type if LL_DEFINITIONS.get(k) == definition]
            if len(kinds) > 1:
                group = part[part["model_type"].isin(kinds)]
                pooled[definition] = {"types": kinds, **_stats(group[column].to_numpy(float),
                                                               group["reward_mean"].to_numpy(float),
                                                               _clusters(group, pets), num_bootstrap, seed)}
        symlog = _symlog_if_wide(ax, part[column].to_numpy(float))
        label = dataset_label(name, dataset_notes)
        trained = "all models (PETS population)" if pets else f"models trained on {label}"
        ax.set_title(f"LL on {label} data — {trained}", fontsize=9)
        ax.set_xlabel(f"one-step LL on held-out {label} data (nats"
                      + (", symlog)" if symlog else ")"))
        ax.set_ylabel("mean episode reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best", title="per type, 95% bootstrap CI" + (" (ρ: over (seed, trial))" if pets else ""),
                  title_fontsize=6.5)
        panels.append({"eval_dataset" if pets else "train_dataset": name, "ll_column": column,
                       "per_type": per_type, "pooled_by_ll_definition": pooled})
    content = {"design": "pets_population" if pets else "per_dataset", "epoch": epoch,
               "ll_definitions": {k: LL_DEFINITIONS.get(k, "unknown") for k in sorted(rows["model_type"].unique())},
               "panels": panels, "n_diverged_excluded": int(diverged.sum()),
               "expert_minus_grid": _expert_minus_grid(rows, names, panel_rows, pets, num_bootstrap, seed),
               "reward_distribution": reward_distribution(rows)}
    design = ("one PETS population, each model's LL on three held-out datasets" if pets else
              "one population per training dataset")
    fig.suptitle(f"LL vs reward (Lambert et al. 2020, Fig. 3): {design}; "
                 f"{content['n_diverged_excluded']} diverged models left out", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out_dir / "fig3_ll_reward.png", dpi=100)
    plt.close(fig)
    write_json(out_dir / "fig3_correlations.json", content)
    return content


def _within_trial_spearman(group: pd.DataFrame, column: str) -> float | None:
    """Mean over PETS trials of Spearman ρ(LL, reward) among the models of one trial: the trend
    left once "early or late in a PETS run" is held fixed (trials with fewer than 5 models or a
    constant column are skipped)."""
    values = [rank_or_pearson(h[column].to_numpy(float), h["reward_mean"].to_numpy(float), "spearman")
              for _, h in group.groupby("pets_trial") if len(h) >= 5]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _expert_minus_grid(rows, names, panel_rows, pets: bool, num_bootstrap: int, seed: int) -> dict:
    """Per type: ρ on the expert panel minus ρ on the grid (else sampled) panel with a bootstrap
    CI — paired over (seed, trial) clusters for a PETS population (the same models), else the
    two panels' independent bootstraps combined (different models)."""
    wide = next((n for n in ("grid", "sampled") if n in names), None)
    if "expert" not in names or wide is None:
        return {}
    out = {}
    for kind in sorted(rows["model_type"].unique()):
        if pets:
            group = rows[rows["model_type"] == kind]
            out[kind] = {"minus": wide, **correlation_difference(
                group["ll_expert"].to_numpy(float), group[f"ll_{wide}"].to_numpy(float),
                group["reward_mean"].to_numpy(float), _clusters(group, True), num_bootstrap, seed)}
            continue
        a = panel_rows["expert"][panel_rows["expert"]["model_type"] == kind]
        b = panel_rows[wide][panel_rows[wide]["model_type"] == kind]
        out[kind] = {"minus": wide, **_unpaired_difference(a, b, wide, num_bootstrap, seed)}
    return out


def _unpaired_difference(a: pd.DataFrame, b: pd.DataFrame, wide: str, num_bootstrap: int, seed: int) -> dict:
    """ρ_expert(a) − ρ_wide(b) for two different sets of models, each resampled on its own."""
    rng = np.random.default_rng(seed)
    xa, ya = a["ll_expert"].to_numpy(float), a["reward_mean"].to_numpy(float)
    xb, yb = b[f"ll_{wide}"].to_numpy(float), b["reward_mean"].to_numpy(float)
    ka, kb = np.isfinite(xa) & np.isfinite(ya), np.isfinite(xb) & np.isfinite(yb)
    xa, ya, xb, yb = xa[ka], ya[ka], xb[kb], yb[kb]
    out = {"n": [int(xa.size), int(xb.size)], "clustered": False}
    for kind in ("pearson", "spearman"):
        point = rank_or_pearson(xa, ya, kind) - rank_or_pearson(xb, yb, kind) if min(xa.size, xb.size) >= 3 else np.nan
        out[kind] = None if not np.isfinite(point) else float(point)
        if out[kind] is None:
            out[f"{kind}_ci"] = [None, None]
            continue
        ia = rng.integers(0, xa.size, (num_bootstrap, xa.size))
        ib = rng.integers(0, xb.size, (num_bootstrap, xb.size))
        out[f"{kind}_ci"] = bootstrap_interval([rank_or_pearson(xa[i], ya[i], kind) - rank_or_pearson(xb[j], yb[j], kind)
                                       for i, j in zip(ia, ib)], 0.95)
    return out
