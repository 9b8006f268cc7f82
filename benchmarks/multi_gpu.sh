#!/usr/bin/env bash
# Issue 21 on two GPUs of one host (written for 2 x H200; not yet run on a GPU):
#   1. the longest context that trains on 1 GPU (Unsloth, the default path) and over 2 GPUs with
#      --context-parallel 2, for the Llama-3.2-1B and Llama-3.1-8B shapes (bf16 LoRA r16, offloaded
#      checkpoints in both); a search on a 32,768-token grid from the planner's estimate;
#   2. tokens/s of both at a context both hold (SPEED_LEN, 65,536);
#   3. the data-parallel speed-up (--nproc-per-node 2 over 1 GPU) of the 8B shape, 4-bit QLoRA r32.
# benchmarks/results/multi_gpu.json is written by benchmarks/multi_gpu.py report from the recorded
# results only: what did not run is null.
#
#   bash benchmarks/multi_gpu.sh                      # on the GPU machine, again until it says done
#   MULTI_GPU_SMOKE=1 bash benchmarks/multi_gpu.sh    # the whole chain on a CPU (tiny shape, gloo)
#
# Needs, carried to the GPU machine (not in git), as benchmarks/gpu_session.sh:
#   .carry/gpu-site.tar.xz   Unsloth, TRL, datasets... (bash ../shared/tools/gpu-site.sh)
#   .carry/tokxz/            qwen3-tokenizer.json.xz + tokenizer_config.json (the Qwen3 tokenizer)
# The models are random-initialised shapes (python -m train.random_model) and the data synthetic
# rows of random token ids (benchmarks/multi_gpu.py data: documents of DOC_TOKENS tokens, 32,768),
# both made on the machine: memory and speed depend on the shape and the row layout, not the text.
#
# Resumable. Every measurement is a step whose result is $RESULTS/<step>.json (default
# benchmarks/results/multi_gpu); a step with a result is skipped. A training run goes to the
# background (setsid), so it outlives the device tool's 10-minute command limit; a call waits for
# it up to MULTI_GPU_BUDGET_S seconds (540), then copies $RESULTS and the report to $OUT and stops;
# the next call waits on the same run, or on a fresh machine starts it again (after two starts
# without a result the step is recorded as "timeout"). Between sessions copy $OUT/multi_gpu/ back
# into benchmarks/results/multi_gpu/ and commit it, so that a fresh machine skips what is done.
# MULTI_GPU_STEPS selects steps (default "speed1b ddp speed8b max1b max8b").
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PYTHON:-python3}
SMOKE=${MULTI_GPU_SMOKE:-0}
BUDGET_S=${MULTI_GPU_BUDGET_S:-540}
DEADLINE=$((SECONDS + BUDGET_S))
OUT=${OUT:-/tmp/multi-gpu-out}
if [ "$SMOKE" = 1 ]; then
  WORK=${MULTI_GPU_WORK:-/tmp/multi-gpu-smoke}
  RESULTS=${MULTI_GPU_RESULTS:-$WORK/results}
  REPORT=${MULTI_GPU_REPORT:-$WORK/multi_gpu.json}
  TOK=${LONGCTX_SHARED_DATA:-$PWD/../shared/data}/tokenizers/qwen3
  SHAPES="tiny" SPEED_LEN=512 DOC_TOKENS=256 GRID=512 HIGHEST=1024 JOB_TIMEOUT_S=600
  STEPS=${MULTI_GPU_STEPS:-"speedtiny ddp maxtiny"}
  CPU_FLAGS="--backend transformers"  # no Unsloth and no bitsandbytes on a CPU
  export PYTHONPATH=$PWD
else
  WORK=${MULTI_GPU_WORK:-/tmp/multi-gpu}
  RESULTS=${MULTI_GPU_RESULTS:-benchmarks/results/multi_gpu}
  REPORT=${MULTI_GPU_REPORT:-benchmarks/results/multi_gpu.json}
  TOK=/tmp/tok
  SHAPES="1b 8b" SPEED_LEN=65536 DOC_TOKENS=32768 GRID=32768 HIGHEST=4194304
  JOB_TIMEOUT_S=${MULTI_GPU_JOB_TIMEOUT_S:-1800}
  STEPS=${MULTI_GPU_STEPS:-"speed1b ddp speed8b max1b max8b"}
  CPU_FLAGS=""
  export PYTHONPATH=/tmp/site:$PWD
fi
DOC_TOKENS=${MULTI_GPU_DOC_TOKENS:-$DOC_TOKENS}
mkdir -p "$WORK/jobs" "$WORK/runs" "$WORK/data" "$RESULTS" "$OUT"

finish() {  # write the report from what is recorded, copy it and the results to $OUT, stop
  $PY benchmarks/multi_gpu.py report --results "$RESULTS" --out "$REPORT" \
    --shapes "$SHAPES" --speed-len "$SPEED_LEN"
  rm -rf "$OUT/multi_gpu" && cp -r "$RESULTS" "$OUT/multi_gpu" && cp "$REPORT" "$OUT/"
  echo "$1"
  exit 0
}

setup() {
  if [ "$SMOKE" != 1 ]; then
    mkdir -p /tmp/site /tmp/tok
    [ -f /tmp/site/.done ] || { tar xJf .carry/gpu-site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
    [ -f /tmp/tok/tokenizer.json ] || xz -dc .carry/tokxz/qwen3-tokenizer.json.xz > /tmp/tok/tokenizer.json
    cp .carry/tokxz/tokenizer_config.json /tmp/tok/
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RESULTS/device.txt"
    GPU_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print $1/1024}')
  else
    echo "cpu (smoke run: figures mean nothing)" > "$RESULTS/device.txt"
    GPU_GIB=1
  fi
}

model() {  # model SHAPE -> the folder of a random-initialised model of that shape (built once)
  local shape=$1 dir
  case $shape in
    1b) dir=/tmp/l1b; [ -d $dir ] || $PY -m train.random_model --shape llama-3.2-1b --tokenizer "$TOK" --out $dir >&2 ;;
    8b) dir=/tmp/l8b; [ -d $dir ] || $PY -m train.random_model --shape llama-3.1-8b --tokenizer "$TOK" --out $dir >&2 ;;
    tiny) dir=$WORK/tiny; [ -d $dir ] || $PY -m train.random_model --shape tiny --tokenizer "$TOK" --out $dir >&2 ;;
  esac
  echo $dir
}

data() {  # data CONTEXT ROWS -> a pipeline-shaped folder of ROWS rows of CONTEXT tokens
  $PY benchmarks/multi_gpu.py data --tokenizer "$TOK" --seq-len "$1" --rows "$2" \
    --doc-tokens "$DOC_TOKENS" --out "$WORK/data/L$1-r$2" | tail -1
}

mode_flags() {  # mode_flags MODE -> devices and train.launch flags of a mode
  case $1 in
    unsloth1) echo "0|$CPU_FLAGS" ;;
    cp2) echo "0,1|--context-parallel 2" ;;
    qlora1) echo "0|--load-in-4bit true --lora-r 32 --lora-alpha 32" ;;
    qlora2) echo "0,1|--nproc-per-node 2 --load-in-4bit true --lora-r 32 --lora-alpha 32" ;;
  esac
}

job() {  # job NAME SHAPE MODE CONTEXT ROWS STEPS: one train.launch run, in the background
  local name=$1 shape=$2 mode=$3 L=$4 rows=$5 steps=$6
  [ -f "$RESULTS/$name.json" ] && return 0
  local dir=$WORK/jobs/$name run=$WORK/runs/$name
  mkdir -p "$dir"
  if [ -f "$dir/rc" ] || { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }; then
    echo "waiting for $name (started before)"
  else
    local starts
    starts=$(cat "$RESULTS/$name.starts" 2>/dev/null || echo 0)
    if [ "$starts" -ge 2 ]; then  # twice started, never finished: longer than a session
      echo 124 > "$dir/rc"
    else
      echo $((starts + 1)) > "$RESULTS/$name.starts"
      local folder flags devices extra
      folder=$(data "$L" "$rows") || finish "error: no data for $name"
      flags=$(mode_flags "$mode")
      devices=${flags%%|*} extra=${flags#*|}
      [ "$SMOKE" = 1 ] && case $mode in qlora*) extra="$CPU_FLAGS ${extra/--load-in-4bit true/}" ;; esac
      rm -rf "$run" "$dir/rc"
      echo "starting $name: $L tokens, $mode"
      CUDA_VISIBLE_DEVICES=$devices setsid nohup bash -c "timeout $JOB_TIMEOUT_S $PY -m train.launch \
        --data $folder --model $(model "$shape") --max-steps $steps --gradient-accumulation-steps 1 \
        --warmup-steps 0 --skip-validation true --gpu-memory-gib 100000 --output-dir $run $extra; \
        echo \$? > $dir/rc" > "$dir/log" 2>&1 < /dev/null &
      echo $! > "$dir/pid"
    fi
  fi
  while [ ! -f "$dir/rc" ]; do
    [ $SECONDS -ge $DEADLINE ] && finish "still running: $name (call again)"
    sleep 5
  done
  $PY benchmarks/multi_gpu.py record --name "$name" --rc "$(cat "$dir/rc")" --log "$dir/log" \
    --run "$run" --out "$RESULTS/$name.json" --context "$L" | cut -c1-400
  rm -f "$RESULTS/$name.starts"
}

search() {  # search SHAPE MODE: the largest context of which one step runs
  local shape=$1 mode=$2 est L
  est=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['$mode'])" "$RESULTS/estimate-$shape.json")
  while true; do
    L=$($PY benchmarks/multi_gpu.py next --results "$RESULTS" --prefix "probe-$shape-$mode" \
      --start "$est" --step "$GRID" --highest "$HIGHEST")
    [ "$L" = done ] && break
    job "probe-$shape-$mode-$L" "$shape" "$mode" "$L" 2 1
  done
}

estimate() {  # the planner's largest contexts for a shape: where the searches start
  local shape=$1 m
  [ -f "$RESULTS/estimate-$shape.json" ] && return 0
  m=$(model "$shape")
  $PY - "$m" "$GPU_GIB" "$RESULTS/estimate-$shape.json" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from multi_gpu import estimate
model, gib, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
json.dump({m: estimate(model, m, gib) for m in ("unsloth1", "cp2")} | {"gpu_gib": gib}, open(out, "w"))
PY
}

setup
for step in $STEPS; do
  case $step in
    speed*)  # tokens/s at SPEED_LEN: 4 steps, steady after the first
      shape=${step#speed}
      job "speed-$shape-unsloth1-$SPEED_LEN" "$shape" unsloth1 "$SPEED_LEN" 6 4
      job "speed-$shape-cp2-$SPEED_LEN" "$shape" cp2 "$SPEED_LEN" 6 4
      ;;
    ddp)  # data parallel, 8B QLoRA r32 (the tiny shape, bf16, in the smoke run)
      shape=8b; [ "$SMOKE" = 1 ] && shape=tiny
      job "ddp-8b-qlora-1" "$shape" qlora1 "$SPEED_LEN" 10 4
      job "ddp-8b-qlora-2" "$shape" qlora2 "$SPEED_LEN" 10 4
      ;;
    max*)
      shape=${step#max}
      estimate "$shape"
      search "$shape" unsloth1
      search "$shape" cp2
      ;;
    *) echo "unknown step: $step"; exit 2 ;;
  esac
done
finish "done"
