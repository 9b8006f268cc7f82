#!/usr/bin/env bash
# GPU measurements for the training stage, run through the device tool over a copy of this tree.
# Needs .carry/ (not in git): gpu-site.tar.xz (../shared/tools/gpu-site.sh), tokxz/ (the Qwen3
# tokenizer, xz), and pipeline outputs built on the CPU machine (see docs/benchmarks.md).
#   bash benchmarks/gpu_session.sh setup            # unpack, build random 1B (and 8B) models
#   bash benchmarks/gpu_session.sh <step>           # one of the steps below; results to $OUT
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
setup() {
  mkdir -p /tmp/site /tmp/tok
  [ -f /tmp/site/.done ] || { tar xJf .carry/gpu-site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
  xz -dc .carry/tokxz/qwen3-tokenizer.json.xz > /tmp/tok/tokenizer.json
  cp .carry/tokxz/tokenizer_config.json /tmp/tok/
  [ -d /tmp/l1b ] || python3 -m train.random_model --shape llama-3.2-1b --tokenizer /tmp/tok --out /tmp/l1b
}
launch() {  # launch DATA MODEL STEPS NAME [extra flags]
  local data=$1 model=$2 steps=$3 name=$4; shift 4
  python3 -m train.launch --data "$data" --model "$model" --max-steps "$steps" \
    --gradient-accumulation-steps 1 --output-dir "/tmp/$name" "$@" 2>&1 | grep -E "^summary|Error|error" || true
  cp "/tmp/$name/train_summary.json" "$OUT/$name.json" 2>/dev/null || true
}
setup
case "${1:-}" in
  setup) ;;
  speed1b)  # launcher vs bare Unsloth at 64K on the 1B shape; padding-free vs one stream
    launch .carry/out64k /tmp/l1b 6 launch1b64k
    python3 benchmarks/bare_unsloth.py --data .carry/out64k --model /tmp/l1b --steps 6 | grep ^result | tee "$OUT/bare1b64k.txt"
    python3 benchmarks/bare_unsloth.py --data .carry/outshort64k --model /tmp/l1b --steps 6 --modes packed,stream | grep ^result | tee "$OUT/packed_vs_stream.txt"
    ;;
  long1b)  # the launcher at 256K on the 1B shape (bare Unsloth: 39.1 GiB in GPU-NOTES)
    launch .carry/out262144 /tmp/l1b 3 launch1b256k
    ;;
  model8b)
    [ -d /tmp/l8b ] || python3 -m train.random_model --shape llama-3.1-8b --tokenizer /tmp/tok --out /tmp/l8b
    launch .carry/out64k /tmp/l8b 3 launch8b64k --load-in-4bit true --lora-r 32 --lora-alpha 32
    python3 benchmarks/bare_unsloth.py --data .carry/out64k --model /tmp/l8b --steps 3 --load-in-4bit --lora-r 32 | grep ^result | tee "$OUT/bare8b64k.txt"
    ;;
  max8b)  # e. the 8B shape at 409,600 tokens with --preset max-context, in the background
    # (setsid: it outlives this command's 10-minute limit); collect with `wait8b`
    [ -d /tmp/l8b ] || python3 -m train.random_model --shape llama-3.1-8b --tokenizer /tmp/tok --out /tmp/l8b
    mkdir -p /tmp/bg
    setsid nohup bash benchmarks/gpu_session.sh max8b-run > /tmp/bg/run.log 2>&1 < /dev/null &
    sleep 5
    ;;
  max8b-run)
    (while true; do
      echo "$(date +%T) gpu $(nvidia-smi --query-gpu=memory.used --format=csv,noheader) host_used_gib $(free -g | awk '/Mem:/{print $3}')"
      sleep 15
    done) > /tmp/bg/monitor.log 2>&1 &
    for L in 409600 262144; do
      python3 -m train.launch --data .carry/out$L --model /tmp/l8b --preset max-context \
        --host-memory-gib 128 --max-steps 1 --gradient-accumulation-steps 1 \
        --output-dir /tmp/max8b$L > /tmp/bg/max8b$L.log 2>&1 || true
      cp /tmp/max8b$L/train_summary.json /tmp/bg/max8b$L.json 2>/dev/null || true
    done
    touch /tmp/bg/done
    ;;
  wait8b)  # wait (up to 9.5 minutes) for max8b-run, then copy its logs to $OUT
    for _ in $(seq 114); do [ -f /tmp/bg/done ] && break; sleep 5; done
    cp -r /tmp/bg/. "$OUT/"
    ;;
  *) echo "unknown step: ${1:-}"; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
