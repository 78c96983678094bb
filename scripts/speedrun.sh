#!/usr/bin/env bash
# Run the speedrun94 recipe N times and report mean and standard deviation of the final
# test accuracy and of the training time (device events; compile warm-up, data loading
# and per-epoch evaluation excluded).
#   scripts/speedrun.sh N [extra fastcifar.train flags, e.g. --data PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/speedrun.sh N [train flags]}
shift
stamp=$(date +%Y%m%d-%H%M%S)
for i in $(seq 1 "$n"); do
  python -m fastcifar.train --recipe speedrun94 --amp --compile --no-evaluate \
    --seed "$i" --out "runs/speedrun-$stamp-$i" "$@"
done
python - "$stamp" "$n" <<'PY'
import json, statistics, sys
stamp, n = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"runs/speedrun-{stamp}-{i}/summary.json")) for i in range(1, n + 1)]
acc = [r["final_test_acc"] for r in runs]
sec = [r["train_time_s"] for r in runs]
sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
print(f"speedrun94 x{n} on {runs[0]['device']}: accuracy {statistics.mean(acc):.2f} +- "
      f"{sd(acc):.2f} %, time {statistics.mean(sec):.2f} +- {sd(sec):.2f} s "
      f"(>= 94 %: {sum(a >= 94 for a in acc)}/{n})")
PY
