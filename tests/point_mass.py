"""A 1-D double integrator shared by the planner and PETS tests (importable as ``point_mass``:
pytest puts tests/ on sys.path for tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.envs.base import Env


class PointMass(Env):
    """obs [x, v], force in [-1, 1], reward −x'² − 0.01 a²; starts near x = 1, v = 0."""

    name = "point_mass"
    obs_dim = 2
    action_dim = 1
    episode_length = 30
    action_low = np.array([-1.0], np.float32)
    action_high = np.array([1.0], np.float32)

    @property
    def default_params(self):
        return {"dt": jnp.asarray(0.1, jnp.float32)}

    def _reset_physics(self, key, params):
        obs = jnp.array([1.0, 0.0]) + 0.1 * jax.random.normal(key, (2,))
        return obs, obs

    def _step_physics(self, physics, action, params):
        v = physics[1] + params["dt"] * action[0]
        x = physics[0] + params["dt"] * v
        obs = jnp.stack([x, v])
        return obs, obs

    def _physics_from_obs(self, obs, params):
        return obs

    def reward_fn(self, obs, action, next_obs):
        return -next_obs[0] ** 2 - 0.01 * jnp.sum(action**2)
