"""What both sides of the peer comparison share (NumPy only, so the PyTorch peer's interpreter
imports it too): the synthetic training data, the CEM settings, the training-step count and the
min / median / max summary every timed key carries. ``gemm_gflops`` imports JAX lazily."""

from __future__ import annotations

import math
import time

import numpy as np

OBS_DIM, ACT_DIM = 4, 1

# CEM questions: the same population, horizon, iterations, elites, particles and propagation on
# both sides; the model is a PE ensemble of `ensemble` members × `layers` × `hidden` (SiLU).
CEM_SETTINGS = {
    "expectation_h30": dict(hidden=200, layers=4, ensemble=5, horizon=30, population=500, elites=50,
                            iterations=5, propagation="expectation", particles=1),
    "tsinf_h15_p20": dict(hidden=200, layers=4, ensemble=5, horizon=15, population=500, elites=50,
                          iterations=5, propagation="tsinf", particles=20),
    # cheap settings for smoke runs and small machines
    "small_h15": dict(hidden=64, layers=3, ensemble=5, horizon=15, population=100, elites=10,
                      iterations=3, propagation="expectation", particles=1),
    "tsinf_small": dict(hidden=32, layers=2, ensemble=5, horizon=5, population=50, elites=5,
                        iterations=2, propagation="tsinf", particles=10),
}
ACTION_BOUND = 3.0  # the CEM action box is [-3, 3]


def linear_system(rows: int, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, seed: int = 0):
    """Synthetic transitions s' = s + A s + B a (+ small noise): (obs, act, next_obs) float32."""
    rng = np.random.default_rng(seed)
    a_mat = rng.normal(size=(obs_dim, obs_dim)).astype(np.float32) * 0.3
    b_mat = rng.normal(size=(act_dim, obs_dim)).astype(np.float32) * 0.3
    obs = rng.normal(size=(rows, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(rows, act_dim)).astype(np.float32)
    nxt = obs + obs @ a_mat + act @ b_mat + 0.01 * rng.normal(size=(rows, obs_dim)).astype(np.float32)
    return obs, act, nxt


def split_sizes(rows: int, validation_fraction: float) -> tuple[int, int]:
    """(training rows, validation rows) of both sides' split: floor(fraction · rows) validate."""
    num_val = int(rows * validation_fraction)
    return rows - num_val, num_val


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Minibatch updates per epoch, the last one partial: mbrl-lib's TransitionIterator length."""
    return math.ceil(num_train / batch_size)


def split_work(total: int, parts: int) -> list[int]:
    """Shares of ``total`` items over at most ``parts`` workers, as even as possible (the larger
    shares first, no empty share): split_work(64, 2) = [32, 32], split_work(5, 2) = [3, 2],
    split_work(1, 2) = [1]."""
    if total < 1 or parts < 1:
        raise ValueError(f"split_work needs total >= 1 and parts >= 1, got {total}, {parts}")
    parts = min(parts, total)
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def train_model_steps(models: int, epochs: int, steps: int) -> int:
    """Model-steps of fitting ``models`` models for ``epochs`` epochs of ``steps`` minibatch
    updates each: the unit of every training form's rate (one minibatch update of one model)."""
    return models * epochs * steps


def concurrent_wall(replies) -> float:
    """Wall seconds of work timed in several processes at once: the last ``t_end`` minus the first
    ``t_start`` (time.monotonic, one clock for every process of the machine), i.e. the slowest
    worker plus any stagger of their starts."""
    return max(r["t_end"] for r in replies) - min(r["t_start"] for r in replies)


def best_form(entry, forms, higher_is_better):
    """(name, summary) of the peer's best form by median among ``forms`` present in ``entry``
    (the fastest: the highest rate or the fewest seconds), or (None, None)."""
    present = [(f, entry[f]) for f in forms if entry.get(f)]
    if not present:
        return None, None
    pick = max if higher_is_better else min
    return pick(present, key=lambda fs: fs[1]["median"])


def summarize(values, scale: float = 1.0) -> dict:
    """min / median / max (× ``scale``) and the repetition count of a list of measurements."""
    v = [float(x) * scale for x in values]
    if not v:
        return None
    return {"min": min(v), "median": float(np.median(v)), "max": max(v), "reps": len(v), "values": v}


def gemm_timer(size: int = 2048):
    """``rates(reps) -> [GFLOP/s]`` of ``reps`` timed calls of a ``size``² float32 ``jnp.dot``
    (compiled and warmed up once here), to interleave the physical reference with other work."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))

    def rates(reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            start = time.perf_counter()
            jax.block_until_ready(dot(a, b))
            out.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
        return out

    return rates


def gemm_gflops(size: int = 2048, reps: int = 5) -> dict:
    """GFLOP/s of a ``size``² float32 ``jnp.dot`` (first call discarded), ``reps`` timed calls."""
    out = summarize(gemm_timer(size)(reps))
    out["size"] = size
    return out
