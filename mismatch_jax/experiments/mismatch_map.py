"""The mismatch map: does a model loss's own objective predict reward better than likelihood?

Lambert et al. (2020) train many dynamics models, score each by its one-step validation
log-likelihood (LL) and by the reward a controller earns with it, and correlate the two. Here the
same population analysis is run on three model losses trained against **one fixed value
function**: maximum likelihood (PETS NLL), VaGraM (Voelcker et al. 2022) and the MnM model
objective (Eysenbach et al. 2022). For each loss we report the correlation between reward and

* the held-out value of the loss's *own* objective (scored so that higher is better), and
* the held-out one-step LL (Lambert et al.'s axis),

plus the full cross matrix (every held-out metric vs reward, per population and pooled).

Pipeline (``run_mismatch_map``), every stage one jitted program:

1. SAC on the env (``agents.sac``, one fixed key) → the value function V = Q_k(s, π(s)) of its
   four critics, and its replay buffer, split into training rows and held-out rows.
2. Per loss and model width, one population-trainer call trains ``num_models`` probabilistic (P)
   models with per-model keys and log-uniform learning rates; the keys and learning rates are the
   *same* across losses, so model i of every population differs only by the loss. Snapshots at
   ``keep_epochs`` become separate rows (Lambert et al. also score models across training).
3. MnM is GAN-like, so it alternates (``mnm.rounds`` rounds): train one classifier C(s, a, s′)
   on real next states vs the current MnM population's predictions (a random model per row),
   then train the population ``num_epochs / rounds`` epochs against it (Adam restarts each
   round; each width starts from a fresh classifier). After the last round the classifier gets one
   more round on the pooled final MnM models; that *evaluation classifier* scores the MnM
   objective of every snapshot of every population.
4. Every snapshot is scored on the held-out rows (LL, MSE, VaGraM, MnM, exact VAML error) and by
   ``evaluation.trials`` CEM-MPC episodes in the true env, planning with the model's mean
   (expectation propagation) and, if ``evaluation.terminal_value``, the SAC value at the horizon
   (Σ_t γ^t r_t + γ^H min_k V_k(s_H)). Every model sees the same start states and planning keys.
5. Correlations (``analysis.correlation.correlate``: scipy Pearson/Spearman + bootstrap CIs),
   mismatch_map.png (own objective vs reward, LL vs reward, per loss), mismatch_map.json and
   mismatch_map.parquet (one row per snapshot).

Choices (and why):

* Decision-aware losses only shape the mean; a P model's log-variance head would stay at its
  random initialisation and make its LL meaningless. So VaGraM and MnM models also fit the
  variance head by the Gaussian NLL around their *stop-gradient* mean
  (``variance_head = true``): the mean is purely decision-aware, and the LL is that of the best
  variance for that mean — the fairest LL a decision-aware model can be given.
* The NLL population's own objective is its held-out LL: the PETS NLL in normalised units is an
  affine function of the LL when all models share one normaliser (they train on one dataset), so
  the two correlations are identical.
* VaGraM gradients are clipped at the 95th percentile of the training rows' norms (appendix E);
  the held-out score uses gradients at the held-out next states clipped the same way.
* Models are single P models (Lambert et al. also use PE/D/DE); the population varies seed,
  learning rate, width and training epochs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.agents import sac_loop
from mismatch_jax.analysis.mismatch_map import METRICS, correlation_summary, plot_mismatch_map
from mismatch_jax.config_io import to_dict
from mismatch_jax.experiments.mismatch_map_config import MismatchMapConfig, MnmConfig
from mismatch_jax.models import core as models
from mismatch_jax.models import trainer_losses, value_aware
from mismatch_jax.planning.mpc import make_value_planner, mean_model_step, mpc_episode, true_env_step
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.train import TrainHParams, make_train, model_keys
from mismatch_jax.files import write_json

OWN_METRIC = {"nll": "ll", "vagram": "vagram", "mnm": "mnm"}

# Salts of the root key's independent streams.
_SAC_SALT, _SPLIT_SALT, _MODEL_SALT, _LR_SALT, _CLASSIFIER_SALT, _EVAL_SALT = range(6)


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


def with_variance_head(loss: Callable) -> Callable:
    """per_sample_loss + Gaussian NLL of the log-variance around the stop-gradient mean
    (normalised units): the mean follows ``loss`` only, the variance is fitted to its errors."""
    def fn(inputs, loss_context):
        nll = models.gaussian_nll_per_sample(jax.lax.stop_gradient(inputs.mean), inputs.logvar, inputs.target)
        return loss(inputs, loss_context) + nll
    return fn


def train_classifier(key, params, config: MnmConfig, obs, action, real_next, model_next):
    """Adam on the MnM classifier loss (Eq. 4). obs/action/real_next [T, ·]; model_next
    [N, T, d]: predictions of N models; each minibatch entry pairs row t with a random model.
    Returns (params, final-100-step mean loss [])."""
    opt = optax.adam(config.classifier_lr)
    num_models, rows = model_next.shape[:2]
    batch = config.classifier_batch_size

    def real_and_model_rows(k):
        row_key, model_key = jax.random.split(k)
        t = jax.random.randint(row_key, (batch,), 0, rows)
        n = jax.random.randint(model_key, (batch,), 0, num_models)
        return obs[t], action[t], real_next[t], model_next[n, t]

    params, _, losses = value_aware.fit_classifier(key, params, opt.init(params), opt, real_and_model_rows,
                                                   config.classifier_steps)
    return params, losses[-min(100, config.classifier_steps):].mean()


def _predict_rows(mcfg, params, norm, obs, action):
    """Mean next-obs predictions of N models on rows [T, ·] → [N, T, d]."""
    def one(p, n):
        mean, _ = models.predict(mcfg, p, n, obs, action)
        return mean[0][..., : mcfg.obs_dim]
    return jax.vmap(one)(params, norm)


def heldout_metrics(mcfg, params, norm, held, grads, value_fn, classifier, config: MismatchMapConfig):
    """Held-out scores of one model: dict of [] (ll higher-better; mse, vagram, mnm, vaml losses).
    held = (obs, action, next_obs) [B, ·]; grads [K, B, d] clipped value gradients."""
    obs, action, next_obs = held
    mean, _ = models.predict(mcfg, params, norm, obs, action)
    pred = mean[0][..., : mcfg.obs_dim]
    return {
        "ll": models.one_step_log_likelihood(mcfg, params, norm, obs, action, next_obs),
        "mse": models.one_step_mse(mcfg, params, norm, obs, action, next_obs),
        "vagram": value_aware.vagram_per_sample(pred, next_obs, grads, config.vagram.regularizer).mean(),
        "mnm": value_aware.mnm_model_loss_per_sample(value_fn, classifier, obs, action, pred,
                                                     config.mnm.reduce).mean(),
        "vaml": value_aware.vaml_per_sample(value_fn, pred, next_obs).mean(),
    }


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def _log_uniform(key, num, low, high):
    u = jax.random.uniform(key, (num,))
    return jnp.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def run_mismatch_map(config: MismatchMapConfig, out_dir=None, log=print) -> dict:
    """Runs the experiment; writes mismatch_map.{png,json,parquet} into out_dir (default
    config.out_dir) and returns the JSON dict."""
    from mismatch_jax import envs

    out = Path(out_dir or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.time()
    root = jax.random.key(config.seed)
    env = envs.make(config.env)
    pop = config.population

    # 1. SAC → value function and data.
    sac = sac_lib.make_sac(config.sac, env)
    sac_state, sac_metrics = jax.jit(sac_loop.make_train(config.sac, env))(jax.random.fold_in(root, _SAC_SALT))
    value_params = sac_state.sac.params
    value_apply = lambda p, s: sac.value(p, s, critics="all")  # [K] per state
    value_fn = lambda s: value_apply(value_params, s)
    buffer = sac_state.buffer
    size = int(buffer.size)
    rows = np.asarray(jax.random.permutation(jax.random.fold_in(root, _SPLIT_SALT), size))[: config.data.max_rows]
    trans = jax.tree.map(lambda a: np.asarray(a)[rows], buffer.data)
    num_held = int(round(len(rows) * config.data.heldout_fraction))
    is_held = np.zeros(len(rows), bool)
    is_held[:num_held] = True  # rows are already a random permutation
    held = tuple(jnp.asarray(a[is_held]) for a in (trans.obs, trans.action, trans.next_obs))
    data = TransitionData.single(trans.obs, trans.action, trans.next_obs, ~is_held, is_held,
                                 reward=trans.reward)
    train_rows = tuple(jnp.asarray(a[~is_held]) for a in (trans.obs, trans.action, trans.next_obs))
    sac_return = float(np.asarray(sac_metrics.eval_return)[-1])
    timings["sac_s"] = time.time() - t0
    log(f"[mismatch_map] SAC final eval return {sac_return:.1f}; {len(rows) - num_held} train / "
        f"{num_held} held-out rows ({timings['sac_s']:.0f} s)")

    grads_train = trainer_losses.value_gradient_aux(value_fn, data.next_obs, data.train_mask,
                                                    config.vagram.clip_percentile)
    held_grads = value_aware.value_gradient_cache(value_fn, held[2], config.vagram.clip_percentile).grads

    # 2./3. Populations.
    keys_root = jax.random.fold_in(root, _MODEL_SALT)
    total_models = pop.num_models * len(pop.hidden_sizes)
    learning_rates = _log_uniform(jax.random.fold_in(root, _LR_SALT), total_models, *pop.learning_rate)
    clf_config = value_aware.ClassifierConfig(env.obs_dim, env.action_dim, config.mnm.classifier_hidden_size,
                                              config.mnm.classifier_layers)
    clf_key = jax.random.fold_in(root, _CLASSIFIER_SALT)
    classifier = value_aware.classifier_init(jax.random.fold_in(clf_key, 0), clf_config)
    classifier_losses = []
    final_predictions = []  # (loss, [N, T, d]) of each group's final models on the training rows
    predict_train_rows = lambda mcfg, p, n: jax.jit(
        lambda p, n, rows: _predict_rows(mcfg, p, n, *rows[:2]))(p, n, train_rows)
    groups = []  # (loss, width, model indices [N], snapshot params [N, K], norms [N], epochs [K])
    t1 = time.time()
    for w_index, width in enumerate(pop.hidden_sizes):
        mcfg = models.ModelConfig(kind="P", obs_dim=env.obs_dim, action_dim=env.action_dim,
                                  hidden_size=width, num_hidden_layers=pop.num_hidden_layers)
        start = w_index * pop.num_models
        keys = model_keys(keys_root, start, pop.num_models)
        hp = TrainHParams.population(pop.num_models, learning_rate=learning_rates[start:start + pop.num_models],
                                     weight_decay=pop.fixed("weight_decay"))
        index = np.arange(start, start + pop.num_models)
        for loss in config.losses:
            if loss == "nll":
                train = make_train(pop.train_config(mcfg, keep_epochs=pop.keep_epochs))
                result = train(keys, None, data, hp)
                kept = result.kept_params
            elif loss == "vagram":
                fn = trainer_losses.vagram_loss(config.vagram.regularizer)
                fn = with_variance_head(fn) if config.variance_head else fn
                train = make_train(pop.train_config(mcfg, keep_epochs=pop.keep_epochs),
                                   per_sample_loss=fn)
                result = train(keys, None, data.replace(aux=grads_train), hp)
                kept = result.kept_params
            else:
                fn = trainer_losses.mnm_loss(value_apply, config.mnm.reduce)
                fn = with_variance_head(fn) if config.variance_head else fn
                seg = pop.num_epochs // config.mnm.rounds
                train = make_train(pop.train_config(mcfg, num_epochs=seg, keep_epochs=tuple(range(1, seg + 1))),
                                   per_sample_loss=fn)
                fit_jit = jax.jit(lambda k, p, n, c, rows: train_classifier(
                    k, c, config.mnm, *rows, _predict_rows(mcfg, p, n, *rows[:2])))
                fit = lambda k, p, n, c: fit_jit(k, p, n, c, train_rows)  # rows as arguments, not constants
                params, norm, segments = None, None, []
                classifier = value_aware.classifier_init(jax.random.fold_in(clf_key, w_index), clf_config)
                for r in range(config.mnm.rounds):
                    if params is None:  # untrained models: predictions of their initial weights
                        init_params = jax.vmap(lambda k: models.init(jax.random.split(k, 3)[0], mcfg))(keys)
                        norm0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (pop.num_models,) + a.shape),
                                             _fit_norm(mcfg, data))
                        classifier, closs = fit(jax.random.fold_in(clf_key, 1000 * w_index + r + 1),
                                                init_params, norm0, classifier)
                    else:
                        classifier, closs = fit(jax.random.fold_in(clf_key, 1000 * w_index + r + 1),
                                                params, norm, classifier)
                    classifier_losses.append(float(closs))
                    # Round r > 0 continues from the last parameters with fresh minibatch orders.
                    round_keys = keys if r == 0 else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, r)
                    result = train(round_keys, params, data, hp, loss_context=(value_params, classifier))
                    params, norm = result.params, result.normalizer
                    segments.append(result.kept_params)
                all_kept = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *segments)  # [N, E_total]
                pick = np.asarray(pop.keep_epochs) - 1
                kept = jax.tree.map(lambda a: a[:, pick], all_kept)
            diverged = np.asarray(result.diverged)
            final_predictions.append((loss, predict_train_rows(mcfg, result.params, result.normalizer)))
            groups.append(dict(loss=loss, width=width, mcfg=mcfg, index=index, kept=kept,
                               norm=result.normalizer, diverged=diverged,
                               learning_rate=np.asarray(hp.learning_rate)))
            log(f"[mismatch_map] trained {loss} width {width}: {pop.num_models} models "
                f"({time.time() - t1:.0f} s so far)")
    # The evaluation classifier scores the MnM objective of every snapshot: one more round on the
    # pooled final MnM models of all widths (all final models when there is no MnM population).
    pool = [p for loss, p in final_predictions if loss == "mnm"] or [p for _, p in final_predictions]
    classifier, closs = jax.jit(lambda k, c, rows, model_next: train_classifier(k, c, config.mnm, *rows, model_next))(
        jax.random.fold_in(clf_key, 10_000), classifier, train_rows, jnp.concatenate(pool, axis=0))
    classifier_losses.append(float(closs))
    timings["train_s"] = time.time() - t1

    # 4. Score every snapshot.
    t2 = time.time()
    cem = config.planner.for_env(env)
    discount = config.sac.gamma if config.evaluation.terminal_value else 1.0
    ev = config.evaluation
    trial_keys = jax.random.split(ev.salted(jax.random.fold_in(root, _EVAL_SALT)), ev.trials)

    def terminal_fn(value_params):
        if not ev.terminal_value:
            return None
        return lambda s: sac.value(value_params, s, critics="online", reduce="min")

    def episodes(planner, params, norm):
        _, rewards = jax.vmap(lambda k: mpc_episode(k, env, planner, params, norm, ev.episode_length))(trial_keys)
        return rewards  # [trials]

    oracle_rewards = np.asarray(jax.jit(lambda vp: episodes(
        make_value_planner(cem, true_env_step(env), env.reward_fn, terminal_fn(vp), discount), None, None))(
            value_params))
    log(f"[mismatch_map] true-dynamics planner reward {oracle_rewards.mean():.1f}")

    scorers = {}  # one compiled scorer per model width; data and value function are arguments

    def make_scorer(mcfg, num):
        @jax.jit
        def score(params, norm, classifier, vp, held, held_grads):
            v_fn = lambda s: value_apply(vp, s)
            planner = make_value_planner(cem, mean_model_step(mcfg), env.reward_fn, terminal_fn(vp), discount)

            def one(pn):
                p, n = pn
                metrics = heldout_metrics(mcfg, p, n, held, held_grads, v_fn, classifier, config)
                return metrics, episodes(planner, p, n)

            return jax.lax.map(one, (params, norm), batch_size=min(ev.model_chunk, num))
        return score

    table_rows = []
    for g in groups:
        mcfg, n_models, n_keep = g["mcfg"], len(g["index"]), len(pop.keep_epochs)
        flat = jax.tree.map(lambda a: a.reshape((n_models * n_keep,) + a.shape[2:]), g["kept"])
        norms = jax.tree.map(lambda a: jnp.repeat(a, n_keep, axis=0), g["norm"])
        if mcfg not in scorers:
            scorers[mcfg] = make_scorer(mcfg, n_models * n_keep)
        score = scorers[mcfg]
        metrics, rewards = jax.device_get(score(flat, norms, classifier, value_params, held, held_grads))
        for j in range(n_models * n_keep):
            i, k = divmod(j, n_keep)
            row = {"loss": g["loss"], "model_id": int(g["index"][i]), "hidden_size": g["width"],
                   "learning_rate": float(g["learning_rate"][i]), "epoch": int(pop.keep_epochs[k]),
                   "diverged": bool(g["diverged"][i])}
            row.update({m: float(metrics[m][j]) for m in METRICS})
            row["reward"] = [float(r) for r in rewards[j]]
            row["reward_mean"] = float(np.mean(rewards[j]))
            row["own_objective"] = _score_of(g["loss"], row)
            table_rows.append(row)
        log(f"[mismatch_map] scored {g['loss']} width {g['width']} ({time.time() - t2:.0f} s so far)")
    timings["score_s"] = time.time() - t2

    import pandas as pd

    table = pd.DataFrame(table_rows)
    table.to_parquet(out / "mismatch_map.parquet")
    results = {
        "experiment": "mismatch_map", "config": to_dict(config), "device": jax.devices()[0].device_kind,
        "sac_final_eval_return": sac_return, "true_dynamics_planner_reward": float(oracle_rewards.mean()),
        "mnm_classifier_losses": classifier_losses,
        "num_rows": len(table), "timings_s": {**timings, "total_s": time.time() - t0},
        **correlation_summary(table, ev.num_bootstrap, config.seed),
    }
    write_json(out / "mismatch_map.json", results)
    plot_mismatch_map(table, results, out / "mismatch_map.png")
    return results


def _fit_norm(mcfg, data: TransitionData) -> models.Normalizer:
    x, y = models.make_targets(mcfg, data.obs[0], data.action[0], data.next_obs[0])
    return models.fit_normalizer(mcfg, x, y, data.train_mask[0])


def _score_of(loss: str, row: dict) -> float:
    """A loss's own held-out objective, oriented so that higher is better."""
    metric = OWN_METRIC[loss]
    return row[metric] if metric == "ll" else -row[metric]
