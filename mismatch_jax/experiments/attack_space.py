"""The adversarial attack's search variable (``experiments.attack``): the output layer of a model,
perturbations δ of it, the spaces CMA-ES searches (``SearchSpace``: the full layer, its
least-excited directions, all directions whitened, or the output biases) and the validation LL
of a perturbed model, which both the candidate evaluator and the LL constraint's repair use."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mismatch_jax import models
from mismatch_jax.errors import InputError

WHITEN_FLOOR = 1e-6  # smallest eigenvalue a whitened direction is scaled by, relative to the largest


class LastLayer(NamedTuple):
    """Output layer of an ensemble model: w [E, hidden, out], b [E, out] (leading candidate
    axes [C] when stacked)."""

    w: jax.Array
    b: jax.Array


def last_layer(params: models.ModelParams) -> LastLayer:
    """The output layer of ``params``."""
    w, b = params.layers[-1]
    return LastLayer(w=w, b=b)


def perturb_last_layer(params: models.ModelParams, delta: LastLayer) -> models.ModelParams:
    """params with δ added to its output layer (every other parameter unchanged)."""
    w, b = params.layers[-1]
    return params.replace(layers=params.layers[:-1] + ((w + delta.w, b + delta.b),))


def zero_delta(params: models.ModelParams) -> LastLayer:
    """δ = 0 with the shapes of the output layer (CMA-ES's initial mean)."""
    return jax.tree.map(jnp.zeros_like, last_layer(params))


def low_variance_basis(config: models.ModelConfig, params: models.ModelParams,
                       normalizer: models.Normalizer, obs, action, rank: int,
                       whiten: bool = False) -> jax.Array:
    """The ``rank`` least-excited directions of the output layer's input on a dataset.

    The output layer reads φ = [hidden features, 1] (``models.hidden_features``, the 1 carries
    the bias). Over the rows (obs [N, d], action [N, a]) a change δ of the layer moves the
    normalised prediction by φᵀδ, whose mean square is δᵀ G δ with G = E[φ φᵀ]; the eigenvectors
    of G with the smallest eigenvalues span the changes the data (and so the likelihood) sees
    least. Returns U [E, hidden + 1, rank], orthonormal columns, smallest eigenvalue first;
    with ``whiten`` each column is divided by √λ (λ floored at ``WHITEN_FLOOR`` × the largest), so
    a unit step along any column moves the predictions on the data by the same mean square.
    """
    hidden = config.hidden_size
    if not 1 <= rank <= hidden + 1:
        raise InputError(f"cmaes.subspace_rank must be in [1, hidden_size + 1 = {hidden + 1}], got {rank}")
    x = models.normalize_inputs(normalizer, models.model_inputs(config, jnp.asarray(obs), jnp.asarray(action)))
    features = models.hidden_features(config, params, x)  # [E, N, H]
    phi = jnp.concatenate([features, jnp.ones(features.shape[:-1] + (1,), features.dtype)], -1)
    gram = jnp.einsum("enh,eng->ehg", phi, phi) / phi.shape[1]
    values, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
    if whiten:
        floor = WHITEN_FLOOR * values[..., -1:]
        vectors = vectors / jnp.sqrt(jnp.maximum(values, floor))[..., None, :]
    return vectors[..., :rank]


class SearchSpace(NamedTuple):
    """What CMA-ES searches: ``template`` is the search variable at zero (a pytree; its shapes
    fix CMA-ES's dimension) and ``expand(z) -> LastLayer`` maps one point to the last-layer δ."""

    template: object
    expand: Callable


def make_search_space(search_space: str, subspace_rank: int, config: models.ModelConfig,
                      params: models.ModelParams, normalizer: models.Normalizer, obs, action) -> SearchSpace:
    """The search space named ``search_space`` ("full", "low_variance" of ``subspace_rank``
    directions, "whitened", "output_bias"; ``attack_cmaes.CMAESSettings``); obs/action: the rows
    that define the low-variance directions (the attack dataset)."""
    template = zero_delta(params)
    if search_space == "full":
        return SearchSpace(template, lambda delta: delta)
    if search_space == "output_bias":
        return _output_bias_space(config, params, normalizer, obs, action, template)
    whiten = search_space == "whitened"
    rank = config.hidden_size + 1 if whiten else subspace_rank
    basis = low_variance_basis(config, params, normalizer, obs, action, rank, whiten)
    hidden, outputs = template.w.shape[1], template.w.shape[2]
    attacked = config.target_dim  # the mean columns come first (logvar follows for P / PE)

    def expand(z: jax.Array) -> LastLayer:
        change = jnp.einsum("ehk,eko->eho", basis, z)  # [E, H + 1, target_dim]
        change = jnp.pad(change, ((0, 0), (0, 0), (0, outputs - attacked)))
        return LastLayer(w=change[:, :hidden], b=change[:, hidden])

    return SearchSpace(jnp.zeros((config.ensemble_size, rank, attacked)), expand)


def _output_bias_space(config, params, normalizer, obs, action, template: LastLayer) -> SearchSpace:
    """z [E, outputs] shifts the output biases: the mean columns in units of the model's median
    predicted standard deviation on the rows (so z_d = 1 moves that prediction by about one
    predicted σ, ≈ ½ nat of LL), the log-variance columns (P / PE) in nats."""
    x = models.normalize_inputs(normalizer, models.model_inputs(config, jnp.asarray(obs), jnp.asarray(action)))
    _, logvar = models.apply_normalized(config, params, x)  # [E, N, target_dim]
    mean_scale = jnp.median(jnp.exp(0.5 * logvar), axis=1) if config.probabilistic else jnp.ones_like(logvar[:, 0])
    scale = mean_scale if not config.probabilistic else jnp.concatenate([mean_scale, jnp.ones_like(mean_scale)], -1)

    def expand(z: jax.Array) -> LastLayer:
        return LastLayer(w=jnp.zeros_like(template.w), b=z * scale)

    return SearchSpace(jnp.zeros_like(template.b), expand)


def make_candidate_ll(model_config: models.ModelConfig, base_params: models.ModelParams,
                      normalizer: models.Normalizer, validation) -> Callable:
    """``ll(delta) -> []``: the mean one-step validation LL (nats) of ``base_params`` with δ added
    to its output layer. validation: (obs [V, d], action [V, a], next_obs [V, d])."""
    val_obs, val_action, val_next = (jnp.asarray(a) for a in validation)

    def ll(delta: LastLayer) -> jax.Array:
        return models.one_step_log_likelihood(model_config, perturb_last_layer(base_params, delta),
                                              normalizer, val_obs, val_action, val_next)

    return ll


def point_norm(point) -> jax.Array:
    """Euclidean norm of a search point (a pytree) over all its entries."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(point)))


def matched_random_points(key: jax.Array, template, ll_of: Callable, ll_target, ll_reference, count: int,
                          reference_norm, steps: int = 40):
    """``count`` random directions of a search space, each scaled to cost the attack's LL change.

    The baseline of the attack's planned-action gap (Fig. 6): a change of the same search space that
    costs the same LL but is not chosen to hurt the controller. Directions are i.i.d. normal points
    of ``template``'s shapes, normalised; each is scaled by the s > 0 with LL(s·u) = ``ll_target``
    (bracketed by doubling from ``reference_norm``, then ``steps`` bisection halvings, keeping the
    side with LL ≥ ll_target, so no baseline costs more LL than the target). ll_of(points [C]) ->
    LL [C]. When ``ll_target`` is not below ``ll_reference`` (LL(0): the attack lost no LL) no
    scale matches a drop and every direction gets norm ``reference_norm`` (the attack's own size).
    Returns (points [C], scales [C], matched: "ll_change" | "norm")."""
    leaves, treedef = jax.tree.flatten(template)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, (count,) + leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    units = jax.tree.unflatten(treedef, noise)
    norms = jax.vmap(point_norm)(units)
    units = jax.tree.map(lambda z: z / norms.reshape((-1,) + (1,) * (z.ndim - 1)), units)

    def scaled(s):
        return jax.tree.map(lambda z: z * s.reshape((-1,) + (1,) * (z.ndim - 1)).astype(z.dtype), units)

    start = jnp.full((count,), jnp.maximum(jnp.asarray(reference_norm, jnp.float32), 1e-6))
    if not float(ll_target) < float(ll_reference):
        return scaled(start), start, "norm"

    def grow(_, high):  # double each direction's scale until its LL is at or below the target
        return jnp.where(ll_of(scaled(high)) > ll_target, 2.0 * high, high)

    high = jax.lax.fori_loop(0, 60, grow, start)

    def halve(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        ok = ll_of(scaled(middle)) >= ll_target
        return jnp.where(ok, middle, low), jnp.where(ok, high, middle)

    low, _ = jax.lax.fori_loop(0, steps, halve, (jnp.zeros(count), high))
    return scaled(low), low, "ll_change"
