"""PyTorch peer of bench_train.py: mbrl-lib's own GaussianMLP trained with its ModelTrainer.

Run with the peer environment (torch + mbrl==0.2.0):

    $PEER_PYTHON (see setup_peer_venv.sh) benchmarks/peer_mbrl_train.py --hidden 200 --num-models 4

The N models of the population are trained one after another (the only way mbrl-lib trains
several models), each a ``OneDTransitionRewardModel(GaussianMLP)`` with SiLU activations, learned
log-variance bounds and input normalisation, on the same synthetic linear system and split as the
JAX benchmark, for the same epochs and batch size, with per-epoch validation. Because the models
are sequential the rate does not depend on N, so ``--num-models`` is how many are *timed*; the
first model is a warm-up and is not timed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch

import mbrl.models
import mbrl.util.common
import mbrl.util.replay_buffer


def linear_system(rows: int, obs_dim: int, act_dim: int, seed: int):
    """The synthetic data of bench_train.py: s' = s + A s + B a (+ small noise)."""
    rng = np.random.default_rng(seed)
    a_mat = rng.normal(size=(obs_dim, obs_dim)).astype(np.float32) * 0.3
    b_mat = rng.normal(size=(act_dim, obs_dim)).astype(np.float32) * 0.3
    obs = rng.normal(size=(rows, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(rows, act_dim)).astype(np.float32)
    nxt = obs + obs @ a_mat + act @ b_mat + 0.01 * rng.normal(size=(rows, obs_dim)).astype(np.float32)
    return obs, act, nxt


def build(args, obs, act, nxt, seed):
    torch.manual_seed(seed)
    obs_dim, act_dim = obs.shape[1], act.shape[1]
    net = mbrl.models.GaussianMLP(
        in_size=obs_dim + act_dim, out_size=obs_dim, device="cpu",
        num_layers=args.layers, ensemble_size=args.ensemble_size, hid_size=args.hidden,
        deterministic=False, learn_logvar_bounds=True,
        activation_fn_cfg={"_target_": "torch.nn.SiLU"},
    )
    model = mbrl.models.OneDTransitionRewardModel(net, target_is_delta=True, normalize=True,
                                                 learned_rewards=False)
    buffer = mbrl.util.replay_buffer.ReplayBuffer(len(obs), (obs_dim,), (act_dim,),
                                                  rng=np.random.default_rng(seed))
    zeros = np.zeros(len(obs), np.float32)
    buffer.add_batch(obs, act, nxt, zeros, zeros.astype(bool), zeros.astype(bool))
    model.update_normalizer(buffer.get_all())
    train_it, val_it = mbrl.util.common.get_basic_buffer_iterators(
        buffer, args.batch_size, args.validation_fraction, ensemble_size=args.ensemble_size,
        bootstrap_permutes=False)
    trainer = mbrl.models.ModelTrainer(model, optim_lr=1e-3, weight_decay=5e-5)
    return trainer, train_it, val_it


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=4, help="hidden layers (mbrl num_layers)")
    parser.add_argument("--ensemble-size", type=int, default=1)
    parser.add_argument("--num-models", type=int, default=3, help="models timed (after 1 warm-up)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--obs-dim", type=int, default=4)
    parser.add_argument("--act-dim", type=int, default=1)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    obs, act, nxt = linear_system(args.rows, args.obs_dim, args.act_dim, seed=0)
    num_train = args.rows - int(args.rows * args.validation_fraction)
    steps_per_epoch = math.ceil(num_train / args.batch_size)

    times, val_scores = [], []
    for i in range(args.num_models + 1):  # model 0 is the warm-up
        trainer, train_it, val_it = build(args, obs, act, nxt, seed=i)
        start = time.perf_counter()
        _, val = trainer.train(train_it, val_it, num_epochs=args.epochs, patience=None, silent=True)
        elapsed = time.perf_counter() - start
        if i > 0:
            times.append(elapsed)
            val_scores.append(val[-1])
    per_model = float(np.mean(times))
    print(json.dumps({
        "peer": "mbrl-lib 0.2.0 GaussianMLP + ModelTrainer (PyTorch)",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "hidden": args.hidden, "layers": args.layers, "ensemble_size": args.ensemble_size,
        "batch_size": args.batch_size, "rows": args.rows, "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch, "models_timed": args.num_models,
        "seconds_per_model": per_model,
        "model_epochs_per_s": args.epochs / per_model,
        "model_steps_per_s": args.epochs * steps_per_epoch / per_model,
        "final_val_mse_normalised_mean": float(np.mean(val_scores)),
    }))


if __name__ == "__main__":
    main()
