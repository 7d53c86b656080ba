#!/usr/bin/env bash
# The JAX side of benchmarks/compare_peer.py on a GPU machine, in at most ~8 minutes (no peer:
# mbrl-lib runs on the CPU and is compared on the CPU machine). Prints the same JSON object and,
# when $OUT is set, writes it to $OUT/gpu_check.json (written after every section, so a run cut
# by the time limit still leaves what it finished). Not used by the tests.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root
#   PYTHON=/path/to/python OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Sizes: training hidden 32 and 200 (4 layers) × N 64 (small) / 256 / 1024 (≈ the paper's
# 1008-model population); the two paper CEM settings (expectation h30, TS∞ h15 × 20 particles;
# ensemble 5 × 4 × 200, population 500); vmapped planning for 8 / 64 / 256 models; the training
# breakdown at hidden 200, N 256; MBPO 8 seeds one program vs sequential (quick Pendulum config,
# 3 repetitions) last, as it compiles longest. Override the time limit with GPU_CHECK_LIMIT_S.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
out_dir="${OUT:-$(mktemp -d)}"
mkdir -p "$out_dir"
out_file="$out_dir/gpu_check.json"
limit="${GPU_CHECK_LIMIT_S:-450}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import jax; print('gpu_check: jax', jax.__version__, jax.devices(), flush=True)" >&2 || exit 1
timeout --signal=TERM --kill-after=15 "$limit" "$PYTHON" benchmarks/compare_peer.py --no-peer \
  --only gemm,train,cem,cem_batch,breakdown,seeds --reps 5 --devices 1 \
  --hidden 32,200 --num-models 64,256,1024 \
  --cem-settings expectation_h30,tsinf_h15_p20 --cem-batch 8,64,256 --cem-batch-setting expectation_h30 \
  --breakdown-sizes 200_256 --seeds-count 8 --seeds-reps 3 --gap-s 0.05 \
  --out "$out_file" > "$out_dir/gpu_check.stdout"
rc=$?
if [[ $rc -eq 0 ]]; then
  cat "$out_dir/gpu_check.stdout"
elif [[ -s "$out_file" ]]; then
  echo "gpu_check: compare_peer.py stopped (rc $rc, limit ${limit}s); the sections it finished:" >&2
  cat "$out_file"
else
  echo "gpu_check: compare_peer.py failed (rc $rc) before writing any result" >&2
fi
exit $rc
