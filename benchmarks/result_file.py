"""Result files: every benchmark run writes one JSON file to benchmarks/results/ (or `--out`) with
what is needed to trust and reproduce its figures: the command, the commit (and whether the tree
had uncommitted changes), the UTC date, the machine (cores, JAX backend and version), the
measured float32 matmul peak, each system's version, and the results themselves."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def git_commit() -> str:
    """HEAD's commit, with `+dirty` when tracked files differ from it; `unknown` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import jax

    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind}


def default_path(workload: str, now: datetime.datetime) -> Path:
    return RESULTS_DIR / f"{workload}_{now:%Y-%m-%d_%H%M}.json"


def write_result_file(workload: str, results: list[dict], *, matmul_peak_gflops: float | None,
                      out: str | None = None, **extra: Any) -> Path | None:
    """Write `results` (one dict per system, each with "system" and, for peers, "version") and
    the run's context; `out` "" writes nothing, None the default path. Returns the path."""
    if out == "":
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "workload": workload, "date": now.isoformat(timespec="seconds"), "commit": git_commit(),
        "command": shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "machine": machine(), "matmul_peak_gflops": matmul_peak_gflops,
        "versions": {r["system"]: r.get("version") for r in results if "system" in r},
        **extra, "results": results,
    }
    path = Path(out) if out else default_path(workload, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results written to {path}", file=sys.stderr)
    return path
