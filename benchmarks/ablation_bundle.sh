#!/usr/bin/env bash
# What benchmarks/ablation.sh needs on the GPU machine beside the code (no network there):
#   .carry/ablation/beam-site.tar.xz  Apache Beam 2.77 and the packages it needs that the
#                                     machine's image lacks, for CPython 3.12 x86_64 (~24 MB)
#   .carry/ablation/books.tar.xz      the shared books (../shared/data/books, ~3.5 MB)
# Usage, from the project's root: bash benchmarks/ablation_bundle.sh   (1-2 minutes)
# The image already has numpy, pyarrow, pyyaml, tokenizers, matplotlib, pathspec, grpcio,
# protobuf, requests, python-dateutil, cloudpickle, regex, ... (the device's KINDS.md list).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
out=$root/.carry/ablation
mkdir -p "$out"
grep -qx '/.carry/' "$root/.gitignore" 2>/dev/null || echo "warning: /.carry/ is not ignored"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
plat=""
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64; do
  plat="$plat --platform $p"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d "$work/whl" "apache-beam==2.77.0" fastavro fasteners httplib2 jsonpickle "objsize<0.8" \
  "pymongo<5" dnspython proto-plus pytz zstandard "beartype<0.23,>=0.21" "cryptography<51" cffi \
  pycparser orjson dill
mkdir -p "$work/site"
for w in "$work"/whl/*.whl; do (cd "$work/site" && python3 -m zipfile -e "$w" .); done
# Beam's tests and examples are not needed to run a pipeline
find "$work/site" -name '*_test.py' -delete
rm -rf "$work/site/apache_beam/examples"
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
tar cf - -C "$work/site" . | xz -T2 -6 > "$out/beam-site.tar.xz"
books=${LONGCTX_SHARED_DATA:-$root/../shared/data}
tar cf - -C "$books" $(cd "$books" && ls books/*.txt) | xz -T2 -9 > "$out/books.tar.xz"
ls -la "$out"
