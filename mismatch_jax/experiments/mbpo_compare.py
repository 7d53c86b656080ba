"""MBPO-family comparison: a config's agent variants × seeds (seeds vmapped), JSON + PNG curves.

A config (TOML, loaded strictly into ``CompareConfig``) names the agents (``mbpo_config.AGENTS``) and one
``[mbpo]`` table (``MBPOConfig``, with ``[mbpo.sac]``) shared by all of them; every agent runs
``mbpo.sac.num_seeds`` seeds as one compiled program ``jit(vmap(train))`` (or in blocks of
``seeds_per_program``, one Ray task each with ``--ray``: ``experiments.mbpo_seeds``) on the same seed keys
(paired seeds, as VaGraM's comparisons) and the same environment (incl. the distractor draw).

    mismatch-jax mbpo sweeps/vagram_distractors_cpu.toml --out runs/vagram_dist

Writes ``mbpo_compare.json`` (per agent: env_steps, eval_return [seeds, evals], their mean and
standard deviation, final returns, first env-step count whose seed-mean return exceeds
``threshold``, compile and run seconds, last model-phase metrics; ``paired``: every agent's
seed-by-seed difference to the first agent with a 95 % CI, ``paired_differences``) and
``mbpo_compare.png`` (the seed-mean evaluation return with its 95 % CI against env steps); with
both "mbpo" and an MnM agent also paper 001's Fig. 7 (``analysis.mnm_fig7``: ``mnm_fig7.png``
and ``model_stability`` in the JSON).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mismatch_jax.files import write_json
from mismatch_jax.agents import mbpo_config
from mismatch_jax.config_io import Schema, from_dict, load_toml, setting, to_dict
from mismatch_jax.experiments.mbpo_seeds import run_seeds, with_seeds


@dataclasses.dataclass(frozen=True)
class CompareConfig(Schema):
    """agents: names from ``mbpo_config.AGENTS``; mbpo: the shared MBPOConfig; threshold: return that
    counts as solved (steps-to-threshold in the JSON); out_dir: default output directory;
    title: figure title; seeds_per_program: seeds per compiled program (0 = all): blocks run one
    after another here, or as one Ray task each with ``--ray``, with the same numbers
    (``experiments.mbpo_seeds``)."""

    agents: tuple[str, ...] = ("mbpo",)
    mbpo: mbpo_config.MBPOConfig = dataclasses.field(default_factory=mbpo_config.MBPOConfig)
    threshold: float = -200.0
    seeds_per_program: int = setting(0, ge=0)
    out_dir: str = "runs/mbpo_compare"
    title: str = ""

    def check(self):
        if not self.agents:
            raise ValueError("CompareConfig.agents must name at least one agent")
        unknown = [a for a in self.agents if a not in mbpo_config.AGENTS]
        if unknown:
            raise ValueError(f"CompareConfig.agents has unknown agents {unknown}; available: {list(mbpo_config.AGENTS)}")


def load_compare_config(path) -> CompareConfig:
    """Strict TOML → CompareConfig (unknown keys / wrong types raise ConfigError naming the key)."""
    return load_toml(CompareConfig, path)


def compare_config_from_dict(data) -> CompareConfig:
    """Strict dict → CompareConfig."""
    return from_dict(CompareConfig, data)


PHASE_LOG = ("model_train_loss", "model_val_mse", "classifier_loss", "classifier_logit_real",
             "classifier_logit_model")


def steps_to_threshold(env_steps: np.ndarray, returns: np.ndarray, threshold: float) -> Optional[int]:
    """First env-step count whose return exceeds ``threshold`` (env_steps, returns [evals]); None
    if never."""
    above = np.nonzero(np.asarray(returns) > threshold)[0]
    return int(np.asarray(env_steps)[above[0]]) if above.size else None


def run_agent(name: str, config: mbpo_config.MBPOConfig, env=None, num_seeds: Optional[int] = None,
              threshold: float = -200.0, seeds_per_program: int = 0, cluster=None) -> dict:
    """Runs agent ``name`` on ``num_seeds`` (default config.sac.num_seeds) vmapped seeds, in blocks
    of ``seeds_per_program`` (0 = one program; on the Ray ``cluster`` one task per block);
    returns the JSON-ready summary (compile time apart from run time). ``env``: the config's
    env when already built (Ray tasks build their own)."""
    config = with_seeds(mbpo_config.agent_config(name, config), num_seeds)
    # Seeds laid out like any population (--layout; "auto": the backend's default for the
    # networks' width), sharded over the local devices when they divide the seed count (e.g.
    # `mismatch-jax mbpo --devices 2` on a CPU: 8 seeds took 0.47x the sequential runs).
    ran = run_seeds(config, seeds_per_program, cluster, lambda line: print(f"{name}: {line}", flush=True), env)
    metrics, compile_s, run_s = ran["metrics"], ran["compile_s"], ran["run_s"]
    returns = np.asarray(metrics.eval_return)  # [S, evals]
    steps = np.asarray(metrics.env_steps[0])
    mean, std = returns.mean(0), returns.std(0)
    last = lambda f: [round(float(v), 4) for v in np.asarray(getattr(metrics, f))[:, -1]]
    return {
        "agent": name,
        "num_seeds": int(returns.shape[0]),
        "seed_devices": ran["devices"],
        "seed_programs": ran["blocks"],
        "env_steps": [int(s) for s in steps],
        "eval_return": [[round(float(r), 2) for r in row] for row in returns],
        "eval_return_mean": [round(float(r), 2) for r in mean],
        "eval_return_std": [round(float(r), 2) for r in std],
        "eval_return_ci95": [[round(float(lo), 2), round(float(hi), 2)] for lo, hi in zip(*mean_ci(returns))],
        "final_return_mean": round(float(mean[-1]), 2),
        "final_return_std": round(float(std[-1]), 2),
        "final_returns": [round(float(r), 2) for r in returns[:, -1]],
        "steps_to_threshold_mean_curve": steps_to_threshold(steps, mean, threshold),
        "steps_to_threshold_per_seed": [steps_to_threshold(steps, r, threshold) for r in returns],
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "last_model_val_mse": last("model_val_mse"),
        "last_q_mean": last("q_mean"),
        "last_classifier_loss": last("classifier_loss"),
        # The last model phase of every evaluation interval, [seeds, evals] (NaN where none ran):
        # the MnM diagnostics (classifier loss, its log p/q estimates on real and model rows)
        # next to the model's own loss and held-out MSE.
        "phase_log": {f: [[_finite(v) for v in row] for row in np.asarray(getattr(metrics, f))]
                      for f in PHASE_LOG},
        # The critics' mean Q on their training batches per interval, [seeds, evals] (Fig. 7a).
        "q_mean": [[_finite(v) for v in row] for row in np.asarray(metrics.q_mean)],
    }


def _finite(v, digits: int = 6):
    """A JSON number rounded to ``digits`` significant digits (held-out MSEs are small), None
    for NaN / inf."""
    v = float(v)
    return float(f"{v:.{digits}g}") if np.isfinite(v) else None


def paired_differences(agent: dict, baseline: dict, level: float = 0.95) -> dict:
    """Seed-by-seed differences agent − baseline of the final return and of the mean return over
    all evaluations (the area under the learning curve), for agents run on the same seed keys
    (paired seeds): per-seed values, mean, Student-t CI at ``level`` over seeds, and how many
    seeds favour the agent. A seed that diverged on either side (NaN, or null in a JSON) is
    left out of the mean and CI and counted in ``diverged``."""
    from scipy import stats

    ours = np.asarray(agent["eval_return"], np.float64)
    theirs = np.asarray(baseline["eval_return"], np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"paired differences need the same seeds and evaluations: {agent['agent']} "
                         f"has {ours.shape}, {baseline['agent']} {theirs.shape}")
    out = {"versus": baseline["agent"], "seeds": int(ours.shape[0]), "level": level}
    for name, all_diff in (("final", ours[:, -1] - theirs[:, -1]), ("curve_mean", ours.mean(1) - theirs.mean(1))):
        diff = all_diff[np.isfinite(all_diff)]
        mean = float(diff.mean()) if diff.size else float("nan")
        if diff.size > 1 and diff.std() > 0:
            low, high = stats.t.interval(level, diff.size - 1, loc=mean, scale=stats.sem(diff))
        else:
            low = high = mean
        out[name] = {"differences": [round(float(d), 2) if np.isfinite(d) else None for d in all_diff],
                     "mean": round(mean, 2), "ci": [round(float(low), 2), round(float(high), 2)],
                     "seeds_better": int((diff > 0).sum()), "seeds_worse": int((diff < 0).sum()),
                     "diverged": int((~np.isfinite(all_diff)).sum())}
    return out


def mean_ci(returns: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of the seed mean: returns [S, evals] → (low [evals], high [evals]),
    over the seeds whose return is finite at that evaluation (a diverged seed's NaN / null is
    left out; the mean itself where fewer than 2 remain)."""
    from scipy import stats

    returns = np.asarray(returns, np.float64)
    finite = np.isfinite(returns)
    count = finite.sum(0)
    mean = np.nansum(np.where(finite, returns, 0.0), 0) / np.maximum(count, 1)
    mean = np.where(count > 0, mean, np.nan)
    spread = np.sqrt(np.nansum(np.where(finite, (returns - mean) ** 2, 0.0), 0) / np.maximum(count - 1, 1))
    half = np.where(count > 1, stats.t.ppf(0.5 + level / 2, np.maximum(count - 1, 1)) * spread
                    / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean - half, mean + half


MIN_SEEDS_FOR_CI = 3  # a 2-seed Student-t interval is ±12.7 standard errors: drawn, it only shows noise


def curve_stats(returns: np.ndarray, level: float = 0.95, min_seeds: int = MIN_SEEDS_FOR_CI) -> dict:
    """Per evaluation of returns [S, evals] (NaN = a diverged seed): n (seeds finite there), mean
    over those seeds, and the Student-t CI of that mean (``mean_ci``) where n ≥ ``min_seeds``
    (NaN elsewhere, so no band is drawn from one or two survivors)."""
    returns = np.asarray(returns, np.float64)
    count = np.isfinite(returns).sum(0)
    low, high = mean_ci(returns, level)
    enough = count >= min_seeds
    return {"n": count, "mean": (low + high) / 2, "low": np.where(enough, low, np.nan),
            "high": np.where(enough, high, np.nan)}


def draw_curves(results: list[dict], title: str = "", threshold: Optional[float] = None):
    """The figure of ``plot_curves`` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, r in enumerate(results):
        colour = f"C{i}"
        x = np.asarray(r["env_steps"])
        returns = np.asarray(r["eval_return"], np.float64)  # null (a diverged seed) → NaN
        stats_ = curve_stats(returns)
        seeds = returns.shape[0]
        for seed in returns:  # every seed's own curve, up to where it diverged
            ax.plot(x, seed, color=colour, lw=0.6, alpha=0.35)
        lost = np.flatnonzero(stats_["n"] < seeds)
        label = f"{r['agent']} ({seeds} seeds"
        if lost.size:
            label += f"; {seeds - int(stats_['n'].min())} diverged from step {x[lost[0]]}: mean of the finite, n marked)"
        else:
            label += ")"
        ax.plot(x, stats_["mean"], color=colour, lw=1.8, label=label)
        ax.fill_between(x, stats_["low"], stats_["high"], color=colour, alpha=0.15)
        for j in lost:
            ax.annotate(f"n={int(stats_['n'][j])}", (x[j], stats_["mean"][j]), fontsize=7, color=colour,
                        xytext=(2, 3), textcoords="offset points")
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    fig.text(0.01, 0.01, f"thick: mean over the seeds finite at that evaluation; band: its 95 % Student-t CI\n"
             f"(drawn only where ≥ {MIN_SEEDS_FOR_CI} seeds are finite); thin: each seed", fontsize=6.5, color="gray")
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_curves(results: list[dict], path: Path, title: str = "", threshold: Optional[float] = None) -> None:
    """Evaluation return against env steps, one colour per agent: each seed's curve (thin), the
    mean over the seeds still finite at each evaluation (thick; "n=k" marks evaluations where
    fewer than all seeds remain, and the label says from when) and its 95 % Student-t CI, drawn
    only where at least ``MIN_SEEDS_FOR_CI`` seeds remain (``curve_stats``)."""
    import matplotlib.pyplot as plt

    fig = draw_curves(results, title, threshold)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_compare(config: CompareConfig, out_dir, num_seeds: Optional[int] = None, options=None) -> dict:
    """Runs every agent of ``config``; writes mbpo_compare.json / .png into ``out_dir``.
    ``options``: the CLI's parsed arguments (``--ray`` runs the seed blocks as Ray tasks)."""
    from mismatch_jax.experiments.sweep_command import ray_options

    ray = ray_options(options) if options is not None and hasattr(options, "ray") else None
    cluster = None
    if ray is not None:  # a wrong address fails here, before anything is written
        from mismatch_jax.sweep.ray_runner import connect

        cluster = connect(ray)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = mbpo_config.make_env(config.mbpo)
    results = []
    try:
        for name in config.agents:
            results.append(run_agent(name, config.mbpo, env, num_seeds, config.threshold,
                                     config.seeds_per_program, cluster))
            r = results[-1]
            print(f"{name}: final return {r['final_return_mean']} ± {r['final_return_std']} "
                  f"(compile {r['compile_s']} s, run {r['run_s']} s)", flush=True)
    finally:
        if cluster is not None:
            cluster.close()
    for r in results[1:]:
        r["paired"] = paired_differences(r, results[0])
        final = r["paired"]["final"]
        print(f"{r['agent']} − {results[0]['agent']} (paired seeds): final {final['mean']} "
              f"[{final['ci'][0]}, {final['ci'][1]}] 95 % CI; better on {final['seeds_better']} of "
              f"{r['paired']['seeds']} seeds", flush=True)
    device = jax.devices()[0]
    summary = {
        "experiment": "mbpo_compare",
        "platform": device.platform,
        "device_kind": device.device_kind,
        "config": to_dict(config),
        "env": env.name,
        "agents": results,
    }
    names = [r["agent"] for r in results]
    if "mbpo" in names and ("mnm_approx" in names or "mnm" in names):
        from mismatch_jax.analysis import mnm_fig7

        summary["model_stability"] = mnm_fig7.model_stability(summary)
        mnm_fig7.plot_fig7(summary, out / "mnm_fig7.png")
    write_json(out / "mbpo_compare.json", summary)
    plot_curves(results, out / "mbpo_compare.png", config.title or env.name, config.threshold)
    return summary
