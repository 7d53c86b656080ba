"""Objective mismatch as a function of the true dynamics: per ``[env_params]`` setting, the LL-vs-
reward correlation and the reward, against each swept constant (a sweep with ``env_<name>``
columns, ``sweep.env_params``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mismatch_jax.analysis.correlation import correlate  # noqa: E402
from mismatch_jax.analysis.plots import MODEL_COLOURS, check_table, eval_datasets, select_epoch  # noqa: E402
from mismatch_jax.errors import InputError  # noqa: E402
from mismatch_jax.files import write_json  # noqa: E402


def swept_axes(table: pd.DataFrame) -> list[tuple[str, str, int | None]]:
    """The x axes of the figure: (label, env column, element or None) for every scalar constant,
    and every element of an array constant, whose value varies over the settings."""
    axes = []
    for column in sorted(c for c in table.columns if c.startswith("env_") and c != "env_setting"):
        first = table[column].iloc[0]
        if np.ndim(first) == 0:
            if table[column].nunique() > 1:
                axes.append((column[4:], column, None))
            continue
        values = np.stack(table[column].to_numpy())
        for j in range(values.shape[1]):
            if np.ptp(values[:, j]) > 0:
                axes.append((f"{column[4:]}[{j}]", column, j))
    return axes


def correlations_by_setting(table: pd.DataFrame, epoch: str | int = "last", num_bootstrap: int = 1000,
                            seed: int = 0) -> list[dict]:
    """One record per env setting: its constants, models (all types and train datasets,
    diverged ones left out and counted), reward mean / median / min / max, and per eval dataset
    ρ(LL, reward) (Pearson and Spearman with bootstrap 95 % CIs, ``analysis.correlation``),
    pooled (``correlations``) and within each model type (``correlations_by_type``)."""
    check_table(table)
    if "env_setting" not in table.columns:
        raise InputError("the table has no env_setting column: it comes from a sweep without [env_params]")
    rows = select_epoch(table, epoch)
    env_columns = [c for c in rows.columns if c.startswith("env_") and c != "env_setting"]
    records = []
    for setting, part in rows.groupby("env_setting"):
        diverged = part["diverged"].astype(bool)
        kept = part[~diverged]
        reward = kept["reward_mean"].to_numpy(np.float64)
        record = {"env_setting": int(setting), "epoch": epoch, "n_models": int(len(kept)),
                  "n_diverged": int(diverged.sum())}
        for column in env_columns:
            value = part[column].iloc[0]
            record[column] = float(value) if np.ndim(value) == 0 else [float(v) for v in value]
        record.update(reward_mean=float(reward.mean()) if reward.size else None,
                      reward_median=float(np.median(reward)) if reward.size else None,
                      reward_min=float(reward.min()) if reward.size else None,
                      reward_max=float(reward.max()) if reward.size else None)
        record["correlations"] = {ev: correlate(kept[f"ll_{ev}"].to_numpy(), reward, num_bootstrap, seed)
                                  for ev in eval_datasets(rows)}
        # Within one model type too: a deterministic model's LL uses a fixed unit variance, so
        # pooling D with P models mixes two LL scales (see REPRODUCTION.md, Fig. 3).
        record["correlations_by_type"] = {
            str(kind): {ev: correlate(group[f"ll_{ev}"].to_numpy(), group["reward_mean"].to_numpy(np.float64),
                                      num_bootstrap, seed) for ev in eval_datasets(rows)}
            for kind, group in kept.groupby("model_type")}
        records.append(record)
    return records


def _x(record: dict, column: str, element: int | None) -> float:
    value = record[column]
    return float(value if element is None else value[element])


def env_params_figure(table: pd.DataFrame, out_dir: str | Path, epoch: str | int = "last",
                      num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Writes ``env_params.png`` (per swept constant a column: per model type Spearman ρ(LL,
    reward) per eval dataset with 95 % CIs, then every model's reward with the settings' medians)
    and ``env_params_correlations.json`` into ``out_dir``; returns the JSON content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = correlations_by_setting(table, epoch, num_bootstrap, seed)
    axes_spec = swept_axes(table)
    if not axes_spec:
        raise InputError("no env constant varies over the settings: nothing to plot against")
    rows = select_epoch(table, epoch)
    rows = rows[~rows["diverged"].astype(bool)]
    evals = eval_datasets(rows)
    kinds = sorted(rows["model_type"].unique())
    fig, axes = plt.subplots(len(kinds) + 1, len(axes_spec), figsize=(6.8 * len(axes_spec), 3.4 * (len(kinds) + 1)),
                             squeeze=False)
    for col, (label, column, element) in enumerate(axes_spec):
        xs = np.asarray([_x(r, column, element) for r in records])
        # Constants swept over octaves (gears, masses) read best on a log axis; offsets and jitter
        # then scale with x so that every setting's markers sit side by side.
        log_axis = xs.min() > 0 and xs.max() / xs.min() >= 4
        shift = (lambda x, f: x * (1 + f)) if log_axis else (lambda x, f: x + f * (np.ptp(xs) or 1.0))
        for row, kind in enumerate(kinds):
            ax = axes[row, col]
            for j, ev in enumerate(evals):
                stats = [r["correlations_by_type"].get(kind, {}).get(ev, {}) for r in records]
                rho = np.asarray([np.nan if st.get("spearman") is None else st["spearman"] for st in stats])
                ci = np.asarray([[np.nan if v is None else v for v in st.get("spearman_ci", [None, None])]
                                 for st in stats])
                ax.errorbar(shift(xs, (j - (len(evals) - 1) / 2) * 0.04), rho, yerr=np.abs(ci.T - rho), fmt="o",
                            capsize=3, label=f"LL on {ev}")
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_ylabel(f"{kind} models: Spearman ρ\n(LL, reward), 95 % CI")
            if row == 0:
                ax.set_title(f"objective mismatch vs {label}", fontsize=10)
        ax = axes[-1, col]
        model_x = rows[column].map(lambda v: float(v if element is None else v[element])).to_numpy()
        for kind, group in rows.groupby("model_type"):
            where = (rows["model_type"] == kind).to_numpy()
            jitter = np.random.default_rng(0).uniform(-0.04, 0.04, int(where.sum()))
            ax.scatter(shift(model_x[where], jitter), group["reward_mean"], s=8, alpha=0.5,
                       color=MODEL_COLOURS.get(kind, "gray"), label=kind)
        ax.plot(xs, [r["reward_median"] for r in records], "k_", markersize=18, mew=2, label="median")
        ax.set_xlabel(label)
        ax.set_ylabel("mean episode reward")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            if log_axis:
                ax.set_xscale("log")
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.minorticks_off()
    for ax in (axes[0, -1], axes[-1, -1]):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"per true-dynamics setting (epoch: {epoch})\nρ(LL, reward) within each model type "
                 "(train datasets pooled), and every model's reward", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out_dir / "env_params.png", dpi=110)
    plt.close(fig)
    content = {"epoch": epoch, "settings": records}
    write_json(out_dir / "env_params_correlations.json", content)
    return content
