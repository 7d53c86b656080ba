"""MnM's pieces of the MBPO agent (``agents.mbpo``; Mismatched No More, paper 001): the
real-vs-model classifier's training before a model phase and in alternation with the model
(the trainer's ``context_step``), its end-of-phase report, and the reward the policy sees.

``model_step(key, params, normalizer, obs [B, D], action [B, A]) -> (next_obs [B, D],
reward [B])`` is the agent's one-step model (one random member per row).

How MnM runs inside MBPO (and why):

* MnM: each model phase first trains the classifier ``classifier_steps`` minibatches against
  the current model (real vs a sampled model next state of the same real (s, a)), then trains
  the model on Eq. 9 while the classifier keeps learning: ``classifier_steps_per_model_step``
  Adam steps against the current model before every model minibatch step (Algorithm 1 line 5,
  the GAN-like alternation; the trainer's ``context_step``). The model is the P / PE ensemble;
  Eq. 9's expectation over q_θ is one reparameterised sample μ + σ ε per member and row, so its
  gradient reaches the mean and the log-variance heads, and the classifier sees samples too.
  V in Eq. 9 is the min of the two online critics at a ∼ π (Sec. 4.2's 1-sample estimate;
  ``mnm_value_action``). The stabilisers (``MBPOConfig``; defaults from a measured ablation)
  are ours, not the paper's: an NLL anchor, MLE warm-up epochs and a scale on V (on), a bounded
  classifier logit and label smoothing (off). The augmented reward is Eq. 3's r̃ = (1 − γ) log r⁺ + log C/(1 − C) −
  (1 − γ) log(1 − γ) (``mnm_reward_balance``), computed when a batch is sampled with the current
  classifier; the log-ratio applies to model rows (Q is trained on model transitions, Eq. 7),
  real rows of the mixed batch keep (1 − γ) log r⁺ − (1 − γ) log(1 − γ) so Q sees one scale
  (``mnm_classifier_rows``). log r⁺ follows ``value_aware.log_positive_reward`` (default
  r⁺ = exp(r / reward_temperature), as Pendulum's rewards are ≤ 0). The reward the policy sees
  on model rows is the model's predicted reward. Each phase logs the classifier's loss and its
  mean logit on real and on model next states (the log p/q estimates) after training."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mismatch_jax.agents.mbpo_config import MBPOConfig, MBPOHParams, MBPOState
from mismatch_jax.data import replay
from mismatch_jax.models import value_aware


def mnm_batch_reward(config: MBPOConfig, reward: jax.Array, logits: jax.Array, from_model: jax.Array,
                     gamma) -> jax.Array:
    """The reward MnM's policy sees on a mixed SAC batch: r̃ with ``config.mnm_reward_balance``
    (Eq. 3's (1 − γ) weighting or the unit one) and the classifier's logit on model rows only
    unless ``config.mnm_classifier_rows = "all"``. reward, logits, from_model (bool) [B];
    gamma [] → [B]."""
    if config.mnm_classifier_rows == "model":
        logits = jnp.where(from_model, logits, 0.0)
    return value_aware.mnm_augmented_reward(
        reward, logits, config.reward_transform,
        discount=gamma if config.mnm_reward_balance == "eq3" else None,
        **({"temperature": config.reward_temperature} if config.reward_transform == "exp" else {}),
        **({"reward_min": config.reward_min} if config.reward_transform == "shift" else {}))


def real_and_model_rows(model_step: Callable, batch_size: int, real_buffer, model_params, normalizer):
    """sample_batch(key) for ``value_aware.fit_classifier``: ``batch_size`` real rows and the
    model's next states for the same (s, a) (a sample of a random member: Eq. 4's s′ ~ q) →
    (obs, action, real next_obs, model next_obs)."""
    def sample(k):
        sample_key, model_key = jax.random.split(k)
        real = replay.sample(sample_key, real_buffer, batch_size)
        fake, _ = model_step(model_key, model_params, normalizer, real.obs, real.action)
        return real.obs, real.action, real.next_obs, jax.lax.stop_gradient(fake)
    return sample


def _fit(config: MBPOConfig, key, classifier, opt_state, hp: MBPOHParams, sample_batch, num_steps: int):
    """``num_steps`` Adam steps of Eq. 4 with the config's stabilisers → (params, opt_state)."""
    params, opt_state, _ = value_aware.fit_classifier(
        key, classifier, opt_state, optax.adam(hp.classifier_lr), sample_batch, num_steps,
        label_smoothing=config.classifier_label_smoothing, logit_bound=config.classifier_logit_bound or None)
    return params, opt_state


def train_classifier(model_step: Callable, config: MBPOConfig, key, ts: MBPOState, hp: MBPOHParams) -> MBPOState:
    """``classifier_steps`` Adam steps of Eq. 4 against the current model; → ts."""
    params, opt_state = _fit(config, key, ts.classifier, ts.classifier_opt_state, hp,
                             real_and_model_rows(model_step, config.classifier_batch_size, ts.real,
                                                 ts.model_params, ts.normalizer),
                             config.classifier_steps)
    return ts.replace(classifier=params, classifier_opt_state=opt_state)


def classifier_context_step(model_step: Callable, config: MBPOConfig, real_buffer, hp: MBPOHParams) -> Callable:
    """The trainer's ``context_step`` for MnM (context: ``trainer_losses.MnMContext``): a fresh
    noise key for the coming model minibatch step and, in alternation (Algorithm 1, line 5),
    ``classifier_steps_per_model_step`` Adam steps against the population's (N = 1) current model."""
    first = lambda tree: jax.tree_util.tree_map(lambda p: p[0], tree)

    def step(context, model_params, normalizer):
        key, fit_key, noise_key = jax.random.split(context.key, 3)
        classifier, opt_state = context.classifier, context.classifier_opt_state
        if config.classifier_steps_per_model_step:
            classifier, opt_state = _fit(config, fit_key, classifier, opt_state, hp,
                                         real_and_model_rows(model_step, config.classifier_batch_size, real_buffer,
                                                             first(model_params), first(normalizer)),
                                         config.classifier_steps_per_model_step)
        return context._replace(classifier=classifier, classifier_opt_state=opt_state, key=key,
                                noise_key=noise_key)
    return step


def classifier_report(model_step: Callable, config: MBPOConfig, key, ts: MBPOState):
    """(loss, mean logit on real next states, mean logit on model next states) of the classifier
    on one fresh batch — the log p/q estimates of each; NaNs without a classifier."""
    if not config.uses_classifier:
        nan = jnp.asarray(jnp.nan, jnp.float32)
        return nan, nan, nan
    obs, action, real_next, fake_next = real_and_model_rows(
        model_step, config.classifier_batch_size, ts.real, ts.model_params, ts.normalizer)(key)
    bound = config.classifier_logit_bound or None
    loss = value_aware.classifier_loss(ts.classifier, obs, action, real_next, fake_next,
                                       config.classifier_label_smoothing, bound)
    logit_real = value_aware.classifier_apply(ts.classifier, obs, action, real_next, bound).mean()
    logit_model = value_aware.classifier_apply(ts.classifier, obs, action, fake_next, bound).mean()
    return loss, logit_real, logit_model
