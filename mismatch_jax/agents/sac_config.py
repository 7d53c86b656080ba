"""SAC's configuration: the static ``SACConfig`` (the ``[sac]`` table) and the vmappable
``SACHParams`` (learning rates, γ, τ, initial α, target entropy), whose defaults come from the
config; plus the env and the seed keys a run starts from."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.config_io import Schema, from_dict, load_toml, setting
from mismatch_jax.envs.base import Env


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SACConfig(Schema):
    """Static SAC hyperparameters (hashable). Load strictly with ``load_sac_config(path)`` or
    ``sac_config_from_dict(mapping)``.

    env: registry name used by ``make_env``. total_env_steps: env steps of the whole run
    (a multiple of eval_interval). eval_interval: env steps between evaluations (one outer scan
    iteration). learning_starts: steps of uniformly random actions before updates start.
    num_eval_episodes: deterministic-policy episodes per evaluation. buffer_capacity: replay
    rows. batch_size: transitions per update. updates_per_step: gradient updates per env step
    (UTD ratio). hidden_size / num_hidden_layers: actor and critic MLPs (ReLU).
    actor_lr / critic_lr / alpha_lr: Adam step sizes. gamma: discount. tau: Polyak rate of the
    target critics. init_alpha: initial temperature. target_entropy: defaults to −action_dim.
    log_std_min / log_std_max: range of the policy's log standard deviation.
    seed / num_seeds: used by scripts and sweeps (``seed_keys``), not by ``train``.
    """

    env: str = "pendulum"
    total_env_steps: int = setting(15_000, ge=1)
    eval_interval: int = setting(1_000, ge=1)
    learning_starts: int = setting(1_000, ge=0)
    num_eval_episodes: int = setting(5, ge=1)
    buffer_capacity: int = setting(100_000, ge=1)
    batch_size: int = setting(256, ge=1)
    updates_per_step: int = setting(1, ge=1)
    hidden_size: int = setting(256, ge=1)
    num_hidden_layers: int = setting(2, ge=1)
    actor_lr: float = setting(3e-4, gt=0.0)
    critic_lr: float = setting(3e-4, gt=0.0)
    alpha_lr: float = setting(3e-4, gt=0.0)
    gamma: float = setting(0.99, ge=0.0, lt=1.0)
    tau: float = setting(0.005, gt=0.0, le=1.0)
    init_alpha: float = setting(1.0, gt=0.0)
    target_entropy: Optional[float] = None
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    seed: int = setting(0, ge=0)
    num_seeds: int = setting(5, ge=1)

    def check(self):
        if self.total_env_steps % self.eval_interval:
            raise ValueError(
                f"SACConfig.total_env_steps ({self.total_env_steps}) must be a multiple of "
                f"eval_interval ({self.eval_interval}); round total_env_steps to a multiple"
            )
        if self.learning_starts > self.total_env_steps:
            raise ValueError(
                f"SACConfig.learning_starts must be in [0, total_env_steps={self.total_env_steps}], "
                f"got {self.learning_starts}"
            )
        if not self.log_std_min < self.log_std_max:
            raise ValueError(
                f"SACConfig.log_std_min ({self.log_std_min}) must be < log_std_max ({self.log_std_max})"
            )


def sac_config_from_dict(data) -> SACConfig:
    """Strict: unknown keys / wrong types / impossible values raise ``ConfigError``."""
    return from_dict(SACConfig, data)


def load_sac_config(path) -> SACConfig:
    """Reads a SAC TOML file (top-level keys = ``SACConfig`` fields) strictly."""
    return load_toml(SACConfig, path)


def make_env(config: SACConfig, **env_kwargs) -> Env:
    """The environment named by ``config.env`` from the registry."""
    from mismatch_jax.envs import registry

    return registry.make(config.env, **env_kwargs)


def seed_keys(config: SACConfig, seed: Optional[int] = None) -> jax.Array:
    """[num_seeds] keys for ``jax.vmap(train)``: fold_in(key(seed), i), independent of how many
    seeds run together."""
    root = jax.random.key(config.seed if seed is None else seed)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(config.num_seeds))


@struct.dataclass
class SACHParams:
    """The SAC hyper-parameters that change no shape, as a vmappable pytree of float32 leaves:
    [] for one run, [n, ...] leading axes for a sweep (``jax.vmap`` over them).

    actor_lr / critic_lr / alpha_lr: Adam step sizes. gamma: discount. tau: Polyak rate of the
    target critics. init_alpha: initial temperature (used by ``init``). target_entropy: of the
    temperature loss (the config's None is resolved to −action_dim).
    """

    actor_lr: jax.Array
    critic_lr: jax.Array
    alpha_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy: jax.Array

    @classmethod
    def from_config(cls, config: SACConfig, action_dim: int) -> "SACHParams":
        """The config's values as [] float32 leaves (what ``hparams=None`` means everywhere)."""
        target_entropy = -action_dim if config.target_entropy is None else config.target_entropy
        f32 = lambda v: jnp.asarray(v, jnp.float32)
        return cls(actor_lr=f32(config.actor_lr), critic_lr=f32(config.critic_lr),
                   alpha_lr=f32(config.alpha_lr), gamma=f32(config.gamma), tau=f32(config.tau),
                   init_alpha=f32(config.init_alpha), target_entropy=f32(target_entropy))

    def broadcast(self, n: int) -> "SACHParams":
        """Every leaf [] → [n] (then ``.replace(actor_lr=lrs)`` sets the swept fields)."""
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (n,) + jnp.shape(v)), self)
