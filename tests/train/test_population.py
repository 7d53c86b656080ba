"""Tests of mismatch_jax.train.population: reference equivalence, known-value learning, masking,
early stopping, kept epochs, divergence isolation, chunk invariance, input validation."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mismatch_jax.data import TransitionData
from mismatch_jax.models import core as models
from mismatch_jax.train import (
    TrainConfig,
    TrainHParams,
    make_optimizer,
    make_train,
    make_train_fn,
    model_keys,
)

OBS_DIM, ACT_DIM = 3, 1
TINY = models.ModelConfig("P", OBS_DIM, ACT_DIM, hidden_size=8, num_hidden_layers=1)
TINY_PE = dataclasses.replace(TINY, kind="PE", ensemble_size=2)
# Shared configurations: compiling dominates this file's run time, so tests reuse a few programs.
CFG_A = TrainConfig(model=TINY, num_epochs=3, batch_size=16, keep_best=False, keep_epochs=(0, 1, 3))
CFG_B = dataclasses.replace(CFG_A, num_epochs=1, keep_epochs=(0, 1))
CFG_PE = TrainConfig(model=TINY_PE, num_epochs=2, batch_size=16, keep_best=False)


@functools.lru_cache(maxsize=None)
def trainer(config: TrainConfig):
    return make_train(config)


def linear_system(rows, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(OBS_DIM, OBS_DIM)).astype(np.float32) * 0.3
    b = rng.normal(size=(ACT_DIM, OBS_DIM)).astype(np.float32) * 0.3
    obs = rng.normal(size=(rows, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(rows, ACT_DIM)).astype(np.float32)
    nxt = obs + obs @ a + act @ b + noise * rng.normal(size=(rows, OBS_DIM)).astype(np.float32)
    return obs, act, nxt


def small_data(rows=60, capacity=64, seed=0, num=1):
    sets = []
    for i in range(num):
        obs, act, nxt = linear_system(rows, seed=seed + i)
        sets.append(TransitionData.from_arrays(jax.random.key(100 + i), obs, act, nxt,
                                               validation_fraction=0.25, capacity=capacity))
    return TransitionData.stack(sets)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
                 a, b)


def take(tree, idx):
    idx = idx if isinstance(idx, tuple) else np.asarray(idx)
    return jax.tree.map(lambda x: x[idx], tree)


# ------------------------------------------------------------------ reference equivalence --


def reference_train_one(config: TrainConfig, key, data: TransitionData, lr, wd, dataset=0):
    """Plain Python loop over epochs and minibatches for one P model (no early stopping), using
    ``models.model_loss`` — the reference the scan implementation must reproduce."""
    mcfg = config.model
    init_key, _, order_key = jax.random.split(key, 3)
    params = models.init(init_key, mcfg)
    train_mask = np.asarray(data.train_mask[dataset])
    rows_sorted = np.argsort(~train_mask, kind="stable")
    n_train = int(train_mask.sum())
    obs, act, nxt = (np.asarray(a[dataset]) for a in (data.obs, data.action, data.next_obs))
    x_all, y_all = models.make_targets(mcfg, obs, act, nxt)
    norm = models.fit_normalizer(mcfg, x_all, y_all, jnp.asarray(train_mask))
    opt_state = make_optimizer(config, lr, wd).init(params)
    capacity = train_mask.shape[0]
    losses = []

    @jax.jit
    def step(params, opt_state, x, y, lr, wd):
        loss, grads = jax.value_and_grad(
            lambda p: models.model_loss(mcfg, p, norm, x, y, None, config.logvar_bound_coef))(params)
        updates, opt_state = make_optimizer(config, lr, wd).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for epoch in range(config.num_epochs):
        u = np.asarray(jax.random.uniform(jax.random.fold_in(order_key, epoch), (capacity,)))
        u = np.where(np.arange(capacity) < n_train, u, 2.0)
        order = np.argsort(u, kind="stable")
        epoch_losses = []
        for start in range(0, n_train, config.batch_size):
            rows = rows_sorted[order[start:min(start + config.batch_size, n_train)]]
            params, opt_state, loss = step(params, opt_state, x_all[rows], y_all[rows], lr, wd)
            epoch_losses.append(float(loss))
        losses.append(np.mean(epoch_losses))
    return params, np.asarray(losses)


def test_scan_matches_python_loop_reference():
    data = small_data(rows=50, capacity=64)
    cfg = CFG_A
    keys = model_keys(jax.random.key(0), 0, 2)
    lrs, wds = np.array([1e-2, 3e-3], np.float32), np.array([1e-3, 0.0], np.float32)
    res = trainer(cfg)(keys, None, data, TrainHParams.population(2, lrs, wds))
    for n in range(2):
        ref_params, ref_losses = reference_train_one(cfg, keys[n], data, lrs[n], wds[n])
        assert_trees_close(take(res.params, n), ref_params, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(np.asarray(res.metrics.train_loss[n]), ref_losses, rtol=2e-5)


@pytest.mark.slow  # the un-jitted path compiles every scan/cond body eagerly (~1 min)
def test_jit_matches_no_jit():
    data = small_data(num=2)
    keys = model_keys(jax.random.key(1), 0, 2)
    hp = TrainHParams.population(2, learning_rate=jnp.array([1e-3, 1e-2]))
    ds = jnp.array([1, 0])
    with_jit = trainer(CFG_PE)(keys, None, data, hp, ds)
    without = make_train(CFG_PE, jit=False)(keys, None, data, hp, ds)
    assert_trees_close(with_jit, without, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ learning ---------------


def test_population_learns_linear_system():
    obs, act, nxt = linear_system(600, seed=3)
    data = TransitionData.from_arrays(jax.random.key(0), obs, act, nxt, validation_fraction=0.2)
    mcfg = models.ModelConfig("PE", OBS_DIM, ACT_DIM, hidden_size=32, num_hidden_layers=2, ensemble_size=2)
    cfg = TrainConfig(model=mcfg, num_epochs=40, batch_size=32)
    res = make_train(cfg)(model_keys(jax.random.key(0), 0, 3), None, data,
                          TrainHParams.population(3, learning_rate=jnp.array([3e-3, 2e-3, 1e-3])))
    mse = np.asarray(res.metrics.val_mse)
    assert np.all(mse[:, -1] < mse[:, 0] / 100), mse[:, [0, -1]]
    ll = np.asarray(res.metrics.val_ll)
    assert np.all(ll[:, -1] > ll[:, 0] + 5.0)  # nats per transition
    assert not np.any(np.asarray(res.diverged))
    assert res.metrics.val_mse.shape == (3, 40) and res.best_epoch.shape == (3,)


def test_validation_metrics_match_model_functions_and_normaliser():
    data = small_data(num=2)
    cfg = CFG_PE
    keys = model_keys(jax.random.key(2), 0, 2)
    ds = np.array([1, 0])
    res = trainer(cfg)(keys, None, data, TrainHParams.population(2), jnp.asarray(ds))
    for n in range(2):
        d = ds[n]
        val = np.asarray(data.val_mask[d])
        train = np.asarray(data.train_mask[d])
        obs, act, nxt = (np.asarray(a[d]) for a in (data.obs, data.action, data.next_obs))
        p, nm = take(res.params, n), take(res.normalizer, n)
        ll = models.one_step_log_likelihood(cfg.model, p, nm, obs[val], act[val], nxt[val])
        mse = models.one_step_mse(cfg.model, p, nm, obs[val], act[val], nxt[val])
        np.testing.assert_allclose(res.metrics.val_ll[n, -1], ll, rtol=1e-5)
        np.testing.assert_allclose(res.metrics.val_mse[n, -1], mse, rtol=1e-5)
        x, y = models.make_targets(cfg.model, obs[train], act[train], nxt[train])
        assert_trees_close(nm, models.fit_normalizer(cfg.model, x, y), rtol=1e-5, atol=1e-6)


def test_rows_outside_the_training_mask_are_never_used():
    """Changing validation and padding rows leaves the trained weights unchanged (bootstrap too)."""
    data = small_data(rows=50, capacity=64, num=2)
    unused = ~np.asarray(data.train_mask)
    noise = np.random.default_rng(0).normal(size=data.next_obs.shape).astype(np.float32)
    other = data.replace(next_obs=np.where(unused[..., None], noise * 50, data.next_obs),
                         obs=np.where(unused[..., None], noise, data.obs))
    train = trainer(CFG_PE)
    keys = model_keys(jax.random.key(3), 0, 2)
    ds = jnp.array([0, 1])
    a = train(keys, None, data, TrainHParams.population(2), ds)
    b = train(keys, None, other, TrainHParams.population(2), ds)
    assert_trees_close(a.params, b.params, rtol=0, atol=0)
    assert not np.allclose(a.metrics.val_mse, b.metrics.val_mse)


# ------------------------------------------------------------------ keys and chunks --------


@pytest.mark.slow  # ~25 s; chunk-size invariance of the same trainer is checked in the default tier by tests/sweep/test_runner.py
def test_chunks_equal_one_call():
    data = small_data(rows=40, capacity=48, num=2)
    cfg = TrainConfig(model=TINY, num_epochs=3, batch_size=16, patience=1, keep_epochs=(1, 2, 3))
    train = make_train(cfg)
    root = jax.random.key(7)
    n_total, chunk = 256, 64
    lrs = jnp.asarray(np.geomspace(1e-4, 3e-2, n_total), jnp.float32)
    ds = jnp.arange(n_total) % 2
    whole = train(model_keys(root, 0, n_total), None, data, TrainHParams.population(n_total, lrs), ds)
    parts = [train(model_keys(root, s, chunk), None, data,
                   TrainHParams.population(chunk, lrs[s:s + chunk]), ds[s:s + chunk])
             for s in range(0, n_total, chunk)]
    joined = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
    assert_trees_close(whole, joined, rtol=1e-6, atol=1e-7)
    # keep_best: the returned parameters are those kept after the best epoch.
    best = np.asarray(whole.best_epoch)
    trained = np.asarray(whole.epochs_trained)
    assert (best > 0).any() and (trained < 3).any()
    for n in range(0, n_total, 17):  # best epoch's parameters, or the last if none improved
        kept = int(best[n]) - 1 if best[n] > 0 else max(int(trained[n]), 1) - 1
        assert_trees_close(take(whole.params, n), take(whole.kept_params, (n, kept)), rtol=0, atol=0)


def test_growing_buffer_warm_start_does_not_retrace():
    """PETS-like use: continue from the previous parameters on a grown buffer of the same capacity
    — one trace for both calls."""
    train_fn = make_train_fn(CFG_B)
    traces = []

    def core(*args):
        traces.append(1)
        return train_fn(*args)

    jitted = jax.jit(core)
    keys = model_keys(jax.random.key(0), 0, 2)
    hp = TrainHParams.population(2)
    ds = jnp.zeros(2, jnp.int32)
    small = small_data(rows=20, capacity=64)
    large = small_data(rows=60, capacity=64)
    params0 = jax.vmap(lambda k: models.init(k, TINY))(keys)
    first = jitted(keys, params0, small, hp, ds)
    second = jitted(keys, first.params, large, hp, ds)
    assert len(traces) == 1
    assert_trees_close(take(first.kept_params, (slice(None), 0)), params0, rtol=0, atol=0)
    assert_trees_close(take(second.kept_params, (slice(None), 0)), first.params, rtol=0, atol=0)
    assert not np.allclose(jax.tree.leaves(second.params)[0], jax.tree.leaves(first.params)[0])
    assert np.all(np.isfinite(second.metrics.val_mse))


# ------------------------------------------------------------------ epochs -----------------


def test_kept_params_equal_separate_shorter_runs():
    data = small_data()
    keys = model_keys(jax.random.key(4), 0, 2)
    hp = TrainHParams.population(2, learning_rate=jnp.array([1e-2, 1e-3]))
    res = trainer(CFG_A)(keys, None, data, hp)  # keep_epochs (0, 1, 3) of 3
    assert jax.tree.leaves(res.kept_params)[0].shape[:2] == (2, 3)
    init = jax.vmap(lambda k: models.init(jax.random.split(k, 3)[0], TINY))(keys)
    assert_trees_close(take(res.kept_params, (slice(None), 0)), init, rtol=0, atol=0)
    short = trainer(CFG_B)(keys, None, data, hp)  # 1 epoch
    assert_trees_close(take(res.kept_params, (slice(None), 1)), short.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(res.metrics.val_nll[:, :1], short.metrics.val_nll, rtol=1e-6)
    assert_trees_close(take(res.kept_params, (slice(None), 2)), res.params, rtol=0, atol=0)


def test_early_stopping_freezes_params():
    """Model 1 learns from pure-noise targets: its validation score stalls, it stops, and from then
    on its parameters (kept after every epoch) and metrics stay frozen."""
    obs, act, nxt = linear_system(60)
    noise = np.random.default_rng(1).normal(size=nxt.shape).astype(np.float32) * 3
    learnable = TransitionData.from_arrays(jax.random.key(0), obs, act, nxt, validation_fraction=0.25)
    noisy = TransitionData.from_arrays(jax.random.key(0), obs, act, noise, validation_fraction=0.25)
    data = TransitionData.stack([learnable, noisy])
    keys = model_keys(jax.random.key(8), 0, 2)
    hp = TrainHParams.population(2, learning_rate=jnp.array([3e-3, 3e-2]))
    epochs = 12
    cfg = TrainConfig(model=TINY, num_epochs=epochs, batch_size=16, patience=2, keep_best=True,
                      keep_epochs=tuple(range(epochs + 1)))
    res = make_train(cfg)(keys, None, data, hp, jnp.array([0, 1]))
    active = np.asarray(res.metrics.active)
    trained = np.asarray(res.epochs_trained)
    assert trained[1] < epochs, "the noise model should have stopped early"
    for n in range(2):
        stop = int(trained[n])
        assert active[n, :stop].all() and not active[n, stop:].any()  # a prefix of True
        best = int(res.best_epoch[n])
        assert 0 < best <= stop and (stop == epochs or stop - best == cfg.patience)
        assert_trees_close(take(res.params, n), take(res.kept_params, (n, best)), rtol=0, atol=0)
        for e in range(stop + 1, epochs + 1):  # frozen after stopping
            assert_trees_close(take(res.kept_params, (n, e)), take(res.kept_params, (n, stop)), rtol=0, atol=0)
        np.testing.assert_array_equal(res.metrics.val_mse[n, stop:], res.metrics.val_mse[n, stop - 1])
        np.testing.assert_array_equal(res.metrics.train_loss[n, stop:], res.metrics.train_loss[n, stop - 1])
    # While active, parameters do change from epoch to epoch.
    assert not np.allclose(res.kept_params.layers[0][0][1, 1], res.kept_params.layers[0][0][1, 0])


# ------------------------------------------------------------------ divergence -------------


def test_diverged_model_is_flagged_frozen_and_isolated():
    data = small_data()
    keys = model_keys(jax.random.key(10), 0, 2)
    train = trainer(CFG_A)
    res = train(keys, None, data, TrainHParams.population(2, jnp.array([1e-3, 1e30])))
    ref = train(keys, None, data, TrainHParams.population(2, jnp.array([1e-3, 3e-3])))
    np.testing.assert_array_equal(np.asarray(res.diverged), [False, True])
    assert not np.asarray(ref.diverged).any()
    assert np.all(np.isfinite(jax.tree.leaves(jax.tree.map(jnp.sum, res.params))))
    assert not np.asarray(res.metrics.active)[1, -1] and np.asarray(res.metrics.active)[1, 0]
    assert_trees_close(take(res, 0), take(ref, 0), rtol=0, atol=0)  # model 0 never sees model 1
    # frozen at the last finite parameters: the epoch-1 kept parameters are the final ones.
    assert_trees_close(take(res.params, 1), take(res.kept_params, (1, 1)), rtol=0, atol=0)


# ------------------------------------------------------------------ validation -------------


@pytest.mark.unit
def test_nan_in_data_raises_naming_the_array():
    obs, act, nxt = linear_system(20)
    nxt[3, 1] = np.nan
    with pytest.raises(ValueError, match="next_obs"):
        TransitionData.from_arrays(jax.random.key(0), obs, act, nxt)
    data = small_data()
    bad = data.replace(action=np.asarray(data.action).copy())
    bad.action[0, 5, 0] = np.inf
    train = trainer(CFG_B)
    with pytest.raises(ValueError, match="action"):
        train(model_keys(jax.random.key(0), 0, 1), None, bad, TrainHParams.population(1))


@pytest.mark.unit
def test_bad_shapes_raise():
    obs, act, nxt = linear_system(20)
    with pytest.raises(ValueError, match="rows"):
        TransitionData.from_arrays(jax.random.key(0), obs, act[:10], nxt)
    data = small_data()
    train = trainer(CFG_B)
    keys = model_keys(jax.random.key(0), 0, 2)
    with pytest.raises(ValueError, match="reward"):
        train(keys, None, data.replace(reward=data.reward[:, :5]), TrainHParams.population(2))
    with pytest.raises(ValueError, match="learning_rate"):
        train(keys, None, data, TrainHParams.population(3))
    with pytest.raises(ValueError, match="dataset_index"):
        train(keys, None, data, TrainHParams.population(2), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="typed keys"):
        train(jax.random.split(jax.random.PRNGKey(0), 2), None, data, TrainHParams.population(2))
    wrong = models.ModelConfig("P", OBS_DIM + 1, ACT_DIM, hidden_size=8, num_hidden_layers=1)
    with pytest.raises(ValueError, match="obs_dim"):
        make_train(TrainConfig(model=wrong, num_epochs=1))(keys, None, data, TrainHParams.population(2))
    with pytest.raises(ValueError, match="keep_epochs"):
        TrainConfig(model=TINY, num_epochs=3, keep_epochs=(4,))
    with pytest.raises(ValueError, match="weight_decay_mode"):
        TrainConfig(model=TINY, weight_decay_mode="l1")


@pytest.mark.slow
def test_two_host_devices_sharded_equals_single(tmp_path):
    """The population over 2 host devices gives the same numbers, both with sharded inputs to the
    one-program trainer (GSPMD) and with ``make_train(devices=...)`` (one program per device block)
    (subprocess: XLA_FLAGS must be set before jax starts)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "shard.py"
    script.write_text(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.train.test_population import small_data, TINY\n"
        "from mismatch_jax.train import *\n"
        "data = small_data(num=2)\n"
        "cfg = TrainConfig(model=TINY, num_epochs=2, batch_size=16, patience=1)\n"
        "train = make_train(cfg)\n"
        "keys = model_keys(jax.random.key(0), 0, 8); hp = TrainHParams.population(8); ds = jnp.arange(8) %% 2\n"
        "one = train(keys, None, data, hp, ds)\n"
        "sh = NamedSharding(Mesh(np.asarray(jax.devices()), ('pop',)), P('pop'))\n"
        "two = train(*jax.device_put((keys,), sh), None, data, jax.device_put(hp, sh), jax.device_put(ds, sh))\n"
        "assert len(jax.devices()) == 2\n"
        "jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), one, two)\n"
        "blocks = make_train(cfg, devices=jax.devices())(keys, None, data, hp, ds)\n"
        "assert len(blocks.params.layers[0][0].sharding.device_set) == 2\n"
        "jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, blocks)\n"
        "print('ok')\n" % os.getcwd()
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_pluggable_loss_equal_to_the_builtin_reproduces_it_and_sees_original_units():
    """A per_sample_loss computing the PE NLL by hand gives the built-in training bit for bit
    (up to float rounding); its LossInputs carry each member's bootstrap rows, the predicted next
    state in original units and the aux rows, and loss_context reaches it."""
    data = small_data()
    aux = jnp.broadcast_to(jnp.arange(data.capacity, dtype=jnp.float32)[None, :, None], (1, data.capacity, 1))
    data_aux = data.replace(aux=aux)
    seen = {}

    def nll(inputs, context):
        seen["shapes"] = (inputs.obs.shape, inputs.reward.shape, inputs.aux.shape, inputs.pred_next_obs.shape)
        return context * models.gaussian_nll_per_sample(inputs.mean, inputs.logvar, inputs.target)

    builtin = make_train(CFG_PE)
    custom = make_train(CFG_PE, per_sample_loss=nll)
    keys = model_keys(jax.random.key(0), 0, 2)
    hp = TrainHParams.population(2)
    a = builtin(keys, None, data, hp)
    b = custom(keys, None, data_aux, hp, loss_context=jnp.float32(1.0))
    assert_trees_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    e = CFG_PE.model.ensemble_size
    assert seen["shapes"] == ((e, 16, OBS_DIM), (e, 16), (e, 16, 1), (e, 16, OBS_DIM))
    # A zero context zeroes the main loss: only the log-variance bound term moves the weights.
    c = custom(keys, None, data_aux, hp, loss_context=jnp.float32(0.0))
    assert not np.allclose(np.asarray(c.params.layers[0][0]), np.asarray(a.params.layers[0][0]))


def test_context_step_runs_before_every_trained_minibatch_and_its_context_reaches_the_loss():
    """context_step sees the population's current parameters and runs once per minibatch step that
    trains (45 training rows, batch 16, 2 epochs → 3 × 2 = 6 steps); the context it returns is
    the one the loss sees next and the trainer returns. An identity step changes nothing."""
    data = small_data()  # 60 rows, 25 % validation: 45 training rows
    cfg = TrainConfig(model=dataclasses.replace(TINY, kind="D"), num_epochs=2, batch_size=16, keep_best=False)
    keys = model_keys(jax.random.key(2), 0, 1)
    hp = TrainHParams.population(1)

    def weighted_mse(inputs, context):
        return context[0] * models.mse_per_sample(inputs.mean, inputs.target)

    def count_and_halve(context, params, normalizer):
        assert jax.tree.leaves(params)[0].shape[0] == 1  # the population's [N] parameters
        return context[0] * 0.5, context[1] + 1

    start = (jnp.float32(1.0), jnp.int32(0))
    run = lambda **kw: jax.jit(make_train_fn(cfg, weighted_mse, **kw))(keys, None, data, hp,
                                                                       jnp.zeros(1, jnp.int32), start)
    counted = run(context_step=count_and_halve)
    assert int(counted.loss_context[1]) == 6
    np.testing.assert_allclose(float(counted.loss_context[0]), 0.5 ** 6)
    same = run(context_step=lambda c, p, n: c)
    plain = run()
    assert plain.loss_context is None
    assert_trees_close(same.params, plain.params, rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(counted.params.layers[0][0]), np.asarray(plain.params.layers[0][0]))


def test_pluggable_loss_pred_next_obs_is_the_model_prediction_in_state_units():
    """An MSE on LossInputs.pred_next_obs − next_obs, divided by the normaliser's target scale,
    is exactly the built-in normalised MSE of a D model, so both train to the same weights."""
    cfg = TrainConfig(model=dataclasses.replace(TINY, kind="D"), num_epochs=2, batch_size=16, keep_best=False)
    data = small_data()

    def state_unit_mse(inputs, context):
        del context
        scaled = (inputs.pred_next_obs - inputs.next_obs) / inputs.target_std[None, None]
        return jnp.mean(scaled**2, axis=-1)

    keys = model_keys(jax.random.key(1), 0, 2)
    hp = TrainHParams.population(2)
    a = make_train(cfg)(keys, None, data, hp)
    b = make_train(cfg, per_sample_loss=state_unit_mse)(keys, None, data, hp)
    assert_trees_close(a.params, b.params, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # ~30 s of compile; the MBPO tests exercise row_bound in the default tier
def test_row_bound_is_only_a_speed_hint():
    """Any row_bound ≥ the datasets' row counts gives the same result as none, also under an
    outer vmap (where it keeps the slot-skipping conds unbatched)."""
    data = small_data(rows=40, capacity=64)
    keys = model_keys(jax.random.key(2), 0, 2)
    hp = TrainHParams.population(2)
    train = make_train(CFG_B)
    plain = train(keys, None, data, hp)
    bounded = train(keys, None, data, hp, row_bound=jnp.int32(40))
    assert_trees_close(plain.params, bounded.params, rtol=0, atol=0)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), data)
    train_fn = make_train_fn(CFG_B)
    outer = jax.vmap(lambda d: train_fn(keys, None, d, hp, jnp.zeros(2, jnp.int32), None, jnp.int32(40)))(stacked)
    assert_trees_close(jax.tree.map(lambda a: a[1], outer.params), plain.params, rtol=1e-6, atol=1e-6)


def test_weighted_validation_scores_only_the_weighted_rows():
    """ω on validation rows only (training untouched): the weighted val_nll equals the unweighted
    val_nll of a dataset whose zero-ω rows are not validation rows; all-ones ω is bit-identical."""
    data = small_data(num=1)
    val = np.asarray(data.val_mask[0])
    val_rows = np.flatnonzero(val)
    dropped = val_rows[: len(val_rows) // 2]
    weight = np.ones_like(np.asarray(data.weight))
    weight[0, dropped] = 0.0
    weighted_data = data.replace(weight=jnp.asarray(weight))
    masked = val.copy()
    masked[dropped] = False
    masked_data = data.replace(val_mask=jnp.asarray(masked[None]))
    cfg = dataclasses.replace(CFG_B, weighted_validation=True)
    keys, hp, ds = model_keys(jax.random.key(5), 0, 1), TrainHParams.population(1), jnp.zeros(1, jnp.int32)
    weighted = trainer(cfg)(keys, None, weighted_data, hp, ds)
    reference = trainer(CFG_B)(keys, None, masked_data, hp, ds)
    np.testing.assert_allclose(weighted.metrics.val_nll, reference.metrics.val_nll, rtol=1e-5)
    assert_trees_close(weighted.params, reference.params, rtol=0, atol=0)  # training rows untouched
    ones = trainer(cfg)(keys, None, data, hp, ds)
    plain = trainer(CFG_B)(keys, None, data, hp, ds)
    np.testing.assert_array_equal(ones.metrics.val_nll, plain.metrics.val_nll)
