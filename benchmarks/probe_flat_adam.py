#!/usr/bin/env python
"""A/B: Adam on the parameter tree vs optax.flatten(Adam) (one buffer per model), interleaved."""
import sys, os, time, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax, jax.numpy as jnp, numpy as np, optax
from bench_common import linear_system, summarize
from mismatch_jax.data import TransitionData
from mismatch_jax.models import core as models
from mismatch_jax.train import TrainConfig, TrainHParams, make_train_fn, model_keys
from mismatch_jax.train import population as pop, config as tconf
from mismatch_jax.population import over_population, parse_layout

def flat_optimizer(config, learning_rate, weight_decay):
    adam = optax.flatten(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
    decay = optax.add_decayed_weights(weight_decay, mask=tconf._weight_decay_mask)
    return optax.chain(decay, adam, optax.scale(-learning_rate))

obs, act, nxt = linear_system(2048)
data = TransitionData.from_arrays(jax.random.key(42), obs, act, nxt, validation_fraction=0.1)
width, n, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mcfg = models.ModelConfig("P", 4, 1, hidden_size=width, num_hidden_layers=4, activation="silu")
cfg = TrainConfig(model=mcfg, num_epochs=5, batch_size=256)
keys = model_keys(jax.random.key(0), 0, n); hp = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,)), TrainHParams.population(n)); ds = jnp.zeros(n, jnp.int32)
progs = {}
for name in ("tree", "flat"):
    pop.make_optimizer = tconf.make_optimizer if name == "tree" else flat_optimizer
    fn = over_population(make_train_fn(cfg), parse_layout(layout), shared=(1, 2))
    t = time.perf_counter(); c = jax.jit(fn).lower(keys, None, data, hp, ds).compile(); ct = time.perf_counter() - t
    out = jax.block_until_ready(c(keys, None, data, hp, ds)); progs[name] = (c, ct, out)
same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(progs["tree"][2].params), jax.tree.leaves(progs["flat"][2].params)))
times = {k: [] for k in progs}
for rep in range(5):
    for k, (c, _, _) in progs.items():
        t = time.perf_counter(); jax.block_until_ready(c(keys, None, data, hp, ds)); times[k].append(time.perf_counter() - t)
print(json.dumps({"width": width, "n": n, "layout": layout, "bit_identical_params": same, "loadavg": os.getloadavg(),
                  **{k: {"median": summarize(v)["median"], "min": min(v), "max": max(v), "compile_s": progs[k][1]} for k, v in times.items()}}))
