#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu_check.py): at most 8 minutes on one GPU; writes
# OUT/gpu_check.json and OUT/gpu_check.md. Run it once on a GPU machine:
#   bash bench/gpu_check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout 480 "$PY" bench/gpu_check.py --out "$OUT" --budget-s 240
