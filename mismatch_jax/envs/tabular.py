"""Tabular MDPs as arrays, for the exact experiments of *Mismatched No More* (paper 001, §5.1).

An MDP is a :class:`TabularMDP` pytree holding ``p`` [S, A, S] (true dynamics), ``r`` [S, A]
(strictly positive rewards), ``gamma`` [] and ``start`` [S] (a start *distribution*; the builders
put all mass on one cell). Grid worlds also carry ``coords`` [S, 2] (row, column of each state),
``free`` [S] (False for obstacle cells) and ``goal`` [S]; the grid shape is static metadata.

Why rewards are strictly positive. MnM's augmented reward uses ``log r`` (Eq. 3), and the paper
assumes ``r(s, a) > 0`` (§3, "positive reward function"). A "sparse" reward is therefore
``goal_reward`` at the goal and a small ``reward_floor`` > 0 everywhere else; ``log r`` is then
finite (``log 0.01 ≈ -4.6``) and the sparse structure (a 100x ratio) is kept. Builders raise a
ValueError for non-positive rewards.

Constants (the paper's appendix with its exact settings is not available to us; these are our
documented choices, each an argument of the builder):

* ``gridworld()`` — Fig. 2a. 10x10 open grid, 4 actions (0 up, 1 right, 2 down, 3 left). With
  probability ``slip = 0.4`` the intended move is replaced by a uniformly random one of the 4
  actions (so the agent moves to each neighbour with equal probability under the noise). Moves
  into the border or an obstacle leave the agent in place. Start (0, 0) (top left), goal (9, 9)
  (bottom right). The goal is absorbing and pays ``goal_reward = 1`` per step; every other
  state-action pays ``reward_floor = 0.01``. ``gamma = 0.9``. There is no episode length: all
  returns are infinite-horizon discounted and evaluated exactly (effective horizon 1/(1-γ) = 10;
  the shortest path to the goal is 18 moves).
* ``obstacle_gridworld()`` — Fig. 2b. A 9x9 grid (three 3x3 blocks per side, so the paper's
  low-resolution model class tiles it exactly) with a one-cell-thick wall along row 3, columns
  0-5 (inside the first two block columns), open on the right third; start top-left, goal
  bottom-left, so the direct way down runs through the wall and the true optimum detours through
  the obstacle-free right blocks. ``slip = 0.1`` so that the exact dynamics are almost
  deterministic and the main model error is the low-resolution model's belief that the wall can
  be crossed. Same rewards and γ as Fig. 2a.
* ``three_state()`` — Fig. 3a. States 0 (left), 1 (middle, start), 2 (right); actions 0 left,
  1 right (deterministic moves, clipped at the ends). The right cell is windy: whatever the
  action, with probability ``wind = 0.5`` the agent is blown back to the middle. State rewards
  (received for every action in that state): left 50, middle 1 (the paper's middle cell has no
  reward; 1 keeps ``log r = 0`` finite), right 51. ``gamma = 0.9``. Starting in the middle,
  from the middle, going left is worth 451 and the best right-hand policy 320.3 (exact values in
  tests), so the reward-maximising choice is the safe left.
* ``from_text_map(text, ...)`` — a grid from characters: ``.`` free, ``#`` obstacle, ``S`` start,
  ``G`` goal (at least one), rows separated by newlines; everything else as in ``gridworld``.

Dynamics are built with ``jnp`` arithmetic from the (static) layout, so ``slip``, the rewards and
``gamma`` may be traced values: ``jax.vmap(lambda s: gridworld(slip=s))(slips)`` gives a batch of
MDPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Grid actions: (row, column) displacement of the intended move.
ACTION_NAMES = ("up", "right", "down", "left")
ACTION_DELTAS = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int32)

# Displacements a low-resolution grid model predicts: stay, then the four moves.
DISPLACEMENTS = np.array([[0, 0], [-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int32)


@struct.dataclass
class TabularMDP:
    """A finite discounted MDP.

    Attributes:
      p: [S, A, S] true transition probabilities p(s' | s, a); rows sum to 1.
      r: [S, A] rewards, strictly positive (MnM takes their log).
      gamma: [] discount factor in (0, 1).
      start: [S] start-state distribution.
      coords: [S, 2] int (row, column) of each state (a line for non-grid MDPs).
      free: [S] bool, False for obstacle cells (unreachable under ``p``).
      goal: [S] bool, True for goal cells (for plots and optimism measures).
      grid_shape: static (rows, columns).
      name: static label.
    """

    p: jax.Array
    r: jax.Array
    gamma: jax.Array
    start: jax.Array
    coords: jax.Array
    free: jax.Array
    goal: jax.Array
    grid_shape: tuple = struct.field(pytree_node=False, default=(1, 1))
    name: str = struct.field(pytree_node=False, default="mdp")

    @property
    def num_states(self) -> int:
        return self.p.shape[-3]

    @property
    def num_actions(self) -> int:
        return self.p.shape[-2]


def _check_positive(name: str, value) -> None:
    if not isinstance(value, jax.core.Tracer) and np.any(np.asarray(value) <= 0):
        raise ValueError(f"{name} must be > 0 because MnM uses log r (got {value}); "
                         "use a small positive reward_floor instead of 0")


def _check_probability(name: str, value) -> None:
    if not isinstance(value, jax.core.Tracer) and not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _check_gamma(gamma) -> None:
    if not isinstance(gamma, jax.core.Tracer) and not (0.0 < float(gamma) < 1.0):
        raise ValueError(f"gamma must lie in (0, 1), got {gamma}")


def parse_text_map(text: str) -> dict:
    """Parses a character map into static numpy layout arrays (see ``from_text_map``)."""
    rows = [line.strip() for line in text.strip("\n").splitlines() if line.strip()]
    if not rows:
        raise ValueError("text map is empty; give rows of '.', '#', 'S', 'G'")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise ValueError("text map rows must all have the same length")
    bad = sorted({c for row in rows for c in row} - set(".#SG"))
    if bad:
        raise ValueError(f"text map has unknown characters {bad}; use '.', '#', 'S', 'G'")
    grid = np.array([list(row) for row in rows])
    starts = np.argwhere(grid == "S")
    if len(starts) != 1:
        raise ValueError(f"text map needs exactly one 'S' (start), found {len(starts)}")
    if not np.any(grid == "G"):
        raise ValueError("text map needs at least one 'G' (goal)")
    return {
        "shape": grid.shape,
        "free": (grid != "#").reshape(-1),
        "goal": (grid == "G").reshape(-1),
        "start": int(starts[0][0] * width + starts[0][1]),
    }


def _grid_move_tables(shape: tuple, free: np.ndarray) -> np.ndarray:
    """[S, 4] index of the cell each action leads to (blocked by border/obstacles → stay)."""
    height, width = shape
    num_states = height * width
    dest = np.zeros((num_states, len(ACTION_DELTAS)), dtype=np.int32)
    for s in range(num_states):
        row, col = divmod(s, width)
        for a, (dr, dc) in enumerate(ACTION_DELTAS):
            nr, nc = row + dr, col + dc
            inside = 0 <= nr < height and 0 <= nc < width
            dest[s, a] = nr * width + nc if inside and free[nr * width + nc] else s
    return dest


def _grid_mdp(layout: dict, *, slip, gamma, goal_reward, reward_floor, name: str) -> TabularMDP:
    _check_probability("slip", slip)
    _check_gamma(gamma)
    _check_positive("goal_reward", goal_reward)
    _check_positive("reward_floor", reward_floor)
    shape, free, goal = layout["shape"], layout["free"], layout["goal"]
    num_states, num_actions = shape[0] * shape[1], len(ACTION_DELTAS)
    dest = _grid_move_tables(shape, free)
    intended = np.eye(num_states, dtype=np.float32)[dest]  # [S, A, S] deterministic moves
    # Absorbing goal and (unreachable) obstacle cells: every action stays.
    sticky = goal | ~free
    intended[sticky] = np.eye(num_states, dtype=np.float32)[sticky][:, None, :]
    intended = jnp.asarray(intended)
    noise = jnp.mean(intended, axis=1, keepdims=True)  # uniformly random action
    p = (1.0 - slip) * intended + slip * noise
    r_state = jnp.where(jnp.asarray(goal), goal_reward, reward_floor)
    r = jnp.broadcast_to(r_state[:, None], (num_states, num_actions)).astype(jnp.float32)
    rows, cols = np.divmod(np.arange(num_states), shape[1])
    return TabularMDP(
        p=p.astype(jnp.float32),
        r=r,
        gamma=jnp.asarray(gamma, jnp.float32),
        start=jax.nn.one_hot(layout["start"], num_states, dtype=jnp.float32),
        coords=jnp.asarray(np.stack([rows, cols], axis=1), jnp.int32),
        free=jnp.asarray(free),
        goal=jnp.asarray(goal),
        grid_shape=tuple(int(x) for x in shape),
        name=name,
    )


def from_text_map(text: str, *, slip=0.4, gamma=0.9, goal_reward=1.0, reward_floor=0.01,
                  name: str = "text_map") -> TabularMDP:
    """Grid MDP from a character map ('.' free, '#' obstacle, 'S' start, 'G' goal).

    Returns a TabularMDP with p [S, A=4, S], S = rows * columns (obstacle cells are states that
    ``p`` never enters). Dynamics and rewards as in ``gridworld``.
    """
    return _grid_mdp(parse_text_map(text), slip=slip, gamma=gamma, goal_reward=goal_reward,
                     reward_floor=reward_floor, name=name)


def gridworld(size: int = 10, *, slip=0.4, gamma=0.9, goal_reward=1.0, reward_floor=0.01,
              start=(0, 0), goal=None) -> TabularMDP:
    """The open stochastic gridworld of Fig. 2a (defaults: 10x10, slip 0.4, γ 0.9).

    Args:
      size: side length; S = size**2.
      slip: probability that the intended move is replaced by a uniformly random action.
      start, goal: (row, column); goal defaults to the opposite corner.
    Returns: TabularMDP with p [S, 4, S], r [S, 4].
    """
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    goal = (size - 1, size - 1) if goal is None else goal
    grid = np.full((size, size), ".")
    grid[tuple(start)] = "S"
    grid[tuple(goal)] = "G"
    if tuple(start) == tuple(goal):
        raise ValueError("start and goal must differ")
    text = "\n".join("".join(row) for row in grid)
    return from_text_map(text, slip=slip, gamma=gamma, goal_reward=goal_reward,
                         reward_floor=reward_floor, name=f"gridworld{size}")


OBSTACLE_MAP = """
S........
.........
.........
######...
.........
.........
.........
.........
G........
"""


def obstacle_gridworld(text: str = OBSTACLE_MAP, *, slip=0.1, gamma=0.9, goal_reward=1.0,
                       reward_floor=0.01) -> TabularMDP:
    """The gridworld with obstacles of Fig. 2b (9x9, a wall with one gap; see module docstring)."""
    return from_text_map(text, slip=slip, gamma=gamma, goal_reward=goal_reward,
                         reward_floor=reward_floor, name="obstacle_gridworld")


def three_state(*, rewards=(50.0, 1.0, 51.0), wind=0.5, gamma=0.9) -> TabularMDP:
    """The 3-state line MDP of Fig. 3a: left (r 50), middle (start, r 1), windy right (r 51).

    Actions: 0 left, 1 right. In the right cell the agent is blown back to the middle with
    probability ``wind`` whatever it does. Returns TabularMDP with p [3, 2, 3], r [3, 2].
    """
    _check_probability("wind", wind)
    _check_gamma(gamma)
    _check_positive("rewards", np.asarray(rewards) if not isinstance(rewards, jax.Array)
                    else rewards)
    left_moves = jnp.eye(3)[jnp.array([0, 0, 1])]   # [S, S] action left
    right_moves = jnp.eye(3)[jnp.array([1, 2, 2])]  # [S, S] action right
    p = jnp.stack([left_moves, right_moves], axis=1)  # [S, A, S]
    blown = jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0]), (2, 3))
    p = p.at[2].set((1.0 - wind) * p[2] + wind * blown)
    r = jnp.broadcast_to(jnp.asarray(rewards, jnp.float32)[:, None], (3, 2))
    return TabularMDP(
        p=p.astype(jnp.float32),
        r=r.astype(jnp.float32),
        gamma=jnp.asarray(gamma, jnp.float32),
        start=jnp.array([0.0, 1.0, 0.0], jnp.float32),
        coords=jnp.array([[0, 0], [0, 1], [0, 2]], jnp.int32),
        free=jnp.ones(3, bool),
        goal=jnp.array([True, False, False]),
        grid_shape=(1, 3),
        name="three_state",
    )


def displacement_table(mdp: TabularMDP) -> np.ndarray:
    """[S, D=5] static index of s + Δ_d for the low-resolution model (border-clipped, *ignoring
    obstacles* — the coarse model cannot see them). d: stay, up, right, down, left."""
    height, width = mdp.grid_shape
    coords = np.asarray(mdp.coords)
    target = coords[:, None, :] + DISPLACEMENTS[None, :, :]
    target[..., 0] = np.clip(target[..., 0], 0, height - 1)
    target[..., 1] = np.clip(target[..., 1], 0, width - 1)
    return (target[..., 0] * width + target[..., 1]).astype(np.int32)


def block_index(mdp: TabularMDP, block_size: int = 3) -> np.ndarray:
    """[S] static index of the block_size x block_size block holding each state."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    width = mdp.grid_shape[1]
    coords = np.asarray(mdp.coords)
    blocks_per_row = -(-width // block_size)
    return (coords[:, 0] // block_size * blocks_per_row + coords[:, 1] // block_size).astype(
        np.int32)
