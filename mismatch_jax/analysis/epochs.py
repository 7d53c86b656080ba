"""Lambert et al. 2020 Fig. 4–5 from a results table with several evaluated epochs per model.

Fig. 4: per model, the epoch at which its episode reward peaks and the epoch at which its
validation NLL on its own training dataset is lowest; the distribution of their difference says
whether stopping on the validation loss would have kept the best controller; the reward the
reward-best epoch shows is biased upward on the episodes it was picked on, so
``rescored_best_epochs`` scores both picks on a second table of the same models evaluated on fresh
episodes (``evaluation.episode_salt``). Fig. 5: for P
models, the validation NLL on *every* dataset per epoch, one panel per training dataset (a model
fits its own data while drifting on the states it never saw).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mismatch_jax.analysis.plots import MODEL_COLOURS, check_table, eval_datasets  # noqa: E402
from mismatch_jax.files import write_json  # noqa: E402


def own_nll(rows: pd.DataFrame) -> np.ndarray:
    """−LL of each row on the validation split of its model's own training dataset [rows]."""
    out = np.full(len(rows), np.nan)
    for name in rows["train_dataset"].unique():
        if f"ll_{name}" in rows.columns:
            sel = (rows["train_dataset"] == name).to_numpy()
            out[sel] = -rows.loc[sel, f"ll_{name}"].to_numpy()
    return out


def best_epochs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per non-diverged model: model_id, model_type, train_dataset, reward_best_epoch
    (first epoch of its highest mean reward), nll_best_epoch (first epoch of its lowest own
    validation NLL; NaN NLLs never win) and difference = reward_best − nll_best (epochs)."""
    check_table(table)
    rows = table[~table["diverged"].astype(bool)].copy()
    rows["val_nll"] = own_nll(rows)
    records = []
    for model_id, group in rows.sort_values("epoch").groupby("model_id"):
        epochs = group["epoch"].to_numpy()
        reward = np.nan_to_num(group["reward_mean"].to_numpy(dtype=float), nan=-np.inf)
        nll = np.nan_to_num(group["val_nll"].to_numpy(dtype=float), nan=np.inf)
        reward_best, nll_best = int(epochs[np.argmax(reward)]), int(epochs[np.argmin(nll)])
        records.append({"model_id": int(model_id), "model_type": group["model_type"].iloc[0],
                        "train_dataset": group["train_dataset"].iloc[0],
                        "reward_best_epoch": reward_best, "nll_best_epoch": nll_best,
                        "reward_at_reward_best": float(reward.max()),
                        "reward_at_nll_best": float(reward[np.argmin(nll)]),
                        "difference": reward_best - nll_best})
    return pd.DataFrame(records)


def rescored_best_epochs(pick: pd.DataFrame, score: pd.DataFrame) -> pd.DataFrame:
    """The reward-best and NLL-best epochs picked on ``pick`` and scored on ``score``.

    The reward-best epoch is an argmax over noisy episode means, so the reward it shows on the
    episodes it was picked on is biased upward, and so is "reward lost by NLL stopping" measured
    there (winner's curse). ``score`` must hold the same models (same ids, types, training sets,
    epochs and — the training being the same — LLs) evaluated on other episodes: a second sweep
    run with ``--set evaluation.episode_salt=1``. One row per model that diverged in neither table:
    ``best_epochs(pick)``'s columns plus fresh_reward_at_reward_best, fresh_reward_at_nll_best (the
    two picks' rewards on ``score``) and fresh_reward_lost = their difference."""
    from mismatch_jax.errors import InputError

    check_table(pick)
    check_table(score)
    keys = ["model_id", "epoch"]
    columns = ["model_type", "train_dataset"] + [c for c in pick.columns if c.startswith("ll_")]
    if set(columns) - set(score.columns):
        raise InputError(f"the scoring table lacks columns {sorted(set(columns) - set(score.columns))}")
    joined = pick.merge(score, on=keys, how="outer", suffixes=("", "_score"), indicator=True)
    if not (joined["_merge"] == "both").all():
        raise InputError("the two tables do not hold the same (model, epoch) rows: re-score with the same "
                         "config and only evaluation.episode_salt changed")
    for column in columns:
        a, b = joined[column], joined[f"{column}_score"]
        numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)
        same = np.isclose(a.astype(float), b.astype(float), rtol=1e-5, atol=1e-6, equal_nan=True) if numeric \
            else (a.astype(str) == b.astype(str))
        if not np.all(same):
            raise InputError(f"the two tables differ in {column}: not the same models (only "
                             "evaluation.episode_salt may change between the runs)")
    best = best_epochs(pick)
    fresh = score[~score["diverged"].astype(bool)].set_index(keys)["reward_mean"].astype(float)
    rows = []
    for record in best.to_dict(orient="records"):
        m = record["model_id"]
        at_reward, at_nll = (fresh.get((m, record[f"{k}_best_epoch"]), np.nan) for k in ("reward", "nll"))
        if np.isfinite(at_reward) and np.isfinite(at_nll):
            rows.append({**record, "fresh_reward_at_reward_best": float(at_reward),
                         "fresh_reward_at_nll_best": float(at_nll), "fresh_reward_lost": float(at_reward - at_nll)})
    return pd.DataFrame(rows)


def rescored_summary(rescored: pd.DataFrame, level: float = 0.95) -> list[dict]:
    """Per (training set, model type) of ``rescored_best_epochs``: n, the reward lost by NLL
    stopping on the picking episodes (biased) and on the fresh ones with a Student-t CI over models,
    and how many models' picks differ."""
    from scipy import stats

    summary = []
    for (train, kind), group in rescored.groupby(["train_dataset", "model_type"]):
        fresh = group["fresh_reward_lost"].to_numpy(float)
        mean = float(fresh.mean())
        if len(fresh) > 1 and fresh.std() > 0:
            low, high = (float(x) for x in stats.t.interval(level, len(fresh) - 1, loc=mean, scale=stats.sem(fresh)))
        else:
            low = high = mean
        summary.append({"train_dataset": train, "model_type": kind, "n": int(len(group)),
                        "picks_differ": int((group["difference"] != 0).sum()),
                        "reward_lost_on_picking_episodes": float(
                            (group["reward_at_reward_best"] - group["reward_at_nll_best"]).mean()),
                        "reward_lost_on_fresh_episodes": mean, "fresh_ci": [low, high], "level": level})
    return summary


def fig4_rescored(pick: pd.DataFrame, score: pd.DataFrame, out_dir: str | Path) -> dict:
    """Fig. 4's reward-lost statistic re-scored on fresh episodes (``rescored_best_epochs``):
    writes fig4_rescored.json into ``out_dir`` and returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rescored = rescored_best_epochs(pick, score)
    content = {"summary": rescored_summary(rescored), "models": rescored.to_dict(orient="records")}
    write_json(out_dir / "fig4_rescored.json", content)
    return content


def fig4_best_epochs(table: pd.DataFrame, out_dir: str | Path) -> dict:
    """Fig. 4's per-model view: per training dataset, each model's reward-best vs NLL-best epoch
    (top; the diagonal = the validation loss picks the reward-best epoch) and the histogram of
    their difference per model type (bottom). Writes fig4_best_epochs.png / .json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best = best_epochs(table)
    trains = sorted(best["train_dataset"].unique()) or ["(none)"]
    fig, axes = plt.subplots(2, len(trains), figsize=(4.6 * len(trains), 7.0), squeeze=False)
    epochs = np.sort(table["epoch"].unique())
    summary = []
    for j, train in enumerate(trains):
        part = best[best["train_dataset"] == train]
        span = float(epochs.max() - epochs.min()) if len(epochs) > 1 else 1.0
        bins = np.linspace(-span, span, 2 * min(len(epochs), 10) + 2)
        for kind, group in part.groupby("model_type"):
            colour = MODEL_COLOURS.get(kind, "gray")
            jitter = np.random.default_rng(0).uniform(-0.15, 0.15, (2, len(group))) * span / max(len(epochs), 1)
            axes[0, j].scatter(group["nll_best_epoch"] + jitter[0], group["reward_best_epoch"] + jitter[1],
                               s=18, alpha=0.7, color=colour, label=kind)
            axes[1, j].hist(group["difference"], bins=bins, alpha=0.5, color=colour, label=kind)
            diff = group["difference"].to_numpy()
            summary.append({"train_dataset": train, "model_type": kind, "n": int(len(group)),
                            "median_difference": float(np.median(diff)),
                            "share_same_epoch": float((diff == 0).mean()),
                            "share_reward_best_earlier": float((diff < 0).mean()),
                            "mean_reward_lost_by_nll_stopping": float(
                                (group["reward_at_reward_best"] - group["reward_at_nll_best"]).mean())})
        axes[0, j].plot([epochs.min(), epochs.max()], [epochs.min(), epochs.max()], color="k", lw=0.6)
        axes[0, j].set_title(f"trained on {train}", fontsize=10)
        axes[0, j].set_xlabel("NLL-best epoch")
        axes[0, j].set_ylabel("reward-best epoch")
        axes[1, j].axvline(0, color="k", lw=0.6)
        axes[1, j].set_xlabel("reward-best − NLL-best epoch")
        axes[1, j].set_ylabel("models")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, title="model")
    fig.suptitle("Per model: when does reward peak, when does the validation NLL (own data) bottom out?",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out_dir / "fig4_best_epochs.png", dpi=100)
    plt.close(fig)
    content = {"note": "mean_reward_lost_by_nll_stopping is measured on the episodes the reward-best epoch "
                       "was picked on (biased upward); fig4_rescored.json scores both picks on fresh episodes "
                       "(`mismatch-jax plot RESULTS --rescore-on RESULTS_OF_A_SALTED_RUN`)",
               "summary": summary, "models": best.to_dict(orient="records")}
    write_json(out_dir / "fig4_best_epochs.json", content)
    return content


def fig5_dataset_nll(table: pd.DataFrame, out_dir: str | Path, model_type: str = "P") -> dict:
    """Fig. 5: for ``model_type`` models, mean (± std over models) validation NLL on every
    evaluation dataset per epoch, one panel per training dataset, with the mean reward on a
    second axis. Writes fig5_dataset_nll.png / .json."""
    check_table(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table[(~table["diverged"].astype(bool)) & (table["model_type"] == model_type)]
    trains = sorted(rows["train_dataset"].unique()) or ["(none)"]
    evals = eval_datasets(table)
    fig, axes = plt.subplots(1, len(trains), figsize=(5.0 * len(trains), 4.0), squeeze=False)
    content = {"model_type": model_type, "panels": []}
    for ax, train in zip(axes[0], trains):
        part = rows[rows["train_dataset"] == train]
        panel = {"train_dataset": train, "num_models": int(part["model_id"].nunique()), "nll": {}}
        for ev in evals:
            stats = part.groupby("epoch")[f"ll_{ev}"].agg(["mean", "std"])
            mean, std = -stats["mean"].to_numpy(), np.nan_to_num(stats["std"].to_numpy())
            ax.plot(stats.index, mean, marker="o", ms=3, label=f"NLL on {ev}" + (" (own)" if ev == train else ""),
                    lw=2.0 if ev == train else 1.0)
            ax.fill_between(stats.index, mean - std, mean + std, alpha=0.12)
            panel["nll"][ev] = {"epochs": stats.index.tolist(), "mean": mean.tolist()}
        reward = part.groupby("epoch")["reward_mean"].mean()
        twin = ax.twinx()
        twin.plot(reward.index, reward.to_numpy(), color="k", ls="--", lw=1.0, label="mean reward")
        twin.set_ylabel("mean episode reward (--)")
        panel["reward_mean"] = reward.tolist()
        ax.set_yscale("symlog")
        ax.set_title(f"{model_type} models trained on {train} (n={panel['num_models']})", fontsize=10)
        ax.set_xlabel("training epoch")
        ax.set_ylabel("validation NLL")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        content["panels"].append(panel)
    fig.tight_layout()
    fig.savefig(out_dir / "fig5_dataset_nll.png", dpi=100)
    plt.close(fig)
    write_json(out_dir / "fig5_dataset_nll.json", content)
    return content
