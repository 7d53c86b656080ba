"""Figures of the study, drawn from results tables only (never from a training run).

``ll_reward_scatter`` reproduces the layout of Lambert et al. (2020) Fig. 3: one panel per
(train dataset, eval dataset) pair, one-step validation log-likelihood on x, mean episode reward
on y, model types coloured, Pearson/Spearman ρ in the title; the numbers go to a JSON beside it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mismatch_jax.files import write_json
from mismatch_jax.errors import InputError
from mismatch_jax.analysis.correlation import correlate  # noqa: E402

MODEL_COLOURS = {"P": "tab:blue", "PE": "tab:orange", "D": "tab:green", "DE": "tab:red", "PETS": "tab:purple"}
REQUIRED_COLUMNS = ("model_id", "model_type", "train_dataset", "epoch", "reward_mean", "diverged")


def eval_datasets(table: pd.DataFrame) -> list[str]:
    """Names of the evaluation datasets present as ``ll_<name>`` columns."""
    return sorted(c[3:] for c in table.columns if c.startswith("ll_"))


def check_table(table: pd.DataFrame) -> None:
    """Raises an ``InputError`` naming the missing columns of a results table."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing or not eval_datasets(table):
        raise InputError(
            f"not a sweep results table: missing columns {missing or ['ll_<dataset>']}; "
            "pass the results.parquet written by `mismatch-jax sweep`"
        )


def select_epoch(table: pd.DataFrame, epoch: str | int = "last") -> pd.DataFrame:
    """One row per model: its last evaluated epoch ("last") or the given epoch number."""
    if epoch == "last":
        idx = table.groupby("model_id")["epoch"].idxmax()
        return table.loc[idx].reset_index(drop=True)
    return table[table["epoch"] == int(epoch)].reset_index(drop=True)


def ll_reward_correlations(table: pd.DataFrame, epoch: str | int = "last",
                           num_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """Correlation records per (train dataset, eval dataset), diverged models excluded."""
    check_table(table)
    rows = select_epoch(table, epoch)
    rows = rows[~rows["diverged"].astype(bool)]
    records = []
    for train in sorted(rows["train_dataset"].unique()):
        part = rows[rows["train_dataset"] == train]
        for ev in eval_datasets(rows):
            stats = correlate(part[f"ll_{ev}"].to_numpy(), part["reward_mean"].to_numpy(),
                              num_bootstrap=num_bootstrap, seed=seed)
            records.append({"train_dataset": train, "eval_dataset": ev, "epoch": epoch, **stats})
    return records


def ll_reward_scatter(table: pd.DataFrame, out_dir: str | Path, epoch: str | int = "last",
                      num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Writes ll_reward_scatter.png and ll_reward_correlations.json into out_dir; returns the
    JSON content. Rows of the figure: training dataset; columns: evaluation dataset."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = ll_reward_correlations(table, epoch, num_bootstrap, seed)
    rows = select_epoch(table, epoch)
    n_diverged = int(rows["diverged"].astype(bool).sum())
    rows = rows[~rows["diverged"].astype(bool)]
    trains = sorted(rows["train_dataset"].unique()) or ["(none)"]
    evals = eval_datasets(table)
    fig, axes = plt.subplots(len(trains), len(evals), figsize=(4.2 * len(evals), 3.6 * len(trains)),
                             squeeze=False)
    by_pair = {(r["train_dataset"], r["eval_dataset"]): r for r in records}
    for i, train in enumerate(trains):
        part = rows[rows["train_dataset"] == train]
        for j, ev in enumerate(evals):
            ax = axes[i, j]
            for kind, group in part.groupby("model_type"):
                ll = group[f"ll_{ev}"].to_numpy()
                finite = np.isfinite(ll)
                ax.scatter(ll[finite], group["reward_mean"].to_numpy()[finite], s=10, alpha=0.6,
                           color=MODEL_COLOURS.get(kind, "gray"), label=kind)
            stats = by_pair.get((train, ev), {})
            rho = stats.get("pearson")
            srho = stats.get("spearman")
            title = f"train {train} · eval {ev}\n"
            title += "ρ n/a" if rho is None else f"ρ={rho:.2f}  ρ_s={srho:.2f}  (n={stats['n']})"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(f"one-step log-likelihood on {ev}")
            if j == 0:
                ax.set_ylabel("mean episode reward")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", title="model")
    fig.suptitle(f"LL vs reward (epoch: {epoch}; {n_diverged} diverged models excluded)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    fig.savefig(out_dir / "ll_reward_scatter.png", dpi=110)
    plt.close(fig)
    content = {"epoch": epoch, "n_diverged_excluded": n_diverged, "correlations": records}
    write_json(out_dir / "ll_reward_correlations.json", content)
    return content


def reward_distribution(rows: pd.DataFrame) -> list[dict]:
    """Mean-reward quantiles per (model type, train dataset): n, min, q25, median, q75, max and
    the share of models below 50 and at or above 150 (failure / success on the swing-up)."""
    out = []
    for (kind, train), group in rows.groupby(["model_type", "train_dataset"]):
        r = group["reward_mean"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        if not r.size:
            continue
        q = np.percentile(r, [0, 25, 50, 75, 100])
        out.append({"model_type": kind, "train_dataset": train, "n": int(r.size),
                    "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]),
                    "max": float(q[4]), "below_50": float((r < 50).mean()), "at_least_150": float((r >= 150).mean())})
    return out


def per_epoch_curves(table: pd.DataFrame, out_dir: str | Path) -> dict:
    """Lambert et al. Fig. 4–5 from a results table with several evaluated epochs per model.

    For each (train dataset, model type): mean ± std over models of the episode reward and of
    the validation NLL (−LL on the model's own training dataset's holdout) against the epoch,
    with the reward-best and NLL-best epochs marked. Writes per_epoch_curves.png and
    per_epoch_curves.json; returns the JSON content.
    """
    check_table(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table[~table["diverged"].astype(bool)].copy()
    own_ll = np.full(len(rows), np.nan)
    for name in rows["train_dataset"].unique():
        if f"ll_{name}" in rows.columns:
            sel = (rows["train_dataset"] == name).to_numpy()
            own_ll[sel] = rows.loc[sel, f"ll_{name}"].to_numpy()
    rows["val_nll"] = -own_ll
    trains = sorted(rows["train_dataset"].unique()) or ["(none)"]
    fig, axes = plt.subplots(2, len(trains), figsize=(4.5 * len(trains), 6.5), squeeze=False, sharex=True)
    content = {"curves": []}
    for j, train in enumerate(trains):
        part = rows[rows["train_dataset"] == train]
        for kind, group in part.groupby("model_type"):
            stats = group.groupby("epoch").agg(
                reward=("reward_mean", "mean"), reward_std=("reward_mean", "std"),
                nll=("val_nll", "mean"), nll_std=("val_nll", "std"), n=("model_id", "nunique"))
            epochs = stats.index.to_numpy()
            colour = MODEL_COLOURS.get(kind, "gray")
            for ax, col in ((axes[0, j], "reward"), (axes[1, j], "nll")):
                mean, std = stats[col].to_numpy(), np.nan_to_num(stats[f"{col}_std"].to_numpy())
                ax.plot(epochs, mean, color=colour, label=kind, marker="o", ms=3)
                ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15)
            best_reward = int(epochs[np.nanargmax(stats["reward"].to_numpy())])
            finite_nll = np.where(np.isfinite(stats["nll"].to_numpy()), stats["nll"].to_numpy(), np.inf)
            best_nll = int(epochs[np.argmin(finite_nll)])
            axes[0, j].axvline(best_reward, color=colour, ls="--", lw=0.8)
            axes[1, j].axvline(best_nll, color=colour, ls=":", lw=0.8)
            content["curves"].append({
                "train_dataset": train, "model_type": kind, "epochs": epochs.tolist(),
                "reward_mean": stats["reward"].tolist(), "val_nll_mean": stats["nll"].tolist(),
                "num_models": int(stats["n"].max()),
                "reward_best_epoch": best_reward, "nll_best_epoch": best_nll,
            })
        axes[0, j].set_title(f"train {train}")
        axes[0, j].set_ylabel("episode reward")
        axes[1, j].set_ylabel("validation NLL (own data)")
        axes[1, j].set_xlabel("training epoch")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(title="model (-- reward-best, : NLL-best)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "per_epoch_curves.png", dpi=110)
    plt.close(fig)
    write_json(out_dir / "per_epoch_curves.json", content)
    return content
