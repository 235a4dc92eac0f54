"""How far `benchmarks/memory.py`'s extrapolated estimates (compiles at 1, 2, 3 decoder layers) are
from exact ones (the whole model compiled, `--exact`): the relative error of each figure, for the
rows (workload, stage, shape) the two result files share.

    python benchmarks/memory_compare.py --exact benchmarks/results/memory_0.5b_fit.json \\
        --extrapolated benchmarks/results/memory_0.5b_extrapolated.json --out benchmarks/results/memory_extrapolation_check.json

The temporaries are extrapolated again from each row's recorded points (`fit_temporaries_gib`)
with the current rule (`tailor_jax.train.memory_plan.extrapolate`), so a result file written by an
earlier rule is judged by this one too; the other figures (parameters and optimizer state) are
exactly linear in the layer count and taken as written. `--out` appends to a JSON list.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailor_jax.model import get_preset
from tailor_jax.train.memory_plan import extrapolate

FIGURES = ("arguments", "outputs", "aliased", "temporaries", "peak")


def compare(exact: dict, fitted: dict) -> dict:
    points = {int(k): v for k, v in fitted["fit_temporaries_gib"].items()}
    layers = tuple(sorted(points))
    target = get_preset(fitted["workload"]).num_layers
    # extrapolate works on integers (bytes); the points are GiB rounded to 1e-4: work in units of 1e-4 GiB
    scaled = extrapolate(layers, [(round(points[n] * 1e4),) for n in layers], target)
    temporaries = scaled.figures[0] / 1e4
    rederived = dict(fitted, temporaries_gib=temporaries,
                     peak_gib=fitted["peak_gib"] - fitted["temporaries_gib"] + temporaries)
    row = {"workload": fitted["workload"], "stage": fitted["stage"], "shape": fitted["shape"],
           "layers": target, "fit_layers": list(layers), "fit_error": scaled.error,
           "compile_s": {"exact": exact.get("compile_s"), "extrapolated": fitted.get("compile_s")}}
    for name in FIGURES:
        e, f = exact[f"{name}_gib"], rederived[f"{name}_gib"]
        row[name] = {"exact_gib": e, "extrapolated_gib": round(f, 3),
                     "relative_error": round((f - e) / e, 4) if e else None}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exact", required=True)
    p.add_argument("--extrapolated", required=True)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    key = lambda r: (r["workload"], r["stage"], r["shape"])  # noqa: E731
    exact = {key(r): r for r in json.loads(Path(args.exact).read_text())["rows"]}
    fitted = json.loads(Path(args.extrapolated).read_text())
    rows = [compare(exact[key(r)], r) for r in fitted["rows"] if key(r) in exact and "fit_temporaries_gib" in r]
    for r in rows:
        print(f"{r['workload']:<14} {r['stage']:<24} {r['shape']:<14} " + "  ".join(
            f"{n} {r[n]['exact_gib']:.3f}->{r[n]['extrapolated_gib']:.3f} ({r[n]['relative_error']:+.1%})"
            for n in ("temporaries", "peak")))
    if args.out:
        out = Path(args.out)
        existing = json.loads(out.read_text()) if out.exists() else []
        record = {"exact": args.exact, "extrapolated": args.extrapolated,
                  "extrapolated_commit": fitted.get("commit"), "rows": rows}
        out.write_text(json.dumps(existing + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()
