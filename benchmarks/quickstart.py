"""Time `tailor-jax run configs/quickstart.yaml` end to end in a fresh temporary run directory and
write the held-out accuracies (after SFT and after GRPO), every stage's seconds and the total
time to a result file (benchmarks/result_file.py). Overrides are passed to the run, e.g. to
check the plumbing on a shrunken pipeline; the figures in README.md / docs/results.md come from
the plain command:

    python benchmarks/quickstart.py                      # the quickstart as documented (5-7 min on 2 cores)
    python benchmarks/quickstart.py --out '' sft.steps=10 ...   # a quick check, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tiny import matmul_peak_flops
from result_file import ROOT, write_result_file

STAGES = ("data", "warm_start", "sft", "grpo", "eval", "report")


def main() -> None:
    parser = argparse.ArgumentParser(description="time the quickstart pipeline; write accuracy + time")
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/quickstart_<UTC date_time>.json; '' writes none)")
    parser.add_argument("--keep", default=None, help="copy the run directory here when done")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the run")
    args = parser.parse_args()

    peak = matmul_peak_flops()  # this process's view of the machine, before the run
    with tempfile.TemporaryDirectory(prefix="tailor-quickstart-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "tailor_jax.cli", "run", args.config, f"run_dir={run_dir}", *args.overrides]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"tailor-jax run failed with exit status {done.returncode}")
        stages = {}
        for stage in STAGES:
            info_path = run_dir / stage / "stage.json"
            if info_path.is_file():
                info = json.loads(info_path.read_text())
                stages[stage] = {"seconds": info.get("seconds"), "summary": info.get("summary")}
        results = []
        for model in ("sft", "grpo"):
            path = run_dir / "eval" / f"{model}.json"
            if path.is_file():
                result = json.loads(path.read_text())
                results.append({"system": f"tailor_jax {model}", "version": "tailor-jax at the commit recorded",
                                "acc": result["acc"],
                                "acc_by_level": result.get("acc_by_level"), "num_problems": result["num_problems"]})
        if args.keep:
            shutil.copytree(run_dir, args.keep, dirs_exist_ok=True)
    for r in results:
        print(f"{r['system']}: held-out accuracy {100 * r['acc']:.1f}% over {r['num_problems']} problems")
    print(f"total {seconds:.0f} s; " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in stages.items() if v["seconds"]))
    write_result_file("quickstart", results, matmul_peak_gflops=peak / 1e9, out=args.out, config=args.config,
                      overrides=args.overrides, wall_seconds=seconds, stages=stages)


if __name__ == "__main__":
    main()
