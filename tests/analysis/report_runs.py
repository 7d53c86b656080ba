"""Synthetic sweep runs for the report's tests: results tables in either Fig. 3 design, written
into a run directory with the files a sweep leaves beside its table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

EVALS = ("expert", "on_policy", "grid")


def pets_table(num_models: int = 30, epochs=(15, 30), seed: int = 0, trials: int = 2) -> pd.DataFrame:
    """A PETS population's table: types P / D / PETS, (seed, trial, copy) provenance, LL on
    expert / on-policy / grid, ``trials`` per-trial rewards; P / D models evaluated at ``epochs``,
    PETS's own models once. Model 4 is diverged; every value distinct, so no two points coincide."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(num_models):
        kind = ("P", "D", "PETS")[m % 3]
        pets_seed, pets_trial, copy = m % 2, (m // 2) % 5, m // 10
        quality = rng.normal()
        for epoch in ((50,) if kind == "PETS" else epochs):
            rewards = 100 + 30 * quality + epoch * 0.5 + rng.normal(size=trials)
            row = {"model_id": m, "seed": 0, "replicate": copy, "model_type": kind, "train_dataset": "pets",
                   "epoch": epoch, "learning_rate": float(10 ** rng.uniform(-3.5, -2.5)), "weight_decay": 5e-5,
                   "pets_seed": pets_seed, "pets_trial": pets_trial, "copy": copy,
                   "pets_trial_reward": float(50 + 10 * pets_trial), "train_rows": 200 * (pets_trial + 1)}
            for j, name in enumerate(EVALS):
                row[f"ll_{name}"] = float(-10 - j + 3 * quality + 0.01 * epoch + 1e-3 * m)
                row[f"mse_{name}"] = float(abs(quality) + j)
            row.update(reward=rewards.tolist(), reward_mean=float(rewards.mean()), reward_std=float(rewards.std()),
                       diverged=m == 4)
            rows.append(row)
    return pd.DataFrame(rows)


def dataset_table(per_dataset: int = 6, settings: int = 2, seed: int = 1) -> pd.DataFrame:
    """A per-dataset design with ``[env_params]``: P / D models trained on expert or grid, one
    evaluated epoch, an ``env_setting`` and a swept ``env_pole_length`` per model."""
    rng = np.random.default_rng(seed)
    rows = []
    m = 0
    for train in ("expert", "grid"):
        for kind in ("P", "D"):
            for r in range(per_dataset):
                setting = r % settings
                reward = 80 + 40 * rng.normal()
                rows.append({"model_id": m, "seed": 0, "replicate": r, "model_type": kind, "train_dataset": train,
                             "epoch": 10, "learning_rate": 1e-3, "weight_decay": 0.0, "env_setting": setting,
                             "env_pole_length": 0.5 + 0.25 * setting,
                             **{f"ll_{n}": float(rng.normal() - 5 * j) for j, n in enumerate(("expert", "grid"))},
                             "reward": [reward], "reward_mean": reward, "reward_std": 0.0, "diverged": False})
                m += 1
    return pd.DataFrame(rows)


def write_run(run_dir: Path, table: pd.DataFrame, competence: bool = True, png: bool = True) -> Path:
    """A sweep's output directory: results.parquet, manifest.json, competence.json and a PNG."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(run_dir / "results.parquet", index=False)
    (run_dir / "manifest.json").write_text(json.dumps({"name": "synthetic", "status": "complete",
                                                      "num_models": int(table["model_id"].nunique())}))
    if competence:
        (run_dir / "competence.json").write_text(json.dumps({
            "target": {"trials": 5, "expert_threshold": 170.0, "min_expert_successes": 4, "untrained_ceiling": 50.0},
            "expert": {"model": "PE 3x64 x5", "rewards": [180.0, 175.5, 190.0, 172.0, 60.0], "passed": True},
            "untrained": {"model": "P 2x32", "rewards": [3.0, 1.5, 0.0, 2.0, 4.0], "passed": True},
            "passed": True}))
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        fig.savefig(run_dir / "fig3_ll_reward.png", dpi=40)
        plt.close(fig)
    return run_dir
