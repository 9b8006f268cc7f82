#!/usr/bin/env bash
# The pipeline of a base commit against the working tree at one worker count, on the GPU
# machine's CPUs: benchmarks/scaling.sh's multi_processing row of each (SCALING_AB_MODE=dask:
# its DaskRunner row, a fresh local cluster each run), the two alternated
# round after round (A B A B ...), so that drift of the machine falls on both alike.
#
# Here, once per base (needs git):
#   bash benchmarks/scaling_ab.sh prepare REF [NAME]  # .carry/scaling/NAME.tar (base.tar): REF's pipeline (~2 MB)
# There (the bundles as for benchmarks/scaling.sh):
#   command: SCALING_AB_WORKERS=16 SCALING_AB_ROUNDS=3 bash benchmarks/scaling_ab.sh
#   (SCALING_AB_BASE=NAME: the base prepared as NAME, for two bases in one call)
#   carry:   .carry/ablation/beam-site.tar.xz .carry/ablation/books.tar.xz .carry/scaling
# Or one tree under two settings: without the base's archive (or with SCALING_AB_SAME=1)
# both sides run the working tree, with SCALING_AB_BASE_ENV and SCALING_AB_HEAD_ENV (e.g.
# "SCALING_RAYON_THREADS=2": each worker's tokenizer threads instead of the pipeline's C//N).
# Prints each run's wall seconds and writes $OUT/scaling_ab.json (SCALING_AB_NAME; each round's
# row and log in SCALING_AB_RES, /tmp/scaling-ab (a folder of its own under $OUT: they come back
# from a call cut short; earlier base-*/head-* files in it are replaced); base ref, rounds, walls, each
# run's row with its worker timeline); the corpus is scaling.sh's (SCALING_CORPUS_MB, 300).
# Before the rounds it imports matplotlib twice and logs both times: the report's plot helpers
# build matplotlib's font cache on a fresh machine, once, which no later run pays.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
log() { echo "[scaling_ab $(date +%H:%M:%S) +${SECONDS}s] $*"; }

if [ "${1:-}" = prepare ]; then
  ref=${2:?usage: bash benchmarks/scaling_ab.sh prepare REF [NAME]}
  name=${3:-base}
  mkdir -p .carry/scaling
  # only what the pipeline runs from (the benchmark's scripts are the working tree's on both
  # sides): the whole tree beside the bundles passed the device's 64 MiB of carried files
  git archive --format=tar "$ref" pipeline transforms schemas pyproject.toml \
    > ".carry/scaling/$name.tar" || exit 1
  git rev-parse "$ref" > ".carry/scaling/$name.ref"
  log "base $(cat ".carry/scaling/$name.ref") -> .carry/scaling/$name.tar"
  exit 0
fi

N=${SCALING_AB_WORKERS:-16}
ROUNDS=${SCALING_AB_ROUNDS:-3}
BASE_ENV=${SCALING_AB_BASE_ENV:-}
HEAD_ENV=${SCALING_AB_HEAD_ENV:-}
MODE=${SCALING_AB_MODE:-multi_processing}
NAME=${SCALING_AB_NAME:-scaling_ab}  # $OUT/NAME.json: two comparisons in one call keep both
ARCHIVE=.carry/scaling/${SCALING_AB_BASE:-base}
if [ -n "${SCALING_AB_BASE:-}" ] && [ ! -f "$ARCHIVE.tar" ]; then
  log "SCALING_AB_BASE=$SCALING_AB_BASE: no $ARCHIVE.tar (bash benchmarks/scaling_ab.sh prepare REF $SCALING_AB_BASE, and carry .carry/scaling)"
  exit 2
fi
if [ -f "$ARCHIVE.tar" ] && [ -z "${SCALING_AB_SAME:-}" ]; then
  BASE=/tmp/scaling-ab-base
  REF=$(cat "$ARCHIVE.ref" 2>/dev/null)
  rm -rf "$BASE" && mkdir -p "$BASE" && tar xf "$ARCHIVE.tar" -C "$BASE"
  # the benchmark's own scripts (and benchmarks/timeline) are the working tree's on both sides:
  # only the pipeline differs
  cp -r "$ROOT/benchmarks/." "$BASE/benchmarks/"
  mkdir -p "$BASE/.carry" && ln -sfn "$ROOT/.carry/ablation" "$BASE/.carry/ablation"
  ln -sfn "$ROOT/.carry/scaling" "$BASE/.carry/scaling"
else
  BASE=$ROOT
  REF="working tree"
fi
log "base: $REF ${BASE_ENV:+($BASE_ENV)}; head: working tree ${HEAD_ENV:+($HEAD_ENV)}"
for i in 1 2; do
  log "import matplotlib.pyplot ($i): $($PY -c 'import time; t = time.time(); import matplotlib.pyplot; print(f"{time.time() - t:.2f} s")' 2>&1 | tail -1)"
done
RES=${SCALING_AB_RES:-/tmp/scaling-ab}  # each round's row and log (under $OUT: kept if the call is cut)
mkdir -p "$RES" && rm -f "$RES"/base-*.json "$RES"/base-*.log "$RES"/head-*.json "$RES"/head-*.log  # the rounds' files only: RES may be $OUT
for r in $(seq 1 "$ROUNDS"); do
  for side in base head; do
    tree=$ROOT; vars=$HEAD_ENV
    [ $side = base ] && tree=$BASE && vars=$BASE_ENV
    # shellcheck disable=SC2086
    env $vars SCALING_RESULTS=$RES/$side-$r.json SCALING_MODES=$MODE \
      SCALING_WORKERS=$N SCALING_ARGS=--fresh OUT="" bash "$tree/benchmarks/scaling.sh" \
      > "$RES/$side-$r.log" 2>&1
    log "round $r $side: $($PY -c "import json,sys; r=json.load(open(sys.argv[1]))['rows']['$MODE|$N']; print(f\"wall {r['wall_s']:.1f} s, rc {r['rc']}\")" "$RES/$side-$r.json" 2>&1 | tail -1)"
  done
done
$PY - "$RES" "$N" "$ROUNDS" "$REF" "${OUT:-}" "$BASE_ENV" "$HEAD_ENV" "$NAME" "$MODE" <<'EOF'
import json, statistics, sys
from pathlib import Path
res, n, rounds, base_ref, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
env = {"base": sys.argv[6], "head": sys.argv[7]}
runs = {"base": [], "head": []}
for r in range(1, rounds + 1):
    for side in runs:
        f = res / f"{side}-{r}.json"
        if f.exists():
            runs[side].append(json.loads(f.read_text())["rows"].get(f"{sys.argv[9]}|{n}"))
walls = {s: [row["wall_s"] for row in rows if row] for s, rows in runs.items()}
summary = {
    "mode": sys.argv[9],
    "workers": n,
    "rounds": rounds,
    "base_ref": base_ref,
    "env": env,
    "wall_s": walls,
    "median_wall_s": {s: statistics.median(w) for s, w in walls.items() if w},
    "runs": runs,
}
if all(walls.values()):
    summary["head_over_base"] = summary["median_wall_s"]["head"] / summary["median_wall_s"]["base"]
print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, sys.argv[8] + ".json").write_text(json.dumps(summary, indent=1) + "\n")
EOF
