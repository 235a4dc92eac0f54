"""`tailor-jax report`: one run's report, an overlay of several runs, or a study's report.

    tailor-jax report RUN_DIR                 # RUN_DIR/report.md, RUN_DIR/plots/*.png
    tailor-jax report RUN_A RUN_B --out DIR   # DIR/report.md, DIR/plots/*.png (runs overlaid)
    tailor-jax report STUDY_DIR               # a `tailor-jax study` directory

Apart from `eval.report` because it dispatches to `eval.study_report`, which builds on
`eval.report` (one module holding both would import each other).
"""

from __future__ import annotations

import sys

from tailor_jax.eval import study_report
from tailor_jax.eval.report import write_comparison, write_report


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write report.md and plots for one run, or overlay several runs")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of `tailor-jax run`, or one study directory")
    parser.add_argument("--out", help="output directory when comparing several runs (default: ./report-compare)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if len(args.run_dirs) == 1 and not args.out and study_report.is_study_dir(args.run_dirs[0]):
        path = study_report.write_study_report(args.run_dirs[0])  # a `tailor-jax study` directory
    elif len(args.run_dirs) == 1 and not args.out:
        path = write_report(args.run_dirs[0])
    else:
        path = write_comparison(args.run_dirs, args.out or "report-compare")
    print(f"wrote {path} and plots in {path.parent / 'plots'}", file=sys.stderr)
    return 0
