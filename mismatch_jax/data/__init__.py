"""Data: study datasets (grid, sampled, expert, on-policy; grid / sampled also from visited states: ``visited``), distances to an expert path, the
on-disk cache, the trainer's ``TransitionData`` and the on-device replay buffer (``replay``)."""

from mismatch_jax.data.datasets import (
    DEFAULT_BOXES,
    Transitions,
    cached,
    collect_buckets,
    distance_weights,
    expert_dataset,
    from_trajectories,
    grid_dataset,
    load,
    min_distance,
    on_policy_dataset,
    sampled_dataset,
    save,
    spec_hash,
    split_mask,
    step_from,
)
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.data.visited import visited_grid_dataset, visited_sampled_dataset, visited_states

__all__ = [
    "DEFAULT_BOXES", "Transitions", "cached", "collect_buckets", "distance_weights", "expert_dataset", "on_policy_dataset", "from_trajectories", "grid_dataset", "load",
    "min_distance", "sampled_dataset", "save", "spec_hash", "split_mask", "step_from",
    "TransitionData", "visited_grid_dataset", "visited_sampled_dataset", "visited_states",
]
