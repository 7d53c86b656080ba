"""The scatter figure and its JSON come from the table alone and match scipy."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from mismatch_jax.analysis.plots import ll_reward_scatter


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n):
        ll = rng.normal()
        for epoch in (5, 10):
            rows.append({
                "model_id": m, "seed": m, "model_type": ["P", "PE", "D", "DE"][m % 4],
                "train_dataset": "expert" if m < n // 2 else "grid", "epoch": epoch,
                "ll_expert": ll + epoch, "ll_grid": -ll, "mse_expert": ll**2,
                "reward_mean": 100 + 10 * ll + rng.normal(), "diverged": m == 3,
            })
    return pd.DataFrame(rows)


def test_scatter_json_equals_scipy(tmp_path):
    table = _table()
    table.to_parquet(tmp_path / "results.parquet")
    reread = pd.read_parquet(tmp_path / "results.parquet")
    content = ll_reward_scatter(reread, tmp_path / "fig", num_bootstrap=200)
    assert (tmp_path / "fig" / "ll_reward_scatter.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "fig" / "ll_reward_correlations.json").read_text())
    assert saved == json.loads(json.dumps(content))
    assert saved["n_diverged_excluded"] == 1
    last = reread[(reread.epoch == 10) & ~reread.diverged]
    for rec in saved["correlations"]:
        part = last[last.train_dataset == rec["train_dataset"]]
        x, y = part[f"ll_{rec['eval_dataset']}"], part["reward_mean"]
        assert rec["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
        assert rec["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert rec["n"] == len(part)


def test_rejects_non_results_table(tmp_path):
    with pytest.raises(ValueError, match="not a sweep results table"):
        ll_reward_scatter(pd.DataFrame({"a": [1]}), tmp_path)


def test_per_epoch_curves_mark_best_epochs(tmp_path):
    from mismatch_jax.analysis.plots import per_epoch_curves

    rows = []
    for m in range(8):
        for epoch in (1, 2, 3, 4):
            rows.append({"model_id": m, "model_type": "P", "train_dataset": "expert", "epoch": epoch,
                         "ll_expert": float(epoch), "reward_mean": float(-(epoch - 2) ** 2 + m * 0.01),
                         "diverged": False})
    content = per_epoch_curves(pd.DataFrame(rows), tmp_path)
    (curve,) = content["curves"]
    assert curve["reward_best_epoch"] == 2 and curve["nll_best_epoch"] == 4
    assert curve["num_models"] == 8
    assert (tmp_path / "per_epoch_curves.png").is_file()
