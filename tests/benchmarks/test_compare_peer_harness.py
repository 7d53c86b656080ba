"""The peer comparison's harness (benchmarks/compare_peer.py) at a tiny size: the work split and
model-step accounting without torch, and — where the PyTorch peer venv exists (never in CI) —
that the multi-worker peer really runs P one-thread processes and that every form does the
model-steps its row claims."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_common  # noqa: E402  (NumPy only)
from bench_common import (best_form, concurrent_wall, split_sizes, split_work, steps_per_epoch,  # noqa: E402
                          train_model_steps)


def test_split_work_is_even_and_complete():
    assert split_work(64, 2) == [32, 32]
    assert split_work(5, 2) == [3, 2]
    assert split_work(7, 3) == [3, 2, 2]
    assert split_work(1, 2) == [1]  # never an empty share
    for total in range(1, 20):
        for parts in range(1, 6):
            shares = split_work(total, parts)
            assert sum(shares) == total and max(shares) - min(shares) <= 1 and min(shares) >= 1
    with pytest.raises(ValueError, match="total >= 1"):
        split_work(0, 2)


def test_model_steps_of_the_default_row_and_of_its_shares():
    # compare_peer's defaults: 2048 rows, 10 % validation, batch 256, 5 epochs, N = 64.
    num_train, num_val = split_sizes(2048, 0.1)
    assert (num_train, num_val) == (1844, 204)
    steps = steps_per_epoch(num_train, 256)
    assert steps == 8  # 7 full minibatches and a partial one, as mbrl-lib's iterator yields them
    assert train_model_steps(64, 5, steps) == 2560
    # The multi-worker forms do the one-process forms' work: their shares add up to the same steps.
    for parts in (1, 2, 3, 16):
        assert sum(train_model_steps(m, 5, steps) for m in split_work(64, parts)) == 2560


def test_concurrent_wall_is_first_start_to_last_end():
    replies = [{"t_start": 10.0, "t_end": 12.5}, {"t_start": 10.2, "t_end": 13.0}]
    assert concurrent_wall(replies) == pytest.approx(3.0)


def test_best_form_picks_the_fastest_median():
    entry = {"a": {"median": 3.0}, "b": {"median": 5.0}, "c": None}
    assert best_form(entry, ("a", "b", "c"), higher_is_better=True) == ("b", {"median": 5.0})
    assert best_form(entry, ("a", "b", "c"), higher_is_better=False) == ("a", {"median": 3.0})
    assert best_form(entry, ("c", "d"), higher_is_better=True) == (None, None)


PEER_PYTHON = os.environ.get("PEER_PYTHON", str(BENCH.parent / ".peer-venv" / "bin" / "python"))


@pytest.mark.skipif(not os.path.exists(PEER_PYTHON),
                    reason="the PyTorch peer venv is absent (bash benchmarks/setup_peer_venv.sh creates it)")
def test_multi_worker_peer_runs_p_processes_and_the_same_model_steps():
    from peer_pool import PeerPool

    spec = dict(cmd="setup", question="train", hidden=8, layers=2, epochs=1, batch_size=16, rows=64,
                obs_dim=bench_common.OBS_DIM, act_dim=bench_common.ACT_DIM, validation_fraction=0.1)
    n, seq, p = 4, 2, 2
    steps = steps_per_epoch(split_sizes(64, 0.1)[0], 16)
    pool = PeerPool(PEER_PYTHON, p, threads=1)
    try:
        shares_b, shares_s = split_work(n, p), split_work(seq, p)
        setups = pool.request_all([{**spec, "worker": i, "num_models": shares_b[i], "seq_models": shares_s[i]}
                                   for i in range(p)])
        assert [r["torch_threads"] for r in setups] == [1] * p
        multi = {variant: pool.run(variant, rep=0) for variant in ("batched", "sequential")}
        # The one-process forms' work, done by one worker set up with the whole population
        # (their accounting does not depend on the thread count; it saves a third torch import).
        one = pool.workers[0]
        one.request(**spec, num_models=n, seq_models=seq)
        for variant, models in (("batched", n), ("sequential", seq)):
            single = one.request(cmd="run", variant=variant, rep=0)
            pids = multi[variant]["pids"]
            assert len(set(pids)) == p and os.getpid() not in pids and pids == pool.pids
            assert multi[variant]["torch_threads"] == [1] * p
            assert single["model_steps"] == multi[variant]["model_steps"] == train_model_steps(models, 1, steps)
            assert single["models"] == multi[variant]["models"] == models
            assert multi[variant]["seconds"] >= max(multi[variant]["per_worker_s"])
        assert len(one.request(cmd="gemm", size=64, reps=2)["gflops"]) == 2
    finally:
        pool.close()


def test_results_table_quotes_the_json():
    import peer_results_table

    def s(median, lo, hi):
        return {"median": median, "min": lo, "max": hi}

    report = {"command": "python compare_peer.py", "wall_s": 812.4, "loadavg_start": [0.31, 0, 0],
              "loadavg_end": [1.92, 0, 0], "num_devices": 2, "config": {"peer_workers": 2, "reps": 9},
              "gemm_gflops": s(160, 150, 170), "torch_mm_gflops": s(150, 140, 155),
              "torch_mm_gflops_1thread": s(80, 78, 81), "gemm_gflops_end": s(161, 150, 170),
              "torch_mm_gflops_end": s(151, 140, 155),
              "train": {"200_64": {"layers": 4, "ours": s(625.3, 604, 653), "gemm_fraction": s(0.612, 0.58, 0.65),
                                   "peer_batched": s(392, 370, 403), "peer_sequential": s(245, 162, 247),
                                   "peer_workers_batched": s(510.6, 480, 530), "peer_workers_sequential": None,
                                   "peer_best_form": "peer_workers_batched", "speedup_vs_peer_best": 1.2246}},
              "seeds": {"num_seeds": 8, "one_program_devices": 2, "one_program_s": s(5.88, 5.68, 6.57),
                        "sequential_s": s(12.81, 11.91, 13.41), "sequential_streams_s": s(6.5, 6.4, 7.1),
                        "baseline_best_form": "sequential_streams_s", "one_program_over_best_baseline": 0.9046}}
    head, blank, *table = peer_results_table.render(report).splitlines()
    assert head.startswith("`python compare_peer.py` (812 s; load 0.31 → 1.92; 2 host devices; P = 2 peer workers;")
    assert "`torch.mm` 1 thread 80.0 (78.0–81.0)" in head and blank == ""
    assert table[2] == (
        '| training, 4 × 200, N = 64, model-steps/s (`train["200_64"]`) | 625 (604–653); gemm_fraction 0.61 '
        '(0.58–0.65) | 1 process, batched `GaussianMLP(ensemble_size=N)` 392 (370–403); 1 process, sequential '
        '245 (162–247); **P workers, batched `GaussianMLP(ensemble_size=N/P)` 511 (480–530)**; P workers, '
        'sequential — | **1.22×** |')
    assert table[3] == (
        "| MBPO, 8 seeds in one program (over 2 devices), s (`seeds`) | 5.88 (5.68–6.57) | sequential, one "
        "device 12.8 (11.9–13.4); **P streams at once, one per device 6.50 (6.40–7.10)** | **0.90×** of the best |")
