"""Tabular experiments of *Mismatched No More* (Fig. 2a, 2b, 3a, 3b): PNG figures + JSON numbers.

Each ``run_figXX(config, out_dir)`` writes ``figXX.png`` and ``figXX.json`` into ``out_dir`` and
returns the JSON dict. ``config`` is a ``TabularConfig``: ``experiment``, ``seeds``, ``[env]``
(builder keyword arguments) and ``[run]`` (``num_iters``, ``mode``, float hyper-parameters of
``mismatch_jax.agents.tabular.run``); sweeps/tabular_figXX.toml hold the defaults. The command
line is ``mismatch-jax tabular fig2a --out DIR`` (a preset name or a TOML path).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.files import write_json
from mismatch_jax.agents import tabular as agents
from mismatch_jax.agents import tabular_measures as measures
from mismatch_jax.analysis import tabular as figures
from mismatch_jax.config_io import Schema, from_dict, load_toml, setting
from mismatch_jax.envs import tabular as envs

EXPERIMENTS = ("fig2a", "fig2b", "fig3a", "fig3b")
_BUILDERS = {"fig2a": envs.gridworld, "fig2b": envs.obstacle_gridworld, "fig3a": envs.three_state,
             "fig3b": envs.gridworld}


@dataclasses.dataclass(frozen=True)
class TabularEnvSection(Schema):
    """[env]: keyword arguments of the experiment's MDP builder (``envs.tabular.gridworld`` for
    fig2a / fig3b, ``obstacle_gridworld`` for fig2b, ``three_state`` for fig3a); unset keys keep
    the builder's defaults, and a key the builder does not take is refused."""

    size: Optional[int] = None
    slip: Optional[float] = None
    gamma: Optional[float] = None
    goal_reward: Optional[float] = None
    reward_floor: Optional[float] = None
    rewards: Optional[tuple[float, float, float]] = None
    wind: Optional[float] = None

    def given(self) -> dict:
        """The keys set in the config."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


@dataclasses.dataclass(frozen=True)
class TabularRunSection(Schema):
    """[run]: settings of ``agents.tabular.run``; unset keys keep each figure's defaults
    (``num_iters`` and ``mode`` differ per figure)."""

    num_iters: Optional[int] = None
    mode: Optional[Literal["sampled", "exact"]] = None
    model_class: Optional[Literal["full", "blocks"]] = None
    block_size: Optional[int] = None
    num_samples: Optional[int] = None
    classifier: Optional[Literal["block", "exact"]] = None
    lr: Optional[float] = None
    model_smoothing: Optional[float] = None
    kl_coef: Optional[float] = None
    logit_clip: Optional[float] = None

    def given(self) -> dict:
        """The keys set in the config."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


@dataclasses.dataclass(frozen=True)
class TabularConfig(Schema):
    """One tabular figure (``mismatch-jax tabular CONFIG``; presets fig2a, fig2b, fig3a, fig3b).
    seeds: seeds of Fig. 2a (the other figures are exact and use one)."""

    experiment: Literal["fig2a", "fig2b", "fig3a", "fig3b"] = "fig2a"
    seeds: int = setting(100, ge=1)
    env: TabularEnvSection = TabularEnvSection()
    run: TabularRunSection = TabularRunSection()

    def check(self):
        import inspect

        builder = _BUILDERS[self.experiment]
        accepted = set(inspect.signature(builder).parameters)
        refused = sorted(set(self.env.given()) - accepted)
        if refused:
            raise ValueError(f"env.{refused[0]} is not a setting of {self.experiment}'s MDP "
                             f"({builder.__name__}); its settings: {', '.join(sorted(accepted))}")

    def mdp(self):
        """The experiment's MDP."""
        return _BUILDERS[self.experiment](**self.env.given())


def load_config(config) -> TabularConfig:
    """TOML path, mapping or ``TabularConfig`` → validated ``TabularConfig`` (None: fig2a)."""
    if config is None:
        return TabularConfig()
    if isinstance(config, TabularConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_toml(TabularConfig, config)
    return from_dict(TabularConfig, config)


def _finite(x):
    """JSON-safe float (None for ±inf / nan)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _grid(mdp) -> dict:
    """The gridworld layout ``analysis.tabular`` draws on (numpy)."""
    return {"coords": np.asarray(mdp.coords), "shape": mdp.grid_shape, "free": np.asarray(mdp.free),
            "goal": np.asarray(mdp.goal), "start": np.asarray(mdp.coords)[int(np.argmax(np.asarray(mdp.start)))]}


def _write(out_dir, name: str, fig, data: dict) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures.save_figure(fig, out / f"{name}.png")
    data = {"experiment": name, "device": jax.devices()[0].device_kind, **data}
    write_json(out / f"{name}.json", data)
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


def run_fig2a(cfg: TabularConfig, out_dir) -> dict:
    """Fig. 2a: learning curves (true expected return, mean ± std over seeds) of MnM, Q-learning
    (true model) and VMBPO on the stochastic gridworld, and MnM's optimistic dynamics as arrows."""
    seeds = cfg.seeds
    run_cfg = {"num_iters": 100, "mode": "sampled", **cfg.run.given()}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = cfg.mdp()
    methods = ("mnm", "q_learning", "vmbpo")
    keys = jax.random.split(jax.random.key(0), seeds)
    start = time.perf_counter()
    results = jax.block_until_ready(compare_methods(mdp, methods, keys, num_iters,
                                                    track_bounds=False, **run_cfg))
    elapsed = time.perf_counter() - start
    _, optimal_policy = measures.value_iteration(mdp)
    optimal = float(measures.expected_return(mdp, optimal_policy))

    summary, curves = {}, {}
    for method in methods:
        curve = np.asarray(results[method].expected_return)
        mean, std = curve.mean(0), curve.std(0)
        curves[method] = (mean, std)
        summary[method] = {
            "final_mean": float(mean[-1]), "final_std": float(std[-1]),
            "mean_curve": [float(x) for x in mean], "std_curve": [float(x) for x in std],
            "iterations_to_90pct_optimal": int(np.argmax(mean >= 0.9 * optimal) + 1)
            if np.any(mean >= 0.9 * optimal) else None,
        }
    mnm_q = results["mnm"].q[0]
    optimism = float(measures.optimism(mdp, mnm_q))
    noise_shift = np.asarray(measures.mean_displacement(mdp, mnm_q)
                             - measures.mean_displacement(mdp, mdp.p))
    fig = figures.draw_fig2a(curves, optimal, seeds, _grid(mdp), noise_shift, optimism)
    return _write(out_dir, "fig2a", fig, {
        "seeds": seeds, "num_iters": num_iters, "run": run_cfg, "env": cfg.env.given(),
        "optimal_return": optimal, "methods": summary, "mnm_optimism": optimism,
        "compiled_call_seconds_incl_compile": elapsed,
    })


def _greedy_moves(policy) -> np.ndarray:
    """The (row, column) step of each state's most likely action → [S, 2]."""
    return envs.ACTION_DELTAS[np.asarray(policy).argmax(-1)]


def run_fig2b(cfg: TabularConfig, out_dir) -> dict:
    """Fig. 2b: low-resolution (3x3-block) model on the obstacle gridworld; MnM with its block
    classifier reaches the goal, the ablation without the classifier term tries the wall."""
    run_cfg = {"num_iters": 150, "mode": "exact", "model_class": "blocks", "classifier": "exact",
               "logit_clip": 2.0, **cfg.run.given()}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = cfg.mdp()
    _, optimal_policy = measures.value_iteration(mdp)
    optimal = float(measures.expected_return(mdp, optimal_policy))
    out, policies = {}, {}
    for method in ("mnm", "mnm_no_kl"):
        res = agents.run(method, mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
        policies[method] = res.policy
        out[method] = {"expected_return": float(res.expected_return[-1]),
                       "fraction_of_optimal": float(res.expected_return[-1]) / optimal,
                       "objective": _finite(res.objective[-1]),
                       "expected_return_curve": [float(x) for x in res.expected_return]}
    panels = [(_greedy_moves(optimal_policy), f"optimal (true model): {optimal:.3f}")]
    panels += [(_greedy_moves(policies[m]), f"{m}, 3x3-block model: return {out[m]['expected_return']:.3f}")
               for m in ("mnm", "mnm_no_kl")]
    fig = figures.draw_fig2b(_grid(mdp), panels)
    return _write(out_dir, "fig2b", fig, {"num_iters": num_iters, "run": run_cfg,
                                          "env": cfg.env.given(), "optimal_return": optimal,
                                          "methods": out})


def run_fig3a(cfg: TabularConfig, out_dir) -> dict:
    """Fig. 3a: 3-state MDP; MnM and Q-learning go to the safe left cell, VMBPO to the windy right.
    Reports each method's greedy action in the start (middle) cell and its exact return."""
    run_cfg = {"num_iters": 300, "mode": "exact", **cfg.run.given()}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = cfg.mdp()
    out = {}
    for method in ("mnm", "q_learning", "vmbpo", "mnm_no_log"):
        res = agents.run(method, mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
        choice = int(np.argmax(np.asarray(res.policy[1])))
        out[method] = {"action_in_middle": ("left", "right")[choice],
                       "exact_return": float(res.expected_return[-1]),
                       "policy": np.asarray(res.policy).tolist()}
    fig = figures.draw_fig3a(out)
    return _write(out_dir, "fig3a", fig, {"num_iters": num_iters, "run": run_cfg,
                                          "env": cfg.env.given(), "methods": out})


def run_fig3b(cfg: TabularConfig, out_dir) -> dict:
    """Fig. 3b: exact MnM (value-iteration version) on the Fig. 2a gridworld; per iteration the
    MnM lower bound, the true log expected return and the VMBPO objective (upper bound)."""
    run_cfg = {"num_iters": 60, "mode": "exact", **cfg.run.given()}
    num_iters = int(run_cfg.pop("num_iters"))
    mdp = cfg.mdp()
    res = agents.run("mnm", mdp, jax.random.key(0), num_iters=num_iters, **run_cfg)
    lower, log_ret, upper = (np.asarray(x) for x in (res.mnm_bound, res.log_expected_return,
                                                     res.vmbpo_bound))
    fig = figures.draw_fig3b(lower, log_ret, upper)
    return _write(out_dir, "fig3b", fig, {
        "num_iters": num_iters, "run": run_cfg, "env": cfg.env.given(),
        "mnm_objective": lower.tolist(), "log_expected_return": log_ret.tolist(),
        "vmbpo_objective": upper.tolist(),
        "lower_bound_holds_every_iteration": bool(np.all(lower <= log_ret + 1e-5)),
        "upper_bound_holds_every_iteration": bool(np.all(upper >= log_ret - 1e-5)),
    })


_RUNNERS = {"fig2a": run_fig2a, "fig2b": run_fig2b, "fig3a": run_fig3a, "fig3b": run_fig3b}


def run_experiment(config: TabularConfig, out_dir) -> dict:
    """Runs ``config.experiment``; writes ``<experiment>.png`` and ``.json`` into ``out_dir``
    and returns the JSON dict."""
    result = _RUNNERS[config.experiment](config, out_dir)
    print(f"{config.experiment}: wrote {Path(out_dir) / config.experiment}.png and .json")
    return result
