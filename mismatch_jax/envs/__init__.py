"""Functional environments. ``make(name, **kwargs)`` builds one; ``available()`` lists names."""

from mismatch_jax.envs.base import Env, EnvState, rollout
from mismatch_jax.envs.registry import available, make, register

__all__ = ["Env", "EnvState", "available", "make", "register", "rollout"]
