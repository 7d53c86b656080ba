"""Soft Actor-Critic (Haarnoja et al. 2018) as pure functions; a whole run is one ``lax.scan``.

Pieces (``make_sac(config, env) -> SAC``, a NamedTuple of pure functions closed over static
dimensions and shape-defining settings; MBPO/VaGraM/MnM reuse them on arbitrary batches). The
hyper-parameters that change no shape (learning rates, γ, τ, initial α, target entropy) are a
vmappable pytree ``SACHParams`` passed as an argument; ``hparams=None`` means the config's values
(``SACHParams.from_config``, also ``SAC.hparams``):

* ``init(key, hparams=None) -> SACState``: actor, twin critics, twin target critics (copies of the
  critics), ``log_alpha`` and the three Adam states.
* ``sac_update(key, state, batch: Transition, hparams=None) -> (SACState, UpdateMetrics)``: one
  gradient step of the critics, then of the actor (against the *updated* critics), then of the
  temperature, then a Polyak step of the target critics.
* ``policy_apply(actor, obs) -> (mean, log_std)`` (pre-tanh Gaussian), ``sample_action``,
  ``deterministic_action``, ``q_apply(critic, obs, action) -> [2, ...]``,
  ``value(params, obs, key=None, critics="all", reduce="each") -> [K, ...]`` = Q_k(s, π(s)) for
  every critic (K = 2 online, 2 target or all 4; ``reduce="min"`` gives min_k),
  ``td_target(key, params, batch, hparams=None)``.

``make_train(config, env) -> train(key, hparams=None) -> (TrainState, TrainMetrics)`` (a
``TrainFn``): the whole run is one
``lax.scan`` over evaluation intervals (each returning a small metrics record) whose body is a
``lax.scan`` over environment steps, each followed by ``updates_per_step`` gradient updates
once ``learning_starts`` steps of uniformly random actions are in the buffer. ``train`` is pure,
so ``jax.jit(jax.vmap(train))(keys)`` runs many seeds as one program, and a seeds × learning-rate
sweep is one program too::

    hp = SACHParams.from_config(config, env.action_dim).broadcast(4).replace(actor_lr=lrs, ...)
    sweep = jax.jit(jax.vmap(jax.vmap(train, in_axes=(0, None)), in_axes=(None, 0)))
    state, metrics = sweep(keys, hp)  # leaves [4 lrs, S seeds, ...]

Choices (and why):

* Networks are plain functions over explicit parameter pytrees (tuples of ``(w [in, out],
  b [out])``), not flax modules: the twin critics are one pytree with a leading ``[2]`` axis
  evaluated with ``vmap``, ``jax.grad`` w.r.t. the *input state* (VaGraM) needs no module
  plumbing, and the parameters are easy to slice, save and compare. Initialisation is PyTorch's
  ``nn.Linear`` default, U(±1/sqrt(fan_in)) for weights and biases, as in the PyTorch peers.
* Actions: the policy is a tanh-squashed Gaussian in the unit box [-1, 1]^A, affinely scaled to
  the env box ``[action_low, action_high]``. Everything outside the policy (env, replay buffer,
  ``q_apply``, models) sees env-unit actions; ``q_apply`` maps them back to the unit box before
  the network so that the critic input scale does not depend on the env. ``log_prob`` is the
  density of the *unit-box* action, so the target entropy −|A| means the same for every env.
* ``log_std`` is squashed into ``[log_std_min, log_std_max]`` with a tanh (smooth, no dead
  gradients at a clip), defaults [-5, 2].
* Critic loss: 0.5 · Σ_critics mean_batch (Q − y)²; target
  y = r + γ (1 − done) (min_k Q̄_k(s′, a′) − α log π(a′|s′)), a′ ~ π(s′). ``done`` is termination
  only: the training loop stores time-limit truncations with done = 0 and the true next
  observation, so the target bootstraps through them; the env is reset inside the step when
  ``done | truncated`` (envs do not auto-reset).
* Temperature loss −log α · mean(log π + target_entropy) (the log-parametrisation keeps α > 0).
* Learning rates are passed explicitly (``optax.adam(hparams.actor_lr)`` built inside the update),
  not stored with ``optax.inject_hyperparams``: Adam's state does not depend on the step size, so
  ``SACState`` keeps its structure (MBPO's state, saved runs, digests) and ``SACHParams`` stays the
  one source of truth for every rate, γ and τ alike (an injected rate would live both in the
  optimiser state and in the hparams). A traced f32 rate gives the same arithmetic as the Python
  float (optax multiplies the update by −lr either way), so defaults are bit-identical.
* Updates are gated with ``lax.cond`` on ``env_steps >= learning_starts``: a single program with
  no warm-up scan. Under ``vmap`` the cond becomes a select, so the warm-up steps also compute
  (and discard) an update — ``learning_starts / total_env_steps`` of extra work.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mismatch_jax.agents.sac_config import SACConfig, SACHParams
from mismatch_jax.data.replay import Transition
from mismatch_jax.envs.base import Env
from mismatch_jax.models.nets import gradient_update, mlp_apply, mlp_init


# ---------------------------------------------------------------------------------------------
# Networks: explicit parameter pytrees
# ---------------------------------------------------------------------------------------------


def polyak_update(online: Any, target: Any, tau: float) -> Any:
    """target ← tau · online + (1 − tau) · target, leaf by leaf (tau a float or [] array)."""
    return jax.tree_util.tree_map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


def tanh_gaussian_log_prob(pre_tanh: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """log density of a = tanh(u), u ~ N(mean, exp(log_std)²), at u = pre_tanh. [..., A] → [...].

    Uses log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), exact and stable for large |u|."""
    z = (pre_tanh - mean) * jnp.exp(-log_std)
    gaussian = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
    log_det = 2.0 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.sum(gaussian - log_det, axis=-1)


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class SACParams:
    """actor: MLP layers obs → [mean, raw log_std] (2A outputs). critic / target_critic: MLP
    layers (obs, unit-box action) → 1 with a leading [2] axis on every leaf (twin critics).
    log_alpha: [] log temperature."""

    actor: tuple
    critic: tuple
    target_critic: tuple
    log_alpha: jax.Array


@struct.dataclass
class SACState:
    """params: SACParams; *_opt_state: Adam states; num_updates: [] int32 updates done."""

    params: SACParams
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any
    num_updates: jax.Array


@struct.dataclass
class UpdateMetrics:
    """Scalars of one update: critic_loss, actor_loss, alpha_loss, alpha (used in the update),
    entropy (−mean log π of the batch's fresh actions), q_mean (mean online Q of the batch)."""

    critic_loss: jax.Array
    actor_loss: jax.Array
    alpha_loss: jax.Array
    alpha: jax.Array
    entropy: jax.Array
    q_mean: jax.Array


class SAC(NamedTuple):
    """The pure functions of one SAC configuration (see the module docstring). hparams: the
    config's ``SACHParams`` (used when a function gets ``hparams=None``); target_entropy: its
    value as a float."""

    config: SACConfig
    obs_dim: int
    action_dim: int
    target_entropy: float
    hparams: SACHParams
    init: Callable
    sac_update: Callable
    td_target: Callable
    policy_apply: Callable
    sample_action: Callable
    deterministic_action: Callable
    q_apply: Callable
    value: Callable


def make_sac(config: SACConfig, env: Env) -> SAC:
    """Builds the SAC functions for ``env``'s dimensions and action box."""
    obs_dim, action_dim = int(env.obs_dim), int(env.action_dim)
    low = np.asarray(env.action_low, np.float32).reshape(action_dim)
    high = np.asarray(env.action_high, np.float32).reshape(action_dim)
    if not np.all(np.isfinite(low) & np.isfinite(high) & (high > low)):
        raise ValueError(f"{env.name}: SAC needs a finite action box with high > low, got {low}, {high}")
    center = jnp.asarray((high + low) / 2.0)
    half_width = jnp.asarray((high - low) / 2.0)
    target_entropy = float(-action_dim if config.target_entropy is None else config.target_entropy)
    default_hparams = SACHParams.from_config(config, action_dim)
    hidden = (config.hidden_size,) * config.num_hidden_layers
    actor_sizes = (obs_dim,) + hidden + (2 * action_dim,)
    critic_sizes = (obs_dim + action_dim,) + hidden + (1,)

    def resolve(hparams: Optional[SACHParams]) -> SACHParams:
        if hparams is None:
            return default_hparams
        if not isinstance(hparams, SACHParams):
            raise TypeError(f"SAC: hparams must be SACHParams or None, got {type(hparams).__name__}")
        return hparams

    def lift(v, ndim):
        return v.reshape((1,) * (ndim - 1) + v.shape)

    def to_env_units(unit_action):
        return lift(center, unit_action.ndim) + lift(half_width, unit_action.ndim) * unit_action

    def to_unit_box(env_action):
        return (env_action - lift(center, env_action.ndim)) / lift(half_width, env_action.ndim)

    def init(key: jax.Array, hparams: Optional[SACHParams] = None) -> SACState:
        """Fresh SACState (log α = log hparams.init_alpha); the target critics start as copies
        of the critics."""
        hp = resolve(hparams)
        actor_key, critic_key = jax.random.split(key)
        actor = mlp_init(actor_key, actor_sizes)
        critic = jax.vmap(lambda k: mlp_init(k, critic_sizes))(jax.random.split(critic_key, 2))
        log_alpha = jnp.log(jnp.asarray(hp.init_alpha, jnp.float32))
        params = SACParams(actor=actor, critic=critic, target_critic=critic, log_alpha=log_alpha)
        # Adam's state does not depend on the step size: the rates only enter sac_update.
        return SACState(
            params=params,
            actor_opt_state=optax.adam(hp.actor_lr).init(actor),
            critic_opt_state=optax.adam(hp.critic_lr).init(critic),
            alpha_opt_state=optax.adam(hp.alpha_lr).init(log_alpha),
            num_updates=jnp.zeros((), jnp.int32),
        )

    def policy_apply(actor: tuple, obs: jax.Array):
        """obs [..., obs_dim] → (mean [..., A], log_std [..., A]) of the pre-tanh Gaussian."""
        out = mlp_apply(actor, obs)
        mean, raw = jnp.split(out, 2, axis=-1)
        span = config.log_std_max - config.log_std_min
        log_std = config.log_std_min + 0.5 * span * (jnp.tanh(raw) + 1.0)
        return mean, log_std

    def sample_action(key: jax.Array, actor: tuple, obs: jax.Array):
        """Reparameterised sample: obs [..., obs_dim] → (action [..., A] in env units,
        log_prob [...] of the unit-box action)."""
        mean, log_std = policy_apply(actor, obs)
        pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        log_prob = tanh_gaussian_log_prob(pre_tanh, mean, log_std)
        return to_env_units(jnp.tanh(pre_tanh)), log_prob

    def deterministic_action(actor: tuple, obs: jax.Array) -> jax.Array:
        """tanh(mean) in env units: obs [..., obs_dim] → [..., A] (evaluation policy)."""
        mean, _ = policy_apply(actor, obs)
        return to_env_units(jnp.tanh(mean))

    def q_apply(critic: tuple, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Twin critics: obs [..., obs_dim], action [..., A] (env units) → [2, ...]."""
        x = jnp.concatenate([obs, to_unit_box(action)], axis=-1)
        return jax.vmap(mlp_apply, in_axes=(0, None))(critic, x)[..., 0]

    def value(params: SACParams, obs: jax.Array, key: Optional[jax.Array] = None,
              critics: str = "all", reduce: str = "each", detach_action: bool = False) -> jax.Array:
        """V_k(s) = Q_k(s, π(s)) for each critic: obs [..., obs_dim] → [K, ...] (reduce="each")
        or their minimum [...] (reduce="min").

        π(s) is the deterministic action tanh(mean) when key is None, else a reparameterised
        sample (one per state). critics: "online" (K = 2), "target" (K = 2) or "all" (K = 4,
        online first). Gradients w.r.t. obs flow through both Q and π(s) (total derivative),
        or through Q's state input only with ``detach_action`` (∂Q/∂s at a = π(s) held fixed,
        as VaGraM's released code computes its value gradients).
        """
        if critics not in ("online", "target", "all"):
            raise ValueError(f"value: critics must be 'online', 'target' or 'all', got {critics!r}")
        if reduce not in ("each", "min"):
            raise ValueError(f"value: reduce must be 'each' or 'min', got {reduce!r}")
        if key is None:
            action = deterministic_action(params.actor, obs)
        else:
            action, _ = sample_action(key, params.actor, obs)
        if detach_action:
            action = jax.lax.stop_gradient(action)
        values = []
        if critics in ("online", "all"):
            values.append(q_apply(params.critic, obs, action))
        if critics in ("target", "all"):
            values.append(q_apply(params.target_critic, obs, action))
        values = jnp.concatenate(values, axis=0)
        return values.min(axis=0) if reduce == "min" else values

    def td_target(key: jax.Array, params: SACParams, batch: Transition,
                  hparams: Optional[SACHParams] = None) -> jax.Array:
        """y [B] = r + γ (1 − done) (min_k Q̄_k(s′, a′) − α log π(a′|s′)), a′ ~ π(s′), γ =
        hparams.gamma; ``done`` is termination only (truncated transitions carry done = 0)."""
        gamma = resolve(hparams).gamma
        next_action, next_log_prob = sample_action(key, params.actor, batch.next_obs)
        next_q = q_apply(params.target_critic, batch.next_obs, next_action).min(axis=0)
        alpha = jnp.exp(params.log_alpha)
        soft_value = next_q - alpha * next_log_prob
        not_done = 1.0 - batch.done.astype(soft_value.dtype)
        return jax.lax.stop_gradient(batch.reward + gamma * not_done * soft_value)

    def critic_loss_fn(critic, batch: Transition, target):
        """0.5 · Σ_critics mean_batch (Q − y)²; aux: mean online Q."""
        q = q_apply(critic, batch.obs, batch.action)  # [2, B]
        loss = 0.5 * jnp.sum(jnp.mean((q - target[None, :]) ** 2, axis=-1))
        return loss, q.mean()

    def actor_loss_fn(actor, key, critic, batch: Transition, alpha):
        """mean(α log π(a|s) − min_k Q_k(s, a)), a ~ π(s) reparameterised; aux: log π [B]."""
        action, log_prob = sample_action(key, actor, batch.obs)
        q = q_apply(critic, batch.obs, action).min(axis=0)
        return jnp.mean(alpha * log_prob - q), log_prob

    def alpha_loss_fn(log_alpha, entropy_gap):
        return -log_alpha * entropy_gap

    def sac_update(key: jax.Array, state: SACState, batch: Transition,
                   hparams: Optional[SACHParams] = None):
        """One SAC update on ``batch`` (Transition with leaves [B, ...]) with ``hparams`` ([]
        leaves; None: the config's); returns (new SACState, UpdateMetrics)."""
        chex.assert_rank((batch.obs, batch.action, batch.next_obs, batch.reward, batch.done), (2, 2, 2, 1, 1))
        chex.assert_equal_shape_prefix(batch, 1)
        hp = resolve(hparams)
        # The optimisers are rebuilt per call so that the (possibly traced) rates are arguments.
        critic_step = gradient_update(critic_loss_fn, optax.adam(hp.critic_lr), has_aux=True)
        actor_step = gradient_update(actor_loss_fn, optax.adam(hp.actor_lr), has_aux=True)
        alpha_step = gradient_update(alpha_loss_fn, optax.adam(hp.alpha_lr))
        target_key, actor_key = jax.random.split(key)
        params = state.params
        alpha = jnp.exp(params.log_alpha)
        target = td_target(target_key, params, batch, hp)

        critic, critic_opt_state, critic_loss, q_mean = critic_step(
            params.critic, state.critic_opt_state, batch, target)
        actor, actor_opt_state, actor_loss, log_prob = actor_step(
            params.actor, state.actor_opt_state, actor_key, critic, batch, alpha)
        entropy_gap = jax.lax.stop_gradient(jnp.mean(log_prob) + hp.target_entropy)
        log_alpha, alpha_opt_state, alpha_loss = alpha_step(params.log_alpha, state.alpha_opt_state,
                                                            entropy_gap)

        new_params = SACParams(
            actor=actor,
            critic=critic,
            target_critic=polyak_update(critic, params.target_critic, hp.tau),
            log_alpha=log_alpha,
        )
        new_state = SACState(
            params=new_params,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            alpha_opt_state=alpha_opt_state,
            num_updates=state.num_updates + 1,
        )
        metrics = UpdateMetrics(
            critic_loss=critic_loss,
            actor_loss=actor_loss,
            alpha_loss=alpha_loss,
            alpha=alpha,
            entropy=-jnp.mean(log_prob),
            q_mean=q_mean,
        )
        return new_state, metrics

    return SAC(
        config=config,
        obs_dim=obs_dim,
        action_dim=action_dim,
        target_entropy=target_entropy,
        hparams=default_hparams,
        init=init,
        sac_update=sac_update,
        td_target=td_target,
        policy_apply=policy_apply,
        sample_action=sample_action,
        deterministic_action=deterministic_action,
        q_apply=q_apply,
        value=value,
    )


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
