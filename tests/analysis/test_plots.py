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


@pytest.mark.unit
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


@pytest.mark.unit
def test_rejects_non_results_table(tmp_path):
    with pytest.raises(ValueError, match="not a sweep results table"):
        ll_reward_scatter(pd.DataFrame({"a": [1]}), tmp_path)


@pytest.mark.unit
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


@pytest.mark.unit
def test_fig3_panels_use_each_training_set_own_ll_and_match_scipy(tmp_path):
    from mismatch_jax.analysis.fig3 import fig3_panels

    table = _table()
    content = fig3_panels(table, tmp_path, num_bootstrap=100)
    assert (tmp_path / "fig3_ll_reward.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "fig3_correlations.json").read_text()) == json.loads(json.dumps(content))
    last = table[(table.epoch == 10) & ~table.diverged]
    assert content["design"] == "per_dataset"
    assert [p["train_dataset"] for p in content["panels"]] == ["expert", "grid"]
    for panel in content["panels"]:
        part = last[last.train_dataset == panel["train_dataset"]]
        column = f"ll_{panel['train_dataset']}"
        for kind, stats in panel["per_type"].items():
            sub = part[part.model_type == kind]
            assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(sub[column], sub["reward_mean"]).statistic,
                                                      abs=1e-12)
            assert stats["n"] == len(sub)
        # types are pooled only within one LL definition: P with PE, D with DE — never P with D
        pooled = panel["pooled_by_ll_definition"]
        assert set(pooled) == {"predicted", "fixed"}
        assert set(pooled["predicted"]["types"]) == {"P", "PE"} and set(pooled["fixed"]["types"]) == {"D", "DE"}
        sub = part[part.model_type.isin(["P", "PE"])]
        assert pooled["predicted"]["pearson"] == pytest.approx(scipy.stats.pearsonr(sub[column], sub["reward_mean"]).statistic,
                                                              abs=1e-12)
    diff = content["expert_minus_grid"]["P"]
    assert diff["minus"] == "grid" and diff["clustered"] is False
    assert diff["spearman"] == pytest.approx(content["panels"][0]["per_type"]["P"]["spearman"]
                                             - content["panels"][1]["per_type"]["P"]["spearman"])
    dist = {(r["model_type"], r["train_dataset"]): r for r in content["reward_distribution"]}
    sub = last[(last.model_type == "P") & (last.train_dataset == "grid")]["reward_mean"]
    assert dist[("P", "grid")]["median"] == pytest.approx(np.median(sub))
    assert dist[("P", "grid")]["n"] == len(sub)
    assert dist[("P", "grid")]["at_least_150"] == pytest.approx((sub >= 150).mean())


def _pets_table(seeds=4, trials=5, copies=3):
    """A PETS population: LL on expert tracks reward, LL on grid is noise; copies share a trial."""
    rng = np.random.default_rng(1)
    rows, model = [], 0
    for kind in ("P", "D", "PETS"):
        for s in range(seeds):
            for t in range(1, trials + 1):
                for c in range(1 if kind == "PETS" else copies):
                    skill = t + rng.normal(scale=0.5)
                    rows.append({"model_id": model, "model_type": kind, "train_dataset": "pets", "epoch": 3,
                                 "pets_seed": s, "pets_trial": t, "copy": c, "diverged": False,
                                 "ll_expert": skill + rng.normal(scale=0.2), "ll_on_policy": skill,
                                 "ll_grid": rng.normal() - (1e4 if c == 1 and kind == "P" else 0.0),
                                 "reward_mean": 20.0 * skill + rng.normal()})
                    model += 1
    return pd.DataFrame(rows)


def test_fig3_of_a_pets_population_scores_one_population_on_every_dataset(tmp_path):
    from mismatch_jax.analysis.correlation import cluster_correlate
    from mismatch_jax.analysis.fig3 import fig3_panels

    table = _pets_table()
    content = fig3_panels(table, tmp_path, num_bootstrap=200)
    assert content["design"] == "pets_population"
    assert [p["eval_dataset"] for p in content["panels"]] == ["expert", "on_policy", "grid"]  # the paper's order
    expert, _, grid = content["panels"]
    for panel in content["panels"]:  # every panel holds every model
        assert sum(stats["n"] for stats in panel["per_type"].values()) == len(table)
        assert "fixed" not in panel["pooled_by_ll_definition"]  # D is alone in its definition
        assert set(panel["pooled_by_ll_definition"]["predicted"]["types"]) == {"P", "PETS"}
    p_rows = table[table.model_type == "P"]
    stats = expert["per_type"]["P"]
    assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(p_rows.ll_expert, p_rows.reward_mean).statistic)
    assert stats["num_clusters"] == 4 * 5
    assert stats["spearman_within_trial"] is not None and -1 <= stats["spearman_within_trial"] <= 1
    clustered = cluster_correlate(p_rows.ll_expert, p_rows.reward_mean, p_rows[["pets_seed", "pets_trial"]].to_numpy(),
                                  num_bootstrap=200)
    assert stats["spearman_cluster_ci"] == clustered["spearman_cluster_ci"]
    lo, hi = stats["spearman_cluster_ci"]
    assert lo < stats["spearman"] < hi and lo > 0.5          # the built-in trend
    glo, ghi = grid["per_type"]["P"]["spearman_cluster_ci"]
    assert glo < 0 < ghi                                      # no trend on grid, outliers and all
    diff = content["expert_minus_grid"]["P"]
    assert diff["clustered"] and diff["spearman"] == pytest.approx(stats["spearman"] - grid["per_type"]["P"]["spearman"])
    assert diff["spearman_ci"][0] > 0                          # paired: the difference is resolved


def test_cluster_bootstrap_is_wider_than_per_model_when_copies_repeat_a_cluster():
    from mismatch_jax.analysis.correlation import cluster_correlate, correlate

    rng = np.random.default_rng(0)
    base_x, base_y = rng.normal(size=12), rng.normal(size=12)
    x, y = np.repeat(base_x, 10), np.repeat(base_y, 10)   # 10 identical copies of 12 clusters
    labels = np.repeat(np.arange(12), 10)
    per_model, clustered = correlate(x, y, num_bootstrap=400), cluster_correlate(x, y, labels, num_bootstrap=400)
    width = lambda ci: ci[1] - ci[0]
    assert width(clustered["pearson_cluster_ci"]) > 1.5 * width(per_model["pearson_ci"])
    assert clustered["num_clusters"] == 12


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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_expert_data_below_the_threshold_are_not_called_expert():
    from mismatch_jax.analysis.fig3 import dataset_label

    assert dataset_label("expert", None) == "expert"
    assert dataset_label("expert", {"expert_rewards": [180.0]}) == "expert"
    assert "none above the expert threshold" in dataset_label("expert", {"expert": "no PETS trial exceeded ..."})
    assert "none above" in dataset_label("expert", {"expert@seed0": "seed 0: no other seed's trial exceeded ..."})
    assert dataset_label("grid", {"expert": "..."}) == "grid"
