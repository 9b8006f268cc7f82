#!/usr/bin/env bash
# The data ablation of issue 15 on one GPU: does this project's preparation teach a small model
# trained from scratch to use far context better than the same tokens prepared naively?
#
#   bash benchmarks/ablation.sh                     # on the GPU machine, again until it says "done"
#   ABLATION_SMOKE=1 bash benchmarks/ablation.sh    # the whole chain on a CPU in ~3.5 minutes
#
# Steps, each skipped when its output exists, so repeated calls resume one another (each call
# stops cleanly before ABLATION_BUDGET_S seconds; training checkpoints and resumes):
#   1. corpus     books (.carry/ablation/books.tar.xz, else ../shared/data/books) + Python code
#                 the machine already holds (standard library, installed packages)
#   2. tokenizer  python -m train.tokenizer: byte-level BPE, 16,384 ids
#   3. speed      tokens/s of the model at 2K and 16K (both attention modes; per-document with
#                 sdpa and flex_attention), on random tokens, while the pipelines run; the token
#                 budgets and the per-document kernel are chosen from it (budget.json)
#   4. pipelines  longctx: the project's defaults; baseline: --file-order shuffled --packing
#                 plain --window-boundaries none; both --eval-fraction $EVAL_FRACTION --seed 0,
#                 so both hold out the same validation documents
#   5. stage 1    from scratch at 2K (the longctx train rows cut into 2,048-token pieces),
#                 shared by both arms
#   6. stage 2    at 16K from stage 1, equal token budgets, seeds 0 and 1 (data order):
#                 longctx = longctx preparation + --attention per-document,
#                 baseline = baseline preparation + --attention stream
#   7. evaluate   python -m train.evaluate of each (arm, seed) on the longctx validation split,
#                 --compare-data = the baseline preparation (order_signal)
#   8. report     benchmarks/ablation_report.py: benchmarks/results/ablation.json, plots, verdict
#
# Small results (eval.json, train logs, speed, budget, corpus and dataset summaries) go to
# $RESULTS (benchmarks/results/ablation, committed), so a fresh machine skips what is already
# measured; models and shards stay in $WORK on the machine. With ABLATION_RESULTS elsewhere,
# what benchmarks/results/ablation already holds is copied there first. With ABLATION_OUT set
# (the device's $OUT), $RESULTS, the report and the plots are packed there as results.tar.gz.
#
# On the GPU machine (no network, no Apache Beam), from a snapshot of the committed code so that
# what runs is what is committed (others may be editing the working tree):
#   here:  rm -rf .carry/ablation/src && mkdir -p .carry/ablation/src &&
#          git archive HEAD | tar x -C .carry/ablation/src
#          (.carry/ablation/ also holds beam-site.tar.xz, Beam and its needs for cp312, and
#          books.tar.xz, ../shared/data/books; both made as docs/benchmarks.md says)
#   there: ABLATION_OUT=$OUT ABLATION_CARRY=$PWD/.carry/ablation \
#          ABLATION_RESULTS=/tmp/longctx-ablation/results bash .carry/ablation/src/benchmarks/ablation.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=${ABLATION_CARRY:-$ROOT/.carry/ablation}
PY=${PYTHON:-python3}
SMOKE=${ABLATION_SMOKE:-0}
BUDGET_S=${ABLATION_BUDGET_S:-570}
DEADLINE=$((SECONDS + BUDGET_S))
SEEDS=${ABLATION_SEEDS:-"0 1"}
ARMS="longctx baseline"
# ABLATION_TAG=-x2.5 ABLATION_S2_SCALE=2.5 ABLATION_SEEDS=0: the follow-up run, stage 2 with
# 2.5 times the tokens, results in $RESULTS/<arm>-s<seed>-x2.5
TAG=${ABLATION_TAG:-}
S2_SCALE=${ABLATION_S2_SCALE:-1}
EVAL_FRACTION=${ABLATION_EVAL_FRACTION:-0.04}
PACKAGES="torch,transformers,sympy,pandas,scipy,sklearn,jax,flax,numpy,matplotlib,networkx,\
statsmodels,numba,lightning,pytorch_lightning,torchvision,torchaudio,torchmetrics,accelerate,peft,\
optax,botorch,gpytorch,linear_operator,xarray,skimage,timm,onnx,onnxscript,tensorboard,jinja2,rich,\
pygments,requests,urllib3,hypothesis,_pytest,seaborn,sentence_transformers,torch_geometric,\
huggingface_hub,triton,cupy,equinox,chex,orbax,numpyro,diffrax,optimistix,lineax,e3nn,einops,\
tifffile,imageio,sacrebleu,aiohttp,anyio,httpx,click,typer,werkzeug,markdown,fontTools,pyparsing,\
dateutil,psutil,tqdm,yaml,setuptools,pip,patsy,formulaic,mpmath,sortedcontainers,sklearn,tabulate"
if [ "$SMOKE" = 1 ]; then
  WORK=${ABLATION_WORK:-/tmp/longctx-ablation-smoke}
  RESULTS=${ABLATION_RESULTS:-$WORK/results}
  REPORT=${ABLATION_REPORT:-$WORK/ablation.json}
  PLOTS=${ABLATION_PLOTS:-$WORK/plots}
  PACKAGES="yaml,packaging,pathspec" CODE_MB=2 BOOKS_LIMIT=2 VOCAB=1024 TOK_MB=3
  SHAPE=tiny SEQ=1024 CHUNK=256 S1_SECONDS=15 S2_SECONDS=8 SPEED="256:per-document:8,1024:per-document:2,1024:stream:2"
  BATCH=8192 MICRO=4096 GAIN="--gain-contexts 64,128 --passkey-lengths 256,1024 --passkey-trials 2"
else
  WORK=${ABLATION_WORK:-/tmp/longctx-ablation}
  RESULTS=${ABLATION_RESULTS:-benchmarks/results/ablation}
  REPORT=${ABLATION_REPORT:-$(dirname "$RESULTS")/ablation.json}
  PLOTS=${ABLATION_PLOTS:-$(dirname "$RESULTS")}
  CODE_MB=${ABLATION_CODE_MB:-150} BOOKS_LIMIT=0 VOCAB=16384 TOK_MB=40
  SHAPE=${ABLATION_SHAPE:-llama-50m} SEQ=16384 CHUNK=2048
  S1_SECONDS=${ABLATION_S1_SECONDS:-240} S2_SECONDS=${ABLATION_S2_SECONDS:-150}
  # add 16384:per-document:4:flex_attention to weigh flex_attention: on the H200 it ran at 373K
  # tok/s against sdpa's 149K on rows that all hold several documents, but compiled for 246 s,
  # longer than a 150-s stage-2 run, and the budgets waited for it (docs/benchmarks.md)
  SPEED=${ABLATION_SPEED:-"2048:per-document:32,16384:per-document:4,16384:stream:4"}
  BATCH=262144 MICRO=65536 GAIN="--passkey-lengths 4096,16384"
fi
S1_LR=${ABLATION_S1_LR:-1.5e-3}
S2_LR=${ABLATION_S2_LR:-5e-4}
mkdir -p "$WORK" "$RESULTS"
if [ "$SMOKE" != 1 ] && [ "$RESULTS" != benchmarks/results/ablation ] && [ -d benchmarks/results/ablation ]; then
  cp -rn benchmarks/results/ablation/. "$RESULTS/"
fi
log() { echo "[ablation $(date +%H:%M:%S) +${SECONDS}s] $*"; }

pack_results() {
  if [ -n "${ABLATION_OUT:-}" ]; then
    tar czf "$ABLATION_OUT/results.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
    [ -f "$REPORT" ] && tar czf "$ABLATION_OUT/report.tar.gz" "$REPORT" "$PLOTS"/ablation_*.png
    cp "$WORK"/pipeline-*.log "$WORK"/speed.log "$ABLATION_OUT/" 2>/dev/null
  fi
}
trap pack_results EXIT

# Packages the machine lacks (Apache Beam and its needs) travel as one archive.
if ! $PY -c "import apache_beam" 2>/dev/null; then
  SITE=/tmp/ablation-site
  if [ ! -f "$SITE/.done" ] && [ -f "$CARRY/beam-site.tar.xz" ]; then
    log "unpacking $CARRY/beam-site.tar.xz"
    mkdir -p "$SITE" && tar xJf "$CARRY/beam-site.tar.xz" -C "$SITE" && touch "$SITE/.done"
  fi
  export PYTHONPATH=$SITE:$ROOT
else
  export PYTHONPATH=$ROOT
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

left() { echo $((DEADLINE - SECONDS)); }
# run NAME MIN_SECONDS CMD...: run a step with the time left; on running out (timeout, or exit 3
# from a paused training run) stop this call cleanly so the next call resumes.
run() {
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then
    log "$name: $(left)s left in this call, needs ~${need}s: stopping; run again to resume"
    exit 0
  fi
  log "$name: start ($(left)s left)"
  timeout --kill-after=10 "$(left)" "$@"
  local rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ] || [ $rc = 3 ]; then
    log "$name: out of time in this call (exit $rc); run again to resume"
    exit 0
  elif [ $rc != 0 ]; then
    log "$name: FAILED (exit $rc)"
    exit $rc
  fi
  log "$name: done"
}

evals_missing() {
  for s in $SEEDS; do for arm in $ARMS; do
    [ -f "$RESULTS/$arm-s$s$TAG/eval.json" ] || return 0
  done; done
  return 1
}

if evals_missing; then
  # 1. corpus
  if [ ! -f "$WORK/corpus/corpus.json" ]; then
    if [ -f "$CARRY/books.tar.xz" ]; then BOOKS=(--books-archive "$CARRY/books.tar.xz")
    else BOOKS=(--books "${LONGCTX_SHARED_DATA:-../shared/data}/books"); fi
    run corpus 20 $PY -m benchmarks.ablation_corpus --out "$WORK/corpus" "${BOOKS[@]}" \
      --packages "$PACKAGES" --code-mb "$CODE_MB" --books-limit "$BOOKS_LIMIT"
    cp "$WORK/corpus/corpus.json" "$RESULTS/corpus.json"
  fi
  # 2. tokenizer
  if [ ! -f "$WORK/tokenizer/tokenizer.json" ]; then
    run tokenizer 60 $PY -m train.tokenizer --data "$WORK/corpus/books" --data "$WORK/corpus/code" \
      --vocab-size "$VOCAB" --max-total-mb "$TOK_MB" --out "$WORK/tokenizer.tmp"
    rm -rf "$WORK/tokenizer" && mv "$WORK/tokenizer.tmp" "$WORK/tokenizer"
  fi
  # 3. speed probe in the background, while the CPU-bound pipelines run
  SPEED_PID=""
  if [ ! -f "$RESULTS/speed.json" ]; then
    log "speed: start (background)"
    timeout "$(left)" $PY -m benchmarks.ablation_train --measure-speed "$SPEED" --shape "$SHAPE" \
      --tokenizer "$WORK/tokenizer" --out "$WORK/speed" > "$WORK/speed.log" 2>&1 &
    SPEED_PID=$!
  fi
  # 4. the two preparations of the same corpus, in parallel
  pipe() {  # pipe ARM extra-flags...
    local arm=$1; shift
    [ -f "$WORK/out-$arm/manifest.json" ] && return 0
    $PY -m pipeline.run --runner DirectRunner --books "$WORK/corpus/books" \
      --repos-root "$WORK/corpus/code" --tokenizer "$WORK/tokenizer" --seq-len "$SEQ" \
      --eval-fraction "$EVAL_FRACTION" --seed 0 --output "$WORK/out-$arm" --overwrite --quiet "$@" \
      > "$WORK/pipeline-$arm.log" 2>&1 || { tail -20 "$WORK/pipeline-$arm.log"; return 1; }
  }
  if [ ! -f "$WORK/out-longctx/manifest.json" ] || [ ! -f "$WORK/out-baseline/manifest.json" ]; then
    log "pipelines: start ($(left)s left)"
    pipe longctx & P1=$!
    pipe baseline --file-order shuffled --packing plain --window-boundaries none & P2=$!
    wait $P1; r1=$?; wait $P2; r2=$?
    if [ $r1 != 0 ] || [ $r2 != 0 ]; then log "pipelines: FAILED ($r1 $r2)"; exit 1; fi
    log "pipelines: done"
  fi
  $PY -m benchmarks.ablation_report --datasets "$WORK/out-longctx" "$WORK/out-baseline" \
    --results "$RESULTS" || exit 1
  if [ -n "$SPEED_PID" ]; then
    wait "$SPEED_PID" || { cat "$WORK/speed.log"; log "speed: FAILED"; exit 1; }
    cp "$WORK/speed/speed.json" "$RESULTS/speed.json"
    log "speed: done"; grep '^{' "$WORK/speed.log"
  fi
  # token budgets from the measured speed: stage 1 S1_SECONDS at 2K, stage 2 S2_SECONDS at the
  # slower 16K mode, rounded to whole steps; written once so every call and arm uses the same
  if [ ! -f "$RESULTS/budget.json" ]; then
    $PY - "$RESULTS" "$S1_SECONDS" "$S2_SECONDS" "$BATCH" <<'EOF' || exit 1
import json, sys
res, s1, s2, batch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
speed = json.load(open(f"{res}/speed.json"))["results"]
short = min(r["seq_len"] for r in speed)
tps1 = min(r["tok_s"] for r in speed if r["seq_len"] == short and r["attn_impl"] == "sdpa")
speed = [r for r in speed if "tok_s" in r or r["attn_impl"] != "sdpa"]
long = [r for r in speed if r["seq_len"] != short]
stream = min(r["tok_s"] for r in long if r["attention"] == "stream")
perdoc = {r["attn_impl"]: r for r in long if r["attention"] == "per-document"}
impl = "sdpa"
flex = perdoc.get("flex_attention")
# flex_attention only when it runs, matches sdpa and is clearly faster (it compiles first)
if flex and "tok_s" in flex and "error" not in flex and flex.get("first_step_s", 1e9) < 90 \
        and flex.get("logit_diff_vs_sdpa", 1e9) < 0.1 * flex.get("logit_diff_stream", 0) \
        and flex["tok_s"] > 1.2 * perdoc["sdpa"]["tok_s"]:
    impl = "flex_attention"
tps2 = min(stream, perdoc[impl]["tok_s"])
# 0.85: data, optimizer steps and logging cost beside the measured fwd+bwd
steps = lambda t: max(1, int(0.85 * t // batch))
b = {"stage1_tokens": steps(tps1 * s1) * batch, "stage2_tokens": steps(tps2 * s2) * batch,
     "stage1_tok_s": tps1, "stage2_tok_s": tps2, "stage1_seconds": s1, "stage2_seconds": s2,
     "batch_tokens": batch, "per_document_attn_impl": impl}
json.dump(b, open(f"{res}/budget.json", "w"), indent=1)
print(b)
EOF
  fi
  S1_TOKENS=$($PY -c "import json;print(json.load(open('$RESULTS/budget.json'))['stage1_tokens'])")
  S2_TOKENS=$($PY -c "import json;print(json.load(open('$RESULTS/budget.json'))['stage2_tokens'])")
  S2_TOKENS=$($PY -c "print(int($S2_TOKENS * $S2_SCALE) // $BATCH * $BATCH)")
  PERDOC_IMPL=$($PY -c "import json;print(json.load(open('$RESULTS/budget.json'))['per_document_attn_impl'])")

  # 5. stage 1, shared
  if [ ! -f "$WORK/runs/stage1/final/config.json" ]; then
    run stage1 60 $PY -m benchmarks.ablation_train --data "$WORK/out-longctx" \
      --out "$WORK/runs/stage1" --shape "$SHAPE" --tokenizer "$WORK/tokenizer" --chunk "$CHUNK" \
      --seq-len "$SEQ" --attention per-document --tokens "$S1_TOKENS" --lr "$S1_LR" --seed 0 \
      --batch-tokens "$BATCH" --micro-batch-tokens "$MICRO" --max-seconds "$(($(left) - 10))"
    cp "$WORK/runs/stage1/train_log.json" "$RESULTS/stage1-train_log.json"
  fi
  # 6-7. stage 2 and evaluation, one (arm, seed) at a time so each result is final early
  for s in $SEEDS; do
    for arm in $ARMS; do
      name=$arm-s$s$TAG
      [ -f "$RESULTS/$name/eval.json" ] && continue
      if [ "$arm" = longctx ]; then ATT=per-document IMPL=$PERDOC_IMPL; else ATT=stream IMPL=sdpa; fi
      if [ ! -f "$WORK/runs/$name/final/config.json" ]; then
        run "stage2 $name" 60 $PY -m benchmarks.ablation_train --data "$WORK/out-$arm" \
          --out "$WORK/runs/$name" --init "$WORK/runs/stage1/final" --seq-len "$SEQ" \
          --attention "$ATT" --attn-impl "$IMPL" --tokens "$S2_TOKENS" --lr "$S2_LR" --seed "$s" \
          --batch-tokens "$BATCH" --micro-batch-tokens "$MICRO" --warmup-steps 10 \
          --max-seconds "$(($(left) - 10))"
        mkdir -p "$RESULTS/$name"
        cp "$WORK/runs/$name/train_log.json" "$RESULTS/$name/train_log.json"
      fi
      # shellcheck disable=SC2086
      run "evaluate $name" 60 $PY -m train.evaluate --model "$WORK/runs/$name/final" \
        --data "$WORK/out-longctx" --compare-data "$WORK/out-baseline" --seq-len "$SEQ" \
        --out "$WORK/eval/$name" $GAIN
      mkdir -p "$RESULTS/$name"
      cp "$WORK/eval/$name/eval.json" "$RESULTS/$name/eval.json"
    done
  done
fi

# 8. report
$PY -m benchmarks.ablation_report --results "$RESULTS" --out "$REPORT" --plots "$PLOTS" || exit 1
log "done"
