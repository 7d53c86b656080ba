"""CEM (``cem``) and model-predictive control (``mpc``): PETS trajectory propagation (expectation,
TS1, TS∞) on learned models, the true dynamics, or any one-step function with a terminal value."""

from mismatch_jax.planning.cem import (
    PROPAGATIONS,
    SAMPLINGS,
    CEMConfig,
    CEMInfo,
    cem_optimize,
    initial_dispersion,
    initial_plan,
    sample_candidates,
    shift_plan,
)
from mismatch_jax.planning.mpc import (
    Planner,
    PlannerFn,
    ReturnsFn,
    Trajectory,
    candidate_devices_for,
    make_planner,
    make_true_dynamics_planner,
    make_value_planner,
    mean_model_step,
    model_returns,
    mpc_episode,
    planner_from_returns,
    true_dynamics_returns,
    true_env_step,
)

__all__ = [
    "PROPAGATIONS", "SAMPLINGS", "CEMConfig", "CEMInfo", "Planner", "PlannerFn", "ReturnsFn", "Trajectory",
    "candidate_devices_for", "cem_optimize", "initial_dispersion", "initial_plan", "make_planner", "make_true_dynamics_planner",
    "make_value_planner", "mean_model_step", "model_returns", "mpc_episode", "planner_from_returns",
    "sample_candidates", "shift_plan", "true_dynamics_returns", "true_env_step",
]
