"""Run reports: `report.md` plus PNG plots of a run's metrics, and overlays of several runs.

    tailor-jax report RUN_DIR                 # RUN_DIR/report.md, RUN_DIR/plots/*.png
    tailor-jax report RUN_A RUN_B --out DIR   # DIR/report.md, DIR/plots/*.png (runs overlaid)

(the `tailor-jax report` command: `eval.report_command`)

Everything is read from files a run leaves behind (`sft/metrics.jsonl`, `grpo/metrics.jsonl`,
`eval/<model>.json`, `warm_start/stats.json`, `<stage>/stage.json`), so a report can be made
again at any time. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailor_jax.atomic import write_text
from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluate import format_strategies, format_table

STAGES = ("data", "warm_start", "sft", "grpo", "eval")
MODELS = ("sft", "grpo")


# ---------------------------------------------------------------------------------------
# Reading a run.
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _read_metrics(path: Path) -> list[dict]:
    from tailor_jax.train.metrics import read_metrics

    return read_metrics(path) if path.is_file() else []


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a report needs from a run directory (missing pieces are empty)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TailorError(f"run directory {run_dir} does not exist; pass the run_dir of a `tailor-jax run`")
    config = {}
    if (run_dir / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return {
        "name": run_dir.name,
        "dir": run_dir,
        "config": config,
        "stages": {s: _read_json(run_dir / s / "stage.json") for s in STAGES},
        "sft_metrics": _read_metrics(run_dir / "sft" / "metrics.jsonl"),
        "grpo_metrics": _read_metrics(run_dir / "grpo" / "metrics.jsonl"),
        "eval": {m: r for m in MODELS if (r := _read_json(run_dir / "eval" / f"{m}.json")) is not None},
        "warm_start": _read_json(run_dir / "warm_start" / "stats.json"),
    }


def series(metrics: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping records without it (or with null)."""
    points = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def training_seconds(grpo_metrics: Sequence[dict]) -> tuple[list[int], list[float]]:
    """(steps, cumulative GRPO seconds: sampling + update, no periodic eval) at each logged step.
    Steps between two logged ones are counted at the later one's step_time."""
    steps, seconds, total, previous = [], [], 0.0, 0
    for record in grpo_metrics:
        if record["step"] == 0:
            steps.append(0)
            seconds.append(0.0)
            continue
        if record.get("step_time") is not None:
            total += float(record["step_time"]) * (record["step"] - previous)
            previous = record["step"]
        steps.append(record["step"])
        seconds.append(total)
    return steps, seconds


def level_keys(metrics: Sequence[dict], prefix: str = "eval/acc/") -> list[str]:
    keys = {k for m in metrics for k in m if k.startswith(prefix) and k[len(prefix):].count("/") == 1}
    return sorted(keys, key=lambda k: int(k.rsplit("/", 1)[1]) if k.rsplit("/", 1)[1].isdigit() else 0)


# ---------------------------------------------------------------------------------------
# Plots.
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_sft_loss(runs: Sequence[dict], path: Path) -> Path | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for run in runs:
        for key, style in (("loss", "-"), ("eval/loss", "o--")):
            steps, values = series(run["sft_metrics"], key)
            if steps:
                label = key if len(runs) == 1 else f"{run['name']} {key}"
                ax.plot(steps, values, style, label=label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="SFT step", ylabel="cross-entropy (nats / token)", title="SFT loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_grpo_reward(runs: Sequence[dict], path: Path) -> Path | None:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    drawn = False
    for run in runs:
        steps, reward = series(run["grpo_metrics"], "reward")
        if not steps:
            continue
        drawn = True
        window = smoothing_window(len(steps))
        if len(runs) == 1:
            top.plot(steps, reward, "-", alpha=0.35, label="reward (per step)")
            top.plot(steps, moving_average(reward, window), "-", label=f"moving average ({window} steps)")
        else:
            top.plot(steps, moving_average(reward, window), "-", label=f"{run['name']} ({window}-step average)")
        steps_l, length = series(run["grpo_metrics"], "completions/mean_length")
        bottom.plot(steps_l, length, "-", label="mean length" if len(runs) == 1 else run["name"])
    if not drawn:
        plt.close(fig)
        return None
    top.set(ylabel="mean reward", title="GRPO rollouts")
    bottom.set(xlabel="GRPO step", ylabel="mean completion length (tokens)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_grpo_accuracy(runs: Sequence[dict], path: Path) -> Path | None:
    """Held-out accuracy over GRPO steps: per level for one run, overall per run for several."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for run in runs:
        keys = level_keys(run["grpo_metrics"]) if len(runs) == 1 else []
        for key in [*keys, "eval/acc"]:
            steps, values = series(run["grpo_metrics"], key)
            if steps:
                name = "all levels" if key == "eval/acc" else f"level {key.rsplit('/', 1)[1]}"
                label = name if len(runs) == 1 else run["name"]
                ax.plot(steps, values, "o-" if key == "eval/acc" else ".--", label=label, lw=2.5 if key == "eval/acc" else 1)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="GRPO step", ylabel="greedy accuracy", title="Held-out accuracy during GRPO", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_by_level(runs: Sequence[dict], path: Path) -> Path | None:
    """Grouped bars: final held-out accuracy per level, one bar per (run, model)."""
    import numpy as np

    plt = _pyplot()
    bars = [(f"{m}" if len(runs) == 1 else f"{run['name']} {m}", run["eval"][m]) for run in runs for m in MODELS if m in run["eval"]]
    if not bars:
        return None
    levels = sorted({lv for _, r in bars for lv in r["acc_by_level"]}, key=int)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(levels) + 2), 4))
    width = 0.8 / len(bars)
    x = np.arange(len(levels) + 1)
    for i, (label, result) in enumerate(bars):
        values = [result["acc_by_level"].get(lv, 0.0) for lv in levels] + [result["acc"]]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=f"{label} ({100 * result['acc']:.1f}%)")
    ax.set_xticks(x, [*levels, "all"])
    ax.set(xlabel="difficulty level", ylabel="greedy accuracy", title="Held-out accuracy by level", ylim=(0, 1.05))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_warm_start(runs: Sequence[dict], path: Path) -> Path | None:
    """Warm-start mix (demonstrations per primitive) and distinct-n of the traces."""
    import numpy as np

    plt = _pyplot()
    stats = [(run["name"], run["warm_start"]) for run in runs if run["warm_start"]]
    if not stats:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = sorted({p for _, s in stats for p in s["primitives"]})
    width = 0.8 / len(stats)
    for i, (run_name, s) in enumerate(stats):
        offset = (i - (len(stats) - 1) / 2) * width
        left.bar(np.arange(len(names)) + offset, [s["primitives"].get(n, 0) for n in names], width, label=run_name)
        right.bar(np.arange(3) + offset, [s[f"distinct_{n}"] for n in (1, 2, 3)], width, label=run_name)
    left.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    left.set(ylabel="demonstrations", title="Warm-start mix by primitive")
    right.set_xticks(np.arange(3), ["distinct-1", "distinct-2", "distinct-3"])
    right.set(ylabel="distinct n-grams / n-grams", title="Trace diversity", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
        if len(stats) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS = {
    "sft_loss.png": plot_sft_loss,
    "grpo_reward.png": plot_grpo_reward,
    "grpo_accuracy.png": plot_grpo_accuracy,
    "accuracy_by_level.png": plot_accuracy_by_level,
    "warm_start_diversity.png": plot_warm_start,
}


# ---------------------------------------------------------------------------------------
# Markdown.
def _level_label(config: dict) -> str:
    from tailor_jax.tasks import TASK_MODULES, task_class

    task = config.get("task", "")
    return task_class(task).level_label if task in TASK_MODULES else "level"


def _eval_tables(run: dict) -> list[str]:
    results = run["eval"]
    if not results:
        return ["(no evaluation results yet)"]
    label = _level_label(run["config"])
    parts = ["Greedy accuracy (%) on held-out problems:", "", format_table(results, label=label)]
    kinds = {f"{m} ({kind})": {"acc": acc, "acc_by_level": r["acc_by_kind_level"][kind]}
             for m, r in results.items() for kind, acc in r.get("acc_by_kind", {}).items()}
    if kinds:
        parts += ["", "By problem kind:", "", format_table(kinds, label=label)]
    passes = {f"{m} pass@{r.get('pass_k', 'k')}": {"acc": r["pass_at_k"], "acc_by_level": r["pass_at_k_by_level"]}
              for m, r in results.items() if "pass_at_k" in r}
    if passes:
        parts += ["", "pass@k (%):", "", format_table(passes, label=label)]
    for key, what in (("strategies", "greedy completions"), ("sampled_strategies", "pass@k samples")):
        labelled = {m: r[key] for m, r in results.items() if key in r}
        if labelled:
            parts += ["", f"Strategy of the {what} (the primitive each follows: % of them, and the accuracy among them; "
                      "`other`: none known):", ""]
            parts += [f"- {m}: {format_strategies(table)}" for m, table in labelled.items()]
    lengths = ", ".join(f"{m} {r['mean_length']:.1f}" for m, r in results.items())
    parts += ["", f"Mean completion length (tokens, greedy): {lengths}. Problems per level: "
              + ", ".join(f"{lv}: {n}" for lv, n in next(iter(results.values()))["num_by_level"].items()) + "."]
    cut = {m: r["truncated"] for m, r in results.items() if r.get("truncated")}
    if cut:
        budgets = sorted({str(results[m].get("max_new_tokens", "?")) for m in cut})
        parts += ["", "**Cut at the generation budget:** " + ", ".join(f"{m} {100 * v:.1f}%" for m, v in cut.items())
                  + f" of greedy completions reached eval.max_new_tokens = {'/'.join(budgets)} without an end token "
                  "and count as wrong. If the model was still reasoning, raise eval.max_new_tokens; if it loops, "
                  "that is its error."]
    if "sft" in results and "grpo" in results:
        delta = 100 * (results["grpo"]["acc"] - results["sft"]["acc"])
        parts += ["", f"**GRPO vs SFT: {100 * results['sft']['acc']:.1f}% -> {100 * results['grpo']['acc']:.1f}% "
                  f"({delta:+.1f} points).**"]
    return parts


def _stage_table(run: dict) -> list[str]:
    lines = ["| stage | status | seconds | summary |", "|---|---|---|---|"]
    for stage, info in run["stages"].items():
        if info:
            lines.append(f"| {stage} | {info.get('status', '?')} | {info.get('seconds', 0.0):.1f} | {info.get('summary', '')} |")
    total = sum((info or {}).get("seconds", 0.0) for info in run["stages"].values())
    lines.append(f"| total | | {total:.1f} | |")
    return lines


def strategy_shares(metrics: Sequence[dict], prefix: str = "eval/strategy/") -> list[tuple[int, dict[str, float]]]:
    """(step, {strategy: share}) at each logged evaluation with strategy labels; a strategy not
    logged at a step had a share of 0 there."""
    return [(int(m["step"]), {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)})
            for m in metrics if any(k.startswith(prefix) for k in m)]


def _grpo_curve(run: dict) -> list[str]:
    steps, acc = series(run["grpo_metrics"], "eval/acc")
    r_steps, reward = series(run["grpo_metrics"], "reward")
    lines = []
    if steps:
        lines.append("Held-out accuracy during GRPO (greedy, the trainer's own eval set): "
                     + ", ".join(f"step {s}: {100 * a:.1f}%" for s, a in zip(steps, acc)) + ".")
    shares = strategy_shares(run["grpo_metrics"])
    if len(shares) >= 2:  # what RL selected: the strategy mix of those greedy outputs, first and last eval
        (first, start), (last, end) = shares[0], shares[-1]
        mix = lambda share: ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(share.items(), key=lambda i: -i[1]) if v)  # noqa: E731
        lines.append(f"Strategy of those outputs (% of them): step {first}: {mix(start)} -> step {last}: {mix(end)}.")
    if r_steps:
        window = smoothing_window(len(r_steps))
        if window == 1:
            lines.append(f"Mean rollout reward (single steps, too few to average): step {r_steps[0]}: {reward[0]:.3f} "
                         f"-> step {r_steps[-1]}: {reward[-1]:.3f}.")
        else:
            first, last = np.mean(reward[:window]), np.mean(reward[-window:])
            lines.append(f"Mean rollout reward, averaged over {window} logged steps (one step's reward is noisy): "
                         f"steps {r_steps[0]}-{r_steps[window - 1]}: {first:.3f} -> "
                         f"steps {r_steps[-window]}-{r_steps[-1]}: {last:.3f}.")
    return lines


def skipped_updates(run: dict) -> list[str]:
    """One line per training stage that skipped non-finite updates (`nonfinite: skip`, train/guard.py)."""
    lines = []
    for stage in ("sft", "grpo"):
        counts = [m["nonfinite/skipped_steps"] for m in run[f"{stage}_metrics"] if "nonfinite/skipped_steps" in m]
        if counts and counts[-1] > 0:
            lines.append(f"{stage}: {int(counts[-1])} update(s) skipped for a non-finite loss or gradient norm "
                         "(`nonfinite: skip`; counted since the stage last started or resumed).")
    return lines


def smoothing_window(num_values: int, most: int = 10) -> int:
    """The moving-average window for a per-step series: a quarter of it, 1 to `most` values."""
    return max(1, min(most, num_values // 4))


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (fewer at the start)."""
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _embed(plots: dict[str, Path], base: Path) -> list[str]:
    return [f"![{name}]({path.relative_to(base)})" for name, path in plots.items()]


def make_plots(runs: Sequence[dict], plot_dir: Path) -> dict[str, Path]:
    made = {}
    for name, fn in PLOTS.items():
        path = fn(runs, plot_dir / name)
        if path is not None:
            made[name.removesuffix(".png")] = path
    return made


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.md and RUN_DIR/plots/*.png for one run."""
    run = load_run(run_dir)
    base = run["dir"]
    plots = make_plots([run], base / "plots")
    cfg = run["config"]
    lines = [f"# Run report: {run['name']}", ""]
    if cfg:
        warm = cfg.get("warm_start", {})
        lines += [f"Task `{cfg.get('task')}` {cfg.get('task_options', {})}; warm start `{warm.get('method')}`"
                  + (f" (strategy {warm.get('strategy')})" if warm.get("strategy") else "")
                  + f"; held-out levels {cfg.get('eval', {}).get('levels')}.", ""]
    lines += ["## Stages", "", *_stage_table(run), ""]
    skipped = skipped_updates(run)
    if skipped:
        lines += ["**Skipped updates.** " + " ".join(skipped), ""]
    lines += ["## Held-out evaluation", "", *_eval_tables(run), ""]
    curve = _grpo_curve(run)
    if curve:
        lines += ["## GRPO", "", *curve, ""]
    if run["warm_start"]:
        ws = run["warm_start"]
        lines += ["## Warm start", "", f"{ws['num_demos']} demonstrations from {ws['num_primitives']} primitive(s) "
                  f"{ws['primitives']}; distinct-1/2/3 {ws['distinct_1']:.3f} / {ws['distinct_2']:.3f} / "
                  f"{ws['distinct_3']:.3f}; mean {ws['mean_words']:.1f} words per demonstration.", ""]
    lines += ["## Plots", "", *_embed(plots, base), ""]
    path = base / "report.md"
    write_text(path, "\n".join(lines))
    return path


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """OUT/report.md and OUT/plots/*.png overlaying several runs (e.g. Tailor vs baselines)."""
    runs = [load_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):  # same basename in different parents
        for r in runs:
            r["name"] = f"{r['dir'].parent.name}/{r['name']}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(runs, out / "plots")
    rows = ["| run | warm start | SFT acc (%) | GRPO acc (%) | total seconds |", "|---|---|---|---|---|"]
    for r in runs:
        acc = lambda m: f"{100 * r['eval'][m]['acc']:.1f}" if m in r["eval"] else "-"  # noqa: E731
        seconds = sum((i or {}).get("seconds", 0.0) for i in r["stages"].values())
        method = r["config"].get("warm_start", {}).get("method", "?")
        rows.append(f"| {r['name']} | {method} | {acc('sft')} | {acc('grpo')} | {seconds:.0f} |")
    finals = {f"{r['name']} {m}": r["eval"][m] for r in runs for m in MODELS if m in r["eval"]}
    lines = ["# Run comparison", "", *rows, ""]
    if finals:
        lines += ["Greedy accuracy (%) per level:", "", format_table(finals, label=_level_label(runs[0]["config"])), ""]
    lines += ["## Plots", "", *_embed(plots, out), ""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
