"""Adversarial last-layer attack: fitness, model files, vmapped candidate evaluation, CMA-ES on a
toy problem with a known constrained optimum, config errors, and a tiny end-to-end run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax import models
from mismatch_jax.experiments import attack
from mismatch_jax.experiments import study_models as common
from mismatch_jax.config_io import ConfigError, from_dict, load_toml
from mismatch_jax.envs import make
from mismatch_jax.models.checkpoint import load_model
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.train.config import TrainingSection
from mismatch_jax.planning.mpc import make_planner


@pytest.mark.unit
def test_fitness_known_values():
    reward = jnp.array([100.0, 50.0, 80.0, 10.0])
    ll = jnp.array([5.0, 4.9, 5.2, jnp.nan])
    fit = attack.attack_fitness(reward, ll, ll_reference=5.0, penalty=1000.0)
    np.testing.assert_allclose(fit[:3], [100.0, 150.0, 80.0], rtol=1e-6)
    assert fit[3] == attack.INVALID_FITNESS  # NaN LL ranks last
    tol = attack.attack_fitness(reward, ll, 5.0, 1000.0, tolerance=0.2)
    np.testing.assert_allclose(tol[:3], [100.0, 50.0, 80.0], rtol=1e-6)


def _tiny_model(key=0, kind="P"):
    cfg = models.ModelConfig(kind=kind, obs_dim=4, action_dim=1, hidden_size=8, num_hidden_layers=1,
                             ensemble_size=2 if kind.endswith("E") else 1)
    params = models.init(jax.random.key(key), cfg)
    norm = models.Normalizer(input_mean=jnp.arange(5.0) * 0.1, input_std=jnp.ones(5) * 2.0,
                             target_mean=jnp.zeros(4), target_std=jnp.ones(4) * 0.05)
    return cfg, params, norm


def test_perturb_touches_only_last_layer():
    _, params, _ = _tiny_model()
    delta = jax.tree.map(jnp.ones_like, attack.zero_delta(params))
    new = attack.perturb_last_layer(params, delta)
    for (w0, b0), (w1, b1) in zip(params.layers[:-1], new.layers[:-1]):
        np.testing.assert_array_equal(w0, w1), np.testing.assert_array_equal(b0, b1)
    np.testing.assert_allclose(new.layers[-1][0], params.layers[-1][0] + 1.0)
    np.testing.assert_array_equal(new.max_logvar, params.max_logvar)


def test_vmapped_evaluation_equals_loop():
    env = make("cartpole_balance")
    cfg, params, norm = _tiny_model()
    cem = CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1).for_env(env)
    planner = make_planner(cem, cfg, env.reward_fn, env.termination_fn)
    k = jax.random.split(jax.random.key(3), 3)
    val = (jax.random.normal(k[0], (16, 4)) * 0.05, jax.random.uniform(k[1], (16, 1), minval=-1, maxval=1),
           jax.random.normal(k[2], (16, 4)) * 0.05)
    one, batched = attack.make_candidate_evaluator(env, planner, cfg, params, norm, val, episode_length=12)
    template = attack.zero_delta(params)
    deltas = jax.tree.map(lambda a: 0.05 * jax.random.normal(jax.random.key(7), (3,) + a.shape), template)
    trial_keys = jax.random.split(jax.random.key(11), 2)
    rewards, ll = jax.jit(batched)(deltas, trial_keys)
    assert rewards.shape == (3, 2) and ll.shape == (3,)
    one_jit = jax.jit(one)
    for c in range(3):
        r_c, ll_c = one_jit(jax.tree.map(lambda a: a[c], deltas), trial_keys)
        np.testing.assert_allclose(rewards[c], r_c, rtol=1e-5)
        np.testing.assert_allclose(ll[c], ll_c, rtol=1e-5)
    # δ = 0 gives the original model's LL.
    _, ll0 = one_jit(template, trial_keys)
    np.testing.assert_allclose(ll0, models.one_step_log_likelihood(cfg, params, norm, *val), rtol=1e-5)


def _rows(n=64, key=5):
    k1, k2 = jax.random.split(jax.random.key(key))
    return jax.random.normal(k1, (n, 4)) * 0.3, jax.random.uniform(k2, (n, 1), minval=-1, maxval=1)


def _prediction_change(cfg, params, norm, delta, obs, action):
    """Mean-square change of the normalised mean prediction on the rows, per member [E]."""
    x = models.normalize_inputs(norm, models.model_inputs(cfg, obs, action))
    before, _ = models.apply_normalized(cfg, params, x)
    after, _ = models.apply_normalized(cfg, attack.perturb_last_layer(params, delta), x)
    return ((after - before) ** 2).sum(-1).mean(-1)


def test_hidden_features_feed_the_output_layer():
    cfg, params, norm = _tiny_model(kind="PE")
    obs, action = _rows()
    x = models.normalize_inputs(norm, models.model_inputs(cfg, obs, action))
    h = models.hidden_features(cfg, params, x)
    assert h.shape == (2, 64, 8)
    w, b = params.layers[-1]
    mean, _ = models.apply_normalized(cfg, params, x)
    np.testing.assert_allclose(mean, (jnp.einsum("ebh,eho->ebo", h, w) + b[:, None])[..., :4], rtol=1e-5, atol=1e-6)


def test_low_variance_basis_is_orthonormal_and_moves_predictions_by_its_eigenvalues():
    cfg, params, norm = _tiny_model(kind="PE")
    obs, action = _rows()
    basis = attack.low_variance_basis(cfg, params, norm, obs, action, rank=3)
    assert basis.shape == (2, 9, 3)
    np.testing.assert_allclose(jnp.einsum("ehk,ehj->ekj", basis, basis), jnp.broadcast_to(jnp.eye(3), (2, 3, 3)),
                               atol=1e-5)
    # The least-excited directions move the predictions on the rows less than any other unit step.
    space = attack.make_search_space("low_variance", 3, cfg, params, norm, obs, action)
    assert space.template.shape == (2, 3, 4)
    unit = jnp.zeros((2, 3, 4)).at[:, 0, 0].set(1.0)
    delta = space.expand(unit)
    np.testing.assert_array_equal(delta.w[..., 4:], 0.0)  # the log-variance columns stay put
    smallest = _prediction_change(cfg, params, norm, delta, obs, action)
    full = attack.low_variance_basis(cfg, params, norm, obs, action, rank=9)
    largest = attack.LastLayer(w=jnp.pad(full[:, :8, -1:], ((0, 0), (0, 0), (0, 7))),
                               b=jnp.pad(full[:, 8, -1:], ((0, 0), (0, 7))))
    assert np.all(smallest < 1e-2 * _prediction_change(cfg, params, norm, largest, obs, action))


def test_whitened_directions_move_predictions_equally():
    cfg, params, norm = _tiny_model(kind="P")
    obs, action = _rows(n=256)
    space = attack.make_search_space("whitened", 16, cfg, params, norm, obs, action)
    assert space.template.shape == (1, 9, 4)
    changes = [float(_prediction_change(cfg, params, norm, space.expand(jnp.zeros((1, 9, 4)).at[0, k, 1].set(1.0)),
                                        obs, action)[0]) for k in range(9)]
    np.testing.assert_allclose(changes, 1.0, rtol=0.1)  # float32 eigh: the smallest is ~5% off


@pytest.mark.unit
def test_pets_member_config_rules():
    with pytest.raises(ConfigError, match="model_path"):
        from_dict(attack.AttackConfig, {"base_model": "pets_member", "model_path": "runs/x"})
    with pytest.raises(ConfigError, match="data.kind"):
        from_dict(attack.AttackConfig, {"base_model": "pets_member", "data": {"kind": "grid"}})
    with pytest.raises(ConfigError, match="search_space"):
        from_dict(attack.AttackConfig, {"cmaes": {"search_space": "diagonal"}})


def test_cmaes_lowers_reward_within_ll_constraint():
    """Toy: reward = 50 + 10·x, LL = −max(0, −x − 0.5)² (x = the first weight). The constrained
    optimum is x = −0.5 (reward 45, LL 0); CMA-ES must lower the reward and stay feasible."""
    template = attack.LastLayer(w=jnp.zeros((1, 2, 1)), b=jnp.zeros((1, 1)))

    def evaluate(deltas, trial_keys):
        x = deltas.w[:, 0, 0, 0]
        reward = 50.0 + 10.0 * x + 0.0 * deltas.b[:, 0, 0]
        ll = -jnp.maximum(0.0, -x - 0.5) ** 2
        return jnp.broadcast_to(reward[:, None], (x.shape[0], trial_keys.shape[0])), ll

    settings = attack.CMAESSettings(population_size=8, generations=40, sigma=0.1, penalty=1000.0)
    state, history, mean = attack.run_cmaes(jax.random.key(0), evaluate, template, settings, 2, 0.0)
    assert history["best_fitness"].shape == (40,)
    assert np.all(np.diff(history["best_fitness"]) <= 0)
    assert float(state.best_reward) < 46.0           # from 50 at δ = 0
    assert float(state.best_ll) > -1e-3              # the LL constraint holds
    np.testing.assert_allclose(float(state.best_delta.w[0, 0, 0]), -0.5, atol=0.1)


def test_repair_scales_each_candidate_to_the_constraint_boundary():
    """LL = −max(0, |x| − 0.5)², threshold −0.01 → feasible |x| ≤ 0.6: t = 1, 0.6, 0.3, 0."""
    points = attack.LastLayer(w=jnp.array([0.2, 1.0, -2.0, 5.0]).reshape(4, 1, 1, 1), b=jnp.ones((4, 1, 1)))
    x_of = lambda p: p.w[:, 0, 0, 0]
    ll_of = lambda p: jnp.where(jnp.abs(x_of(p)) > 4.0, jnp.nan, -jnp.maximum(0.0, jnp.abs(x_of(p)) - 0.5) ** 2)
    repaired, t = attack.repair_to_constraint(points, ll_of, -0.01)
    np.testing.assert_allclose(t, [1.0, 0.6, 0.3, 0.12], atol=2e-4)  # NaN at |x| > 4 is infeasible
    np.testing.assert_allclose(repaired.w[:, 0, 0, 0], t * points.w[:, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(repaired.b[:, 0, 0], t, rtol=1e-6)  # the whole point is scaled
    assert np.all(np.asarray(ll_of(repaired)) >= -0.01)


def test_cmaes_with_repair_scores_only_feasible_candidates():
    """The toy of the penalty test under constraint = "repair": every scored candidate meets the
    constraint, and CMA-ES still finds the constrained optimum x = −0.5 (reward 45)."""
    template = attack.LastLayer(w=jnp.zeros((1, 2, 1)), b=jnp.zeros((1, 1)))
    ll_of = lambda deltas: -jnp.maximum(0.0, -deltas.w[:, 0, 0, 0] - 0.5) ** 2

    def evaluate(deltas, trial_keys):
        reward = 50.0 + 10.0 * deltas.w[:, 0, 0, 0]
        return jnp.broadcast_to(reward[:, None], (reward.shape[0], trial_keys.shape[0])), ll_of(deltas)

    settings = attack.CMAESSettings(population_size=8, generations=30, sigma=0.3, penalty=0.0,
                                    constraint="repair", tolerance=0.01)
    state, history, mean = attack.run_cmaes(jax.random.key(1), evaluate, template, settings, 2, 0.0,
                                            ll_of=ll_of)
    assert np.all(history["feasible_fraction"] == 1.0)
    assert np.all(history["repair_scale"] <= 1.0) and np.any(history["repair_scale"] < 1.0)
    assert float(state.best_ll) >= -0.01
    np.testing.assert_allclose(float(state.best_delta.w[0, 0, 0]), -0.6, atol=0.02)  # √0.01 past −0.5
    assert float(ll_of(jax.tree.map(lambda z: z[None], mean))[0]) >= -0.01
    with pytest.raises(ValueError, match="ll_of"):
        attack.make_cmaes_attack(evaluate, template, settings, 2, 0.0)


@pytest.mark.unit
def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="cmaes.sigmaa"):
        from_dict(attack.AttackConfig, {"env": "cartpole_balance", "cmaes": {"sigmaa": 0.1}})
    with pytest.raises(ConfigError, match="cmaes.generations"):
        from_dict(attack.AttackConfig, {"env": "cartpole_balance", "cmaes": {"generations": "ten"}})
    with pytest.raises(ConfigError, match="population_size"):
        from_dict(attack.AttackConfig, {"env": "cartpole_balance", "cmaes": {"population_size": 2}})
    with pytest.raises(ConfigError, match="env"):
        from_dict(attack.AttackConfig, {"env": "nope"})
    with pytest.raises(ConfigError, match="num_elites"):
        from_dict(attack.AttackConfig, {"env": "cartpole_balance", "cem": {"num_elites": 1}})


@pytest.mark.unit
@pytest.mark.parametrize("name", ["attack_quick", "attack_cartpole", "attack_swingup", "attack_cpu",
                                  "attack_cpu_pets_member"])
def test_shipped_configs_load(name):
    config = load_toml(attack.AttackConfig, f"sweeps/{name}.toml")
    assert config.cmaes.generations >= 1


@pytest.mark.slow  # end to end: compiles a trainer, CEM episodes and plots
def test_run_attack_end_to_end(tmp_path):
    config = attack.AttackConfig(
        env="cartpole_balance", seed=1, out_dir=str(tmp_path / "out"),
        model=dataclasses.replace(common.STUDY_MODEL, hidden_size=8, num_hidden_layers=1),
        data=common.DataSettings(kind="sampled", sampled_size=200, cache_dir=str(tmp_path / "data")),
        training=TrainingSection(num_epochs=2, batch_size=32),
        cem=CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1),
        evaluation=attack.AttackEvaluation(trials=1, episode_length=10, final_rounds=1),
        cmaes=attack.CMAESSettings(population_size=4, generations=2, sigma=0.01))
    report = attack.run_attack(config, log=lambda s: None)
    out = tmp_path / "out"
    for name in ("attack.json", "attack_convergence.png", "original_model/model.json", "attacked_model/model.json"):
        assert (out / name).is_file()
    saved = json.loads((out / "attack.json").read_text())
    assert len(saved["convergence"]["best_fitness"]) == 2
    assert saved["search_best"]["fitness"] <= saved["convergence"]["gen_best_fitness"][0]
    cfg, params, norm = load_model(out / "original_model")
    assert cfg.hidden_size == 8
    assert np.isfinite(report["ll_original"]) and len(report["reward_attacked"]["trials"]) == 1
    assert saved["base_reward"] == saved["reward_original"]["mean"] and saved["fresh_trials"] == 1
    assert saved["attacked_ll"] == saved["ll_attacked"] and saved["ll_tolerance"] == 0.0
    assert saved["target_met"] == (saved["attacked_reward"] <= 0.7 * saved["base_reward"]
                                   and saved["attacked_ll"] >= saved["base_ll"])


def test_model_settings_feed_winding_angles_as_sin_cos():
    class SwingUpDims:  # the dimensions of cartpole_swingup, whose θ (obs 1) winds freely
        obs_dim, action_dim, angle_obs_dims = 4, 1, (1,)

    assert common.STUDY_MODEL.for_env(SwingUpDims).angle_dims == (1,)
    assert dataclasses.replace(common.STUDY_MODEL, angle_features=False).for_env(SwingUpDims).angle_dims == ()
    assert common.STUDY_MODEL.for_env(make("cartpole_balance")).angle_dims == ()
    assert from_dict(attack.AttackConfig, {"env": "cartpole_balance"}).model == common.STUDY_MODEL
    with pytest.raises(ConfigError, match="model: .*ensemble_size must be 1"):
        from_dict(attack.AttackConfig, {"env": "cartpole_balance", "model": {"kind": "P", "ensemble_size": 3}})


def test_planned_actions_along_a_path_equal_a_loop_and_the_best_trial_is_the_path():
    from mismatch_jax.experiments.attack_paths import compare_planned_paths, expert_path, planned_actions

    env = make("cartpole_balance")
    cfg, params, norm = _tiny_model()
    cem = CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1).for_env(env)
    planner = make_planner(cem, cfg, env.reward_fn, env.termination_fn)
    path_obs = jax.random.normal(jax.random.key(4), (6, 4)) * 0.05
    key = jax.random.key(9)
    scanned = planned_actions(key, planner, params, norm, path_obs)
    plan, looped = planner.initial_plan, []
    for k, obs in zip(jax.random.split(key, 6), path_obs):
        action, plan = planner(k, params, norm, obs, plan)
        looped.append(action)
    np.testing.assert_allclose(scanned, np.stack(looped), rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(0)
    runs = {"trial_rewards": np.array([[1.0, 5.0, 3.0]]), "obs": rng.normal(size=(1, 3, 6, 4)),
            "action": rng.normal(size=(1, 3, 6, 1)), "reward": rng.normal(size=(1, 3, 6)),
            "alive": np.array([[[True] * 6, [True] * 4 + [False] * 2, [True] * 6]])}
    path = expert_path(runs)
    assert path["seed_trial"] == [0, 1] and path["obs"].shape == (4, 4) and path["return"] == 5.0
    _, other, _ = _tiny_model(key=1)
    content = compare_planned_paths(key, planner, {"a": (params, norm), "b": (other, norm)}, path)
    assert np.asarray(content["planned"]["a"]).shape == (4, 1)
    gap = np.abs(np.asarray(content["planned"]["a"]) - np.asarray(content["planned"]["b"])).sum(-1)
    assert content["largest_gap_step"] == int(np.argmax(gap))


def test_pets_member_is_one_member_of_the_final_pets_model(monkeypatch):
    from mismatch_jax.sweep import study_data

    env = make("cartpole_swingup")
    data = common.DataSettings(kind="on_policy")
    pets_config = dataclasses.replace(data.pets, env="cartpole_swingup").model_config(env)
    ensemble = models.init(jax.random.key(4), pets_config)
    norm = models.identity_normalizer(pets_config)
    with_seed_axis = jax.tree.map(lambda a: a[None], (ensemble, norm))
    monkeypatch.setattr(attack, "pets_runs_of", lambda *a, **k: {})
    monkeypatch.setattr(study_data, "pets_models", lambda request, env, runs: with_seed_axis)
    cfg, member, member_norm = attack.pets_member_model(data, "cartpole_swingup", 0, env, member=2)
    assert cfg.kind == "P" and cfg.ensemble_size == 1 and cfg.hidden_size == pets_config.hidden_size
    obs, action = jnp.ones((3, env.obs_dim)) * 0.1, jnp.ones((3, env.action_dim)) * 0.5
    mean_all, var_all = models.predict(pets_config, ensemble, norm, obs, action)
    mean_one, var_one = models.predict(cfg, member, member_norm, obs, action)
    np.testing.assert_allclose(mean_one[0], mean_all[2], rtol=1e-6)
    np.testing.assert_allclose(var_one[0], var_all[2], rtol=1e-6)
    with pytest.raises(ValueError, match="pets_member = 9"):
        attack.pets_member_model(data, "cartpole_swingup", 0, env, member=9)


def test_convergence_plot_marks_infeasible_generation_bests(tmp_path):
    import matplotlib.pyplot as plt

    from mismatch_jax.analysis.attack import INFEASIBLE_LABEL, draw_convergence, infeasible_generations, plot_convergence

    history = {"gen_best_reward": [170.0, 90.0, 150.0], "gen_best_fitness": [170.0, 95.0, 150.0],
               "best_fitness": [170.0, 95.0, 95.0], "gen_best_ll": [19.95, 19.90, 19.915]}
    # LL₀ 19.964, tolerance 0.05: the edge is 19.914, so generation 2 (19.90) is outside it.
    assert infeasible_generations(history, 19.964, 0.05).tolist() == [False, True, False]
    fig = draw_convergence(history, 19.964, 179.2, 179.1, 19.915, 0.05)
    left, right = fig.axes[:2]
    assert INFEASIBLE_LABEL in left.get_legend_handles_labels()[1]
    assert INFEASIBLE_LABEL in right.get_legend_handles_labels()[1]
    marked = [c for c in right.collections if c.get_label() == INFEASIBLE_LABEL]
    np.testing.assert_allclose(marked[0].get_offsets(), [[19.90, 90.0]])
    feasible = [c for c in right.collections if c.get_label() == "generation best (feasible)"]
    assert len(feasible[0].get_offsets()) == 2
    plt.close(fig)
    fig = draw_convergence(history, 19.964, 179.2, 179.1, 19.915, 0.1)  # all within a wider tolerance
    assert INFEASIBLE_LABEL not in fig.axes[1].get_legend_handles_labels()[1]
    plt.close(fig)
    assert plot_convergence(history, 19.964, 179.2, 179.1, 19.915, tmp_path / "c.png", 0.05).is_file()


def test_random_baseline_directions_cost_the_attacks_ll_change():
    cfg, params, norm = _tiny_model(kind="D")
    rng = np.random.default_rng(1)
    validation = tuple(jnp.asarray(rng.normal(size=(64, n)) * s, jnp.float32) for n, s in ((4, 0.1), (1, 1.0), (4, 0.1)))
    ll_of = jax.jit(jax.vmap(attack.make_candidate_ll(cfg, params, norm, validation)))
    template = attack.zero_delta(params)
    ll0 = float(ll_of(jax.tree.map(lambda a: a[None], template))[0])
    target = ll0 - 0.01
    points, scales, matched = attack.matched_random_points(jax.random.key(2), template, ll_of, target, ll0, 3, 1e-3)
    lls = np.asarray(ll_of(points))
    assert matched == "ll_change" and np.all(lls >= target - 1e-5) and np.allclose(lls, target, atol=1e-4)
    norms = np.asarray(jax.vmap(attack.point_norm)(points))
    np.testing.assert_allclose(norms, np.asarray(scales), rtol=1e-5)
    first = np.asarray(points.w[0]).ravel() / norms[0]
    assert abs(first @ (np.asarray(points.w[1]).ravel() / norms[1])) < 0.9  # different directions
    # An attack that lost no LL: the baseline is the attack's size in the search space instead.
    same, scales, matched = attack.matched_random_points(jax.random.key(2), template, ll_of, ll0, ll0, 3, 0.02)
    assert matched == "norm"
    np.testing.assert_allclose(np.asarray(jax.vmap(attack.point_norm)(same)), 0.02, rtol=1e-5)


def test_planned_path_baselines_use_the_same_keys_and_report_their_gap(tmp_path):
    from mismatch_jax.analysis.attack import plot_planned_paths
    from mismatch_jax.experiments.attack_paths import compare_planned_paths

    env = make("cartpole_balance")
    cfg, params, norm = _tiny_model()
    _, other, _ = _tiny_model(key=1)
    cem = CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1).for_env(env)
    planner = make_planner(cem, cfg, env.reward_fn, env.termination_fn)
    rng = np.random.default_rng(0)
    path = {"obs": np.asarray(rng.normal(size=(5, 4)) * 0.05, np.float32), "action": rng.normal(size=(5, 1)),
            "return": 1.0, "seed_trial": [0, 0]}
    key = jax.random.key(9)
    content = compare_planned_paths(key, planner, {"original": (params, norm), "attacked": (other, norm)}, path,
                                    baselines={"same": (params, norm), "other": (other, norm)})
    baseline = content["random_baseline"]
    assert baseline["names"] == ["same", "other"] and baseline["mean_abs_gap"][0] == 0.0
    assert baseline["mean_abs_gap"][1] == pytest.approx(content["mean_abs_gap"], rel=1e-6)  # same keys, same model
    assert baseline["mean_abs_gap_mean"] == pytest.approx(content["mean_abs_gap"] / 2, rel=1e-6)
    assert "random_baseline" not in compare_planned_paths(key, planner, {"original": (params, norm)}, path)
    plot_planned_paths(content, tmp_path / "paths.png")
    assert (tmp_path / "paths.png").is_file()
