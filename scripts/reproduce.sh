#!/usr/bin/env bash
# Reproduce a seed with its full recipe: scripts/reproduce.sh RECIPE [extra train flags]
# e.g. scripts/reproduce.sh resnet18 --data ../shared/data/cifar10-jpeg.tar.gz
set -euo pipefail
recipe=${1:?usage: scripts/reproduce.sh RECIPE [train flags]}
shift
exec python -m fastcifar.train --recipe "$recipe" --amp --compile "$@"
