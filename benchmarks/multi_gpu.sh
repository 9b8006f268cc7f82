#!/usr/bin/env bash
# Issue 21 on two GPUs of one host (2 x H200), every run through train.launch:
#   1. peak GPU memory, host RSS and step time of the Llama-3.2-1B and Llama-3.1-8B shapes (bf16
#      LoRA r16, offloaded checkpoints) on 1 GPU through Unsloth (unsloth1) and over 2 GPUs with
#      --context-parallel 2 (cp2) at 64K, 128K (and 256K for 1B): the longest context of each is
#      extrapolated from them (benchmarks/multi_gpu.py says why no search), cp_context_ratio;
#   2. tokens/s of both at 65,536 tokens (4 steps, steady after the first);
#   3. data parallelism on the 8B shape, 4-bit QLoRA r32, at 65,536 tokens: --nproc-per-node 2
#      (qlora2) against one GPU with gradient accumulation 2 (qlora1), so that both optimizer steps
#      see the same two rows: dp_speedup and the two loss curves.
# benchmarks/results/multi_gpu.json is written by `benchmarks/multi_gpu.py report` from the
# recorded results only: what did not run is null.
#
#   bash benchmarks/multi_gpu.sh                     # on the GPU machine, again until it says done
#   MULTI_GPU_SMOKE=1 bash benchmarks/multi_gpu.sh   # the whole chain on a CPU (tiny shape, gloo)
#
# Device call: run(kind="nvidia-h200-x2", command="bash benchmarks/multi_gpu.sh",
#                  carry=[".carry/gpu-site.tar.xz", ".carry/tokxz"], timeout_s=600)
# Needs, carried (not in git): .carry/gpu-site.tar.xz (bash ../shared/tools/gpu-site.sh) and
# .carry/tokxz/ (qwen3-tokenizer.json.xz + tokenizer_config.json). Models are random-initialised
# shapes (python -m train.random_model), rows synthetic random ids (multi_gpu.py data), both made
# there: memory and speed depend on the shape and the row layout, not on the text.
#
# Resumable. The runs go to a driver in its own process session (setsid), so they outlive the
# device tool's 10-minute command limit: two lanes at once while they need one GPU each (GPU 0:
# the 1B runs, GPU 1: the 8B runs), then the runs that need both, one after another. Each call
# starts the driver if none runs, waits up to MULTI_GPU_BUDGET_S (560) seconds, writes the report
# and returns them as one archive, $OUT/multi_gpu.tgz (results/, logtails/, multi_gpu.json; the
# device tool returns a limited count of files). Results live outside the working tree
# (/tmp/multi-gpu/results: each call re-sends the tree), seeded from benchmarks/results/multi_gpu/;
# a run with a result there is skipped. Between machines, unpack the archive and copy results/*
# into benchmarks/results/multi_gpu/. MULTI_GPU_ONLY (a bash regex) runs only the runs whose
# names match, e.g. '^cp2t-1b-'. Runs measured with code since changed move to a subfolder
# (before-lean/: context parallel before lean_activations; the report shows them apart).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PYTHON:-python3}
SMOKE=${MULTI_GPU_SMOKE:-0}
BUDGET_S=${MULTI_GPU_BUDGET_S:-560}
OUT=${OUT:-/tmp/multi-gpu-out}
if [ "$SMOKE" = 1 ]; then
  WORK=${MULTI_GPU_WORK:-/tmp/multi-gpu-smoke}
  RESULTS=${MULTI_GPU_RESULTS:-$WORK/results}
  REPORT=${MULTI_GPU_REPORT:-$WORK/multi_gpu.json}
  TOK=${LONGCTX_SHARED_DATA:-$PWD/../shared/data}/tokenizers/qwen3
  S=tiny B=tinyb L1=512 L2=1024 L3=2048 DOC_TOKENS=256 JOB_TIMEOUT_S=600
  CPU_FLAGS="--backend transformers --load-in-4bit false"  # no Unsloth, no bitsandbytes on a CPU
  export PYTHONPATH=$PWD
else
  WORK=${MULTI_GPU_WORK:-/tmp/multi-gpu}
  RESULTS=${MULTI_GPU_RESULTS:-$WORK/results}  # outside the tree: each call re-sends the tree
  REPORT=${MULTI_GPU_REPORT:-$WORK/multi_gpu.json}
  TOK=/tmp/tok
  S=1b B=8b L1=65536 L2=131072 L3=262144 DOC_TOKENS=32768
  JOB_TIMEOUT_S=${MULTI_GPU_JOB_TIMEOUT_S:-900}
  CPU_FLAGS=""
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p "$WORK/jobs" "$WORK/runs" "$WORK/data" "$RESULTS" "$OUT"
# what earlier machines measured (committed) is not measured again
[ "$SMOKE" = 1 ] || cp -rn benchmarks/results/multi_gpu/. "$RESULTS/" 2>/dev/null

model() {  # model SHAPE -> the folder of a random-initialised model of that shape (built once)
  local dir=$WORK/model-$1 name
  case $1 in 1b) name=llama-3.2-1b ;; 8b) name=llama-3.1-8b ;; tiny*) name=tiny ;; esac
  if [ ! -f "$dir/.done" ]; then
    $PY -m train.random_model --shape "$name" --tokenizer "$TOK" --out "$dir" >&2 && touch "$dir/.done"
  fi
  mkdir -p "$RESULTS/config-$1" && cp "$dir/config.json" "$RESULTS/config-$1/"
  echo "$dir"
}

data() {  # data NAME CONTEXT ROWS -> a pipeline-shaped folder of ROWS rows of CONTEXT tokens
  $PY benchmarks/multi_gpu.py data --tokenizer "$TOK" --seq-len "$2" --rows "$3" \
    --doc-tokens "$DOC_TOKENS" --out "$WORK/data/$1" | tail -1
}

flags() {  # flags MODE -> train.launch flags of a mode
  case $1 in
    unsloth1) echo "$CPU_FLAGS" ;;
    unsloth1t) echo "$CPU_FLAGS --tiled-mlp true" ;;
    cp2) echo "--context-parallel 2" ;;
    cp2t) echo "--context-parallel 2 --tiled-mlp true" ;;
    qlora1) echo "$CPU_FLAGS --load-in-4bit true --lora-r 32 --lora-alpha 32 --gradient-accumulation-steps 2" ;;
    qlora2) echo "$CPU_FLAGS --load-in-4bit true --lora-r 32 --lora-alpha 32 --nproc-per-node 2" ;;
  esac
}

job() {  # job DEVICES SHAPE MODE CONTEXT STEPS: one train.launch run -> $RESULTS/MODE-SHAPE-CONTEXT.json
  local devices=$1 shape=$2 mode=$3 L=$4 steps=$5
  local name=$mode-$shape-$L
  [ -f "$RESULTS/$name.json" ] && return 0
  if [ -n "${MULTI_GPU_ONLY:-}" ] && ! [[ $name =~ $MULTI_GPU_ONLY ]]; then return 0; fi
  local rows=$steps run=$WORK/runs/$name log=$WORK/jobs/$name.log folder m extra rc
  case $mode in qlora*) rows=$((2 * steps)) ;; esac
  folder=$(data "$name" "$L" "$rows") && m=$(model "$shape") || { echo "no data or model for $name"; return 1; }
  extra=$(flags "$mode")
  if [ "$SMOKE" = 1 ]; then extra=${extra/--load-in-4bit true/}; fi
  rm -rf "$run"
  echo "[$(date +%H:%M:%S)] start $name on GPU $devices"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$devices timeout "$JOB_TIMEOUT_S" $PY -m train.launch --data "$folder" \
    --model "$m" --max-steps "$steps" --gradient-accumulation-steps 1 --warmup-steps 0 \
    --logging-steps 1 --skip-validation true --gpu-memory-gib 100000 --output-dir "$run" \
    $extra > "$log" 2>&1 < /dev/null
  rc=$?
  $PY benchmarks/multi_gpu.py record --name "$name" --rc $rc --log "$log" --run "$run" \
    --out "$RESULTS/$name.json" --context "$L" | cut -c1-300
}

drive() {  # the runs, in the order that matters most first within each lane
  if [ "$SMOKE" = 1 ]; then nvidia-smi() { echo "cpu (smoke run: figures mean nothing), 1 MiB"; }; fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c |
    awk '{$1 = $1 " x"; print}' > "$RESULTS/device.txt"  # e.g. "2 x NVIDIA H200, 143771 MiB"
  (  # GPU 0: the 1B shape on one GPU
    job 0 "$S" unsloth1 "$L1" 4
    job 0 "$S" unsloth1 "$L2" 1
    job 0 "$S" unsloth1 "$L3" 1
    job 0 "$S" unsloth1t "$L2" 1
    job 0 "$S" unsloth1t "$L3" 1
  ) &
  (  # GPU 1: the 8B shape on one GPU
    job 1 "$B" qlora1 "$L1" 3
    job 1 "$B" unsloth1 "$L1" 1
    job 1 "$B" unsloth1 "$L2" 1
    job 1 "$B" unsloth1t "$L1" 1
    job 1 "$B" unsloth1t "$L2" 1
  ) &
  wait
  job 0,1 "$B" qlora2 "$L1" 3
  job 0,1 "$S" cp2 "$L1" 4
  job 0,1 "$S" cp2 "$L2" 1
  job 0,1 "$S" cp2 "$L3" 1
  job 0,1 "$B" cp2 "$L1" 1
  job 0,1 "$B" cp2 "$L2" 1
  job 0,1 "$S" cp2t "$L2" 1
  job 0,1 "$S" cp2t "$L3" 1
  job 0,1 "$S" cp2t "$((2 * L3))" 1
  job 0,1 "$B" cp2t "$L1" 1
  job 0,1 "$B" cp2t "$L2" 1
  job 0,1 "$S" cp2t "$L1" 4
  echo "[$(date +%H:%M:%S)] all runs done"
}

if [ "${1:-}" = drive ]; then drive; exit 0; fi

# setup, once per machine
if [ "$SMOKE" != 1 ]; then
  mkdir -p /tmp/site /tmp/tok
  [ -f /tmp/site/.done ] || { tar xJf .carry/gpu-site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
  [ -f /tmp/tok/tokenizer.json ] || xz -dc .carry/tokxz/qwen3-tokenizer.json.xz > /tmp/tok/tokenizer.json
  cp .carry/tokxz/tokenizer_config.json /tmp/tok/
fi
if [ ! -f "$WORK/driver.pid" ] || ! kill -0 "$(cat "$WORK/driver.pid")" 2>/dev/null; then
  if grep -q "all runs done" "$WORK/driver.log" 2>/dev/null; then
    echo "driver finished before"
  else
    setsid nohup bash "$0" drive >> "$WORK/driver.log" 2>&1 < /dev/null &
    echo $! > "$WORK/driver.pid"
    echo "driver started (pid $(cat "$WORK/driver.pid"))"
  fi
fi
while kill -0 "$(cat "$WORK/driver.pid")" 2>/dev/null && [ $SECONDS -lt "$BUDGET_S" ]; do sleep 5; done
$PY benchmarks/multi_gpu.py report --results "$RESULTS" --out "$REPORT" --shapes "$S $B" \
  --speed-len "$L1" | cut -c1-600
# one archive back (the device tool returns a limited count of files): results, report, log tails
mkdir -p "$WORK/logtails"
for f in "$WORK"/jobs/*.log; do tail -c 4000 "$f" > "$WORK/logtails/$(basename "$f")"; done 2>/dev/null
cp "$WORK/driver.log" "$WORK/logtails/" 2>/dev/null
tar czf "$OUT/multi_gpu.tgz" -C "$WORK" "$(basename "$RESULTS")" logtails -C "$(dirname "$REPORT")" \
  "$(basename "$REPORT")"
grep -v Warning "$WORK/driver.log" | cut -c1-250
if grep -q "all runs done" "$WORK/driver.log"; then echo "done"; else echo "still running: call again"; fi
