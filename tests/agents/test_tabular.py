"""Tabular MnM / VMBPO / Q-learning: acceptance (3-state choices, bounds on every iteration,
optimism, low-resolution model), NumPy reference equivalence, vmap/jit consistency."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.agents import tabular as A
from mismatch_jax.agents import tabular_measures as M
from mismatch_jax.envs import tabular as T
from tabular_reference import run_numpy


@pytest.fixture(scope="module")
def grid():
    return T.gridworld()


@pytest.mark.unit
def test_three_state_acceptance():
    mdp = T.three_state()
    chosen = {}
    for method in ("mnm", "q_learning", "vmbpo"):
        res = A.run(method, mdp, jax.random.key(0), num_iters=200, mode="exact")
        chosen[method] = (int(np.argmax(np.asarray(res.policy[1]))),
                          float(res.expected_return[-1]))
    assert chosen["mnm"][0] == 0 and chosen["q_learning"][0] == 0  # safe left
    assert chosen["vmbpo"][0] == 1  # windy right
    assert chosen["mnm"][1] == pytest.approx(451.0, rel=1e-4)
    assert chosen["vmbpo"][1] == pytest.approx(320.3448, rel=1e-4)


@pytest.mark.parametrize("kl_coef", [1.0, 0.9])
def test_bounds_every_iteration_exact(grid, kl_coef):
    res = A.run("mnm", grid, jax.random.key(0), num_iters=40, mode="exact", kl_coef=kl_coef)
    lower, log_ret, upper = (np.asarray(x) for x in (res.objective, res.log_expected_return,
                                                     res.vmbpo_bound))
    assert np.all(np.isfinite(lower))
    assert np.all(lower <= log_ret + 1e-5)
    assert np.all(upper >= log_ret - 1e-5)
    np.testing.assert_allclose(res.mnm_bound, res.objective)
    # MnM converges to the optimal policy of the true MDP here.
    _, optimal = M.value_iteration(grid)
    assert float(res.expected_return[-1]) == pytest.approx(
        float(M.expected_return(grid, optimal)), rel=1e-4)


@pytest.mark.slow  # ~18 s; the exact-model bounds run in the default tier
def test_bounds_every_iteration_sampled_all_methods(grid):
    keys = jax.random.split(jax.random.key(1), 3)
    for method in A.METHODS:
        fn = jax.jit(jax.vmap(A.make_run(method, grid, num_iters=25), in_axes=(None, 0, None)))
        res = fn(grid, keys, A.TabularHParams())
        log_ret = np.asarray(res.log_expected_return)
        assert np.all(np.asarray(res.mnm_bound) <= log_ret + 1e-5), method
        assert np.all(np.asarray(res.vmbpo_bound) >= log_ret - 1e-5), method
        assert res.policy.shape == (3, 100, 4) and res.q.shape == (3, 100, 4, 100)
        np.testing.assert_allclose(np.asarray(res.q).sum(-1), 1.0, atol=1e-5)


def test_mnm_dynamics_are_optimistic(grid):
    res = A.run("mnm", grid, jax.random.key(0), num_iters=40, mode="exact")
    assert float(M.optimism(grid, res.q)) > 0.02
    assert float(M.optimism(grid, grid.p)) == pytest.approx(0.0, abs=1e-6)
    # Per state: the noise mass moved towards the goal is positive for nearly every state.
    coords = np.asarray(grid.coords)
    dist = np.abs(coords - coords[99]).sum(1)
    closer = (dist[None, :] < dist[:, None]).astype(np.float64)
    gain = np.einsum("sat,st->s", np.asarray(res.q) - np.asarray(grid.p), closer)
    assert np.mean(gain[:99] > 0) > 0.9


def test_optimistic_model_is_best_response():
    mdp = T.gridworld(size=4)
    values = jax.random.normal(jax.random.key(0), (16,))
    kappa = 1.0

    def per_sa(q):
        kl = M.kl_divergence(q, mdp.p)
        return -kappa * kl + mdp.gamma * jnp.einsum("sat,t->sa", q, values)

    best = M.optimistic_model(mdp.p, values, mdp.gamma, kappa)
    for seed in range(3):
        noise = jax.random.uniform(jax.random.key(seed + 1), mdp.p.shape)
        other = mdp.p * noise
        other = other / other.sum(-1, keepdims=True)
        assert np.all(np.asarray(per_sa(best)) >= np.asarray(per_sa(other)) - 1e-5)


@pytest.mark.parametrize("method", ["mnm", "vmbpo", "q_learning", "mnm_no_log"])
def test_exact_mode_matches_numpy_reference(method):
    mdp = T.gridworld(size=5)
    res = A.run(method, mdp, jax.random.key(0), num_iters=40, mode="exact")
    ref = run_numpy(method, mdp, seed=0, num_iters=40, mode="exact")
    # Q tables and models do not depend on argmax tie-breaking; the greedy policy (and so the
    # per-iteration metrics) can differ between float32/float64 while Q values are still tied.
    np.testing.assert_allclose(res.q_values, ref["q_values"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.q, ref["q"], atol=1e-5)
    # Both policies are greedy in the shared Q table (exact ties broken either way).
    q_of_ref_action = (np.asarray(res.q_values) * ref["policy"]).sum(-1)
    np.testing.assert_allclose(q_of_ref_action, np.asarray(res.q_values).max(-1), atol=1e-4)
    np.testing.assert_allclose(res.log_expected_return[-5:], ref["log_expected_return"][-5:],
                               atol=1e-4)
    np.testing.assert_allclose(res.objective[-5:], ref["objective"][-5:], rtol=1e-4, atol=1e-4)


def test_sampled_numpy_reference_agrees_in_distribution():
    mdp = T.gridworld(size=5)
    keys = jax.random.split(jax.random.key(0), 64)
    jax_ret = jax.vmap(lambda k: A.run("mnm", mdp, k, num_iters=20))(keys).expected_return
    np_ret = np.stack([np.exp(run_numpy("mnm", mdp, seed=i, num_iters=20)["log_expected_return"])
                       for i in range(64)])
    np.testing.assert_allclose(np.asarray(jax_ret).mean(0)[-5:], np_ret.mean(0)[-5:], rtol=0.1)


def test_vmap_equals_loop_and_jit_equals_nojit():
    mdp = T.gridworld(size=5)
    fn = A.make_run("mnm", mdp, num_iters=4)  # the eager (no-jit) run dominates this test's time
    keys = jax.random.split(jax.random.key(3), 2)
    hp = A.TabularHParams()
    batched = jax.vmap(fn, in_axes=(None, 0, None))(mdp, keys, hp)
    for i in range(2):
        single = jax.jit(fn)(mdp, keys[i], hp)
        np.testing.assert_allclose(batched.q_values[i], single.q_values, atol=1e-5)
    with jax.disable_jit():
        eager = fn(mdp, keys[0], hp)
    np.testing.assert_allclose(eager.q_values, batched.q_values[0], atol=1e-4)


def test_vmap_over_hyperparameters():
    mdp = T.gridworld(size=5)
    fn = A.make_run("mnm", mdp, num_iters=10, mode="exact")
    lrs = jnp.array([0.25, 0.5, 1.0])
    hp = A.TabularHParams(lr=lrs, model_smoothing=jnp.full(3, 0.5), kl_coef=jnp.ones(3),
                          logit_clip=jnp.full(3, 10.0))
    res = jax.vmap(fn, in_axes=(None, None, 0))(mdp, jax.random.key(0), hp)
    single = fn(mdp, jax.random.key(0), A.TabularHParams(lr=1.0))
    np.testing.assert_allclose(res.q_values[2], single.q_values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.q_values[0], res.q_values[2])


def test_low_resolution_model_needs_the_classifier():
    mdp = T.obstacle_gridworld()
    _, optimal = M.value_iteration(mdp)
    best = float(M.expected_return(mdp, optimal))
    kwargs = dict(num_iters=150, mode="exact", model_class="blocks", classifier="exact",
                  logit_clip=2.0)
    mnm = A.run("mnm", mdp, jax.random.key(0), **kwargs)
    ablation = A.run("mnm_no_kl", mdp, jax.random.key(0), **kwargs)
    assert float(mnm.expected_return[-1]) > 0.9 * best
    assert float(ablation.expected_return[-1]) < 0.5 * best
    # The block model predicts moves into the wall, which the true dynamics never make.
    wall = ~np.asarray(mdp.free)
    assert np.asarray(mnm.q)[np.asarray(mdp.free)][:, :, wall].sum() > 0.1


@pytest.mark.unit
def test_validation_errors():
    mdp = T.three_state()
    with pytest.raises(ValueError, match="method"):
        A.run("dyna", mdp, jax.random.key(0))
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        A.run("mnm", mdp, jax.random.key(0), learning_rate=0.1)
    with pytest.raises(ValueError, match="classifier"):
        A.run("mnm", mdp, jax.random.key(0), classifier="perfect")
    with pytest.raises(ValueError, match="mode"):
        A.run("mnm", mdp, jax.random.key(0), mode="monte_carlo")


def test_cli_writes_figures(tmp_path):
    from mismatch_jax import cli

    assert cli.main(["tabular", "fig3a", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fig3a.json").read_text())
    assert (tmp_path / "fig3a.png").stat().st_size > 1000
    assert data["methods"]["mnm"]["action_in_middle"] == "left"
    assert data["methods"]["vmbpo"]["action_in_middle"] == "right"
    assert data["methods"]["q_learning"]["action_in_middle"] == "left"


@pytest.mark.unit
def test_tabular_config_refuses_a_builder_key_of_another_figure():
    from mismatch_jax.config_io import ConfigError
    from mismatch_jax.experiments.tabular_figures import load_config

    assert load_config({"experiment": "fig3a", "env": {"wind": 0.3}}).mdp() is not None
    with pytest.raises(ConfigError, match="env.size is not a setting of fig3a"):
        load_config({"experiment": "fig3a", "env": {"size": 5}})
