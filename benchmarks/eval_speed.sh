#!/usr/bin/env bash
# Issue 15's speed target for train.evaluate: a ~150M-parameter model over 1M validation tokens
# at 16K on one H200, in under 2 minutes. Data, made on the CPU machine and carried as .carry/evs:
#   python -m train.tokenizer --data ../shared/data/books --data <python stdlib>/email \
#       --vocab-size 16384 --out .carry/evs/tok16k
#   python -m pipeline.run --runner DirectRunner --books ../shared/data/books \
#       --tokenizer .carry/evs/tok16k --seq-len 16384 --eval-fraction 0.3 --output .carry/evs/out
# Then on the GPU machine (device tool, carry .carry/evs):  bash benchmarks/eval_speed.sh
set -euo pipefail
D=${EVS:-.carry/evs}
OUT=${OUT:-/tmp/eval-speed}
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python -m train.random_model --shape llama-150m --tokenizer "$D/tok16k" --out /tmp/m150
start=$(date +%s.%N)
python -m train.evaluate --model /tmp/m150 --data "$D/out" --seq-len 16384 --out "$OUT/eval150" \
  --max-tokens 1000000 --passkey-lengths none --device cuda
end=$(date +%s.%N)
python - "$OUT/eval150/eval.json" "$start" "$end" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
print(json.dumps({"device": e["device"], "tokens_scored": e["tokens_scored"],
                  "elapsed_s_in_evaluate": e["elapsed_s"],
                  "wall_s_whole_command": round(float(sys.argv[3]) - float(sys.argv[2]), 1)}))
PY
