"""On-device replay buffer: a fixed-capacity circular buffer as a pure pytree.

``init(example, capacity)`` allocates zeros shaped like ``example`` with a leading ``[capacity]``
axis; ``add`` (one item) and ``add_batch`` (``[n]`` items) write at ``position`` and wrap around,
overwriting the oldest rows; ``sample`` draws rows uniformly (with replacement) among the
``size`` valid ones. Everything is jit/vmap/scan-able: shapes never depend on how full the
buffer is, so a whole training run stays one compiled program and ``vmap`` over seeds just adds
a leading axis to every leaf.

The items are any pytree; SAC and MBPO store ``Transition`` (below). MBPO's model buffer also
uses ``add_valid`` (keep only the valid rows of a batch of rollouts) and ``sample_recent`` (draw
among the newest rows).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class Transition(NamedTuple):
    """One (or a batch of) transition(s); leading batch axes are shared by all fields.

    obs: [..., obs_dim]; action: [..., action_dim] in the environment's units;
    reward: [...]; next_obs: [..., obs_dim] (the true next observation, also at a time limit);
    done: [...] float32, 1.0 where the transition *terminated* the episode (truncation by the
    time limit is stored as 0.0 so that the TD target bootstraps through it).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array


def empty_transition(obs_dim: int, action_dim: int) -> Transition:
    """A zero ``Transition`` without batch axes: the example ``init`` allocates a buffer of."""
    return Transition(obs=jnp.zeros((obs_dim,), jnp.float32), action=jnp.zeros((action_dim,), jnp.float32),
                      reward=jnp.zeros((), jnp.float32), next_obs=jnp.zeros((obs_dim,), jnp.float32),
                      done=jnp.zeros((), jnp.float32))


@struct.dataclass
class ReplayBuffer:
    """data: pytree of arrays with leading axis [capacity]; position: [] int32, next row written;
    size: [] int32, number of valid rows (saturates at capacity)."""

    data: Any
    position: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        """Static number of rows (read off the leaves' leading axis)."""
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]


def init(example: Any, capacity: int) -> ReplayBuffer:
    """Empty buffer for items shaped like ``example`` (a pytree of arrays, no batch axis)."""
    if not (isinstance(capacity, int) and capacity > 0):
        raise ValueError(f"replay capacity must be a positive int, got {capacity!r}")
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    return ReplayBuffer(data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def add(buffer: ReplayBuffer, item: Any) -> ReplayBuffer:
    """Writes one item (same structure as the example, no batch axis) at ``position``."""
    capacity = buffer.capacity
    data = jax.tree_util.tree_map(
        lambda store, x: jax.lax.dynamic_update_index_in_dim(
            store, jnp.asarray(x, store.dtype), buffer.position, axis=0
        ),
        buffer.data,
        item,
    )
    return ReplayBuffer(
        data=data,
        position=(buffer.position + 1) % capacity,
        size=jnp.minimum(buffer.size + 1, capacity),
    )


def add_batch(buffer: ReplayBuffer, items: Any) -> ReplayBuffer:
    """Writes ``n`` items (leaves with leading axis [n], n <= capacity) in order, wrapping
    around; afterwards the last ``min(n, capacity)`` items are the newest rows."""
    capacity = buffer.capacity
    n = jax.tree_util.tree_leaves(items)[0].shape[0]
    if n > capacity:
        raise ValueError(f"add_batch got {n} items for a buffer of capacity {capacity}; "
                         "write at most `capacity` items per call")
    rows = (buffer.position + jnp.arange(n, dtype=jnp.int32)) % capacity
    data = jax.tree_util.tree_map(
        lambda store, x: store.at[rows].set(jnp.asarray(x, store.dtype)), buffer.data, items
    )
    return ReplayBuffer(
        data=data,
        position=(buffer.position + n) % capacity,
        size=jnp.minimum(buffer.size + n, capacity),
    )


def sample(key: jax.Array, buffer: ReplayBuffer, batch_size: int) -> Any:
    """``batch_size`` rows drawn uniformly with replacement from the valid rows; leaves
    [batch_size, ...]. The buffer must hold at least one item (an empty buffer returns row 0,
    i.e. zeros)."""
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree_util.tree_map(lambda store: store[rows], buffer.data)


def add_valid(buffer: ReplayBuffer, items: Any, valid: jax.Array) -> ReplayBuffer:
    """Writes the rows of ``items`` (leaves [n, ...]) where ``valid`` [n] is True, in order, at
    ``position`` (wrapping); invalid rows are dropped. n <= capacity."""
    capacity = buffer.capacity
    order = jnp.argsort(~valid, stable=True)
    count = valid.sum().astype(jnp.int32)
    slot = jnp.arange(valid.shape[0], dtype=jnp.int32)
    rows = jnp.where(slot < count, (buffer.position + slot) % capacity, capacity)  # capacity: dropped
    data = jax.tree_util.tree_map(
        lambda store, x: store.at[rows].set(jnp.asarray(x, store.dtype)[order], mode="drop"),
        buffer.data, items)
    return ReplayBuffer(data=data, position=(buffer.position + count) % capacity,
                        size=jnp.minimum(buffer.size + count, capacity))


def sample_recent(key: jax.Array, buffer: ReplayBuffer, batch_size: int, num_recent) -> Any:
    """``batch_size`` rows uniformly (with replacement) among the newest min(size, num_recent)."""
    count = jnp.maximum(jnp.minimum(buffer.size, num_recent), 1)
    back = jax.random.randint(key, (batch_size,), 0, count)
    rows = (buffer.position - 1 - back) % buffer.capacity
    return jax.tree_util.tree_map(lambda store: store[rows], buffer.data)
