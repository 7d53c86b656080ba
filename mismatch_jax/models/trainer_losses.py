"""The trainer's loss contract (``LossInputs``, ``PerSampleLoss``) and the decision-aware model
losses as pluggable losses of the population trainer.

``train.make_train(config, per_sample_loss=...)`` takes ``fn(inputs: LossInputs, loss_context)
-> [E, B]`` (the ``train.PerSampleLoss`` protocol); this module builds such functions from the pure
losses of ``value_aware`` and the per-row side information (``TransitionData.aux``) they need:

* ``vagram_loss`` / ``itervaml_loss``: aux rows = the value gradients g_k(s′) of K critics at
  the true next state, flattened to [K·D] (``value_gradient_aux``), computed once per
  model-training phase, as in VaGraM's Algorithm 1 (the critics are fixed during the phase).
  Their norms are clipped at a percentile either once over the buffer (``value_gradient_aux``'s
  ``clip_percentile``) or over each minibatch's valid rows inside the loss
  (``minibatch_clip_percentile``, the authors' released code).
* ``value_weighted_loss``: aux rows = 1 / |V(s′)| (``value_weight_aux``), one column.
* ``mnm_loss(value_apply)``: no aux; ``loss_context = MnMContext`` (critics, classifier, keys,
  the Eq. 9 weight) so that a new critic or classifier does not recompile. Eq. 9 sees one
  reparameterised sample of the stochastic model per member and row (paper 001 Eq. 9's
  expectation over q_θ), so its gradient trains the mean and the variance heads.

All errors are taken in *state units* (``LossInputs.pred_next_obs − next_obs``), so the value
gradients need no unit conversion. The trainer's validation scores and early stopping stay MLE.

A decision-aware loss only shapes the next-state outputs; a model with ``predict_reward`` still
needs its reward output trained ("Train reward model" in VaGraM's Algorithm 1; MnM learns the
reward by regression). ``with_reward_mse`` adds that squared error of the (normalised) reward
output, and ``make_model_loss`` builds the whole per_sample_loss of an agent by name.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.models import core as models
from mismatch_jax.models import value_aware

@struct.dataclass
class LossInputs:
    """What a pluggable per-sample loss sees: one model, one minibatch of B rows, E members.

    mean, logvar: [E, B, D] the model's prediction in normalised target units (D = obs_dim, + 1
        with a reward output); target: [E, B, D] the normalised target (broadcast over members).
    pred_next_obs: [E, B, obs_dim] the predicted mean next state in original units.
    obs, action, next_obs, reward, aux: the rows in original units, [E, B, ...] (every member
        sees its own bootstrap rows); aux is None when the data carry none.
    target_std: [D] the normaliser's target scale (to move gradients between unit systems).
    row_weight: [E, B] the trainer's row weights (0 = a padded or unsampled row; bootstrap
        counts otherwise), for losses with statistics over the minibatch; None = all rows count.
    """

    mean: jax.Array
    logvar: jax.Array
    target: jax.Array
    pred_next_obs: jax.Array
    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array
    reward: jax.Array
    aux: jax.Array | None
    target_std: jax.Array
    row_weight: jax.Array | None = None


class PerSampleLoss(Protocol):
    """The contract of a pluggable model loss (``make_train(per_sample_loss=...)``, built by
    ``models.trainer_losses``): ``loss(inputs, loss_context) -> [E, B]`` per member and row.

    Pure and differentiable in ``inputs.mean`` / ``inputs.pred_next_obs`` (the trainer takes its
    gradient w.r.t. the model parameters); ``loss_context`` is the call's shared pytree (None
    when unused).
    """

    def __call__(self, inputs: LossInputs, loss_context: Any) -> jax.Array: ...


ValueApply = Callable[..., jax.Array]
"""(value_params, obs [obs_dim]) → [K] values, one per critic (MnM's: (value_params, obs, key
or None); the key samples the action of V(s) = Q(s, a ~ π))."""


def _per_member(fn):
    """Lifts fn(pred [B, D], next_obs [B, D], aux [B, …]) → [B] to [E, B, …] inputs."""
    return jax.vmap(fn)


def value_gradient_aux(value_fn: value_aware.ValueFn, next_obs: jax.Array, mask: Optional[jax.Array] = None,
                       clip_percentile: float = 95.0) -> jax.Array:
    """aux rows for VaGraM/IterVAML: next_obs [M, T, D] (mask [M, T] marks the rows that count
    for the percentile) → [M, T, K·D] clipped gradients g_k(s′), critic-major."""
    def one(obs, m):
        cache = value_aware.value_gradient_cache(value_fn, obs, clip_percentile, mask=m)
        k, t, d = cache.grads.shape
        return jnp.transpose(cache.grads, (1, 0, 2)).reshape(t, k * d)

    if mask is None:
        mask = jnp.ones(next_obs.shape[:2], bool)
    return jax.vmap(one)(next_obs, mask)


def value_weight_aux(value_fn: value_aware.ValueFn, next_obs: jax.Array, mask: Optional[jax.Array] = None,
                     direction: str = "inverse") -> jax.Array:
    """aux rows for the value-weighted MSE: next_obs [M, T, D] → [M, T, 1] weights
    (``value_aware.value_weights``: 1/|min_k V_k(s′)| or ∝ mean_k |V_k(s′)| normalised over the
    rows that ``mask`` [M, T] marks, per model)."""
    if mask is None:
        mask = jnp.ones(next_obs.shape[:2], bool)

    def one(obs, m):
        values = jax.vmap(value_fn)(obs)  # [T, K]
        return value_aware.value_weights(values.T, direction=direction, mask=m)

    return jax.vmap(one)(next_obs, mask)[..., None]


def _grads_from_aux(aux: jax.Array, obs_dim: int) -> jax.Array:
    """[B, K·D] → [K, B, D]."""
    b = aux.shape[0]
    return jnp.transpose(aux.reshape(b, -1, obs_dim), (1, 0, 2))


def _minibatch_gradients(inputs: LossInputs, minibatch_clip_percentile: Optional[float]):
    """The rows' value gradients [E, K, B, D] from aux, clipped per member over its minibatch's
    valid rows (row_weight > 0) when ``minibatch_clip_percentile`` is set."""
    d = inputs.next_obs.shape[-1]
    grads = jax.vmap(lambda g: _grads_from_aux(g, d))(inputs.aux)
    if minibatch_clip_percentile is None:
        return grads
    weight = jnp.ones(grads.shape[:1] + grads.shape[2:3]) if inputs.row_weight is None else inputs.row_weight
    clip = lambda g, w: value_aware.clip_gradient_norms(g, minibatch_clip_percentile, mask=w > 0)[0]
    return jax.lax.stop_gradient(jax.vmap(clip)(grads, weight))


def vagram_loss(regularizer: float = 0.0, critic_reduce: str = "sum",
                minibatch_clip_percentile: Optional[float] = None, output_reduce: str = "sum") -> PerSampleLoss:
    """per_sample_loss of VaGraM (Eq. 7): Σ_k Σ_d g_{k,d}² e_d² on aux = ``value_gradient_aux``
    (mean over critics with ``critic_reduce = "mean"``; gradient norms clipped per minibatch at
    ``minibatch_clip_percentile`` when set; ``output_reduce = "mean"`` divides by the state
    dimension D: the released code averages its per-dimension loss, to which the reward error is
    added, over the D state dims, i.e. (1/D)·Eq. 7 + e_r²)."""
    def loss(inputs, loss_context):
        del loss_context
        grads = _minibatch_gradients(inputs, minibatch_clip_percentile)
        out = jax.vmap(lambda p, s, g: value_aware.vagram_per_sample(p, s, g, regularizer, critic_reduce))(
            inputs.pred_next_obs, inputs.next_obs, grads)
        return out / inputs.next_obs.shape[-1] if output_reduce == "mean" else out
    return loss


def itervaml_loss(mse_coef: float = 0.01, critic_reduce: str = "sum",
                  minibatch_clip_percentile: Optional[float] = None, output_reduce: str = "sum") -> PerSampleLoss:
    """per_sample_loss of first-order IterVAML + mse_coef·MSE (appendix D.1) on aux =
    ``value_gradient_aux`` (critic_reduce, minibatch_clip_percentile, output_reduce: as
    ``vagram_loss``)."""
    def loss(inputs, loss_context):
        del loss_context
        grads = _minibatch_gradients(inputs, minibatch_clip_percentile)
        out = jax.vmap(lambda p, s, g: value_aware.itervaml_per_sample(p, s, g, mse_coef, critic_reduce))(
            inputs.pred_next_obs, inputs.next_obs, grads)
        return out / inputs.next_obs.shape[-1] if output_reduce == "mean" else out
    return loss


def running_gradient_scale(norm_avg: jax.Array, aux: jax.Array, mask: jax.Array, obs_dim: int, steps,
                           rate: float = 0.001) -> tuple[jax.Array, jax.Array]:
    """VaGraM's released code divides g by an exponential running mean m of the gradient norms
    (m ← (1 − rate)·m + rate·mean‖g‖ at every minibatch and critic, m = 1 at the start, kept for
    the whole run). Our gradients are fixed for a phase, so the ``steps`` (minibatches × critics)
    updates of a phase collapse to m ← (1 − rate)^steps·m + (1 − (1 − rate)^steps)·mean‖g‖ (the
    mean over the rows ``mask`` marks and the critics), and the phase's g are divided by that m.
    norm_avg [], aux [M, T, K·D], mask [M, T] → (new norm_avg [], aux / new norm_avg)."""
    norms = jnp.linalg.norm(aux.reshape(aux.shape[:2] + (-1, obs_dim)), axis=-1)  # [M, T, K]
    weight = jnp.broadcast_to(mask[..., None], norms.shape)
    mean = jnp.sum(jnp.where(weight, norms, 0.0)) / jnp.maximum(weight.sum(), 1)
    keep = (1.0 - rate) ** jnp.asarray(steps, jnp.float32)
    new = jnp.where(weight.any(), keep * norm_avg + (1.0 - keep) * mean, norm_avg)
    return new, aux / new


def value_weighted_loss() -> PerSampleLoss:
    """per_sample_loss of the value-weighted MSE ablation on aux = ``value_weight_aux``."""
    def loss(inputs, loss_context):
        del loss_context
        return _per_member(lambda p, s, w: value_aware.value_weighted_mse_per_sample(p, s, w[:, 0]))(
            inputs.pred_next_obs, inputs.next_obs, inputs.aux)
    return loss


class MnMContext(NamedTuple):
    """``loss_context`` of ``mnm_loss`` (a pytree; the agent's ``context_step`` advances it before
    every model minibatch step). value_params: the critics' (and policy's) parameters V reads;
    classifier / classifier_opt_state: C and its Adam state (trained in alternation);
    key: the alternation's key, split at every step; noise_key: this step's key for the
    reparameterisation noise ε and V's action sample; eq9_weight []: 1 when Eq. 9 is on,
    0 during the MLE warm-up (then the loss is the Gaussian NLL alone)."""

    value_params: Any
    classifier: Any
    classifier_opt_state: Any
    key: jax.Array
    noise_key: jax.Array
    eq9_weight: jax.Array


def mnm_sampled_next_obs(inputs: LossInputs, key: jax.Array) -> jax.Array:
    """The model's reparameterised next-state sample in original units: pred_next_obs +
    σ ε · target_std with σ = exp(logvar / 2) and ε ~ N(0, I) drawn from ``key`` with the shape
    of ``inputs.mean`` [E, B, D(+1)] (one draw per member and row) → [E, B, obs_dim]. The
    gradient reaches the mean and the log-variance heads."""
    obs_dim = inputs.pred_next_obs.shape[-1]
    eps = jax.random.normal(key, inputs.mean.shape, inputs.mean.dtype)
    std = inputs.target_std[:obs_dim].reshape((1,) * (eps.ndim - 1) + (-1,))
    step = (jnp.exp(0.5 * inputs.logvar) * eps)[..., :obs_dim] * std
    return inputs.pred_next_obs + step


def mnm_loss(value_apply: ValueApply, reduce: str = "min", *, probabilistic: bool = True,
             value_scale: float = 1.0, logit_bound: Optional[float] = None, mle_weight: float = 0.0,
             sample_value_action: bool = True) -> PerSampleLoss:
    """per_sample_loss of the MnM model objective (Eq. 9, negated) with an ``MnMContext``.

    Eq. 9 is an expectation over s′ ~ q_θ(·|s, a): with a ``probabilistic`` model it is taken at
    one reparameterised sample per member and row (``mnm_sampled_next_obs``; a deterministic
    model's sample is its mean). value_apply(value_params, s [D], key) → [K]; with
    ``sample_value_action`` each sample gets its own key (V(s) = Q(s, a ~ π), paper 001 Sec.
    4.2), else key None (the deterministic action). value_scale / logit_bound: as
    ``value_aware.mnm_model_loss_per_sample``. The result is eq9_weight · Eq. 9 + (mle_weight +
    1 − eq9_weight) · NLL (PETS Gaussian NLL of all outputs; MSE for a deterministic model):
    an MLE anchor (``mle_weight``) and a pure-MLE warm-up (eq9_weight = 0)."""
    def loss(inputs, ctx: MnMContext):
        noise_key, value_key = jax.random.split(ctx.noise_key)
        nxt = mnm_sampled_next_obs(inputs, noise_key) if probabilistic else inputs.pred_next_obs
        keys = None
        if sample_value_action:
            keys = jax.random.split(value_key, nxt.shape[0] * nxt.shape[1]).reshape(nxt.shape[:2])
            value_fn = lambda s, k: value_apply(ctx.value_params, s, k)
        else:
            value_fn = lambda s: value_apply(ctx.value_params, s, None)
        eq9 = jax.vmap(lambda o, a, p, k: value_aware.mnm_model_loss_per_sample(
            value_fn, ctx.classifier, o, a, p, reduce, value_scale, logit_bound, k),
            in_axes=(0, 0, 0, None if keys is None else 0))(inputs.obs, inputs.action, nxt, keys)
        if probabilistic:
            nll = models.gaussian_nll_per_sample(inputs.mean, inputs.logvar, inputs.target)
        else:
            nll = models.mse_per_sample(inputs.mean, inputs.target)
        w = ctx.eq9_weight
        return w * eq9 + (mle_weight + 1.0 - w) * nll
    return loss


def with_reward_mse(loss: PerSampleLoss, weight: float = 1.0) -> PerSampleLoss:
    """Adds ``weight`` · (μ̂_r − y_r)² of the last target dimension (the reward, in normalised
    units) to the per_sample_loss ``loss``: [E, B] + [E, B]. Use it on models with
    ``predict_reward``."""
    def wrapped(inputs, loss_context):
        reward_error = (inputs.mean[..., -1] - inputs.target[..., -1]) ** 2
        return loss(inputs, loss_context) + weight * reward_error
    return wrapped


LOSSES = ("mle", "vagram", "itervaml", "value_weighted", "mnm")
"""Model-loss names accepted by agents and experiments."""


def make_model_loss(name: str, *, value_apply: Optional[ValueApply] = None, predict_reward: bool = False,
                    reward_weight: float = 1.0, vagram_regularizer: float = 0.0,
                    itervaml_mse_coef: float = 0.01, critic_reduce: str = "sum",
                    minibatch_clip_percentile: Optional[float] = None, output_reduce: str = "sum",
                    mnm_options: Optional[dict] = None) -> Optional[PerSampleLoss]:
    """The trainer's ``per_sample_loss`` for model loss ``name`` (None for "mle": the trainer's
    own NLL/MSE, which already covers the reward output). ``value_apply`` is needed by "mnm";
    with ``predict_reward`` the reward output is trained by ``with_reward_mse(reward_weight)``.
    critic_reduce / minibatch_clip_percentile / output_reduce: VaGraM's and IterVAML's (``vagram_loss``);
    mnm_options: keyword arguments of ``mnm_loss``."""
    if name not in LOSSES:
        raise ValueError(f"model loss must be one of {LOSSES}, got {name!r}")
    if name == "mle":
        return None
    if name == "vagram":
        loss = vagram_loss(vagram_regularizer, critic_reduce, minibatch_clip_percentile, output_reduce)
    elif name == "itervaml":
        loss = itervaml_loss(itervaml_mse_coef, critic_reduce, minibatch_clip_percentile, output_reduce)
    elif name == "value_weighted":
        loss = value_weighted_loss()
    else:
        if value_apply is None:
            raise ValueError("model loss 'mnm' needs value_apply(value_params, obs [D]) -> [K]")
        loss = mnm_loss(value_apply, **(mnm_options or {}))
    return with_reward_mse(loss, reward_weight) if predict_reward else loss


def needs_value_gradients(name: str) -> bool:
    """Does model loss ``name`` read ``value_gradient_aux`` rows?"""
    return name in ("vagram", "itervaml")
