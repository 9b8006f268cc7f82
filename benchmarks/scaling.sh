#!/usr/bin/env bash
# Parallel scaling over worker counts (benchmarks/scaling.py) on the GPU machine's CPUs
# (16 cores, 128 GB, x86_64, Python 3.12; no network, no Apache Beam, no Dask there).
#
# Here, once (needs pip and its index; the books and Beam come from the ablation's bundle):
#   bash benchmarks/ablation_bundle.sh   # .carry/ablation/beam-site.tar.xz, books.tar.xz
#   bash benchmarks/scaling.sh bundle    # .carry/scaling/dask-site.tar.xz (dask, distributed
#                                        # and what the image lacks of their needs, ~3 MB)
# `bash benchmarks/scaling.sh startup` there runs benchmarks/startup.py instead (the fixed start
# of a run against an empty Beam pipeline; SCALING_ARGS="--workers 16 --rounds 3").
# There, again until it prints "complete" (each call stops cleanly before SCALING_DEADLINE_S
# seconds, default 580, so it fits a 600-s call; finished rows are kept):
#   command: bash benchmarks/scaling.sh
#   carry:   .carry/ablation/beam-site.tar.xz .carry/ablation/books.tar.xz .carry/scaling
# Each finished row is written to benchmarks/results/scaling_workers_device.json there (not
# scaling_workers.json, which holds this machine's run: rows of another machine are never
# mixed in) and copied to $OUT/scaling_workers_device.json. A fresh machine starts from the
# working tree, so copy the file that came back to benchmarks/results/ here before the next
# call: the rows in it are skipped (same corpus, tokenizer and machine; SCALING_ARGS=--fresh
# measures them all again, SCALING_ARGS="--redo dask:16" one row).
#
# Settings (environment): SCALING_WORKERS (1,2,4,8,16), SCALING_CORPUS_MB (300),
# SCALING_MODES (scaling.py's default list), SCALING_DEADLINE_S (580), SCALING_ARGS (more flags).
# SCALING_DEDUP=1: the pipeline rows with duplicate removal on (the copies are then dropped).
# The tokenizer is the pipeline's bundled Qwen3 (transforms/assets/), unless ../shared/data has
# one; the books are books.tar.xz's unless ../shared/data/books exists; the code is the
# machine's Python standard library.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

if [ "${1:-}" = bundle ]; then
  set -e
  out=$ROOT/.carry/scaling
  mkdir -p "$out"
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  plat=""
  for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_28_x86_64 manylinux1_x86_64 \
           manylinux_2_5_x86_64; do
    plat="$plat --platform $p"
  done
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $plat -d "$work/whl" "dask==2026.8.0" "distributed==2026.8.0" partd locket tblib zict tornado
  mkdir -p "$work/site"
  for w in "$work"/whl/*.whl; do (cd "$work/site" && $PY -m zipfile -e "$w" .); done
  find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
  tar cf - -C "$work/site" . | xz -T2 -6 > "$out/dask-site.tar.xz"
  ls -la "$out"
  exit 0
fi

DEADLINE_S=${SCALING_DEADLINE_S:-580}
CARRY=${SCALING_CARRY:-$ROOT/.carry}
SITE=/tmp/scaling-site
log() { echo "[scaling $(date +%H:%M:%S) +${SECONDS}s] $*"; }

# Packages the machine lacks travel as archives, unpacked once per machine.
if ! $PY -c "import apache_beam" 2>/dev/null; then
  if [ ! -f "$SITE/.beam" ]; then
    [ -f "$CARRY/ablation/beam-site.tar.xz" ] || { log "no Apache Beam and no $CARRY/ablation/beam-site.tar.xz"; exit 1; }
    log "unpacking beam-site.tar.xz"
    mkdir -p "$SITE" && tar xJf "$CARRY/ablation/beam-site.tar.xz" -C "$SITE" && touch "$SITE/.beam"
  fi
  NEED_SITE=1
fi
if ! $PY -c "import distributed" 2>/dev/null; then
  if [ ! -f "$SITE/.dask" ] && [ -f "$CARRY/scaling/dask-site.tar.xz" ]; then
    log "unpacking dask-site.tar.xz"
    mkdir -p "$SITE" && tar xJf "$CARRY/scaling/dask-site.tar.xz" -C "$SITE" && touch "$SITE/.dask"
  fi
  [ -f "$SITE/.dask" ] && NEED_SITE=1 || log "no Dask: the DaskRunner rows will say skipped"
fi
if [ -n "${NEED_SITE:-}" ]; then
  export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

SHARED=${LONGCTX_SHARED_DATA:-$ROOT/../shared/data}
if [ -d "$SHARED/books" ]; then
  BOOKS=$SHARED/books
else
  BOOKS=/tmp/scaling-books/books
  if [ ! -d "$BOOKS" ]; then
    [ -f "$CARRY/ablation/books.tar.xz" ] || { log "no books: $SHARED/books or $CARRY/ablation/books.tar.xz"; exit 1; }
    mkdir -p /tmp/scaling-books && tar xJf "$CARRY/ablation/books.tar.xz" -C /tmp/scaling-books
  fi
fi

if [ "${1:-}" = startup ]; then  # the fixed start against an empty Beam run: benchmarks/startup.py
  res=${SCALING_RESULTS:-benchmarks/results/startup_device.json}
  copy=()
  [ -n "${OUT:-}" ] && copy=(--copy-to "$OUT/$(basename "$res")")
  # shellcheck disable=SC2086
  exec $PY benchmarks/startup.py --books "$BOOKS" --results "$res" "${copy[@]}" ${SCALING_ARGS:-}
fi

RESULTS=${SCALING_RESULTS:-benchmarks/results/scaling_workers_device.json}
COPY=()
[ -n "${OUT:-}" ] && COPY=(--copy-to "$OUT/$(basename "$RESULTS")")
MODES=()
[ -n "${SCALING_MODES:-}" ] && MODES=(--modes "$SCALING_MODES")
log "python $($PY -c 'import platform; print(platform.python_version())'), $(nproc) cores, books $BOOKS"
# whether the cores are hyperthreads of fewer (a busy sibling slows a core's tokenizer)
log "$(lscpu 2>/dev/null | grep -E '^(Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\))' | tr -s ' ' | paste -sd ';')"
# shellcheck disable=SC2086
$PY benchmarks/scaling.py --workers "${SCALING_WORKERS:-1,2,4,8,16}" \
  --corpus-mb "${SCALING_CORPUS_MB:-300}" --books "$BOOKS" --results "$RESULTS" \
  --budget-s $((DEADLINE_S - SECONDS)) --work /tmp/longctx-scaling --keep-corpus \
  "${MODES[@]}" "${COPY[@]}" ${SCALING_ARGS:-}
rc=$?
if grep -q '"complete": true' "$RESULTS" 2>/dev/null; then log "complete"; else log "not complete: call again"; fi
exit $rc
