"""Decision-aware model losses: VaGraM, IterVAML, value-weighted MSE and the MnM model objective.

All functions are pure and per-sample where that makes sense: they return ``[..., B]`` so that a
caller can mask, weight and reduce (``[E, B]`` for an ensemble, like ``models.core``'s losses).
MLE losses are not repeated here: use ``models.core.gaussian_nll_per_sample`` /
``mse_per_sample``.

Value functions enter as ``value_fn(obs [obs_dim]) -> [K]``: one value per critic, e.g. SAC's
``lambda s: sac.value(params, s, critics="all")`` (K = 4: 2 online + 2 target critics,
V_k(s) = Q_k(s, π(s))). This module never imports an agent (models ← agents).

Notation: s′ is the *true* next state of a dataset tuple, f̂(s, a) the model's prediction,
e = f̂(s, a) − s′, g_k = ∇_s V_k(s)|_{s′} (the gradient at the true next state).

* **VaGraM** (Voelcker et al. 2022, Eq. 7 / Algorithm 1): Σ_k Σ_d g_{k,d}² e_d². The per-sample
  gradients are computed once per model-training phase (``value_gradient_cache``) and reused by
  every minibatch. Appendix E: "we calculated the L2 norm of all value function gradients and
  clipped these at the 95-th percentile": each gradient *vector* g_k(s′) whose L2 norm exceeds
  the 95th percentile of the norms is rescaled to that norm (direction kept); the percentile is
  taken over the samples given, separately for each critic (``pooled=True`` pools all critics).
  The constant dim(S) of Eq. 7 is dropped (it only rescales the loss; Algorithm 1 drops it too).
  ``regularizer`` adds λ Σ_d e_d², the λI of Section 3.2 (0 by default, as in the paper).
* **IterVAML**, first-order form (Eq. 5 of the VaGraM paper): Σ_k (g_k · e)², plus the MSE
  stabiliser of appendix D.1, L = L_IterVAML + λ L_MSE with λ = 0.01, L_MSE = mean_d e_d²
  (``models.core.mse_per_sample``). ``vaml_per_sample`` is the exact (V(f̂) − V(s′))² error used
  to *evaluate* models (VaGraM Fig. 2).
* **Value-weighted MSE** (appendix D.1 ablation, "similar to Nair et al. (2020), where the MSE
  error is multiplied by the inverse of the value function of the sample"): w · mean_d e_d² with
  w = 1 / |V(s′)| (V = min over critics; ``direction="inverse"``). The magnitude is our choice:
  with negative rewards (Pendulum) V < 0 and the literal inverse would turn the loss into a
  maximisation. The authors' released code weights ∝ |V| instead (``direction="proportional"``).
* **MnM** (Eysenbach et al. 2022): classifier C(s, a, s′) = σ(logit) trained by cross-entropy on
  real vs model next states of the same (s, a) (Eq. 4); model loss −[V(s′_model) + log C/(1−C)]
  (Eq. 9, negated for minimisation; log C/(1−C) is the logit itself); augmented reward
  r̃ = (1−γ) log r + log C/(1−C) − (1−γ) log(1−γ) (Eq. 3 with Eq. 5's estimate;
  ``mnm_augmented_reward``). The bound assumes r > 0; how we make rewards positive is in
  ``log_positive_reward``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mismatch_jax.config_io import Schema, setting
from mismatch_jax.models import nets
from mismatch_jax.models.core import mse_per_sample

ValueFn = Callable[[jax.Array], jax.Array]
"""obs [obs_dim] → [K]: the value of one state under each of K critics."""


def _lift(v: jax.Array, ndim: int) -> jax.Array:
    """Adds leading unit axes (explicit broadcasting under jax_numpy_rank_promotion='raise')."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _prediction_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """e = pred − target: pred [..., B, D], target [B, D] → [..., B, D]."""
    if pred.shape[-2:] != target.shape:
        raise ValueError(
            f"prediction [..., B, D] must end with the target's shape {target.shape}, got {pred.shape}"
        )
    return pred - _lift(target, pred.ndim)


# ---------------------------------------------------------------------------------------------
# Value gradients (computed once per model-training phase)
# ---------------------------------------------------------------------------------------------


def value_gradients(value_fn: ValueFn, next_obs: jax.Array, chunk_size: Optional[int] = 4096) -> jax.Array:
    """g[k, n] = ∇_s V_k(s)|_{next_obs[n]}: next_obs [N, D] → [K, N, D].

    Evaluated ``chunk_size`` rows at a time (``lax.map``) to bound memory on large buffers;
    None evaluates all rows in one vmap."""
    per_state = jax.jacrev(value_fn)  # [D] → [K, D]
    if chunk_size is None or chunk_size >= next_obs.shape[0]:
        grads = jax.vmap(per_state)(next_obs)
    else:
        grads = jax.lax.map(per_state, next_obs, batch_size=chunk_size)
    if grads.ndim != 3:
        raise ValueError(
            f"value_fn must map one state [D] to a vector [K] of critic values; got gradients "
            f"of shape {grads.shape[1:]} per state"
        )
    return jnp.transpose(grads, (1, 0, 2))


def clip_gradient_norms(grads: jax.Array, percentile: float = 95.0, mask: Optional[jax.Array] = None,
                        pooled: bool = False):
    """Rescales gradient vectors whose L2 norm exceeds the ``percentile``-th percentile of the
    norms down to that norm (VaGraM appendix E). grads [K, N, D]; mask [N] (optional) marks the
    rows that count for the percentile (e.g. the valid rows of a fixed-capacity buffer).
    The percentile is per critic [K], or over all critics when ``pooled``.
    Returns (clipped grads [K, N, D], threshold [K]). percentile = 100 clips nothing."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"clip percentile must be in (0, 100], got {percentile}")
    norms = jnp.linalg.norm(grads, axis=-1)  # [K, N]
    counted = norms if mask is None else jnp.where(_lift(mask.astype(bool), 2), norms, jnp.nan)
    if pooled:
        threshold = jnp.broadcast_to(jnp.nanpercentile(counted, percentile), norms.shape[:1])
    else:
        threshold = jnp.nanpercentile(counted, percentile, axis=1)
    scale = jnp.minimum(1.0, threshold[:, None] / jnp.maximum(norms, 1e-12))
    return grads * scale[..., None], threshold


@struct.dataclass
class ValueGradientCache:
    """Per-sample value gradients at the dataset's true next states, fixed for one
    model-training phase. grads: [K, N, D] (clipped); threshold: [K] clip norms used."""

    grads: jax.Array
    threshold: jax.Array

    def rows(self, index: jax.Array) -> jax.Array:
        """Gradients of minibatch rows ``index`` [B] → [K, B, D]."""
        return self.grads[:, index]


def value_gradient_cache(value_fn: ValueFn, next_obs: jax.Array, clip_percentile: float = 95.0,
                         mask: Optional[jax.Array] = None, pooled: bool = False,
                         chunk_size: Optional[int] = 4096) -> ValueGradientCache:
    """Computes (once per model-training phase) the clipped value gradients g_k(s′) for every
    dataset row: next_obs [N, D] → ValueGradientCache with grads [K, N, D].
    Invalid rows (mask False) are kept (their gradients are harmless) but do not count in the
    percentile."""
    grads = value_gradients(value_fn, next_obs, chunk_size)
    grads, threshold = clip_gradient_norms(grads, clip_percentile, mask, pooled)
    return ValueGradientCache(grads=jax.lax.stop_gradient(grads), threshold=threshold)


def to_normalized_units(grads: jax.Array, target_std: jax.Array) -> jax.Array:
    """Gradients w.r.t. next-state units → w.r.t. *normalised* delta-target units.

    If the model predicts ŷ = (f̂ − s − μ) / σ, then e = σ ⊙ (ŷ − y) and g · e = (g ⊙ σ) · (ŷ − y),
    so the losses below can be applied to normalised predictions with g ⊙ σ.
    grads [K, B, D], target_std [D] (the obs part of ``Normalizer.target_std``) → [K, B, D]."""
    return grads * _lift(target_std, grads.ndim)


# ---------------------------------------------------------------------------------------------
# Losses on cached gradients
# ---------------------------------------------------------------------------------------------


CRITIC_REDUCTIONS = ("sum", "mean")


def _over_critics(per_critic: jax.Array, critic_reduce: str) -> jax.Array:
    """Σ_k (the paper's appendix E and its released code) or mean_k over the leading axis."""
    if critic_reduce not in CRITIC_REDUCTIONS:
        raise ValueError(f"critic_reduce must be one of {CRITIC_REDUCTIONS}, got {critic_reduce!r}")
    return per_critic.sum(axis=0) if critic_reduce == "sum" else per_critic.mean(axis=0)


def vagram_per_sample(pred: jax.Array, target: jax.Array, grads: jax.Array,
                      regularizer: float = 0.0, critic_reduce: str = "sum") -> jax.Array:
    """VaGraM (Eq. 7 without the constant dim(S)): Σ_k Σ_d g_{k,d}² e_d² (+ λ Σ_d e_d²);
    ``critic_reduce = "mean"`` averages over the K critics instead of summing.

    pred [..., B, D] (e.g. [E, B, D] for an ensemble), target [B, D] true next states,
    grads [K, B, D] (cached, clipped) → [..., B]."""
    err = _prediction_error(pred, target)
    weight = _over_critics(grads**2, critic_reduce) + regularizer  # [B, D]: Σ_k g_k² (+ λ)
    return jnp.sum(_lift(weight, err.ndim) * err**2, axis=-1)


def itervaml_per_sample(pred: jax.Array, target: jax.Array, grads: jax.Array,
                        mse_coef: float = 0.01, critic_reduce: str = "sum") -> jax.Array:
    """First-order IterVAML with the appendix-D.1 MSE stabiliser:
    Σ_k (g_k · e)² + mse_coef · mean_d e_d² (mean_k with ``critic_reduce = "mean"``).
    pred [..., B, D], target [B, D], grads [K, B, D] → [..., B]."""
    err = _prediction_error(pred, target)
    projections = jnp.einsum("kbd,...bd->k...b", grads, err)  # [K, ..., B]
    loss = _over_critics(projections**2, critic_reduce)
    if mse_coef:
        loss = loss + mse_coef * mse_per_sample(pred, _lift(target, pred.ndim))
    return loss


def vaml_per_sample(value_fn: ValueFn, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Exact VAML error Σ_k (V_k(f̂) − V_k(s′))² (evaluation metric of VaGraM Fig. 2; as a
    training loss it is IterVAML without the Taylor approximation).
    pred [..., B, D], target [B, D] → [..., B]."""
    _prediction_error(pred, target)  # shape check
    lead = pred.shape[:-1]
    v_pred = jax.vmap(value_fn)(pred.reshape((-1, pred.shape[-1])))  # [M, K]
    v_true = jax.vmap(value_fn)(target)  # [B, K]
    v_pred = v_pred.reshape(lead + v_pred.shape[-1:])
    return jnp.sum((v_pred - _lift(v_true, v_pred.ndim)) ** 2, axis=-1)


VALUE_WEIGHT_DIRECTIONS = ("inverse", "proportional")


def value_weights(values: jax.Array, eps: float = 1e-6, direction: str = "inverse",
                  mask: Optional[jax.Array] = None) -> jax.Array:
    """Value-weighted regression weights, values [K, B] (or [B]) → [B] (gradient stopped).

    "inverse" (the paper's text, appendix D.1): 1 / max(|V(s′)|, eps) with V = min over critics.
    "proportional" (the authors' released code): mean_k |V_k(s′)|, divided by its mean over the
    rows (``mask`` [B]: the rows that count), so the weights average 1 and the loss keeps MSE
    units (the code divides by the minibatch's Σ instead, which only rescales the loss)."""
    if direction not in VALUE_WEIGHT_DIRECTIONS:
        raise ValueError(f"value_weighted direction must be one of {VALUE_WEIGHT_DIRECTIONS}, got {direction!r}")
    values = values if values.ndim == 2 else values[None]
    if direction == "inverse":
        return jax.lax.stop_gradient(1.0 / jnp.maximum(jnp.abs(values.min(axis=0)), eps))
    magnitude = jnp.abs(values).mean(axis=0)
    counted = jnp.ones_like(magnitude) if mask is None else mask.astype(magnitude.dtype)
    scale = (magnitude * counted).sum() / jnp.maximum(counted.sum(), 1.0)
    return jax.lax.stop_gradient(magnitude / jnp.maximum(scale, eps))


def value_weighted_mse_per_sample(pred: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Appendix-D.1 ablation: w_b · mean_d e_d². pred [..., B, D], target [B, D], weights [B]
    (``value_weights``) → [..., B]."""
    err = _prediction_error(pred, target)
    return _lift(weights, err.ndim - 1) * jnp.mean(err**2, axis=-1)


# ---------------------------------------------------------------------------------------------
# MnM: classifier, model loss (Eq. 9), augmented reward (Eq. 5)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(Schema):
    """Real-vs-model transition classifier C(s, a, s′): ReLU MLP on [s, a, s′ − s] → 1 logit.
    (s′ − s carries the same information as s′ and is better conditioned when s′ ≈ s.)"""

    obs_dim: int = setting(ge=1)
    action_dim: int = setting(ge=1)
    hidden_size: int = setting(256, ge=1)
    num_hidden_layers: int = setting(2, ge=1)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (2 * self.obs_dim + self.action_dim,) + (self.hidden_size,) * self.num_hidden_layers + (1,)


def classifier_init(key: jax.Array, config: ClassifierConfig) -> tuple:
    """Layers ((w [in, out], b [out]), ...), PyTorch nn.Linear default init U(±1/sqrt(fan_in))."""
    return nets.mlp_init(key, config.layer_sizes)


def classifier_apply(params: tuple, obs: jax.Array, action: jax.Array, next_obs: jax.Array,
                     logit_bound: Optional[float] = None) -> jax.Array:
    """Logit of C(s, a, s′) = P(real | s, a, s′): obs/next_obs [..., obs_dim], action
    [..., action_dim] (same leading axes) → [...]. log C/(1−C) equals the logit. With
    ``logit_bound`` b the logit is b·tanh(raw / b): bounded by ±b, smooth, ≈ raw for |raw| ≪ b
    (a GAN stabiliser, ours: an unbounded logit lets one separable row dominate Eq. 9)."""
    raw = nets.mlp_apply(params, jnp.concatenate([obs, action, next_obs - obs], axis=-1), "relu")[..., 0]
    return raw if logit_bound is None else logit_bound * jnp.tanh(raw / logit_bound)


def classifier_loss_per_sample(params: tuple, obs: jax.Array, action: jax.Array,
                               real_next_obs: jax.Array, model_next_obs: jax.Array,
                               label_smoothing: float = 0.0, logit_bound: Optional[float] = None) -> jax.Array:
    """Negated Eq. 4: −log C(s, a, s′_real) − log(1 − C(s, a, s′_model)), same (s, a).
    Inputs [B, ...] → [B]. (−log σ(l) = softplus(−l), −log(1 − σ(l)) = softplus(l).) With
    ``label_smoothing`` α the targets are 1 − α (real) and α (model), two-sided (Salimans et
    al. 2016 smooth only the real side; two-sided keeps the optimum logit at log p/q shrunk
    towards 0, finite where p/q is 0 or ∞)."""
    real = classifier_apply(params, obs, action, real_next_obs, logit_bound)
    fake = classifier_apply(params, obs, action, jax.lax.stop_gradient(model_next_obs), logit_bound)
    a = label_smoothing
    return ((1 - a) * jax.nn.softplus(-real) + a * jax.nn.softplus(real)
            + (1 - a) * jax.nn.softplus(fake) + a * jax.nn.softplus(-fake))


def classifier_loss(params: tuple, obs, action, real_next_obs, model_next_obs, label_smoothing: float = 0.0,
                    logit_bound: Optional[float] = None) -> jax.Array:
    """Mean over the batch of ``classifier_loss_per_sample`` → []."""
    return classifier_loss_per_sample(params, obs, action, real_next_obs, model_next_obs, label_smoothing,
                                      logit_bound).mean()


def fit_classifier(key: jax.Array, params: tuple, opt_state, optimizer: optax.GradientTransformation,
                   sample_batch: Callable, num_steps: int, label_smoothing: float = 0.0,
                   logit_bound: Optional[float] = None):
    """``num_steps`` optimizer steps of the classifier loss (Eq. 4), one lax.scan.

    sample_batch(key) -> (obs [B, d], action [B, a], real_next_obs [B, d], model_next_obs [B, d]):
    the caller's way of pairing real transitions with model samples for the same (s, a).
    Returns (params, opt_state, losses [num_steps])."""
    step = nets.gradient_update(
        lambda p, *rows: classifier_loss(p, *rows, label_smoothing=label_smoothing, logit_bound=logit_bound),
        optimizer)

    def body(carry, k):
        p, state = carry
        p, state, loss = step(p, state, *sample_batch(k))
        return (p, state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, num_steps))
    return params, opt_state, losses


def mnm_model_loss_per_sample(value_fn: ValueFn, classifier_params: tuple, obs: jax.Array,
                              action: jax.Array, model_next_obs: jax.Array,
                              reduce: Literal["min", "mean"] = "min", value_scale: float = 1.0,
                              logit_bound: Optional[float] = None,
                              value_keys: Optional[jax.Array] = None) -> jax.Array:
    """MnM model loss (Eq. 9, negated): −[c·V(s′_model) + log C(s, a, s′_model)/(1 − C(…))].

    obs [B, obs_dim], action [B, action_dim] are real; model_next_obs [..., B, obs_dim] are
    model samples that must depend differentiably on the model parameters (the mean of a
    deterministic model or a reparameterised sample μ + σ ε of a probabilistic one).
    V = min (SAC's convention) or mean over the K critics of ``value_fn`` (s [D] → [K], or
    (s, key) → [K] when ``value_keys`` [..., B] gives one key per sample: V(s) = Q(s, a ~ π),
    paper 001's 1-sample estimate); c = ``value_scale``; ``logit_bound`` as ``classifier_apply``.
    Gradients reach the model through V and through the classifier input; the classifier's and
    critics' own parameters are constants here (they are trained by their own losses). → [..., B]."""
    lead = model_next_obs.shape[:-1]
    flat = model_next_obs.reshape((-1, model_next_obs.shape[-1]))
    if value_keys is None:
        values = jax.vmap(value_fn)(flat)  # [M, K]
    else:
        values = jax.vmap(value_fn)(flat, value_keys.reshape((-1,)))
    v = values.min(axis=-1) if reduce == "min" else values.mean(axis=-1)
    v = v.reshape(lead)
    obs_b = jnp.broadcast_to(_lift(obs, model_next_obs.ndim), model_next_obs.shape)
    action_b = jnp.broadcast_to(_lift(action, model_next_obs.ndim), lead + action.shape[-1:])
    logits = classifier_apply(classifier_params, obs_b, action_b, model_next_obs, logit_bound)
    return -(value_scale * v + logits)


def log_positive_reward(reward: jax.Array, transform: Literal["exp", "shift", "log"] = "exp",
                        temperature: float = 1.0, reward_min: Optional[float] = None,
                        eps: float = 1e-3) -> jax.Array:
    """log r⁺ for the augmented reward, where r⁺ > 0 is a positive version of the reward.

    The MnM bound assumes r > 0 (paper 001, Sec. 3); Pendulum's rewards lie in [−16.27, 0] and
    the paper's text available to us does not say how non-positive rewards are handled, so the
    choice is explicit:

    * "exp" (default): r⁺ = exp(r / temperature), so log r⁺ = r / temperature. This is the
      control-as-inference reading (reward = log-probability of optimality); it is defined for
      every reward and keeps reward differences linear.
    * "shift": r⁺ = r − reward_min + eps with a known lower bound ``reward_min`` of the reward
      (Pendulum: −(π² + 0.1·8² + 0.001·2²) = −16.2736); log compresses high rewards.
    * "log": r⁺ = r; only for rewards known to be > 0 (r ≤ 0 gives −inf/NaN).
    reward [...] → [...]."""
    if transform == "exp":
        if not temperature > 0:
            raise ValueError(f"log_positive_reward: temperature must be > 0, got {temperature}")
        return reward / temperature
    if transform == "shift":
        if reward_min is None:
            raise ValueError("log_positive_reward: transform='shift' needs reward_min, a lower "
                             "bound of the reward (Pendulum: -16.2736)")
        return jnp.log(reward - reward_min + eps)
    if transform == "log":
        return jnp.log(reward)
    raise ValueError(f"log_positive_reward: transform must be 'exp', 'shift' or 'log', got {transform!r}")


def mnm_augmented_reward(reward: jax.Array, logits: jax.Array,
                         transform: Literal["exp", "shift", "log"] = "exp", discount=None,
                         **transform_kwargs) -> jax.Array:
    """MnM's augmented reward with the classifier's logit as the estimate of log p/q (Eq. 5).

    discount γ given: Eq. 3, r̃ = (1 − γ)·log r⁺ + log C/(1 − C) − (1 − γ)·log(1 − γ) — the
    task reward enters with weight (1 − γ) (0.01 at γ = 0.99) against the log-ratio's 1;
    discount None: the unit balance r̃ = log r⁺ + log C/(1 − C). ``log_positive_reward`` makes
    log r⁺ (its ``temperature`` divides the reward under "exp"). reward [...], logits [...]
    (``classifier_apply`` on the transition; 0 drops the classifier term) → [...]."""
    log_reward = log_positive_reward(reward, transform, **transform_kwargs)
    if discount is None:
        return log_reward + logits
    weight = 1.0 - discount
    return weight * log_reward + logits - weight * jnp.log(weight)
