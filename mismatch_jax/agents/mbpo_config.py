"""MBPO's configuration and types: the agents (``AGENTS``), the schema (``MBPOConfig``, built on
the shared ``ModelConfig`` / ``TrainingSection`` / ``SACConfig`` tables), the vmappable
hyper-parameters (``MBPOHParams``), the schedules (rollout length, model share) as pure functions
of the env-step count, and the run's state and metrics records."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.agents import sac_loop
from mismatch_jax.agents.sac import SACState
from mismatch_jax.agents.sac_config import SACConfig, SACHParams
from mismatch_jax.data import replay
from mismatch_jax.models import core as models
from mismatch_jax.config_io import Schema, from_dict, load_toml, setting
from mismatch_jax.envs.base import Env
from mismatch_jax.models import trainer_losses
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.train.config import TrainingSection

AGENTS: dict[str, dict[str, Any]] = {
    "mbpo": dict(model_loss="mle", augmented_reward=False),
    "vagram": dict(model_loss="vagram", augmented_reward=False),
    "itervaml": dict(model_loss="itervaml", augmented_reward=False),
    "value_weighted": dict(model_loss="value_weighted", augmented_reward=False),
    "mnm": dict(model_loss="mnm", augmented_reward=True),
    "mnm_approx": dict(model_loss="mnm", augmented_reward=False),
}
"""Agent name → the MBPOConfig fields it sets."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelTraining(TrainingSection):
    """[mbpo.model_training]: the model's training each phase — the shared ``TrainingSection``
    (num_epochs per phase, an upper bound with patience; keep_best applies to the MLE loss only,
    the decision-aware losses keep their last parameters since the validation score is MLE) plus:

    validation_fraction: real-buffer rows held out for model validation (fixed per row for the run).
    mse_weight: extra normalised MSE in the model loss (IterVAML's λ-stabiliser; 0).
    """

    validation_fraction: float = setting(0.1, ge=0.0, lt=1.0)
    mse_weight: float = setting(0.0, ge=0.0)

    def check(self):
        super().check()
        self.fixed("learning_rate")
        self.fixed("weight_decay")


@dataclasses.dataclass(frozen=True)
class VaGraMOptions(Schema):
    """[mbpo.vagram]: how VaGraM (and first-order IterVAML) build their value gradients and loss.
    The rule for the defaults: the paper (Voelcker et al. 2022) where it says, else its released
    code (pairlab/vagram, ``mbrl/models/vaml_mlp.py`` and ``mbrl/algorithms/mbpo.py``).

    clip_percentile: gradient vectors whose L2 norm exceeds this percentile of the norms are
        rescaled to it (appendix E: 95).
    clip_scope: "minibatch" takes the percentile over each training minibatch's valid rows, per
        critic (the code; appendix E does not say over what); "buffer" once over the whole
        buffer at the start of each model phase.
    action_gradient: "detached" differentiates Q_k(s, a) in s at a = π(s) held fixed (the code
        detaches the action; the paper only writes ∂V/∂s); "through_policy" takes the total
        derivative of Q_k(s, π(s)) through the policy as well.
    critic_reduce: "sum" over the K = 4 value functions (2 online, 2 target critics: appendix E
        "summed the losses using each ... value function gradient independently", and the code's
        per-critic loop); "mean" divides by K.
    mse_warmup_epochs: MBPO epochs (``epoch_length`` env steps each, counted from the first env
        step) during which the normalised MSE of every output is added to the model loss with
        weight 1 (the code adds it for the first epoch; the paper does not mention it).
    gradient_scale: "none" (the paper: g as is) or "running_mean": g divided by a running mean of
        the gradient norms, the code's ``norm_avg`` (``trainer_losses.running_gradient_scale``),
        which rescales the value term against the reward term.
    output_reduce: "sum" (Eq. 7 sums the squared errors over state dims) or "mean": the code
        averages over the state dims its per-dim loss with the reward error added to each dim,
        i.e. (1/D)·Eq. 7 + the reward error.
    """

    clip_percentile: float = setting(95.0, gt=0.0, le=100.0)
    clip_scope: Literal["minibatch", "buffer"] = "minibatch"
    action_gradient: Literal["detached", "through_policy"] = "detached"
    critic_reduce: Literal["sum", "mean"] = "sum"
    mse_warmup_epochs: int = setting(1, ge=0)
    gradient_scale: Literal["none", "running_mean"] = "none"
    output_reduce: Literal["sum", "mean"] = "sum"


@dataclasses.dataclass(frozen=True)
class ValueWeightedOptions(Schema):
    """[mbpo.value_weighted]: the value-weighted MSE baseline (VaGraM appendix D.1).

    direction: "inverse" weights each row by 1/|V(s′)| (the paper's text: "multiplied by the
        inverse of the value function of the sample"); "proportional" by |V(s′)| normalised to
        mean 1 (the released code's weighting). Default: the paper's text.
    """

    direction: Literal["inverse", "proportional"] = "inverse"


@dataclasses.dataclass(frozen=True)
class MBPOConfig(Schema):
    """Static MBPO hyperparameters (hashable). Load strictly with ``load_mbpo_config(path)``.

    sac: the SAC agent and run loop ([sac] table): env, total_env_steps, eval_interval,
        learning_starts (random-action steps; the first model phase runs right after them),
        buffer_capacity (real buffer = model-training data), batch_size, updates_per_step (G).
    model_loss: one of ``trainer_losses.LOSSES``; augmented_reward: policy on MnM's r̃.
    model: the dynamics ensemble ([model] table, a ``ModelConfig``; a reward output is always
        added). model_training: its training each phase (``ModelTraining``).
    reward_loss_weight: weight of the reward-output MSE added to decision-aware losses.
    vagram: VaGraM's and IterVAML's gradient and loss options (``VaGraMOptions``).
    value_weighted: the value-weighted baseline's options (``ValueWeightedOptions``).
    itervaml_mse_coef: see ``value_aware``.
    model_train_freq: env steps between model phases (divides eval_interval, epoch_length and
        learning_starts). epoch_length: env steps per MBPO epoch (schedules are in epochs).
    rollout_batch_size: rollouts started per phase; rollout_schedule: (epoch_a, epoch_b,
        length_a, length_b); model_retain_epochs: epochs of rollouts kept.
    model_share_start / model_share_end / model_share_ramp_epochs: model rows per SAC batch.
    classifier_*: MnM's classifier (MLP sizes, Adam lr, minibatches per phase, batch size).
    reward_transform / reward_temperature / reward_min: log r⁺ of the augmented reward.
    mnm_reward_balance: "eq3" (default) r̃ = (1−γ)·log r⁺ + log C/(1−C) − (1−γ)·log(1−γ), the
        balance of paper 001's Eq. 3; "unit": log r⁺ + log C/(1−C) (100× more task reward at
        γ = 0.99; the earlier behaviour, kept for comparison).
    mnm_classifier_rows: where r̃'s classifier term applies: "model" (default) rows from the
        model buffer only — the paper trains Q on model transitions (Eq. 7), so real rows of the
        mixed SAC batch keep the reward part (1−γ)·log r⁺ (same scale) without a log-ratio;
        "all": every row (the earlier behaviour).
    classifier_steps_per_model_step: MnM's GAN-like alternation: k classifier Adam steps against
        the current model before every model minibatch step of a phase (the trainer's
        ``context_step``); ``classifier_steps`` still run first, against the model as the phase
        starts. 0: only those (the earlier behaviour: classifier frozen during the phase).
    mnm_value_clip: "none" (the paper): Eq. 9's V(s′_model) on the model's prediction as is;
        "data_range": the prediction is clipped to the per-dimension range of the real buffer's
        next states before V sees it (not the classifier: its logit keeps penalising the
        excursion). Our stabiliser, not the paper's: an unbounded critic extrapolates off the
        data and the model can raise V without limit there (sweeps/mnm_pendulum_cpu.toml's
        "none" run diverged: model loss −1e10).
    The MnM stabilisers below default to the ablation in REPRODUCTION.md's MnM section
    (sweeps/mnm_distractors_cpu.toml, 2 seeds × 3 000 steps): without them (the paper's
    objective) or with only the NLL anchor and warm-up, Eq. 9's model ran off the data (held-out
    MSE 2 → 1e3 … 1e4, the critics' Q → 1e6); with the anchor, the warm-up and c = 0.01 it
    stayed at the MLE model's MSE, and bounding the logit / smoothing the labels changed nothing
    there, so those two are off (the paper's classifier).
    mnm_value_action: Eq. 9's V(s′) = min of the online critics at "sample" a ~ π(s′) (paper
        001 Sec. 4.2: "a 1-sample approximation V(s) = Q(s, a), a ~ π") or "deterministic"
        a = tanh(μ(s′)) (the earlier behaviour).
    mnm_value_scale: c in Eq. 9's c·V + log C/(1 − C) (0.01). Ours, not the paper's (which writes 1):
        MnM-approx's critic is trained on raw rewards, so V is a sum of ~1/(1 − γ) rewards while
        the logit is a per-step log-ratio; c = 1 − γ is Eq. 3's (1 − γ) balance of reward and
        log-ratio carried to the value.
    mnm_mle_weight: weight of the PETS Gaussian NLL added to Eq. 9 (an MLE anchor; 1). Ours.
    mnm_mle_warmup_epochs: MBPO epochs (from the first env step) whose model phases train on the
        NLL alone before Eq. 9 takes over (1; VaGraM's code warms up with the MSE likewise). Ours.
    classifier_logit_bound: b > 0 bounds the classifier's logit smoothly to ±b·tanh(·/b) in
        Eq. 4, Eq. 9 and r̃ (0: unbounded, the paper). Ours (a GAN stabiliser).
    classifier_label_smoothing: α: Eq. 4's targets 1 − α (real) and α (model) (0: the paper).
        Ours (a GAN stabiliser: the optimal logit stays finite on separable data).
    num_distractors / distractor_seed: VaGraM distracting dims appended to the env (0: none).
    """

    sac: SACConfig = dataclasses.field(default_factory=SACConfig)
    model_loss: Literal["mle", "vagram", "itervaml", "value_weighted", "mnm"] = "mle"
    augmented_reward: bool = False
    model: ModelConfig = ModelConfig(kind="PE", ensemble_size=7, angle_features=True)
    model_training: ModelTraining = ModelTraining(num_epochs=5)
    reward_loss_weight: float = setting(1.0, ge=0.0)
    vagram: VaGraMOptions = VaGraMOptions()
    value_weighted: ValueWeightedOptions = ValueWeightedOptions()
    itervaml_mse_coef: float = setting(0.01, ge=0.0)
    model_train_freq: int = setting(250, ge=1)
    epoch_length: int = setting(1000, ge=1)
    rollout_batch_size: int = setting(400, ge=1)
    rollout_schedule: tuple[int, int, int, int] = (20, 100, 1, 1)
    model_retain_epochs: int = setting(1, ge=1)
    model_share_start: float = setting(0.0, ge=0.0, le=1.0)
    model_share_end: float = setting(0.95, ge=0.0, le=1.0)
    model_share_ramp_epochs: float = setting(40.0, gt=0.0)
    classifier_hidden_size: int = setting(256, ge=1)
    classifier_num_hidden_layers: int = setting(2, ge=1)
    classifier_lr: float = setting(3e-4, gt=0.0)
    classifier_steps: int = setting(100, ge=1)
    classifier_batch_size: int = setting(256, ge=1)
    reward_transform: Literal["exp", "shift", "log"] = "exp"
    reward_temperature: float = setting(1.0, gt=0.0)
    reward_min: Optional[float] = None
    mnm_reward_balance: Literal["eq3", "unit"] = "eq3"
    mnm_classifier_rows: Literal["model", "all"] = "model"
    classifier_steps_per_model_step: int = setting(1, ge=0)
    mnm_value_clip: Literal["none", "data_range"] = "none"
    mnm_value_action: Literal["sample", "deterministic"] = "sample"
    mnm_value_scale: float = setting(0.01, ge=0.0)
    mnm_mle_weight: float = setting(1.0, ge=0.0)
    mnm_mle_warmup_epochs: int = setting(1, ge=0)
    classifier_logit_bound: float = setting(0.0, ge=0.0)
    classifier_label_smoothing: float = setting(0.0, ge=0.0, lt=0.5)
    num_distractors: int = setting(0, ge=0)
    distractor_seed: int = 0

    def check(self):
        if not isinstance(self.sac, SACConfig):
            raise ValueError(f"MBPOConfig.sac must be a SACConfig, got {type(self.sac).__name__}")
        if self.model_loss not in trainer_losses.LOSSES:
            raise ValueError(f"MBPOConfig.model_loss must be one of {trainer_losses.LOSSES}, got {self.model_loss!r}")
        freq, sac = self.model_train_freq, self.sac
        for name, value in (("sac.eval_interval", sac.eval_interval), ("epoch_length", self.epoch_length),
                            ("sac.learning_starts", sac.learning_starts)):
            if value % freq:
                raise ValueError(f"MBPOConfig.{name} ({value}) must be a multiple of model_train_freq ({freq})")
        if sac.learning_starts < freq:
            raise ValueError(f"MBPOConfig.sac.learning_starts ({sac.learning_starts}) must be >= "
                             f"model_train_freq ({freq}): the first model needs data")
        a_epoch, b_epoch, a_len, b_len = self.rollout_schedule
        if not (0 <= a_epoch < b_epoch and a_len >= 1 and b_len >= 1):
            raise ValueError(f"MBPOConfig.rollout_schedule must be (epoch_a < epoch_b, length_a >= 1, "
                             f"length_b >= 1), got {self.rollout_schedule}")
        if self.reward_transform == "shift" and self.reward_min is None:
            raise ValueError("MBPOConfig.reward_min is required with reward_transform = 'shift'")

    @property
    def uses_classifier(self) -> bool:
        return self.model_loss == "mnm" or self.augmented_reward

    @property
    def max_rollout_length(self) -> int:
        return max(self.rollout_schedule[2], self.rollout_schedule[3])


def mbpo_config_from_dict(data) -> MBPOConfig:
    """Strict: unknown keys / wrong types / impossible values raise ``ConfigError`` naming the key."""
    return from_dict(MBPOConfig, data)


def load_mbpo_config(path) -> MBPOConfig:
    """Reads an MBPO TOML file (MBPOConfig fields, SAC fields in a [sac] table) strictly."""
    return load_toml(MBPOConfig, path)


@struct.dataclass
class MBPOHParams:
    """MBPO's vmappable hyper-parameters, float32 leaves ([] per run, leading axes to sweep).

    sac: ``SACHParams`` of the policy. model_lr / model_weight_decay / model_mse_weight: the
    population trainer's learning_rate / weight_decay / mse_weight each model phase.
    classifier_lr: Adam step size of MnM's classifier (unused without one).
    """

    sac: SACHParams
    model_lr: jax.Array
    model_weight_decay: jax.Array
    model_mse_weight: jax.Array
    classifier_lr: jax.Array

    @classmethod
    def from_config(cls, config: MBPOConfig, action_dim: int) -> "MBPOHParams":
        """The config's values as [] float32 leaves (what ``hparams=None`` means)."""
        f32 = lambda v: jnp.asarray(v, jnp.float32)
        training = config.model_training
        return cls(sac=SACHParams.from_config(config.sac, action_dim),
                   model_lr=f32(training.fixed("learning_rate")),
                   model_weight_decay=f32(training.fixed("weight_decay")),
                   model_mse_weight=f32(training.mse_weight), classifier_lr=f32(config.classifier_lr))

    def broadcast(self, n: int) -> "MBPOHParams":
        """Every leaf [] → [n] (then ``.replace(...)`` sets the swept fields)."""
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (n,) + jnp.shape(v)), self)


def agent_config(name: str, config: MBPOConfig) -> MBPOConfig:
    """``config`` with the fields of agent ``name`` (``AGENTS``) set."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; available: {', '.join(AGENTS)}")
    return dataclasses.replace(config, **AGENTS[name])


def make_env(config: MBPOConfig) -> Env:
    """``config.sac.env`` from the registry, with ``num_distractors`` VaGraM distractor dims."""
    from mismatch_jax.envs import registry
    from mismatch_jax.envs.distractors import with_distractors

    env = registry.make(config.sac.env)
    if config.num_distractors:
        env = with_distractors(env, config.num_distractors, jax.random.key(config.distractor_seed))
    return env


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the env-step count; Python ints or traced int scalars)
# ---------------------------------------------------------------------------------------------


def rollout_length(config: MBPOConfig, env_steps) -> jax.Array:
    """MBPO's rollout length at ``env_steps``: [] int32 in [min, max] of the schedule lengths."""
    a_epoch, b_epoch, a_len, b_len = config.rollout_schedule
    epoch = jnp.asarray(env_steps, jnp.float32) / config.epoch_length
    frac = jnp.clip((epoch - a_epoch) / (b_epoch - a_epoch), 0.0, 1.0)
    return jnp.floor(a_len + frac * (b_len - a_len) + 1e-6).astype(jnp.int32)


def model_share(config: MBPOConfig, env_steps) -> jax.Array:
    """Fraction [] of each SAC batch drawn from the model buffer at ``env_steps``."""
    epoch = jnp.asarray(env_steps, jnp.float32) / config.epoch_length
    frac = jnp.clip(epoch / config.model_share_ramp_epochs, 0.0, 1.0)
    return config.model_share_start + frac * (config.model_share_end - config.model_share_start)


# ---------------------------------------------------------------------------------------------
# State and metrics
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class MBPOState:
    """Carry of the training scan. sac: SACState; real / model_buffer: ReplayBuffers of
    Transition; model_params / normalizer: the dynamics model; classifier /
    classifier_opt_state: MnM's classifier (None when unused); val_rows [buffer_capacity] bool:
    real-buffer rows held out for model validation; env_state, episode_return [], env_steps [];
    vagram_norm_avg []: the running mean of value-gradient norms (``VaGraMOptions.gradient_scale``)."""

    sac: SACState
    real: replay.ReplayBuffer
    model_buffer: replay.ReplayBuffer
    model_params: models.ModelParams
    normalizer: models.Normalizer
    classifier: Any
    classifier_opt_state: Any
    val_rows: jax.Array
    env_state: Any
    episode_return: jax.Array
    env_steps: jax.Array
    vagram_norm_avg: jax.Array


@struct.dataclass
class PhaseMetrics:
    """One model phase: model_train_loss / model_val_mse (trainer's last epoch; val MSE of the
    ensemble mean in state units, incl. the reward dim), model_epochs (epochs trained),
    classifier_loss (the classifier's loss after the phase on a fresh batch of real rows and the
    new model's predictions of them; NaN without classifier), classifier_logit_real /
    classifier_logit_model (its mean logit on those real / model next states: the estimates of
    log p/q on each; NaN without classifier),
    rollout_length, rollout_rows (model rows written)."""

    model_train_loss: jax.Array
    model_val_mse: jax.Array
    model_epochs: jax.Array
    classifier_loss: jax.Array
    classifier_logit_real: jax.Array
    classifier_logit_model: jax.Array
    rollout_length: jax.Array
    rollout_rows: jax.Array


@struct.dataclass
class MBPOMetrics(sac_loop.TrainMetrics, PhaseMetrics):
    """One record per evaluation interval (leaves [num_evals] from ``train``): the SAC record
    (``sac_loop.TrainMetrics``: env_steps, eval_return, train_return, update means, num_updates),
    the last model phase of the interval (``PhaseMetrics``; NaN / 0 when none ran) and the model
    share at the interval's end."""

    model_share: jax.Array
