"""mismatch_jax.agents — agents composed from envs, models and planners.

Kept import-light: import submodules explicitly, e.g. ``from mismatch_jax.agents import tabular``.
"""
