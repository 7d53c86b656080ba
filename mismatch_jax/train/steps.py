"""The per-model pieces of the population trainer and the types they produce: one minibatch loss
(the built-in PETS NLL / MSE or a pluggable ``PerSampleLoss``), the inputs / targets of a set of
rows, one validation chunk's running sums and their per-epoch metrics. ``train.population``
composes them over the population, the minibatch slots and the epochs."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.models import core as models
from mismatch_jax.models.trainer_losses import LossInputs, PerSampleLoss
from mismatch_jax.train.config import TrainConfig


# --------------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------------


@struct.dataclass
class TrainMetrics:
    """Per-epoch metrics, each [N, num_epochs] (epoch e = after e+1 epochs of training).

    train_loss: mean minibatch loss of the epoch (the optimised objective, incl. bound term).
    val_nll: PETS NLL in normalised target units, averaged over members and validation rows.
    val_ll: exact Gaussian log-likelihood in original units (ensembles: uniform mixture),
        mean over validation rows — ``models.one_step_log_likelihood`` on the valid rows.
    val_mse: squared error of the ensemble-mean prediction in original units, summed over
        observation dims, mean over validation rows — ``models.one_step_mse``.
    active: the model trained during this epoch (False after early stopping or divergence;
        metrics of inactive epochs repeat the last active epoch's values).
    """

    train_loss: jax.Array
    val_nll: jax.Array
    val_ll: jax.Array
    val_mse: jax.Array
    active: jax.Array


@struct.dataclass
class TrainResult:
    """params: [N]-stacked ModelParams (best or last, see ``TrainConfig.keep_best``);
    normalizer: [N]-stacked Normalizer fitted on each model's training rows;
    kept_params: ModelParams with leaves [N, K, ...] for ``TrainConfig.keep_epochs``
    (None when keep_epochs is empty); metrics: TrainMetrics [N, num_epochs];
    best_epoch [N] int (last improving epoch, 1-based; 0 = never improved);
    diverged [N] bool (a non-finite loss or update); epochs_trained [N] int;
    initial_val_mse [N]: the untrained model's ``val_mse`` (the reference a caller can bound a
    model's later errors by to flag runaway training, ``sweep`` does);
    loss_context: the final loss context when the trainer updates it between minibatch steps
    (``make_train_fn(context_step=...)``), else None."""

    params: models.ModelParams
    normalizer: models.Normalizer
    kept_params: models.ModelParams | None
    metrics: TrainMetrics
    best_epoch: jax.Array
    diverged: jax.Array
    epochs_trained: jax.Array
    initial_val_mse: jax.Array
    loss_context: object = None


# --------------------------------------------------------------------------------------------
# Internal per-model state (one row of the population).
# --------------------------------------------------------------------------------------------


@struct.dataclass
class EpochMetrics:
    """One epoch's metrics of one model (the trainer's carry; see ``TrainMetrics``)."""

    train_loss: jax.Array
    val_nll: jax.Array
    val_ll: jax.Array
    val_mse: jax.Array


@struct.dataclass
class EvalSums:
    """Running sums over validation rows of one model."""

    nll_member: jax.Array  # [E]
    mse_norm_member: jax.Array  # [E]
    ll: jax.Array  # []
    mse: jax.Array  # []
    count: jax.Array  # []
    score_weight: Optional[jax.Array] = None  # [] Σ ω of the rows (weighted_validation only)


def select(pred, on_true, on_false):
    """Per-leaf ``where`` with a scalar predicate (keeps the untaken value bit for bit)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


class ModelSteps(NamedTuple):
    """The per-model pieces (see ``make_model_steps``)."""

    loss_fn: Callable
    gather_xy: Callable
    eval_chunk: Callable
    finish_eval: Callable


def make_model_steps(cfg: TrainConfig, per_sample_loss: Optional[PerSampleLoss] = None) -> ModelSteps:
    """``loss_fn(params, norm, x, y, w [E, B], hparams, rows_data, loss_context) -> []``,
    ``gather_xy(data, ds, rows) -> ((x, y), obs)``, ``eval_chunk(params, norm, data, ds, rows [V],
    valid [V]) -> EvalSums`` and ``finish_eval(EvalSums) -> (stop score [E], (nll, ll, mse))`` of one
    model of ``cfg.model`` (pure; the trainer vmaps them over the population)."""
    mcfg = cfg.model
    num_members = mcfg.ensemble_size

    def loss_fn(params, norm, x, y, w, hp, rows_data, loss_context):
        """Weighted loss of one model on one minibatch; x [B, in] or [E, B, in], w [E, B]."""
        mean, logvar = models.apply_normalized(mcfg, params, models.normalize_inputs(norm, x))
        y_n = jnp.broadcast_to(models.normalize_targets(norm, y), mean.shape)
        mse = models.mse_per_sample(mean, y_n)
        if per_sample_loss is not None:
            main = per_sample_loss(_loss_inputs(mean, logvar, y_n, norm, rows_data, w), loss_context)
        else:
            main = models.gaussian_nll_per_sample(mean, logvar, y_n) if mcfg.probabilistic else mse
        per_sample = hp.nll_weight * main + hp.mse_weight * mse  # [E, B]
        per_member = (per_sample * w).sum(-1) / jnp.maximum(w.sum(-1), 1e-12)
        loss = per_member.sum()  # members' losses are summed, as in mbrl-lib
        if mcfg.probabilistic:
            loss = loss + cfg.logvar_bound_coef * (params.max_logvar.sum() - params.min_logvar.sum())
        return loss

    def _loss_inputs(mean, logvar, y_n, norm, rows_data, row_weight):
        """LossInputs of one minibatch; rows_data = (obs, action, next_obs, reward, aux) rows,
        row_weight [E, B]."""
        members = mean.shape[:2]  # (E, B)

        obs, action, next_obs, reward, aux = rows_data
        lead = obs.ndim - 1  # 1 ([B, d]) or 2 ([E, B, d])

        def lift(a):
            if a is None:
                return None
            if lead == 1:
                a = a[None]
            return jnp.broadcast_to(a, members + a.shape[2:])

        base = obs
        if mcfg.predict_reward:
            base = jnp.concatenate([obs, jnp.zeros_like(obs[..., :1])], axis=-1)
        std, shift = norm.target_std, norm.target_mean
        pred = mean * std.reshape((1, 1, -1)) + shift.reshape((1, 1, -1)) + lift(base)
        return LossInputs(mean=mean, logvar=logvar, target=y_n, pred_next_obs=pred[..., : mcfg.obs_dim],
                          obs=lift(obs), action=lift(action), next_obs=lift(next_obs),
                          reward=lift(reward), aux=lift(aux), target_std=std,
                          row_weight=jnp.broadcast_to(row_weight, members))

    def gather_xy(data, ds, rows):
        """Inputs/targets of rows ([B] or [E, B]) of dataset ds, original units."""
        obs = data.obs[ds, rows]
        return models.make_targets(mcfg, obs, data.action[ds, rows], data.next_obs[ds, rows],
                                   data.reward[ds, rows] if mcfg.predict_reward else None), obs

    def eval_chunk(params, norm, data, ds, rows, valid):
        """Validation sums of one model over rows [V] (valid [V] bool)."""
        (x, y), obs = gather_xy(data, ds, rows)
        mean_n, logvar_n = models.apply_normalized(mcfg, params, models.normalize_inputs(norm, x))
        y_nb = jnp.broadcast_to(models.normalize_targets(norm, y), mean_n.shape)  # [E, V, D]
        w = valid.astype(mean_n.dtype)
        score_w = w * data.weight[ds, rows] if cfg.weighted_validation else w
        nll = models.gaussian_nll_per_sample(mean_n, logvar_n, y_nb)  # [E, V]
        mse_n = models.mse_per_sample(mean_n, y_nb)
        # Original units, exactly as models.predict / one_step_log_likelihood / one_step_mse.
        base = obs
        if mcfg.predict_reward:
            base = jnp.concatenate([obs, jnp.zeros_like(obs[..., :1])], axis=-1)
        std, shift = norm.target_std[None, None], norm.target_mean[None, None]
        mean_o = mean_n * std + shift + base[None]
        var_o = jnp.exp(logvar_n) * std**2
        target = jnp.broadcast_to((y + base)[None], mean_o.shape)
        ll_members = models.gaussian_log_likelihood(mean_o, var_o, target)
        ll = jax.scipy.special.logsumexp(ll_members, axis=0) - math.log(num_members)  # [V]
        pred = mean_o.mean(0)[..., : mcfg.obs_dim]
        mse_o = jnp.sum((pred - data.next_obs[ds, rows]) ** 2, axis=-1)  # [V]
        return EvalSums(
            nll_member=(nll * score_w[None]).sum(-1), mse_norm_member=(mse_n * score_w[None]).sum(-1),
            ll=(ll * w).sum(), mse=(mse_o * w).sum(), count=w.sum(),
            score_weight=score_w.sum() if cfg.weighted_validation else None,
        )

    def finish_eval(sums: EvalSums):
        """Per-model (stop score [E], EpochMetrics without train_loss)."""
        n = jnp.maximum(sums.count, 1.0)
        score_n = n if sums.score_weight is None else jnp.maximum(sums.score_weight, 1e-12)
        nll_member = sums.nll_member / score_n
        mse_member = sums.mse_norm_member / score_n
        score = mse_member if cfg.stop_metric == "mse" else nll_member
        return score, (nll_member.mean(), sums.ll / n, sums.mse / n)

    return ModelSteps(loss_fn=loss_fn, gather_xy=gather_xy, eval_chunk=eval_chunk, finish_eval=finish_eval)
