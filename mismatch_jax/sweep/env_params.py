"""Sweeps over the true dynamics: the ``[env_params]`` section and the settings it expands to.

An environment keeps its physical constants in a params pytree (``Env.default_params``; e.g.
``CartpoleSwingupParams``: gravity, joint_damping, motor_gear, cart_mass, pole_mass), so the
true dynamics of every model of a population can differ by a vmapped argument. A sweep's
``[env_params]`` names constants and their values::

    [env_params.grid]          # every combination of the lists (combine = "zip": i-th with i-th)
    motor_gear = [50.0, 75.0, 100.0, 150.0]

or draws them::

    [env_params]
    draws = 6                  # settings drawn, each constant uniform in [low, high]
    [env_params.draw]
    gravity = [4.9, 19.6]

Either way the section expands to P *settings* (one value per named constant; the others keep
their defaults). Every setting gets its own study datasets (its PETS runs, grid and sampled data,
LL evaluation sets) and ``population.replicates`` models per model type × train dataset, scored by
CEM in that setting's true dynamics. Setting ``s`` draws its values from
``fold_in(fold_in(key(seed), ENV_PARAMS_SALT), s)``, and everything it builds is keyed by ``s``,
so writing the drawn values as a list (``combine = "zip"`` for several constants) gives
identical rows. One model per drawn dynamics is ``draws = N`` with ``replicates = 1``.
Constants with array values (``joint_damping`` [2]) take a number (broadcast) or a full list.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.config_io import Schema, setting

ENV_PARAMS_SALT = 0xE9F7  # fold_in salt of the settings' draws

Value = float | tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class EnvParamsConfig(Schema):
    """[env_params]: the true-dynamics settings of a sweep (see the module docstring).

    grid: constant name → list of values; the settings are all combinations (``combine =
    "product"``) or the i-th values together (``"zip"``, equal lengths).
    draw: constant name → [low, high]; ``draws`` settings, each value uniform (``draw_scale =
    "log_uniform"``: log-uniform) in its range. grid and draw exclude each other."""

    grid: tuple[tuple[str, tuple[Value, ...]], ...] = ()
    combine: Literal["product", "zip"] = "product"
    draw: tuple[tuple[str, tuple[Value, Value]], ...] = ()
    draws: int = setting(0, ge=0)
    draw_scale: Literal["uniform", "log_uniform"] = "uniform"

    def check(self):
        if self.grid and self.draw:
            raise ValueError("give either grid (value lists) or draw (ranges), not both")
        if self.draw and self.draws < 1:
            raise ValueError("draw names ranges: set draws >= 1 (the number of settings drawn)")
        if self.draws and not self.draw:
            raise ValueError(f"draws = {self.draws} needs ranges in [env_params.draw] (name = [low, high])")
        for name, values in self.grid:
            if not values:
                raise ValueError(f"grid.{name} must list at least one value")
        if self.combine == "zip" and len({len(v) for _, v in self.grid}) > 1:
            lengths = {name: len(v) for name, v in self.grid}
            raise ValueError(f"combine = 'zip' needs lists of equal length, got {lengths}")
        for name, (low, high) in self.draw:
            if not np.all(np.asarray(high, np.float64) > np.asarray(low, np.float64)):
                raise ValueError(f"draw.{name}: high must exceed low, got [{low}, {high}]")
            if self.draw_scale == "log_uniform" and not np.all(np.asarray(low, np.float64) > 0):
                raise ValueError(f"draw.{name}: log_uniform ranges must be positive, got low = {low}")

    @property
    def enabled(self) -> bool:
        """Whether the section names any constant."""
        return bool(self.grid or self.draw)

    @property
    def names(self) -> tuple[str, ...]:
        """The constants swept, in config order."""
        return tuple(name for name, _ in (self.grid or self.draw))

    @property
    def num_settings(self) -> int:
        """P: the number of true-dynamics settings (1 when the section is empty)."""
        if self.draw:
            return self.draws
        if not self.grid:
            return 1
        lengths = [len(values) for _, values in self.grid]
        return lengths[0] if self.combine == "zip" else int(np.prod(lengths))


def _constants(env) -> dict[str, np.ndarray]:
    params = env.default_params
    if not dataclasses.is_dataclass(params):
        raise ValueError(f"{env.name}: its physical constants are not a named params dataclass, so "
                         "[env_params] cannot name them (use cartpole_swingup, cartpole_balance or pendulum)")
    return {f.name: np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params)}


def _as_array(value: Value, shape: tuple[int, ...], where: str) -> np.ndarray:
    array = np.asarray(value, np.float32)
    if array.ndim == 0:
        return np.broadcast_to(array, shape).copy()
    if array.shape != shape:
        raise ValueError(f"{where}: the constant has shape {shape}; give a number (broadcast) or "
                         f"a list of {shape[0] if shape else 1}, got {list(np.asarray(value).ravel())}")
    return array


def check_for_env(config: EnvParamsConfig, env) -> None:
    """Raises ValueError naming ``env_params.<table>.<name>`` when a constant is not one of the
    env's (listing them) or a value's shape does not fit it."""
    if not config.enabled:
        return
    constants = _constants(env)
    table = "grid" if config.grid else "draw"
    for name, values in (config.grid or config.draw):
        if name not in constants:
            raise ValueError(f"env_params.{table}.{name}: {env.name} has no physical constant {name!r}; "
                             f"its constants: {', '.join(sorted(constants))}")
        for i, value in enumerate(values):
            _as_array(value, constants[name].shape, f"env_params.{table}.{name}[{i}]")


class Settings(NamedTuple):
    """P true-dynamics settings. values: constant name → float32 [P, *shape]; params: the env's
    params pytree with a leading [P] axis (constants not named keep their defaults)."""

    values: dict[str, np.ndarray]
    params: Any

    @property
    def size(self) -> int:
        """P."""
        return next(iter(self.values.values())).shape[0]

    def one(self, index: int) -> Any:
        """The params pytree of setting ``index`` (no leading axis)."""
        return jax.tree.map(lambda a: a[index], self.params)

    def columns(self, index: int) -> dict[str, Any]:
        """The result-table columns of setting ``index``: ``env_<name>`` (a float, or a list for
        array constants)."""
        out = {}
        for name, values in self.values.items():
            value = values[index]
            out[f"env_{name}"] = float(value) if value.ndim == 0 else [float(v) for v in value]
        return out


def expand(config: EnvParamsConfig, env, seed: int) -> Settings | None:
    """The settings of ``config`` for ``env`` (None when the section is empty); drawn values
    come from the sweep's ``seed`` (see the module docstring)."""
    if not config.enabled:
        return None
    check_for_env(config, env)
    constants = _constants(env)
    if config.grid:
        lists = [[_as_array(v, constants[name].shape, name) for v in values] for name, values in config.grid]
        rows = list(zip(*lists)) if config.combine == "zip" else list(itertools.product(*lists))
        values = {name: np.stack([row[j] for row in rows]) for j, name in enumerate(config.names)}
    else:
        root = jax.random.fold_in(jax.random.key(seed), ENV_PARAMS_SALT)
        values = {name: [] for name in config.names}
        for s in range(config.draws):
            setting_key = jax.random.fold_in(root, s)
            for j, (name, (low, high)) in enumerate(config.draw):
                shape = constants[name].shape
                low_a, high_a = _as_array(low, shape, name), _as_array(high, shape, name)
                if config.draw_scale == "log_uniform":
                    low_a, high_a = np.log(low_a), np.log(high_a)
                drawn = jax.random.uniform(jax.random.fold_in(setting_key, j), shape, jnp.float32, low_a, high_a)
                values[name].append(np.asarray(jnp.exp(drawn) if config.draw_scale == "log_uniform" else drawn))
        values = {name: np.stack(v).astype(np.float32) for name, v in values.items()}
    size = next(iter(values.values())).shape[0]
    defaults = env.default_params
    replaced = {f.name: jnp.asarray(values[f.name]) if f.name in values else
                jnp.broadcast_to(jnp.asarray(getattr(defaults, f.name)), (size,) + np.shape(getattr(defaults, f.name)))
                for f in dataclasses.fields(defaults)}
    return Settings(values=values, params=defaults.replace(**replaced))
