"""Exact, tabular MnM / VMBPO / Q-learning (paper 001, §3 and §5.1), pure and vmappable.

Objective (paper Eq. 2–3). For a policy π and dynamics q, with κ = ``kl_coef``:

    L(π, q) = E_{q^π} Σ_t γ^t [ (1-γ) log r(s_t, a_t) - (1-γ) log(1-γ)
                                + κ log p(s_{t+1}|s_t,a_t) / q(s_{t+1}|s_t,a_t) ]

κ = 1 is Eq. 3 exactly; κ = γ is the tighter ELBO obtained by discounting the log-ratio of the
transition t → t+1 with γ^{t+1}. Both satisfy ``L ≤ log E_p^π Σ_t γ^t r`` (Theorem 3.1) for every
π, q (any κ ≥ γ does). Per (s, a) the bound's Bellman backup is

    Q(s, a) = (1-γ)(log r - log(1-γ)) - κ KL(q(·|s,a) ‖ p(·|s,a)) + γ E_q V(s'),

whose maximiser over q is the optimistic model  q*(s'|s,a) ∝ p(s'|s,a) exp(γ V(s') / κ)
(= p·exp(V) for κ = γ). The KL is what a Bayes-optimal classifier's logit estimates (Eq. 5).

Methods (``run(method, ...)``), each a reward transform f(r), a model, and a classifier term:

* ``"mnm"``        f(r) = (1-γ)(log r - log(1-γ)); model q ← q*; reward + κ·log p/q (classifier).
* ``"vmbpo"``      f(r) = r (VMBPO's risk-seeking objective at temperature 1: its optimum is a
                   soft/risk-seeking value ≥ E_p R, an *upper* bound); same model and classifier.
* ``"q_learning"`` the oracle: f(r) = r, samples from the true p, no classifier term.
* ``"mnm_no_kl"``  MnM whose policy reward drops the classifier term (the model is still MnM's).
* ``"mnm_no_log"`` MnM with (1-γ)(r - log(1-γ)) in place of (1-γ)(log r - log(1-γ)).

Algorithm (one iteration, carry Q [S, A] and the model): V = max_a Q; the model takes a smoothed
best response ``q ← (1-β) q + β q*(V)`` (β = ``model_smoothing``, a mixture, so q stays inside p's
support); Q takes a smoothed Bellman step ``Q ← Q + α (target - Q)`` (α = ``lr``) on the model
with the method's augmented reward. ``mode="exact"`` uses expected targets (value/policy iteration
on q, deterministic: Fig. 3); ``mode="sampled"`` draws ``num_samples`` next states per (s, a) from
q (from p for Q-learning) — synchronous model-based Q-learning, where seeds matter (Fig. 2a).
The policy is greedy in Q (one-hot [S, A]).

Low-resolution model class (``model_class="blocks"``, Fig. 2b): the model predicts one
distribution over the 5 displacements (stay, up, right, down, left) per (3x3 block, action),
applied from each cell *ignoring obstacles* (clipped at the border), so it believes walls can be
crossed. Its best response is ``q_b*(d|B,a) ∝ p̄(d|B,a) exp(γ V̄(B,d)/κ)`` where p̄ and V̄ average
the true displacement distribution and V(s + Δ_d) over the free cells of the block (the MnM model
objective with the log-ratio estimated at the model's own resolution). Goal cells are terminal and
known to the model (as termination functions are in model-based RL). The policy's classifier
(static ``classifier``): ``"exact"`` — the full-resolution Bayes-optimal logit log p/q, clipped to
±``logit_clip`` (a transition into an obstacle has p = 0 and gets -logit_clip); ``"block"`` — the
same limited resolution as the model on its input: it sees (block of s, a, s'), and its Bayes
optimal logit is ``log p_B(s'|a) - log q_B(s'|a)`` with p_B, q_B the block averages of p and q.
Known limitation: the block classifier's per-state logits can be *positive* (only their block
average is a -KL), the policy exploits those cells, and MnM then fails on Fig. 2b; with the
"exact" classifier (logit_clip 2) MnM solves it and the no-classifier ablation does not.

Per-iteration metrics, computed exactly (no sampling) for (π_k, q_k) by ``eval_horizon`` (static,
default 200) Bellman sweeps on compact tables — error ≤ γ^200 ≈ 7e-10 relative at γ = 0.9; raise
it for larger γ. (``evaluate`` with horizon=None is the linear-solve version; inside a vmapped
scan XLA:CPU's batched LU was far slower than the sweeps.)
``log_expected_return`` = log E_p^{π_k} Σ γ^t r; ``objective`` = the method's own objective
(MnM & ablations: their augmented return under q_k with the *true* KL; VMBPO: E_q Σ γ^t (r - κ KL);
Q-learning: E_p Σ γ^t r); ``mnm_bound`` = L(π_k, q_k) (≤ log return); ``vmbpo_bound`` = VMBPO's
objective for π_k at the model q̂ ∝ p exp(γ V_p^{π_k}/κ) (≥ E_p R ≥ log E_p R). Infinite KL (a
low-resolution model that enters obstacles) gives an objective of -inf, honestly.
"""

from __future__ import annotations

import functools
from typing import Literal

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

METHODS = ("mnm", "vmbpo", "q_learning", "mnm_no_kl", "mnm_no_log")
MODES = ("exact", "sampled")
MODEL_CLASSES = ("full", "blocks")

# method → (reward transform, learns a model, classifier term in the policy reward)
_METHOD_SPEC = {
    "mnm": ("log", True, True),
    "vmbpo": ("raw", True, True),
    "q_learning": ("raw", False, False),
    "mnm_no_kl": ("log", True, False),
    "mnm_no_log": ("linear", True, True),
}


@struct.dataclass
class TabularHParams:
    """Vmappable hyper-parameters (floats; a leading axis on any of them sweeps it).

    lr: Q step size α in (0, 1] (1 = plain value iteration in exact mode).
    model_smoothing: β in (0, 1], weight of the model's best response in its update.
    kl_coef: κ, weight of the log p/q term (1 = paper Eq. 3; γ = tight ELBO).
    logit_clip: bound on the low-resolution classifier's |logit|.
    """

    lr: jax.Array = 0.5
    model_smoothing: jax.Array = 0.5
    kl_coef: jax.Array = 1.0
    logit_clip: jax.Array = 10.0


@struct.dataclass
class TabularResult:
    """Output of ``run`` (add a leading axis per vmap).

    policy: [S, A] final greedy policy (one-hot).
    q: [S, A, S] final learned dynamics (the true p for Q-learning).
    q_values: [S, A] final Q table.
    objective, log_expected_return, mnm_bound, vmbpo_bound, expected_return: [num_iters].
    """

    policy: jax.Array
    q: jax.Array
    q_values: jax.Array
    objective: jax.Array
    log_expected_return: jax.Array
    expected_return: jax.Array
    mnm_bound: jax.Array
    vmbpo_bound: jax.Array


# ----------------------------------------------------------------------------- exact evaluation


def policy_transition(policy: jax.Array, dynamics: jax.Array) -> jax.Array:
    """[S, S] state-to-state matrix Σ_a π(a|s) q(s'|s,a) from policy [S, A], dynamics [S, A, S]."""
    return jnp.einsum("sa,sat->st", policy, dynamics)


def evaluate(policy: jax.Array, dynamics: jax.Array, reward: jax.Array,
             gamma: jax.Array, horizon: int | None = None) -> jax.Array:
    """Values (I - γ P_π)^{-1} r_π: a linear solve (horizon=None), or ``horizon`` Bellman sweeps
    V ← r + γ P V from V = 0 (error ≤ γ^horizon · max|r| / (1-γ); 400 sweeps at γ = 0.9 are
    exact in float32). The sweeps are what ``run`` uses inside its vmapped scan: XLA:CPU's
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


def transformed_reward(kind: str, mdp: TabularMDP) -> jax.Array:
    """f(r) [S, A] for kind "log" (MnM), "raw" (VMBPO, Q-learning), "linear" (MnM without log)."""
    if kind == "log":
        return log_reward(mdp)
    if kind == "raw":
        return mdp.r
    if kind == "linear":
        return (1.0 - mdp.gamma) * (mdp.r - jnp.log1p(-mdp.gamma))
    raise ValueError(f"unknown reward transform {kind!r}")


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


# ----------------------------------------------------------------------------- model classes


@struct.dataclass
class _BlockTables:
    """Static-shaped tables of the low-resolution model class (built once per MDP)."""

    block: jax.Array        # [S] block index of each state
    weights: jax.Array      # [S] averaging weight of each state in its block
    dest: jax.Array         # [S, D] cell reached by displacement d (obstacles ignored)
    realized: jax.Array     # [S, D, S] one-hot of dest
    true_disp: jax.Array    # [S, D, S] 1 if s' - s equals Δ_d (to read p as displacements)
    membership: jax.Array   # [B, S] weights[s] if block(s) == b


def _block_tables(mdp: TabularMDP, block_size: int) -> _BlockTables:
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
    return _BlockTables(
        block=jnp.asarray(block),
        weights=jnp.asarray(weights, jnp.float32),
        dest=jnp.asarray(dest),
        realized=jax.nn.one_hot(jnp.asarray(dest), mdp.num_states, dtype=jnp.float32),
        true_disp=jnp.asarray(true_disp, jnp.float32),
        membership=jnp.asarray(membership, jnp.float32),
    )


def block_true_displacements(mdp: TabularMDP, tables: _BlockTables) -> jax.Array:
    """p̄(d | B, a) [B, A, D]: true displacement distribution averaged over a block's free cells."""
    per_state = jnp.einsum("sat,sdt->sad", mdp.p, tables.true_disp)
    return jnp.einsum("bs,sad->bad", tables.membership, per_state)


def block_model_dynamics(model: jax.Array, tables: _BlockTables) -> jax.Array:
    """Full-resolution q(s'|s,a) [S, A, S] of block parameters model [B, A, D]."""
    return jnp.einsum("sad,sdt->sat", model[tables.block], tables.realized)


def block_best_response(p_bar: jax.Array, values: jax.Array, tables: _BlockTables, gamma,
                        kl_coef) -> jax.Array:
    """q_b*(d|B,a) ∝ p̄(d|B,a) exp(γ V̄(B,d)/κ) [B, A, D]; V̄ averages V(dest) over the block."""
    v_bar = tables.membership @ values[tables.dest]  # [B, D]
    logits = jnp.where(p_bar > 0, jnp.log(jnp.where(p_bar > 0, p_bar, 1.0))
                       + gamma * v_bar[:, None, :] / kl_coef, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def block_classifier_logits(mdp: TabularMDP, q: jax.Array, tables: _BlockTables,
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


# ----------------------------------------------------------------------------- the learner


@struct.dataclass
class _Carry:
    q_values: jax.Array   # [S, A]
    model: jax.Array      # [S, A, K] compact full model, or [B, A, D] block model
    key: jax.Array


def sample_support(key: jax.Array, probs: jax.Array, num_samples: int) -> jax.Array:
    """[..., num_samples] indices into the last axis of probs [..., K] (Gumbel-max sampling)."""
    log_probs = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    gumbel = jax.random.gumbel(key, probs.shape[:-1] + (num_samples, probs.shape[-1]),
                               probs.dtype)
    return jnp.argmax(log_probs[..., None, :] + gumbel, axis=-1)


def support_size(mdp: TabularMDP) -> int:
    """Largest number of next states with p > 0 for one (s, a) (static; needs a concrete p)."""
    return int(np.max(np.sum(np.asarray(mdp.p) > 0, axis=-1)))


def make_run(method: str, mdp_template: TabularMDP | None = None, *, num_iters: int = 100,
             mode: str = "sampled", model_class: str = "full", block_size: int = 3,
             num_samples: int = 1, track_bounds: bool = True, support: int | None = None,
             classifier: str = "block", eval_horizon: int = 200):
    """Builds the pure ``run_fn(mdp, key, hparams) -> TabularResult`` for static settings.

    Learning runs on a compact view of the dynamics: for each (s, a) the K next states that p can
    reach (``support``, default: computed from ``mdp_template``, else K = S), since every model
    MnM/VMBPO learns stays inside p's support. ``mdp_template`` is required for
    ``model_class="blocks"`` (its block tables are static). The returned function is jit- and
    vmap-friendly over the MDP arrays, the key and the hparams.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class must be one of {MODEL_CLASSES}, got {model_class!r}")
    if num_iters < 1 or num_samples < 1:
        raise ValueError(f"num_iters and num_samples must be >= 1 (got {num_iters}, "
                         f"{num_samples})")
    if classifier not in ("block", "exact"):
        raise ValueError(f"classifier must be 'block' or 'exact', got {classifier!r}")
    reward_kind, learns_model, classifier_in_reward = _METHOD_SPEC[method]
    blocks = learns_model and model_class == "blocks"
    if blocks and mdp_template is None:
        raise ValueError("model_class='blocks' needs mdp_template (a grid MDP)")
    tables = _block_tables(mdp_template, block_size) if blocks else None
    if support is None and mdp_template is not None:
        support = support_size(mdp_template)
    true_support = support if not blocks else (
        support_size(mdp_template) if mdp_template is not None else None)

    def run_fn(mdp: TabularMDP, key: jax.Array, hparams: TabularHParams) -> TabularResult:
        gamma, kappa = mdp.gamma, hparams.kl_coef
        num_states = mdp.num_states
        reward = transformed_reward(reward_kind, mdp)
        k_true = num_states if true_support is None else min(int(true_support), num_states)
        p_true_compact, true_index = jax.lax.top_k(mdp.p, k_true)  # [S, A, K]
        if blocks:
            p_bar = block_true_displacements(mdp, tables)
            next_index = jnp.broadcast_to(tables.dest[:, None, :],
                                          mdp.r.shape + (tables.dest.shape[-1],))
            model0 = p_bar
        else:
            k = num_states if support is None else min(int(support), num_states)
            p_compact, next_index = jax.lax.top_k(mdp.p, k)  # [S, A, K]
            model0 = p_compact if learns_model else jnp.zeros((), mdp.p.dtype)
        next_onehot = jax.nn.one_hot(next_index, num_states, dtype=mdp.p.dtype)  # [S, A, K, S]

        def compact_model(model):
            if not learns_model:
                return p_compact
            if not blocks:
                return model
            stay = jax.nn.one_hot(0, model.shape[-1], dtype=model.dtype)  # goal is known terminal
            return jnp.where(mdp.goal[:, None, None], stay[None, None, :], model[tables.block])

        def dense(compact):
            return jnp.einsum("sak,sakt->sat", compact, next_onehot)

        def step(carry: _Carry, _):
            key, sample_key = jax.random.split(carry.key)
            values = jnp.max(carry.q_values, axis=-1)
            model = carry.model
            if learns_model:
                if blocks:
                    response = block_best_response(p_bar, values, tables, gamma, kappa)
                else:
                    logits = jnp.where(p_compact > 0,
                                       jnp.log(jnp.where(p_compact > 0, p_compact, 1.0))
                                       + gamma * values[next_index] / kappa, -jnp.inf)
                    response = jax.nn.softmax(logits, axis=-1)
                model = (1.0 - hparams.model_smoothing) * model + hparams.model_smoothing * response
            q_compact = compact_model(model)  # [S, A, K]
            if not classifier_in_reward:
                logits = jnp.zeros_like(q_compact)
            elif blocks:
                if classifier == "block":
                    dense_logits = block_classifier_logits(mdp, dense(q_compact), tables,
                                                           hparams.logit_clip)
                else:  # full-resolution Bayes-optimal classifier, logits clipped
                    q_dense = dense(q_compact)
                    dense_logits = jnp.clip(jnp.log(jnp.maximum(mdp.p, 1e-30))
                                            - jnp.log(jnp.maximum(q_dense, 1e-30)),
                                            -hparams.logit_clip, hparams.logit_clip)
                logits = kappa * jnp.take_along_axis(dense_logits, next_index, axis=-1)
            else:
                logits = kappa * full_classifier_logits(p_compact, q_compact)
            next_values = gamma * values[next_index]  # [S, A, K]
            if mode == "exact":
                target = reward + jnp.sum(q_compact * (logits + next_values), axis=-1)
            else:
                drawn = sample_support(sample_key, q_compact, num_samples)  # [S, A, N]
                counts = jnp.mean(jax.nn.one_hot(drawn, q_compact.shape[-1],
                                                 dtype=q_compact.dtype), axis=-2)  # [S, A, K]
                target = reward + jnp.sum(counts * (logits + next_values), axis=-1)
            q_values = carry.q_values + hparams.lr * (target - carry.q_values)
            policy = greedy(q_values)
            metrics = _metrics(mdp, policy, q_compact, reward, kappa)
            return _Carry(q_values=q_values, model=model, key=key), metrics

        def _metrics(mdp, policy, q_compact, reward, kappa):
            # Exact up to γ^eval_horizon, on compact tables (true p: p_true_compact).
            h = eval_horizon
            values_p = compact_values(policy, p_true_compact, true_index, mdp.r, gamma, h)
            ret = mdp.start @ values_p
            if learns_model:
                if blocks:  # the block model's next states may repeat: KL on dense tables
                    true_kl = kappa * kl_divergence(dense(q_compact), mdp.p)
                else:
                    true_kl = kappa * compact_kl(q_compact, p_compact)
            if not learns_model:
                objective = ret
            else:
                kl = true_kl if classifier_in_reward else jnp.zeros_like(reward)
                objective = compact_augmented_value(policy, q_compact, next_index, reward, kl,
                                                    gamma, mdp.start, h)
            out = {"objective": objective, "log_expected_return": jnp.log(ret),
                   "expected_return": ret}
            if track_bounds:
                if method == "mnm":
                    out["mnm_bound"] = objective
                else:
                    kl_l = true_kl if learns_model else jnp.zeros_like(reward)
                    out["mnm_bound"] = compact_augmented_value(
                        policy, q_compact, next_index, log_reward(mdp), kl_l, gamma, mdp.start, h)
                logits_hat = jnp.where(p_true_compact > 0,
                                       jnp.log(jnp.where(p_true_compact > 0, p_true_compact, 1.0))
                                       + gamma * values_p[true_index] / kappa, -jnp.inf)
                q_hat = jax.nn.softmax(logits_hat, axis=-1)
                out["vmbpo_bound"] = compact_augmented_value(
                    policy, q_hat, true_index, mdp.r, kappa * compact_kl(q_hat, p_true_compact),
                    gamma, mdp.start, h)
            else:
                out["mnm_bound"] = jnp.full((), jnp.nan, ret.dtype)
                out["vmbpo_bound"] = jnp.full((), jnp.nan, ret.dtype)
            return out

        carry0 = _Carry(q_values=jnp.zeros_like(mdp.r), model=model0, key=key)
        carry, metrics = jax.lax.scan(step, carry0, None, length=num_iters)
        final_dynamics = dense(compact_model(carry.model)) if learns_model else mdp.p
        return TabularResult(policy=greedy(carry.q_values), q=final_dynamics,
                             q_values=carry.q_values, **metrics)

    return run_fn


_STATIC_KEYS = ("mode", "model_class", "block_size", "num_samples", "track_bounds", "classifier",
                "eval_horizon")
_HPARAM_KEYS = tuple(f.name for f in TabularHParams.__dataclass_fields__.values())


@functools.lru_cache(maxsize=64)
def _cached_run(method, num_iters, static_items, template_key):
    template = _TEMPLATES[template_key] if template_key is not None else None
    return jax.jit(make_run(method, template, num_iters=num_iters, **dict(static_items)))


_TEMPLATES: dict = {}


def _template_key(mdp: TabularMDP):
    """A hashable identity of the MDP's static layout (for the block tables)."""
    key = (mdp.name, mdp.grid_shape, np.asarray(mdp.free).tobytes(),
           np.asarray(mdp.coords).tobytes())
    _TEMPLATES.setdefault(key, mdp)
    return key


def run(method: Literal["mnm", "vmbpo", "q_learning", "mnm_no_kl", "mnm_no_log"],
        mdp: TabularMDP, key: jax.Array, num_iters: int = 100, **hparams) -> TabularResult:
    """Runs a tabular method; pure in (mdp, key, float hparams), so it can be vmapped over them.

    Static keyword arguments: mode ("sampled" | "exact"), model_class ("full" | "blocks"),
    block_size (3), num_samples (1), track_bounds (True). Float hyper-parameters (vmappable):
    lr, model_smoothing, kl_coef, logit_clip (see TabularHParams).

    Returns TabularResult: policy [S, A], q [S, A, S], per-iteration metrics [num_iters].
    """
    unknown = set(hparams) - set(_STATIC_KEYS) - set(_HPARAM_KEYS)
    if unknown:
        raise ValueError(f"unknown hyper-parameters {sorted(unknown)}; static: {_STATIC_KEYS}, "
                         f"float: {_HPARAM_KEYS}")
    static = {k: hparams[k] for k in _STATIC_KEYS if k in hparams}
    floats = {k: jnp.asarray(hparams[k], jnp.float32) for k in _HPARAM_KEYS if k in hparams}
    if static.get("model_class", "full") == "blocks" and method != "q_learning":
        template_key = _template_key(mdp)
    else:
        template_key = None
        concrete = not isinstance(mdp.p, jax.core.Tracer)
        static["support"] = support_size(mdp) if concrete else None
    run_fn = _cached_run(method, int(num_iters), tuple(sorted(static.items())), template_key)
    return run_fn(mdp, key, TabularHParams(**floats))


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


# ----------------------------------------------------------------------------- NumPy reference


def run_numpy(method: str, mdp: TabularMDP, seed: int, num_iters: int = 100, *,
              mode: str = "sampled", num_samples: int = 1, lr: float = 0.5,
              model_smoothing: float = 0.5, kl_coef: float = 1.0) -> dict:
    """Plain NumPy loop version of ``run`` (full model class) — the reference for tests and the
    baseline of the benchmark. Returns a dict with policy, q, objective, log_expected_return."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    reward_kind, learns_model, classifier_in_reward = _METHOD_SPEC[method]
    rng = np.random.default_rng(seed)
    p = np.asarray(mdp.p, np.float64)
    r = np.asarray(mdp.r, np.float64)
    gamma = float(mdp.gamma)
    start = np.asarray(mdp.start, np.float64)
    num_states, num_actions = r.shape
    reward = {"log": (1 - gamma) * (np.log(r) - np.log(1 - gamma)), "raw": r,
              "linear": (1 - gamma) * (r - np.log(1 - gamma))}[reward_kind]
    eye = np.eye(num_states)
    q_values = np.zeros_like(r)
    model = p.copy()
    objective, log_return = np.zeros(num_iters), np.zeros(num_iters)
    for it in range(num_iters):
        values = q_values.max(axis=1)
        if learns_model:
            with np.errstate(divide="ignore"):
                logits = np.where(p > 0, np.log(np.where(p > 0, p, 1)) + gamma * values / kl_coef,
                                  -np.inf)
            response = np.exp(logits - logits.max(axis=-1, keepdims=True))
            response /= response.sum(axis=-1, keepdims=True)
            model = (1 - model_smoothing) * model + model_smoothing * response
        dynamics = model if learns_model else p
        both = (p > 0) & (dynamics > 0)
        log_ratio = np.zeros_like(p)
        log_ratio[both] = np.log(p[both]) - np.log(dynamics[both])
        cls = kl_coef * log_ratio if classifier_in_reward else np.zeros_like(p)
        if mode == "exact":
            target = reward + np.einsum("sat,sat->sa", dynamics, cls + gamma * values[None, None, :])
        else:
            cdf = np.cumsum(dynamics, axis=-1)
            u = rng.random((num_states, num_actions, num_samples)) * cdf[..., -1:]
            nxt = np.minimum((u[..., None] > cdf[..., None, :]).sum(-1), num_states - 1)
            sampled_cls = np.take_along_axis(cls, nxt, axis=-1)
            target = reward + np.mean(sampled_cls + gamma * values[nxt], axis=-1)
        q_values = q_values + lr * (target - q_values)
        policy = np.eye(num_actions)[q_values.argmax(axis=1)]
        p_pi = np.einsum("sa,sat->st", policy, p)
        ret = start @ np.linalg.solve(eye - gamma * p_pi, (policy * r).sum(1))
        log_return[it] = np.log(ret)
        if learns_model:
            kl = (dynamics * np.where(dynamics > 0, np.log(np.where(dynamics > 0, dynamics, 1))
                                      - np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
            own = reward - (kl_coef * kl if classifier_in_reward else 0)
            q_pi = np.einsum("sa,sat->st", policy, dynamics)
            objective[it] = start @ np.linalg.solve(eye - gamma * q_pi, (policy * own).sum(1))
        else:
            objective[it] = ret
    return {"policy": policy, "q": dynamics, "q_values": q_values, "objective": objective,
            "log_expected_return": log_return}
