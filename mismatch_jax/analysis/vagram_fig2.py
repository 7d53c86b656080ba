"""Summary numbers and the figure of VaGraM Fig. 2 (``experiments.vagram_fig2``), from its curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def summarize_curves(curves: dict) -> dict:
    """Scalars of one (model, loss) run; curves[name] is [seeds, S, E + 1].

    initial: seed-mean value of the untrained model (step 0); first / final: seed-mean value at
    the end of the first / last value function; max / min over
    all recorded points of the seed-mean curve; seeds_grew: seeds whose final value exceeds
    their first; phase_grew_fraction: fraction of (seed, value function) pairs whose value at the
    end of the phase exceeds the value right after the value function changed (a model drifting
    under its own loss); jump_at_update_median: median over seeds and updates of the value
    right after an update / the value just before it (1 = the update changes nothing)."""
    out = {}
    for name in ("mse", "vaml"):
        y = np.asarray(curves[name], np.float64)
        seeds = y.shape[0]
        mean_end = y[:, :, -1].mean(axis=0)
        flat_mean = y.reshape(seeds, -1).mean(axis=0)
        first, final = float(mean_end[0]), float(mean_end[-1])
        jumps = y[:, 1:, 0] / np.maximum(y[:, :-1, -1], 1e-30)
        out[name] = {
            "initial": float(y[:, 0, 0].mean()), "first": first, "final": final, "ratio_final_to_first": final / first if first else None,
            "max": float(flat_mean.max()), "min": float(flat_mean.min()),
            "final_stderr": float(y[:, -1, -1].std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else None,
            "seeds_grew": int(np.sum(y[:, -1, -1] > y[:, 0, -1])),
            "phase_grew_fraction": float(np.mean(y[:, :, -1] > y[:, :, 0])),
            "jump_at_update_median": float(np.median(jumps)) if jumps.size else None,
        }
    return out


def plot_fig2(path: Path, config, results: dict):
    """fig2.png: held-out VAML error (top) and MSE (bottom) against model steps, one column per model
    type, mean ± standard error over seeds per loss; ``config`` is the experiment's Fig2Config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mc = config.models
    steps_per_eval = mc.steps_per_value_function // mc.evals_per_value_function
    s = config.num_snapshots
    # Column 0 of snapshot k sits at step k·T (value function just changed), column j at k·T + j·T/E.
    x = (np.arange(s)[:, None] * mc.steps_per_value_function
         + np.arange(mc.evals_per_value_function + 1)[None, :] * steps_per_eval).reshape(-1)
    colors = {"mse": "tab:blue", "vaml": "tab:red", "vagram": "tab:green"}
    labels = {"mse": "MSE", "vaml": "VAML", "vagram": "VaGraM"}
    titles = {"linear": "linear model", "mlp": f"NN ({mc.hidden_size} hidden units)"}
    fig, axes = plt.subplots(2, len(mc.model_types), figsize=(5.5 * len(mc.model_types), 7.5),
                             squeeze=False)
    for col, model_type in enumerate(mc.model_types):
        for row, (metric, ylabel) in enumerate((("vaml", "held-out VAML error"), ("mse", "held-out MSE"))):
            ax = axes[row, col]
            for loss in mc.losses:
                y = np.asarray(results[model_type][loss][metric]).reshape(mc.num_seeds, -1)
                mean = y.mean(axis=0)
                err = y.std(axis=0, ddof=1) / math.sqrt(y.shape[0]) if y.shape[0] > 1 else 0 * mean
                ax.plot(x, mean, color=colors[loss], label=labels[loss], lw=1.2)
                ax.fill_between(x, mean - err, mean + err, color=colors[loss], alpha=0.25)
            ax.set_yscale("log")
            ax.set_xlabel("model training steps (value function updated every "
                          f"{mc.steps_per_value_function})")
            ax.set_ylabel(ylabel)
            ax.set_title(titles[model_type])
            ax.legend()
    fig.suptitle(f"VaGraM Fig. 2: Pendulum, {s} SAC value functions, mean ± s.e. over "
                 f"{mc.num_seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
