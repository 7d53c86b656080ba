"""Name → environment factory registry: ``make(name, **kwargs)``.

Built-in environments are registered lazily by "module:attribute" so that importing the package
does not import MuJoCo/brax until an environment that needs them is made.
"""

from __future__ import annotations

import importlib
from typing import Callable, Union

from mismatch_jax.envs.base import Env

Factory = Union[Callable[..., Env], str]

_REGISTRY: dict[str, tuple[Factory, dict]] = {
    "cartpole_balance": ("mismatch_jax.envs.cartpole:CartpoleBalance", {}),
    "cartpole_swingup": ("mismatch_jax.envs.cartpole_swingup:CartpoleSwingup", {}),
    "pendulum": ("mismatch_jax.envs.pendulum:Pendulum", {}),
    "halfcheetah": ("mismatch_jax.envs.brax_adapter:BraxEnv", {"env_name": "halfcheetah"}),
    # The objective-mismatch study's half-cheetah: generalized coordinates, so a state rebuilt from
    # the observation (state_from_obs) steps exactly as the original one (positional keeps
    # maximal coordinates that q, qd do not determine: 4-32 % of a step's change differs).
    "halfcheetah_generalized": ("mismatch_jax.envs.brax_adapter:BraxEnv",
                                {"env_name": "halfcheetah", "backend": "generalized"}),
    "hopper": ("mismatch_jax.envs.brax_adapter:BraxEnv", {"env_name": "hopper"}),
    "inverted_pendulum": ("mismatch_jax.envs.brax_adapter:BraxEnv", {"env_name": "inverted_pendulum"}),
    "ant": ("mismatch_jax.envs.brax_adapter:BraxEnv", {"env_name": "ant"}),
}


def register(name: str, factory: Factory, **default_kwargs) -> None:
    """Registers ``factory(**kwargs) -> Env`` (or a "module:attr" path) under a unique name."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = (factory, default_kwargs)


def available() -> list[str]:
    """Sorted names accepted by ``make``."""
    return sorted(_REGISTRY)


def check_env(name: str) -> None:
    """Raises ValueError naming the valid environments unless ``name`` is registered (configs
    call it so that a typo fails when the config loads, not after a compile)."""
    if name not in _REGISTRY:
        raise ValueError(f"env: unknown environment {name!r}; available: {', '.join(available())}")


def make(name: str, **kwargs) -> Env:
    """Builds the environment registered as ``name``; unknown names list the valid ones."""
    check_env(name)
    factory, defaults = _REGISTRY[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**{**defaults, **kwargs})
