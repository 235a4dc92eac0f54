"""How to spend a CPU host's cores on a study: one cell at a time over every core, or several
cells at once with fewer devices each.

    python benchmarks/study_throughput.py SFT_CONFIG.yaml [--steps 40] [--skip 10] [--devices 2] [--out FILE]

`tailor-jax study` runs a cell with one JAX device per core (`mesh_preset: auto`, data-parallel);
`TAILOR_CPU_DEVICES=1 tailor-jax study --parallel 2` would run two cells at once with one device
each. This runs the same SFT config (a cell's `sft/config.yaml`) both ways, from scratch in a
temporary directory: (a) one process over `--devices` devices, then (b) `--devices` processes at
once, one device each. The figure is steady-state SFT steps per second summed over the processes
(each process's `step_time` from metrics.jsonl, logged every step, first `--skip` steps left out:
compile and warm-up), and the ratio (b) / (a). Nothing else should run on the machine meanwhile.
Note that the device count changes the float summation order, so cells run the two ways are not
bitwise comparable: a study should use one way for all its cells.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from result_file import write_result_file


def launch(config: str, run_dir: Path, steps: int, devices: int) -> subprocess.Popen:
    env = {**os.environ, "TAILOR_CPU_DEVICES": str(devices)}
    overrides = [f"run_dir={run_dir}", f"steps={steps}", "log_every=1", "eval_every=0", "eval_samples=0",
                 f"checkpoint.every_steps={steps}", "progress=false"]
    return subprocess.Popen([sys.executable, "-m", "tailor_jax.cli", "sft", config, *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(run_dir.parent / f"{run_dir.name}.log", "w"))


def steady_step_seconds(run_dir: Path, skip: int) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open() if line.strip()]
    return [r["step_time"] for r in records if "step_time" in r and r["step"] > skip]


def arm(config: str, workdir: Path, name: str, processes: int, devices: int, steps: int, skip: int) -> dict:
    runs = [workdir / f"{name}-{i}" for i in range(processes)]
    for run in runs:
        run.mkdir()
    start = time.perf_counter()
    procs = [launch(config, run, steps, devices) for run in runs]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"{name}: an SFT process failed (exit {codes}); see {workdir}/*.log")
    times = [steady_step_seconds(run, skip) for run in runs]
    per_process = [1.0 / statistics.median(t) for t in times]
    return {"system": name, "processes": processes, "devices_per_process": devices, "steps": steps,
            "median_step_seconds": [round(statistics.median(t), 4) for t in times],
            "steps_per_second": round(sum(per_process), 4), "wall_seconds": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="an SFT config, e.g. a study cell's sft/config.yaml (its data files must exist)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("--devices", type=int, default=2, help="the host's devices for a cell (one per core)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="study-throughput-") as tmp:
        workdir = Path(tmp)
        one = arm(args.config, workdir, "one_cell_all_devices", 1, args.devices, args.steps, args.skip)
        print(json.dumps(one), flush=True)
        many = arm(args.config, workdir, "cells_in_parallel_one_device_each", args.devices, 1, args.steps, args.skip)
        print(json.dumps(many), flush=True)
    ratio = many["steps_per_second"] / one["steps_per_second"]
    print(f"throughput, {args.devices} cells at once with one device each / one cell over {args.devices} devices: "
          f"{ratio:.2f}x")
    write_result_file("study_throughput", [one, many], matmul_peak_gflops=None, out=args.out, config=args.config,
                      throughput_ratio=round(ratio, 3), skip=args.skip)


if __name__ == "__main__":
    main()
