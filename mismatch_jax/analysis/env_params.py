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
    ρ(LL, reward) (Pearson and Spearman with bootstrap 95 % CIs, ``analysis.correlation``)."""
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
        records.append(record)
    return records


def _x(record: dict, column: str, element: int | None) -> float:
    value = record[column]
    return float(value if element is None else value[element])


def env_params_figure(table: pd.DataFrame, out_dir: str | Path, epoch: str | int = "last",
                      num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Writes ``env_params.png`` (per swept constant a column: Spearman ρ(LL, reward) per eval
    dataset with 95 % CIs, then every model's reward by model type with the settings' medians)
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
    fig, axes = plt.subplots(2, len(axes_spec), figsize=(5.0 * len(axes_spec), 7.0), squeeze=False)
    for col, (label, column, element) in enumerate(axes_spec):
        xs = np.asarray([_x(r, column, element) for r in records])
        spread = np.ptp(xs) or 1.0
        ax = axes[0, col]
        for j, ev in enumerate(evals):
            rho = np.asarray([np.nan if r["correlations"][ev]["spearman"] is None else r["correlations"][ev]["spearman"]
                              for r in records])
            ci = np.asarray([[np.nan if v is None else v for v in r["correlations"][ev]["spearman_ci"]] for r in records])
            offset = (j - (len(evals) - 1) / 2) * 0.012 * spread  # side by side, not on top
            ax.errorbar(xs + offset, rho, yerr=np.abs(ci.T - rho), fmt="o", capsize=3, label=f"LL on {ev}")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_ylabel("Spearman ρ(LL, reward)")
        ax.set_title(f"objective mismatch vs {label}", fontsize=10)
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        model_x = rows[column].map(lambda v: float(v if element is None else v[element])).to_numpy()
        for kind, group in rows.groupby("model_type"):
            where = rows["model_type"] == kind
            jitter = np.random.default_rng(0).uniform(-0.01, 0.01, int(where.sum())) * spread
            ax.scatter(model_x[where.to_numpy()] + jitter, group["reward_mean"], s=8, alpha=0.5,
                       color=MODEL_COLOURS.get(kind, "gray"), label=kind)
        ax.plot(xs, [r["reward_median"] for r in records], "k_", markersize=18, mew=2, label="median")
        ax.set_xlabel(label)
        ax.set_ylabel("mean episode reward")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"LL-vs-reward correlation and reward per true-dynamics setting (epoch: {epoch})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out_dir / "env_params.png", dpi=110)
    plt.close(fig)
    content = {"epoch": epoch, "settings": records}
    write_json(out_dir / "env_params_correlations.json", content)
    return content
