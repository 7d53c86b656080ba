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


def test_fig3_panels_use_each_training_set_own_ll_and_match_scipy(tmp_path):
    from mismatch_jax.analysis.plots import fig3_panels

    table = _table()
    content = fig3_panels(table, tmp_path, num_bootstrap=100)
    assert (tmp_path / "fig3_ll_reward.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "fig3_correlations.json").read_text()) == json.loads(json.dumps(content))
    last = table[(table.epoch == 10) & ~table.diverged]
    assert [p["train_dataset"] for p in content["panels"]] == ["expert", "grid"]
    for panel in content["panels"]:
        part = last[last.train_dataset == panel["train_dataset"]]
        x, y = part[f"ll_{panel['train_dataset']}"], part["reward_mean"]
        assert panel["pooled"]["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
        assert panel["pooled"]["n"] == len(part)
        lo, hi = panel["pooled"]["pearson_ci"]
        assert lo <= panel["pooled"]["pearson"] <= hi
        for kind, stats in panel["per_type"].items():
            sub = part[part.model_type == kind]
            assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(sub[f"ll_{panel['train_dataset']}"],
                                                                            sub["reward_mean"]).statistic, abs=1e-12)
    dist = {(r["model_type"], r["train_dataset"]): r for r in content["reward_distribution"]}
    sub = last[(last.model_type == "P") & (last.train_dataset == "grid")]["reward_mean"]
    assert dist[("P", "grid")]["median"] == pytest.approx(np.median(sub))
    assert dist[("P", "grid")]["n"] == len(sub)
    assert dist[("P", "grid")]["at_least_150"] == pytest.approx((sub >= 150).mean())


def _epoch_table():
    """Two P models per dataset whose reward peaks at epoch 2 and whose own NLL is lowest at 4."""
    rows = []
    for m, train in enumerate(["grid", "grid", "on_policy", "on_policy"]):
        for epoch in (1, 2, 3, 4):
            rows.append({"model_id": m, "model_type": "P", "train_dataset": train, "epoch": epoch,
                         "ll_grid": float(epoch) if train == "grid" else -float(epoch),
                         "ll_on_policy": float(epoch) if train == "on_policy" else 0.5,
                         "reward_mean": float(-(epoch - 2) ** 2 + m), "diverged": False})
    return pd.DataFrame(rows)


def test_fig4_best_epochs_per_model(tmp_path):
    from mismatch_jax.analysis.epochs import best_epochs, fig4_best_epochs

    best = best_epochs(_epoch_table())
    assert best["reward_best_epoch"].tolist() == [2] * 4 and best["nll_best_epoch"].tolist() == [4] * 4
    assert best["difference"].tolist() == [-2] * 4
    assert best["reward_at_nll_best"].tolist() == [-4.0, -3.0, -2.0, -1.0]
    content = fig4_best_epochs(_epoch_table(), tmp_path)
    assert {s["train_dataset"] for s in content["summary"]} == {"grid", "on_policy"}
    assert all(s["share_reward_best_earlier"] == 1.0 and s["mean_reward_lost_by_nll_stopping"] == 4.0
               for s in content["summary"])
    assert (tmp_path / "fig4_best_epochs.png").is_file()


def test_fig5_nll_on_every_dataset(tmp_path):
    from mismatch_jax.analysis.epochs import fig5_dataset_nll

    content = fig5_dataset_nll(_epoch_table(), tmp_path)
    grid = next(p for p in content["panels"] if p["train_dataset"] == "grid")
    assert grid["nll"]["grid"]["mean"] == [-1.0, -2.0, -3.0, -4.0]
    assert grid["nll"]["on_policy"]["mean"] == [-0.5] * 4
    assert grid["num_models"] == 2 and (tmp_path / "fig5_dataset_nll.png").is_file()


def _fresh_episodes(table, reward):
    """The same models (ids, epochs, LLs) with the rewards of other episodes."""
    fresh = table.copy()
    fresh["reward_mean"] = [reward(r.epoch, r.model_id) for r in table.itertuples()]
    return fresh


def test_rescored_best_epochs_score_both_picks_on_fresh_episodes(tmp_path):
    from mismatch_jax.analysis.epochs import fig4_rescored, rescored_best_epochs

    pick = _epoch_table()  # reward peaks at epoch 2 (noise), own NLL lowest at 4
    score = _fresh_episodes(pick, lambda epoch, m: float(-(epoch - 3) ** 2 + m))  # fresh: 2 and 4 tie
    rescored = rescored_best_epochs(pick, score)
    assert rescored["reward_best_epoch"].tolist() == [2] * 4 and rescored["nll_best_epoch"].tolist() == [4] * 4
    assert rescored["fresh_reward_at_reward_best"].tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert rescored["fresh_reward_lost"].tolist() == [0.0] * 4
    content = fig4_rescored(pick, score, tmp_path)
    for s in content["summary"]:
        assert s["n"] == 2 and s["picks_differ"] == 2
        assert s["reward_lost_on_picking_episodes"] == 4.0  # the biased number fig4_best_epochs reports
        assert s["reward_lost_on_fresh_episodes"] == 0.0 and s["fresh_ci"] == [0.0, 0.0]
    assert (tmp_path / "fig4_rescored.json").is_file()

    # A model that diverged on the fresh episodes is left out; a different model is refused.
    score.loc[score.model_id == 3, "diverged"] = True
    assert rescored_best_epochs(pick, score)["model_id"].tolist() == [0, 1, 2]
    other = score.copy()
    other["ll_grid"] += 0.5
    with pytest.raises(ValueError, match="differ in ll_grid"):
        rescored_best_epochs(pick, other)
    with pytest.raises(ValueError, match="same \\(model, epoch\\) rows"):
        rescored_best_epochs(pick, score[score.epoch != 3])


def test_plot_rescore_on_writes_the_fresh_episode_statistic(tmp_path, capsys):
    from mismatch_jax import cli

    pick = _epoch_table()
    pick.to_parquet(tmp_path / "results.parquet")
    (tmp_path / "salt1").mkdir()
    _fresh_episodes(pick, lambda epoch, m: float(-(epoch - 3) ** 2 + m)).to_parquet(tmp_path / "salt1" / "results.parquet")
    assert cli.main(["plot", str(tmp_path), "--bootstrap", "20", "--rescore-on", str(tmp_path / "salt1")]) == 0
    assert "reward lost by NLL stopping 4.0 on the picking episodes, 0.0 [0.0, 0.0] on fresh ones" in capsys.readouterr().out
    saved = json.loads((tmp_path / "fig4_rescored.json").read_text())
    assert {s["train_dataset"] for s in saved["summary"]} == {"grid", "on_policy"}
