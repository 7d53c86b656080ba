"""Population training: N independent dynamics models trained by one jitted function.

``make_train(config)`` returns ``train(keys, params_or_none, data, hparams, dataset_index)``.
Every model n has its own

* key ``keys[n]`` (derive it as ``fold_in(root, global_model_index)``: see ``model_keys``), from
  which its initial weights, bootstrap index sets and per-epoch minibatch orders are drawn, so a
  model's numbers do not depend on N, on chunking or on the device count;
* dataset ``data[dataset_index[n]]`` (M datasets of fixed capacity T share one ``TransitionData``);
* vmappable hyper-parameters ``hparams[n]`` (learning rate, weight decay, loss weights).

Structure (one ``jit``): a ``lax.scan`` over epochs, inside it a ``lax.scan`` over the
ceil(T / batch_size) minibatch slots and a chunked validation pass; the per-model work is
``vmap``-ed. The loops are at the *population* level so that a ``lax.cond`` can skip work no model
needs (a minibatch slot past every model's training-row count, an epoch after every model stopped)
while per-model differences — early stopping, divergence, short datasets — are masks. A masked
update returns the old parameters and optimiser state bit for bit, so skipping is exact.

Choices (see also ``TrainConfig``):

* Weight decay is L2 by default (``weight_decay_mode="l2"``): ``wd * w`` is added to the gradient
  of the weight matrices before Adam, i.e. the gradient of ``wd/2 ‖w‖²`` — the PETS regulariser
  (its TF code adds ``decay * l2_loss(w)`` per layer). Biases and log-variance bounds are not
  decayed. ``"decoupled"`` gives AdamW (``p ← p − lr (adam + wd p)``) on the same weights.
* Early stopping follows mbrl-lib's ``ModelTrainer``: a per-member validation score is computed
  before training and after every epoch; an epoch *improves* when any member's score drops by
  more than ``improvement_threshold`` relative to that member's best; the best scores become the
  element-wise minimum; after ``patience`` epochs without improvement the model stops (its
  parameters freeze). With ``keep_best`` the parameters of the last improving epoch are returned
  (if no epoch improved, the last parameters, as mbrl-lib does).
* The score is the per-member mean squared error in normalised target units (``stop_metric =
  "mse"``, mbrl-lib's ``GaussianMLP.eval_score``) or the PETS NLL (``"nll"``).
* A model whose loss or new parameters are not finite is *diverged*: that update is discarded, the
  model is frozen from then on and flagged; other models never see it.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.models import core as models
from mismatch_jax.models.nets import gradient_update
from mismatch_jax.models.trainer_losses import PerSampleLoss
from mismatch_jax.population import PopulationLayout, jit_sharded, over_population
from mismatch_jax.train.config import TrainConfig, TrainHParams, make_optimizer
from mismatch_jax.train.inputs import check_inputs
from mismatch_jax.train.steps import (EpochMetrics, EvalSums, TrainMetrics, TrainResult, all_finite,
                                     make_model_steps, select)

def model_keys(root: jax.Array, start: int, num_models: int) -> jax.Array:
    """Keys [num_models] of models ``start … start+num_models-1``: ``fold_in(root, index)``, so a
    model's key (hence its result) is the same whatever the chunk it is trained in."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, jnp.arange(start, start + num_models))


@struct.dataclass
class _ModelState:
    params: models.ModelParams
    opt_state: optax.OptState
    best_params: models.ModelParams | None
    kept_params: models.ModelParams | None
    normalizer: models.Normalizer
    bootstrap_slots: jax.Array | None  # [E, T] positions into the model's training rows
    order_key: jax.Array
    active: jax.Array
    diverged: jax.Array
    best_score: jax.Array  # [E]
    best_epoch: jax.Array
    epochs_since_improved: jax.Array
    epochs_trained: jax.Array
    loss_sum: jax.Array
    loss_count: jax.Array
    last_metrics: EpochMetrics


# --------------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------------


def make_train(config: TrainConfig, *, jit: bool = True, per_sample_loss: Optional[PerSampleLoss] = None,
               layout: Optional[PopulationLayout] = None, devices=None):
    """The checked, jitted population trainer (see ``make_train_fn`` for the arguments): it
    validates its inputs in Python (shapes; NaN/inf when the data are concrete) and then calls one
    jitted computation (``jit=False``: un-jitted, e.g. to compare jit vs no-jit). ``layout``: how
    the models are laid out (``mismatch_jax.population``; None = "auto" for the model's width).
    ``devices``: split the population over these devices, one program per device block
    (``population.jit_sharded``; N must be a multiple of their count) — e.g. ``jax.devices()``
    of a CPU split into host devices; None: one jitted program."""
    train_fn = over_population(make_train_fn(config, per_sample_loss), layout, shared=(2, 5, 6),
                               width=config.model.hidden_size)
    if jit and devices is not None and len(devices) > 1:
        core = jit_sharded(train_fn, 7, shared=(2, 5, 6), devices=devices)
    else:
        core = jax.jit(train_fn) if jit else train_fn

    def train(keys, params_or_none, data: TransitionData, hparams: TrainHParams, dataset_index=None,
              loss_context=None, row_bound=None):
        """See ``make_train_fn``. Returns a ``TrainResult`` with a leading population axis [N]."""
        check_inputs(config.model, keys, params_or_none, data, hparams, dataset_index)
        if dataset_index is None:
            dataset_index = jnp.zeros(keys.shape[0], jnp.int32)
        hparams = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), keys.shape), hparams)
        return core(keys, params_or_none, data, hparams, dataset_index, loss_context, row_bound)

    return train


def make_train_fn(config: TrainConfig, per_sample_loss: Optional[PerSampleLoss] = None,
                  context_step: Optional[Callable] = None):
    """The pure population trainer ``train(keys, params_or_none, data, hparams, dataset_index
    [N], loss_context=None, row_bound=None) -> TrainResult``: unchecked and un-jitted, to nest in
    a caller's own jit / vmap / scan (PETS, MBPO, the sweep chunk); ``make_train`` wraps it with
    input checks and ``jax.jit``.

    per_sample_loss: optional pure ``fn(inputs: LossInputs, loss_context) -> [E, B]`` that
        replaces the main loss (PETS NLL for P/PE, MSE for D/DE), e.g. VaGraM, IterVAML or the
        MnM model loss; ``hparams.nll_weight`` scales it and ``hparams.mse_weight`` still adds the
        normalised MSE (IterVAML's λ-stabiliser). ``loss_context`` is any pytree shared by every
        model of the call (value-function and classifier parameters); it is a traced argument,
        so a new context does not recompile. Early stopping and validation scores stay MLE-based.
    context_step: optional pure ``fn(loss_context, params [N], normalizer [N]) -> loss_context``
        run before every minibatch step that trains at least one model, with the population's
        current parameters: the loss context then learns alongside the models (MnM's classifier,
        k Adam steps per model step, as its GAN-like objective alternates them); the final
        context is ``TrainResult.loss_context``. The context is one for the whole population,
        so use it with N = 1 or a population that is meant to share it (not under a ``map``
        layout, which would give each group its own copy).

    ``train(..., row_bound=b)``: an optional [] int upper bound on every dataset's training and
    validation row counts; work past it is skipped by an unbatched ``lax.cond``. Only a speed
    hint (results are identical for any b ≥ the true counts); pass it when the trainer runs
    under an outer vmap whose buffers fill at the same rate (MBPO seeds).

    keys: [N] typed keys (``model_keys(root, start, N)``), one per model.
    params_or_none: [N]-stacked ``ModelParams`` to continue training from, or None to
        initialise each model from its key. Continuing restarts Adam (fresh moments) and, with
        the same keys, repeats the same minibatch orders and bootstrap sets: fold a phase
        counter into the keys (MBPO retraining, MnM rounds) when that matters.
    data: ``TransitionData`` with M datasets of capacity T.
    hparams: ``TrainHParams`` with [N] leaves (scalars are broadcast).
    dataset_index: [N] int in [0, M) — which dataset each model trains on.
    """
    cfg = config
    mcfg = cfg.model
    num_members = mcfg.ensemble_size
    keep_epochs = np.asarray(cfg.keep_epochs, np.int32)
    num_keep = len(cfg.keep_epochs)

    loss_fn, gather_xy, eval_chunk, finish_eval = make_model_steps(cfg, per_sample_loss)

    # ------------------------------------------------------------------- the function ------

    def train_core(keys, params_or_none, data: TransitionData, hparams: TrainHParams, dataset_index,
                   loss_context=None, row_bound=None):
        data = jax.tree.map(jnp.asarray, data)
        num_models = keys.shape[0]
        capacity = data.obs.shape[1]
        batch = cfg.batch_size
        num_steps = -(-capacity // batch)
        eval_batch = min(cfg.eval_batch_size or batch, capacity)
        num_eval_chunks = -(-capacity // eval_batch)
        hp = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (num_models,)), hparams)
        ds_index = jnp.asarray(dataset_index, jnp.int32)

        # Per-dataset row lists: valid rows first (stable), so position p < count is a valid row.
        def rows_first(mask):
            return jnp.argsort(~mask, stable=True).astype(jnp.int32), mask.sum().astype(jnp.int32)

        train_rows, num_train = jax.vmap(rows_first)(data.train_mask)  # [M, T], [M]
        val_rows, num_val = jax.vmap(rows_first)(data.val_mask)
        # No validation rows: score on the training rows (mbrl-lib evaluates on the training set).
        eval_rows = jnp.where((num_val > 0)[:, None], val_rows, train_rows)
        num_eval = jnp.where(num_val > 0, num_val, num_train)
        pad_steps = num_steps * batch - capacity
        pad_eval = num_eval_chunks * eval_batch - capacity
        eval_rows = jnp.pad(eval_rows, ((0, 0), (0, pad_eval)))

        def fit_norm(d_obs, d_act, d_next, d_rew, mask):
            x, y = models.make_targets(mcfg, d_obs, d_act, d_next, d_rew if mcfg.predict_reward else None)
            return models.fit_normalizer(mcfg, x, y, mask)

        dataset_norms = jax.vmap(fit_norm)(data.obs, data.action, data.next_obs, data.reward, data.train_mask)
        model_num_train = num_train[ds_index]  # [N]
        model_num_eval = num_eval[ds_index]

        def work_left(start, counts, active=None):
            """Whether any model has rows at or past ``start``. With ``row_bound`` (a bound on every
            row count that does not vary along an outer vmap axis) the predicate stays unbatched
            when the whole training is vmapped (e.g. over agent seeds), so ``lax.cond`` still skips
            work instead of becoming a select that runs every slot."""
            if row_bound is not None:
                return start < row_bound
            has_rows = start < counts
            return jnp.any(has_rows if active is None else active & has_rows)

        # ---- population-level evaluation: chunks past every model's row count are skipped ----
        def evaluate(params, norm):
            def one_chunk(p, nm, ds, n_eval, start):
                pos = start + jnp.arange(eval_batch)
                rows = jax.lax.dynamic_slice(eval_rows[ds], (start,), (eval_batch,))
                return eval_chunk(p, nm, data, ds, rows, pos < n_eval)

            def body(acc, c):
                start = c * eval_batch

                def add(acc):
                    sums = jax.vmap(one_chunk, in_axes=(0, 0, 0, 0, None))(
                        params, norm, ds_index, model_num_eval, start)
                    return jax.tree.map(jnp.add, acc, sums)

                return jax.lax.cond(work_left(start, model_num_eval), add, lambda a: a, acc), None

            zeros = EvalSums(
                nll_member=jnp.zeros((num_models, num_members)),
                mse_norm_member=jnp.zeros((num_models, num_members)),
                ll=jnp.zeros(num_models), mse=jnp.zeros(num_models), count=jnp.zeros(num_models),
                score_weight=jnp.zeros(num_models) if cfg.weighted_validation else None,
            )
            sums, _ = jax.lax.scan(body, zeros, jnp.arange(num_eval_chunks))
            return jax.vmap(finish_eval)(sums)

        # ---- initial state of each model ----
        def init_model(key, params, hp_n, ds):
            init_key, boot_key, order_key = jax.random.split(key, 3)
            if params is None:
                params = models.init(init_key, mcfg)
            opt_state = make_optimizer(cfg, hp_n.learning_rate, hp_n.weight_decay).init(params)
            boot = None
            if cfg.uses_bootstrap:
                boot = jax.random.randint(boot_key, (num_members, capacity), 0,
                                          jnp.maximum(num_train[ds], 1), dtype=jnp.int32)
            return params, opt_state, boot, order_key

        in_axes = (0, None if params_or_none is None else 0, 0, 0)
        params0, opt0, boot0, order_keys = jax.vmap(init_model, in_axes=in_axes)(
            keys, params_or_none, hp, ds_index)
        norm0 = jax.tree.map(lambda a: a[ds_index], dataset_norms)
        score0, (nll0, ll0, mse0) = evaluate(params0, norm0)
        kept0 = None
        if num_keep:
            is_zero = jnp.asarray(keep_epochs == 0)
            kept0 = jax.tree.map(
                lambda p: jnp.where(is_zero.reshape((1, num_keep) + (1,) * (p.ndim - 1)),
                                    p[:, None], jnp.zeros_like(p[:, None])),
                params0,
            )
        zeros_n = jnp.zeros(num_models)
        state = _ModelState(
            params=params0, opt_state=opt0,
            best_params=params0 if cfg.keep_best else None,
            kept_params=kept0, normalizer=norm0, bootstrap_slots=boot0, order_key=order_keys,
            active=jnp.ones(num_models, bool), diverged=jnp.zeros(num_models, bool),
            best_score=score0, best_epoch=jnp.zeros(num_models, jnp.int32),
            epochs_since_improved=jnp.zeros(num_models, jnp.int32),
            epochs_trained=jnp.zeros(num_models, jnp.int32),
            loss_sum=zeros_n, loss_count=zeros_n,
            last_metrics=EpochMetrics(train_loss=jnp.full(num_models, jnp.nan), val_nll=nll0,
                                       val_ll=ll0, val_mse=mse0),
        )

        # ---- one minibatch update of one model ----
        def model_step(s: _ModelState, order, hp_n, ds, n_train, start, context):
            pos = start + jnp.arange(batch)
            valid = pos < n_train
            slots = jax.lax.dynamic_slice(order, (start,), (batch,))
            if cfg.uses_bootstrap:
                slots = s.bootstrap_slots[:, slots]  # [E, B]
                valid = jnp.broadcast_to(valid, slots.shape)
            rows = train_rows[ds, slots]
            (x, y), obs = gather_xy(data, ds, rows)
            w = jnp.broadcast_to(valid * data.weight[ds, rows], (num_members, batch))
            rows_data = None
            if per_sample_loss is not None:
                rows_data = (obs, data.action[ds, rows], data.next_obs[ds, rows], data.reward[ds, rows],
                             None if data.aux is None else data.aux[ds, rows])
            update = gradient_update(loss_fn, make_optimizer(cfg, hp_n.learning_rate, hp_n.weight_decay))
            new_params, new_opt, loss = update(s.params, s.opt_state, s.normalizer, x, y, w, hp_n, rows_data,
                                               context)
            attempted = s.active & (start < n_train)
            finite = jnp.isfinite(loss) & all_finite(new_params)
            ok = attempted & finite
            return s.replace(
                params=select(ok, new_params, s.params),
                opt_state=select(ok, new_opt, s.opt_state),
                diverged=s.diverged | (attempted & ~finite),
                active=s.active & ~(attempted & ~finite),
                loss_sum=s.loss_sum + jnp.where(ok, loss, 0.0),
                loss_count=s.loss_count + ok,
            )

        def epoch_order(order_key, n_train, epoch):
            """A fresh permutation of this model's valid training positions, padded slots last."""
            u = jax.random.uniform(jax.random.fold_in(order_key, epoch), (capacity,))
            u = jnp.where(jnp.arange(capacity) < n_train, u, 2.0)
            order = jnp.argsort(u).astype(jnp.int32)
            return jnp.pad(order, (0, pad_steps))

        def end_epoch(s: _ModelState, was_active, score, nll, ll, mse, epoch):
            trained = s.loss_count > 0
            train_loss = jnp.where(trained, s.loss_sum / jnp.maximum(s.loss_count, 1.0),
                                   s.last_metrics.train_loss)
            metrics = EpochMetrics(train_loss=train_loss, val_nll=nll, val_ll=ll, val_mse=mse)
            metrics = select(was_active, metrics, s.last_metrics)
            rel = (s.best_score - score) / jnp.maximum(jnp.abs(s.best_score), 1e-12)
            improved = was_active & jnp.any(rel > cfg.improvement_threshold)
            since = jnp.where(improved, 0, s.epochs_since_improved + was_active.astype(jnp.int32))
            active = s.active
            if cfg.patience is not None:
                active = active & (since < cfg.patience)
            s = s.replace(
                best_score=jnp.where(improved, jnp.minimum(s.best_score, score), s.best_score),
                best_epoch=jnp.where(improved, epoch + 1, s.best_epoch),
                best_params=None if s.best_params is None else select(improved, s.params, s.best_params),
                epochs_since_improved=since,
                epochs_trained=s.epochs_trained + was_active.astype(jnp.int32),
                active=active, last_metrics=metrics,
            )
            return s, metrics

        def run_epoch(carry, epoch):
            s, context = carry
            was_active = s.active
            orders = jax.vmap(epoch_order, in_axes=(0, 0, None))(s.order_key, model_num_train, epoch)
            s = s.replace(loss_sum=jnp.zeros_like(s.loss_sum), loss_count=jnp.zeros_like(s.loss_count))
            step = jax.vmap(model_step, in_axes=(0, 0, 0, 0, 0, None, None))

            def batch_body(carry, b):
                start = b * batch

                def train_slot(carry):
                    s, context = carry
                    if context_step is not None:
                        context = context_step(context, s.params, s.normalizer)
                        return step(s, orders, hp, ds_index, model_num_train, start, context), context
                    return step(s, orders, hp, ds_index, model_num_train, start, loss_context), context

                needed = work_left(start, model_num_train, carry[0].active)
                return jax.lax.cond(needed, train_slot, lambda c: c, carry), None

            (s, context), _ = jax.lax.scan(batch_body, (s, context), jnp.arange(num_steps))
            score, (nll, ll, mse) = evaluate(s.params, s.normalizer)
            s, metrics = jax.vmap(end_epoch, in_axes=(0, 0, 0, 0, 0, 0, None))(
                s, was_active, score, nll, ll, mse, epoch)
            return (s, context), metrics

        def skip_epoch(carry, epoch):
            del epoch
            return carry, carry[0].last_metrics

        def epoch_body(carry, epoch):
            s = carry[0]
            was_active = s.active
            (s, context), metrics = jax.lax.cond(jnp.any(s.active), run_epoch, skip_epoch, carry, epoch)
            if num_keep:
                hit = jnp.asarray(keep_epochs) == epoch + 1  # [K]
                s = s.replace(kept_params=jax.tree.map(
                    lambda kept, p: jnp.where(hit.reshape((1, num_keep) + (1,) * (p.ndim - 1)),
                                              p[:, None], kept),
                    s.kept_params, s.params))
            return (s, context), (metrics, was_active)

        # A context nobody updates stays a closure constant rather than a loop carry.
        carried = loss_context if context_step is not None else None
        (state, context), (metrics, active) = jax.lax.scan(epoch_body, (state, carried),
                                                           jnp.arange(cfg.num_epochs))
        params = state.params
        if cfg.keep_best:
            params = jax.vmap(select)(state.best_epoch > 0, state.best_params, state.params)
        per_model = lambda a: jnp.swapaxes(a, 0, 1)  # [epochs, N] -> [N, epochs]
        return TrainResult(
            params=params, normalizer=state.normalizer, kept_params=state.kept_params,
            metrics=TrainMetrics(
                train_loss=per_model(metrics.train_loss), val_nll=per_model(metrics.val_nll),
                val_ll=per_model(metrics.val_ll), val_mse=per_model(metrics.val_mse),
                active=per_model(active),
            ),
            best_epoch=state.best_epoch, diverged=state.diverged, epochs_trained=state.epochs_trained,
            initial_val_mse=mse0, loss_context=context,
        )

    return train_core
