"""CEM / MPC with PETS trajectory propagation (expectation, TS1, TS∞) on learned or true dynamics."""

from mismatch_jax.planning.cem import (
    PROPAGATIONS,
    SAMPLINGS,
    CEMConfig,
    CEMInfo,
    Planner,
    Trajectory,
    cem_optimize,
    initial_dispersion,
    initial_plan,
    make_planner,
    make_true_dynamics_planner,
    model_returns,
    sample_candidates,
    mpc_episode,
    shift_plan,
    true_dynamics_returns,
)

__all__ = [
    "PROPAGATIONS", "SAMPLINGS", "CEMConfig", "CEMInfo", "Planner", "Trajectory", "cem_optimize",
    "initial_dispersion", "sample_candidates",
    "initial_plan", "make_planner", "make_true_dynamics_planner", "model_returns", "mpc_episode",
    "shift_plan", "true_dynamics_returns",
]
