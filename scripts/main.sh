#!/usr/bin/env bash
# The README main command: set-up (idempotent), then the whole pipeline on the embedded
# defaults (synthetic cohort, local Ray, MLflow in sqlite:///mlflow.db) via `dvc repro`.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/setup.sh
setup_s=$(( $(date +%s) - t0 ))
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_DISABLE_TELEMETRY=1 \
       RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -d .git ]; then
  echo "main: dvc needs a git checkout; clone the repository instead of copying it" >&2; exit 1
fi
mkdir -p -m 700 .boneseg  # git-ignored, private: this project's state (the id map, locks, logs)
log=.boneseg/main.log
echo "main: set-up ${setup_s} s" > "$log"
start=$(date +%s)
# stderr (each stage's "finished in" line) is also kept for bench/main_budget.py; stdout stays
# the terminal, so the sweep can show its live view
dvc repro "$@" 2> >(tee -a "$log" >&2)
echo "main: pipeline $(( $(date +%s) - start )) s" | tee -a "$log"
dvc metrics show results/metrics.json
echo "report: results/report/index.html; new CTs: boneseg segment --input CT --output SEG --model results/model"
