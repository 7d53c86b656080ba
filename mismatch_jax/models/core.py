"""Dynamics models of the study: P, PE, D, DE — one ensemble-MLP implementation.

Every model is an ensemble of E members stored with the ensemble as the *leading axis of each
weight* (``w [E, in, out]``), evaluated with one batched matmul per layer. P and D are the E = 1
case. A population of N models adds one more leading axis through ``vmap``.

* Inputs ``x = [obs, action]`` and delta targets ``y = next_obs - obs`` (plus the reward when
  ``predict_reward``) are normalised with a ``Normalizer`` fitted on training data.
* Probabilistic members (P, PE) output a Gaussian mean and log-variance; the log-variance is
  soft-bounded by learned ``max_logvar``/``min_logvar`` as in PETS (Chua et al. 2018):
  ``lv = max - softplus(max - lv); lv = min + softplus(lv - min)``.
* Deterministic members (D, DE) output a mean only. For likelihood evaluation a caller gives them
  a variance: the study's (``residual_variance``) is each member's own per-dimension mean squared
  residual on its validation rows — the maximum-likelihood homoscedastic Gaussian fit, so a D
  model's LL axis moves with its accuracy as a P model's does. Without one they get unit variance
  *in normalised target units* (σ² = target_std², a monotone function of the normalised squared
  error; the convention before the PETS-population study).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import chex
import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.config_io import Schema, setting

ModelKind = Literal["P", "PE", "D", "DE"]
MODEL_KINDS = ("P", "PE", "D", "DE")
_ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu}


@dataclasses.dataclass(frozen=True)
class ModelConfig(Schema):
    """Static description of one dynamics model (hashable: usable as a jit static argument);
    also the ``[model]`` table of every config that trains one (each parent gives its defaults).

    kind: "P" probabilistic, "PE" ensemble of P, "D" deterministic, "DE" ensemble of D.
    obs_dim / action_dim: the environment's sizes (0 until bound with ``for_env``).
    ensemble_size: members for PE/DE (must be 1 for P/D).
    hidden_size / num_hidden_layers: MLP width and depth.
    predict_reward: also predict the reward as an extra (last) target dimension.
    angle_dims: observation dims that are unbounded angles; the model *input* replaces each by
        (sin θ, cos θ) — PETS's cart-pole preprocessing — while targets stay deltas of the raw
        observation, so predictions and likelihoods remain in original state units.
    angle_features: ``for_env`` takes angle_dims from the env (``Env.angle_obs_dims``).
    """

    kind: Literal["P", "PE", "D", "DE"] = "P"
    obs_dim: int = setting(0, ge=0)
    action_dim: int = setting(0, ge=0)
    hidden_size: int = setting(200, ge=1)
    num_hidden_layers: int = setting(4, ge=1)
    ensemble_size: int = setting(1, ge=1)
    activation: Literal["silu", "relu", "tanh", "elu"] = "silu"
    predict_reward: bool = False
    init_max_logvar: float = 0.5
    init_min_logvar: float = -10.0
    angle_dims: tuple[int, ...] = ()
    angle_features: bool = False

    def __post_init__(self):
        object.__setattr__(self, "angle_dims", tuple(int(d) for d in self.angle_dims))
        super().__post_init__()

    def check(self):
        if len(set(self.angle_dims)) != len(self.angle_dims) or any(
                d < 0 or (self.obs_dim and d >= self.obs_dim) for d in self.angle_dims):
            raise ValueError(
                f"ModelConfig.angle_dims must be distinct observation indices in [0, {self.obs_dim}), "
                f"got {self.angle_dims}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"ModelConfig.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind in ("P", "D") and self.ensemble_size != 1:
            raise ValueError(
                f"ModelConfig.ensemble_size must be 1 for kind {self.kind!r} "
                f"(got {self.ensemble_size}); use kind {self.kind + 'E'!r} for an ensemble"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"ModelConfig.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )

    def for_env(self, env) -> "ModelConfig":
        """Copy bound to ``env``'s observation and action sizes (and angle dims when
        ``angle_features``)."""
        angles = tuple(getattr(env, "angle_obs_dims", ())) if self.angle_features else self.angle_dims
        return dataclasses.replace(self, obs_dim=int(env.obs_dim), action_dim=int(env.action_dim),
                                   angle_dims=angles)

    @property
    def probabilistic(self) -> bool:
        return self.kind in ("P", "PE")

    @property
    def input_dim(self) -> int:
        return self.obs_dim + len(self.angle_dims) + self.action_dim

    @property
    def target_dim(self) -> int:
        return self.obs_dim + int(self.predict_reward)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Input, hidden..., output sizes (output doubled for mean + log-variance)."""
        out = self.target_dim * (2 if self.probabilistic else 1)
        return (self.input_dim,) + (self.hidden_size,) * self.num_hidden_layers + (out,)

    def flops_per_example(self) -> int:
        """Forward multiply-adds x2 for one input through all E members."""
        sizes = self.layer_sizes
        return 2 * self.ensemble_size * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


@struct.dataclass
class Normalizer:
    """Affine normalisation of inputs [input_dim] and delta targets [target_dim]."""

    input_mean: jax.Array
    input_std: jax.Array
    target_mean: jax.Array
    target_std: jax.Array


@struct.dataclass
class ModelParams:
    """Weights of one ensemble model. layers: tuple of (w [E, in, out], b [E, out]);
    max_logvar / min_logvar: [target_dim] (unused by deterministic kinds)."""

    layers: tuple
    max_logvar: jax.Array
    min_logvar: jax.Array


def _lift(v: jax.Array, ndim: int) -> jax.Array:
    """Adds leading unit axes so a [D] vector combines with an [..., D] array without implicit
    rank promotion (the test-suite runs with jax_numpy_rank_promotion='raise')."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def normalize_inputs(norm: Normalizer, x: jax.Array) -> jax.Array:
    """[..., input_dim] original units → normalised units."""
    return (x - _lift(norm.input_mean, x.ndim)) / _lift(norm.input_std, x.ndim)


def normalize_targets(norm: Normalizer, y: jax.Array) -> jax.Array:
    """[..., target_dim] delta targets → normalised units."""
    return (y - _lift(norm.target_mean, y.ndim)) / _lift(norm.target_std, y.ndim)


def identity_normalizer(config: ModelConfig) -> Normalizer:
    """A normaliser that leaves inputs and targets unchanged."""
    return Normalizer(
        input_mean=jnp.zeros(config.input_dim),
        input_std=jnp.ones(config.input_dim),
        target_mean=jnp.zeros(config.target_dim),
        target_std=jnp.ones(config.target_dim),
    )


def model_inputs(config: ModelConfig, obs, action):
    """Raw model inputs x [..., input_dim] from obs [..., obs_dim] and action [..., action_dim]:
    ``[obs without angle dims, sin(angles), cos(angles), action]`` (just ``[obs, action]`` when
    the config has no angle dims)."""
    if not config.angle_dims:
        return jnp.concatenate([obs, action], axis=-1)
    angles = obs[..., list(config.angle_dims)]
    others = obs[..., [d for d in range(config.obs_dim) if d not in config.angle_dims]]
    return jnp.concatenate([others, jnp.sin(angles), jnp.cos(angles), action], axis=-1)


def make_targets(config: ModelConfig, obs, action, next_obs, reward=None):
    """Model inputs x [..., input_dim] and delta targets y [..., target_dim]."""
    x = model_inputs(config, obs, action)
    y = next_obs - obs
    if config.predict_reward:
        if reward is None:
            raise ValueError("config.predict_reward is set: pass the reward [...] as well")
        y = jnp.concatenate([y, reward[..., None]], axis=-1)
    return x, y


def fit_normalizer(config: ModelConfig, x, y, mask=None, eps: float = 1e-6) -> Normalizer:
    """Normaliser from inputs x [B, input_dim] and targets y [B, target_dim]; ``mask`` [B]
    (optional) selects the valid rows of a fixed-capacity buffer."""
    if mask is None:
        mask = jnp.ones(x.shape[0], dtype=x.dtype)
    w = mask.astype(x.dtype)[:, None]
    n = jnp.maximum(w.sum(), 1.0)

    def moments(v):
        mean = (v * w).sum(0) / n
        std = jnp.sqrt(((v - mean[None]) ** 2 * w).sum(0) / n)
        return mean, jnp.where(std < eps, 1.0, std)

    im, isd = moments(x)
    tm, tsd = moments(y)
    return Normalizer(input_mean=im, input_std=isd, target_mean=tm, target_std=tsd)


def init(key: jax.Array, config: ModelConfig) -> ModelParams:
    """Fresh parameters: truncated-normal weights with std 1/(2 sqrt(fan_in)) as in PETS,
    zero biases, log-variance bounds at their initial values."""
    if not (config.obs_dim and config.action_dim):
        raise ValueError("ModelConfig has no observation / action sizes: bind it with model_config.for_env(env)")
    sizes = config.layer_sizes
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
        std = 1.0 / (2.0 * math.sqrt(fan_in))
        w = std * jax.random.truncated_normal(k, -2.0, 2.0, (config.ensemble_size, fan_in, fan_out))
        layers.append((w, jnp.zeros((config.ensemble_size, fan_out))))
    return ModelParams(
        layers=tuple(layers),
        max_logvar=jnp.full((config.target_dim,), config.init_max_logvar),
        min_logvar=jnp.full((config.target_dim,), config.init_min_logvar),
    )


def _member_batches(config: ModelConfig, x_norm: jax.Array) -> jax.Array:
    h = x_norm
    if h.ndim == 2:
        h = jnp.broadcast_to(h, (config.ensemble_size,) + h.shape)
    if h.ndim != 3 or h.shape[0] != config.ensemble_size or h.shape[-1] != config.input_dim:
        raise ValueError(
            f"model input must be [E={config.ensemble_size}, B, {config.input_dim}] or "
            f"[B, {config.input_dim}], got {x_norm.shape}"
        )
    return h


def hidden_features(config: ModelConfig, params: ModelParams, x_norm: jax.Array) -> jax.Array:
    """Activations of the last hidden layer (what the output layer reads).

    x_norm: [E, B, input_dim] or [B, input_dim] → [E, B, hidden_size]."""
    act = _ACTIVATIONS[config.activation]
    h = _member_batches(config, x_norm)
    for w, b in params.layers[:-1]:
        h = act(jnp.einsum("ebi,eio->ebo", h, w) + b[:, None, :])
    return h


def apply_normalized(config: ModelConfig, params: ModelParams, x_norm: jax.Array):
    """Forward pass in normalised units.

    x_norm: [E, B, input_dim] (one batch per member) or [B, input_dim] (shared by all members).
    Returns (mean [E, B, target_dim], logvar [E, B, target_dim]); logvar is 0 for D/DE.
    """
    w, b = params.layers[-1]
    h = jnp.einsum("ebi,eio->ebo", hidden_features(config, params, x_norm), w) + b[:, None, :]
    if not config.probabilistic:
        return h, jnp.zeros_like(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    max_lv, min_lv = _lift(params.max_logvar, 3), _lift(params.min_logvar, 3)
    logvar = max_lv - jax.nn.softplus(max_lv - logvar)
    logvar = min_lv + jax.nn.softplus(logvar - min_lv)
    return mean, logvar


def predict(config: ModelConfig, params: ModelParams, norm: Normalizer, obs, action):
    """Per-member Gaussian prediction of the next observation in original units.

    obs [E, B, obs_dim] or [B, obs_dim]; action likewise with action_dim.
    Returns (mean [E, B, target_dim], var [E, B, target_dim]) of next_obs (delta added back);
    with predict_reward the last dimension is the reward.
    """
    chex.assert_equal_shape_prefix((obs, action), obs.ndim - 1)
    chex.assert_axis_dimension(obs, -1, config.obs_dim)
    chex.assert_axis_dimension(action, -1, config.action_dim)
    x = model_inputs(config, obs, action)
    mean_n, logvar_n = apply_normalized(config, params, normalize_inputs(norm, x))
    mean = mean_n * _lift(norm.target_std, 3) + _lift(norm.target_mean, 3)
    var = jnp.exp(logvar_n) * _lift(norm.target_std, 3) ** 2
    base = obs if obs.ndim == 3 else jnp.broadcast_to(obs, (config.ensemble_size,) + obs.shape)
    if config.predict_reward:
        base = jnp.concatenate([base, jnp.zeros(base.shape[:-1] + (1,), base.dtype)], axis=-1)
    return mean + base, var


# --------------------------------------------------------------------------------------------
# Losses (in normalised target units; each returns per-sample values [E, B] so that callers can
# weight, mask and reduce as they need).
# --------------------------------------------------------------------------------------------


def gaussian_nll_per_sample(mean, logvar, target):
    """PETS training loss per sample: mean over dims of (μ−y)² e^{−lv} + lv. [E, B, D] → [E, B].
    (No ½ and no log 2π: the scale PETS/mbrl-lib optimise; see ``gaussian_log_likelihood``.)"""
    return jnp.mean((mean - target) ** 2 * jnp.exp(-logvar) + logvar, axis=-1)


def mse_per_sample(mean, target):
    """Mean squared error over target dims. [E, B, D] → [E, B]."""
    return jnp.mean((mean - target) ** 2, axis=-1)


def model_loss(config: ModelConfig, params: ModelParams, norm: Normalizer, x, y, weights=None,
               logvar_bound_coef: float = 0.01):
    """Training loss of one model on a batch (scalar).

    x [B, input_dim] or [E, B, input_dim] (per-member bootstrap batches), y [..., target_dim] in
    original units. weights [B] or [E, B] (optional) re-weight samples (re-weighting and
    value-aware variants); they are normalised by their sum per member. Probabilistic kinds use
    the PETS Gaussian NLL plus ``logvar_bound_coef * (Σ max_logvar − Σ min_logvar)``;
    deterministic kinds use MSE. Members' losses are summed (as in mbrl-lib).
    """
    y_norm = normalize_targets(norm, y)
    mean, logvar = apply_normalized(config, params, normalize_inputs(norm, x))
    if y_norm.ndim == 2:
        y_norm = jnp.broadcast_to(y_norm, mean.shape)
    if config.probabilistic:
        per_sample = gaussian_nll_per_sample(mean, logvar, y_norm)
    else:
        per_sample = mse_per_sample(mean, y_norm)
    if weights is None:
        per_member = per_sample.mean(-1)
    else:
        weights = jnp.broadcast_to(weights, per_sample.shape)
        per_member = (per_sample * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1e-12)
    loss = per_member.sum()
    if config.probabilistic:
        loss = loss + logvar_bound_coef * (params.max_logvar.sum() - params.min_logvar.sum())
    return loss


# --------------------------------------------------------------------------------------------
# Evaluation in original units: the study's LL axis.
# --------------------------------------------------------------------------------------------


def gaussian_log_likelihood(mean, var, target):
    """Exact Gaussian log-density, summed over the last axis.

    log N(y; μ, diag σ²) = −½ Σ_d [ log 2π + log σ²_d + (y_d − μ_d)² / σ²_d ].
    mean, var, target: [..., D] → [...]. Units are those of the inputs (original state units
    when fed ``predict`` outputs), so values are comparable across models and normalisers.
    """
    return -0.5 * jnp.sum(jnp.log(2.0 * jnp.pi) + jnp.log(var) + (target - mean) ** 2 / var, axis=-1)


def _mean(values, weight):
    """Mean of values [B], or its ``weight`` [B]-weighted mean (padded rows weigh 0)."""
    if weight is None:
        return values.mean()
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1e-12)


def _absolute_targets(config: ModelConfig, obs, action, next_obs, reward=None):
    """The model's targets in absolute (not delta) original units [B, target_dim]."""
    _, y = make_targets(config, obs, action, next_obs, reward)
    return y + (jnp.concatenate([obs, jnp.zeros_like(obs[..., :1])], -1) if config.predict_reward else obs)


def residual_variance(config: ModelConfig, params: ModelParams, norm: Normalizer, obs, action, next_obs,
                      reward=None, weight=None, floor: float = 1e-8):
    """Each member's per-dimension mean squared residual on the given rows (original units):
    the maximum-likelihood variance of a homoscedastic Gaussian around the member's mean, the
    variance a deterministic model's LL is scored with. obs [B, obs_dim] … → [E, target_dim];
    ``weight`` [B] (0 on padding or on rows that are not the model's validation rows)."""
    target = _absolute_targets(config, obs, action, next_obs, reward)
    mean, _ = predict(config, params, norm, obs, action)
    squared = (mean - target[None]) ** 2  # [E, B, D]
    w = jnp.ones(obs.shape[:1], squared.dtype) if weight is None else weight
    var = jnp.einsum("ebd,b->ed", squared, w) / jnp.maximum(jnp.sum(w), 1e-12)
    return jnp.maximum(var, floor)


def one_step_log_likelihood(config: ModelConfig, params: ModelParams, norm: Normalizer,
                            obs, action, next_obs, reward=None, weight=None, variance=None):
    """Mean one-step log-likelihood of transitions under the model, in original units.

    obs/next_obs [B, obs_dim], action [B, action_dim] → scalar (mean over B of per-transition
    LL in nats; ``weight`` [B]: a weighted mean, e.g. 0 on padding rows). Ensembles (PE, DE) are scored as the uniform mixture of their members,
    log (1/E) Σ_e N(s′; μ_e, σ²_e), evaluated stably with logsumexp. ``variance`` [E, target_dim]
    replaces the members' variance (a deterministic model's ``residual_variance``); without it
    deterministic kinds use the unit-normalised-variance convention (σ² = target_std²).
    """
    target = _absolute_targets(config, obs, action, next_obs, reward)
    mean, var = predict(config, params, norm, obs, action)
    if variance is not None:
        var = jnp.broadcast_to(variance[:, None, :], mean.shape)
    ll_members = gaussian_log_likelihood(mean, var, target[None])  # [E, B]
    ll = jax.scipy.special.logsumexp(ll_members, axis=0) - jnp.log(config.ensemble_size)
    return _mean(ll, weight)


def one_step_mse(config: ModelConfig, params: ModelParams, norm: Normalizer, obs, action, next_obs,
                 weight=None):
    """Mean squared error (original units, summed over dims, averaged over B, or ``weight`` [B]
    -weighted) of the members' mean prediction of next_obs. obs [B, obs_dim] → scalar."""
    mean, _ = predict(config, params, norm, obs, action)
    pred = mean.mean(0)[..., : config.obs_dim]
    return _mean(jnp.sum((pred - next_obs) ** 2, axis=-1), weight)
