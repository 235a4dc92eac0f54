"""Re-state a committed study report's comparisons from its summary.json with the current rule
(tailor_jax.eval.study_report.difference), for report snapshots whose run directories are gone,
so `tailor-jax report` cannot be rerun over them. Only the comparison lines of report.md and the
`comparisons` of summary.json change; every old line must first be found in report.md as the
old record's sentence, or nothing is written.

    python benchmarks/restate_study_comparisons.py benchmarks/results/studies/gf-warm-starts [--write]

Without --write it prints the lines that would change (none once a snapshot is current).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailor_jax.atomic import write_json, write_text
from tailor_jax.eval.study_report import describe_comparison, difference


def restate(snapshot: Path) -> tuple[list[dict], str, int]:
    summary = json.loads((snapshot / "summary.json").read_text())
    manifest = json.loads((snapshot / "study.json").read_text())
    replicate = {c["name"]: c["values"].get(manifest.get("replicate_axis") or "seed") for c in manifest["cells"]}
    text = (snapshot / "report.md").read_text()
    comparisons, changed = [], 0
    for old in summary["comparisons"]:
        old_line = f"- {describe_comparison(old)}\n"
        if old_line not in text:
            raise SystemExit(f"{snapshot}/report.md has no line {old_line.strip()!r}: not the report of this summary.json")
        per_seed = {m: {replicate[name]: summary["cells"][name][old["metric"]] for name in summary["methods"][m]["cells"]
                        if old["metric"] in summary["cells"][name]} for m in (old["a"], old["b"])}
        new = {"a": old["a"], "b": old["b"], "metric": old["metric"], **difference(per_seed[old["a"]], per_seed[old["b"]])}
        new_line = f"- {describe_comparison(new)}\n"
        if new_line != old_line:
            changed += 1
            print(f"- was: {old_line.strip()[2:]}\n  now: {new_line.strip()[2:]}")
            text = text.replace(old_line, new_line, 1)
        comparisons.append(new)
    return comparisons, text, changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("snapshot", type=Path, help="a study report directory: report.md, summary.json, study.json")
    p.add_argument("--write", action="store_true", help="write the re-stated report.md and summary.json")
    args = p.parse_args()
    comparisons, text, changed = restate(args.snapshot)
    print(f"{args.snapshot}: {changed} of {len(comparisons)} comparison lines change")
    if args.write and changed:
        summary = json.loads((args.snapshot / "summary.json").read_text())
        write_json(args.snapshot / "summary.json", {**summary, "comparisons": comparisons}, allow_nan=False, default=str)
        write_text(args.snapshot / "report.md", text)


if __name__ == "__main__":
    main()
