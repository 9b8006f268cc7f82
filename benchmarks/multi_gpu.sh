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
# Resumable, through benchmarks/gpu_runs.sh (the driver, the archive $OUT/multi_gpu.tgz: results/,
# logtails/, multi_gpu.json): two lanes at once while the runs need one GPU each (GPU 0: the 1B
# runs, GPU 1: the 8B runs), then the runs that need both, one after another. Between machines,
# unpack the archive and copy results/* into benchmarks/results/multi_gpu/. MULTI_GPU_ONLY (a
# bash regex) runs only the runs whose names match, e.g. '^cp2t-1b-'; MULTI_GPU_BUDGET_S (560)
# is how long a call waits. Runs measured with code since changed move to a subfolder
# (before-lean/: context parallel before lean_activations; before-chunked-norm/: before the
# chunked lean norm and the freed embeddings and rerun outputs; the report shows them apart).
cd "$(dirname "$0")/.."
TAG=multi_gpu SEED=benchmarks/results/multi_gpu
SMOKE=${MULTI_GPU_SMOKE:-0} BUDGET_S=${MULTI_GPU_BUDGET_S:-560} GPU_ONLY=${MULTI_GPU_ONLY:-}
# the longest runs: 1B lengths for one GPU (unsloth1t) and two (cp2t), chosen from the lines the
# shorter runs draw (space-separated; none by default)
LONG_ONE=${MULTI_GPU_LONG_ONE:-} LONG_CP=${MULTI_GPU_LONG_CP:-}
# shellcheck source=benchmarks/gpu_runs.sh
source benchmarks/gpu_runs.sh
if [ "$SMOKE" = 1 ]; then
  S=tiny B=tinyb L1=512 L2=1024 L3=2048 DOC_TOKENS=256 JOB_TIMEOUT_S=600
else
  S=1b B=8b L1=65536 L2=131072 L3=262144 DOC_TOKENS=32768
  JOB_TIMEOUT_S=${MULTI_GPU_JOB_TIMEOUT_S:-900}
fi

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
  job 0,1 "$S" cp2t "$L3" 1
  job 0,1 "$S" cp2t "$((2 * L3))" 1
  job 0,1 "$S" cp2t "$((4 * L3))" 1
  job 0,1 "$B" cp2t "$L1" 1
  job 0,1 "$B" cp2t "$L2" 1
  job 0,1 "$B" cp2t "$L3" 1
  job 0,1 "$B" cp2t "$((2 * L3))" 1
  for L in $LONG_CP; do job 0,1 "$S" cp2t "$L" 1; done
  for L in $LONG_ONE; do job 0 "$S" unsloth1t "$L" 1; done  # after: both GPUs are free
  job 0,1 "$S" cp2t "$L2" 1
  job 0,1 "$S" cp2t "$L1" 4
  echo "[$(date +%H:%M:%S)] all runs done"
}

report() {
  $PY benchmarks/multi_gpu.py report --results "$RESULTS" --out "$REPORT" --shapes "$S $B" \
    --speed-len "$L1"
}

gpu_main "$@"
