#!/usr/bin/env bash
# Scheduled refresh: rebuild the dataset incrementally, then train only if it changed.
#   crontab: 30 1 * * 0  /srv/longctx/scripts/refresh-and-train.sh >> /var/log/longctx.log 2>&1
# Exit codes: 0 done (or nothing new), 2 configuration error (fix the job), 1 failure (retry).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE_CONFIG=${PIPELINE_CONFIG:-configs/pipeline/mixed-64k.yaml}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/llama-3.2-1b-64k.yaml}
DATA=${DATA:-/data/longctx-64k}
shards() {  # the checksums of the shards: equal exactly when the samples are equal
  python -c 'import json,sys; print([s["sha256"] for s in json.load(open(sys.argv[1]))["shards"]])' \
    "$DATA/manifest.json" 2>/dev/null || true
}
before=$(shards)
python -m pipeline.run --config "$PIPELINE_CONFIG" --output "$DATA" --incremental --quiet
after=$(shards)
if [ "$before" = "$after" ]; then
  echo "$(date -u +%FT%TZ) dataset unchanged; no training run"
  exit 0
fi
python -m train.launch --config "$TRAIN_CONFIG" --data "$DATA" --output-dir "runs/$(date -u +%Y%m%d-%H%M)"
