#!/usr/bin/env bash
# The README test command: set-up (idempotent), ruff, then the whole test suite, integration included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_DISABLE_TELEMETRY=1 \
       RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
# lint first (a small rule set, pyproject.toml [tool.ruff]), then every test
.venv/bin/ruff check platform tests bench infra
exec .venv/bin/python -m pytest tests --durations=15 "$@"
