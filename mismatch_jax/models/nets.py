"""Plain MLPs over explicit parameter pytrees, and the one gradient step every learner takes.

Networks are tuples of layers ``(w [in, out], b [out])``, not flax modules: agents differentiate
them with respect to their *inputs* (VaGraM's value gradients), stack them along leading axes
(twin critics, seeds, populations) and slice, save and compare them, all without module plumbing.
Initialisation is PyTorch's ``nn.Linear`` default, U(±1/sqrt(fan_in)) for weights and biases, as
in the PyTorch peers. (The dynamics models of ``models.core`` are ensembles with a leading member
axis and PETS's initialisation, so they keep their own layer code.)

``gradient_update(loss_fn, optimizer)`` is the value_and_grad → optimizer.update →
apply_updates triplet, written once.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "tanh": jnp.tanh, "silu": jax.nn.silu,
                                    "elu": jax.nn.elu}


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> tuple:
    """Layers ((w [in, out], b [out]), ...) for layer sizes (in, hidden..., out), PyTorch
    ``nn.Linear``'s default U(−1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
        w_key, b_key = jax.random.split(k)
        bound = 1.0 / math.sqrt(fan_in)
        w = jax.random.uniform(w_key, (fan_in, fan_out), jnp.float32, -bound, bound)
        b = jax.random.uniform(b_key, (fan_out,), jnp.float32, -bound, bound)
        layers.append((w, b))
    return tuple(layers)


def mlp_apply(layers: tuple, x: jax.Array, activation: str = "relu") -> jax.Array:
    """x [..., in] → [..., out]; ``activation`` between layers, none after the last."""
    act = ACTIVATIONS[activation]
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b.reshape((1,) * (h.ndim - 1) + b.shape)
        if i < len(layers) - 1:
            h = act(h)
    return h


def gradient_update(loss_fn: Callable, optimizer: optax.GradientTransformation, has_aux: bool = False):
    """``update(params, opt_state, *args) -> (params, opt_state, loss[, aux])``: one optimizer
    step on ``loss_fn(params, *args)`` (which returns ``(loss, aux)`` when ``has_aux``)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def update(params: Any, opt_state: Any, *args):
        value, grads = grad_fn(params, *args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if has_aux:
            loss, aux = value
            return params, opt_state, loss, aux
        return params, opt_state, value

    return update
