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

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mismatch_jax.data import replay
from mismatch_jax.data.replay import Transition
from mismatch_jax.config_io import from_dict, load_toml
from mismatch_jax.envs.base import Env, rollout
from mismatch_jax.models.nets import gradient_update, mlp_apply, mlp_init


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Static SAC hyperparameters (hashable). Load strictly with ``load_sac_config(path)`` or
    ``sac_config_from_dict(mapping)``.

    env: registry name used by ``make_env``. total_env_steps: env steps of the whole run
    (a multiple of eval_interval). eval_interval: env steps between evaluations (one outer scan
    iteration). learning_starts: steps of uniformly random actions before updates start.
    num_eval_episodes: deterministic-policy episodes per evaluation. buffer_capacity: replay
    rows. batch_size: transitions per update. updates_per_step: gradient updates per env step
    (UTD ratio). hidden_size / num_hidden_layers: actor and critic MLPs (ReLU).
    actor_lr / critic_lr / alpha_lr: Adam step sizes. gamma: discount. tau: Polyak rate of the
    target critics. init_alpha: initial temperature. target_entropy: defaults to −action_dim.
    log_std_min / log_std_max: range of the policy's log standard deviation.
    seed / num_seeds: used by scripts and sweeps (``seed_keys``), not by ``train``.
    """

    env: str = "pendulum"
    total_env_steps: int = 15_000
    eval_interval: int = 1_000
    learning_starts: int = 1_000
    num_eval_episodes: int = 5
    buffer_capacity: int = 100_000
    batch_size: int = 256
    updates_per_step: int = 1
    hidden_size: int = 256
    num_hidden_layers: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy: Optional[float] = None
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    seed: int = 0
    num_seeds: int = 5

    def __post_init__(self):
        positive = ("total_env_steps", "eval_interval", "num_eval_episodes", "buffer_capacity",
                    "batch_size", "updates_per_step", "hidden_size", "num_hidden_layers",
                    "num_seeds")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SACConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.total_env_steps % self.eval_interval:
            raise ValueError(
                f"SACConfig.total_env_steps ({self.total_env_steps}) must be a multiple of "
                f"eval_interval ({self.eval_interval}); round total_env_steps to a multiple"
            )
        if not 0 <= self.learning_starts <= self.total_env_steps:
            raise ValueError(
                f"SACConfig.learning_starts must be in [0, total_env_steps={self.total_env_steps}], "
                f"got {self.learning_starts}"
            )
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SACConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"SACConfig.gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SACConfig.tau must be in (0, 1], got {self.tau}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(
                f"SACConfig.log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})"
            )


def sac_config_from_dict(data) -> SACConfig:
    """Strict: unknown keys / wrong types / impossible values raise ``ConfigError``."""
    return from_dict(SACConfig, data)


def load_sac_config(path) -> SACConfig:
    """Reads a SAC TOML file (top-level keys = ``SACConfig`` fields) strictly."""
    return load_toml(SACConfig, path)


def make_env(config: SACConfig, **env_kwargs) -> Env:
    """The environment named by ``config.env`` from the registry."""
    from mismatch_jax.envs import registry

    return registry.make(config.env, **env_kwargs)


def seed_keys(config: SACConfig, seed: Optional[int] = None) -> jax.Array:
    """[num_seeds] keys for ``jax.vmap(train)``: fold_in(key(seed), i), independent of how many
    seeds run together."""
    root = jax.random.key(config.seed if seed is None else seed)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(config.num_seeds))


@struct.dataclass
class SACHParams:
    """The SAC hyper-parameters that change no shape, as a vmappable pytree of float32 leaves:
    [] for one run, [n, ...] leading axes for a sweep (``jax.vmap`` over them).

    actor_lr / critic_lr / alpha_lr: Adam step sizes. gamma: discount. tau: Polyak rate of the
    target critics. init_alpha: initial temperature (used by ``init``). target_entropy: of the
    temperature loss (the config's None is resolved to −action_dim).
    """

    actor_lr: jax.Array
    critic_lr: jax.Array
    alpha_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy: jax.Array

    @classmethod
    def from_config(cls, config: SACConfig, action_dim: int) -> "SACHParams":
        """The config's values as [] float32 leaves (what ``hparams=None`` means everywhere)."""
        target_entropy = -action_dim if config.target_entropy is None else config.target_entropy
        f32 = lambda v: jnp.asarray(v, jnp.float32)
        return cls(actor_lr=f32(config.actor_lr), critic_lr=f32(config.critic_lr),
                   alpha_lr=f32(config.alpha_lr), gamma=f32(config.gamma), tau=f32(config.tau),
                   init_alpha=f32(config.init_alpha), target_entropy=f32(target_entropy))

    def broadcast(self, n: int) -> "SACHParams":
        """Every leaf [] → [n] (then ``.replace(actor_lr=lrs)`` sets the swept fields)."""
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (n,) + jnp.shape(v)), self)


class TrainFn(Protocol):
    """The contract of an agent's whole run (``sac.make_train``, ``mbpo.make_train``):
    ``train(key [], hparams=None) -> (final state, metrics with leaves [num_evals])``.

    Pure: no Python side effects, so ``jax.vmap`` over ``key`` (seeds) and over ``hparams`` (a
    pytree of [] leaves, e.g. ``SACHParams``; None = the config's values) nests into one program.
    """

    def __call__(self, key: jax.Array, hparams: Any = None) -> tuple[Any, Any]: ...


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
              critics: str = "all", reduce: str = "each") -> jax.Array:
        """V_k(s) = Q_k(s, π(s)) for each critic: obs [..., obs_dim] → [K, ...] (reduce="each")
        or their minimum [...] (reduce="min").

        π(s) is the deterministic action tanh(mean) when key is None, else a reparameterised
        sample (one per state). critics: "online" (K = 2), "target" (K = 2) or "all" (K = 4,
        online first). Gradients w.r.t. obs flow through both Q and π(s) (total derivative).
        """
        if critics not in ("online", "target", "all"):
            raise ValueError(f"value: critics must be 'online', 'target' or 'all', got {critics!r}")
        if reduce not in ("each", "min"):
            raise ValueError(f"value: reduce must be 'each' or 'min', got {reduce!r}")
        if key is None:
            action = deterministic_action(params.actor, obs)
        else:
            action, _ = sample_action(key, params.actor, obs)
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


@struct.dataclass
class TrainState:
    """Carry of the training scan. sac: SACState; buffer: ReplayBuffer of Transition;
    env_state: current EnvState; episode_return: [] return of the running episode;
    env_steps: [] int32 env steps taken."""

    sac: SACState
    buffer: replay.ReplayBuffer
    env_state: Any
    episode_return: jax.Array
    env_steps: jax.Array


@struct.dataclass
class TrainMetrics:
    """One record per evaluation interval (leaves [num_evals] from ``train``):

    env_steps: env steps taken at the end of the interval. eval_return: mean return of
    ``num_eval_episodes`` deterministic-policy episodes. train_return: mean return of the
    training episodes that ended in the interval (NaN if none). critic_loss / actor_loss /
    alpha / entropy / q_mean: means over the interval's updates (NaN before any update).
    num_updates: updates done in the interval.
    """

    env_steps: jax.Array
    eval_return: jax.Array
    train_return: jax.Array
    critic_loss: jax.Array
    actor_loss: jax.Array
    alpha: jax.Array
    entropy: jax.Array
    q_mean: jax.Array
    num_updates: jax.Array


def summarize_interval(env_steps, eval_return, metrics, updated, ended, returns) -> TrainMetrics:
    """One ``TrainMetrics`` record from an evaluation interval's per-step outputs (any leading
    shape, e.g. [T] or [phases, T]): metrics (UpdateMetrics), updated (an update ran), ended (an
    episode ended) and returns (the episode return at that step); env_steps and eval_return []."""
    n_updates = updated.sum()

    def interval_mean(m):
        total = jnp.sum(jnp.where(updated, m, 0.0))
        return jnp.where(n_updates > 0, total / jnp.maximum(n_updates, 1), jnp.nan)

    metrics = jax.tree_util.tree_map(interval_mean, metrics)
    n_ended = ended.sum()
    train_return = jnp.where(
        n_ended > 0, jnp.sum(jnp.where(ended, returns, 0.0)) / jnp.maximum(n_ended, 1), jnp.nan
    )
    return TrainMetrics(
        env_steps=env_steps, eval_return=eval_return, train_return=train_return,
        critic_loss=metrics.critic_loss, actor_loss=metrics.actor_loss, alpha=metrics.alpha,
        entropy=metrics.entropy, q_mean=metrics.q_mean, num_updates=n_updates.astype(jnp.int32),
    )


def evaluate(sac: SAC, env: Env, actor: tuple, key: jax.Array, num_episodes: int) -> jax.Array:
    """Mean return [] of ``num_episodes`` full episodes of the deterministic policy
    (reward accumulation stops at termination; episodes run ``env.episode_length`` steps)."""

    def episode(k):
        _, total = rollout(env, lambda _, obs: sac.deterministic_action(actor, obs), k,
                           env.episode_length)
        return total

    return jax.vmap(episode)(jax.random.split(key, num_episodes)).mean()


class EnvStep(NamedTuple):
    """What one actor step in the environment produced: the stored ``transition`` (done =
    termination only; next_obs is the true next state, also at a time limit), the ``env_state``
    to continue from (a fresh reset when the episode ended) and ``episode_over`` []."""

    transition: Transition
    env_state: Any
    episode_over: jax.Array


def actor_env_step(env: Env, sac: SAC, actor: tuple, env_state: Any, warm_up, random_key: jax.Array,
                   policy_key: jax.Array, reset_key: jax.Array) -> EnvStep:
    """One step of a SAC actor in ``env``: a uniformly random action in the action box while
    ``warm_up`` ([] bool, traced or static), else a sample of the policy; the environment step;
    and a reset (from ``reset_key``) when the episode terminated or hit its time limit (envs do
    not auto-reset). Shared by SAC, MBPO and the VaGraM figure's value-function run."""
    low, high = action_box(env, sac.action_dim)
    random_action = jax.random.uniform(random_key, (sac.action_dim,), jnp.float32, low, high)
    policy_action, _ = sac.sample_action(policy_key, actor, env_state.obs)
    action = jnp.where(warm_up, random_action, policy_action)
    next_env = env.step(env_state, action)
    transition = Transition(obs=env_state.obs, action=action, reward=next_env.reward, next_obs=next_env.obs,
                            done=next_env.done.astype(jnp.float32))
    episode_over = jnp.logical_or(next_env.done, next_env.truncated)
    fresh = env.reset(reset_key)
    env_state = jax.tree_util.tree_map(lambda r, n: jnp.where(episode_over, r, n), fresh, next_env)
    return EnvStep(transition=transition, env_state=env_state, episode_over=episode_over)


def action_box(env: Env, action_dim: int) -> tuple[jax.Array, jax.Array]:
    """The env's action box as float32 arrays [A] (low, high)."""
    low = jnp.asarray(np.asarray(env.action_low, np.float32).reshape(action_dim))
    high = jnp.asarray(np.asarray(env.action_high, np.float32).reshape(action_dim))
    return low, high


def run_updates(sac: SAC, key: jax.Array, state: SACState, num_updates: int, sample_batch: Callable,
                hparams: Optional[SACHParams] = None):
    """``num_updates`` SAC updates in one lax.scan; ``sample_batch(key) -> (batch, update_key)``
    draws each update's batch (and the key of its update). → (state, mean UpdateMetrics)."""
    def one(s, k):
        batch, update_key = sample_batch(k)
        return sac.sac_update(update_key, s, batch, hparams)

    state, metrics = jax.lax.scan(one, state, jax.random.split(key, num_updates))
    return state, jax.tree_util.tree_map(lambda m: m.mean(), metrics)


def replay_batches(buffer: replay.ReplayBuffer, batch_size: int) -> Callable:
    """``sample_batch`` for ``run_updates``: a uniform replay batch, then the update key."""
    def sample_batch(k):
        sample_key, update_key = jax.random.split(k)
        return replay.sample(sample_key, buffer, batch_size), update_key
    return sample_batch


def make_train(config: SACConfig, env: Env) -> TrainFn:
    """``train(key, hparams: SACHParams | None = None) -> (final TrainState, TrainMetrics with
    leaves [num_evals])``: the whole run as one pure function (``jax.jit(jax.vmap(train))(keys)``
    for many seeds; vmap over ``hparams`` too for a sweep in one program, see the module
    docstring). hparams None: the config's values."""
    sac = make_sac(config, env)
    num_evals = config.total_env_steps // config.eval_interval
    nan_metrics = jax.tree_util.tree_map(
        lambda _: jnp.asarray(jnp.nan, jnp.float32), UpdateMetrics(*([0.0] * 6))
    )

    def env_step(ts: TrainState, key, hp: SACHParams):
        random_key, policy_key, reset_key, update_key = jax.random.split(key, 4)
        warm_up = ts.env_steps < config.learning_starts
        step = actor_env_step(env, sac, ts.sac.params.actor, ts.env_state, warm_up, random_key, policy_key,
                              reset_key)
        buffer = replay.add(ts.buffer, step.transition)
        episode_return = ts.episode_return + step.transition.reward
        env_steps = ts.env_steps + 1

        do_update = env_steps >= config.learning_starts
        sac_state, metrics = jax.lax.cond(
            do_update,
            lambda s: run_updates(sac, update_key, s, config.updates_per_step,
                                  replay_batches(buffer, config.batch_size), hp),
            lambda s: (s, nan_metrics),
            ts.sac,
        )
        new_ts = TrainState(
            sac=sac_state,
            buffer=buffer,
            env_state=step.env_state,
            episode_return=jnp.where(step.episode_over, 0.0, episode_return),
            env_steps=env_steps,
        )
        return new_ts, (metrics, do_update, step.episode_over, episode_return)

    def interval(ts: TrainState, key, hp: SACHParams):
        steps_key, eval_key = jax.random.split(key)
        ts, (metrics, updated, ended, returns) = jax.lax.scan(
            lambda t, k: env_step(t, k, hp), ts, jax.random.split(steps_key, config.eval_interval)
        )
        eval_return = evaluate(sac, env, ts.sac.params.actor, eval_key, config.num_eval_episodes)
        record = summarize_interval(ts.env_steps, eval_return, metrics, updated, ended, returns)
        return ts, record

    def train(key: jax.Array, hparams: Optional[SACHParams] = None):
        """One SAC run: key [], hparams ([] leaves; None: the config's) → (final TrainState,
        TrainMetrics [num_evals])."""
        hp = sac.hparams if hparams is None else hparams
        init_key, env_key, loop_key = jax.random.split(key, 3)
        env_state = env.reset(env_key)
        ts = TrainState(
            sac=sac.init(init_key, hp),
            buffer=replay.init(replay.empty_transition(sac.obs_dim, sac.action_dim), config.buffer_capacity),
            env_state=env_state,
            episode_return=jnp.zeros((), jnp.float32),
            env_steps=jnp.zeros((), jnp.int32),
        )
        return jax.lax.scan(lambda t, k: interval(t, k, hp), ts, jax.random.split(loop_key, num_evals))

    return train
