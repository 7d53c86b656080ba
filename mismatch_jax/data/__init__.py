"""Transition datasets: grid, sampled, expert, on-policy; distances to an expert path; cache."""

from mismatch_jax.data.datasets import (
    DEFAULT_BOXES,
    Transitions,
    cached,
    from_trajectories,
    grid_dataset,
    load,
    min_distance,
    sampled_dataset,
    save,
    spec_hash,
    split_mask,
    step_from,
)

__all__ = [
    "DEFAULT_BOXES", "Transitions", "cached", "from_trajectories", "grid_dataset", "load",
    "min_distance", "sampled_dataset", "save", "spec_hash", "split_mask", "step_from",
]
