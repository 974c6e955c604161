#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned requirements + boneseg (editable).
# Quick when already done: a stamp of the requirements' hash skips pip entirely.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# nothing phones home (see docs/privacy.md); exported for every command run after set-up
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_DISABLE_TELEMETRY=1 \
       RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1
stamp=.venv/.boneseg-requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/boneseg ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing pinned requirements into .venv (first time: ~3 min, ~6.6 GB)" >&2
# pip warns about each missing local index folder on this machine; keep the log readable
.venv/bin/python -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location 'file:" >&2 || true
.venv/bin/python -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location 'file:" >&2 || true
.venv/bin/python -c "import torch, timm, ray, mlflow, dvc, nibabel, pydantic, scipy, boneseg" \
  || { echo "setup: the installed environment does not import; see pip's output above" >&2; exit 1; }
echo "$want" > "$stamp"
