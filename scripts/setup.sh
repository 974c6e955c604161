#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned requirements + boneseg (editable).
# A stamp of the requirements' hash, written only after a complete install that imports,
# makes the next run a no-op (well under 2 s); a failed or interrupted install leaves no
# stamp, so the next run installs again.
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
rm -f "$stamp"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing pinned requirements into .venv (first time: ~3 min, ~6.6 GB; torch is most of it)" >&2
pip_quiet() {  # pip warns about each missing local index folder on this machine; keep the log readable
  local rc
  set +e
  .venv/bin/python -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location 'file:" >&2
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
pip_quiet -r requirements.txt || { echo "setup: pip could not install requirements.txt (see above); run again" >&2; exit 1; }
pip_quiet --no-deps -e . || { echo "setup: pip could not install boneseg itself (see above)" >&2; exit 1; }
.venv/bin/python -c "import torch, timm, ray, mlflow, dvc, nibabel, monai, pydicom, highdicom, pydantic, scipy, rich, boneseg" \
  || { echo "setup: the installed environment does not import; see pip's output above" >&2; exit 1; }
.venv/bin/ruff --version > /dev/null
echo "$want" > "$stamp"
