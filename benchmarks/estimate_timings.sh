#!/usr/bin/env bash
# How long `mismatch-jax estimate` takes for every packaged sweep config (issue 26: < 60 s each on
# a 2-core CPU). One run per config, one after the other (the estimate keeps no compilation
# cache: every run compiles from scratch); prints one
# JSON line per config: wall and user seconds (/usr/bin/time), load average before and after.
#   bash benchmarks/estimate_timings.sh > benchmarks/results/estimate_timings.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for path in ${CONFIGS:-sweeps/*.toml}; do
  name=$(basename "$path" .toml)
  "$python" -c "import sys; from mismatch_jax.sweep.config import load; load(sys.argv[1])" "$path" 2>/dev/null || continue
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -f "%e %U" -o "$scratch/time" \
    "$python" -m mismatch_jax.cli estimate "$name" > "$scratch/out" 2>&1 || { echo "{\"config\": \"$name\", \"error\": true}"; continue; }
  read -r wall user < "$scratch/time"
  echo "{\"config\": \"$name\", \"wall_s\": $wall, \"user_s\": $user, \"load_before\": $load_before, \"load_after\": $(cut -d' ' -f1 /proc/loadavg)}"
done
