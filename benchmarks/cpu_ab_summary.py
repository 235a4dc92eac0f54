"""Summarise a benchmarks/cpu_ab.sh folder: per benchmark and side, the per-run figures of every
result file, their medians, and new/old ratios (per round and of the medians). Writes
<folder>/summary.json and prints it."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def figure(bench: str, result: dict) -> tuple[str, list[float]]:
    ours = result["results"][0] if "results" in result else result["systems"][0]
    if bench == "sampler":
        return "tok_per_s (higher is faster)", [ours["tokens"] / s for s in ours["seconds"]]
    return "seconds per step (lower is faster)", list(ours["steps_s"])


def main(folder: Path) -> None:
    summary = {}
    for bench in ("sampler", "grpo_step"):
        runs = {}
        for side in ("old", "new"):
            for path in sorted(folder.glob(f"{bench}_{side}*.json")):
                result = json.loads(path.read_text())
                unit, values = figure(bench, result)
                phases = {k: v for k, v in result["results"][0].items() if k.endswith("_s_median")}
                runs.setdefault(side, []).append({"file": path.name, "commit": result.get("commit"), "date": result.get("date"),
                                                  "values": values, "median": statistics.median(values), **phases})
        if not runs:
            continue
        old = [r["median"] for r in runs.get("old", [])]
        new = [r["median"] for r in runs.get("new", [])]
        summary[bench] = {"unit": unit, "runs": runs,
                          "new_over_old_per_round": [n / o for n, o in zip(new, old)],
                          "new_over_old_of_medians": statistics.median(new) / statistics.median(old) if old and new else None}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({b: {k: v for k, v in s.items() if k != "runs"} for b, s in summary.items()}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
