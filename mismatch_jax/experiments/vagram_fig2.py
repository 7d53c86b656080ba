"""VaGraM (Voelcker et al. 2022) Fig. 2: model learning on Pendulum over changing value functions.

Two phases, each one compiled program:

1. **Value functions** (``make_sac_snapshots``): model-free SAC on Pendulum built from
   ``agents.sac.make_sac``'s pure pieces. After ``learning_starts`` uniformly random steps, the
   run is a ``lax.scan`` over *snapshots*; each covers ``snapshot_stride`` epochs of
   ``sac.eval_interval`` env steps (the paper's epoch: 200 steps) with ``updates_per_step`` SAC
   updates per step, then emits the SAC parameters (actor + critics) and a deterministic-policy
   return. The snapshots come back as one stacked ``SACParams`` pytree [S, ...]. One SAC run
   (``sac.seed``) is shared by all model seeds, as in the paper (its 8 seeds are "model
   initialization and data set samples").
2. **Model learning** (``make_model_learning``): for one model type and a traced loss index
   (one compile serves all three losses), a ``lax.scan`` over the S value-function snapshots,
   ``vmap``-ed over seeds. Within a snapshot the model takes ``steps_per_value_function`` Adam steps on the loss w.r.t. that value function
   (paper: 1000), *continuing from the model and optimiser state of the previous snapshot* (that
   continuation is what lets a VAML model drift). Held-out MSE and held-out VAML error
   Σ_k (V_k(f̂(s, a)) − V_k(s′))² under the *current* value function are recorded when the value
   function changes (before any step on it) and after each of ``evals_per_value_function``
   equal chunks of steps.

Losses (all per-sample functions of ``models.value_aware`` / ``models.core``):
``mse`` = mean_d e_d²; ``vaml`` = ``vaml_per_sample`` (the exact VAML error as a training
loss, gradients flow through V into the model); ``vagram`` = ``vagram_per_sample`` on the
clipped value gradients cached once per snapshot on the training set
(``value_gradient_cache``). V_k(s) = Q_k(s, π(s)) with the deterministic action, for the
critics named by ``models.critics``.

Models: ``linear`` (linear regression on [s, a], no features) and ``mlp`` (one hidden layer of
``hidden_size`` = 16 units, ReLU as in appendix E.1), PyTorch default init, predicting
s′ = s + f(s, a) (``predict_delta``) or s′ = f(s, a). Inputs are the raw observation and torque
(the paper uses no feature transformations). The default predicts s′ directly; with the
residual parametrisation the models start at s′ ≈ s, which keeps a VAML model near the data
(see the report in sweeps/vagram_fig2_quick.toml).

Data (paper §4): states sampled uniformly over the whole state space (θ ~ U(−π, π),
θ̇ ~ U(−8, 8), torque ~ U(−2, 2)), next states from the true dynamics; a fresh training set and
held-out set per seed. ``data_source = "replay"`` instead splits SAC's replay buffer at random
per seed.

Outputs (``run_fig2``): ``fig2.png`` (held-out VAML error and MSE vs model steps, linear and
NN columns, mean ± standard error over seeds) and ``fig2.json`` (config, SAC returns per
snapshot, per-seed curves, summary per loss × model (see ``analysis.vagram_fig2.summarize_curves``: untrained, end of the
first vs the last value function, drift diagnostics); compile and run seconds apart).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mismatch_jax.data import replay
from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.agents import sac_loop
from mismatch_jax.analysis.vagram_fig2 import plot_fig2, summarize_curves
from mismatch_jax.config_io import to_dict
from mismatch_jax.experiments.vagram_fig2_config import LOSSES, MODEL_TYPES, Fig2Config, ModelLearningConfig
from mismatch_jax.envs.base import Env
from mismatch_jax.models import nets, value_aware
from mismatch_jax.models.core import mse_per_sample
from mismatch_jax.files import json_safe, write_json

PENDULUM_MAX_SPEED = 8.0


# ---------------------------------------------------------------------------------------------
# Phase 1: SAC with value-function snapshots
# ---------------------------------------------------------------------------------------------


class Snapshots(NamedTuple):
    """params: SACParams with a leading [S] axis on every leaf; env_steps: [S] int32 env steps
    at each snapshot; eval_return: [S] deterministic-policy return; buffer: final ReplayBuffer
    of Transition (the run's data)."""

    params: sac_lib.SACParams
    env_steps: jax.Array
    eval_return: jax.Array
    buffer: replay.ReplayBuffer


def make_sac_snapshots(config: Fig2Config, env: Env) -> Callable[[jax.Array], Snapshots]:
    """``run(key) -> Snapshots``: one SAC run whose scan emits the parameters every
    ``snapshot_stride`` epochs (after ``learning_starts`` random-action steps without updates)."""
    sc = config.sac
    sac = sac_lib.make_sac(sc, env)
    steps_per_snapshot = sc.eval_interval * config.snapshot_stride

    def step(carry, key, warm_up: bool):
        sac_state, buffer, env_state = carry
        action_key, reset_key, update_key = jax.random.split(key, 3)
        # One key for the random and the policy action: only the one the static branch keeps is used.
        step = sac_loop.actor_env_step(env, sac, sac_state.params.actor, env_state, warm_up, action_key,
                                      action_key, reset_key)
        buffer = replay.add(buffer, step.transition)
        if not warm_up:
            sac_state, _ = sac_loop.run_updates(sac, update_key, sac_state, sc.updates_per_step,
                                               sac_loop.replay_batches(buffer, sc.batch_size))
        return (sac_state, buffer, step.env_state), None

    def snapshot(carry, key):
        steps_key, eval_key = jax.random.split(key)
        carry, _ = jax.lax.scan(lambda c, k: step(c, k, False), carry,
                                jax.random.split(steps_key, steps_per_snapshot))
        params = carry[0].params
        ret = sac_loop.evaluate(sac, env, params.actor, eval_key, sc.num_eval_episodes)
        return carry, (params, ret)

    def run(key: jax.Array) -> Snapshots:
        init_key, env_key, warm_key, loop_key = jax.random.split(key, 4)
        example = replay.empty_transition(sac.obs_dim, sac.action_dim)
        carry = (sac.init(init_key), replay.init(example, sc.buffer_capacity), env.reset(env_key))
        if sc.learning_starts:
            carry, _ = jax.lax.scan(lambda c, k: step(c, k, True), carry,
                                    jax.random.split(warm_key, sc.learning_starts))
        carry, (params, returns) = jax.lax.scan(snapshot, carry,
                                                jax.random.split(loop_key, config.num_snapshots))
        env_steps = sc.learning_starts + steps_per_snapshot * jnp.arange(1, config.num_snapshots + 1)
        return Snapshots(params=params, env_steps=env_steps.astype(jnp.int32),
                         eval_return=returns, buffer=carry[1])

    return run


# ---------------------------------------------------------------------------------------------
# Phase 2: model learning over the snapshots
# ---------------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    """obs [N, 3], action [N, 1], next_obs [N, 3] (true dynamics)."""

    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array


def uniform_transitions(key: jax.Array, env: Env, num: int) -> Dataset:
    """``num`` transitions from states uniform over Pendulum's state space (θ ~ U(−π, π),
    θ̇ ~ U(−8, 8)) and torques uniform over the action box, stepped with the true dynamics."""
    theta_key, speed_key, action_key = jax.random.split(key, 3)
    theta = jax.random.uniform(theta_key, (num,), jnp.float32, -jnp.pi, jnp.pi)
    speed = jax.random.uniform(speed_key, (num,), jnp.float32, -PENDULUM_MAX_SPEED, PENDULUM_MAX_SPEED)
    obs = jnp.stack([jnp.cos(theta), jnp.sin(theta), speed], axis=-1)
    low = jnp.asarray(np.asarray(env.action_low, np.float32).reshape(1, env.action_dim))
    high = jnp.asarray(np.asarray(env.action_high, np.float32).reshape(1, env.action_dim))
    action = jax.random.uniform(action_key, (num, env.action_dim), jnp.float32, low, high)
    next_obs = jax.vmap(lambda o, a: env.step(env.state_from_obs(o), a).obs)(obs, action)
    return Dataset(obs=obs, action=action, next_obs=next_obs)


def split_dataset(key: jax.Array, config: ModelLearningConfig, env: Env,
                  buffer: Optional[replay.ReplayBuffer]) -> tuple[Dataset, Dataset]:
    """(train [num_train], held-out [num_held_out]) for one seed: fresh uniform samples, or a
    random split of the first ``buffer.size`` replay rows (static size: the buffer is full up to
    ``sac.total_env_steps`` rows by construction)."""
    if config.data_source == "uniform":
        train_key, held_key = jax.random.split(key)
        return (uniform_transitions(train_key, env, config.num_train),
                uniform_transitions(held_key, env, config.num_held_out))
    if buffer is None:
        raise ValueError("models.data_source = 'replay' needs the SAC replay buffer")
    data = buffer.data
    # Rows past ``size`` are zeros; a permutation of all valid rows keeps shapes static.
    num_valid = buffer.size
    scores = jnp.where(jnp.arange(buffer.capacity) < num_valid,
                       jax.random.uniform(key, (buffer.capacity,)), 2.0)
    order = jnp.argsort(scores)
    train_rows = order[:config.num_train]
    held_rows = order[config.num_train:config.num_train + config.num_held_out]
    pick = lambda rows: Dataset(obs=data.obs[rows], action=data.action[rows], next_obs=data.next_obs[rows])
    return pick(train_rows), pick(held_rows)


def model_init(key: jax.Array, model_type: str, obs_dim: int, action_dim: int, hidden_size: int) -> tuple:
    """Layers ((w [in, out], b [out]), ...), PyTorch nn.Linear default init (paper appendix E.1):
    linear = one layer [obs+action → obs]; mlp = [obs+action → hidden → obs]."""
    inputs = obs_dim + action_dim
    sizes = (inputs, obs_dim) if model_type == "linear" else (inputs, hidden_size, obs_dim)
    return nets.mlp_init(key, sizes)


def model_predict(layers: tuple, obs: jax.Array, action: jax.Array, activation: str = "relu",
                  predict_delta: bool = False) -> jax.Array:
    """Predicted next observation: obs [..., D], action [..., A] → [..., D]."""
    h = nets.mlp_apply(layers, jnp.concatenate([obs, action], axis=-1), activation)
    return obs + h if predict_delta else h


def model_loss_per_sample(loss_index: jax.Array, pred: jax.Array, next_obs: jax.Array, value_fn,
                          grads: jax.Array, regularizer: float = 0.0) -> jax.Array:
    """Training loss of each sample for loss ``LOSSES[loss_index]`` ([] int; a traced index
    keeps one compiled program for all losses, and an unbatched index stays a real branch under
    ``vmap`` over seeds). pred [B, D], next_obs [B, D], value_fn obs [D] → [K],
    grads [K, B, D] (VaGraM's cached gradients of these rows; ignored by the others) → [B]."""
    branches = (
        lambda p, t, g: mse_per_sample(p, t),
        lambda p, t, g: value_aware.vaml_per_sample(value_fn, p, t),
        lambda p, t, g: value_aware.vagram_per_sample(p, t, g, regularizer),
    )
    return jax.lax.switch(loss_index, branches, pred, next_obs, grads)


class Curves(NamedTuple):
    """Held-out metrics, leaves [S, E + 1] per seed (E = evals_per_value_function; column 0 is
    right after the value function changed, before any step on it; column j after j chunks):
    mse: mean_{rows} mean_d (f̂ − s′)²; vaml: mean_{rows} Σ_k (V_k(f̂) − V_k(s′))² under the
    current snapshot; train_loss: [S, E + 1] mean training loss of the chunk (NaN in column 0)."""

    mse: jax.Array
    vaml: jax.Array
    train_loss: jax.Array


def make_model_learning(config: Fig2Config, env: Env, model_type: str):
    """``run_one(loss_index, key, snapshot_params [S, ...], buffer) -> Curves [S, E + 1]`` for
    one seed and loss ``LOSSES[loss_index]`` (pure; ``jax.vmap(run_one, in_axes=(None, 0, None,
    None))`` runs many seeds; the index is traced so one compile serves every loss). ``buffer``
    is only read when ``models.data_source = 'replay'`` (pass None otherwise)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    mc = config.models
    sac = sac_lib.make_sac(config.sac, env)
    optimizer = optax.adam(mc.learning_rate)
    steps_per_eval = mc.steps_per_value_function // mc.evals_per_value_function
    predict = lambda layers, obs, action: model_predict(layers, obs, action, mc.activation, mc.predict_delta)

    def value_fn_of(params: sac_lib.SACParams):
        return lambda s: sac.value(params, s, critics=mc.critics)

    def held_out_metrics(layers, value_fn, held: Dataset):
        pred = predict(layers, held.obs, held.action)
        mse = jnp.mean(mse_per_sample(pred, held.next_obs))
        chunk = min(mc.held_out_chunk, mc.num_held_out)
        num_chunks = -(-mc.num_held_out // chunk)
        pad = num_chunks * chunk - mc.num_held_out
        pad_rows = lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])], axis=0)
        pred_c = pad_rows(pred).reshape((num_chunks, chunk, -1))
        true_c = pad_rows(held.next_obs).reshape((num_chunks, chunk, -1))
        errors = jax.lax.map(lambda pt: value_aware.vaml_per_sample(value_fn, pt[0], pt[1]),
                             (pred_c, true_c)).reshape(-1)[:mc.num_held_out]
        return mse, jnp.mean(errors)

    def run_one(loss_index: jax.Array, key: jax.Array, snapshot_params: sac_lib.SACParams,
                buffer: Optional[replay.ReplayBuffer]) -> Curves:
        data_key, init_key, train_key = jax.random.split(key, 3)
        train, held = split_dataset(data_key, mc, env, buffer)
        layers = model_init(init_key, model_type, env.obs_dim, env.action_dim, mc.hidden_size)
        num_snapshots = jax.tree_util.tree_leaves(snapshot_params)[0].shape[0]

        def per_value_function(carry, inputs):
            layers, opt_state = carry
            params, phase_key = inputs
            value_fn = value_fn_of(params)
            cache = lambda: value_aware.value_gradient_cache(value_fn, train.next_obs,
                                                             mc.clip_percentile).grads
            grads_shape = jax.eval_shape(cache)
            grads_all = jax.lax.cond(  # [K, N, D]; only VaGraM pays for the gradients
                loss_index == LOSSES.index("vagram"), cache,
                lambda: jnp.zeros(grads_shape.shape, grads_shape.dtype))

            def loss_fn(layers, rows):
                pred = predict(layers, train.obs[rows], train.action[rows])
                return jnp.mean(model_loss_per_sample(loss_index, pred, train.next_obs[rows], value_fn,
                                                      grads_all[:, rows], mc.vagram_regularizer))

            update = nets.gradient_update(loss_fn, optimizer)

            def sgd_step(carry, step_key):
                rows = jax.random.randint(step_key, (mc.batch_size,), 0, mc.num_train)
                layers, opt_state, value = update(*carry, rows)
                return (layers, opt_state), value

            def chunk(carry, chunk_key):
                carry, losses = jax.lax.scan(sgd_step, carry, jax.random.split(chunk_key, steps_per_eval))
                mse, vaml = held_out_metrics(carry[0], value_fn, held)
                return carry, (mse, vaml, jnp.mean(losses))

            mse0, vaml0 = held_out_metrics(layers, value_fn, held)
            carry, (mse, vaml, train_loss) = jax.lax.scan(
                chunk, (layers, opt_state), jax.random.split(phase_key, mc.evals_per_value_function))
            prepend = lambda first, rest: jnp.concatenate([first[None], rest], axis=0)
            return carry, (prepend(mse0, mse), prepend(vaml0, vaml),
                           prepend(jnp.asarray(jnp.nan, jnp.float32), train_loss))

        _, (mse, vaml, train_loss) = jax.lax.scan(
            per_value_function, (layers, optimizer.init(layers)),
            (snapshot_params, jax.random.split(train_key, num_snapshots)))
        return Curves(mse=mse, vaml=vaml, train_loss=train_loss)

    return run_one


def model_seed_keys(config: ModelLearningConfig) -> jax.Array:
    """[num_seeds] keys fold_in(key(seed), i): seed i's data and init do not depend on how many
    seeds run together."""
    root = jax.random.key(config.seed)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(config.num_seeds))


# ---------------------------------------------------------------------------------------------
# Experiment: figure + JSON
# ---------------------------------------------------------------------------------------------


def _timed(fn, *args):
    """(result, compile seconds, run seconds) of a jitted fn on args."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_s, time.perf_counter() - start


def _finite_list(x) -> list:
    """Nested list of floats (``json_safe`` turns NaN/inf into None)."""
    return np.asarray(x, np.float64).tolist()


def run_fig2(config: Fig2Config, out_dir) -> dict:
    """Runs both phases, writes ``fig2.png`` and ``fig2.json`` into ``out_dir``, returns the
    JSON dict."""
    from mismatch_jax.envs import registry

    env = registry.make(config.sac.env)
    mc = config.models
    sac_run = make_sac_snapshots(config, env)
    snapshots, sac_compile_s, sac_run_s = _timed(sac_run, jax.random.key(config.sac.seed))
    print(f"SAC: {config.num_snapshots} snapshots, compile {sac_compile_s:.1f}s run {sac_run_s:.1f}s, "
          f"returns {np.round(np.asarray(snapshots.eval_return), 1).tolist()}", flush=True)
    keys = model_seed_keys(mc)
    buffer = snapshots.buffer if mc.data_source == "replay" else None
    results, timings = {}, {"sac": {"compile_s": sac_compile_s, "run_s": sac_run_s}}
    for model_type in mc.model_types:
        results[model_type] = {}
        batched = jax.vmap(make_model_learning(config, env, model_type), in_axes=(None, 0, None, None))
        start = time.perf_counter()
        compiled = jax.jit(batched).lower(jnp.int32(0), keys, snapshots.params, buffer).compile()
        compile_s = time.perf_counter() - start
        timings[f"{model_type}/compile_s"] = compile_s
        for loss in mc.losses:
            start = time.perf_counter()
            curves = jax.block_until_ready(compiled(jnp.int32(LOSSES.index(loss)), keys,
                                                    snapshots.params, buffer))
            run_s = time.perf_counter() - start
            curves = {k: np.asarray(v) for k, v in curves._asdict().items()}
            results[model_type][loss] = curves
            timings[f"{model_type}/{loss}/run_s"] = run_s
            summ = summarize_curves(curves)
            print(f"{model_type:6s} {loss:6s}: held-out MSE first {summ['mse']['first']:.4g} → final "
                  f"{summ['mse']['final']:.4g} (max {summ['mse']['max']:.4g}); VAML first "
                  f"{summ['vaml']['first']:.4g} → final {summ['vaml']['final']:.4g}  "
                  f"[compile {compile_s:.1f}s, run {run_s:.1f}s]", flush=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_fig2(out / "fig2.png", config, results)
    data = {
        "experiment": "vagram_fig2",
        "device": jax.devices()[0].device_kind,
        "config": to_dict(config),
        "sac": {"env_steps": np.asarray(snapshots.env_steps).tolist(),
                "eval_return": _finite_list(snapshots.eval_return)},
        "curve_layout": "[seed][value function][eval]: eval 0 right after the value function "
                        "changed, eval j after j·steps_per_value_function/evals_per_value_function steps",
        "summary": {mt: {loss: summarize_curves(results[mt][loss]) for loss in mc.losses} for mt in mc.model_types},
        "curves": {mt: {loss: {k: _finite_list(v) for k, v in results[mt][loss].items() if k != "train_loss"}
                        for loss in mc.losses} for mt in mc.model_types},
        "timings": timings,
    }
    write_json(out / "fig2.json", data, indent=None)
    return json_safe(data)
