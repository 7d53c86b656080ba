"""Tabular experiments of *Mismatched No More* (Fig. 2a, 2b, 3a, 3b): PNG figures + JSON numbers.

Each ``run_figXX(out_dir, seeds=..., config=None)`` writes ``figXX.png`` and ``figXX.json`` into
``out_dir`` and returns the JSON dict. ``config`` is a dict (or a TOML path) with optional tables
``[env]`` (builder keyword arguments), ``[run]`` (``num_iters``, ``mode``, float hyper-parameters
of ``mismatch_jax.agents.tabular.run``) and a top-level ``seeds``; sweeps/tabular_figXX.toml hold
the defaults. ``main_tabular(argv)`` is the CLI: ``mismatch-jax tabular fig2a --out DIR``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.agents import tabular as agents
from mismatch_jax.envs import tabular as envs

EXPERIMENTS = ("fig2a", "fig2b", "fig3a", "fig3b")
_RUN_KEYS = ("num_iters", "mode", "model_class", "block_size", "num_samples", "classifier", "lr",
             "model_smoothing", "kl_coef", "logit_clip")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_config(config) -> dict:
    """TOML path or dict → validated dict with keys 'seeds', 'env', 'run' (unknown keys raise)."""
    if config is None:
        return {"seeds": None, "env": {}, "run": {}}
    if isinstance(config, (str, os.PathLike)):
        with open(config, "rb") as f:
            config = tomllib.load(f)
    unknown = set(config) - {"seeds", "env", "run", "experiment"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; allowed: experiment, seeds, "
                         "[env], [run]")
    bad_run = set(config.get("run", {})) - set(_RUN_KEYS)
    if bad_run:
        raise ValueError(f"unknown [run] keys {sorted(bad_run)}; allowed: {_RUN_KEYS}")
    return {"seeds": config.get("seeds"), "env": dict(config.get("env", {})),
            "run": dict(config.get("run", {}))}


def _finite(x):
    """JSON-safe float (None for ±inf / nan)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _write(out_dir, name: str, fig, data: dict) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    data = {"experiment": name, "device": jax.devices()[0].device_kind, **data}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    return data


def compare_methods(mdp, methods, keys, num_iters: int, **run_kwargs):
    """One compiled call: every method in ``methods`` vmapped over ``keys`` [N].

    The compiled function is cached per (methods, num_iters, static settings, MDP layout), so
    repeated calls do not re-trace. Returns {method: TabularResult with a leading seed axis}."""
    static = {k: v for k, v in run_kwargs.items() if k in agents._STATIC_KEYS}
    floats = {k: v for k, v in run_kwargs.items() if k not in agents._STATIC_KEYS}
    hparams = agents.TabularHParams(**{k: jnp.asarray(v, jnp.float32) for k, v in floats.items()})
    compiled = _compiled_comparison(tuple(methods), int(num_iters), tuple(sorted(static.items())),
                                    agents._template_key(mdp))
    return compiled(mdp, keys, hparams)


@functools.lru_cache(maxsize=16)
def _compiled_comparison(methods, num_iters, static_items, template_key):
    template = agents._TEMPLATES[template_key]
    fns = {m: agents.make_run(m, template, num_iters=num_iters, **dict(static_items))
           for m in methods}

    @jax.jit
    def all_methods(mdp, keys, hparams):
        return {m: jax.vmap(fn, in_axes=(None, 0, None))(mdp, keys, hparams)
                for m, fn in fns.items()}

    return all_methods


def run_fig2a(out_dir, seeds: int = 100, config=None) -> dict:
    """Fig. 2a: learning curves (true expected return, mean ± std over seeds) of MnM, Q-learning
    (true model) and VMBPO on the stochastic gridworld, and MnM's optimistic dynamics as arrows."""
    cfg = load_config(config)
    seeds = int(cfg["seeds"] or seeds)
    run_cfg = {"num_iters": 100, "mode": "sampled", **cfg["run"]}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = envs.gridworld(**cfg["env"])
    methods = ("mnm", "q_learning", "vmbpo")
    keys = jax.random.split(jax.random.key(0), seeds)
    start = time.perf_counter()
    results = jax.block_until_ready(compare_methods(mdp, methods, keys, num_iters,
                                                    track_bounds=False, **run_cfg))
    elapsed = time.perf_counter() - start
    _, optimal_policy = agents.value_iteration(mdp)
    optimal = float(agents.expected_return(mdp, optimal_policy))

    plt = _pyplot()
    fig, (ax_curve, ax_arrows) = plt.subplots(1, 2, figsize=(11, 4.5))
    iters = np.arange(1, num_iters + 1)
    summary = {}
    for method in methods:
        curve = np.asarray(results[method].expected_return)
        mean, std = curve.mean(0), curve.std(0)
        ax_curve.plot(iters, mean, label=method)
        ax_curve.fill_between(iters, mean - std, mean + std, alpha=0.2)
        summary[method] = {
            "final_mean": float(mean[-1]), "final_std": float(std[-1]),
            "mean_curve": [float(x) for x in mean], "std_curve": [float(x) for x in std],
            "iterations_to_90pct_optimal": int(np.argmax(mean >= 0.9 * optimal) + 1)
            if np.any(mean >= 0.9 * optimal) else None,
        }
    ax_curve.axhline(optimal, color="k", ls="--", lw=0.8, label="optimal")
    ax_curve.set_xlabel("iteration")
    ax_curve.set_ylabel("expected discounted return (true dynamics)")
    ax_curve.set_title(f"Fig. 2a — {seeds} seeds")
    ax_curve.legend()

    mnm_q = results["mnm"].q[0]
    optimism = float(agents.optimism(mdp, mnm_q))
    noise_shift = np.asarray(agents.mean_displacement(mdp, mnm_q)
                             - agents.mean_displacement(mdp, mdp.p))
    coords = np.asarray(mdp.coords)
    height, width = mdp.grid_shape
    ax_arrows.quiver(coords[:, 1], coords[:, 0], noise_shift[:, 1], noise_shift[:, 0],
                     color="tab:blue", angles="xy")
    goal = coords[np.asarray(mdp.goal)][0]
    start_cell = coords[int(np.argmax(np.asarray(mdp.start)))]
    ax_arrows.scatter([goal[1]], [goal[0]], marker="*", s=250, c="gold", edgecolors="k")
    ax_arrows.scatter([start_cell[1]], [start_cell[0]], marker="o", s=80, c="tab:green")
    ax_arrows.set_xlim(-0.5, width - 0.5)
    ax_arrows.set_ylim(height - 0.5, -0.5)
    ax_arrows.set_aspect("equal")
    ax_arrows.set_title(f"MnM dynamics minus true (action-averaged); optimism {optimism:+.3f}")
    return _write(out_dir, "fig2a", fig, {
        "seeds": seeds, "num_iters": num_iters, "run": run_cfg, "env": cfg["env"],
        "optimal_return": optimal, "methods": summary, "mnm_optimism": optimism,
        "compiled_call_seconds_incl_compile": elapsed,
    })


def _draw_policy(ax, mdp, policy, title):
    coords = np.asarray(mdp.coords)
    height, width = mdp.grid_shape
    free = np.asarray(mdp.free)
    ax.imshow((~free).reshape(height, width), cmap="Greys", vmin=0, vmax=1.5)
    action = np.asarray(policy).argmax(-1)
    delta = envs.ACTION_DELTAS[action]
    movable = free & ~np.asarray(mdp.goal)
    ax.quiver(coords[movable, 1], coords[movable, 0], delta[movable, 1], delta[movable, 0],
              angles="xy", scale=25, color="tab:red")
    goal = coords[np.asarray(mdp.goal)][0]
    start = coords[int(np.argmax(np.asarray(mdp.start)))]
    ax.scatter([goal[1]], [goal[0]], marker="*", s=250, c="gold", edgecolors="k")
    ax.scatter([start[1]], [start[0]], marker="o", s=80, c="tab:green")
    ax.set_title(title, fontsize=9)


def run_fig2b(out_dir, seeds: int = 1, config=None) -> dict:
    """Fig. 2b: low-resolution (3x3-block) model on the obstacle gridworld; MnM with its block
    classifier reaches the goal, the ablation without the classifier term tries the wall."""
    cfg = load_config(config)
    run_cfg = {"num_iters": 150, "mode": "exact", "model_class": "blocks", "classifier": "exact",
               "logit_clip": 2.0, **cfg["run"]}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = envs.obstacle_gridworld(**cfg["env"])
    _, optimal_policy = agents.value_iteration(mdp)
    optimal = float(agents.expected_return(mdp, optimal_policy))
    out, policies = {}, {}
    for method in ("mnm", "mnm_no_kl"):
        res = agents.run(method, mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
        policies[method] = res.policy
        out[method] = {"expected_return": float(res.expected_return[-1]),
                       "fraction_of_optimal": float(res.expected_return[-1]) / optimal,
                       "objective": _finite(res.objective[-1]),
                       "expected_return_curve": [float(x) for x in res.expected_return]}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    _draw_policy(axes[0], mdp, optimal_policy, f"optimal (true model): {optimal:.3f}")
    for ax, method in zip(axes[1:], ("mnm", "mnm_no_kl")):
        _draw_policy(ax, mdp, policies[method],
                     f"{method}, 3x3-block model: return {out[method]['expected_return']:.3f}")
    return _write(out_dir, "fig2b", fig, {"num_iters": num_iters, "run": run_cfg,
                                          "env": cfg["env"], "optimal_return": optimal,
                                          "methods": out})


def run_fig3a(out_dir, seeds: int = 1, config=None) -> dict:
    """Fig. 3a: 3-state MDP; MnM and Q-learning go to the safe left cell, VMBPO to the windy right.
    Reports each method's greedy action in the start (middle) cell and its exact return."""
    cfg = load_config(config)
    run_cfg = {"num_iters": 300, "mode": "exact", **cfg["run"]}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = envs.three_state(**cfg["env"])
    out = {}
    for method in ("mnm", "q_learning", "vmbpo", "mnm_no_log"):
        res = agents.run(method, mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
        choice = int(np.argmax(np.asarray(res.policy[1])))
        out[method] = {"action_in_middle": ("left", "right")[choice],
                       "exact_return": float(res.expected_return[-1]),
                       "policy": np.asarray(res.policy).tolist()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(out)
    ax.bar(names, [out[m]["exact_return"] for m in names],
           color=["tab:green" if out[m]["action_in_middle"] == "left" else "tab:red"
                  for m in names])
    for i, m in enumerate(names):
        ax.text(i, out[m]["exact_return"] + 5, out[m]["action_in_middle"], ha="center")
    ax.set_ylabel("exact expected return from the middle")
    ax.set_title("Fig. 3a — green: safe left, red: windy right")
    return _write(out_dir, "fig3a", fig, {"num_iters": num_iters, "run": run_cfg,
                                          "env": cfg["env"], "methods": out})


def run_fig3b(out_dir, seeds: int = 1, config=None) -> dict:
    """Fig. 3b: exact MnM (value-iteration version) on the Fig. 2a gridworld; per iteration the
    MnM lower bound, the true log expected return and the VMBPO objective (upper bound)."""
    cfg = load_config(config)
    run_cfg = {"num_iters": 60, "mode": "exact", **cfg["run"]}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = envs.gridworld(**cfg["env"])
    res = agents.run("mnm", mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
    lower, log_ret, upper = (np.asarray(x) for x in (res.mnm_bound, res.log_expected_return,
                                                     res.vmbpo_bound))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    iters = np.arange(1, num_iters + 1)
    ax.plot(iters, upper, label="VMBPO objective")
    ax.plot(iters, log_ret, label="log expected return", color="k")
    ax.plot(iters, lower, label="MnM objective (lower bound)")
    ax.set_xlabel("iteration")
    ax.legend()
    ax.set_title("Fig. 3b — exact objectives along MnM value iteration")
    return _write(out_dir, "fig3b", fig, {
        "num_iters": num_iters, "run": run_cfg, "env": cfg["env"],
        "mnm_objective": lower.tolist(), "log_expected_return": log_ret.tolist(),
        "vmbpo_objective": upper.tolist(),
        "lower_bound_holds_every_iteration": bool(np.all(lower <= log_ret + 1e-5)),
        "upper_bound_holds_every_iteration": bool(np.all(upper >= log_ret - 1e-5)),
    })


_RUNNERS = {"fig2a": run_fig2a, "fig2b": run_fig2b, "fig3a": run_fig3a, "fig3b": run_fig3b}


def main_tabular(argv=None) -> dict:
    """CLI: ``tabular {fig2a,fig2b,fig3a,fig3b,all} --out DIR [--seeds N] [--config TOML]``."""
    parser = argparse.ArgumentParser(prog="mismatch-jax tabular",
                                     description="Tabular MnM experiments (paper 001 §5.1)")
    parser.add_argument("experiment", choices=EXPERIMENTS + ("all",))
    parser.add_argument("--out", required=True, help="output directory for PNG + JSON")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (Fig. 2a)")
    parser.add_argument("--config", default=None, help="TOML config (see sweeps/tabular_*.toml)")
    args = parser.parse_args(argv)
    names = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    results = {}
    for name in names:
        config = load_config(args.config)
        if args.seeds is not None:
            config["seeds"] = args.seeds
        results[name] = _RUNNERS[name](args.out, seeds=config["seeds"] or 100, config=config)
        print(f"{name}: wrote {Path(args.out) / name}.png and .json")
    return results


if __name__ == "__main__":
    main_tabular()
