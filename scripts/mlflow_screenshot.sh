#!/usr/bin/env bash
# A screenshot of the MLflow UI's comparison of the four variants, from a real `mlflow ui`
# on 127.0.0.1 and headless Chromium (Debian's `chromium`: apt-get install chromium).
#   bash scripts/mlflow_screenshot.sh [STORE_URI] [OUT_PNG]
# defaults: sqlite:///mlflow.db (the main command's store), docs/img/mlflow_variants.png
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite:///mlflow.db}
out=${2:-docs/img/mlflow_variants.png}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "mlflow_screenshot: no chromium; apt-get install chromium" >&2; exit 1; }
port=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
exp_id=$(MLFLOW_TRACKING_URI="$store" .venv/bin/python -c "
import mlflow; e = mlflow.MlflowClient().get_experiment_by_name('boneseg'); print(e.experiment_id if e else '')")
[ -n "$exp_id" ] || { echo "mlflow_screenshot: no experiment 'boneseg' in $store; run the sweep first" >&2; exit 1; }
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow ui --backend-store-uri "$store" \
  --host 127.0.0.1 --port "$port" --workers 1 > /tmp/mlflow_screenshot_server.log 2>&1 &
server=$!
trap 'kill -- -$server 2>/dev/null || true' EXIT
for _ in $(seq 90); do
  curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
  sleep 1
done
# the runs table of the experiment, one row per variant of the last finished sweep (results/trials/index.json),
# best first (the experiment's note says the same)
sweep=$(.venv/bin/python -c "import json; print(json.load(open('results/trials/index.json'))['sweep_run_id'])" \
        2>/dev/null || true)
filter="tags.level = 'variant'${sweep:+ and tags.sweep_id = '$sweep'}"
enc=$(.venv/bin/python -c "import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=''))" "$filter")
query="searchFilter=$enc&orderByKey=metrics.%60bone_dice_mean%60&orderByAsc=false&compareRunsMode=${MODE:-CHART}"
url="http://127.0.0.1:$port/#/experiments/$exp_id/runs?$query"
profile=$(mktemp -d)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=${WINDOW:-2200,1000} --virtual-time-budget=${BUDGET_MS:-90000} --screenshot="$out" "$url" 2>/dev/null
rm -rf "$profile"
echo "mlflow_screenshot: $out ($url)"
