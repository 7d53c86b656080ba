"""The PyTorch peer of benchmarks/compare_peer.py: a persistent mbrl-lib 0.2.0 worker.

Run with the peer interpreter (benchmarks/setup_peer_venv.sh); compare_peer.py starts it once per
question and talks to it in JSON lines (one request per stdin line, one reply per stdout line;
anything the libraries print goes to stderr):

    {"cmd": "setup", "question": "train", "hidden": 200, "layers": 4, "num_models": 64, ...}
    {"cmd": "run", "variant": "batched" | "sequential" | "cem", "rep": 0}
    {"cmd": "gemm", "size": 2048, "reps": 3}
    {"cmd": "quit"}

``peer_mbrl.py --threads 1`` is a one-thread worker (``torch.set_num_threads(1)`` before any work):
compare_peer.py runs P of them at once, each on its share of the work (setup's ``worker`` index
gives each its own seeds / start state), and times them by the ``t_start`` / ``t_end`` stamps
(``time.monotonic``, one clock for all processes of the machine) every ``run`` reply carries, with
the worker's ``pid`` and ``torch_threads``. ``gemm`` answers the GFLOP/s of ``reps`` timed
``size``² float32 ``torch.mm`` calls (the peer's physical reference beside our ``jnp.dot``).

The first reply (unrequested) is ``{"ready": true, "import_s": …}``: the import of torch and mbrl.
``setup`` builds the data / model and runs one discarded warm-up of every variant (its seconds are
returned apart). Each ``run`` is one timed repetition, ``{"ok": true, "seconds": …}``; errors
reply ``{"ok": false, "error": traceback}`` and the worker keeps serving.

Questions (each at the peer's best configuration):

* ``train``: mbrl-lib's ``GaussianMLP`` (SiLU, learned log-variance bounds, input normalisation
  through ``OneDTransitionRewardModel``) fitted by its ``ModelTrainer`` (Adam, per-epoch
  validation, best-weights tracking) on the synthetic linear system of bench_common.py with the
  same split, epochs and minibatches (the last one partial, as mbrl-lib's iterator yields it).
  ``batched``: the N models of one config as ONE ``GaussianMLP(ensemble_size=N)`` trained once
  (each member on its own permutation of the rows: ``bootstrap_permutes=True``). ``sequential``:
  N independent models (own data or hyper-parameters) trained one after another; the rate does
  not depend on N, so ``seq_models`` of them are timed per repetition. Model construction and
  the normaliser fit come first and are not timed; the ``trainer.train`` calls are.
* ``cem``: ``TrajectoryOptimizerAgent`` + ``CEMOptimizer`` on a ``GaussianMLP`` ensemble in a
  ``ModelEnv``; a repetition is one ``agent.act`` (one planning call), propagation
  ``expectation`` or ``fixed_model`` (TS∞) with the setting's particles.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
import types

_start = time.perf_counter()
import numpy as np  # noqa: E402
import omegaconf  # noqa: E402
import torch  # noqa: E402

import mbrl.models  # noqa: E402
import mbrl.planning  # noqa: E402
import mbrl.util.common  # noqa: E402
import mbrl.util.replay_buffer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (ACTION_BOUND, linear_system, split_sizes, steps_per_epoch,  # noqa: E402
                          train_model_steps)

IMPORT_S = time.perf_counter() - _start


# ------------------------------------------------------------------------------ training -----


class TrainQuestion:
    """Population training: ``batched`` (one N-member ensemble) and ``sequential`` (E=1 models
    one after another) repetitions on the same data and minibatches as ours."""

    def __init__(self, spec):
        """Data and sizes from the setup request (hidden, layers, num_models, epochs, batch_size,
        rows, obs_dim, act_dim, validation_fraction, seq_models)."""
        self.spec = spec
        self.obs, self.act, self.nxt = linear_system(spec["rows"], spec["obs_dim"], spec["act_dim"], seed=0)
        num_train, _ = split_sizes(spec["rows"], spec["validation_fraction"])
        self.steps = steps_per_epoch(num_train, spec["batch_size"])

    def build(self, ensemble_size, seed):
        """A fresh ModelTrainer with its train / validation iterators (not timed)."""
        s = self.spec
        torch.manual_seed(seed)
        obs_dim, act_dim = self.obs.shape[1], self.act.shape[1]
        net = mbrl.models.GaussianMLP(
            in_size=obs_dim + act_dim, out_size=obs_dim, device="cpu",
            num_layers=s["layers"], ensemble_size=ensemble_size, hid_size=s["hidden"],
            deterministic=False, learn_logvar_bounds=True,
            activation_fn_cfg={"_target_": "torch.nn.SiLU"},
        )
        model = mbrl.models.OneDTransitionRewardModel(net, target_is_delta=True, normalize=True,
                                                     learned_rewards=False)
        buffer = mbrl.util.replay_buffer.ReplayBuffer(len(self.obs), (obs_dim,), (act_dim,),
                                                      rng=np.random.default_rng(seed))
        zeros = np.zeros(len(self.obs), np.float32)
        buffer.add_batch(self.obs, self.act, self.nxt, zeros, zeros.astype(bool), zeros.astype(bool))
        model.update_normalizer(buffer.get_all())
        train_it, val_it = mbrl.util.common.get_basic_buffer_iterators(
            buffer, s["batch_size"], s["validation_fraction"], ensemble_size=ensemble_size,
            bootstrap_permutes=True)
        trainer = mbrl.models.ModelTrainer(model, optim_lr=1e-3, weight_decay=5e-5)
        return trainer, train_it, val_it

    def run(self, variant, rep):
        """One repetition of ``batched`` (one ``num_models``-member ensemble) or ``sequential``
        (``seq_models`` E=1 models one after another): every trainer is built first (not timed),
        then the ``trainer.train`` calls run back to back between two time.monotonic stamps."""
        s = self.spec
        seed = 1000 + 100_000 * s.get("worker", 0) + 100 * rep  # each worker its own models
        if variant == "batched":
            built = [self.build(s["num_models"], seed)]
            models = s["num_models"]
        elif variant == "sequential":
            models = s["seq_models"]
            built = [self.build(1, seed + 50 + k) for k in range(models)]
        else:
            raise ValueError(f"train question has no variant {variant!r}")
        val = [float("nan")]  # a worker with no share of this variant
        t_start = time.monotonic()
        for trainer, train_it, val_it in built:
            _, val = trainer.train(train_it, val_it, num_epochs=s["epochs"], patience=None, silent=True)
        t_end = time.monotonic()
        model_steps = train_model_steps(models, s["epochs"], self.steps)
        return {"seconds": t_end - t_start, "t_start": t_start, "t_end": t_end, "models": models,
                "model_steps": model_steps, "model_steps_per_s": model_steps / (t_end - t_start),
                "final_val_score": float(val[-1])}

    def warm_up(self):
        """One discarded repetition of each variant; seconds of each."""
        out = {}
        for variant in ("batched", "sequential"):
            start = time.perf_counter()
            self.run(variant, rep=-1)
            out[variant] = time.perf_counter() - start
        return out


# ---------------------------------------------------------------------------------- CEM ------


def swingup_reward(action, next_obs):
    """Cart-pole swing-up reward on the pole tip (the arithmetic of compare_peer.swingup_reward)."""
    x, theta = next_obs[:, :1], next_obs[:, 1:2]
    tip_x, tip_y = x - 0.6 * torch.sin(theta), -0.6 * torch.cos(theta)
    dist2 = tip_x**2 + (tip_y - 0.6) ** 2
    return torch.exp(-dist2 / 0.36) - 0.01 * (action**2).sum(-1, keepdim=True)


def never_terminates(action, next_obs):
    """No termination (as ours: termination_fn None)."""
    return torch.zeros(next_obs.shape[0], 1, dtype=torch.bool)


class CEMQuestion:
    """One planning call of mbrl-lib's CEM agent per repetition."""

    def __init__(self, spec):
        """The agent for one CEM setting (bench_common.CEM_SETTINGS entry in ``spec``)."""
        s = self.spec = spec
        obs_dim, act_dim = spec["obs_dim"], spec["act_dim"]
        propagation = "expectation" if s["propagation"] == "expectation" else "fixed_model"
        if s["propagation"] not in ("expectation", "tsinf"):
            raise ValueError(f"peer CEM supports expectation and tsinf, not {s['propagation']!r}")
        torch.manual_seed(0)
        model = mbrl.models.GaussianMLP(
            in_size=obs_dim + act_dim, out_size=obs_dim, device="cpu", num_layers=s["layers"],
            ensemble_size=s["ensemble"], hid_size=s["hidden"], deterministic=False,
            propagation_method=propagation, activation_fn_cfg={"_target_": "torch.nn.SiLU"})
        dynamics = mbrl.models.OneDTransitionRewardModel(
            model, target_is_delta=True, normalize=True, learned_rewards=False)
        data = np.random.default_rng(0).normal(size=(256, obs_dim + act_dim)).astype(np.float32)
        dynamics.input_normalizer.update_stats(data)
        # ModelEnv reads only observation_space / action_space from the env.
        env = types.SimpleNamespace(
            observation_space=types.SimpleNamespace(shape=(obs_dim,)),
            action_space=types.SimpleNamespace(shape=(act_dim,), low=np.full(act_dim, -ACTION_BOUND),
                                               high=np.full(act_dim, ACTION_BOUND)))
        model_env = mbrl.models.ModelEnv(env, dynamics, never_terminates, swingup_reward,
                                         generator=torch.Generator().manual_seed(0))
        optimizer_cfg = omegaconf.OmegaConf.create({
            "_target_": "mbrl.planning.CEMOptimizer", "num_iterations": s["iterations"],
            "elite_ratio": s["elites"] / s["population"], "population_size": s["population"],
            "alpha": 0.1, "lower_bound": None, "upper_bound": None, "return_mean_elites": True,
            "device": "cpu", "clipped_normal": False,
        })
        self.agent = mbrl.planning.TrajectoryOptimizerAgent(
            optimizer_cfg, action_lb=[-ACTION_BOUND] * act_dim, action_ub=[ACTION_BOUND] * act_dim,
            planning_horizon=s["horizon"], replan_freq=1)
        particles = s["particles"]
        self.agent.set_trajectory_eval_fn(
            lambda obs, seqs: model_env.evaluate_action_sequences(seqs, initial_state=obs,
                                                                  num_particles=particles))
        # Worker 0 plans from the origin (as ours); the others of a start-state split from their
        # own nearby states (the cost of a call does not depend on the state).
        worker = s.get("worker", 0)
        self.obs = (np.random.default_rng(worker).normal(scale=0.1, size=obs_dim).astype(np.float32)
                    if worker else np.zeros(obs_dim, np.float32))

    def run(self, variant, rep):
        """Seconds of one ``agent.act`` (one planning call), with its time.monotonic stamps."""
        del rep
        if variant != "cem":
            raise ValueError(f"cem question has no variant {variant!r}")
        t_start = time.monotonic()
        self.agent.act(self.obs)
        t_end = time.monotonic()
        return {"seconds": t_end - t_start, "t_start": t_start, "t_end": t_end}

    def warm_up(self):
        """One discarded planning call."""
        start = time.perf_counter()
        self.agent.act(self.obs)
        return {"cem": time.perf_counter() - start}


QUESTIONS = {"train": TrainQuestion, "cem": CEMQuestion}


class TorchGemm:
    """The physical reference on the peer's side: GFLOP/s of a ``size``² float32 ``torch.mm``."""

    def __init__(self, size):
        """Two random ``size``² matrices and one discarded product."""
        gen = torch.Generator().manual_seed(0)
        self.size = size
        self.a = torch.randn(size, size, generator=gen)
        self.b = torch.randn(size, size, generator=gen)
        torch.mm(self.a, self.b)

    def rates(self, reps):
        """GFLOP/s of ``reps`` timed products."""
        out = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(self.a, self.b)
            out.append(2 * self.size**3 / (time.perf_counter() - start) / 1e9)
        return out


def serve(inp, out):
    """Answer JSON-line requests from ``inp`` on ``out`` until ``quit`` or end of input."""
    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True, "import_s": IMPORT_S, "torch": torch.__version__, "pid": os.getpid(),
           "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()})
    question, gemm = None, None
    for line in inp:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                reply({"ok": True, "bye": True})
                return
            if cmd == "setup":
                if req.get("threads"):
                    torch.set_num_threads(int(req["threads"]))
                start = time.perf_counter()
                question = QUESTIONS[req["question"]](req)
                build_s = time.perf_counter() - start
                warm = question.warm_up()
                reply({"ok": True, "build_s": build_s, "warmup_s": warm,
                       "torch_threads": torch.get_num_threads()})
            elif cmd == "gemm":
                if gemm is None or gemm.size != int(req.get("size", 2048)):
                    gemm = TorchGemm(int(req.get("size", 2048)))
                reply({"ok": True, "gflops": gemm.rates(int(req.get("reps", 3))),
                       "torch_threads": torch.get_num_threads(), "pid": os.getpid()})
            elif cmd == "run":
                if question is None:
                    raise RuntimeError("run before setup")
                reply({"ok": True, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                       **question.run(req["variant"], int(req.get("rep", 0)))})
            else:
                raise ValueError(f"unknown cmd {cmd!r}")
        except Exception:  # the worker keeps serving; the harness records the error
            reply({"ok": False, "error": traceback.format_exc()[-3000:]})


def main():
    """Serve on the real stdout; everything else the libraries print goes to stderr.
    ``--threads T`` (T ≥ 1) sets torch's intra-op threads before any work (a 1-thread worker)."""
    if "--threads" in sys.argv[1:-1]:
        threads = int(sys.argv[sys.argv.index("--threads") + 1])
        if threads > 0:
            torch.set_num_threads(threads)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    serve(sys.stdin, protocol)


if __name__ == "__main__":
    main()
