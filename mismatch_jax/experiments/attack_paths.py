"""Lambert et al. 2020 Fig. 6: what the controller plans with the original and the attacked model
along the expert trajectory.

At every state of the expert path (the best PETS trial behind the attack's data) the CEM planner
plans with a model, warm-started from its previous plan as in MPC, but the state then follows the
expert path rather than the planned action, so both models are asked the same questions. The
first planned action per state is the control sequence the paper compares ("qualitatively
similar except for the peak at t = 25"); the per-step gap shows where the attack bites. How large
a gap is only means something next to a baseline: ``baselines`` are random last-layer changes of
the attack's search space scaled to the same LL change (``attack_space.matched_random_points``),
planned with the same keys; their gaps to the original are reported beside the attack's.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from mismatch_jax.analysis.attack import plot_planned_paths
from mismatch_jax.files import write_json

PATH_SALT = 0xFA7  # fold_in salt of the planner keys along the path


def expert_path(runs: dict) -> dict:
    """The highest-reward trial of PETS ``runs`` (``sweep.study_data.pets_runs``) → obs [T, d],
    action [T, a], reward [T] (alive steps only), return, (seed, trial)."""
    totals = np.asarray(runs["trial_rewards"])
    seed, trial = np.unravel_index(int(np.argmax(totals)), totals.shape)
    alive = np.asarray(runs["alive"][seed, trial], bool)
    return {"obs": np.asarray(runs["obs"][seed, trial])[alive],
            "action": np.asarray(runs["action"][seed, trial])[alive],
            "reward": np.asarray(runs["reward"][seed, trial])[alive],
            "return": float(totals[seed, trial]), "seed_trial": [int(seed), int(trial)]}


def planned_actions(key: jax.Array, planner, params, normalizer, path_obs) -> jax.Array:
    """First planned action at each state of ``path_obs`` [T, d] → [T, a] (one lax.scan, the plan
    warm-started along the path; the same ``key`` gives every model the same planner noise)."""
    keys = jax.random.split(key, path_obs.shape[0])

    def body(plan, inputs):
        step_key, obs = inputs
        action, plan = planner(step_key, params, normalizer, obs, plan)
        return plan, action

    _, actions = jax.lax.scan(body, planner.initial_plan, (keys, path_obs))
    return actions


def compare_planned_paths(key: jax.Array, planner, models_by_name: dict, path: dict,
                          baselines: dict | None = None, reference: str = "original") -> dict:
    """Planned actions [T, a] of each (params, normalizer) in ``models_by_name`` along ``path``
    (``expert_path``), with common planner keys → JSON-ready dict. With two models, their per-step
    gap (sum over action dims of |a₁ − a₂|): mean_abs_gap and largest_gap_step. ``baselines``
    (name → (params, normalizer)) are planned with the same keys and each one's gap to the model
    named ``reference`` goes to ``random_baseline`` (mean_abs_gap per baseline, their mean and
    range, and the planned actions)."""
    run = jax.jit(lambda p, n: planned_actions(key, planner, p, n, path["obs"]))
    out = {"expert_action": path["action"].tolist(), "expert_return": path["return"],
           "expert_seed_trial": path["seed_trial"], "planned": {}}
    for name, (params, normalizer) in models_by_name.items():
        out["planned"][name] = np.asarray(run(params, normalizer)).tolist()
    names = list(out["planned"])
    if len(names) == 2:
        gap = np.abs(np.asarray(out["planned"][names[0]]) - np.asarray(out["planned"][names[1]])).sum(-1)
        out["largest_gap_step"] = int(np.argmax(gap))
        out["mean_abs_gap"] = float(gap.mean())
    if baselines:
        base = np.asarray(out["planned"][reference])
        planned = {name: np.asarray(run(params, normalizer)) for name, (params, normalizer) in baselines.items()}
        gaps = [float(np.abs(actions - base).sum(-1).mean()) for actions in planned.values()]
        out["random_baseline"] = {
            "reference": reference, "names": list(planned), "mean_abs_gap": gaps,
            "mean_abs_gap_mean": float(np.mean(gaps)), "mean_abs_gap_range": [float(min(gaps)), float(max(gaps))],
            "planned": {name: actions.tolist() for name, actions in planned.items()}}
    return out


def write_planned_paths(key, planner, models_by_name: dict, runs: dict, out_dir, baselines: dict | None = None,
                        baseline_info: dict | None = None) -> dict:
    """Fig. 6 for ``models_by_name`` along the expert path of ``runs`` (and ``baselines``, see
    ``compare_planned_paths``; ``baseline_info`` is added to their record): writes
    attack_planned_paths.json / .png (``analysis.attack.plot_planned_paths``) into ``out_dir``
    and returns the JSON."""
    content = compare_planned_paths(jax.random.fold_in(key, PATH_SALT), planner, models_by_name, expert_path(runs),
                                    baselines)
    if baseline_info and "random_baseline" in content:
        content["random_baseline"].update(baseline_info)
    write_json(Path(out_dir) / "attack_planned_paths.json", content)
    plot_planned_paths(content, Path(out_dir) / "attack_planned_paths.png")
    return content
