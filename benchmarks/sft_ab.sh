#!/bin/bash
# SFT stage time of the quickstart (200 steps, no GRPO) at an older commit against this tree,
# alternated old/new twice on the same machine. Usage: benchmarks/sft_ab.sh OLD_WORKTREE
# (e.g. `git worktree add /tmp/old 62d6516`); prints "<side><round> <sft seconds>" per run.
set -euo pipefail
old=${1:?give a worktree of the older commit}
new=$(cd "$(dirname "$0")/.." && pwd)
for i in 1 2; do
  for side in old new; do
    if [ "$side" = old ]; then dir=$old; else dir=$new; fi
    rm -rf "/tmp/sft_ab_$side$i"
    (cd "$dir" && PYTHONPATH=$dir python -m tailor_jax.cli run configs/quickstart.yaml \
      "run_dir=/tmp/sft_ab_$side$i" sft.steps=200 grpo=null > "/tmp/sft_ab_$side$i.log" 2>&1)
    echo "$side$i $(python -c "import json; print(json.load(open('/tmp/sft_ab_$side$i/sft/stage.json'))['seconds'])")"
  done
done
