"""MBPO (Janner et al. 2019) and its decision-aware variants as one pure ``train(key, hparams=None)``.

SAC (``agents.sac``) is trained on a mix of real transitions and short rollouts of a learned
ensemble dynamics model (with a learned reward output). Every ``model_train_freq`` env steps a
*model phase* runs: (MnM only) the real-vs-model classifier is trained, the model is retrained
with the population trainer (``train.population``, warm-started from its current parameters, on
the whole real replay buffer given as a fixed-capacity ``TransitionData`` with masks), and
``rollout_batch_size`` k-step rollouts from real states fill the model buffer. Then
``model_train_freq`` env steps follow, each with ``updates_per_step`` SAC updates on batches with
a ``model_share`` of model rows.

Agents (``AGENTS``; ``make_agent(name, config, env)``) differ only in the model loss
(``models.trainer_losses``) and the reward the policy sees:

* ``mbpo``: MLE (the trainer's PETS NLL / MSE); ``vagram`` / ``itervaml`` / ``value_weighted``:
  value-aware losses whose per-row side information (the gradients of the 4 SAC critics at the
  true next states, or the value weights) is computed once per model phase (VaGraM Algorithm 1).
* ``mnm``: model on Eq. 9 of Mismatched No More at reparameterised samples of the P / PE model
  (``loss_context = trainer_losses.MnMContext``), classifier on Eq. 4, policy on r̃ (Eq. 5);
  ``mnm_approx``: the same model and classifier, policy on the plain (learned) reward (paper
  001, Sec. 4.3). ``agents.mbpo_mnm`` lists the stabilisers and which are the paper's.

Schedules (functions of the env-step count, epoch = env_steps / epoch_length):

* rollout length: MBPO's ``(epoch_a, epoch_b, length_a, length_b)``: length_a before epoch_a,
  linear to length_b at epoch_b, floored, then constant.
* model share of each SAC batch: VaGraM appendix E, linear from ``model_share_start`` (0) to
  ``model_share_end`` (0.95) over the first ``model_share_ramp_epochs`` epochs (they used 40
  epochs of 1000 steps). ``start = end = 0.95`` is MBPO's fixed real_ratio 0.05.

Hyper-parameters: ``MBPOHParams`` (SAC's, the model's and the classifier's rates) is a vmappable
pytree argument of ``train`` (None: the config's), so a learning-rate sweep is ``jax.vmap`` over
it, one compiled program; the model rates reach the trainer as its (traced) ``TrainHParams``.

Compilation and vmapping: the whole run is ``lax.scan`` over evaluation intervals → scan over
model phases → scan over env steps. Every schedule and every "has learning started" gate is
computed from the *scan indices*, which stay unbatched under ``jax.vmap(train)``, so the gates
are real ``lax.cond``s also for many seeds (no wasted warm-up work) and the schedules cost no
recompiles. Rollouts always run ``max(length_a, length_b)`` steps; steps past the current length
(and steps after a predicted termination or a non-finite prediction) are not written.

Choices (and why):

* Model buffer: a ring of capacity ``rollout_batch_size · max_length · phases_per_epoch ·
  model_retain_epochs``; SAC samples among the newest ``rollout_batch_size · length ·
  phases_per_epoch · retain`` rows, which is what MBPO's buffer (resized with the rollout
  length) holds.
* Rollouts pick a uniformly random ensemble member per row and step (MBPO uses its 5 elites of
  7: we keep all members, there is no elite selection in the trainer). Probabilistic models
  sample the Gaussian with the MLE and MnM losses; the value-aware losses do not train the
  variance, so their rollouts use the member's mean.
* The trainer re-initialises Adam each model phase (MBPO keeps the optimiser); with MLE it
  returns the best-validation-epoch parameters, with the decision-aware losses the last ones
  (the validation score is MLE and would undo the loss's preference).
* VaGraM (``MBPOConfig.vagram``; ``mbpo_config.VaGraMOptions`` says which choice is the
  paper's and which its released code's): value gradients of the 2 online + 2 target critics,
  computed once per model phase (the critics do not change during it), clipped, reduced over
  critics, plus the normalised MSE during the first ``mse_warmup_epochs``.
* MnM: the classifier before and in alternation with the model, the augmented reward and the
  per-phase classifier report are in ``agents.mbpo_mnm`` (its docstring says how and why).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mismatch_jax.data import replay
from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.agents import sac_config
from mismatch_jax.agents import mbpo_mnm as mnm
from mismatch_jax.agents import sac_loop
from mismatch_jax.agents.mbpo_mnm import mnm_batch_reward
from mismatch_jax.data.replay import Transition
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.agents.mbpo_config import (MBPOConfig, MBPOHParams, MBPOMetrics, MBPOState, PhaseMetrics,
                                             agent_config, make_env, model_share, rollout_length)
from mismatch_jax.agents.sac_loop import TrainFn
from mismatch_jax.envs.base import Env
from mismatch_jax.models import core as models
from mismatch_jax.models import trainer_losses, value_aware
from mismatch_jax.train import population

class MBPO(NamedTuple):
    """The pure pieces of one MBPO configuration (``make_mbpo``); hparams: the config's
    ``MBPOHParams`` (what ``hparams=None`` means for init, model_phase, sac_updates and train)."""

    config: MBPOConfig
    sac: sac_lib.SAC
    model_config: models.ModelConfig
    train_config: population.TrainConfig
    model_buffer_capacity: int
    hparams: MBPOHParams
    init: Callable
    model_step: Callable
    model_phase: Callable
    sac_updates: Callable
    train: TrainFn


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------


def make_mbpo(config: MBPOConfig, env: Env) -> MBPO:
    """Builds the MBPO pieces and ``train(key, hparams=None) -> (MBPOState, MBPOMetrics
    [num_evals])`` (hparams: ``MBPOHParams`` with [] leaves; None: the config's)."""
    sac_cfg = config.sac
    sac = sac_lib.make_sac(sac_cfg, env)
    obs_dim, action_dim = sac.obs_dim, sac.action_dim
    mcfg = dataclasses.replace(config.model, predict_reward=True).for_env(env)
    training = config.model_training
    tcfg = training.train_config(mcfg, keep_best=training.keep_best and config.model_loss == "mle",
                                 eval_batch_size=max(training.batch_size, 1024))
    def value_apply_online(value_params, obs, key=None):
        """Eq. 9's V: the online critics at a policy sample (key) or the deterministic action
        (None); with ``mnm_value_clip = "data_range"`` value_params = (SAC params, (low, high))
        and the state is clipped to that box first."""
        if config.mnm_value_clip == "data_range":
            (value_params, (low, high)) = value_params
            obs = jnp.clip(obs, low, high)
        return sac.value(value_params, obs, key=key, critics="online")

    per_sample_loss = trainer_losses.make_model_loss(
        config.model_loss, value_apply=value_apply_online, predict_reward=True,
        reward_weight=config.reward_loss_weight, itervaml_mse_coef=config.itervaml_mse_coef,
        critic_reduce=config.vagram.critic_reduce, output_reduce=config.vagram.output_reduce,
        minibatch_clip_percentile=(config.vagram.clip_percentile
                                   if config.vagram.clip_scope == "minibatch" else None),
        mnm_options=dict(probabilistic=mcfg.probabilistic, value_scale=config.mnm_value_scale,
                         logit_bound=config.classifier_logit_bound or None, mle_weight=config.mnm_mle_weight,
                         sample_value_action=config.mnm_value_action == "sample"))
    value_gradient_loss = trainer_losses.needs_value_gradients(config.model_loss)
    uses_mnm, model_trainer = config.model_loss == "mnm", population.make_train_fn(tcfg, per_sample_loss)
    default_hparams = MBPOHParams.from_config(config, action_dim)

    def resolve(hparams: Optional[MBPOHParams]) -> MBPOHParams:
        if hparams is None:
            return default_hparams
        if not isinstance(hparams, MBPOHParams):
            raise TypeError(f"MBPO: hparams must be MBPOHParams or None, got {type(hparams).__name__}")
        return hparams

    # MLE and MnM (Eq. 9's samples) train the variance; the value-aware losses do not.
    sample_noise = mcfg.probabilistic and config.model_loss in ("mle", "mnm")
    cls_cfg = value_aware.ClassifierConfig(obs_dim, action_dim, config.classifier_hidden_size,
                                           config.classifier_num_hidden_layers)

    max_len = config.max_rollout_length
    phases_per_epoch = config.epoch_length // config.model_train_freq
    phases_per_eval = sac_cfg.eval_interval // config.model_train_freq
    num_evals = sac_cfg.total_env_steps // sac_cfg.eval_interval
    model_capacity = config.rollout_batch_size * max_len * phases_per_epoch * config.model_retain_epochs
    rows_per_length = config.rollout_batch_size * phases_per_epoch * config.model_retain_epochs
    batch = sac_cfg.batch_size
    termination = jax.vmap(env.termination_fn)

    def init(key: jax.Array, env_key: jax.Array, hparams: Optional[MBPOHParams] = None) -> MBPOState:
        """Fresh state: SAC, empty buffers, an untrained model and classifier, a reset env."""
        hp = resolve(hparams)
        sac_key, model_key, cls_key, val_key = jax.random.split(key, 4)
        classifier = opt_state = None
        if config.uses_classifier:
            classifier = value_aware.classifier_init(cls_key, cls_cfg)
            opt_state = optax.adam(hp.classifier_lr).init(classifier)  # Adam's state has no rate
        capacity = sac_cfg.buffer_capacity
        return MBPOState(
            sac=sac.init(sac_key, hp.sac),
            real=replay.init(replay.empty_transition(obs_dim, action_dim), capacity),
            model_buffer=replay.init(replay.empty_transition(obs_dim, action_dim), model_capacity),
            model_params=models.init(model_key, mcfg),
            normalizer=models.identity_normalizer(mcfg),
            classifier=classifier, classifier_opt_state=opt_state,
            val_rows=jax.random.uniform(val_key, (capacity,)) < config.model_training.validation_fraction,
            env_state=env.reset(env_key),
            episode_return=jnp.zeros((), jnp.float32), env_steps=jnp.zeros((), jnp.int32),
            vagram_norm_avg=jnp.ones((), jnp.float32))

    def model_step(key, params, normalizer, obs, action):
        """One model transition per row: obs [B, D], action [B, A] → (next_obs [B, D],
        reward [B]) from a uniformly random member per row (a Gaussian sample with MLE and MnM
        on P / PE models, else the mean)."""
        member_key, noise_key = jax.random.split(key)
        mean, var = models.predict(mcfg, params, normalizer, obs, action)  # [E, B, D + 1]
        member = jax.random.randint(member_key, (obs.shape[0],), 0, mcfg.ensemble_size)
        rows = jnp.arange(obs.shape[0])
        mean, var = mean[member, rows], var[member, rows]
        if sample_noise:
            mean = mean + jnp.sqrt(var) * jax.random.normal(noise_key, mean.shape)
        return mean[:, :obs_dim], mean[:, obs_dim]

    def training_data(ts: MBPOState, aux_fn=None) -> TransitionData:
        """The real buffer as one fixed-capacity dataset (M = 1) with train / validation masks."""
        d = ts.real.data
        valid = jnp.arange(ts.real.capacity) < ts.real.size
        aux = None if aux_fn is None else aux_fn(d.next_obs[None], valid[None])[0]
        return TransitionData.single(d.obs, d.action, d.next_obs, valid & ~ts.val_rows,
                                     valid & ts.val_rows, reward=d.reward, aux=aux)

    def rollouts(key, ts: MBPOState, length):
        """``rollout_batch_size`` model rollouts of ``length`` steps from real states into the
        model buffer; → (ts, rows written)."""
        start_key, steps_key = jax.random.split(key)
        start = replay.sample(start_key, ts.real, config.rollout_batch_size).obs

        def step(carry, xs):
            obs, alive = carry
            t, k = xs
            action_key, model_key = jax.random.split(k)
            action, _ = sac.sample_action(action_key, ts.sac.params.actor, obs)
            next_obs, reward = model_step(model_key, ts.model_params, ts.normalizer, obs, action)
            done = termination(next_obs)
            finite = jnp.all(jnp.isfinite(next_obs), axis=-1) & jnp.isfinite(reward)
            valid = alive & finite & (t < length)
            item = Transition(obs=obs, action=action, reward=reward, next_obs=next_obs,
                              done=done.astype(jnp.float32))
            next_obs = jnp.where(finite[:, None], next_obs, obs)
            return (next_obs, valid & ~done), (item, valid)

        alive0 = jnp.ones((config.rollout_batch_size,), bool)
        _, (items, valid) = jax.lax.scan(
            step, (start, alive0), (jnp.arange(max_len), jax.random.split(steps_key, max_len)))
        flat = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), items)
        return ts.replace(model_buffer=replay.add_valid(ts.model_buffer, flat, valid.reshape(-1))), valid.sum()

    def model_phase(key, ts: MBPOState, env_steps, hparams: Optional[MBPOHParams] = None
                    ) -> tuple[MBPOState, PhaseMetrics]:
        """Classifier (MnM), model retraining and rollouts at ``env_steps``."""
        hp = resolve(hparams)
        cls_key, model_key, rollout_key, alternate_key, report_key, noise_key = jax.random.split(key, 6)
        if config.uses_classifier:
            ts = mnm.train_classifier(model_step, config, cls_key, ts, hp)
        value_fn = lambda s: sac.value(ts.sac.params, s, critics="all",  # [D] → [4]
                                       detach_action=config.vagram.action_gradient == "detached")
        aux_fn = None
        if value_gradient_loss:
            # Per-minibatch clipping happens in the loss; the buffer scope clips here, once.
            buffer_clip = config.vagram.clip_percentile if config.vagram.clip_scope == "buffer" else 100.0
            aux_fn = lambda nxt, m: trainer_losses.value_gradient_aux(value_fn, nxt, m, buffer_clip)
        elif config.model_loss == "value_weighted":
            aux_fn = lambda nxt, m: trainer_losses.value_weight_aux(value_fn, nxt, m, config.value_weighted.direction)
        value_params = ts.sac.params
        if config.mnm_value_clip == "data_range":
            valid = (jnp.arange(ts.real.capacity) < ts.real.size)[:, None]
            seen = ts.real.data.next_obs
            value_params = (value_params, (jnp.min(jnp.where(valid, seen, jnp.inf), 0),
                                           jnp.max(jnp.where(valid, seen, -jnp.inf), 0)))
        context, trainer = None, model_trainer
        if uses_mnm:
            # Eq. 9 from the first step after the MLE warm-up (counted from the first env step).
            warming_up = env_steps < config.mnm_mle_warmup_epochs * config.epoch_length
            context = trainer_losses.MnMContext(value_params, ts.classifier, ts.classifier_opt_state, alternate_key,
                                                noise_key, jnp.where(warming_up, 0.0, 1.0).astype(jnp.float32))
            trainer = population.make_train_fn(tcfg, per_sample_loss,
                                               context_step=mnm.classifier_context_step(model_step, config, ts.real, hp))
        params = jax.tree_util.tree_map(lambda p: p[None], ts.model_params)
        # min(env_steps, capacity) rows: a bound shared by every seed (slot skipping survives vmap).
        rows_bound = jnp.minimum(jnp.asarray(env_steps, jnp.int32), ts.real.capacity)
        mse_weight = hp.model_mse_weight  # the (possibly traced) rates enter as the trainer's hparams
        if value_gradient_loss and config.vagram.mse_warmup_epochs:
            warming_up = env_steps < config.vagram.mse_warmup_epochs * config.epoch_length
            mse_weight = mse_weight + jnp.where(warming_up, 1.0, 0.0).astype(mse_weight.dtype)
        train_hp = population.TrainHParams.population(
            1, learning_rate=hp.model_lr, weight_decay=hp.model_weight_decay, mse_weight=mse_weight)
        data = training_data(ts, aux_fn)
        if value_gradient_loss and config.vagram.gradient_scale == "running_mean":
            steps = 4 * tcfg.num_epochs * -(-data.train_mask.sum() // training.batch_size)  # critics × minibatches
            norm_avg, aux = trainer_losses.running_gradient_scale(ts.vagram_norm_avg, data.aux, data.train_mask,
                                                                  obs_dim, steps)
            ts, data = ts.replace(vagram_norm_avg=norm_avg), data.replace(aux=aux)
        result = trainer(model_key[None], params, data, train_hp,
                         jnp.zeros((1,), jnp.int32), context, rows_bound)
        take = lambda tree: jax.tree_util.tree_map(lambda p: p[0], tree)
        ts = ts.replace(model_params=take(result.params), normalizer=take(result.normalizer))
        if uses_mnm:
            ts = ts.replace(classifier=result.loss_context.classifier,
                            classifier_opt_state=result.loss_context.classifier_opt_state)
        classifier_loss, logit_real, logit_model = mnm.classifier_report(model_step, config, report_key, ts)
        length = rollout_length(config, env_steps)
        ts, rows = rollouts(rollout_key, ts, length)
        return ts, PhaseMetrics(
            model_train_loss=result.metrics.train_loss[0, -1], model_val_mse=result.metrics.val_mse[0, -1],
            model_epochs=result.epochs_trained[0].astype(jnp.int32), classifier_loss=classifier_loss,
            classifier_logit_real=logit_real, classifier_logit_model=logit_model,
            rollout_length=length, rollout_rows=rows.astype(jnp.int32))

    def augment(batch: Transition, classifier, from_model, gamma) -> Transition:
        """MnM's r̃ on a mixed batch (``mnm_batch_reward``)."""
        logits = value_aware.classifier_apply(classifier, batch.obs, batch.action, batch.next_obs,
                                              config.classifier_logit_bound or None)
        return batch._replace(reward=mnm_batch_reward(config, batch.reward, jax.lax.stop_gradient(logits),
                                                      from_model, gamma))

    def sac_updates(key, ts: MBPOState, env_steps, hparams: Optional[MBPOHParams] = None):
        """``updates_per_step`` SAC updates on mixed real/model batches; → (SACState, mean
        UpdateMetrics)."""
        hp = resolve(hparams)
        num_model = jnp.floor(model_share(config, env_steps) * batch).astype(jnp.int32)
        num_recent = rows_per_length * rollout_length(config, env_steps)
        from_model = jnp.arange(batch) < num_model

        def mixed_batch(k):
            real_key, model_key, update_key = jax.random.split(k, 3)
            real = replay.sample(real_key, ts.real, batch)
            fake = replay.sample_recent(model_key, ts.model_buffer, batch, num_recent)
            mixed = jax.tree_util.tree_map(
                lambda m, r: jnp.where(from_model.reshape((batch,) + (1,) * (m.ndim - 1)), m, r), fake, real)
            if config.augmented_reward:
                mixed = augment(mixed, ts.classifier, from_model, hp.sac.gamma)
            return mixed, update_key

        return sac_loop.run_updates(sac, key, ts.sac, sac_cfg.updates_per_step, mixed_batch, hp.sac)

    nan_update = jax.tree_util.tree_map(lambda _: jnp.asarray(jnp.nan, jnp.float32),
                                        sac_lib.UpdateMetrics(*([0.0] * 6)))

    def env_step(ts: MBPOState, xs, hp: MBPOHParams):
        key, step_index = xs  # step_index: unbatched env-step count before this step
        random_key, policy_key, reset_key, update_key = jax.random.split(key, 4)
        warm_up = step_index < sac_cfg.learning_starts
        step = sac_loop.actor_env_step(env, sac, ts.sac.params.actor, ts.env_state, warm_up, random_key,
                                      policy_key, reset_key)
        episode_return = ts.episode_return + step.transition.reward
        episode_over = step.episode_over
        ts = ts.replace(real=replay.add(ts.real, step.transition), env_state=step.env_state,
                        env_steps=ts.env_steps + 1, episode_return=jnp.where(episode_over, 0.0, episode_return))
        do_update = ~warm_up
        sac_state, metrics = jax.lax.cond(do_update, lambda t: sac_updates(update_key, t, step_index + 1, hp),
                                          lambda t: (t.sac, nan_update), ts)
        return ts.replace(sac=sac_state), (metrics, do_update, episode_over, episode_return)

    nan, zero = jnp.asarray(jnp.nan, jnp.float32), jnp.zeros((), jnp.int32)
    nan_phase = PhaseMetrics(model_train_loss=nan, model_val_mse=nan, model_epochs=zero, classifier_loss=nan,
                             classifier_logit_real=nan, classifier_logit_model=nan, rollout_length=zero,
                             rollout_rows=zero)

    def phase(ts: MBPOState, xs, hp: MBPOHParams):
        key, phase_index = xs  # unbatched
        model_key, steps_key = jax.random.split(key)
        start = phase_index * config.model_train_freq
        ts, phase_metrics = jax.lax.cond(start >= sac_cfg.learning_starts,
                                         lambda t: model_phase(model_key, t, start, hp),
                                         lambda t: (t, nan_phase), ts)
        steps = start + jnp.arange(config.model_train_freq)
        ts, step_out = jax.lax.scan(lambda t, x: env_step(t, x, hp), ts,
                                    (jax.random.split(steps_key, config.model_train_freq), steps))
        return ts, (phase_metrics, step_out)

    def interval(ts: MBPOState, xs, hp: MBPOHParams):
        key, eval_index = xs
        phases_key, eval_key = jax.random.split(key)
        phase_indices = eval_index * phases_per_eval + jnp.arange(phases_per_eval)
        ts, (phase_metrics, (metrics, updated, ended, returns)) = jax.lax.scan(
            lambda t, x: phase(t, x, hp), ts, (jax.random.split(phases_key, phases_per_eval), phase_indices))
        last_phase = jax.tree_util.tree_map(lambda m: m[-1], phase_metrics)
        end_steps = (eval_index + 1) * sac_cfg.eval_interval
        eval_return = sac_loop.evaluate(sac, env, ts.sac.params.actor, eval_key, sac_cfg.num_eval_episodes)
        sac_record = sac_loop.summarize_interval(ts.env_steps, eval_return, metrics, updated, ended, returns)
        record = MBPOMetrics(
            **{f.name: getattr(sac_record, f.name) for f in dataclasses.fields(sac_loop.TrainMetrics)},
            model_share=model_share(config, end_steps),
            **{f.name: getattr(last_phase, f.name) for f in dataclasses.fields(PhaseMetrics)},
        )
        return ts, record

    def train(key: jax.Array, hparams: Optional[MBPOHParams] = None):
        """One MBPO run: key [], hparams ([] leaves; None: the config's) → (final MBPOState,
        MBPOMetrics [num_evals]). Pure; vmappable over both."""
        hp = resolve(hparams)
        init_key, env_key, loop_key = jax.random.split(key, 3)
        ts = init(init_key, env_key, hp)
        return jax.lax.scan(lambda t, x: interval(t, x, hp), ts,
                            (jax.random.split(loop_key, num_evals), jnp.arange(num_evals)))

    return MBPO(config=config, sac=sac, model_config=mcfg, train_config=tcfg,
                model_buffer_capacity=model_capacity, hparams=default_hparams, init=init,
                model_step=model_step, model_phase=model_phase, sac_updates=sac_updates, train=train)


def make_train(config: MBPOConfig, env: Env) -> TrainFn:
    """``train(key, hparams: MBPOHParams | None = None) -> (MBPOState, MBPOMetrics [num_evals])``
    (``jax.jit(jax.vmap(train))(keys)``; vmap over hparams too for a sweep)."""
    return make_mbpo(config, env).train


def make_agent(name: str, config: MBPOConfig, env: Optional[Env] = None) -> TrainFn:
    """``train(key, hparams=None)`` of agent ``name`` (``AGENTS``: mbpo, vagram, itervaml,
    value_weighted, mnm, mnm_approx) built on ``config``; ``env`` defaults to ``make_env(config)``."""
    config = agent_config(name, config)
    return make_train(config, make_env(config) if env is None else env)


def seed_keys(config: MBPOConfig, seed: Optional[int] = None) -> jax.Array:
    """[sac.num_seeds] keys fold_in(key(seed), i) for ``jax.vmap(train)``."""
    return sac_config.seed_keys(config.sac, seed)
