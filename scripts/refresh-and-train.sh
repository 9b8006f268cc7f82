#!/usr/bin/env bash
# Scheduled refresh: rebuild the dataset incrementally, then train only if it changed.
#   crontab: 30 1 * * 0  /srv/longctx/scripts/refresh-and-train.sh >> /var/log/longctx.log 2>&1
# Exit codes: those of pipeline.run when the refresh did not finish (README "Exit status": 2 fix
# the job, 3 an input is missing or empty, 4 the data would shrink, 5 another run holds the
# folder, 6 disk full, 1 failure); then 0 done (or nothing new), else train.launch's status.
# Training never starts on a refresh that did not exit 0, nor on a dataset that fails validation.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE_CONFIG=${PIPELINE_CONFIG:-configs/pipeline/mixed-64k.yaml}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/llama-3.2-1b-64k.yaml}
DATA=${DATA:-/data/longctx-64k}
INPUTS=${INPUTS:---books /srv/books --repos-root /srv/repos}  # the folders that keep changing
shards() {  # the checksums of the shards: equal exactly when the samples are equal
  python -c 'import json,sys; print([s["sha256"] for s in json.load(open(sys.argv[1]))["shards"]])' \
    "$DATA/manifest.json" 2>/dev/null || true
}
before=$(shards)
status=0
# shellcheck disable=SC2086  # INPUTS holds several flags
python -m pipeline.run --config "$PIPELINE_CONFIG" $INPUTS --output "$DATA" --incremental --quiet \
  || status=$?
if [ "$status" -ne 0 ]; then
  case $status in
    2) why="the job's configuration is unusable" ;;
    3) why="an input is missing or yields nothing (unmounted?)" ;;
    4) why="the dataset would shrink past --shrink-threshold (check the inputs, then --allow-shrink)" ;;
    5) why="another run holds $DATA" ;;
    6) why="not enough disk space for $DATA" ;;
    *) why="the pipeline failed" ;;
  esac
  echo "$(date -u +%FT%TZ) refresh exited $status: $why; no training run ($DATA left as it was)" >&2
  exit "$status"
fi
if ! python -m pipeline.validate "$DATA" >&2; then
  echo "$(date -u +%FT%TZ) $DATA fails validation; no training run" >&2
  exit 1
fi
after=$(shards)
if [ "$before" = "$after" ]; then
  echo "$(date -u +%FT%TZ) dataset unchanged; no training run"
  exit 0
fi
python -m train.launch --config "$TRAIN_CONFIG" --data "$DATA" --output-dir "runs/$(date -u +%Y%m%d-%H%M)"
