"""Exact evaluation and measurements of tabular policies and dynamics (used by the tabular learner
in ``agents/tabular.py``, its figures and tests): Bellman sweeps and linear solves, KL, the MnM
lower bound and VMBPO upper bound, the optimistic best-response model, and the optimism /
mean-displacement measures of a learned model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mismatch_jax.envs.tabular import TabularMDP


# ----------------------------------------------------------------------------- exact evaluation


def policy_transition(policy: jax.Array, dynamics: jax.Array) -> jax.Array:
    """[S, S] state-to-state matrix Σ_a π(a|s) q(s'|s,a) from policy [S, A], dynamics [S, A, S]."""
    return jnp.einsum("sa,sat->st", policy, dynamics)


def evaluate(policy: jax.Array, dynamics: jax.Array, reward: jax.Array,
             gamma: jax.Array, horizon: int | None = None) -> jax.Array:
    """Values (I - γ P_π)^{-1} r_π: a linear solve (horizon=None), or ``horizon`` Bellman sweeps
    V ← r + γ P V from V = 0 (error ≤ γ^horizon · max|r| / (1-γ); 400 sweeps at γ = 0.9 are
    exact in float32). The sweeps are what ``tabular.run`` uses inside its vmapped scan: XLA:CPU's
    batched LU there was ~100x slower than matrix-vector products (and looked like a hang).

    policy [S, A], dynamics [S, A, S], reward [S, A] or [S, A, K] → values [S] or [S, K].
    """
    transition = policy_transition(policy, dynamics)
    num_states = transition.shape[0]
    reward_pi = jnp.einsum("sa,sa...->s...", policy, reward)
    if horizon is None:
        return jnp.linalg.solve(jnp.eye(num_states) - gamma * transition, reward_pi)
    discounted = gamma * transition
    return jax.lax.fori_loop(0, horizon, lambda _, v: reward_pi + discounted @ v, reward_pi)


def compact_values(policy: jax.Array, probs: jax.Array, next_index: jax.Array,
                   reward: jax.Array, gamma: jax.Array, horizon: int) -> jax.Array:
    """``horizon`` Bellman sweeps on a compact transition table: probs [S, A, K] over next states
    next_index [S, A, K]; reward [S, A] or [S, A, C] → values [S] or [S, C]. Each sweep is a
    gather of S·A·K entries (a dense matrix-vector product would touch S² entries)."""
    reward_pi = jnp.einsum("sa,sa...->s...", policy, reward)
    weights = policy[:, :, None] * probs  # [S, A, K]

    def sweep(_, values):
        return reward_pi + gamma * jnp.einsum("sak,sak...->s...", weights, values[next_index])

    return jax.lax.fori_loop(0, horizon, sweep, reward_pi)


def compact_augmented_value(policy, probs, next_index, reward, kl, gamma, start,
                            horizon) -> jax.Array:
    """``augmented_value`` on a compact table (see compact_values); -inf for reachable inf KL."""
    infinite = jnp.isinf(kl)
    finite_part = reward - jnp.where(infinite, 0.0, kl)
    columns = jnp.stack([finite_part, infinite.astype(reward.dtype)], axis=-1)
    start_values = start @ compact_values(policy, probs, next_index, columns, gamma, horizon)
    return jnp.where(start_values[1] > 1e-12, -jnp.inf, start_values[0])


def compact_kl(q: jax.Array, p: jax.Array) -> jax.Array:
    """KL(q ‖ p) [S, A] for compact tables over the same distinct next states [S, A, K]."""
    return kl_divergence(q, p)


def value_iteration(mdp: TabularMDP, num_iters: int = 500) -> tuple[jax.Array, jax.Array]:
    """Optimal Q [S, A] and greedy policy [S, A] for the true MDP (reward r) by value iteration."""

    def backup(q_values, _):
        v = jnp.max(q_values, axis=-1)
        return mdp.r + mdp.gamma * jnp.einsum("sat,t->sa", mdp.p, v), None

    q_values, _ = jax.lax.scan(backup, jnp.zeros_like(mdp.r), None, length=num_iters)
    return q_values, greedy(q_values)


def greedy(q_values: jax.Array) -> jax.Array:
    """[S, A] one-hot argmax policy (ties → lowest action index)."""
    return jax.nn.one_hot(jnp.argmax(q_values, axis=-1), q_values.shape[-1],
                          dtype=q_values.dtype)


def expected_return(mdp: TabularMDP, policy: jax.Array) -> jax.Array:
    """Exact E_p^π Σ_t γ^t r(s_t, a_t) from ``mdp.start`` (scalar)."""
    return mdp.start @ evaluate(policy, mdp.p, mdp.r, mdp.gamma)


def kl_divergence(q: jax.Array, p: jax.Array) -> jax.Array:
    """KL(q(·|s,a) ‖ p(·|s,a)) [S, A]; +inf where q puts mass outside p's support."""
    safe_q = jnp.where(q > 0, q, 1.0)
    safe_p = jnp.where(p > 0, p, 1.0)
    terms = jnp.where(q > 0, q * (jnp.log(safe_q) - jnp.log(safe_p)), 0.0)
    outside = jnp.any((q > 0) & (p <= 0), axis=-1)
    return jnp.where(outside, jnp.inf, jnp.sum(terms, axis=-1))


def log_reward(mdp: TabularMDP) -> jax.Array:
    """MnM's reward part (1-γ)(log r - log(1-γ)) [S, A]."""
    return (1.0 - mdp.gamma) * (jnp.log(mdp.r) - jnp.log1p(-mdp.gamma))



def augmented_value(policy, dynamics, reward, kl, gamma, start, horizon=None) -> jax.Array:
    """start · (I - γ P)^{-1} (reward - kl) under ``dynamics``; -inf when a state with infinite KL
    is reached with positive probability. policy [S, A], dynamics [S, A, S], reward/kl [S, A]."""
    infinite = jnp.isinf(kl)
    finite_part = reward - jnp.where(infinite, 0.0, kl)
    values = evaluate(policy, dynamics, jnp.stack([finite_part, infinite.astype(reward.dtype)],
                                                  axis=-1), gamma, horizon)
    start_values = start @ values
    return jnp.where(start_values[1] > 1e-12, -jnp.inf, start_values[0])


def mnm_lower_bound(mdp: TabularMDP, policy: jax.Array, q: jax.Array,
                    kl_coef: float = 1.0) -> jax.Array:
    """Exact MnM objective L(π, q) (Eq. 2–3 with KL weight κ) from the start distribution."""
    return augmented_value(policy, q, log_reward(mdp), kl_coef * kl_divergence(q, mdp.p),
                           mdp.gamma, mdp.start)


def optimistic_model(p: jax.Array, values: jax.Array, gamma, kl_coef) -> jax.Array:
    """Best-response dynamics q*(s'|s,a) ∝ p(s'|s,a) exp(γ V(s') / κ). p [S, A, S], V [S]."""
    logits = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)) + gamma * values[None, None, :] / kl_coef,
                       -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def vmbpo_upper_bound(mdp: TabularMDP, policy: jax.Array, kl_coef: float = 1.0) -> jax.Array:
    """VMBPO's objective E_q Σ γ^t (r - κ KL(q‖p)) for π at q ∝ p exp(γ V_p^π / κ).

    One soft improvement step from q = p, so it is ≥ E_p^π R ≥ log E_p^π R."""
    values_p = evaluate(policy, mdp.p, mdp.r, mdp.gamma)
    q_hat = optimistic_model(mdp.p, values_p, mdp.gamma, kl_coef)
    return augmented_value(policy, q_hat, mdp.r, kl_coef * kl_divergence(q_hat, mdp.p),
                           mdp.gamma, mdp.start)


# ----------------------------------------------------------------------------- measurements


def optimism(mdp: TabularMDP, q: jax.Array) -> jax.Array:
    """Probability mass q puts on moves that shorten the Manhattan distance to the nearest goal,
    minus the mass p puts there, averaged over non-goal free states and actions (scalar).

    Positive = optimistic dynamics (the learned noise points towards the goal)."""
    coords = mdp.coords.astype(jnp.float32)
    goal_coords = jnp.where(mdp.goal[:, None], coords, jnp.inf)
    distance = jnp.min(jnp.sum(jnp.abs(coords[:, None, :] - goal_coords[None, :, :]), -1), -1)
    closer = (distance[None, :] < distance[:, None]).astype(jnp.float32)  # [S, S']
    towards_q = jnp.einsum("sat,st->sa", q, closer)
    towards_p = jnp.einsum("sat,st->sa", mdp.p, closer)
    mask = (mdp.free & ~mdp.goal).astype(jnp.float32)
    return jnp.sum(jnp.mean(towards_q - towards_p, axis=-1) * mask) / jnp.sum(mask)


def mean_displacement(mdp: TabularMDP, dynamics: jax.Array) -> jax.Array:
    """[S, 2] expected (row, column) displacement, averaged over actions (for arrow plots)."""
    coords = mdp.coords.astype(jnp.float32)
    expected_next = jnp.einsum("sat,tc->sac", dynamics, coords)
    return jnp.mean(expected_next, axis=1) - coords
