#!/usr/bin/env bash
# A small MLflow tracking server for one person, on this host only. Point boneseg at it with
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
# It has no authentication, so it refuses any address but loopback: a team uses
# infra/team/ (basic auth, per-member accounts). MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# and --workers 1 keep it at ~0.5 GiB (the default starts 15 processes and ~2.6 GiB).
# Telemetry stays off.
set -euo pipefail
HOST=${HOST:-127.0.0.1}
case "$HOST" in
  127.0.0.1|localhost|::1) ;;
  *) echo "server.sh: HOST=$HOST: this server has no authentication, so it serves loopback only." \
          "For other hosts run the team stack (infra/team/up.sh: basic auth, per-member accounts)." >&2
     exit 2 ;;
esac
STORE=${STORE:-$PWD/mlflow-server}
mkdir -p "$STORE"
export MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" \
  --artifacts-destination "$STORE/artifacts" \
  --host "$HOST" --port "${PORT:-5000}" --workers "${WORKERS:-1}"
