#!/usr/bin/env bash
# Run the benchmark suite and write its JSON and a Markdown table.
#   scripts/bench.sh [--full] [OUT_DIR]     (default OUT_DIR: benchmarks/out)
# CPU-sized by default (CI runs it); --full uses the whole training set (GPU sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
out=benchmarks/out
for a in "$@"; do
  case "$a" in
    --full) full=1 ;;
    *) out=$a ;;
  esac
done
mkdir -p "$out"
FASTCIFAR_BENCH_FULL=$full python -m pytest benchmarks -q -p no:cacheprovider \
  --benchmark-json="$out/bench.json" --benchmark-columns=median,rounds
python scripts/bench_table.py "$out/bench.json" > "$out/bench.md"
cat "$out/bench.md"
