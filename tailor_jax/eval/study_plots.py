"""A study's plots: held-out accuracy during RL per method (mean line, +-1 std band over seeds),
against GRPO step and against GRPO seconds, and grouped bars of the summary's per-method figures
with each seed's value as a dot. Made by study_report.write_study_report into STUDY_DIR/plots/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tailor_jax.eval import report as run_report


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]], points: int = 50):
    """Mean and std of several (x, y) curves on a shared x: their common steps when they share
    them, else `points` x values over the range all of them cover (linear interpolation)."""
    import numpy as np

    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return None
    shared = set(curves[0][0].tolist())
    for x, _ in curves[1:]:
        shared &= set(x.tolist())
    if len(shared) >= 2 and all(len(x) == len(shared) for x, _ in curves):
        grid = np.array(sorted(shared))
    else:
        grid = np.linspace(max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves), points)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(0), ys.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(grid)), len(curves)


def rl_curves(study: dict, against: str):
    """Per method: (x, mean, std, n) of held-out accuracy during GRPO against `step` or `seconds`."""
    out = {}
    for label, cells in study["methods"].items():
        curves = []
        for cell in cells:
            if not cell["run"]:
                continue
            steps, acc = run_report.series(cell["run"]["grpo_metrics"], "eval/acc")
            if against == "seconds":
                clock = dict(zip(*run_report.training_seconds(cell["run"]["grpo_metrics"])))
                steps = [clock[s] for s in steps]
            curves.append((steps, acc))
        curve = mean_curve(curves)
        if curve is not None:
            out[label] = curve
    return out


def plot_curves(study: dict, against: str, path: Path) -> Path | None:
    curves = rl_curves(study, against)
    if not curves:
        return None
    plt = run_report._pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (x, mean, std, n) in curves.items():
        line = ax.plot(x, mean, "-", lw=2, label=f"{label} (n={n})")[0]
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    xlabel = "GRPO step" if against == "step" else "GRPO seconds (sampling + updates, periodic eval excluded)"
    ax.set(xlabel=xlabel, ylabel="held-out greedy accuracy", ylim=(-0.02, 1.02),
           title="Held-out accuracy during RL: mean over seeds, band = +-1 std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return run_report._save(fig, path)


def plot_bars(summary: dict, keys: Sequence[tuple[str, str]], path: Path, title: str, ylabel: str,
              ylim: tuple[float, float] | None = (0.0, 1.05)) -> Path | None:
    """Grouped bars per method (mean, error bar = std) with each seed's value as a dot."""
    import numpy as np

    methods = [m for m in summary["methods"] if any(summary["methods"][m].get(k, {}).get("n") for k, _ in keys)]
    if not methods:
        return None
    plt = run_report._pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods) * len(keys) ** 0.5 + 2), 4.5))
    width = 0.8 / len(keys)
    x = np.arange(len(methods))
    for i, (key, name) in enumerate(keys):
        stats = [summary["methods"][m].get(key, {}) for m in methods]
        means = [s.get("mean") or 0.0 for s in stats]
        stds = [s.get("std") or 0.0 for s in stats]
        offset = x + (i - (len(keys) - 1) / 2) * width
        ax.bar(offset, means, width, yerr=stds, capsize=3, label=name, alpha=0.8)
        for xi, s in zip(offset, stats):
            ax.plot([xi] * len(s.get("values", [])), s.get("values", []), "k.", ms=4)
    ax.set_xticks(x, methods, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title, ylim=ylim)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return run_report._save(fig, path)


def level_order(key: str) -> tuple[int, str]:
    """"rl_acc/3" before "rl_acc/12" (levels are people, operations, steps...)."""
    level = key.rsplit("/", 1)[1]
    return (int(level), "") if level.isdigit() else (0, level)


def level_keys(summary: dict, prefix: str) -> list[str]:
    keys = {k for m in summary["methods"].values() for k in m if k.startswith(prefix + "/")}
    return sorted(keys, key=level_order)


def make_plots(study: dict, summary: dict, plot_dir: Path) -> dict[str, Path]:
    made = {
        "rl_accuracy_by_step": plot_curves(study, "step", plot_dir / "rl_accuracy_by_step.png"),
        "rl_accuracy_by_seconds": plot_curves(study, "seconds", plot_dir / "rl_accuracy_by_seconds.png"),
        "accuracy": plot_bars(summary, [("sft_acc", "after SFT"), ("rl_acc", "after RL")], plot_dir / "accuracy.png",
                              "Held-out accuracy (mean +- std over seeds; dots: seeds)", "greedy accuracy"),
        "rl_accuracy_by_level": plot_bars(summary, [(k, f"level {k.rsplit('/', 1)[1]}") for k in level_keys(summary, "rl_acc")],
                                          plot_dir / "rl_accuracy_by_level.png", "Held-out accuracy after RL by level", "greedy accuracy"),
        "warm_start": plot_bars(summary, [(f"warm_start/distinct_{n}", f"distinct-{n}") for n in (1, 2, 3)],
                                plot_dir / "warm_start.png", "Warm-start data: distinct n-grams / n-grams", "ratio"),
    }
    return {name: path for name, path in made.items() if path is not None}
