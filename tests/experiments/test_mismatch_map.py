"""The mismatch-map experiment: strict config, loss wrapper,
correlations equal scipy on the table; a tiny end-to-end run (slow)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from mismatch_jax.config_io import ConfigError
from mismatch_jax.experiments import mismatch_map as mm
from mismatch_jax.experiments import mismatch_map_config as mmc
from mismatch_jax.models import core as models
from mismatch_jax.models.trainer_losses import LossInputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["mismatch_map.toml", "mismatch_map_quick.toml"])
def test_shipped_configs_load(name):
    config = mmc.load_config(ROOT / "sweeps" / name)
    assert set(config.losses) == set(mmc.LOSSES)
    assert config.population.num_epochs % config.mnm.rounds == 0


@pytest.mark.unit
@pytest.mark.parametrize("data, key", [
    ({"population": {"num_modelz": 3}}, "population.num_modelz"),
    ({"planner": {"horizon": "ten"}}, "planner.horizon"),
    ({"planner": {"num_elites": 500}}, "planner"),
    ({"mnm": {"rounds": 7}}, "mnm.rounds"),
    ({"losses": ["nll", "mse"]}, "losses"),
    ({"population": {"keep_epochs": [0, 10]}}, "keep_epochs"),
    ({"sac": {"hidden_size": 1.5}}, "sac.hidden_size"),
    ({"evaluation": {"terminal_value": 1}}, "evaluation.terminal_value"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        mmc.config_from_dict(data)


def test_variance_head_separates_mean_and_variance_gradients():
    e, b, d = 1, 5, 3
    k = jax.random.split(jax.random.key(0), 3)
    mean, logvar, target = (jax.random.normal(kk, (e, b, d)) for kk in k)
    decision = lambda inp, ctx: jnp.sum(inp.mean**3, axis=-1)  # depends on the mean only

    def total(mean, logvar, fn):
        inputs = LossInputs(mean=mean, logvar=logvar, target=target, pred_next_obs=mean, obs=target,
                            action=target[..., :1], next_obs=target, reward=target[..., 0], aux=None,
                            target_std=jnp.ones(d))
        return fn(inputs, None).sum()

    g_mean, g_logvar = jax.grad(total, argnums=(0, 1))(mean, logvar, mm.with_variance_head(decision))
    np.testing.assert_allclose(g_mean, jax.grad(total)(mean, logvar, decision), rtol=1e-6)
    nll = lambda lv: models.gaussian_nll_per_sample(mean, lv, target).sum()
    np.testing.assert_allclose(g_logvar, jax.grad(nll)(logvar), rtol=1e-6)


def _synthetic_table(seed=0, n=12):
    rng = np.random.default_rng(seed)
    rows = []
    for loss in mmc.LOSSES:
        for i in range(n):
            row = {"loss": loss, "model_id": i, "epoch": 1, "diverged": bool(i == 0),
                   "reward_mean": float(rng.normal())}
            row.update({m: float(rng.normal()) for m in mm.METRICS})
            row["own_objective"] = mm._score_of(loss, row)
            rows.append(row)
    return pd.DataFrame(rows)


def _check_against_scipy(table, summary):
    for loss, block in summary["correlations"].items():
        t = table[(table["loss"] == loss) & ~table["diverged"]]
        for column, key, sign in [("own_objective", "own_objective", 1), ("ll", "ll", 1),
                                  ("vagram", "neg_vagram", -1), ("mse", "neg_mse", -1)]:
            x, y = sign * t[column].to_numpy(), t["reward_mean"].to_numpy()
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.sum() < 3:
                continue
            assert block[key]["n"] == keep.sum()
            assert block[key]["pearson"] == pytest.approx(scipy.stats.pearsonr(x[keep], y[keep])[0], abs=1e-12)
            assert block[key]["spearman"] == pytest.approx(scipy.stats.spearmanr(x[keep], y[keep])[0], abs=1e-12)
    # Own objective: LL for the NLL population, the negated loss otherwise.
    assert summary["correlations"]["nll"]["own_objective"]["pearson"] == \
        pytest.approx(summary["correlations"]["nll"]["ll"]["pearson"])
    assert summary["correlations"]["mnm"]["own_objective"]["pearson"] == \
        pytest.approx(summary["correlations"]["mnm"]["neg_mnm"]["pearson"])


@pytest.mark.unit
def test_correlation_summary_equals_scipy_and_drops_diverged():
    table = _synthetic_table()
    summary = mm.correlation_summary(table, num_bootstrap=50)
    _check_against_scipy(table, summary)
    assert summary["correlations"]["vagram"]["ll"]["n"] == 11
    assert summary["pooled"]["ll"]["n"] == 33


TINY = {
    "out_dir": "unused",
    "sac": {"total_env_steps": 1000, "eval_interval": 500, "learning_starts": 300, "hidden_size": 16,
            "num_eval_episodes": 1, "buffer_capacity": 1000},
    "data": {"max_rows": 300},
    "population": {"num_models": 2, "hidden_sizes": [8], "num_hidden_layers": 1, "num_epochs": 2,
                   "keep_epochs": [1, 2], "batch_size": 64},
    "mnm": {"rounds": 2, "classifier_hidden_size": 8, "classifier_steps": 5, "classifier_batch_size": 16},
    "planner": {"horizon": 3, "population_size": 8, "num_elites": 2, "num_iterations": 1},
    "evaluation": {"trials": 2, "episode_length": 4, "num_bootstrap": 20},
}


@pytest.mark.slow  # ~2-3 min on 2 shared cores: it compiles SAC, 3 trainers, classifier and planners
def test_tiny_run_writes_finite_results_consistent_with_scipy(tmp_path):
    config = mmc.config_from_dict(TINY)
    results = mm.run_mismatch_map(config, tmp_path, log=lambda *_: None)
    for suffix in ("png", "json", "parquet"):
        assert (tmp_path / f"mismatch_map.{suffix}").is_file()
    table = pd.read_parquet(tmp_path / "mismatch_map.parquet")
    assert len(table) == len(mmc.LOSSES) * 2 * 2 == results["num_rows"]
    assert sorted(table["loss"].unique()) == sorted(mmc.LOSSES)
    assert np.all(np.isfinite(table[list(mm.METRICS) + ["reward_mean"]].to_numpy()))
    assert all(len(r) == 2 for r in table["reward"])
    # Models of one index share key and learning rate across losses (paired populations).
    lr = table.pivot_table(index=["model_id", "epoch"], columns="loss", values="learning_rate")
    np.testing.assert_array_equal(lr["nll"], lr["mnm"])
    written = json.loads((tmp_path / "mismatch_map.json").read_text())
    _check_against_scipy(table, written)
