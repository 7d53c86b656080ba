"""Value-aware model losses: VaGraM vs a direct jax.grad computation of Eq. 7, known values,
the ignored-dimension property, the MnM classifier / model loss / augmented reward."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.agents import sac_config
from mismatch_jax.envs import registry
from mismatch_jax.models import core
from mismatch_jax.models import value_aware as va


@pytest.fixture(scope="module")
def sac_value():
    """A random SAC (4 critics: perturbed targets so that all four differ) on Pendulum's shapes."""
    env = registry.make("pendulum")
    config = sac_config.SACConfig(hidden_size=32, num_hidden_layers=2)
    sac = sac_lib.make_sac(config, env)
    state = sac.init(jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten(state.params.target_critic)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    params = state.params.replace(target_critic=jax.tree_util.tree_unflatten(treedef, noisy))
    return jax.jit(lambda s: sac.value(params, s, critics="all"))


def _direct_grad(value_fn):
    """(s [D], k) → ∂V_k/∂s by plain jax.grad (jitted once; k is a traced index)."""
    return jax.jit(jax.grad(lambda s, k: value_fn(s)[k]))


def _data(key, b=8, d=3):
    k1, k2 = jax.random.split(key)
    target = jax.random.normal(k1, (b, d))
    pred = target + 0.3 * jax.random.normal(k2, (b, d))
    return pred, target


# --------------------------------------------------------------------------- VaGraM


def test_vagram_equals_direct_grad_computation_of_eq7(sac_value):
    pred, target = _data(jax.random.key(2))
    cache = va.value_gradient_cache(sac_value, target, clip_percentile=100.0)
    assert cache.grads.shape == (4, 8, 3)
    loss = va.vagram_per_sample(pred, target, cache.grads)

    grad_k = _direct_grad(sac_value)
    expected = np.zeros(8)
    for i in range(8):
        for k in range(4):
            g = grad_k(target[i], k)  # ∂V_k/∂s′ at the TRUE s′
            expected[i] += float(jnp.sum(g**2 * (pred[i] - target[i]) ** 2))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_vagram_with_clipping_equals_direct_computation(sac_value):
    pred, target = _data(jax.random.key(3), b=20)
    cache = va.value_gradient_cache(sac_value, target, clip_percentile=95.0)
    grad_k = _direct_grad(sac_value)
    grads = np.stack([np.stack([np.asarray(grad_k(t, k)) for t in target]) for k in range(4)])  # [K, B, D]
    norms = np.linalg.norm(grads, axis=-1)
    threshold = np.percentile(norms, 95.0, axis=1)
    clipped = grads * np.minimum(1.0, threshold[:, None] / norms)[..., None]
    np.testing.assert_allclose(cache.threshold, threshold, rtol=1e-5)
    np.testing.assert_allclose(cache.grads, clipped, rtol=1e-5, atol=1e-7)
    expected = np.sum(np.sum(clipped**2, 0) * np.asarray(pred - target) ** 2, -1)
    np.testing.assert_allclose(va.vagram_per_sample(pred, target, cache.grads), expected, rtol=1e-5)
    assert np.sum(norms > threshold[:, None]) >= 4  # one row per critic was actually clipped


@pytest.mark.unit
def test_gradient_clipping_known_values_and_mask():
    norms = np.arange(1.0, 21.0)  # 20 gradient norms 1..20
    directions = np.stack([np.cos(norms), np.sin(norms)], -1)
    grads = jnp.asarray((norms[:, None] * directions)[None])  # [1, 20, 2]
    clipped, threshold = va.clip_gradient_norms(grads, 95.0)
    np.testing.assert_allclose(threshold, [np.percentile(norms, 95.0)], rtol=1e-6)  # 19.05
    np.testing.assert_allclose(np.linalg.norm(clipped[0], axis=-1), np.minimum(norms, 19.05), rtol=1e-5)
    np.testing.assert_allclose(clipped[0] / np.linalg.norm(clipped[0], axis=-1, keepdims=True),
                               directions, rtol=1e-5, atol=1e-6)
    # rows outside the mask do not count for the percentile
    mask = norms <= 10
    _, masked_threshold = va.clip_gradient_norms(grads, 95.0, mask=jnp.asarray(mask))
    np.testing.assert_allclose(masked_threshold, [np.percentile(norms[mask], 95.0)], rtol=1e-6)
    # pooled: one threshold for all critics
    two = jnp.concatenate([grads, 2 * grads], 0)
    _, pooled = va.clip_gradient_norms(two, 50.0, pooled=True)
    np.testing.assert_allclose(pooled, np.full(2, np.percentile(np.concatenate([norms, 2 * norms]), 50.0)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="percentile"):
        va.clip_gradient_norms(grads, 0.0)


def test_vagram_ignores_dimensions_the_value_ignores_mse_does_not():
    def value_fn(s):  # two critics, neither depends on s[2]
        return jnp.stack([jnp.sin(s[0]) + s[1] ** 2, 2.0 * s[0] - jnp.cos(s[1])])

    pred, target = _data(jax.random.key(4))
    grads = va.value_gradient_cache(value_fn, target, clip_percentile=100.0).grads
    vagram_grad = jax.grad(lambda p: va.vagram_per_sample(p, target, grads).sum())(pred)
    mse_grad = jax.grad(lambda p: core.mse_per_sample(p, target).sum())(pred)
    np.testing.assert_array_equal(vagram_grad[:, 2], 0.0)
    assert np.all(np.abs(np.asarray(vagram_grad[:, :2])) > 0)
    assert np.all(np.abs(np.asarray(mse_grad[:, 2])) > 0)


@pytest.mark.unit
def test_known_values_vagram_itervaml_value_weighted():
    target = jnp.zeros((1, 3))
    pred = jnp.ones((1, 3))  # e = [1, 1, 1]
    g1 = jnp.array([[[1.0, 2.0, 0.0]]])  # [K=1, B=1, D=3]
    g2 = jnp.concatenate([g1, jnp.array([[[0.0, 0.0, 1.0]]])], 0)
    np.testing.assert_allclose(va.vagram_per_sample(pred, target, g1), [5.0])  # 1 + 4 + 0
    np.testing.assert_allclose(va.vagram_per_sample(pred, target, g2), [6.0])
    np.testing.assert_allclose(va.vagram_per_sample(pred, target, g1, regularizer=0.5), [6.5])
    np.testing.assert_allclose(va.itervaml_per_sample(pred, target, g1, mse_coef=0.0), [9.0])  # (1+2)²
    np.testing.assert_allclose(va.itervaml_per_sample(pred, target, g1), [9.01])  # + 0.01 · mean e²
    np.testing.assert_allclose(va.itervaml_per_sample(pred, target, g2), [10.01])

    values = jnp.array([[-2.0, -4.0], [-3.0, -1.0]])  # [K=2, B=2] → min over critics [-3, -4]
    weights = va.value_weights(values)
    np.testing.assert_allclose(weights, [1 / 3, 1 / 4], rtol=1e-6)
    pred2 = jnp.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(va.value_weighted_mse_per_sample(pred2, jnp.zeros((2, 3)), weights),
                               [4 / 3 / 3, 1 / 4], rtol=1e-6)
    np.testing.assert_allclose(va.value_weights(jnp.array([0.0, 2.0]), eps=0.1), [10.0, 0.5])


@pytest.mark.unit
def test_itervaml_is_exact_vaml_for_a_linear_value_function():
    w = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.3]])
    value_fn = lambda s: w @ s  # noqa: E731
    pred, target = _data(jax.random.key(5))
    grads = va.value_gradients(value_fn, target)
    np.testing.assert_allclose(va.itervaml_per_sample(pred, target, grads, mse_coef=0.0),
                               va.vaml_per_sample(value_fn, pred, target), rtol=1e-5)


def test_ensemble_shapes_and_chunking(sac_value):
    pred, target = _data(jax.random.key(6), b=10)
    ens = jnp.stack([pred, pred + 0.1, pred - 0.2])  # [E=3, B, D]
    grads = va.value_gradients(sac_value, target, chunk_size=None)
    np.testing.assert_allclose(va.value_gradients(sac_value, target, chunk_size=4), grads, rtol=1e-6)
    assert va.vagram_per_sample(ens, target, grads).shape == (3, 10)
    assert va.itervaml_per_sample(ens, target, grads).shape == (3, 10)
    assert va.vaml_per_sample(sac_value, ens, target).shape == (3, 10)
    assert va.value_weighted_mse_per_sample(ens, target, jnp.ones(10)).shape == (3, 10)
    np.testing.assert_allclose(va.vagram_per_sample(ens, target, grads)[1],
                               va.vagram_per_sample(ens[1], target, grads), rtol=1e-6)
    with pytest.raises(ValueError, match="target"):
        va.vagram_per_sample(ens[:, :5], target, grads)


def test_cache_rows_and_normalized_units(sac_value):
    pred, target = _data(jax.random.key(7), b=6)
    cache = va.value_gradient_cache(sac_value, target)
    index = jnp.array([4, 0, 4])
    np.testing.assert_array_equal(cache.rows(index), cache.grads[:, index])
    # g · e is invariant when errors are expressed in normalised units and g is rescaled
    std = jnp.array([0.5, 2.0, 4.0])
    g_norm = va.to_normalized_units(cache.grads, std)
    lhs = va.itervaml_per_sample(pred, target, cache.grads, mse_coef=0.0)
    rhs = va.itervaml_per_sample(pred / std[None], target / std[None], g_norm, mse_coef=0.0)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


# --------------------------------------------------------------------------- MnM


def test_classifier_loss_decreases_on_separable_data():
    config = va.ClassifierConfig(obs_dim=3, action_dim=1, hidden_size=32)
    params = va.classifier_init(jax.random.key(8), config)
    k1, k2 = jax.random.split(jax.random.key(9))
    obs = jax.random.normal(k1, (128, 3))
    action = jax.random.uniform(k2, (128, 1))
    real, fake = obs + 1.0, obs - 1.0  # same (s, a), separable next states
    opt = optax.adam(1e-2)
    loss_fn = jax.jit(jax.value_and_grad(va.classifier_loss))

    first, _ = loss_fn(params, obs, action, real, fake)
    state = opt.init(params)
    for _ in range(60):
        loss, grads = loss_fn(params, obs, action, real, fake)
        updates, state = opt.update(grads, state)
        params = optax.apply_updates(params, updates)
    last, _ = loss_fn(params, obs, action, real, fake)
    assert float(last) < 0.1 < float(first)
    assert va.classifier_apply(params, obs, action, real).shape == (128,)
    assert np.all(np.asarray(va.classifier_apply(params, obs, action, real)) > 0)
    assert np.all(np.asarray(va.classifier_apply(params, obs, action, fake)) < 0)
    assert va.classifier_loss_per_sample(params, obs, action, real, fake).shape == (128,)


@pytest.mark.unit
def test_classifier_loss_known_value():
    config = va.ClassifierConfig(obs_dim=2, action_dim=1, hidden_size=4, num_hidden_layers=1)
    params = va.classifier_init(jax.random.key(10), config)
    (w0, b0), (w1, b1) = params
    params = ((w0, b0), (jnp.zeros_like(w1), jnp.full_like(b1, 0.7)))  # logit ≡ 0.7
    x = jnp.ones((3, 2))
    loss = va.classifier_loss_per_sample(params, x, jnp.ones((3, 1)), x, x)
    c = 1 / (1 + np.exp(-0.7))
    np.testing.assert_allclose(loss, -np.log(c) - np.log(1 - c), rtol=1e-5)


def test_mnm_model_loss_known_value_and_gradient():
    config = va.ClassifierConfig(obs_dim=2, action_dim=1, hidden_size=4, num_hidden_layers=1)
    (w0, b0), (w1, b1) = va.classifier_init(jax.random.key(11), config)
    clf = ((w0, b0), (jnp.zeros_like(w1), jnp.full_like(b1, -0.4)))  # logit ≡ -0.4
    w = jnp.array([[1.0, -2.0], [0.5, 0.5]])  # two linear critics
    value_fn = lambda s: w @ s  # noqa: E731
    obs = jnp.zeros((3, 2))
    action = jnp.zeros((3, 1))
    model_next = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    loss = va.mnm_model_loss_per_sample(value_fn, clf, obs, action, model_next)
    v_min = np.minimum(model_next @ np.array([1.0, -2.0]), model_next @ np.array([0.5, 0.5]))
    np.testing.assert_allclose(loss, -(v_min - 0.4), rtol=1e-6)
    mean_loss = va.mnm_model_loss_per_sample(value_fn, clf, obs, action, model_next, reduce="mean")
    np.testing.assert_allclose(mean_loss, -((model_next @ np.array([1.5, -1.5])) / 2 - 0.4), rtol=1e-6)
    # minimising the loss moves the model's next state up the value
    grad = jax.grad(lambda s: va.mnm_model_loss_per_sample(value_fn, clf, obs, action, s).sum())(model_next)
    np.testing.assert_allclose(grad[0], [-0.5, -0.5])  # critic 2 is the min at [1, 0]
    ens = jnp.stack([model_next, model_next])
    assert va.mnm_model_loss_per_sample(value_fn, clf, obs, action, ens).shape == (2, 3)


@pytest.mark.unit
def test_augmented_reward_transforms():
    reward = jnp.array([-16.0, -1.0, 0.0])
    logits = jnp.array([0.5, -0.5, 0.0])
    np.testing.assert_allclose(va.mnm_augmented_reward(reward, logits), reward + logits)
    np.testing.assert_allclose(va.mnm_augmented_reward(reward, logits, temperature=2.0), reward / 2 + logits)
    shifted = va.mnm_augmented_reward(reward, logits, "shift", reward_min=-16.2736, eps=1e-3)
    np.testing.assert_allclose(shifted, np.log(np.array(reward) + 16.2736 + 1e-3) + np.array(logits), rtol=1e-5)
    np.testing.assert_allclose(va.mnm_augmented_reward(jnp.array([np.e]), jnp.array([1.0]), "log"), [2.0])
    # Eq. 3: (1 − γ)·log r⁺ + logit − (1 − γ)·log(1 − γ); at γ = 0.99 the reward weighs 0.01
    eq3 = va.mnm_augmented_reward(reward, logits, discount=0.99)
    np.testing.assert_allclose(eq3, 0.01 * np.asarray(reward) + np.asarray(logits) - 0.01 * np.log(0.01), rtol=1e-5)
    np.testing.assert_allclose(va.mnm_augmented_reward(reward, logits, discount=0.9, temperature=2.0),
                               0.1 * np.asarray(reward) / 2 + np.asarray(logits) - 0.1 * np.log(0.1), rtol=1e-5)
    with pytest.raises(ValueError, match="reward_min"):
        va.log_positive_reward(reward, "shift")
    with pytest.raises(ValueError, match="transform"):
        va.log_positive_reward(reward, "sqrt")
