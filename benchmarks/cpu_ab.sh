#!/bin/bash
# CPU speed of this tree against an older commit: benchmarks/sampler.py and benchmarks/grpo_step.py
# (ours only), alternated old/new for ROUNDS rounds in one sitting, each run writing its result
# file to benchmarks/results/ab/<tag>/; then benchmarks/cpu_ab_summary.py writes the medians and
# new/old ratios. Usage: benchmarks/cpu_ab.sh OLD_WORKTREE TAG [ROUNDS]
# (e.g. `git worktree add --detach /tmp/old 945197d`); BENCHES="grpo_step" times that benchmark
# only (default "sampler grpo_step").
set -euo pipefail
old=${1:?give a worktree of the older commit}
tag=${2:?give a tag for the result folder}
rounds=${3:-2}
new=$(cd "$(dirname "$0")/.." && pwd)
out="$new/benchmarks/results/ab/$tag"
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
  for bench in ${BENCHES:-sampler grpo_step}; do
    for side in old new; do
      if [ "$side" = old ]; then dir=$old; else dir=$new; fi
      (cd "$dir" && PYTHONPATH=$dir python benchmarks/$bench.py --peers "" --runs 3 \
        --out "$out/${bench}_${side}${i}.json" > "$out/${bench}_${side}${i}.log" 2>&1)
      echo "$bench $side$i done $(date -u +%H:%M:%S)"
    done
  done
done
python "$new/benchmarks/cpu_ab_summary.py" "$out"
