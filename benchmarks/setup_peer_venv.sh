#!/usr/bin/env bash
# Creates the PyTorch peer environment (mbrl-lib 0.2.0) that benchmarks/compare_peer.py runs as its
# worker (benchmarks/peer_mbrl.py), at $PEER_VENV (default .peer-venv beside this repo's root;
# compare_peer.py takes --peer-python or reads $PEER_PYTHON). mbrl 0.2.0 pins old gym/omegaconf
# versions that do not resolve on Python 3.11, so it is installed without its dependencies and the
# few it imports at run time are listed here. torch is the CPU build ($PEER_TORCH, default
# 2.13.0+cpu, the version measured), from PyTorch's CPU index when that index answers (or from a
# local wheel pip already sees); if no such build can be found, the default torch wheel is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PEER_VENV:-$root/.peer-venv}"
cpu_index="https://download.pytorch.org/whl/cpu"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q)
if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$cpu_index/', timeout=10)" 2>/dev/null; then
  torch_index=(--extra-index-url "$cpu_index")
else
  echo "note: $cpu_index is not reachable; looking for the CPU build on pip's other indexes" >&2
  torch_index=()
fi
torch_spec="torch==${PEER_TORCH:-2.13.0+cpu}"
if ! "${pip[@]}" "${torch_index[@]}" "$torch_spec"; then
  echo "note: $torch_spec not found; installing the default torch wheel" >&2
  torch_spec="torch"
  "${pip[@]}" "$torch_spec"
fi
"${pip[@]}" "${torch_index[@]}" "numpy<2" "$torch_spec" "gymnasium==0.26.3" hydra-core omegaconf termcolor tqdm
"${pip[@]}" --no-deps "mbrl==0.2.0"
"$venv/bin/python" -c "import mbrl.models, mbrl.planning, torch; print('peer ok: torch', torch.__version__)"
echo "peer interpreter: $venv/bin/python  (export PEER_PYTHON=$venv/bin/python)"
