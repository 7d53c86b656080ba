"""SAC's run loop: one actor step in the environment (shared with MBPO and the VaGraM figure),
batches of updates, evaluation, and ``make_train(config, env) -> train(key, hparams=None)``, the
whole run as one ``lax.scan`` over evaluation intervals whose body scans environment steps, each
followed by ``updates_per_step`` updates once ``learning_starts`` random-action steps are stored.

Updates are gated with ``lax.cond`` on ``env_steps >= learning_starts``: a single program with no
warm-up scan. Under ``vmap`` the cond becomes a select, so the warm-up steps also compute (and
discard) an update — ``learning_starts / total_env_steps`` of extra work.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.agents.sac import SAC, SACState, UpdateMetrics, make_sac
from mismatch_jax.agents.sac_config import SACConfig, SACHParams
from mismatch_jax.data import replay
from mismatch_jax.data.replay import Transition
from mismatch_jax.envs.base import Env, rollout


class TrainFn(Protocol):
    """The contract of an agent's whole run (``sac_loop.make_train``, ``mbpo.make_train``):
    ``train(key [], hparams=None) -> (final state, metrics with leaves [num_evals])``.

    Pure: no Python side effects, so ``jax.vmap`` over ``key`` (seeds) and over ``hparams`` (a
    pytree of [] leaves, e.g. ``SACHParams``; None = the config's values) nests into one program.
    """

    def __call__(self, key: jax.Array, hparams: Any = None) -> tuple[Any, Any]: ...


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
