#!/usr/bin/env bash
# Run a speed-run recipe with seeds 1..N on every visible GPU (fastcifar.sweep) and report,
# over the runs, the mean, standard deviation and 95 % interval of the final test accuracy
# and of the timed span (whitening + training + final TTA, CUDA events on a GPU; compile
# warm-up and per-epoch evaluation excluded), and the fraction of runs at or above 94 %.
#   scripts/speedrun.sh N [RECIPE] [extra flags: fastcifar.sweep's or fastcifar.train's]
# RECIPE defaults to speedrun94. The sweep goes to runs/sweep-RECIPE-DATE (sweep.json,
# sweep.md); pass --out DIR to resume one (finished runs are not repeated).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/speedrun.sh N [RECIPE] [flags]}
shift
recipe=speedrun94
if [[ $# -gt 0 && $1 != -* ]]; then
  recipe=$1
  shift
fi
exec python -m fastcifar.sweep --recipe "$recipe" --seeds "$n" --target 94 --amp --compile "$@"
