"""Tests of mismatch_jax.models.trainer_losses: the trainer adapters equal the direct value-aware
losses on the same rows, and the aux builders have the documented layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.models import trainer_losses, value_aware
from mismatch_jax.models.trainer_losses import LossInputs

E, B, D, A = 2, 5, 3, 1


def two_critics(obs):
    """V_1(s) = s·c, V_2(s) = ‖s‖²: [D] → [2]."""
    return jnp.stack([obs @ jnp.asarray([1.0, -2.0, 0.5]), jnp.sum(obs**2)])


def random_inputs(aux, row_weight=None):
    k = jax.random.split(jax.random.key(0), 4)
    pred = jax.random.normal(k[0], (E, B, D))
    nxt = jax.random.normal(k[1], (B, D))
    obs = jax.random.normal(k[2], (B, D))
    act = jax.random.normal(k[3], (B, A))
    rep = lambda a: jnp.broadcast_to(a[None], (E,) + a.shape)
    return LossInputs(mean=pred, logvar=jnp.zeros_like(pred), target=pred, pred_next_obs=pred,
                      obs=rep(obs), action=rep(act), next_obs=rep(nxt), reward=jnp.zeros((E, B)),
                      aux=None if aux is None else rep(aux), target_std=jnp.ones(D),
                      row_weight=row_weight), pred, nxt, obs, act


def test_vagram_and_itervaml_adapters_equal_direct_losses():
    _, _, nxt, _, _ = random_inputs(None)
    aux = trainer_losses.value_gradient_aux(two_critics, nxt[None], clip_percentile=100.0)[0]  # [B, 2·D]
    inputs, pred, nxt, _, _ = random_inputs(aux)
    grads = value_aware.value_gradients(two_critics, nxt)  # [2, B, D]
    np.testing.assert_allclose(np.asarray(aux.reshape(B, 2, D)), np.asarray(jnp.transpose(grads, (1, 0, 2))),
                               rtol=1e-6)
    got = trainer_losses.vagram_loss()(inputs, None)
    want = value_aware.vagram_per_sample(pred, nxt, grads)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    # Known value: Σ_k g_k² e² with g_1 = c, g_2 = 2 s′.
    e = pred - nxt[None]
    by_hand = jnp.sum((jnp.asarray([[[1.0, -2.0, 0.5]]]) ** 2 + (2 * nxt[None]) ** 2) * e**2, -1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(by_hand), rtol=1e-5)
    got_iv = trainer_losses.itervaml_loss(0.01)(inputs, None)
    np.testing.assert_allclose(np.asarray(got_iv), np.asarray(value_aware.itervaml_per_sample(pred, nxt, grads, 0.01)),
                               rtol=1e-5)


def test_value_weighted_and_mnm_adapters_equal_direct_losses():
    _, _, nxt, _, _ = random_inputs(None)
    aux = trainer_losses.value_weight_aux(two_critics, nxt[None])[0]
    inputs, pred, nxt, obs, act = random_inputs(aux)
    weights = value_aware.value_weights(jax.vmap(two_critics)(nxt).T)
    np.testing.assert_allclose(np.asarray(trainer_losses.value_weighted_loss()(inputs, None)),
                               np.asarray(value_aware.value_weighted_mse_per_sample(pred, nxt, weights)), rtol=1e-5)
    cls = value_aware.classifier_init(jax.random.key(3), value_aware.ClassifierConfig(D, A, hidden_size=8))
    scale = jnp.float32(2.0)
    value_apply = lambda s_params, s, key: s_params * two_critics(s)
    # A deterministic model: Eq. 9 at the mean prediction.
    got = trainer_losses.mnm_loss(value_apply, probabilistic=False, sample_value_action=False)(
        inputs, mnm_context(scale, cls))
    want = value_aware.mnm_model_loss_per_sample(lambda s: scale * two_critics(s), cls, obs, act, pred)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def mnm_context(value_params, classifier, eq9_weight=1.0):
    return trainer_losses.MnMContext(value_params, classifier, None, jax.random.key(8), jax.random.key(9),
                                     jnp.float32(eq9_weight))


def test_mnm_loss_sees_a_reparameterised_sample_and_anchors_on_the_nll():
    """Eq. 9 of a P model is taken at pred + exp(logvar / 2) ε · target_std with ε drawn from the
    context's noise key (not at the mean), so its gradient reaches the log-variance head; the
    eq9_weight = 0 warm-up is the Gaussian NLL alone and mle_weight adds it."""
    inputs, pred, nxt, obs, act = random_inputs(None)
    logvar = jax.random.normal(jax.random.key(11), pred.shape) - 1.0
    std = jnp.asarray([0.5, 2.0, 1.0])
    inputs = inputs.replace(logvar=logvar, target_std=std, target=pred + 0.3)
    cls = value_aware.classifier_init(jax.random.key(3), value_aware.ClassifierConfig(D, A, hidden_size=8))
    value_apply = lambda p, s, key: p * two_critics(s)
    ctx = mnm_context(jnp.float32(1.0), cls)
    loss = trainer_losses.mnm_loss(value_apply, sample_value_action=False, value_scale=0.5, logit_bound=3.0)
    eps = jax.random.normal(jax.random.split(ctx.noise_key)[0], pred.shape)
    sample = pred + jnp.exp(0.5 * logvar) * eps * std[None, None]
    np.testing.assert_allclose(np.asarray(trainer_losses.mnm_sampled_next_obs(inputs, jax.random.split(ctx.noise_key)[0])),
                               np.asarray(sample), rtol=1e-6)
    want = value_aware.mnm_model_loss_per_sample(two_critics, cls, obs, act, sample, value_scale=0.5, logit_bound=3.0)
    got = loss(inputs, ctx)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    at_mean = value_aware.mnm_model_loss_per_sample(two_critics, cls, obs, act, pred, value_scale=0.5, logit_bound=3.0)
    assert np.abs(np.asarray(got - at_mean)).max() > 1e-2  # the mean is not what Eq. 9 sees
    grad_logvar = jax.grad(lambda lv: loss(inputs.replace(logvar=lv), ctx).sum())(logvar)
    assert np.abs(np.asarray(grad_logvar)).min() > 0  # every member, row and dim (V and C read all dims)
    nll = jnp.mean((inputs.mean - inputs.target) ** 2 * jnp.exp(-logvar) + logvar, -1)
    warm = ctx._replace(eq9_weight=jnp.float32(0.0))
    np.testing.assert_allclose(np.asarray(loss(inputs, warm)), np.asarray(nll), rtol=1e-5)
    anchored = trainer_losses.mnm_loss(value_apply, sample_value_action=False, value_scale=0.5, logit_bound=3.0,
                                       mle_weight=0.25)
    np.testing.assert_allclose(np.asarray(anchored(inputs, ctx)), np.asarray(want + 0.25 * nll), rtol=1e-5)
    # V(s) = Q(s, a ~ π): one key per member and row.
    keyed = trainer_losses.mnm_loss(lambda p, s, key: p * two_critics(s) + jax.random.normal(key, (2,)))
    assert np.isfinite(np.asarray(keyed(inputs, ctx))).all()


def test_with_reward_mse_adds_the_normalised_reward_error():
    inputs, pred, nxt, _, _ = random_inputs(None)
    k = jax.random.split(jax.random.key(7), 2)
    mean = jax.random.normal(k[0], (E, B, D + 1))
    target = jax.random.normal(k[1], (E, B, D + 1))
    inputs = inputs.replace(mean=mean, target=target)
    base = lambda i, ctx: jnp.zeros(i.mean.shape[:2])
    got = trainer_losses.with_reward_mse(base, 0.5)(inputs, None)
    np.testing.assert_allclose(np.asarray(got), np.asarray(0.5 * (mean[..., -1] - target[..., -1]) ** 2), rtol=1e-6)


def test_make_model_loss_dispatches_by_name():
    _, _, nxt, _, _ = random_inputs(None)
    aux = trainer_losses.value_gradient_aux(two_critics, nxt[None], clip_percentile=100.0)[0]
    inputs, *_ = random_inputs(aux)
    assert trainer_losses.make_model_loss("mle") is None
    np.testing.assert_allclose(np.asarray(trainer_losses.make_model_loss("vagram")(inputs, None)),
                               np.asarray(trainer_losses.vagram_loss()(inputs, None)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trainer_losses.make_model_loss("itervaml", itervaml_mse_coef=0.1)(inputs, None)),
                               np.asarray(trainer_losses.itervaml_loss(0.1)(inputs, None)), rtol=1e-6)
    with_reward = trainer_losses.make_model_loss("vagram", predict_reward=True, reward_weight=2.0)
    reward_error = (inputs.mean[..., -1] - inputs.target[..., -1]) ** 2
    np.testing.assert_allclose(np.asarray(with_reward(inputs, None)),
                               np.asarray(trainer_losses.vagram_loss()(inputs, None) + 2.0 * reward_error), rtol=1e-5)
    assert trainer_losses.needs_value_gradients("vagram") and not trainer_losses.needs_value_gradients("mnm")
    import pytest

    with pytest.raises(ValueError, match="value_apply"):
        trainer_losses.make_model_loss("mnm")
    with pytest.raises(ValueError, match="model loss must be one of"):
        trainer_losses.make_model_loss("vaml")


def test_minibatch_clipping_counts_only_valid_rows_and_equals_clipping_those_rows():
    """clip_scope = "minibatch": the percentile is taken per member over the rows with weight > 0;
    on those rows the loss equals VaGraM on gradients clipped over exactly those rows."""
    _, _, nxt, _, _ = random_inputs(None)
    raw = trainer_losses.value_gradient_aux(two_critics, nxt[None], clip_percentile=100.0)[0]
    weight = jnp.asarray([[1.0, 1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]])  # [E, B]
    inputs, pred, nxt, _, _ = random_inputs(raw, weight)
    grads = value_aware.value_gradients(two_critics, nxt)  # [2, B, D]
    got = trainer_losses.vagram_loss(minibatch_clip_percentile=50.0)(inputs, None)
    for member in range(E):
        valid = np.asarray(weight[member] > 0)
        clipped, _ = value_aware.clip_gradient_norms(grads[:, valid], 50.0)
        want = value_aware.vagram_per_sample(pred[member, valid], nxt[valid], clipped)
        np.testing.assert_allclose(np.asarray(got[member, valid]), np.asarray(want), rtol=1e-5)
    unclipped = trainer_losses.vagram_loss()(inputs, None)
    assert np.all(np.asarray(got) <= np.asarray(unclipped) + 1e-6)
    assert np.any(np.asarray(got) < np.asarray(unclipped) - 1e-6)


def test_critic_mean_is_the_sum_over_the_number_of_critics():
    _, _, nxt, _, _ = random_inputs(None)
    aux = trainer_losses.value_gradient_aux(two_critics, nxt[None], clip_percentile=100.0)[0]
    inputs, _, _, _, _ = random_inputs(aux)
    for make in (lambda r: trainer_losses.vagram_loss(critic_reduce=r),
                 lambda r: trainer_losses.itervaml_loss(0.0, critic_reduce=r)):
        np.testing.assert_allclose(np.asarray(make("mean")(inputs, None)) * 2,
                                   np.asarray(make("sum")(inputs, None)), rtol=1e-5)


def test_value_weights_inverse_and_proportional_known_values():
    values = jnp.asarray([[-2.0, 4.0, -1.0], [-3.0, 2.0, 1.0]])  # [K = 2, B = 3]
    np.testing.assert_allclose(value_aware.value_weights(values), [1 / 3, 1 / 2, 1.0], rtol=1e-6)
    magnitude = np.asarray([2.5, 3.0, 1.0])
    np.testing.assert_allclose(value_aware.value_weights(values, direction="proportional"),
                               magnitude / magnitude.mean(), rtol=1e-6)
    mask = jnp.asarray([True, True, False])  # the normaliser counts only the valid rows
    np.testing.assert_allclose(value_aware.value_weights(values, direction="proportional", mask=mask),
                               magnitude / magnitude[:2].mean(), rtol=1e-6)
    aux = trainer_losses.value_weight_aux(two_critics, nxt_rows := jax.random.normal(jax.random.key(4), (2, 6, D)),
                                          direction="proportional")
    assert aux.shape == (2, 6, 1)
    np.testing.assert_allclose(np.asarray(aux.mean(axis=(1, 2))), [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux[1, :, 0]), np.asarray(value_aware.value_weights(
        jax.vmap(two_critics)(nxt_rows[1]).T, direction="proportional")), rtol=1e-6)


def test_vagram_released_code_options_output_mean_and_running_gradient_scale():
    """output_reduce="mean" is Eq. 7 / D (the code's mean over state dims, the reward error added
    to each); running_gradient_scale advances m by (1 − rate)^steps towards the mean norm of the
    masked rows and divides g by the new m."""
    _, _, nxt, _, _ = random_inputs(None)
    aux = trainer_losses.value_gradient_aux(two_critics, nxt[None], clip_percentile=100.0)[0]
    inputs, _, _, _, _ = random_inputs(aux)
    for make in (trainer_losses.vagram_loss, lambda **kw: trainer_losses.itervaml_loss(0.1, **kw)):
        np.testing.assert_allclose(np.asarray(make(output_reduce="mean")(inputs, None)),
                                   np.asarray(make()(inputs, None)) / D, rtol=1e-6)
    grads = jnp.asarray([[[3.0, 4.0, 0.0, 0.0, 0.0, 1.0], [6.0, 8.0, 0.0, 0.0, 0.0, 2.0],
                          [100.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])  # [M=1, T=3, K·D = 2·3]
    mask = jnp.asarray([[True, True, False]])
    new, scaled = trainer_losses.running_gradient_scale(jnp.float32(1.0), grads, mask, 3, steps=10, rate=0.1)
    keep = 0.9**10
    want = keep * 1.0 + (1 - keep) * np.mean([5.0, 1.0, 10.0, 2.0])  # norms of the 2 rows × 2 critics
    np.testing.assert_allclose(float(new), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(grads) / want, rtol=1e-5)
    same, _ = trainer_losses.running_gradient_scale(jnp.float32(2.0), grads, jnp.zeros_like(mask), 3, steps=10)
    assert float(same) == 2.0  # no rows yet: m stays
