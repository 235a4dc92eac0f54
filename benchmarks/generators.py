"""Problem-generator throughput: problems/s per task, median of 3 timed runs (min, max).

    python benchmarks/generators.py [--seconds 2] [--runs 3] [--no-cli]

Prints one JSON line per workload, then a table. Each workload is warmed up first, which also
sizes the timed runs to about `--seconds` each. Unless --no-cli, it also times one end-to-end
`tailor-jax generate kk --num 1000 --people 8` (process start and imports included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task


@dataclass(frozen=True)
class Workload:
    name: str
    task: str
    options: dict


WORKLOADS = (
    Workload("kk n=3", "kk", {"people": 3}),
    Workload("kk n=8", "kk", {"people": 8}),
    Workload("igsm op=15 med", "igsm", {"op": 15, "preset": "med"}),
    Workload("gf k=5", "gf", {"steps": 5}),
)
CLI_ARGS = ["generate", "kk", "--num", "1000", "--people", "8", "--seed", "0", "--no-progress"]


def time_generate(task, num: int, seed: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in itertools.islice(task.generate(num, seed), num))
    seconds = time.perf_counter() - start
    assert count == num, f"generator produced {count} of {num}"
    return seconds


def measure(workload: Workload, seconds: float, runs: int) -> dict:
    result = {"benchmark": "generators", "workload": workload.name, "task": workload.task, "options": workload.options}
    try:
        task = get_task(workload.task, **workload.options)
    except (ImportError, TailorError) as err:  # a task module not written yet
        return {**result, "error": str(err).splitlines()[0]}
    # Warm-up: generate until a quarter of the time budget has passed; it sizes the runs.
    num, spent = 8, 0.0
    while spent < seconds / 4:
        num *= 2
        spent = time_generate(task, num, seed=10_000)
    num = max(8, int(num / spent * seconds))
    rates = [num / time_generate(task, num, seed=run) for run in range(runs)]
    return {
        **result,
        "problems_per_run": num,
        "problems_per_s": round(statistics.median(rates), 1),
        "min": round(min(rates), 1),
        "max": round(max(rates), 1),
        "runs": runs,
    }


def time_cli() -> dict:
    result = {"benchmark": "generators", "workload": "cli " + " ".join(CLI_ARGS)}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kk8.jsonl")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "tailor_jax.cli", *CLI_ARGS, "--out", out], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {**result, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return {**result, "wall_s": round(seconds, 2), "problems_per_s": round(1000 / seconds, 1), "runs": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="target length of one timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per workload")
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI timing")
    args = parser.parse_args(argv)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    results = [measure(w, args.seconds, args.runs) for w in WORKLOADS]
    if not args.no_cli:
        results.append(time_cli())
    for result in results:
        print(json.dumps({**result, **machine}))
    print(f"\n{'workload':<62} {'problems/s':>11} {'min':>9} {'max':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['workload']:<62} {'n/a':>11}  ({r['error']})")
        else:
            lo, hi = r.get("min", "-"), r.get("max", "-")
            print(f"{r['workload']:<62} {r['problems_per_s']:>11} {lo:>9} {hi:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
