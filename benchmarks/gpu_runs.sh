# Shared by the GPU benchmark scripts that drive train.launch runs on a lent GPU machine
# (benchmarks/multi_gpu.sh, benchmarks/one_gpu.sh); sourced, not run. A script sets
#   TAG      a short name (its work folder /tmp/$TAG, its archive $OUT/$TAG.tgz)
#   SEED     the committed results folder a run with a result there is not measured again
#   S, B     the small and the large shape's short names (1b, 8b; tiny, tinyb in a smoke run)
#   DOC_TOKENS, JOB_TIMEOUT_S, BUDGET_S (seconds a call waits for the driver)
# defines flags MODE (train.launch flags of a mode), drive (the runs, with job / bare_job) and
# report (the summary written from the results), then calls gpu_main "$@".
#
# Every run goes to a driver in its own process session (setsid), so the runs outlive the
# device tool's 10-minute command limit; each call starts the driver if none runs, waits up to
# BUDGET_S seconds, writes the report and returns results/, logtails/ and the report as one
# archive, $OUT/$TAG.tgz (the device tool returns a limited count of files). Results live
# outside the working tree (/tmp/$TAG/results: each call re-sends the tree), seeded from $SEED.
# Between machines, unpack the archive and copy results/* into $SEED. GPU_ONLY (a bash regex)
# runs only the runs whose names match. SMOKE=1 (the scripts' *_SMOKE) runs the whole chain on
# a CPU with the tiny shapes: the figures mean nothing, the plumbing is checked.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
OUT=${OUT:-/tmp/$TAG-out}
if [ "$SMOKE" = 1 ]; then
  WORK=/tmp/$TAG-smoke
  TOK=${LONGCTX_SHARED_DATA:-$PWD/../shared/data}/tokenizers/qwen3
  CPU_FLAGS="--backend transformers --load-in-4bit false"  # no Unsloth, no bitsandbytes on a CPU
  export PYTHONPATH=$PWD
else
  WORK=/tmp/$TAG
  TOK=/tmp/tok
  CPU_FLAGS=""
  export PYTHONPATH=/tmp/site:$PWD
fi
RESULTS=$WORK/results
REPORT=$WORK/$TAG.json
# a smoke run starts clean (its results would be skipped as measured)
if [ "$SMOKE" = 1 ] && [ "${1:-}" != drive ]; then rm -rf "$WORK"; fi
mkdir -p "$WORK/jobs" "$WORK/runs" "$WORK/data" "$RESULTS" "$OUT"
# what earlier machines measured (committed) is not measured again
[ "$SMOKE" = 1 ] || cp -rn "$SEED/." "$RESULTS/" 2>/dev/null

model() {  # model SHAPE[lN] -> the folder of a random-initialised model of that shape (built once);
  # a trailing lN keeps the shape's widths at N layers (8bl8: the 8B shape, 8 layers)
  local dir=$WORK/model-$1 name base=$1 layers=""
  if [[ $1 =~ ^(.+)l([0-9]+)$ ]]; then base=${BASH_REMATCH[1]} layers=${BASH_REMATCH[2]}; fi
  case $base in
    1b) name=llama-3.2-1b ;; 8b) name=llama-3.1-8b ;; q8b) name=qwen3-8b ;;
    qtiny) name=qwen3-tiny ;; tiny*) name=tiny ;;
  esac
  if [ ! -f "$dir/.done" ]; then
    $PY -m train.random_model --shape "$name" --tokenizer "$TOK" --out "$dir" \
      ${layers:+--num-layers "$layers"} >&2 && touch "$dir/.done"
  fi
  mkdir -p "$RESULTS/config-$1" && cp "$dir/config.json" "$RESULTS/config-$1/"
  echo "$dir"
}

data() {  # data NAME CONTEXT ROWS [DOC_TOKENS] -> a pipeline-shaped folder of ROWS rows of CONTEXT tokens
  $PY benchmarks/multi_gpu.py data --tokenizer "$TOK" --seq-len "$2" --rows "$3" \
    --doc-tokens "${4:-$DOC_TOKENS}" --out "$WORK/data/$1" | tail -1
}

_skip() {  # _skip NAME: measured already, or not selected by GPU_ONLY
  [ -f "$RESULTS/$1.json" ] && return 0
  if [ -n "${GPU_ONLY:-}" ] && ! [[ $1 =~ $GPU_ONLY ]]; then return 0; fi
  return 1
}

job() {  # job DEVICES SHAPE MODE CONTEXT STEPS [DOC_TOKENS]: one train.launch run -> $RESULTS/MODE-SHAPE-CONTEXT.json
  local devices=$1 shape=$2 mode=$3 L=$4 steps=$5 doc=${6:-$DOC_TOKENS}
  local name=$mode-$shape-$L
  _skip "$name" && return 0
  local rows=$steps run=$WORK/runs/$name log=$WORK/jobs/$name.log folder m extra rc
  case $mode in qlora*) rows=$((2 * steps)) ;; esac
  folder=$(data "$name" "$L" "$rows" "$doc") && m=$(model "$shape") || { echo "no data or model for $name"; return 1; }
  extra=$(flags "$mode")
  if [ "$SMOKE" = 1 ]; then extra=${extra/--load-in-4bit true/}; fi
  rm -rf "$run"
  echo "[$(date +%H:%M:%S)] start $name on GPU $devices"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$devices timeout "$JOB_TIMEOUT_S" $PY -m train.launch --data "$folder" \
    --model "$m" --max-steps "$steps" --gradient-accumulation-steps 1 --warmup-steps 0 \
    --logging-steps 1 --skip-validation true --gpu-memory-gib "${GPU_MEMORY_GIB:-100000}" \
    --output-dir "$run" $extra > "$log" 2>&1 < /dev/null
  rc=$?
  $PY benchmarks/multi_gpu.py record --name "$name" --rc $rc --log "$log" --run "$run" \
    --out "$RESULTS/$name.json" --context "$L" | cut -c1-300
}

bare_job() {  # bare_job DEVICE SHAPE NAME CONTEXT STEPS DOC_TOKENS FLAGS: benchmarks/bare_unsloth.py -> $RESULTS/NAME-SHAPE-CONTEXT.json
  local device=$1 shape=$2 mode=$3 L=$4 steps=$5 doc=$6 extra=$7
  local name=$mode-$shape-$L
  _skip "$name" && return 0
  local log=$WORK/jobs/$name.log folder m rc
  folder=$(data "$name" "$L" "$steps" "$doc") && m=$(model "$shape") || { echo "no data or model for $name"; return 1; }
  echo "[$(date +%H:%M:%S)] start $name on GPU $device"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$device timeout "$JOB_TIMEOUT_S" $PY benchmarks/bare_unsloth.py \
    --data "$folder" --model "$m" --steps "$steps" $extra > "$log" 2>&1 < /dev/null
  rc=$?
  $PY benchmarks/multi_gpu.py record-bare --name "$name" --rc $rc --log "$log" \
    --out "$RESULTS/$name.json" --context "$L" | cut -c1-300
}

gpu_main() {
  if [ "${1:-}" = drive ]; then drive; exit 0; fi
  if [ "$SMOKE" != 1 ]; then  # setup, once per machine
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
  report | cut -c1-600
  mkdir -p "$WORK/logtails"
  for f in "$WORK"/jobs/*.log; do tail -c 4000 "$f" > "$WORK/logtails/$(basename "$f")"; done 2>/dev/null
  cp "$WORK/driver.log" "$WORK/logtails/" 2>/dev/null
  tar czf "$OUT/$TAG.tgz" -C "$WORK" results logtails "$(basename "$REPORT")"
  grep -v Warning "$WORK/driver.log" | cut -c1-250
  if grep -q "all runs done" "$WORK/driver.log"; then echo "done"; else echo "still running: call again"; fi
}
