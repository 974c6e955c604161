#!/usr/bin/env bash
# A taste of the whole pipeline (raw -> propose -> labels -> splits -> slices -> pretrain ->
# sweep -> report) on the smoke experiment (6 tiny CTs, 64 px slices, 1 epoch, 2 folds) in a
# folder of its own. The repository's data/, results/ and mlflow.db are not touched.
# Its scores mean nothing: it shows the plumbing working, not a model.
#   bash scripts/taste.sh [OUT_DIR]      (default: a new folder under /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_DISABLE_TELEMETRY=1 \
       RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
out=$(realpath -m "${1:-$(mktemp -d /tmp/boneseg-taste.XXXXXX)}")
mkdir -p "$out/corrections"
set_paths=(
  --experiment "$PWD/experiments/smoke.yaml"
  --set "data.raw_dir=$out/raw" --set "data.labels_dir=$out/labels" --set "data.corrections_dir=$out/corrections"
  --set "data.proposals_dir=$out/proposals"
  --set "data.splits_file=$out/splits.json" --set "data.slices_dir=$out/slices"
  --set "model.thigh_weights=$out/pretrain/thigh_encoder.safetensors" --set "train.out_dir=$out/train"
  --set "tracking.uri=sqlite:///$out/mlflow.db" --set "sweep.storage_path=$out/ray_results"
  --set "sweep.metrics_file=$out/results/metrics.json" --set "sweep.folds_file=$out/results/folds.csv"
  --set "sweep.curves_file=$out/results/curves.json"
  --set "sweep.model_dir=$out/results/model" --set "sweep.trials_dir=$out/results/trials"
  --set "report.out_dir=$out/results/report"
)
start=$(date +%s)
for stage in raw propose labels splits slices pretrain sweep report; do
  echo "taste: $stage"
  (cd "$out" && MLFLOW_TRACKING_URI= "$OLDPWD/.venv/bin/boneseg" --params "$OLDPWD/params.yaml" \
      "${set_paths[@]}" "$stage" > "$out/$stage.log" 2>&1) \
    || { echo "taste: $stage failed; see $out/$stage.log" >&2; tail -20 "$out/$stage.log" >&2; exit 1; }
done
echo "taste: the whole pipeline in $(( $(date +%s) - start )) s (smoke experiment: the scores mean nothing)"
echo "  scores:  $out/results/metrics.json"
echo "  report:  $out/results/report/index.html"
echo "  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///$out/mlflow.db"
