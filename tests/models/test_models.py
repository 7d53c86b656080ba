"""Known-value tests of mismatch_jax/models/core.py: Gaussian log-likelihood vs scipy, soft
log-variance bounds, normaliser, prediction shapes, ensemble mixture log-likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from mismatch_jax.models import core as models


@pytest.mark.unit
def test_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 7, 3))
    var = rng.uniform(0.05, 3.0, size=(5, 7, 3))
    target = rng.normal(size=(5, 7, 3))
    ours = models.gaussian_log_likelihood(jnp.asarray(mean), jnp.asarray(var), jnp.asarray(target))
    ref = stats.norm.logpdf(target, loc=mean, scale=np.sqrt(var)).sum(-1)
    assert ours.shape == (5, 7)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_pets_nll_and_mse_per_sample_known_values():
    mean = jnp.array([[[1.0, 2.0]]])
    target = jnp.array([[[0.0, 0.0]]])
    logvar = jnp.array([[[0.0, jnp.log(4.0)]]])
    # mean over dims of (μ−y)² e^{−lv} + lv = ((1 + 0) + (4/4 + log 4)) / 2
    np.testing.assert_allclose(models.gaussian_nll_per_sample(mean, logvar, target),
                               [[(1.0 + 1.0 + np.log(4.0)) / 2]], rtol=1e-6)
    np.testing.assert_allclose(models.mse_per_sample(mean, target), [[2.5]], rtol=1e-6)


def test_soft_logvar_bounds():
    cfg = models.ModelConfig("P", 1, 1, hidden_size=4, num_hidden_layers=1)
    params = models.init(jax.random.key(0), cfg)
    # Route a raw log-variance through the output layer: zero weights, bias = raw value.
    raw = jnp.array([-50.0, -10.0, 0.0, 0.5, 50.0])
    w_out, b_out = params.layers[-1]
    outs = []
    for r in raw:
        layers = params.layers[:-1] + ((jnp.zeros_like(w_out), b_out.at[:, 1].set(r)),)
        _, lv = models.apply_normalized(cfg, params.replace(layers=layers), jnp.zeros((1, 2)))
        outs.append(float(lv[0, 0, 0]))
    hi, lo = cfg.init_max_logvar, cfg.init_min_logvar
    softplus = lambda v: np.log1p(np.exp(v))
    expected = [lo + softplus((hi - softplus(hi - r)) - lo) for r in np.asarray(raw)]
    np.testing.assert_allclose(outs, expected, rtol=1e-5, atol=1e-5)
    assert outs[0] > lo - 1e-4 and outs[-1] < hi + 1e-4  # bounded on both sides
    assert np.all(np.diff(outs) > 0)  # monotone


@pytest.mark.unit
def test_fit_normalizer_masked_moments():
    cfg = models.ModelConfig("P", 2, 1, hidden_size=4, num_hidden_layers=1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype(np.float32) * 3 + 1
    y = rng.normal(size=(20, 2)).astype(np.float32)
    x[:, 2] = 5.0  # constant column: std replaced by 1
    mask = np.arange(20) < 12
    x_masked = x.copy()
    x_masked[~mask] = 1e3  # must be ignored
    norm = models.fit_normalizer(cfg, jnp.asarray(x_masked), jnp.asarray(y), jnp.asarray(mask))
    np.testing.assert_allclose(norm.input_mean, x[mask].mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.input_std[:2], x[mask].std(0)[:2], rtol=1e-5)
    assert float(norm.input_std[2]) == 1.0
    np.testing.assert_allclose(norm.target_mean, y[mask].mean(0), rtol=1e-5, atol=1e-6)
    z = models.normalize_inputs(norm, jnp.asarray(x[mask]))
    np.testing.assert_allclose(np.asarray(z[:, :2]).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z[:, :2]).std(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind,ensemble", [("P", 1), ("PE", 3), ("D", 1), ("DE", 2)])
@pytest.mark.parametrize("predict_reward", [False, True])
def test_predict_shapes(kind, ensemble, predict_reward):
    cfg = models.ModelConfig(kind, 4, 2, hidden_size=8, num_hidden_layers=2, ensemble_size=ensemble,
                             predict_reward=predict_reward)
    params = models.init(jax.random.key(0), cfg)
    norm = models.identity_normalizer(cfg)
    obs, act = jnp.ones((6, 4)), jnp.ones((6, 2))
    mean, var = models.predict(cfg, params, norm, obs, act)
    assert mean.shape == var.shape == (ensemble, 6, cfg.target_dim)
    assert np.all(np.asarray(var) > 0)
    per_member_obs = jnp.ones((ensemble, 6, 4))
    mean2, _ = models.predict(cfg, params, norm, per_member_obs, jnp.ones((ensemble, 6, 2)))
    assert mean2.shape == (ensemble, 6, cfg.target_dim)
    if not cfg.probabilistic:
        np.testing.assert_allclose(var, 1.0)  # unit variance in normalised units (identity here)


def test_ensemble_mixture_log_likelihood_known_value():
    cfg = models.ModelConfig("PE", 2, 1, hidden_size=8, num_hidden_layers=1, ensemble_size=3)
    params = models.init(jax.random.key(1), cfg)
    rng = np.random.default_rng(2)
    norm = models.Normalizer(
        input_mean=jnp.asarray(rng.normal(size=3), jnp.float32),
        input_std=jnp.asarray(rng.uniform(0.5, 2, size=3), jnp.float32),
        target_mean=jnp.asarray(rng.normal(size=2) * 0.1, jnp.float32),
        target_std=jnp.asarray(rng.uniform(0.1, 1, size=2), jnp.float32),
    )
    obs = jnp.asarray(rng.normal(size=(10, 2)), jnp.float32)
    act = jnp.asarray(rng.normal(size=(10, 1)), jnp.float32)
    nxt = obs + 0.3 * jnp.asarray(rng.normal(size=(10, 2)), jnp.float32)
    mean, var = models.predict(cfg, params, norm, obs, act)
    per_member = stats.norm.logpdf(np.asarray(nxt)[None], np.asarray(mean), np.sqrt(np.asarray(var))).sum(-1)
    expected = (logsumexp(per_member, axis=0) - np.log(3)).mean()
    ll = models.one_step_log_likelihood(cfg, params, norm, obs, act, nxt)
    np.testing.assert_allclose(float(ll), expected, rtol=1e-5)
    mse = models.one_step_mse(cfg, params, norm, obs, act, nxt)
    np.testing.assert_allclose(float(mse), ((np.asarray(mean).mean(0) - np.asarray(nxt)) ** 2).sum(-1).mean(),
                               rtol=1e-5)


def test_deterministic_ll_with_its_validation_residual_variance_is_the_ml_gaussian():
    """A DE model's LL with ``residual_variance``: each member's per-dimension mean squared residual
    on the weighted rows (the ML homoscedastic fit), the members mixed uniformly (scipy)."""
    cfg = models.ModelConfig("DE", 2, 1, hidden_size=8, num_hidden_layers=1, ensemble_size=2)
    params = models.init(jax.random.key(3), cfg)
    norm = models.identity_normalizer(cfg)
    rng = np.random.default_rng(4)
    obs = jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)
    act = jnp.asarray(rng.normal(size=(12, 1)), jnp.float32)
    nxt = obs + 0.2 * jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)
    weight = jnp.asarray(np.arange(12) < 8, jnp.float32)  # the first 8 rows are the validation rows
    mean, _ = models.predict(cfg, params, norm, obs, act)
    residual = (np.asarray(mean) - np.asarray(nxt)[None]) ** 2  # [E, B, D]
    expected_var = residual[:, :8].mean(axis=1)
    var = models.residual_variance(cfg, params, norm, obs, act, nxt, weight=weight)
    np.testing.assert_allclose(np.asarray(var), expected_var, rtol=1e-5)
    per_member = stats.norm.logpdf(np.asarray(nxt)[None], np.asarray(mean), np.sqrt(expected_var)[:, None]).sum(-1)
    expected = (logsumexp(per_member, axis=0) - np.log(2)).mean()
    ll = models.one_step_log_likelihood(cfg, params, norm, obs, act, nxt, variance=var)
    np.testing.assert_allclose(float(ll), expected, rtol=1e-5)
    # a model twice as far off has a lower LL: the axis moves with accuracy
    worse = models.one_step_log_likelihood(cfg, params, norm, obs, act, nxt, variance=4 * var)
    assert float(worse) < float(ll)


def test_model_loss_weights_and_bound_term():
    cfg = models.ModelConfig("P", 2, 1, hidden_size=8, num_hidden_layers=1)
    params = models.init(jax.random.key(3), cfg)
    norm = models.identity_normalizer(cfg)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
    mean, logvar = models.apply_normalized(cfg, params, x)
    per = np.asarray(models.gaussian_nll_per_sample(mean, logvar, jnp.broadcast_to(y, mean.shape)))[0]
    bound = 0.01 * float(params.max_logvar.sum() - params.min_logvar.sum())
    np.testing.assert_allclose(models.model_loss(cfg, params, norm, x, y), per.mean() + bound, rtol=1e-5)
    w = jnp.asarray([1, 1, 1, 0, 0, 0, 0, 2], jnp.float32)
    expected = (per * np.asarray(w)).sum() / 5.0 + bound
    np.testing.assert_allclose(models.model_loss(cfg, params, norm, x, y, w), expected, rtol=1e-5)


def test_angle_dims_become_sin_cos_inputs_and_targets_stay_raw():
    import jax.numpy as jnp

    config = models.ModelConfig("P", obs_dim=3, action_dim=1, hidden_size=8, num_hidden_layers=1, angle_dims=(1,))
    assert config.input_dim == 5
    obs = jnp.array([[0.5, 7.0, -1.0]])
    action = jnp.array([[0.25]])
    x, y = models.make_targets(config, obs, action, obs + 0.1)
    np.testing.assert_allclose(x, [[0.5, -1.0, np.sin(7.0), np.cos(7.0), 0.25]], rtol=1e-6)
    np.testing.assert_allclose(y, [[0.1, 0.1, 0.1]], rtol=1e-5)
    wound = obs.at[0, 1].add(2 * np.pi)
    params = models.init(jax.random.key(0), config)
    norm = models.identity_normalizer(config)
    mean_a, var_a = models.predict(config, params, norm, obs, action)
    mean_b, var_b = models.predict(config, params, norm, wound, action)
    # A full turn changes the input features by nothing, so the predicted delta is the same.
    np.testing.assert_allclose(mean_b - wound[None], mean_a - obs[None], atol=1e-5)
    np.testing.assert_allclose(var_a, var_b, rtol=1e-6)
    with pytest.raises(ValueError, match="angle_dims"):
        models.ModelConfig("P", obs_dim=3, action_dim=1, angle_dims=(3,))
