"""Fair benchmarks: ours (JAX) vs the PyTorch peer (mbrl-lib 0.2.0), interleaved in one run.

    python benchmarks/compare_peer.py                                  # everything, 9 repetitions (~15 min on 2 quiet cores)
    python benchmarks/compare_peer.py --only train --hidden 200 --num-models 64
    python benchmarks/compare_peer.py --only cem --cem-settings expectation_h30
    python benchmarks/compare_peer.py --only breakdown --breakdown-sizes 200_64
    python benchmarks/compare_peer.py --no-peer ...                    # JAX side only (benchmarks/gpu_check.sh)

Protocol. For every question (a training size, a CEM setting) the peer is a persistent worker
(benchmarks/peer_mbrl.py under ``--peer-python`` / ``$PEER_PYTHON``, default ``.peer-venv``),
started once: its process start + import, model build and one warm-up call of every variant are
reported apart (``peer_start_s``, ``peer_warmup_s``), as our compile time and first (discarded)
call are (``ours_compile_s``, ``ours_warmup_s``). Then the repetitions alternate, ours then the
peer's variants (A B A B …), ``--reps`` of each, with ``--gap-s`` of idle between calls so the
other side's threads are asleep. Every timed key is ``{min, median, max, reps, values}``. While
one side runs, the other waits on a pipe. Both sides use every core. Ours splits the CPU into
``--devices`` host devices (default: the core count, as the README tells users to run the
product; ``--devices 1`` for one device), over which the training population, the MBPO seeds and
an expectation CEM call's candidates are split when the count divides them (``ours_devices``,
``one_program_devices``, ``ours_candidate_devices``). The peer is offered every multi-core form a
competent mbrl-lib user would run, each a row, and "the peer" is its best (``peer_best_form``):
(a) one process with torch's default threads (today's ``peer_batched`` / ``peer_sequential`` /
``peer_s``); (b) P = ``--peer-workers`` (default: the core count) one-thread processes
(``torch.set_num_threads(1)``, OMP / MKL pools of 1) at once, each on its share of the work
(bench_common.split_work), timed from the first worker's start to the last one's end:
``peer_workers_batched`` (worker i trains ONE ``GaussianMLP(ensemble_size=N_i)``),
``peer_workers_sequential`` (its share of the timed models one after another), and for CEM the
start-state split ``peer_workers_s`` (each worker one ``agent.act`` from its own start state; wall
/ P per call — throughput, against our one call's latency). The MBPO seeds baseline likewise has
one stream on one device (``sequential_s``) and one stream per host device at once
(``sequential_streams_s``), so the seeds row can compare equal core counts.

Same arithmetic on both sides: the same synthetic data (bench_common.linear_system) and split
(floor(10 %) validation rows), the same minibatches per epoch (ceil(train rows / batch), the last
one partial: a model-step is one minibatch update of one model, the partial one included), the
same widths, depth, SiLU activations, Adam, per-epoch validation (plus one before training) and
best-weights tracking. ``gemm_fraction`` = our achieved FLOP/s over the GFLOP/s of a 2048²
float32 ``jnp.dot`` timed right after each of our training repetitions (A dot A dot …: the
reference sees the same load as the call it divides; the median of 3 dot calls per repetition,
``gemm_gflops_interleaved``; the start-of-run ``gemm_gflops`` read up to 45 % low on this shared
machine), one fraction per repetition, with FLOPs counted analytically from the
layer sizes on the rows the peer computes: training 3 × forward (forward + backward) per training
row and epoch, validation 1 × forward per validation row, epochs + 1 times.

Prints one JSON object (also written to ``--out`` after every section) and, on stderr, one
``[summary]`` line per row (``summary`` in the JSON: ours, every peer form's median, the best
form, our ratio against it):

* ``gemm_gflops`` (2048² float32 ``jnp.dot``), ``torch_mm_gflops`` (``torch.mm``, torch's default
  threads) and ``torch_mm_gflops_1thread``, interleaved round robin at the start and again at the
  end (``*_end``); ``loadavg_start`` / ``loadavg_end`` (os.getloadavg), also per question.
* ``train["<hidden>_<N>"]``: model-steps/s of ``ours`` (N models of kind P in one
  ``make_train_fn`` program), ``peer_batched`` (ONE ``GaussianMLP(ensemble_size=N)``: N models of
  one config), ``peer_sequential`` (N independent models one after another; the rate does not
  depend on N, so ``--peer-seq-models`` of them are timed per repetition), ``peer_workers_batched``
  / ``peer_workers_sequential`` (the same work over P one-thread workers; ``peer_workers_shares``,
  ``peer_worker_pids``, ``peer_workers_stagger_s``: what the workers' staggered starts add to the
  slowest one's own time), ``model_steps_per_rep`` of every form, ``peer_best_form`` /
  ``peer_best`` / ``speedup_vs_peer_best``, ``gemm_fraction``, ``torch_mm_gflops_interleaved``.
* ``cem["<setting>"]``: seconds per planning call of one model, ``ours_s``, ``peer_s``
  (mbrl-lib's ``TrajectoryOptimizerAgent.act``) and ``peer_workers_s`` (``peer_workers_wall_s``
  / P), same population, horizon, iterations, elites, particles and propagation
  (bench_common.CEM_SETTINGS); ``peer_best_form`` / ``peer_best_s`` / ``speedup_vs_peer_best``.
* ``cem_batch["<M>"]``: ours only, seconds per planned step per model: M models in one vmapped
  call (``batched_per_step_s``) vs one call per model (``sequential_per_step_s``).
* ``seeds``: MBPO (``--seeds-config``, default the quick Pendulum config), ``--seeds-count``
  seeds as one vmapped program (``one_program_s``) vs that many sequential runs on one device
  (``sequential_s``) and in one stream per host device (``sequential_streams_s``), run time
  without compile; ``baseline_best_form`` and ``one_program_over_best_baseline``.
* ``breakdown["<hidden>_<N>"]`` (``--breakdown``, sizes ``--breakdown-sizes``): where our
  trainer's time goes. Cheap variants of the training step (the matrix products alone; + biases
  and activations; + loss; + Adam; + row gather; + the trainer's masking / selects), one
  validation chunk and the whole trainer; the pieces (``gemm``, ``bias_activation``, ``loss``,
  ``optimizer``, ``gather``, ``masking``, ``validation``, ``rest``) are the differences, scaled
  by the trainer's step and validation counts (from each variant's minimum over the
  repetitions); ``gemm_fraction`` is the matrix products' FLOP/s over ``gemm_gflops``.

Without the peer venv the peer keys are null and ``peer.status`` says how to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from peer_pool import DEFAULT_PEER_PYTHON, Peer, PeerError, core_count, log  # noqa: E402 (no JAX)


def host_device_count(argv) -> int:
    """``--devices D`` if given, else the CPU core count: what the README tells a user to pass on
    a multi-core CPU (the peer, too, uses every core: torch's default threads)."""
    if "--devices" in argv[:-1]:
        try:
            return max(1, int(argv[argv.index("--devices") + 1]))
        except ValueError:
            return 1  # argparse reports the bad value
    return core_count()


# XLA reads the host device count when JAX starts; a count already in XLA_FLAGS wins.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                               f"{host_device_count(sys.argv)}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_common import (ACT_DIM, ACTION_BOUND, CEM_SETTINGS, OBS_DIM, gemm_timer,  # noqa: E402
                          best_form, linear_system, split_sizes, split_work, steps_per_epoch,
                          summarize, train_model_steps)

from mismatch_jax.data import TransitionData  # noqa: E402
from mismatch_jax.models import core as models  # noqa: E402
from mismatch_jax.models.nets import gradient_update  # noqa: E402
from mismatch_jax.planning.cem import CEMConfig  # noqa: E402
from mismatch_jax.planning.mpc import candidate_devices_for, make_planner  # noqa: E402
from mismatch_jax.population import devices_dividing, jit_sharded, over_population, parse_layout  # noqa: E402
from mismatch_jax.train import TrainConfig, TrainHParams, make_optimizer, make_train_fn, model_keys  # noqa: E402
from mismatch_jax.train.steps import all_finite, make_model_steps, select  # noqa: E402

SECTIONS = ("gemm", "train", "cem", "cem_batch", "seeds", "breakdown")


def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--only", default="gemm,train,cem,cem_batch,seeds",
                   help=f"comma-separated sections of {','.join(SECTIONS)} (gemm is always measured)")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions of each side and form")
    p.add_argument("--hidden", default="32,200", help="train: comma-separated hidden sizes")
    p.add_argument("--num-models", default="64", help="train: comma-separated population sizes N")
    p.add_argument("--layers", type=int, default=4, help="train: hidden layers")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rows", type=int, default=2048, help="train: transitions in the dataset")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--peer-seq-models", type=int, default=None,
                   help="peer_sequential: models timed per repetition, split over the workers of the "
                        "multi-process form (its rate does not depend on N; default: the smallest "
                        "multiple of --peer-workers that is >= 2)")
    p.add_argument("--cem-settings", default="expectation_h30,tsinf_h15_p20",
                   help=f"cem: comma-separated settings of {','.join(CEM_SETTINGS)}")
    p.add_argument("--cem-batch", default="1,8,64", help="cem_batch: comma-separated model counts M")
    p.add_argument("--cem-batch-setting", default="small_h15", choices=sorted(CEM_SETTINGS),
                   help="cem_batch: the setting (expectation_h30 at M = 64 takes minutes per call on 2 cores)")
    p.add_argument("--seeds-config", default=os.path.join(ROOT, "sweeps", "mbpo_pendulum_quick.toml"))
    p.add_argument("--seeds-count", type=int, default=8)
    p.add_argument("--seeds-reps", type=int, default=None, help="seeds: repetitions (default --reps)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time variants of our training step at --breakdown-sizes")
    p.add_argument("--breakdown-sizes", default="200_64", help="breakdown: comma-separated HIDDEN_N")
    p.add_argument("--breakdown-steps", type=int, default=5, help="breakdown: steps per timed loop")
    p.add_argument("--layout", default="auto",
                   help="ours: population layout of train / cem_batch / seeds (vmap, map[:G], auto = the "
                        "backend's default, as the product runs it)")
    p.add_argument("--devices", type=int, default=None,
                   help="train / seeds / cem: split the CPU into this many XLA devices and shard our population "
                        "(seeds; an expectation CEM call's candidates) over them when it divides (read before "
                        "JAX starts; default: the CPU core count, as the README recommends; 1 = one device; "
                        "the peer keeps torch's default threads; sequential seeds run on one device)")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--gap-s", type=float, default=0.2, help="idle seconds between timed calls")
    p.add_argument("--no-peer", action="store_true", help="JAX side only (peer keys null)")
    p.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", DEFAULT_PEER_PYTHON))
    p.add_argument("--peer-threads", type=int, default=0,
                   help="torch threads of the one-process forms (0: torch's default)")
    p.add_argument("--peer-workers", type=int, default=0,
                   help="P of the peer's multi-process forms: P one-thread workers at once, each on its "
                        "share of the models / start states (0: the CPU core count; 1: no such forms)")
    p.add_argument("--out", default=None, help="also write the JSON here (after every section)")
    args = p.parse_args(argv)
    args.sections = [s for s in args.only.split(",") if s]
    if args.breakdown and "breakdown" not in args.sections:
        args.sections.append("breakdown")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    bad = set(args.cem_settings.split(",")) - set(CEM_SETTINGS)
    if "cem" in args.sections and bad:
        p.error(f"--cem-settings: unknown {sorted(bad)}; choose from {sorted(CEM_SETTINGS)}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    if args.peer_workers < 0:
        p.error("--peer-workers must be >= 0 (0: the core count)")
    args.peer_workers = args.peer_workers or core_count()
    if args.peer_seq_models is None:
        args.peer_seq_models = args.peer_workers * -(-2 // args.peer_workers)
    if args.peer_seq_models < 1:
        p.error("--peer-seq-models must be >= 1")
    args.seeds_reps = args.reps if args.seeds_reps is None else args.seeds_reps
    try:
        args.breakdown_at = [tuple(int(v) for v in size.split("_")) for size in args.breakdown_sizes.split(",") if size]
    except ValueError:
        p.error(f"--breakdown-sizes: expected HIDDEN_N[,HIDDEN_N…], got {args.breakdown_sizes!r}")
    return args


def ints(text):
    """'1,2,3' → [1, 2, 3]."""
    return [int(v) for v in text.split(",") if v]


def block(tree):
    """Wait for every array of ``tree``."""
    return jax.block_until_ready(tree)


def timed(fn):
    """Seconds of ``fn()`` including block_until_ready of its result."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def compile_timed(jitted, *args):
    """(AOT-compiled ``jitted`` for ``args``, compile seconds)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def ratio(num, den):
    """median(num) / median(den), or None when either side is missing."""
    if not num or not den:
        return None
    return num["median"] / den["median"]


# ------------------------------------------------------------------------ training ---------


def train_data(args):
    """Our TransitionData of the synthetic system and the split sizes both sides use."""
    obs, act, nxt = linear_system(args.rows)
    data = TransitionData.from_arrays(jax.random.key(42), obs, act, nxt,
                                      validation_fraction=args.validation_fraction)
    num_train, num_val = split_sizes(args.rows, args.validation_fraction)
    assert int(np.asarray(data.train_mask).sum()) == num_train
    assert int(np.asarray(data.val_mask).sum()) == num_val
    return data, num_train, num_val


def train_config(args, hidden):
    """The trainer config of one population member: kind P, SiLU, ``--layers`` × ``hidden``."""
    mcfg = models.ModelConfig("P", OBS_DIM, ACT_DIM, hidden_size=hidden,
                              num_hidden_layers=args.layers, activation="silu")
    return TrainConfig(model=mcfg, num_epochs=args.epochs, batch_size=args.batch_size)


def train_flops_per_model(mcfg, epochs, num_train, num_val):
    """Analytic FLOPs of one model's fit on the rows the peer computes: training 3 × forward per
    row and epoch, validation 1 × forward per row, before training and after every epoch."""
    fwd = mcfg.flops_per_example()
    return epochs * 3 * fwd * num_train + (epochs + 1) * fwd * num_val


def train_question(args, peer, hidden, n, gemm):
    """One ``train["<hidden>_<N>"]`` entry: ours and the peer's four forms interleaved (ours, a
    2048² dot ×3, the one-process batched / sequential forms, a torch.mm ×3, the P-worker
    batched / sequential forms), the best form and our ratio against it."""
    name = f"{hidden}_{n}"
    cfg = train_config(args, hidden)
    data, num_train, num_val = train_data(args)
    steps = steps_per_epoch(num_train, args.batch_size)
    keys = model_keys(jax.random.key(0), 0, n)
    hp = TrainHParams.population(n)
    ds = jnp.zeros(n, jnp.int32)
    devices = devices_dividing(n)  # --devices D: the population sharded over D host devices
    shards = len(devices)
    layout = parse_layout(args.layout).resolve(width=hidden)
    ours_fn = over_population(make_train_fn(cfg), layout, shared=(1, 2), width=hidden)
    hp = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,)), hp)
    compiled, compile_s = compile_timed(jit_sharded(ours_fn, 5, shared=(1, 2), devices=devices),
                                        keys, None, data, hp, ds)
    warm_s = timed(lambda: compiled(keys, None, data, hp, ds))
    entry = {
        "hidden": hidden, "num_models": n, "layers": args.layers, "epochs": args.epochs,
        "batch_size": args.batch_size, "rows": args.rows, "train_rows": num_train, "val_rows": num_val,
        "steps_per_epoch": steps, "ours_slots_per_epoch": -(-args.rows // args.batch_size),
        "flops_per_model": train_flops_per_model(cfg.model, args.epochs, num_train, num_val),
        "ours_compile_s": compile_s, "ours_warmup_s": warm_s, "ours_layout": vars(layout), "ours_devices": shards,
    }
    entry = {"ours": None, "peer_batched": None, "peer_sequential": None, "gemm_fraction": None, **entry}
    model_steps = {"ours": train_model_steps(n, args.epochs, steps)}
    spec = dict(question="train", hidden=hidden, layers=args.layers, epochs=args.epochs,
                batch_size=args.batch_size, rows=args.rows, obs_dim=OBS_DIM, act_dim=ACT_DIM,
                validation_fraction=args.validation_fraction)
    worker, pool = peer.start(name), None
    if worker is not None:
        try:
            setup = worker.request(cmd="setup", num_models=n, seq_models=args.peer_seq_models, **spec)
            entry.update(peer_start_s=worker.start_s, peer_import_s=worker.hello.get("import_s"),
                         peer_build_s=setup["build_s"], peer_warmup_s=setup["warmup_s"],
                         peer_torch_threads=setup["torch_threads"],
                         peer_sequential_models_timed=args.peer_seq_models)
        except PeerError as exc:
            peer.note(name, str(exc))
            worker.close()
            worker = None
    shares = {"batched": split_work(n, args.peer_workers), "sequential": split_work(args.peer_seq_models, args.peer_workers)}
    if worker is not None and args.peer_workers > 1:
        pool = peer.start_pool(name, args.peer_workers)
    if pool is not None:
        try:
            # Worker i trains share i of each variant (a worker with no sequential share gets 0).
            reqs = [dict(cmd="setup", worker=i, num_models=shares["batched"][i],
                         seq_models=(shares["sequential"] + [0] * len(shares["batched"]))[i], **spec)
                    for i in range(len(pool.workers))]
            setups = pool.request_all(reqs)
            entry.update(peer_workers=len(pool.workers), peer_workers_start_s=pool.start_s,
                         peer_workers_warmup_s=[r["warmup_s"] for r in setups],
                         peer_workers_torch_threads=[r["torch_threads"] for r in setups],
                         peer_workers_shares=shares)
        except PeerError as exc:
            peer.note(name, f"workers: {exc}")
            pool.close()
            pool = None
    ours_s, dots, mms = [], [], []
    forms = {"batched": [], "sequential": [], "workers_batched": [], "workers_sequential": []}
    pids, stagger, peer_val = set(), [], None
    dot_rates = gemm_timer(args.gemm_size)
    for rep in range(args.reps):
        ours_s.append(timed(lambda: compiled(keys, None, data, hp, ds)))
        dots.append(float(np.median(dot_rates(3))))
        time.sleep(args.gap_s)
        if worker is not None:
            try:
                for variant in ("batched", "sequential"):
                    r = worker.request(cmd="run", variant=variant, rep=rep)
                    forms[variant].append(r["model_steps_per_s"])
                    model_steps[f"peer_{variant}"] = r["model_steps"]
                    peer_val = r["final_val_score"] if variant == "batched" else peer_val
                    time.sleep(args.gap_s)
                mms.append(float(np.median(worker.request(cmd="gemm", size=args.gemm_size, reps=3)["gflops"])))
                time.sleep(args.gap_s)
            except PeerError as exc:
                peer.note(name, str(exc))
                worker.close()
                worker = None
        if pool is not None:
            try:
                for variant in ("batched", "sequential"):
                    r = pool.run(variant, rep)
                    forms[f"workers_{variant}"].append(r["model_steps_per_s"])
                    model_steps[f"peer_workers_{variant}"] = r["model_steps"]
                    pids.update(r["pids"])
                    stagger.append(r["stagger_s"])
                    time.sleep(args.gap_s)
            except PeerError as exc:
                peer.note(name, f"workers: {exc}")
                pool.close()
                pool = None
        log(f"[train {name}] rep {rep}: ours {model_steps['ours'] / ours_s[-1]:.1f}"
            + "".join(f", {form} {v[-1]:.1f}" for form, v in forms.items() if len(v) == rep + 1)
            + " model-steps/s")
    for proc in (worker, pool):
        if proc is not None:
            proc.close()
    result = compiled(keys, None, data, hp, ds)
    flops = n * entry["flops_per_model"]
    entry.update(
        ours=summarize([model_steps["ours"] / t for t in ours_s]),
        ours_seconds=summarize(ours_s),
        gemm_gflops_interleaved=summarize(dots),
        torch_mm_gflops_interleaved=summarize(mms),
        gemm_fraction=summarize([flops / t / (d * 1e9) for t, d in zip(ours_s, dots)]),
        gemm_fraction_vs_start_gemm=summarize([flops / t / (gemm["median"] * 1e9) for t in ours_s]),
        ours_final_val_mse=float(np.mean(np.asarray(result.metrics.val_mse)[:, -1])),
        model_steps_per_rep=model_steps,
        peer_worker_pids=sorted(pids),
        peer_workers_stagger_s=summarize(stagger),
    )
    if forms["batched"]:
        entry.update(peer_batched=summarize(forms["batched"]), peer_sequential=summarize(forms["sequential"]),
                     peer_final_val_score_normalised=peer_val)
    entry["peer_workers_batched"] = summarize(forms["workers_batched"])
    entry["peer_workers_sequential"] = summarize(forms["workers_sequential"])
    entry["speedup_vs_peer_batched"] = ratio(entry["ours"], entry["peer_batched"])
    entry["speedup_vs_peer_sequential"] = ratio(entry["ours"], entry["peer_sequential"])
    entry["peer_best_form"], entry["peer_best"] = best_form(entry, PEER_TRAIN_FORMS, higher_is_better=True)
    entry["speedup_vs_peer_best"] = ratio(entry["ours"], entry["peer_best"])
    return name, entry


# The peer's training forms (model-steps/s): one process with torch's default threads, an
# N-member ensemble or models one after another; P one-thread processes, each with its share.
PEER_TRAIN_FORMS = ("peer_batched", "peer_sequential", "peer_workers_batched", "peer_workers_sequential")


# ----------------------------------------------------------------------------- CEM ---------


def swingup_reward(obs, action, next_obs):
    """Cart-pole swing-up reward on the pole tip (peer_mbrl.swingup_reward's arithmetic)."""
    x, theta = next_obs[0], next_obs[1]
    tip_x, tip_y = x - 0.6 * jnp.sin(theta), -0.6 * jnp.cos(theta)
    return jnp.exp(-(tip_x**2 + (tip_y - 0.6) ** 2) / 0.36) - 0.01 * jnp.sum(action**2)


def cem_config(setting):
    """The CEMConfig of one CEM_SETTINGS entry (α 0.1, the action box ±ACTION_BOUND)."""
    s = CEM_SETTINGS[setting]
    return CEMConfig(horizon=s["horizon"], population_size=s["population"], num_elites=s["elites"],
                     num_iterations=s["iterations"], alpha=0.1, propagation=s["propagation"],
                     num_particles=s["particles"]).with_bounds([-ACTION_BOUND] * ACT_DIM, [ACTION_BOUND] * ACT_DIM)


def cem_planner(setting, candidate_devices=None):
    """(planner, model config) of one CEM_SETTINGS entry: a PE ensemble, CEM with α 0.1;
    candidate_devices: each CEM iteration's candidates split over these (make_planner)."""
    s = CEM_SETTINGS[setting]
    mc = models.ModelConfig(kind="PE", obs_dim=OBS_DIM, action_dim=ACT_DIM, hidden_size=s["hidden"],
                            num_hidden_layers=s["layers"], ensemble_size=s["ensemble"], activation="silu")
    return make_planner(cem_config(setting), mc, swingup_reward, candidate_devices=candidate_devices), mc


def cem_inputs(setting, num_models, candidate_devices=None):
    """(planner, params [M], normalizers [M], obs [M, d], plans [M, H, A]) for M models."""
    planner, mc = cem_planner(setting, candidate_devices)
    params = jax.vmap(lambda k: models.init(k, mc))(jax.random.split(jax.random.key(0), num_models))
    norms = jax.vmap(lambda _: models.identity_normalizer(mc))(jnp.arange(num_models))
    obs = jnp.zeros((num_models, OBS_DIM))
    plans = jnp.broadcast_to(planner.initial_plan, (num_models,) + planner.initial_plan.shape)
    return planner, params, norms, obs, plans


def first(tree):
    """Model 0 of an [M]-stacked pytree."""
    return jax.tree.map(lambda a: a[0], tree)


def cem_question(args, peer, setting):
    """One ``cem["<setting>"]`` entry: one planning call of one model, ours vs the peer's agent.
    With ``--devices D`` an expectation setting splits its candidates over the D host devices
    (``ours_candidate_devices``); TS settings run on one device (their particles' member
    assignment spans all candidates). The peer's forms: one process with torch's default threads
    (``peer_s``) and the start-state split, P one-thread agents each planning one call from its
    own start state at once (``peer_workers_s`` = their wall / P: throughput, where ours is one
    call's latency). mbrl-lib's CEMOptimizer scores the whole population in one call per
    iteration, so a candidate split across processes would mean rewriting its loop around a
    scatter / gather per iteration — not how mbrl-lib is used; it is not offered."""
    devices = candidate_devices_for(cem_config(setting))  # None: one device
    planner, params, norms, obs, plans = cem_inputs(setting, 1, devices)
    p0, n0, o0, pl0 = first(params), first(norms), obs[0], plans[0]
    compiled, compile_s = compile_timed(jax.jit(planner), jax.random.key(0), p0, n0, o0, pl0)
    warm_s = timed(lambda: compiled(jax.random.key(0), p0, n0, o0, pl0))
    entry = {"ours_s": None, "peer_s": None, "setting": {"name": setting, **CEM_SETTINGS[setting]},
             "ours_compile_s": compile_s, "ours_warmup_s": warm_s,
             "ours_candidate_devices": len(devices) if devices else 1}
    worker, pool = peer.start(setting), None
    cem_spec = dict(cmd="setup", question="cem", obs_dim=OBS_DIM, act_dim=ACT_DIM, **CEM_SETTINGS[setting])
    if worker is not None:
        try:
            setup = worker.request(**cem_spec)
            entry.update(peer_start_s=worker.start_s, peer_import_s=worker.hello.get("import_s"),
                         peer_build_s=setup["build_s"], peer_warmup_s=setup["warmup_s"]["cem"],
                         peer_torch_threads=setup["torch_threads"])
        except PeerError as exc:
            peer.note(setting, str(exc))
            worker.close()
            worker = None
    if worker is not None and args.peer_workers > 1:
        pool = peer.start_pool(setting, args.peer_workers)
    if pool is not None:
        try:  # the start-state split: worker i plans from its own start state
            setups = pool.request_all([{**cem_spec, "worker": i} for i in range(len(pool.workers))])
            entry.update(peer_workers=len(pool.workers), peer_workers_start_s=pool.start_s,
                         peer_workers_warmup_s=[r["warmup_s"]["cem"] for r in setups],
                         peer_workers_torch_threads=[r["torch_threads"] for r in setups])
        except PeerError as exc:
            peer.note(setting, f"workers: {exc}")
            pool.close()
            pool = None
    ours, theirs, walls, pids, stagger = [], [], [], set(), []
    for rep in range(args.reps):
        key = jax.random.key(1 + rep)
        ours.append(timed(lambda: compiled(key, p0, n0, o0, pl0)))
        time.sleep(args.gap_s)
        if worker is not None:
            try:
                theirs.append(worker.request(cmd="run", variant="cem", rep=rep)["seconds"])
                time.sleep(args.gap_s)
            except PeerError as exc:
                peer.note(setting, str(exc))
                worker.close()
                worker = None
        if pool is not None:
            try:
                r = pool.run("cem", rep)
                walls.append(r["seconds"])
                pids.update(r["pids"])
                stagger.append(r["stagger_s"])
                time.sleep(args.gap_s)
            except PeerError as exc:
                peer.note(setting, f"workers: {exc}")
                pool.close()
                pool = None
        log(f"[cem {setting}] rep {rep}: ours {ours[-1]:.3f} s"
            + (f", peer {theirs[-1]:.3f} s" if len(theirs) == rep + 1 else "")
            + (f", peer workers {walls[-1]:.3f} s for {args.peer_workers} calls" if len(walls) == rep + 1 else ""))
    for proc in (worker, pool):
        if proc is not None:
            proc.close()
    entry["ours_s"] = summarize(ours)
    if theirs:
        entry["peer_s"] = summarize(theirs)
    # P concurrent calls' throughput: seconds per call = wall of the P calls / P.
    entry["peer_workers_wall_s"] = summarize(walls)
    entry["peer_workers_s"] = summarize(walls, scale=1 / args.peer_workers)
    entry["peer_worker_pids"] = sorted(pids)
    entry["peer_workers_stagger_s"] = summarize(stagger)
    entry["speedup_vs_peer"] = ratio(entry["peer_s"], entry["ours_s"])
    entry["peer_best_form"], entry["peer_best_s"] = best_form(entry, ("peer_s", "peer_workers_s"), higher_is_better=False)
    entry["speedup_vs_peer_best"] = ratio(entry["peer_best_s"], entry["ours_s"])
    return entry


def cem_batch_question(args, num_models):
    """One ``cem_batch["<M>"]`` entry (ours only): M models in one vmapped planning call vs one
    call per model; seconds per planned step per model."""
    setting = args.cem_batch_setting
    planner, params, norms, obs, plans = cem_inputs(setting, num_models)
    keys = jax.random.split(jax.random.key(1), num_models)
    layout = parse_layout(args.layout).resolve(width=CEM_SETTINGS[setting]["hidden"])
    batched, batched_compile_s = compile_timed(
        jax.jit(over_population(jax.vmap(planner), layout, width=CEM_SETTINGS[setting]["hidden"], per_model=planner)),
        keys, params, norms, obs, plans)
    single, single_compile_s = compile_timed(jax.jit(planner), keys[0], first(params), first(norms),
                                             obs[0], plans[0])
    per_model = [jax.tree.map(lambda a, i=i: a[i], (keys, params, norms, obs, plans)) for i in range(num_models)]

    def sequential():
        """One call per model, in order."""
        return [single(*m) for m in per_model]

    warm = {"batched": timed(lambda: batched(keys, params, norms, obs, plans)), "sequential": timed(sequential)}
    b, s = [], []
    for rep in range(args.reps):
        b.append(timed(lambda: batched(keys, params, norms, obs, plans)) / num_models)
        time.sleep(args.gap_s)
        s.append(timed(sequential) / num_models)
        time.sleep(args.gap_s)
        log(f"[cem_batch {num_models}] rep {rep}: batched {b[-1]:.4f}, sequential {s[-1]:.4f} s/step/model")
    return {"setting": setting, "num_models": num_models, "layout": vars(layout),
            "batched_compile_s": batched_compile_s,
            "single_compile_s": single_compile_s, "warmup_s": warm,
            "batched_per_step_s": summarize(b), "sequential_per_step_s": summarize(s),
            "speedup_batched_over_sequential": ratio(summarize(s), summarize(b))}


# --------------------------------------------------------------------------- seeds ---------


def seeds_question(args):
    """``seeds``: MBPO, ``--seeds-count`` seeds as one program (sharded over the host devices)
    against the sequential single-seed program in two forms: one stream on one device
    (``sequential_s``), and one stream per host device at once, each running its share of the
    seeds one after another (``sequential_streams_s``, Python threads: XLA runs the devices'
    programs concurrently), so the ratio can compare equal core counts."""
    from concurrent.futures import ThreadPoolExecutor

    from bench_mbpo import seed_programs
    from mismatch_jax.experiments import mbpo_compare

    progs = seed_programs(mbpo_compare.load_compare_config(args.seeds_config), args.seeds_count,
                          parse_layout(args.layout))
    keys, batched, single = progs["keys"], progs["batched"], progs["single"]
    devices = jax.devices()
    shares = split_work(args.seeds_count, len(devices))
    # Stream d: its block of seeds, committed to device d, and the program compiled for it.
    bounds = np.cumsum([0] + shares)
    stream_keys = [[jax.device_put(keys[i], devices[d]) for i in range(bounds[d], bounds[d + 1])]
                   for d in range(len(shares))]
    start = time.perf_counter()
    # Device 0's stream reuses the single-seed program (compiled there); the others compile their own.
    stream_progs = [single] + [jax.jit(progs["train"]).lower(ks[0]).compile() for ks in stream_keys[1:]]
    streams_compile_s = time.perf_counter() - start

    def sequential():
        """The single-seed program once per seed."""
        return [block(single(k)) for k in keys]

    def stream(d):
        """Stream d: its seeds one after another on device d."""
        return [block(stream_progs[d](k)) for k in stream_keys[d]]

    pool = ThreadPoolExecutor(len(shares))

    def streams():
        """Every stream at once; returns when the slowest is done."""
        return list(pool.map(stream, range(len(shares))))

    multi = len(shares) > 1  # one device: the streams form is the sequential form
    warm = {"one_program": timed(lambda: batched(keys)), "sequential": timed(sequential)}
    if multi:
        warm["sequential_streams"] = timed(streams)
    one, seq, par = [], [], []
    for rep in range(args.seeds_reps):
        one.append(timed(lambda: batched(keys)))
        time.sleep(args.gap_s)
        seq.append(timed(sequential))
        time.sleep(args.gap_s)
        if multi:
            par.append(timed(streams))
            time.sleep(args.gap_s)
        log(f"[seeds] rep {rep}: one program {one[-1]:.2f} s, sequential {seq[-1]:.2f} s"
            + (f", {len(shares)} sequential streams {par[-1]:.2f} s" if multi else ""))
    pool.shutdown()
    entry = {"config": os.path.relpath(args.seeds_config, ROOT), "num_seeds": args.seeds_count,
             "env_steps_per_seed": progs["config"].sac.total_env_steps, "layout": vars(progs["layout"]),
             "one_program_devices": progs["shards"],
             "one_program_compile_s": progs["vmapped_compile_s"], "single_compile_s": progs["single_compile_s"],
             "streams": len(shares), "stream_seeds": shares, "streams_compile_s": streams_compile_s,
             "warmup_s": warm, "one_program_s": summarize(one), "sequential_s": summarize(seq),
             "sequential_streams_s": summarize(par),
             "speedup_one_program_over_sequential": ratio(summarize(seq), summarize(one))}
    entry["baseline_best_form"], entry["baseline_best_s"] = best_form(
        entry, ("sequential_s", "sequential_streams_s"), higher_is_better=False)
    # The acceptance figure: the one program's seconds over the best baseline's (≤ 0.8 wanted).
    entry["one_program_over_best_baseline"] = ratio(entry["one_program_s"], entry["baseline_best_s"])
    return entry


# ----------------------------------------------------------------------- breakdown ---------


def breakdown_question(args, hidden, n, gemm):
    """``breakdown["<hidden>_<N>"]``: where our trainer's time goes at one size.

    Variants of one population training step (vmapped over the N models, ``--breakdown-steps``
    steps in a ``fori_loop``), each adding one piece of the trainer's ``model_step``:
    ``gemm`` (forward + backward of the MLP's matrix products alone; a trivial update),
    ``mlp`` (+ biases and activations),
    ``loss`` (+ input/target normalisation, the PETS NLL, weights, log-variance bounds),
    ``optimizer`` (+ Adam with L2 decay instead of the trivial update), ``gather`` (+ the
    per-step gather of the minibatch rows from the dataset), ``masking`` (+ the trainer's valid
    mask, finiteness checks, per-leaf selects, divergence flags and the population ``lax.cond``:
    the trainer's model_step as population.py writes it). ``validation`` is one vmapped
    validation chunk. Pieces = differences × (epochs × steps per epoch) or × (epochs + 1)
    evaluations × chunks; ``rest`` = the whole trainer − the pieces (scans, epoch bookkeeping,
    permutations, early-stopping state, dispatch)."""
    name = f"{hidden}_{n}"
    cfg = train_config(args, hidden)
    mcfg = cfg.model
    members = mcfg.ensemble_size
    data, num_train, num_val = train_data(args)
    steps = steps_per_epoch(num_train, args.batch_size)
    batch, loop_steps = args.batch_size, args.breakdown_steps
    loss_fn, gather_xy, eval_chunk, _ = make_model_steps(cfg)
    keys = model_keys(jax.random.key(0), 0, n)
    hp = TrainHParams.population(n)
    ds = jnp.zeros(n, jnp.int32)
    params0 = jax.vmap(lambda k: models.init(k, mcfg))(keys)
    opt_state0 = jax.vmap(lambda p, h: make_optimizer(cfg, h.learning_rate, h.weight_decay).init(p))(params0, hp)
    x_all, y_all = models.make_targets(mcfg, data.obs[0], data.action[0], data.next_obs[0])
    norm = models.fit_normalizer(mcfg, x_all, y_all, data.train_mask[0])
    norms = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), norm)
    # As the trainer: per-dataset row lists (valid rows first) and per-model epoch orders.
    train_rows = jnp.argsort(~data.train_mask, axis=1, stable=True).astype(jnp.int32)  # [M, T]
    val_rows = jnp.argsort(~data.val_mask, axis=1, stable=True).astype(jnp.int32)
    val_rows = jnp.pad(val_rows, ((0, 0), (0, batch)))
    orders = jax.vmap(lambda k: jnp.pad(jax.random.permutation(k, num_train).astype(jnp.int32),
                                        (0, steps * batch - num_train)))(keys)  # [N, steps·B]
    # The fixed minibatch of the variants without a gather: each model's own first slot.
    x_fix, y_fix = jax.vmap(lambda o: gather_xy(data, 0, train_rows[0, o[:batch]])[0])(orders)
    w_fix = jnp.ones((members, batch))
    act = models._ACTIVATIONS[mcfg.activation]

    def mlp_out(p, nm, x, linear=False):
        """Sum of the MLP's raw outputs: its forward + backward without the loss arithmetic
        (``linear``: the matrix products alone, no biases or activations)."""
        h = jnp.broadcast_to(models.normalize_inputs(nm, x), (members,) + x.shape)
        for i, (w, b) in enumerate(p.layers):
            h = jnp.einsum("ebi,eio->ebo", h, w)
            if not linear:
                h = h + b[:, None, :]
                if i < len(p.layers) - 1:
                    h = act(h)
        return h.sum()

    def sgd(p, g):
        """A trivial update so the loop carries a dependency (no optimizer)."""
        return jax.tree.map(lambda a, b: a - 1e-9 * b, p, g)

    def adam_step(p, s, nm, h, x, y, w):
        """The trainer's gradient_update: value_and_grad of the loss, Adam with L2 decay."""
        upd = gradient_update(loss_fn, make_optimizer(cfg, h.learning_rate, h.weight_decay))
        return upd(p, s, nm, x, y, w, h, None, None)

    def minibatch(order, d, i):
        """Rows, valid mask and slot start of step i (slot i % steps) of this model's order."""
        start = (i % steps) * batch
        slots = jax.lax.dynamic_slice(order, (start,), (batch,))
        rows = train_rows[d, slots]
        return rows, start + jnp.arange(batch) < num_train, start

    def v_gemm(p, s, nm, h, x, y, order, d, i):
        """Variant gemm."""
        return sgd(p, jax.grad(mlp_out)(p, nm, x, True)), s

    def v_mlp(p, s, nm, h, x, y, order, d, i):
        """Variant mlp."""
        return sgd(p, jax.grad(mlp_out)(p, nm, x)), s

    def v_loss(p, s, nm, h, x, y, order, d, i):
        """Variant loss."""
        return sgd(p, jax.grad(loss_fn)(p, nm, x, y, w_fix, h, None, None)), s

    def v_optimizer(p, s, nm, h, x, y, order, d, i):
        """Variant optimizer."""
        p, s, _ = adam_step(p, s, nm, h, x, y, w_fix)
        return p, s

    def v_gather(p, s, nm, h, x, y, order, d, i):
        """Variant gather."""
        rows, _, _ = minibatch(order, d, i)
        (x, y), _ = gather_xy(data, d, rows)
        w = jnp.broadcast_to(data.weight[d, rows], (members, batch))
        p, s, _ = adam_step(p, s, nm, h, x, y, w)
        return p, s

    def v_masking(p, s, nm, h, x, y, order, d, i):
        """Variant masking: population.model_step's valid mask, finiteness checks and selects."""
        rows, valid, start = minibatch(order, d, i)
        (x, y), _ = gather_xy(data, d, rows)
        w = jnp.broadcast_to(valid * data.weight[d, rows], (members, batch))
        new_p, new_s, loss = adam_step(p, s, nm, h, x, y, w)
        ok = (start < num_train) & jnp.isfinite(loss) & all_finite(new_p)
        return select(ok, new_p, p), select(ok, new_s, s)

    def loop(variant, cond=False):
        """jit: ``loop_steps`` population steps of ``variant`` in a fori_loop (vmapped over N)."""
        step_n = jax.vmap(variant, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None))

        def run(p, s):
            def body(i, carry):
                step = lambda c: step_n(*c, norms, hp, x_fix, y_fix, orders, ds, i)
                if cond:  # the trainer's population-level skip of empty slots
                    return jax.lax.cond((i % steps) * batch < num_train, step, lambda c: c, carry)
                return step(carry)
            return jax.lax.fori_loop(0, loop_steps, body, (p, s))
        return jax.jit(run)

    def eval_loop(p):
        """jit: ``loop_steps`` vmapped validation chunks (the start depends on the carry, so XLA
        cannot hoist the chunk out of the loop)."""
        def one(pm, nm, d, start):
            rows = jax.lax.dynamic_slice(val_rows[d], (start,), (batch,))
            return eval_chunk(pm, nm, data, d, rows, start + jnp.arange(batch) < num_val)

        def body(i, acc):
            start = jnp.where(acc == 12345.678, 1, 0)
            sums = jax.vmap(one, in_axes=(0, 0, 0, None))(p, norms, ds, start)
            return acc + sums.ll.sum() + sums.nll_member.sum()
        return jax.lax.fori_loop(0, loop_steps, body, jnp.zeros(()))

    variants = {"gemm": loop(v_gemm), "mlp": loop(v_mlp), "loss": loop(v_loss), "optimizer": loop(v_optimizer),
                "gather": loop(v_gather), "masking": loop(v_masking, cond=True)}
    compiled, compile_s = {}, {}
    for key, fn in variants.items():
        compiled[key], compile_s[key] = compile_timed(fn, params0, opt_state0)
    compiled["validation"], compile_s["validation"] = compile_timed(jax.jit(eval_loop), params0)
    compiled["trainer"], compile_s["trainer"] = compile_timed(jax.jit(make_train_fn(cfg)), keys, None, data, hp, ds)
    calls = {key: (lambda c=compiled[key]: c(params0, opt_state0)) for key in variants}
    calls["validation"] = lambda: compiled["validation"](params0)
    calls["trainer"] = lambda: compiled["trainer"](keys, None, data, hp, ds)
    for call in calls.values():
        block(call())
    times = {key: [] for key in calls}
    for rep in range(args.reps):
        for key, call in calls.items():  # round robin: every variant sees the same load
            times[key].append(timed(call) / (1 if key == "trainer" else loop_steps))
        log(f"[breakdown {name}] rep {rep}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in times.items()))
    # Differences of small pieces drown in the noise of a shared machine: take each variant's
    # least-disturbed (minimum) call; the medians are in per_call_s.
    best = {key: float(np.min(v)) for key, v in times.items()}
    train_steps = args.epochs * steps
    eval_chunks = (args.epochs + 1) * -(-num_val // batch)
    pieces = {
        "gemm": best["gemm"] * train_steps,
        "bias_activation": (best["mlp"] - best["gemm"]) * train_steps,
        "loss": (best["loss"] - best["mlp"]) * train_steps,
        "optimizer": (best["optimizer"] - best["loss"]) * train_steps,
        "gather": (best["gather"] - best["optimizer"]) * train_steps,
        "masking": (best["masking"] - best["gather"]) * train_steps,
        "validation": best["validation"] * eval_chunks,
    }
    pieces["rest"] = best["trainer"] - sum(pieces.values())
    train_flops = n * train_steps * 3 * mcfg.flops_per_example() * batch  # full batches, as computed
    return name, {
        "hidden": hidden, "num_models": n, "steps_per_epoch": steps, "train_steps": train_steps,
        "validation_chunks": eval_chunks, "loop_steps": loop_steps, "compile_s": compile_s,
        "per_call_s": {key: summarize(v) for key, v in times.items()},
        "trainer_s": best["trainer"], "pieces_from": "min over repetitions", "pieces_s": pieces,
        "pieces_fraction": {k: v / best["trainer"] for k, v in pieces.items()},
        "gemm_ideal_s": train_flops / (gemm["median"] * 1e9),
        "gemm_fraction": train_flops / max(pieces["gemm"], 1e-12) / (gemm["median"] * 1e9),
    }


# ---------------------------------------------------------------------------- main ---------


def gemm_references(args, refs, dot_rates, peer):
    """The physical references, round robin × ``--reps``: a ``--gemm-size``² float32 ``jnp.dot``
    (``gemm_gflops``), ``torch.mm`` with torch's default threads (``torch_mm_gflops``) and with
    one thread (``torch_mm_gflops_1thread``, what each of the P workers has); GFLOP/s."""
    dots, mms = [], {key: [] for key in refs}
    for _ in range(args.reps):
        dots += dot_rates(1)
        for key, ref in refs.items():
            if ref is None:
                continue
            try:
                mms[key] += ref.request(cmd="gemm", size=args.gemm_size, reps=1)["gflops"]
            except PeerError as exc:
                peer.note("gemm", str(exc))
                refs[key] = None
    out = {"gemm_gflops": {**summarize(dots), "size": args.gemm_size}}
    out.update({key: summarize(v) for key, v in mms.items()})
    log("[gemm] GFLOP/s (median): " + ", ".join(f"{k} {v['median']:.1f}" for k, v in out.items() if v))
    return out


def median_of(summary):
    """The median of a summary, or None."""
    return summary["median"] if summary else None


def summary_rows(report):
    """One row per acceptance question: ours, every peer form's median, the best form, our ratio
    against it (a speed-up: > 1 means ours is faster; for seeds the one program's time over the
    best baseline's)."""
    rows = []
    for name, e in report.get("train", {}).items():
        rows.append({"row": f"train {name}", "unit": "model-steps/s", "ours": median_of(e["ours"]),
                     "peer_forms": {f: median_of(e.get(f)) for f in PEER_TRAIN_FORMS},
                     "peer_best_form": e["peer_best_form"], "speedup_vs_peer_best": e["speedup_vs_peer_best"]})
    for name, e in report.get("cem", {}).items():
        rows.append({"row": f"cem {name}", "unit": "s per call", "ours": median_of(e["ours_s"]),
                     "peer_forms": {f: median_of(e.get(f)) for f in ("peer_s", "peer_workers_s")},
                     "peer_best_form": e["peer_best_form"], "speedup_vs_peer_best": e["speedup_vs_peer_best"]})
    if "seeds" in report:
        e = report["seeds"]
        rows.append({"row": f"seeds {e['num_seeds']}", "unit": "s", "ours": median_of(e["one_program_s"]),
                     "peer_forms": {f: median_of(e.get(f)) for f in ("sequential_s", "sequential_streams_s")},
                     "peer_best_form": e["baseline_best_form"],
                     "one_program_over_best_baseline": e["one_program_over_best_baseline"]})
    return rows


def format_row(row):
    """A summary row as one line."""
    def num(v):
        return "—" if v is None else f"{v:.4g}"
    forms = ", ".join(f"{f} {num(v)}" for f, v in row["peer_forms"].items())
    key = "speedup_vs_peer_best" if "speedup_vs_peer_best" in row else "one_program_over_best_baseline"
    return (f"[summary] {row['row']} ({row['unit']}): ours {num(row['ours'])}; {forms}; "
            f"best {row['peer_best_form']}; {key} {num(row[key])}")


def with_load(question, *args):
    """``question(*args)``, its entry (the entry of a (name, entry) pair) with the load average
    at its start and end (``loadavg_start`` / ``loadavg_end``)."""
    load = list(os.getloadavg())
    out = question(*args)
    entry = out[1] if isinstance(out, tuple) else out
    entry.update(loadavg_start=load, loadavg_end=list(os.getloadavg()))
    return out


def write_out(path, report):
    """Atomically write the report so far (a timed-out run still leaves what it finished)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    """Run the selected questions and print one JSON object."""
    args = parse_args(argv)
    wall = time.perf_counter()
    dev = jax.devices()[0]
    report = {
        "benchmark": "compare_peer", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "platform": dev.platform, "device_kind": dev.device_kind, "jax": jax.__version__,
        "cpu_count": os.cpu_count(), "num_devices": len(jax.devices()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg_start": list(os.getloadavg()),
        "config": {k: v for k, v in vars(args).items() if k not in ("peer_python",)},
        "notes": [],
    }
    peer = Peer(args, report)
    refs = {key: peer.start("gemm", threads=threads) for key, threads in (("torch_mm_gflops", 0),
                                                                          ("torch_mm_gflops_1thread", 1))}
    dot_rates = gemm_timer(args.gemm_size)
    report.update(gemm_references(args, refs, dot_rates, peer))
    gemm = report["gemm_gflops"]
    write_out(args.out, report)
    hiddens, ns = ints(args.hidden), ints(args.num_models)
    if "train" in args.sections:
        report["train"] = {}
        for hidden in hiddens:
            for n in ns:
                name, entry = with_load(train_question, args, peer, hidden, n, gemm)
                report["train"][name] = entry
                write_out(args.out, report)
    if "cem" in args.sections:
        report["cem"] = {}
        for setting in args.cem_settings.split(","):
            report["cem"][setting] = with_load(cem_question, args, peer, setting)
            write_out(args.out, report)
    if "cem_batch" in args.sections:
        report["cem_batch"] = {}
        for m in ints(args.cem_batch):
            report["cem_batch"][str(m)] = cem_batch_question(args, m)
            write_out(args.out, report)
    if "breakdown" in args.sections:
        report["breakdown"] = {}
        for hidden, n in args.breakdown_at:
            name, entry = breakdown_question(args, hidden, n, gemm)
            report["breakdown"][name] = entry
            write_out(args.out, report)
    if "seeds" in args.sections:  # last: the longest compile
        report["seeds"] = with_load(seeds_question, args)
        write_out(args.out, report)
    report.update({f"{k}_end": v for k, v in gemm_references(args, refs, dot_rates, peer).items()})
    for ref in refs.values():
        if ref is not None:
            ref.close()
    report["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - wall
    report["summary"] = summary_rows(report)
    for row in report["summary"]:
        log(format_row(row))
    report["notes"].append(
        "same arithmetic: our trainer computes a full batch of which the last minibatch's padded rows "
        "are masked; it is counted as one model-step on both sides and the FLOPs count only the rows "
        "the peer computes. The peer's N-member ensemble shares its log-variance bounds across "
        "members (mbrl-lib) and decays every parameter (torch Adam weight_decay); ours decays weights "
        "only. Peer expectation propagation samples noise around the members' averaged Gaussian; ours "
        "propagates the mean.")
    write_out(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
