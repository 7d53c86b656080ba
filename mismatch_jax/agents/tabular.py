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

This module is the learner (``make_run`` / ``run``); the exact evaluation it and the figures use
(values, KL, bounds, optimism) is in ``tabular_measures``, the block model class and the
classifier logits in ``tabular_models``.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.agents.tabular_measures import (
    compact_augmented_value,
    compact_kl,
    compact_values,
    greedy,
    kl_divergence,
    log_reward,
)
from mismatch_jax.agents.tabular_models import (
    block_best_response,
    block_classifier_logits,
    block_tables,
    block_true_displacements,
    full_classifier_logits,
)
from mismatch_jax.envs.tabular import TabularMDP

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


def transformed_reward(kind: str, mdp: TabularMDP) -> jax.Array:
    """f(r) [S, A] for kind "log" (MnM), "raw" (VMBPO, Q-learning), "linear" (MnM without log)."""
    if kind == "log":
        return log_reward(mdp)
    if kind == "raw":
        return mdp.r
    if kind == "linear":
        return (1.0 - mdp.gamma) * (mdp.r - jnp.log1p(-mdp.gamma))
    raise ValueError(f"unknown reward transform {kind!r}")





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
    tables = block_tables(mdp_template, block_size) if blocks else None
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
