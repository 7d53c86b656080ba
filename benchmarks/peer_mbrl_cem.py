"""Peer benchmark: mbrl-lib 0.2 CEM planning (TrajectoryOptimizerAgent + CEMOptimizer on a
GaussianMLP ensemble in OneDTransitionRewardModel/ModelEnv), one model at a time, on CPU.

Run with the peer interpreter: $PEER_PYTHON (see setup_peer_venv.sh) benchmarks/peer_mbrl_cem.py --setting small
Prints one JSON line: seconds per planning call (first call discarded) and calls per second.
"""

import argparse
import json
import time

import types

import numpy as np
import omegaconf
import torch

import mbrl.models
import mbrl.planning

SETTINGS = {
    # name: (hidden, layers, ensemble, horizon, population, elites, iterations)
    "small": (64, 3, 5, 15, 100, 10, 3),
    "paper": (200, 4, 5, 30, 500, 50, 5),
}
OBS_DIM, ACT_DIM = 4, 1


def reward_fn(action, next_obs):
    # Cart-pole swing-up reward on the pole tip (same arithmetic as our env's reward_fn).
    x, theta = next_obs[:, :1], next_obs[:, 1:2]
    tip_x, tip_y = x - 0.6 * torch.sin(theta), -0.6 * torch.cos(theta)
    dist2 = tip_x**2 + (tip_y - 0.6) ** 2
    return torch.exp(-dist2 / 0.36) - 0.01 * (action**2).sum(-1, keepdim=True)


def termination_fn(action, next_obs):
    return torch.zeros(next_obs.shape[0], 1, dtype=torch.bool)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, layers, ensemble, horizon, population, elites, iterations = SETTINGS[args.setting]
    torch.manual_seed(0)
    model = mbrl.models.GaussianMLP(
        in_size=OBS_DIM + ACT_DIM, out_size=OBS_DIM, device="cpu", num_layers=layers,
        ensemble_size=ensemble, hid_size=hidden, deterministic=False,
        propagation_method="expectation", activation_fn_cfg={"_target_": "torch.nn.SiLU"})
    dynamics = mbrl.models.OneDTransitionRewardModel(
        model, target_is_delta=True, normalize=True, learned_rewards=False)
    data = np.random.default_rng(0).normal(size=(256, OBS_DIM + ACT_DIM)).astype(np.float32)
    dynamics.input_normalizer.update_stats(data)
    # ModelEnv reads only observation_space / action_space from the env.
    env = types.SimpleNamespace(
        observation_space=types.SimpleNamespace(shape=(OBS_DIM,)),
        action_space=types.SimpleNamespace(shape=(ACT_DIM,), low=np.full(ACT_DIM, -3.0), high=np.full(ACT_DIM, 3.0)))
    model_env = mbrl.models.ModelEnv(env, dynamics, termination_fn, reward_fn,
                                     generator=torch.Generator().manual_seed(0))
    optimizer_cfg = omegaconf.OmegaConf.create({
        "_target_": "mbrl.planning.CEMOptimizer", "num_iterations": iterations,
        "elite_ratio": elites / population, "population_size": population, "alpha": 0.1,
        "lower_bound": None, "upper_bound": None, "return_mean_elites": True,
        "device": "cpu", "clipped_normal": False,
    })
    agent = mbrl.planning.TrajectoryOptimizerAgent(
        optimizer_cfg, action_lb=[-3.0], action_ub=[3.0], planning_horizon=horizon, replan_freq=1)
    agent.set_trajectory_eval_fn(
        lambda obs, seqs: model_env.evaluate_action_sequences(seqs, initial_state=obs, num_particles=1))
    obs = np.zeros(OBS_DIM, np.float32)
    agent.act(obs)  # discarded warm-up
    times = []
    for _ in range(args.calls):
        t = time.perf_counter()
        agent.act(obs)
        times.append(time.perf_counter() - t)
    per_call = float(np.median(times))
    best = float(np.min(times))
    print(json.dumps({
        "peer": "mbrl-lib 0.2.0 TrajectoryOptimizerAgent/CEMOptimizer", "setting": args.setting,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
        "propagation": "expectation", "s_per_call": per_call, "calls_per_s": 1.0 / per_call,
        "min_s_per_call": best,
        "times": times,
    }))


if __name__ == "__main__":
    main()
