"""Plain NumPy loop version of ``mismatch_jax.agents.tabular.run`` (full model class): the
reference the JAX learner is tested against, and the baseline of ``benchmarks/bench_tabular.py``
(importable as ``tabular_reference``: pytest puts tests/ on sys.path for tests/conftest.py)."""

import numpy as np

from mismatch_jax.agents.tabular import _METHOD_SPEC, METHODS
from mismatch_jax.envs.tabular import TabularMDP


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
