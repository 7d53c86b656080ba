"""Population-training benchmark: throughput, layout, FLOP/s fraction, sharding.

    python benchmarks/bench_train.py                        # default grid (a few minutes on 2 cores)
    python benchmarks/bench_train.py --full                 # N 1..1024 × hidden 32, 64, 200
    python benchmarks/bench_train.py --host-devices 2 --num-models 64   # population sharded on 2 devices

Prints one JSON object:

* ``gemm``: fp32 FLOP/s of a large ``jnp.dot`` measured in this run (the machine's reference).
* ``throughput``: for each (hidden, N): compile seconds (apart), run seconds of the full trainer
  (minibatch updates + per-epoch validation; first run discarded), model-epochs/s, model-steps/s,
  and achieved FLOP/s (training 3× forward per example + validation forward) as a GEMM fraction.
* ``layout``: the isolated training step (forward, backward, Adam; fixed batch, S steps in a
  ``fori_loop``) with the population vmapped over models vs stacked into one ensemble axis
  (E' = N·E, one einsum per layer); time ratio and the step's GEMM fraction.
* ``sharding`` (``--host-devices 2``): the trainer with the population axis sharded by a
  ``NamedSharding`` over the host devices vs all on device 0.

The comparison with the PyTorch peer (mbrl-lib) is benchmarks/compare_peer.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def parse_args():
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", default="32,200", help="comma-separated hidden sizes")
    p.add_argument("--num-models", default="1,8,64,256", help="comma-separated population sizes N")
    p.add_argument("--full", action="store_true", help="hidden 32,64,200 × N 1,8,64,256,1024")
    p.add_argument("--kind", default="P", choices=["P", "PE", "D", "DE"])
    p.add_argument("--ensemble-size", type=int, default=1)
    p.add_argument("--layers", type=int, default=4, help="hidden layers")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rows", type=int, default=2048, help="transitions per dataset (capacity T)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the discarded one (min)")
    p.add_argument("--layout-steps", type=int, default=10)
    p.add_argument("--no-layout", action="store_true", help="skip the vmap vs batched-matmul study")
    p.add_argument("--host-devices", type=int, default=1,
                   help=">1: XLA host devices; also time the population sharded over them")
    p.add_argument("--gemm-size", type=int, default=2048)
    return p.parse_args()


ARGS = parse_args()
if ARGS.host_devices > 1:  # must precede the jax import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={ARGS.host_devices}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import ACT_DIM, OBS_DIM, linear_system  # noqa: E402
from mismatch_jax.data import TransitionData  # noqa: E402
from mismatch_jax.models import core as models  # noqa: E402
from mismatch_jax.train import population as pop  # noqa: E402

def block(tree):
    """Wait for every array of ``tree``."""
    return jax.block_until_ready(tree)


def time_call(fn, repeats):
    """Discard the first call, return the min of ``repeats`` timed calls (seconds)."""
    block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_flops(size):
    """FLOP/s of a ``size``² float32 ``jnp.dot`` (min time of 3 calls after a discarded one)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = time_call(lambda: dot(a, b), 3)
    return {"size": size, "seconds": seconds, "flops_per_s": 2 * size**3 / seconds}


def model_config(hidden):
    """The benchmarked model: ``--kind``, ``--layers`` × ``hidden``."""
    return models.ModelConfig(ARGS.kind, OBS_DIM, ACT_DIM, hidden_size=hidden,
                              num_hidden_layers=ARGS.layers, ensemble_size=ARGS.ensemble_size)


# ---------------------------------------------------------------------- full trainer -------


def bench_trainer(hidden, num_models, data, sharding=None):
    """Compile and run seconds, throughput and FLOP/s of the full trainer at one size."""
    mcfg = model_config(hidden)
    cfg = pop.TrainConfig(model=mcfg, num_epochs=ARGS.epochs, batch_size=ARGS.batch_size)
    keys = pop.model_keys(jax.random.key(0), 0, num_models)
    hp = pop.TrainHParams.population(num_models)
    ds = jnp.zeros(num_models, jnp.int32)
    if sharding is not None:
        keys, hp, ds = jax.device_put((keys, hp, ds), sharding)
    start = time.perf_counter()
    compiled = jax.jit(pop.make_train_fn(cfg)).lower(keys, None, data, hp, ds).compile()
    compile_s = time.perf_counter() - start
    run_s = time_call(lambda: compiled(keys, None, data, hp, ds), ARGS.repeats)
    result = compiled(keys, None, data, hp, ds)

    n_train = int(np.asarray(data.train_mask).sum())
    n_val = int(np.asarray(data.val_mask).sum())
    steps = math.ceil(n_train / ARGS.batch_size)
    eval_rows = math.ceil(n_val / ARGS.batch_size) * ARGS.batch_size  # chunks actually run
    fwd = mcfg.flops_per_example()
    flops = num_models * ARGS.epochs * (3 * fwd * ARGS.batch_size * steps + fwd * eval_rows)
    return {
        "hidden": hidden, "num_models": num_models, "compile_s": compile_s, "run_s": run_s,
        "steps_per_epoch": steps,
        "model_epochs_per_s": num_models * ARGS.epochs / run_s,
        "model_steps_per_s": num_models * ARGS.epochs * steps / run_s,
        "flops_per_s": flops / run_s,
        "final_val_mse_mean": float(np.mean(np.asarray(result.metrics.val_mse)[:, -1])),
    }


# ---------------------------------------------------------- layout: vmap vs one einsum -----


def bench_layout(hidden, num_models, gemm):
    """Isolated train step, S steps in a fori_loop: vmap over models vs stacked ensemble axis."""
    mcfg = model_config(hidden)
    cfg = pop.TrainConfig(model=mcfg, batch_size=ARGS.batch_size)
    n, e, b = num_models, mcfg.ensemble_size, ARGS.batch_size
    keys = pop.model_keys(jax.random.key(0), 0, n)
    params = jax.vmap(lambda k: models.init(k, mcfg))(keys)
    x = jax.random.normal(jax.random.key(1), (n, b, mcfg.input_dim))
    y = jax.random.normal(jax.random.key(2), (n, b, mcfg.target_dim))
    lr = jnp.full(n, 1e-3)
    wd = jnp.full(n, 5e-5)
    norm = models.identity_normalizer(mcfg)
    opt_init = jax.vmap(lambda p, l, w: pop.make_optimizer(cfg, l, w).init(p))
    opt_update = jax.vmap(lambda g, s, p, l, w: pop.make_optimizer(cfg, l, w).update(g, s, p))

    def per_model_grads(params):
        loss = lambda p, xx, yy: models.model_loss(mcfg, p, norm, xx, yy, None, cfg.logvar_bound_coef)
        return jax.vmap(jax.value_and_grad(loss))(params, x, y)

    act = models._ACTIVATIONS[mcfg.activation]

    def stacked_loss(params):
        """All N·E members as one ensemble: one batched matmul per layer for the population."""
        h = jnp.broadcast_to(x[:, None], (n, e, b, mcfg.input_dim)).reshape(n * e, b, mcfg.input_dim)
        for i, (w, bias) in enumerate(params.layers):
            w = w.reshape((n * e,) + w.shape[2:])
            h = jnp.einsum("ebi,eio->ebo", h, w) + bias.reshape(n * e, 1, -1)
            if i < len(params.layers) - 1:
                h = act(h)
        h = h.reshape(n, e, b, -1)
        yy = jnp.broadcast_to(y[:, None], (n, e, b, mcfg.target_dim))
        if mcfg.probabilistic:
            mean, logvar = jnp.split(h, 2, axis=-1)
            hi = params.max_logvar[:, None, None, :]
            lo = params.min_logvar[:, None, None, :]
            logvar = hi - jax.nn.softplus(hi - logvar)
            logvar = lo + jax.nn.softplus(logvar - lo)
            per = jnp.mean((mean - yy) ** 2 * jnp.exp(-logvar) + logvar, axis=-1)
            bound = cfg.logvar_bound_coef * (params.max_logvar.sum() - params.min_logvar.sum())
        else:
            per = jnp.mean((h - yy) ** 2, axis=-1)
            bound = 0.0
        return per.mean(-1).sum() + bound  # independent models: the sum's gradient is per model

    def stacked_grads(params):
        return jax.value_and_grad(stacked_loss)(params)

    def make_loop(grads_fn):
        def loop(params, opt_state):
            def body(_, carry):
                p, s = carry
                _, g = grads_fn(p)
                u, s = opt_update(g, s, p, lr, wd)
                return optax.apply_updates(p, u), s
            return jax.lax.fori_loop(0, ARGS.layout_steps, body, (params, opt_state))
        return jax.jit(loop)

    opt_state = opt_init(params, lr, wd)
    out = {"hidden": hidden, "num_models": num_models, "steps": ARGS.layout_steps}
    step_flops = 3 * mcfg.flops_per_example() * b * n
    for name, fn in (("vmap", per_model_grads), ("stacked_einsum", stacked_grads)):
        loop = make_loop(fn)
        start = time.perf_counter()
        compiled = loop.lower(params, opt_state).compile()
        compile_s = time.perf_counter() - start
        seconds = time_call(lambda: compiled(params, opt_state), ARGS.repeats) / ARGS.layout_steps
        out[name] = {"compile_s": compile_s, "step_s": seconds,
                     "model_steps_per_s": n / seconds,
                     "gemm_fraction": step_flops / seconds / gemm["flops_per_s"]}
    # Same numbers? (sum of independent losses ⇒ identical per-model gradients)
    _, g1 = per_model_grads(params)
    _, g2 = stacked_grads(params)
    out["max_grad_abs_diff"] = float(max(jnp.max(jnp.abs(a - c)) for a, c in
                                         zip(jax.tree.leaves(g1), jax.tree.leaves(g2))))
    out["stacked_over_vmap_time_ratio"] = out["stacked_einsum"]["step_s"] / out["vmap"]["step_s"]
    return out


def main():
    """Run the selected studies and print one JSON object."""
    hiddens = [32, 64, 200] if ARGS.full else [int(h) for h in ARGS.hidden.split(",")]
    ns = [1, 8, 64, 256, 1024] if ARGS.full else [int(v) for v in ARGS.num_models.split(",")]
    if ARGS.kind in ("P", "D") and ARGS.ensemble_size != 1:
        raise SystemExit("--ensemble-size must be 1 for kinds P/D")
    dev = jax.devices()[0]
    report = {
        "benchmark": "mismatch_jax.train population training",
        "platform": dev.platform, "device_kind": dev.device_kind, "num_devices": len(jax.devices()),
        "jax": jax.__version__, "cpu_count": os.cpu_count(),
        "config": vars(ARGS),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    gemm = gemm_flops(ARGS.gemm_size)
    report["gemm"] = gemm
    obs, act, nxt = linear_system(ARGS.rows)
    data = TransitionData.from_arrays(jax.random.key(42), obs, act, nxt, validation_fraction=0.1)

    report["throughput"] = []
    for hidden in hiddens:
        for n in ns:
            row = bench_trainer(hidden, n, data)
            row["gemm_fraction"] = row["flops_per_s"] / gemm["flops_per_s"]
            report["throughput"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    if not ARGS.no_layout:
        report["layout"] = []
        for hidden in hiddens:
            for n in ns:
                if n >= 8:
                    report["layout"].append(bench_layout(hidden, n, gemm))
                    print(json.dumps(report["layout"][-1]), file=sys.stderr, flush=True)

    if ARGS.host_devices > 1:
        devices = jax.devices()
        mesh = Mesh(np.asarray(devices), ("population",))
        sharded = NamedSharding(mesh, PartitionSpec("population"))
        report["sharding"] = []
        for hidden in hiddens:
            for n in ns:
                if n % len(devices):
                    continue
                one = bench_trainer(hidden, n, data)
                many = bench_trainer(hidden, n, data, sharding=sharded)
                report["sharding"].append({
                    "hidden": hidden, "num_models": n, "devices": len(devices),
                    "single_device_run_s": one["run_s"], "sharded_run_s": many["run_s"],
                    "speedup": one["run_s"] / many["run_s"],
                })
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
