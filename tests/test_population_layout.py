"""Population layouts: vmap, lax.map over groups (with padding), and groups inside shards give the
same per-model results; the documented defaults and the config table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.config_io import ConfigError, from_dict
from mismatch_jax.population import CPU_MAP_MIN_WIDTH, PopulationLayout, default_layout, over_population


def _population_fn(keys, weights, shared_matrix, maybe_none):
    """A population function: model n's output depends on keys[n], weights[n] and the shared
    matrix only (and counts how many models it was called with, to see the grouping)."""
    assert maybe_none is None
    noise = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)  # [N, 3]
    out = jnp.tanh(weights @ shared_matrix) + noise  # [N, 3]
    return {"out": out, "group": jnp.full(keys.shape, keys.shape[0])}


@pytest.mark.parametrize("strategy, group", [("map", 1), ("map", 3), ("map", 7), ("map", 100), ("vmap", 0)])
def test_every_layout_gives_each_model_its_own_result(strategy, group):
    n = 10
    keys = jax.random.split(jax.random.key(0), n)
    weights = jax.random.normal(jax.random.key(1), (n, 4))
    shared = jax.random.normal(jax.random.key(2), (4, 3))
    reference = _population_fn(keys, weights, shared, None)
    fn = jax.jit(over_population(_population_fn, PopulationLayout(strategy, group), shared=(2, 3)))
    got = fn(keys, weights, shared, None)
    np.testing.assert_allclose(got["out"], reference["out"], rtol=1e-6, atol=1e-6)
    expected_group = n if strategy == "vmap" else min(group, n)
    assert set(np.asarray(got["group"]).tolist()) == {expected_group}


_SHARDED_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {root!r})
from tests.test_population_layout import _population_fn
from mismatch_jax.population import PopulationLayout, jit_sharded, over_population
assert len(jax.devices()) == 2
n = 10
keys = jax.random.split(jax.random.key(0), n)
weights = jax.random.normal(jax.random.key(1), (n, 4))
shared = jax.random.normal(jax.random.key(2), (4, 3))
reference = _population_fn(keys, weights, shared, None)
out = {{}}
for name, layout in (("vmap", PopulationLayout("vmap", 0)), ("map2", PopulationLayout("map", 2))):
    got = jit_sharded(over_population(_population_fn, layout, shared=(2, 3)), 4, shared=(2, 3))(
        keys, weights, shared, None)
    np.testing.assert_allclose(got["out"], reference["out"], rtol=1e-6, atol=1e-6)
    out[name] = sorted(set(np.asarray(got["group"]).tolist()))
    out[name + "_devices"] = len(got["out"].sharding.device_set)
try:
    jit_sharded(_population_fn, 4, shared=(2, 3))(keys[:3], weights[:3], shared, None)
except ValueError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def test_jit_sharded_runs_each_device_block_as_its_own_population(tmp_path):
    """Two host devices (a subprocess: XLA_FLAGS is read at start-up): every model gets its own
    result, each device's program sees only its block of N / 2 models (vmap: groups of 5; map:2
    inside each block: groups of 2), the output stays split over both devices, and a population
    that does not divide over the devices is refused with the fix named."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED_SCRIPT.format(root=root))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["vmap"] == [5] and out["map2"] == [2]
    assert out["vmap_devices"] == 2 and out["map2_devices"] == 2
    assert "not a multiple of the 2 devices" in out["error"]


def test_one_at_a_time_calls_the_unbatched_function_and_keeps_its_conds():
    def one(key, weight, shared_matrix):
        # A model-dependent cond: under any vmap it would become a select of both branches.
        return jax.lax.cond(weight.sum() > 0, lambda: jnp.tanh(weight @ shared_matrix),
                            lambda: jax.random.normal(key, (3,)))

    population = jax.vmap(one, in_axes=(0, 0, None))
    keys = jax.random.split(jax.random.key(0), 6)
    weights = jax.random.normal(jax.random.key(1), (6, 4))
    shared = jax.random.normal(jax.random.key(2), (4, 3))
    mapped = over_population(population, PopulationLayout("map", 1), shared=(2,), per_model=one)
    np.testing.assert_allclose(jax.jit(mapped)(keys, weights, shared), population(keys, weights, shared),
                               rtol=1e-6, atol=1e-6)
    direct = str(jax.make_jaxpr(mapped)(keys, weights, shared))
    assert " cond[" in direct  # the skip survived as a cond
    via_vmap = str(jax.make_jaxpr(over_population(population, PopulationLayout("map", 1), shared=(2,)))(
        keys, weights, shared))
    assert " cond[" not in via_vmap and "select_n" in via_vmap  # a group of one is still a vmap


@pytest.mark.unit
def test_defaults_and_resolution():
    assert default_layout("gpu", 1024) == PopulationLayout("vmap", 0)
    assert default_layout("tpu", 1024) == PopulationLayout("vmap", 0)
    assert default_layout("cpu", CPU_MAP_MIN_WIDTH - 1).strategy == "vmap"
    assert default_layout("cpu", None).strategy == "vmap"
    wide = default_layout("cpu", CPU_MAP_MIN_WIDTH)
    assert wide.strategy == "map" and wide.group_size >= 1
    assert PopulationLayout("map", 0).resolve("gpu", 8) == PopulationLayout("map", 1)
    assert PopulationLayout("map", 5).resolve("cpu", 8) == PopulationLayout("map", 5)
    assert PopulationLayout("vmap", 5).resolve("cpu", 4096) == PopulationLayout("vmap", 0)
    assert PopulationLayout("auto", 0).resolve("gpu", 4096) == PopulationLayout("vmap", 0)
    assert PopulationLayout("auto", 0).resolve("cpu", 4096) == wide
    assert PopulationLayout("auto", 8).resolve("cpu", 4096) == PopulationLayout("map", 8)


@pytest.mark.unit
def test_config_table_is_checked():
    from mismatch_jax.sweep.config import SweepConfig

    config = from_dict(SweepConfig, {"env": "cartpole_balance", "run": {"layout": {"strategy": "map", "group_size": 4}}})
    assert config.run.layout == PopulationLayout("map", 4)
    with pytest.raises(ConfigError, match="run.layout.strategy"):
        from_dict(SweepConfig, {"env": "cartpole_balance", "run": {"layout": {"strategy": "pmap"}}})
    with pytest.raises(ConfigError, match="group_size"):
        from_dict(SweepConfig, {"env": "cartpole_balance", "run": {"layout": {"group_size": -1}}})


@pytest.mark.slow  # ~19 s of compile; the default tier checks the sweep's trainer under map:1 over 2 devices
# against the default layout (tests/sweep/test_runner.py) and every layout on a toy population (above)
def test_population_trainer_is_the_same_under_each_layout():
    from mismatch_jax.data.transitions import TransitionData
    from mismatch_jax.models import core as models
    from mismatch_jax.train import TrainHParams, make_train_fn
    from mismatch_jax.train.config import TrainConfig
    from mismatch_jax.train.population import model_keys

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(300, 3)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(300, 1)).astype(np.float32)
    data = TransitionData.from_arrays(jax.random.key(0), obs, act, obs * 0.9 + act, validation_fraction=0.2)
    cfg = TrainConfig(model=models.ModelConfig("PE", 3, 1, hidden_size=16, num_hidden_layers=2, ensemble_size=2),
                      num_epochs=3, batch_size=64, patience=1)
    n = 5
    keys = model_keys(jax.random.key(3), 0, n)
    hp = TrainHParams.population(n, learning_rate=jnp.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1]))
    train = make_train_fn(cfg)

    def population(keys, hparams, data):
        result = train(keys, None, data, hparams, jnp.zeros(keys.shape[0], jnp.int32))
        return result.params, result.metrics, result.best_epoch

    reference = jax.jit(population)(keys, hp, data)
    for layout in (PopulationLayout("map", 2),):  # groups of 2 of 5 models: a padded last group
        got = jax.jit(over_population(population, layout, shared=(2,)))(keys, hp, data)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-5)


def test_jit_sharded_accepts_arguments_committed_to_another_layout(tmp_path):
    """A sharded program called on the replicated output of another program on the same two
    devices (the attack's generation loop) re-lays the argument out instead of failing, and
    gives the unsharded numbers (subprocess: XLA_FLAGS must be set before jax starts)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "relayout.py"
    script.write_text(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "from mismatch_jax.population import jit_sharded\n"
        "assert len(jax.devices()) == 2\n"
        "mesh = Mesh(np.asarray(jax.devices()), ('pop',))\n"
        "replicated = jax.jit(lambda x: x * 2.0, out_shardings=NamedSharding(mesh, P()))(jnp.arange(8.0))\n"
        "f = jit_sharded(lambda x, c: jnp.sin(x) + c, 2, shared=(1,))\n"
        "np.testing.assert_allclose(f(replicated, jnp.float32(1.0)), np.sin(np.arange(8.0) * 2) + 1, rtol=1e-6)\n"
        "np.testing.assert_allclose(f(replicated, jnp.float32(1.0)), f(np.arange(8.0) * 2, 1.0), rtol=0)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.getcwd())
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.unit
def test_devices_dividing_keeps_every_device_only_when_they_divide_the_population():
    from mismatch_jax.population import devices_dividing

    devices = ["d0", "d1"]  # stand-ins: the helper only counts and slices
    assert devices_dividing(8, devices) == ["d0", "d1"]
    assert devices_dividing(7, devices) == ["d0"]
