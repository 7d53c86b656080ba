"""Tabular MDP builders: probabilities, known transitions, validation, vmappability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import tabular as T

pytestmark = pytest.mark.unit  # every test here is in the fast tier


def _exact_return(mdp, actions):
    p = np.asarray(mdp.p, np.float64)
    pol = np.eye(mdp.num_actions)[np.asarray(actions)]
    p_pi = np.einsum("sa,sat->st", pol, p)
    r_pi = (pol * np.asarray(mdp.r)).sum(1)
    values = np.linalg.solve(np.eye(mdp.num_states) - float(mdp.gamma) * p_pi, r_pi)
    return float(np.asarray(mdp.start) @ values)


@pytest.mark.parametrize("builder", [T.three_state, T.gridworld, T.obstacle_gridworld])
def test_shapes_and_probabilities(builder):
    mdp = builder()
    s, a = mdp.num_states, mdp.num_actions
    assert mdp.p.shape == (s, a, s) and mdp.r.shape == (s, a) and mdp.start.shape == (s,)
    np.testing.assert_allclose(np.asarray(mdp.p).sum(-1), 1.0, atol=1e-6)
    assert np.all(np.asarray(mdp.p) >= 0) and np.all(np.asarray(mdp.r) > 0)
    assert float(mdp.start.sum()) == pytest.approx(1.0)


def test_gridworld_known_transitions():
    mdp = T.gridworld(size=10, slip=0.4)
    p = np.asarray(mdp.p)
    # From (5, 5) moving right: 0.6 + 0.4/4 to (5, 6), 0.1 to each other neighbour.
    s = 55
    assert p[s, 1, 56] == pytest.approx(0.7)
    for other in (45, 65, 54):
        assert p[s, 1, other] == pytest.approx(0.1)
    # Corner (0, 0) moving up stays (0.6 + noise up 0.1 + noise left 0.1).
    assert p[0, 0, 0] == pytest.approx(0.8)
    goal = int(np.argmax(np.asarray(mdp.goal)))
    assert goal == 99 and np.all(p[goal, :, goal] == 1.0)
    assert np.asarray(mdp.r)[goal, 0] == 1.0 and np.asarray(mdp.r)[0, 0] == pytest.approx(0.01)
    det = np.asarray(T.gridworld(slip=0.0).p)
    assert det[55, 2, 65] == 1.0


def test_obstacles_never_entered():
    mdp = T.obstacle_gridworld()
    free = np.asarray(mdp.free)
    p = np.asarray(mdp.p)
    assert not free.all()
    assert np.all(p[free][:, :, ~free] == 0.0)


def test_three_state_exact_returns():
    mdp = T.three_state()
    # Actions per state (left, middle, right): always left vs always right.
    assert _exact_return(mdp, [0, 0, 0]) == pytest.approx(451.0, rel=1e-5)
    assert _exact_return(mdp, [0, 1, 1]) == pytest.approx(320.3448, rel=1e-4)
    p = np.asarray(mdp.p)
    assert p[2, 1, 1] == pytest.approx(0.5) and p[2, 1, 2] == pytest.approx(0.5)


def test_text_map_builder_and_errors():
    mdp = T.from_text_map("S.#\n..G", slip=0.0)
    assert mdp.grid_shape == (2, 3) and mdp.num_states == 6
    assert np.asarray(mdp.p)[1, 1, 1] == 1.0  # moving right into '#' stays
    for bad in ("", "S.\n.", "S.x\n..G", "..\n.G", "S.\n.."):
        with pytest.raises(ValueError):
            T.from_text_map(bad)
    with pytest.raises(ValueError, match="reward_floor"):
        T.gridworld(reward_floor=0.0)
    with pytest.raises(ValueError, match="slip"):
        T.gridworld(slip=1.5)
    with pytest.raises(ValueError, match="gamma"):
        T.three_state(gamma=1.0)


def test_vmap_over_slip():
    slips = jnp.array([0.0, 0.2, 0.4])
    batch = jax.vmap(lambda s: T.gridworld(slip=s))(slips)
    assert batch.p.shape == (3, 100, 4, 100)
    np.testing.assert_allclose(np.asarray(batch.p[2]), np.asarray(T.gridworld(slip=0.4).p),
                               atol=1e-6)


def test_block_tables():
    mdp = T.obstacle_gridworld()
    blocks = T.block_index(mdp, 3)
    assert blocks.max() == 8 and blocks[0] == 0 and blocks[80] == 8
    dest = T.displacement_table(mdp)
    assert dest.shape == (81, 5) and dest[0, 1] == 0 and dest[0, 2] == 1
