"""PETS cart-pole swing-up (Chua et al. 2018; Lambert et al. 2020) simulated with MuJoCo MJX.

Facts carried over from the PETS / mbrl-lib ``pets_cartpole`` environment:

* model: ``assets/cartpole_swingup.xml`` (slider limited to ±2.5 m, free hinge, joint damping 1,
  RK4 with a 0.02 s timestep, cart 10.47 kg, pole 5.02 kg, motor gear 100, ctrl range ±3);
* one environment step = 2 physics steps (frame skip 2, 0.04 s);
* observation ``[x, θ, ẋ, θ̇] = concat(qpos, qvel)``; θ = 0 hangs down, θ = π is upright;
* reward ``exp(-‖tip − (0, 0.6)‖² / 0.6²) − 0.01‖a‖²`` with the pole tip
  ``(x − 0.6 sin θ, −0.6 cos θ)`` taken from the *next* observation and ``a`` the action as given
  (MuJoCo clamps the motor control to ±3, the action cost does not);
* no termination, 200-step episodes;
* reset ``qpos, qvel ~ N(0, 0.1²)`` (the model's rest state, mbrl-lib's init_qpos, is 0).

Physics state is only ``(qpos, qvel)``: with no contacts and no actuator dynamics they determine
the future completely, so the state is four floats instead of the ~80-leaf ``mjx.Data``, vmaps
cheaply, and ``state_from_obs`` is exact. The only thing dropped is MuJoCo's solver warm start,
which matters (to solver tolerance) only while the slider limit is active.

Integration is MuJoCo's RK4 (the classic tableau, as ``mjx.step`` applies it) written as a
``lax.scan`` over the four stages with ``mjx.forward`` in its body (``_rk4_step``). ``mjx.step``
calls ``forward`` once before its own stage scan and unrolls three stages, so every program that
steps the env would carry four copies of the forward dynamics; with one copy the physics compiles
~2× faster (every program that holds this env pays it: PETS, datasets, each sweep chunk) and
gives the same states to float rounding (``tests/envs/test_cartpole_swingup.py``).
"""

from __future__ import annotations

import importlib.resources

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from mismatch_jax.envs._mjx_import import mjx
from mismatch_jax.envs.base import Env

POLE_LENGTH = 0.6
"""Distance from the hinge to the pole tip used by the reward (m)."""

_ASSET = "cartpole_swingup.xml"


@struct.dataclass
class CartpoleSwingupParams:
    """Physical constants substituted into the MJX model at every step (vmap over them to sweep).

    gravity: [] downward gravitational acceleration (m/s²).
    joint_damping: [2] viscous damping of the slider and the hinge.
    motor_gear: [] force (N) per unit of control on the slider.
    cart_mass: [] kg; the cart's rotational inertia is scaled with it (same shape, other density).
    pole_mass: [] kg; likewise for the pole.

    Changing masses leaves MuJoCo's ``dof_invweight0`` (used only to soften the slider limit) at
    the default model's value.
    """

    gravity: jax.Array
    joint_damping: jax.Array
    motor_gear: jax.Array
    cart_mass: jax.Array
    pole_mass: jax.Array


@struct.dataclass
class CartpoleSwingupPhysics:
    """qpos: [2] (x, θ); qvel: [2] (ẋ, θ̇)."""

    qpos: jax.Array
    qvel: jax.Array


def load_mj_model() -> mujoco.MjModel:
    """The CPU MuJoCo model of the PETS cart-pole (package data ``envs/assets``)."""
    xml = importlib.resources.files("mismatch_jax.envs").joinpath("assets", _ASSET).read_text()
    return mujoco.MjModel.from_xml_string(xml)


# Classic RK4 tableau of MuJoCo's mj_RungeKutta: stage i evaluates the dynamics at
# x0 + a_i·dt·k_(i−1) and the step adds dt·Σ b_i·k_i.
_RK4_STAGES = np.array([[0.0, 1 / 6], [0.5, 1 / 3], [0.5, 1 / 3], [1.0, 1 / 6]], np.float32)


def _rk4_step(model: mjx.Model, data: mjx.Data) -> mjx.Data:
    """One RK4 physics step of ``data`` (qpos, qvel, ctrl set) as ``mjx.step`` takes it, with a
    single ``mjx.forward`` in the program (see the module docstring). Positions integrate
    linearly: valid for slide and hinge joints, which are all this model has."""
    dt = model.opt.timestep
    qpos0, qvel0 = data.qpos, data.qvel

    def stage(carry, coefficients):
        d, k_vel, k_acc, sum_vel, sum_acc = carry
        a, b = coefficients[0], coefficients[1]
        d = mjx.forward(model, d.replace(qpos=qpos0 + k_vel * (a * dt), qvel=qvel0 + k_acc * (a * dt)))
        return (d, d.qvel, d.qacc, sum_vel + b * d.qvel, sum_acc + b * d.qacc), None

    zeros = jnp.zeros_like(qvel0)
    (data, _, _, sum_vel, sum_acc), _ = jax.lax.scan(
        stage, (data, zeros, zeros, zeros, zeros), jnp.asarray(_RK4_STAGES))
    return data.replace(qpos=qpos0 + sum_vel * dt, qvel=qvel0 + sum_acc * dt,
                        qacc_warmstart=data.qacc, time=data.time + dt)


def tip_position(obs: jax.Array) -> jax.Array:
    """Pole tip (horizontal, vertical) [..., 2] from observations [..., 4]."""
    x, theta = obs[..., 0], obs[..., 1]
    return jnp.stack(
        [x - POLE_LENGTH * jnp.sin(theta), -POLE_LENGTH * jnp.cos(theta)], axis=-1
    )


class CartpoleSwingup(Env):
    """PETS MuJoCo cart-pole swing-up on MJX (see the module docstring for the exact semantics)."""

    name = "cartpole_swingup"
    obs_dim = 4
    action_dim = 1

    angle_obs_dims = (1,)  # θ winds freely during swing-up

    def __init__(
        self, episode_length: int = 200, frame_skip: int = 2, reset_noise_scale: float = 0.1,
        integrator: str = "scan_rk4",
    ):
        """integrator: "scan_rk4" (default; ``_rk4_step``, one forward in the program) or
        "mjx_step" (``mjx.step`` itself: the same states, ~2× the compile time)."""
        if integrator not in ("scan_rk4", "mjx_step"):
            raise ValueError(f"integrator must be 'scan_rk4' or 'mjx_step', got {integrator!r}")
        self.integrator = integrator
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        if reset_noise_scale < 0:
            raise ValueError(f"reset_noise_scale must be >= 0, got {reset_noise_scale}")
        self.episode_length = int(episode_length)
        self.frame_skip = int(frame_skip)
        self.reset_noise_scale = float(reset_noise_scale)
        self.mj_model = load_mj_model()
        if self.mj_model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4:
            raise ValueError("the cart-pole model must use MuJoCo's RK4 integrator (see _rk4_step)")
        self.mjx_model = mjx.put_model(self.mj_model)
        # A template of every Data field; each step overwrites qpos/qvel/ctrl, so nothing leaks
        # between calls and the template is a jit constant.
        self._data_template = mjx.make_data(self.mjx_model)
        ctrl_range = np.asarray(self.mj_model.actuator_ctrlrange, dtype=np.float32)
        self.action_low = ctrl_range[:, 0].copy()
        self.action_high = ctrl_range[:, 1].copy()
        self.dt = float(self.mj_model.opt.timestep) * self.frame_skip
        self._default_body_mass = np.asarray(self.mj_model.body_mass, dtype=np.float32)
        self._default_body_inertia = np.asarray(self.mj_model.body_inertia, dtype=np.float32)

    # ----- params --------------------------------------------------------------------------------
    @property
    def default_params(self) -> CartpoleSwingupParams:
        m = self.mj_model
        return CartpoleSwingupParams(
            gravity=jnp.asarray(-m.opt.gravity[2], jnp.float32),
            joint_damping=jnp.asarray(m.dof_damping, jnp.float32),
            motor_gear=jnp.asarray(m.actuator_gear[0, 0], jnp.float32),
            cart_mass=jnp.asarray(m.body_mass[1], jnp.float32),
            pole_mass=jnp.asarray(m.body_mass[2], jnp.float32),
        )

    def model_with(self, params: CartpoleSwingupParams) -> mjx.Model:
        """The MJX model with ``params`` substituted (traceable; params may be tracers)."""
        model = self.mjx_model
        body_mass = jnp.stack([jnp.zeros((), jnp.float32), params.cart_mass, params.pole_mass])
        mass_ratio = body_mass / jnp.maximum(jnp.asarray(self._default_body_mass), 1e-12)
        body_inertia = jnp.asarray(self._default_body_inertia) * mass_ratio[:, None]
        gear = model.actuator_gear.at[0, 0].set(params.motor_gear)
        gravity = jnp.stack([0.0, 0.0, -params.gravity]).astype(model.opt.gravity.dtype)
        return model.replace(
            opt=model.opt.replace(gravity=gravity),
            dof_damping=params.joint_damping.astype(model.dof_damping.dtype),
            actuator_gear=gear.astype(model.actuator_gear.dtype),
            body_mass=body_mass.astype(model.body_mass.dtype),
            body_inertia=body_inertia.astype(model.body_inertia.dtype),
        )

    # ----- physics -------------------------------------------------------------------------------
    def _reset_physics(self, key, params):
        qpos_key, qvel_key = jax.random.split(key)
        qpos = self.reset_noise_scale * jax.random.normal(qpos_key, (2,), jnp.float32)
        qvel = self.reset_noise_scale * jax.random.normal(qvel_key, (2,), jnp.float32)
        physics = CartpoleSwingupPhysics(qpos=qpos, qvel=qvel)
        return physics, self._observe(physics)

    def _step_physics(self, physics, action, params):
        model = self.model_with(params)
        data = self._data_template.replace(qpos=physics.qpos, qvel=physics.qvel, ctrl=action)
        # The control stays fixed over the frame-skip sub-steps (MuJoCo clamps it to ±3). MJX's
        # internals broadcast implicitly, so rank promotion is allowed inside its calls only.
        with jax.numpy_rank_promotion("allow"):
            substep = _rk4_step if self.integrator == "scan_rk4" else mjx.step
            data = jax.lax.fori_loop(0, self.frame_skip, lambda _, d: substep(model, d), data)
        next_physics = CartpoleSwingupPhysics(qpos=data.qpos, qvel=data.qvel)
        return next_physics, self._observe(next_physics)

    def _physics_from_obs(self, obs, params):
        return CartpoleSwingupPhysics(qpos=obs[:2], qvel=obs[2:])

    @staticmethod
    def _observe(physics: CartpoleSwingupPhysics) -> jax.Array:
        return jnp.concatenate([physics.qpos, physics.qvel]).astype(jnp.float32)

    # ----- planning functions --------------------------------------------------------------------
    def reward_fn(self, obs, action, next_obs):
        """exp(−‖tip(next_obs) − (0, 0.6)‖² / 0.6²) − 0.01‖action‖² [].

        obs/next_obs [4], action [1]; obs is unused (the PETS reward depends on the next state)."""
        target = jnp.array([0.0, POLE_LENGTH], jnp.float32)
        distance_sq = jnp.sum(jnp.square(tip_position(next_obs) - target), axis=-1)
        return jnp.exp(-distance_sq / POLE_LENGTH**2) - 0.01 * jnp.sum(jnp.square(action), axis=-1)
