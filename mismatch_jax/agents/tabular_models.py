"""Model classes of the tabular learner (``agents/tabular.py``): the low-resolution block model
of Fig. 2b (one displacement distribution per 3x3 block and action, applied ignoring obstacles),
its best response, and the Bayes-optimal classifier logits at block and full resolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.envs.tabular import (
    DISPLACEMENTS,
    TabularMDP,
    block_index,
    displacement_table,
)


@struct.dataclass
class BlockTables:
    """Static-shaped tables of the low-resolution model class (built once per MDP)."""

    block: jax.Array        # [S] block index of each state
    weights: jax.Array      # [S] averaging weight of each state in its block
    dest: jax.Array         # [S, D] cell reached by displacement d (obstacles ignored)
    realized: jax.Array     # [S, D, S] one-hot of dest
    true_disp: jax.Array    # [S, D, S] 1 if s' - s equals Δ_d (to read p as displacements)
    membership: jax.Array   # [B, S] weights[s] if block(s) == b


def block_tables(mdp: TabularMDP, block_size: int) -> BlockTables:
    """BlockTables of a grid MDP for square blocks of ``block_size`` cells a side (built with NumPy:
    a concrete mdp): block [S], weights [S], dest [S, D], realized / true_disp [S, D, S],
    membership [B, S]."""
    if mdp.grid_shape[0] * mdp.grid_shape[1] != mdp.num_states:
        raise ValueError("model_class='blocks' needs a grid MDP (from gridworld/from_text_map)")
    block = block_index(mdp, block_size)
    num_blocks = int(block.max()) + 1
    # Goal cells are terminal and known to the model (as termination functions are in MBRL),
    # so the block statistics average over the other free cells.
    free = (np.asarray(mdp.free) & ~np.asarray(mdp.goal)).astype(np.float64)
    membership = np.zeros((num_blocks, mdp.num_states))
    membership[block, np.arange(mdp.num_states)] = 1.0
    block_free = membership @ free
    # Blocks made only of obstacles average over all their cells instead.
    weights = np.where(block_free[block] > 0, free, 1.0)
    membership = membership * weights[None, :]
    membership /= membership.sum(axis=1, keepdims=True)
    dest = displacement_table(mdp)
    coords = np.asarray(mdp.coords)
    diff = coords[None, :, :] - coords[:, None, :]  # [S, S', 2]
    true_disp = np.all(diff[:, None, :, :] == DISPLACEMENTS[None, :, None, :], axis=-1)
    return BlockTables(
        block=jnp.asarray(block),
        weights=jnp.asarray(weights, jnp.float32),
        dest=jnp.asarray(dest),
        realized=jax.nn.one_hot(jnp.asarray(dest), mdp.num_states, dtype=jnp.float32),
        true_disp=jnp.asarray(true_disp, jnp.float32),
        membership=jnp.asarray(membership, jnp.float32),
    )


def block_true_displacements(mdp: TabularMDP, tables: BlockTables) -> jax.Array:
    """p̄(d | B, a) [B, A, D]: true displacement distribution averaged over a block's free cells."""
    per_state = jnp.einsum("sat,sdt->sad", mdp.p, tables.true_disp)
    return jnp.einsum("bs,sad->bad", tables.membership, per_state)


def block_model_dynamics(model: jax.Array, tables: BlockTables) -> jax.Array:
    """Full-resolution q(s'|s,a) [S, A, S] of block parameters model [B, A, D]."""
    return jnp.einsum("sad,sdt->sat", model[tables.block], tables.realized)


def block_best_response(p_bar: jax.Array, values: jax.Array, tables: BlockTables, gamma,
                        kl_coef) -> jax.Array:
    """q_b*(d|B,a) ∝ p̄(d|B,a) exp(γ V̄(B,d)/κ) [B, A, D]; V̄ averages V(dest) over the block."""
    v_bar = tables.membership @ values[tables.dest]  # [B, D]
    logits = jnp.where(p_bar > 0, jnp.log(jnp.where(p_bar > 0, p_bar, 1.0))
                       + gamma * v_bar[:, None, :] / kl_coef, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def block_classifier_logits(mdp: TabularMDP, q: jax.Array, tables: BlockTables,
                            clip) -> jax.Array:
    """Bayes-optimal logit of the block-resolution classifier, per (s, a, s') [S, A, S]:
    clip(log p_B(s'|a) - log q_B(s'|a)) with p_B, q_B averaged over block(s)."""
    p_block = jnp.einsum("bs,sat->bat", tables.membership, mdp.p)
    q_block = jnp.einsum("bs,sat->bat", tables.membership, q)
    log_p = jnp.log(jnp.maximum(p_block, 1e-30))
    log_q = jnp.log(jnp.maximum(q_block, 1e-30))
    return jnp.clip(log_p - log_q, -clip, clip)[tables.block]


def full_classifier_logits(p: jax.Array, q: jax.Array) -> jax.Array:
    """Exact log p/q [S, A, S] on q's support (0 elsewhere, where it is never used)."""
    both = (p > 0) & (q > 0)
    return jnp.where(both, jnp.log(jnp.where(both, p, 1.0)) - jnp.log(jnp.where(both, q, 1.0)),
                     0.0)
