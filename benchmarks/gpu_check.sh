#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): bf16/fp32 agreement, tiles/s for S/B/L, the
# backbone's share of the GPU's bf16 peak, fine-tune steps/s with and without cached features, a 1-GPU
# torchrun smoke run; writes benchmarks/results/gpu_<device>.json. Random weights only, no downloads.
#   benchmarks/gpu_check.sh              # on a GPU machine, < 5 min
#   benchmarks/gpu_check.sh --dry-run    # the same code paths on the CPU at tiny sizes
# PYTHON picks the interpreter (default: the repository's .venv if there, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 600 "$python" "$here/gpu_check.py" "$@"
