"""Paper 001's Fig. 7 from an ``mbpo_compare.json`` holding an MLE agent ("mbpo") and an MnM agent
("mnm_approx" or "mnm") run on the same (paired) seeds.

* Fig. 7b (stability): per seed, the MnM model's held-out MSE after each evaluation interval's
  last model phase, against the minimum over the run of the paired MLE model's held-out MSE
  (dashed). The paper draws one MLE minimum; we draw each seed's own, since each seed has its
  own buffer and validation rows. ``model_stability`` states the acceptance (every seed's final
  MnM MSE within ``factor`` × its MLE minimum).
* Fig. 7a (Q-values): the SAC critics' mean Q on their training batches over training, per seed
  (thin) and the seed mean (thick), both agents.

    python -m mismatch_jax.analysis.mnm_fig7 runs/mnm_distractors_cpu/mbpo_compare.json OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _agent(summary: dict, names: tuple[str, ...]) -> dict:
    for a in summary["agents"]:
        if a["agent"] in names:
            return a
    raise ValueError(f"mbpo_compare.json has no agent among {names}; it has {[a['agent'] for a in summary['agents']]}")


def _array(rows) -> np.ndarray:
    """JSON rows (null = NaN) → float64 [seeds, evals]."""
    return np.asarray([[np.nan if v is None else v for v in row] for row in rows], np.float64)


def model_stability(summary: dict, factor: float = 3.0, mnm: tuple[str, ...] = ("mnm_approx", "mnm")) -> dict:
    """Per seed: the MnM model's final held-out MSE, the paired MLE model's minimum over the run,
    their ratio and whether it is ≤ ``factor``; ``all_within``: every seed passes (a NaN final
    MSE fails)."""
    ours = _array(_agent(summary, mnm)["phase_log"]["model_val_mse"])
    mle = _array(_agent(summary, ("mbpo",))["phase_log"]["model_val_mse"])
    final = ours[:, -1]
    floor = np.nanmin(mle, axis=1)
    ratio = final / floor
    within = np.isfinite(ratio) & (ratio <= factor)
    r = lambda v: [None if not np.isfinite(x) else round(float(x), 6) for x in v]
    return {"factor": factor, "mnm_final_val_mse": r(final), "mle_min_val_mse": r(floor),
            "ratio": r(ratio), "within": [bool(w) for w in within], "all_within": bool(within.all()),
            "failing_seeds": [int(i) for i in np.flatnonzero(~within)]}


def q_values(summary: dict) -> dict:
    """agent → (env_steps [evals], q_mean [seeds, evals]) for every agent that logged it."""
    return {a["agent"]: (np.asarray(a["env_steps"]), _array(a["q_mean"])) for a in summary["agents"] if "q_mean" in a}


def draw_fig7(summary: dict, factor: float = 3.0, mnm: tuple[str, ...] = ("mnm_approx", "mnm")):
    """The figure (matplotlib Figure, not saved): left Fig. 7a, right Fig. 7b."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours_agent = _agent(summary, mnm)
    x = np.asarray(ours_agent["env_steps"])
    ours = _array(ours_agent["phase_log"]["model_val_mse"])
    mle = _array(_agent(summary, ("mbpo",))["phase_log"]["model_val_mse"])
    stability = model_stability(summary, factor, mnm)
    fig, (ax_q, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, (name, (steps, q)) in enumerate(q_values(summary).items()):
        for seed in q:
            ax_q.plot(steps, seed, color=f"C{i}", lw=0.6, alpha=0.35)
        ax_q.plot(steps, np.nanmean(q, 0), color=f"C{i}", lw=1.8, label=f"{name} ({q.shape[0]} seeds)")
    ax_q.set_xlabel("env steps")
    ax_q.set_ylabel("mean Q on SAC batches")
    ax_q.set_title("(a) Q-value estimates")
    ax_q.legend(fontsize=7)
    for s in range(ours.shape[0]):
        colour = f"C{s % 10}"
        ax_m.plot(x, ours[s], color=colour, lw=1.2)
        ax_m.axhline(np.nanmin(mle[s]), color=colour, lw=0.9, ls="--")
        ax_m.plot(x, mle[s], color=colour, lw=0.6, ls=":", alpha=0.6)
    ax_m.set_yscale("log")
    ax_m.set_xlabel("env steps")
    ax_m.set_ylabel("held-out MSE of the model")
    passed = sum(stability["within"])
    ax_m.set_title(f"(b) {ours_agent['agent']} model (solid), MLE model (dotted), its minimum (dashed)\n"
                   f"final ≤ {factor:g}× MLE minimum: {passed} of {len(stability['within'])} seeds", fontsize=9)
    fig.text(0.01, 0.01, "(b): MSE after each evaluation interval's last model phase, on that seed's held-out real "
             "rows (all state dims and the reward); dashed: the paired MLE (mbpo) seed's minimum over its run",
             fontsize=6.5, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_fig7(summary: dict, path: Path, factor: float = 3.0) -> None:
    """Writes ``draw_fig7`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = draw_fig7(summary, factor)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    """python -m mismatch_jax.analysis.mnm_fig7 MBPO_COMPARE_JSON OUT_PNG: draws and prints the
    stability check."""
    import json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m mismatch_jax.analysis.mnm_fig7 MBPO_COMPARE_JSON OUT_PNG")
    summary = json.loads(Path(args[0]).read_text())
    plot_fig7(summary, Path(args[1]))
    print(json.dumps(model_stability(summary)))


if __name__ == "__main__":
    main()
