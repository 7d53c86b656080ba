"""Datasets: true-dynamics next states, grid layout, distances vs brute force, cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax import data, envs


@pytest.fixture(scope="module")
def env():
    return envs.make("cartpole_balance")


def test_grid_covers_box_and_steps_true_dynamics(env):
    ds = data.grid_dataset(jax.random.key(0), env, 3, validation_fraction=0.2)
    assert ds.size == 3**5
    low, high = data.DEFAULT_BOXES["cartpole_balance"]
    np.testing.assert_allclose(np.asarray(ds.obs).min(0), low[:4], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ds.action).max(0), high[4:], rtol=1e-6)
    i = 17
    ref = env.step(env.state_from_obs(ds.obs[i]), ds.action[i])
    np.testing.assert_allclose(ds.next_obs[i], ref.obs, rtol=1e-6, atol=1e-7)
    assert int(ds.is_validation.sum()) == round(0.2 * ds.size)
    assert ds.train().size + ds.validation().size == ds.size


def test_sampled_in_box_and_deterministic(env):
    a = data.sampled_dataset(jax.random.key(3), env, 500)
    b = data.sampled_dataset(jax.random.key(3), env, 500)
    np.testing.assert_array_equal(a.obs, b.obs)
    low, high = data.DEFAULT_BOXES["cartpole_balance"]
    pts = np.concatenate([a.obs, a.action], 1)
    assert (pts >= np.asarray(low, np.float32)).all() and (pts <= np.asarray(high, np.float32)).all()


@pytest.mark.unit
def test_min_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    pts, ref = rng.normal(size=(1000, 5)), rng.normal(size=(37, 5))
    scale = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    brute = np.sqrt((((pts[:, None] - ref[None]) / scale) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(data.min_distance(pts, ref, chunk_size=128, scale=scale), brute, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="share d"):
        data.min_distance(pts, ref[:, :3])


def test_nan_rejected_and_cache_roundtrip(env, tmp_path):
    ds = data.sampled_dataset(jax.random.key(1), env, 50)
    bad = ds.replace(next_obs=ds.next_obs.at[3, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="next_obs has 1 rows with NaN"):
        bad.check()
    spec = {"env": "cartpole_balance", "kind": "sampled", "n": 50, "seed": 1}
    calls = []
    first = data.cached(tmp_path, spec, lambda: calls.append(1) or ds)
    again = data.cached(tmp_path, spec, lambda: calls.append(1) or ds)
    assert calls == [1]
    np.testing.assert_array_equal(first.next_obs, again.next_obs)
    with pytest.raises(ValueError, match="different spec"):
        data.load(next(tmp_path.glob("*.npz")), {**spec, "n": 51})


@pytest.mark.unit
def test_unknown_box_is_clear():
    class Fake:
        name, obs_dim, action_dim = "nothing", 2, 1
    with pytest.raises(ValueError, match="no default state-action box"):
        data.datasets._box(Fake(), None)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(data.DEFAULT_BOXES))
def test_default_boxes_fit_their_envs(name):
    env = envs.make(name)
    low, high = data.DEFAULT_BOXES[name]
    assert len(low) == len(high) == env.obs_dim + env.action_dim
