"""PETS (Chua et al. 2018) as used by Lambert et al. 2020: learn an ensemble, plan with CEM-MPC.

Loop: one trial of uniformly random actions, then ``num_trials`` × (train the model on every
transition collected so far → run one episode of CEM-MPC on the model in the true env → add the
episode to the data). The data live in a fixed-capacity buffer ``(num_trials + 1) · trial_length``
rows with train/validation masks, so every trial runs the same compiled computation.

Batching over seeds. ``run_seeds(keys [S])`` runs S independent seeds inside one computation:
the trainer is called with a population of N = S models, model n on dataset n
(``dataset_index = arange(S)``), and the episodes are ``vmap``-ed over seeds. We chose N = S over
``vmap`` of an N = 1 trainer because the trainer skips, with ``lax.cond`` at the population level,
minibatch slots past every model's data and epochs after every model stopped; under ``vmap`` those
conds become selects and every trial would pay for the buffer's full capacity (≈ 2× more training
work over a 15-trial run). ``run(key)`` is the single-seed function (still vmappable, at that cost).

The pieces are also exposed for a host loop (``mismatch-jax pets``, ``experiments.pets_command``):
``init(keys) -> PetsState`` and ``trial_step(state) -> (state, TrialMetrics)``; ``run_seeds`` is
exactly ``init`` followed by a ``lax.scan`` of ``trial_step`` over the trials, so a Python loop
over a jitted ``trial_step`` gives the same numbers with a progress display between trials.

Choices: the model continues training from the previous trial's weights (PETS, mbrl-lib) unless
``continue_training = false``; the optimiser state restarts each trial (mbrl-lib keeps Adam's
moments across trials); rewards come from ``env.reward_fn`` (known reward, as in PETS cartpole).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.agents.config import PetsConfig
from mismatch_jax.models import core as models
from mismatch_jax.planning.mpc import Planner, make_planner, mpc_episode
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.train import TrainHParams, make_train_fn


@struct.dataclass
class PetsState:
    """Carry of the trial loop for S seeds.

    key [S]: per-seed keys (fold_in(key, trial) gives each trial's keys).
    trial []: number of planned trials done. buffer: TransitionData with M = S datasets of
    capacity (num_trials + 1) · trial_length. params / normalizer: [S]-stacked model.
    env_params: the true dynamics' constants per seed (leaves [S, ...]), or None for the env's
    defaults (a sweep over the dynamics runs one PETS per setting in one program).
    """

    key: jax.Array
    trial: jax.Array
    buffer: TransitionData
    params: models.ModelParams
    normalizer: models.Normalizer
    env_params: Any = None


@struct.dataclass
class TrialMetrics:
    """Per trial and seed [S]: reward (episode return of the planned trial), val_mse / val_ll
    (last training epoch's validation metrics), epochs_trained."""

    reward: jax.Array
    val_mse: jax.Array
    val_ll: jax.Array
    epochs_trained: jax.Array


@struct.dataclass
class PetsResult:
    """random_reward [S]: return of the random trial; trial_rewards [S, num_trials];
    metrics: TrialMetrics with leaves [S, num_trials]; params / normalizer: final models [S].
    (``run(key)`` returns the same without the leading seed axis.)"""

    random_reward: jax.Array
    trial_rewards: jax.Array
    metrics: TrialMetrics
    params: models.ModelParams
    normalizer: models.Normalizer


@dataclasses.dataclass(frozen=True)
class Pets:
    """The PETS functions built by ``make_pets`` (all pure; see the module docstring).

    run(key) -> PetsResult (one seed); run_seeds(keys [S]) -> PetsResult [S];
    init(keys [S], env_params [S, ...] | None) -> PetsState; trial_step(state) -> (state, TrialMetrics [S])
    = play_phase(state, train_phase(state)) (the trial's model fit → TrainResult [S], then its MPC
    episode). splits_candidates: the planner splits its candidates over several devices; then
    ``compile_trial_loop`` keeps the fit a one-device program and the run equals the one-device
    run bit for bit, while a single jit of ``run_seeds`` / ``trial_step`` makes the whole trial an
    SPMD program whose fit differs from the one-device fit by float rounding.
    """

    config: PetsConfig
    env: Any
    planner: Planner
    trial_length: int
    init: Callable
    trial_step: Callable
    run_seeds: Callable
    run: Callable
    train_phase: Callable
    play_phase: Callable
    splits_candidates: bool = False

    def __call__(self, key):
        return self.run(key)


def _random_episode(key, env, num_steps, env_params=None):
    """Uniform random actions for num_steps → (obs, action, next_obs, reward, alive), each [T, ...]."""
    low = jnp.asarray(env.action_low, jnp.float32)
    high = jnp.asarray(env.action_high, jnp.float32)
    reset_key, action_key = jax.random.split(key)
    state = env.reset(reset_key, env_params)
    actions = jax.random.uniform(action_key, (num_steps, env.action_dim), minval=low, maxval=high)

    def body(carry, action):
        state, alive = carry
        next_state = env.step(state, action, env_params)
        out = (state.obs, action, next_state.obs, jnp.where(alive, next_state.reward, 0.0), alive)
        alive = jnp.logical_and(alive, jnp.logical_not(next_state.done))
        return (next_state, alive), out

    _, out = jax.lax.scan(body, (state, jnp.ones((), bool)), actions)
    return out


def make_pets(config: PetsConfig, env, candidate_devices=None) -> Pets:
    """Builds the PETS loop for ``config`` on ``env`` (an ``envs.base.Env``). The model's
    ``angle_dims`` become its (sin, cos) input features; the buffer, the planner and the rewards
    stay in the env's own observation. candidate_devices: every planning call's candidates split
    over these devices (``planning.make_planner``; expectation propagation; same numbers)."""
    model_cfg = config.model_config(env)
    cem_cfg = config.cem_config(env)
    trial_length = config.steps_per_trial(env)
    num_trials = config.num_trials
    capacity = (num_trials + 1) * trial_length
    tc = config.train
    train_cfg = tc.train_config(model_cfg)
    train_core = make_train_fn(train_cfg)
    planner = make_planner(cem_cfg, model_cfg, env.reward_fn, env.termination_fn,
                           candidate_devices=candidate_devices)
    obs_dim, action_dim = env.obs_dim, env.action_dim

    def write(buffer: TransitionData, keys, trial_index, obs, action, next_obs, reward, alive):
        """Puts one episode of every seed ([S, T, ...]) into rows trial_index · T …; keys [S]
        draw which rows become validation rows."""
        start = trial_index * trial_length
        uniform = jax.vmap(lambda k: jax.random.uniform(k, (trial_length,)))(keys)
        is_val = uniform < tc.validation_fraction
        val = jnp.logical_and(alive, is_val)
        train = jnp.logical_and(alive, jnp.logical_not(is_val))

        def put(dst, src):
            index = (0, start) + (0,) * (dst.ndim - 2)
            return jax.lax.dynamic_update_slice(dst, src.astype(dst.dtype), index)

        return buffer.replace(
            obs=put(buffer.obs, obs), action=put(buffer.action, action),
            next_obs=put(buffer.next_obs, next_obs), reward=put(buffer.reward, reward),
            train_mask=put(buffer.train_mask, train), val_mask=put(buffer.val_mask, val),
        )

    def init(keys, env_params=None):
        num_seeds = keys.shape[0]
        split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
        state_keys, random_keys, mask_keys, param_keys = (split[:, i] for i in range(4))
        obs, action, next_obs, reward, alive = jax.vmap(
            lambda k, e: _random_episode(k, env, trial_length, e))(random_keys, env_params)
        zeros = lambda *shape: jnp.zeros((num_seeds, capacity) + shape, jnp.float32)
        buffer = TransitionData(
            obs=zeros(obs_dim), action=zeros(action_dim), next_obs=zeros(obs_dim),
            reward=zeros(), weight=zeros() + 1.0,
            train_mask=jnp.zeros((num_seeds, capacity), bool),
            val_mask=jnp.zeros((num_seeds, capacity), bool),
        )
        buffer = write(buffer, mask_keys, 0, obs, action, next_obs, reward, alive)
        params = jax.vmap(lambda k: models.init(k, model_cfg))(param_keys)
        normalizer = jax.vmap(lambda _: models.identity_normalizer(model_cfg))(jnp.arange(num_seeds))
        state = PetsState(key=state_keys, trial=jnp.zeros((), jnp.int32), buffer=buffer,
                          params=params, normalizer=normalizer, env_params=env_params)
        return state, reward.sum(axis=1)

    def trial_keys(state: PetsState):
        """(train, episode, buffer-mask) keys [S] of the current trial."""
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.key, state.trial)
        split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
        return split[:, 0], split[:, 1], split[:, 2]

    def train_phase(state: PetsState):
        """The trial's model fit on the buffer so far → TrainResult [S]."""
        num_seeds = state.key.shape[0]
        train_keys, _, _ = trial_keys(state)
        hparams = TrainHParams.population(num_seeds, learning_rate=tc.learning_rate,
                                          weight_decay=tc.weight_decay)
        return train_core(train_keys, state.params if tc.continue_training else None,
                          state.buffer, hparams, jnp.arange(num_seeds, dtype=jnp.int32))

    def play_phase(state: PetsState, result):
        """The trial's MPC episode on the fitted models, written into the buffer → (state, metrics)."""
        _, episode_keys, mask_keys = trial_keys(state)
        trajectory, rewards = jax.vmap(
            lambda k, p, n, e: mpc_episode(k, env, planner, p, n, trial_length, e)
        )(episode_keys, result.params, result.normalizer, state.env_params)
        buffer = write(state.buffer, mask_keys, state.trial + 1, trajectory.obs,
                       trajectory.action, trajectory.next_obs, trajectory.reward, trajectory.alive)
        metrics = TrialMetrics(
            reward=rewards, val_mse=result.metrics.val_mse[:, -1], val_ll=result.metrics.val_ll[:, -1],
            epochs_trained=result.epochs_trained,
        )
        state = state.replace(trial=state.trial + 1, buffer=buffer, params=result.params,
                              normalizer=result.normalizer)
        return state, metrics

    def trial_step(state: PetsState):
        return play_phase(state, train_phase(state))

    def run_seeds(keys):
        state, random_reward = init(keys)
        state, metrics = jax.lax.scan(lambda s, _: trial_step(s), state, None, length=num_trials)
        metrics = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), metrics)  # [S, num_trials]
        return PetsResult(random_reward=random_reward, trial_rewards=metrics.reward, metrics=metrics,
                          params=state.params, normalizer=state.normalizer)

    def run(key):
        return jax.tree.map(lambda a: a[0], run_seeds(key[None]))

    return Pets(config=config, env=env, planner=planner, trial_length=trial_length, init=init,
                trial_step=trial_step, run_seeds=run_seeds, run=run, train_phase=train_phase,
                play_phase=play_phase, splits_candidates=bool(candidate_devices and len(candidate_devices) > 1))


def compile_trial_loop(pets: Pets, keys: jax.Array, donate_state: bool = False, env_params=None):
    """Executables of ``pets.init`` and ``pets.trial_step`` for seed keys [S] (and per-seed env
    constants ``env_params`` [S, ...], or None), compiled at the same time (both step the env,
    so each takes tens of seconds to compile on a CPU) → (init, trial_step) with the signatures
    of the Pets fields. donate_state: trial_step donates its input state (the caller must not
    reuse it)."""
    from mismatch_jax.compilation import compile_concurrently

    traced_init = jax.jit(pets.init).trace(keys, env_params)
    state_spec = traced_init.out_info[0]
    donate = 0 if donate_state else ()

    def init(keys_now, env_params_now=env_params):
        return compiled_init(keys_now, env_params_now)

    if not pets.splits_candidates:
        step = jax.jit(pets.trial_step, donate_argnums=donate).lower(state_spec)
        compiled_init, trial_step = compile_concurrently([traced_init.lower(), step])
        return init, trial_step
    # With the planner's candidates split over devices the program is an SPMD one, and XLA:CPU
    # compiles every op in it differently enough to move the model fit by float rounding
    # (~6e-8 after 5 epochs), which a closed loop amplifies into another run. The fit therefore
    # stays a one-device program of its own; only the episode spans the devices.
    traced_train = jax.jit(pets.train_phase).trace(state_spec)
    play = jax.jit(pets.play_phase, donate_argnums=donate).lower(state_spec, traced_train.out_info)
    compiled_init, train, play = compile_concurrently([traced_init.lower(), traced_train.lower(), play])

    def trial_step(state):
        # The fit runs on one device, the episode replicated over all: each gets its inputs laid
        # out the way it was compiled (copies of the small state, not of the work).
        result = train(jax.device_put(state, train.input_shardings[0][0]))
        return play(*jax.device_put((state, result), play.input_shardings[0]))

    return init, trial_step


def seed_keys(config: PetsConfig, seed: Optional[int] = None, root: Optional[jax.Array] = None) -> jax.Array:
    """Keys [num_seeds]: fold_in(root, i) for i < num_seeds; root defaults to key(seed)."""
    if root is None:
        root = jax.random.key(config.seed if seed is None else seed)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, jnp.arange(config.num_seeds))
