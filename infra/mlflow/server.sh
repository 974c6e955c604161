#!/usr/bin/env bash
# A small MLflow tracking server for a team (one host). Point boneseg at it with
#   export MLFLOW_TRACKING_URI=http://<host>:5000
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false and --workers 1 keep it at ~0.5 GiB (the
# default starts 15 processes and ~2.6 GiB). Telemetry stays off.
set -euo pipefail
STORE=${STORE:-$PWD/mlflow-server}
mkdir -p "$STORE"
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" \
  --artifacts-destination "$STORE/artifacts" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers "${WORKERS:-1}"
