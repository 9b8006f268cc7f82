#!/usr/bin/env bash
# Issue 20, part 4, on one H200 (nvidia-h200: 141 GB GPU, 16 cores, 128 GiB host RAM), every
# run a single document as long as the row (full causal attention over the whole context):
#   keep-8b-131072   the Llama-3.1-8B shape, --preset max-context (4-bit QLoRA r32, tiled MLP,
#                    offloaded checkpoints) with --host-memory-gib 24: the host holds 8 of the 32
#                    layers' checkpoints and the plan keeps the other 24 on the GPU (the path the
#                    longest contexts take); its peak against the plan's estimate;
#   maxp-8b-262144   the same with the host's own memory: all offloaded, to page-locked buffers
#                    (--offload-pinned true: auto would turn them off, 64 GiB rounded > half of
#                    126 GiB) as bare Unsloth's are;
#   bare-8b-262144   bare Unsloth (benchmarks/bare_unsloth.py, 4-bit r32, tiled MLP) on the same
#                    row: the launcher's step time against it;
#   max-8b-524288    the longest: 32 x 4 GiB of checkpoints do not fit the host, so the plan
#                    keeps the first layers' on the GPU (~15 minutes a step: quadratic attention);
#   maxp-q8b-262144  the Qwen3-8B shape (36 layers, QK-norm) as maxp-8b-262144.
#   maxp-8bl8-524288, bare-8bl8-524288, then maxp-8bl8-262144, bare-8bl8-262144
#                    the launcher against bare Unsloth at >= 500K, where bare Unsloth cannot run
#                    the full depth on this host (it offloads all 32 layers: 128 GiB): the 8B
#                    shape's widths at 8 layers (32 GiB offloaded, page-locked on both paths),
#                    one document a row; the 262,144 pair ties this proxy to the full depth's
#                    ratio there (maxp-8b-262144 / bare-8b-262144 = 1.084, session 7).
# keep-8b-131072's first result (before-keeper/) shows the kept layers lost: the Trainer re-armed
# every layer when train() began; train.launch now sets them again then (make_checkpoint_keeper).
# benchmarks/results/one_gpu.json is written by `benchmarks/one_gpu.py` from the results only.
#
#   bash benchmarks/one_gpu.sh                      # on the GPU machine, again until it says done
#   ONE_GPU_SMOKE=1 bash benchmarks/one_gpu.sh      # the chain on a CPU (tiny shape, no Unsloth)
#
# Device call: run(kind="nvidia-h200", command="bash benchmarks/one_gpu.sh",
#                  carry=[".carry/gpu-site.tar.xz", ".carry/tokxz"], timeout_s=600)
# Needs, carried: .carry/gpu-site.tar.xz (bash ../shared/tools/gpu-site.sh) and .carry/tokxz/
# (qwen3-tokenizer.json.xz + tokenizer_config.json). Resumable through benchmarks/gpu_runs.sh:
# the archive $OUT/one_gpu.tgz holds results/, logtails/ and one_gpu.json; between machines copy
# results/* into benchmarks/results/one_gpu/. ONE_GPU_ONLY (a bash regex) selects runs;
# ONE_GPU_BUDGET_S (560) is how long a call waits. The launcher reads the host's memory itself
# (MemTotal read 125.9 GiB at the start on nvidia-h200; on the larger kinds it starts low and
# grows, and --host-memory-gib must say what the machine has).
cd "$(dirname "$0")/.."
TAG=one_gpu SEED=benchmarks/results/one_gpu
SMOKE=${ONE_GPU_SMOKE:-0} BUDGET_S=${ONE_GPU_BUDGET_S:-560} GPU_ONLY=${ONE_GPU_ONLY:-}
# shellcheck source=benchmarks/gpu_runs.sh
source benchmarks/gpu_runs.sh
if [ "$SMOKE" = 1 ]; then
  B=tiny Q=qtiny P=tinyl1 L1=512 L2=1024 L3=2048 KEEP_GIB=16.0001 JOB_TIMEOUT_S=600 BARE=0
else
  B=8b Q=q8b P=8bl8 L1=131072 L2=262144 L3=524288 KEEP_GIB=24 JOB_TIMEOUT_S=${ONE_GPU_JOB_TIMEOUT_S:-1500} BARE=1
  GPU_MEMORY_GIB=140
fi
DOC_TOKENS=0  # each run passes its own: one document a row

flags() {  # flags MODE -> train.launch flags of a mode
  case $1 in
    keep) echo "$CPU_FLAGS --preset max-context --host-memory-gib $KEEP_GIB" ;;
    max) echo "$CPU_FLAGS --preset max-context" ;;
    maxp) echo "$CPU_FLAGS --preset max-context --offload-pinned true" ;;
  esac
}

drive() {
  if [ "$SMOKE" = 1 ]; then nvidia-smi() { echo "cpu (smoke run: figures mean nothing), 1 MiB"; }; fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c |
    awk '{$1 = $1 " x"; print}' > "$RESULTS/device.txt"
  job 0 "$B" keep "$L1" 1 "$L1"
  job 0 "$B" maxp "$L2" 1 "$L2"
  [ "$BARE" = 1 ] && bare_job 0 "$B" bare "$L2" 1 "$L2" "--load-in-4bit --lora-r 32 --tiled-mlp"
  job 0 "$B" max "$L3" 1 "$L3"
  job 0 "$Q" maxp "$L2" 1 "$L2"
  for L in "$L3" "$L2"; do  # the reduced-depth pairs: launcher, then bare Unsloth, same row
    job 0 "$P" maxp "$L" 1 "$L"
    [ "$BARE" = 1 ] && bare_job 0 "$P" bare "$L" 1 "$L" "--load-in-4bit --lora-r 32 --tiled-mlp"
  done
  echo "[$(date +%H:%M:%S)] all runs done"
}

report() {
  $PY benchmarks/one_gpu.py --results "$RESULTS" --out "$REPORT"
}

gpu_main "$@"
