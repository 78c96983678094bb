#!/usr/bin/env bash
# Run the benchmark suite and write its JSON and a Markdown table.
#   scripts/bench.sh [--smoke|--full] [OUT_DIR]     (default OUT_DIR: benchmarks/out)
# CPU-sized by default (the numbers in benchmarks/RESULTS.md); --full uses the whole
# training set (GPU sizes); --smoke runs every benchmark once at the tiniest sizes (CI:
# proves they run, measures nothing). Sizes: benchmarks/sizes.py.
set -euo pipefail
cd "$(dirname "$0")/.."
size=cpu
out=benchmarks/out
for a in "$@"; do
  case "$a" in
    --full) size=full ;;
    --smoke) size=smoke ;;
    *) out=$a ;;
  esac
done
mkdir -p "$out"
FASTCIFAR_BENCH_SIZE=$size python -m pytest benchmarks -q -p no:cacheprovider -o python_files="bench_*.py" \
  --benchmark-json="$out/bench.json" --benchmark-columns=median,rounds
python scripts/bench_table.py "$out/bench.json" > "$out/bench.md"
cat "$out/bench.md"
