"""``mismatch-jax estimate``: loop bodies weighted by their trip counts from XLA's own cost
analysis, the trainer's skipped slots, and the command's refusal of bad input."""

import textwrap

import jax
import jax.numpy as jnp
import pytest

from mismatch_jax import cli
from mismatch_jax.sweep.costs import DEVICES, Cost, HloModuleText, program_cost
from mismatch_jax.sweep.estimate import COMPILE_OPTIONS, row_scales, trainer_trip_scale

M, K = 32, 64
X = jax.ShapeDtypeStruct((M, K), jnp.float32)
W = jax.ShapeDtypeStruct((K, K), jnp.float32)


def _compiled(fn):
    return jax.jit(fn).lower(X, W).compile()


def _xla_flops(compiled) -> float:
    return float(compiled.cost_analysis()["flops"])


def scan_of_matmuls(x, w, unroll=1):
    def inner(c, _):
        return jnp.tanh(c @ w), None

    def outer(c, _):
        return jax.lax.scan(inner, c, None, length=3, unroll=unroll)[0] @ w, None

    return jax.lax.scan(outer, x, None, length=5, unroll=unroll)[0]


@pytest.mark.unit
def test_loop_bodies_count_their_trip_counts_as_xla_counts_the_unrolled_program():
    looped = _compiled(scan_of_matmuls)
    unrolled = _compiled(lambda x, w: scan_of_matmuls(x, w, unroll=True))
    cost = program_cost(looped)
    matmul = 2.0 * M * K * K
    assert _xla_flops(looped) == pytest.approx(2 * matmul, rel=1e-3)  # XLA: each body once
    assert "while" not in unrolled.as_text().split("ENTRY")[-1]
    # XLA's own count of the same work without loops; the loops add only their counters.
    assert cost.cost.flops == pytest.approx(_xla_flops(unrolled), rel=1e-4)
    assert cost.cost.flops == pytest.approx(20 * matmul, rel=1e-4)  # 5 × (3 + 1) + 0 matmuls
    assert cost.cost.transcendentals == 15 * M * K
    assert (cost.loops, cost.unknown_loops) == (2, 0)
    assert cost.xla.flops == _xla_flops(looped)


@pytest.mark.unit
def test_a_scan_of_k_matmuls_is_k_times_one_matmul():
    for steps in (1, 7):
        looped = _compiled(lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=steps)[0])
        single = _compiled(lambda x, w: x @ w)
        assert program_cost(looped).cost.flops == pytest.approx(steps * _xla_flops(single), rel=1e-4)


@pytest.mark.unit
def test_a_data_dependent_loop_counts_once_and_is_reported():
    def fn(x, w):
        return jax.lax.while_loop(lambda c: c[0, 0] < 100.0, lambda c: c @ w, x)

    cost = program_cost(_compiled(fn))
    assert cost.unknown_loops == 1
    assert cost.cost.flops == pytest.approx(2.0 * M * K * K, rel=1e-3)


def scaled_loop(x, w):  # its loop is the one the trip scale below names
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=8)[0]


@pytest.mark.unit
def test_trip_scale_scales_the_loops_built_in_a_named_function():
    compiled = _compiled(scaled_loop)
    loops = HloModuleText(compiled.as_text()).loops_below(HloModuleText(compiled.as_text()).entry)
    assert [loop.where[1] for loop in loops] == ["scaled_loop"] and loops[0].where[0].endswith("test_estimate.py")
    full = program_cost(compiled).cost.flops
    half = program_cost(compiled, lambda where: 0.5 if where[1] == "scaled_loop" else 1.0).cost.flops
    assert half == pytest.approx(full / 2, rel=1e-3)


@pytest.mark.unit
def test_row_scales_count_the_slots_a_group_has_rows_in():
    train = type("T", (), {"batch_size": 10, "eval_batch_size": None})()
    # capacity 100 → 10 slots; a group runs as many as its largest dataset needs.
    scales = row_scales(train, 100, [[(25.0, 5.0)], [(25.0, 5.0), (91.0, 0.0)]])
    assert scales == {"train": (3 / 10 + 10 / 10) / 2, "eval": (1 / 10 + 10 / 10) / 2}
    scale = trainer_trip_scale(scales)
    assert scale(("/x/mismatch_jax/train/population.py", "make_train_fn.<locals>.train_core.<locals>.run_epoch")) \
        == scales["train"]
    assert scale(("/x/mismatch_jax/train/population.py", "make_train_fn.<locals>.train_core.<locals>.evaluate")) \
        == scales["eval"]
    assert scale(("/x/mismatch_jax/planning/mpc.py", "mpc_episode")) == 1.0


@pytest.mark.unit
def test_roofline_is_the_slower_of_compute_and_memory():
    h100 = DEVICES["h100"]
    assert h100.roofline_s(Cost(flops=67e12, bytes=1.0)) == pytest.approx(1.0)
    assert h100.roofline_s(Cost(flops=1.0, bytes=6.7e12)) == pytest.approx(2.0)


BAD = textwrap.dedent("""
    env = "cartpole_balance"
    [training]
    num_epoch = 3
""")


@pytest.mark.unit
@pytest.mark.parametrize("argv, fragment", [
    (["estimate", "{bad}"], "num_epoch"),
    (["estimate", "no_such_config"], "no_such_config"),
    (["estimate", "quickstart", "--device", "z80"], "z80"),
    (["estimate", "quickstart", "--devices", "0"], "--devices"),
    (["estimate", "quickstart", "--set", "population.replicates=0"], "replicates"),
])
def test_bad_input_exits_2_with_one_line_like_sweep(argv, fragment, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    argv = [a.format(bad=bad) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if argv[1] == str(bad):  # the same refusal as the sweep's
        assert cli.main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.replace("sweep", "estimate") == err


TINY = textwrap.dedent("""
    name = "tiny"
    env = "cartpole_balance"
    [population]
    model_types = ["P"]
    replicates = 3
    [population.model]
    hidden_size = 8
    num_hidden_layers = 1
    [training]
    num_epochs = 2
    eval_epochs = [2]
    batch_size = 16
    [datasets]
    train = ["grid", "sampled"]
    eval = ["grid"]
    grid_points = 3
    sampled_size = 40
    [cem]
    horizon = 3
    population_size = 8
    num_elites = 2
    num_iterations = 1
    [evaluation]
    trials = 1
    episode_length = 5
    [run]
    chunk_size = 4
""")


def test_the_trainer_row_loops_are_found_and_scaled_by_the_rows_the_models_have():
    import tomllib

    from mismatch_jax.config_io import from_dict
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import laid_out, make_chunk_parts
    from mismatch_jax.sweep.config import SweepConfig
    from mismatch_jax.sweep.estimate import chunk_inputs, dataset_rows, skip_groups

    config = from_dict(SweepConfig, tomllib.loads(TINY))
    env = make(config.env)
    assert dataset_rows(config, env)["grid"] == 3 ** (env.obs_dim + env.action_dim)
    train_data, _, _, rows_of = chunk_inputs(config, env, None)
    capacity = train_data.obs.shape[1]
    assert capacity == 3 ** 5 == 243 and train_data.obs.shape[0] == 2  # grid (243) and sampled (40) stacked
    assert rows_of(0) == (243 - 24, 24) and rows_of(1) == (40 - 4, 4)
    layout = config.run.layout.resolve(backend="gpu", width=8)  # vmap: one group per block
    groups = skip_groups(config, 0, config.models_per_type, 4, 1, layout, rows_of)
    # 6 models (3 on grid, then 3 on sampled) in chunks of 4: [g g g s], [s s s s(pad)].
    assert [len(g) for g in groups] == [4, 4] and groups[1] == [rows_of(1)] * 4
    scales = row_scales(config.training.train_config(config.model_config_of("P", env)), capacity, groups)
    assert scales["train"] == pytest.approx((14 / 16 + 3 / 16) / 2)

    parts = laid_out(make_chunk_parts(config, env, "P"), layout, 8)
    i32 = jax.ShapeDtypeStruct((4,), jnp.int32)
    compiled = jax.jit(parts.train).lower(i32, i32, train_data).compile(compiler_options=COMPILE_OPTIONS)
    module = HloModuleText(compiled.as_text())
    row_loops = [loop for name in module.lines for loop in module.loops[name]
                 if loop.where[0].endswith("train/population.py")
                 and loop.where[1].endswith(("run_epoch", "evaluate"))]
    assert sorted({loop.where[1].rsplit(".", 1)[-1] for loop in row_loops}) == ["evaluate", "run_epoch"]
    full = program_cost(compiled).cost.flops
    assert program_cost(compiled, trainer_trip_scale({"train": 0.0, "eval": 0.0})).cost.flops < full / 4


def _packaged_sweep_configs() -> list[str]:
    from mismatch_jax.config_io import load_toml
    from mismatch_jax.sweep.config import SweepConfig

    names = []
    for name in cli.packaged_configs():
        try:
            load_toml(SweepConfig, cli.config_source("sweep", name))
        except Exception:  # another command's config
            continue
        names.append(name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _packaged_sweep_configs())
def test_every_packaged_sweep_config_has_an_estimate(name):
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import chunk_size_for
    from mismatch_jax.sweep.estimate import chunk_inputs, estimate, needs_pets
    from mismatch_jax.sweep.estimate_report import report

    from mismatch_jax.sweep.env_params import expand

    config = cli.load_command_config("estimate", name)
    env = make(config.env)
    stages = estimate(config, DEVICES["h100"], devices=2)
    names = [s.name for s in stages]
    assert ("PETS data" in names) == needs_pets(config, env)
    capacity = chunk_inputs(config, env, expand(config.dynamics, env, config.seed))[0].obs.shape[1]
    for kind, _, count in config.type_ranges():
        chunks = -(-count // chunk_size_for(config, env, kind, capacity, 2))
        for stage in (f"train ({kind})", f"LL ({kind})", f"reward ({kind})"):
            assert {s.name: s.runs for s in stages}[stage] == 2 * chunks
    for s in stages:  # unscaled loops only add work to XLA's once-counted figure
        assert s.program.peak_bytes > 0
        if s.name.startswith(("LL", "reward")):
            assert s.program.cost.flops >= s.program.xla.flops
    content = report(config, stages, DEVICES["h100"], 2)
    assert content["total"]["flops"] == pytest.approx(sum(s.total.flops for s in stages))
    assert content["total"]["seconds"] > 0
