#!/usr/bin/env bash
# Creates the PyTorch peer environment (mbrl-lib 0.2.0) that bench_train.py / bench_cem.py compare
# against, at $PEER_VENV (default .peer-venv beside this repo's root; the benchmarks take
# --peer-python or read $PEER_PYTHON). mbrl 0.2.0 pins old gym/omegaconf versions that do not
# resolve on Python 3.11, so it is installed without its dependencies and the few it imports at
# run time are listed here (versions that were measured: torch 2.13.0, gymnasium 0.26.3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PEER_VENV:-$root/.peer-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "numpy<2" torch "gymnasium==0.26.3" hydra-core omegaconf termcolor tqdm
"$venv/bin/pip" install -q --no-deps "mbrl==0.2.0"
echo "peer interpreter: $venv/bin/python  (export PEER_PYTHON=$venv/bin/python)"
