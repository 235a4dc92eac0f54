"""A study's report: STUDY_DIR/report.md, summary.json and plots/*.png over its cells.

    tailor-jax report STUDY_DIR        (also written at the end of `tailor-jax study`)

Cells are grouped into *methods* by their grid values other than the replicate axis `seed`; per
method every metric gets mean, sample std, n and a 95% t-interval of the mean. Methods are
compared (the study file's `compare` pairs, then the first method in the grid against the rest)
per seed both have (a paired difference), unpaired (Welch) only when they share no seed. Each
cell is read with eval.report.load_run, so a report can be made at any time, over a study still
running (cells without results are listed as such).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tailor_jax.atomic import write_json, write_text
from tailor_jax.errors import TailorError
from tailor_jax.eval import report as run_report
from tailor_jax.eval import study_plots

DEFAULT_THRESHOLD = 0.8  # held-out accuracy for "steps / seconds to threshold" (study file: `threshold`)
WARM_START_METRICS = ("num_demos", "num_primitives", "distinct_1", "distinct_2", "distinct_3", "mean_words")
# Shares per cell, listed per method: what each warm start is made of, and which primitive the
# greedy outputs follow after SFT and after RL (Select and Improve's "select": does RL shift it?)
SHARE_PREFIXES = {
    "primitive/": "Primitives in each warm start (% of its demonstrations)",
    "sft_strategy/": "Strategy of the greedy outputs after SFT (% of held-out problems; `other`: no known primitive)",
    "grpo_strategy/": "Strategy of the greedy outputs after RL (% of held-out problems)",
}
# RL "has selected" once one named strategy (not `other`) covers this share of the trainer's eval outputs
SELECTED_SHARE = 0.9


# ---------------------------------------------------------------------------------------
# Numbers.
def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """mean, sample std, n, and the 95% t-interval of the mean (std and interval need n >= 2)."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "std": None, "ci95": None, "values": []}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None, "values": values}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "values": values}


def binomial_standard_error(accuracy: float, num_problems: int) -> float:
    """The standard error of an accuracy measured on `num_problems` problems: how far another draw
    of the held-out set of that size would move it, whatever the seed."""
    return math.sqrt(accuracy * (1.0 - accuracy) / num_problems)


def difference(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """a - b over replicates: paired on the replicate keys both have, else (none shared) Welch's t.

    Pairing by seed compares two methods on the same data and held-out problems. A study still
    running, or with a failed cell, has seeds only one method has: those are left out of a paired
    difference (counted in `unpaired_left_out`) rather than mixed into unequal means.
    """
    from scipy import stats

    shared = sorted(set(a) & set(b), key=str)
    if shared:
        result = mean_interval([a[k] - b[k] for k in shared])
        return {**result, "paired": True, "unpaired_left_out": len(a) + len(b) - 2 * len(shared)}
    x, y = list(a.values()), list(b.values())
    if len(x) < 2 or len(y) < 2:
        mean = (sum(x) / len(x) - sum(y) / len(y)) if x and y else None
        return {"n": min(len(x), len(y)), "mean": mean, "std": None, "ci95": None, "paired": False}
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((v - mx) ** 2 for v in x) / (len(x) - 1) / len(x)
    vy = sum((v - my) ** 2 for v in y) / (len(y) - 1) / len(y)
    se = math.sqrt(vx + vy)
    dof = (vx + vy) ** 2 / ((vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) or 1e-300)
    half = float(stats.t.ppf(0.975, dof)) * se if se else 0.0
    return {"n": min(len(x), len(y)), "mean": mx - my, "std": se, "ci95": [mx - my - half, mx - my + half], "paired": False}


def cell_metrics(run: dict, threshold: float) -> dict[str, float]:
    """The scalar results of one cell (absent ones left out)."""
    out: dict[str, float] = {}
    for model, label in (("sft", "sft_acc"), ("grpo", "rl_acc")):
        result = run["eval"].get(model)
        if result is None:
            continue
        out[label] = result["acc"]
        for level, acc in result["acc_by_level"].items():
            out[f"{label}/{level}"] = acc
        if "pass_at_k" in result:
            out[f"{label.replace('acc', 'pass')}@{result.get('pass_k')}"] = result["pass_at_k"]
        if "truncated" in result:  # share of greedy completions cut at eval.max_new_tokens (scored wrong)
            out[f"{model}_truncated"] = result["truncated"]
        for name, row in result.get("strategies", {}).items():  # which primitive the greedy outputs follow
            out[f"{model}_strategy/{name}"] = row["share"]
        if model == "grpo" and result.get("num_problems"):  # what the eval set's size alone leaves uncertain
            out["rl_sampling_error"] = binomial_standard_error(result["acc"], result["num_problems"])
            for level, acc in result["acc_by_level"].items():
                if (n := result.get("num_by_level", {}).get(level)):
                    out[f"rl_sampling_error/{level}"] = binomial_standard_error(acc, n)
    if "sft_acc" in out and "rl_acc" in out:
        out["rl_gain"] = out["rl_acc"] - out["sft_acc"]
    steps, acc = run_report.series(run["grpo_metrics"], "eval/acc")
    if steps:
        clock = dict(zip(*run_report.training_seconds(run["grpo_metrics"])))
        reached = [s for s, a in zip(steps, acc) if a >= threshold]
        if reached:
            out["steps_to_threshold"] = float(reached[0])
            if reached[0] in clock:
                out["seconds_to_threshold"] = clock[reached[0]]
        out["rl_eval_acc_best"] = max(acc)
        out["rl_eval_acc_mean"] = sum(acc) / len(acc)  # the area under the RL curve per eval point: how fast it rose
    if run["warm_start"]:
        out.update({f"warm_start/{k}": float(run["warm_start"][k]) for k in WARM_START_METRICS if k in run["warm_start"]})
        primitives = run["warm_start"].get("primitives") or {}  # what the warm start is made of: its share of each
        total = sum(primitives.values())
        out.update({f"primitive/{name}": count / total for name, count in primitives.items() if total})
    seconds = sum(float((info or {}).get("seconds", 0.0)) for info in run["stages"].values())
    if "teacher" not in run.get("outdated", ()):  # redistill's teacher run: its own stages' compute, also when
        # the cell took it from another cell (teacher_from), whose stage records came with it
        seconds += sum(float((run_report._read_json(path) or {}).get("seconds", 0.0))
                       for path in (run["dir"] / "teacher").glob("*/stage.json"))
    if not run.get("outdated"):  # a cell's compute time only when every stage is finished and current
        out["seconds"] = seconds
    return out


def selection_curve(grpo_metrics: Sequence[dict]) -> list[tuple[int, str, float]]:
    """(step, most common named strategy, its share) at each GRPO evaluation with strategy labels
    (`other`, outputs that follow no primitive, is not a strategy RL could select)."""
    curve = []
    for step, shares in run_report.strategy_shares(grpo_metrics):
        named = {k: v for k, v in shares.items() if k != "other"}
        if named:
            curve.append((step, *max(named.items(), key=lambda item: item[1])))
    return curve


def selection_metrics(curve: Sequence[tuple[int, str, float]]) -> dict[str, float]:
    """Select and Improve's "select" over RL: how concentrated the outputs' strategy is at the
    first and last eval, and from which step one strategy holds SELECTED_SHARE of them."""
    out = {"rl_top_strategy_first": curve[0][2], "rl_top_strategy_last": curve[-1][2]}
    selected = [step for step, _, share in curve if share >= SELECTED_SHARE]
    if selected:
        out["steps_to_one_strategy"] = float(selected[0])
    return out


# ---------------------------------------------------------------------------------------
# Reading a study.
def method_label(values: dict[str, Any], replicate: str | None) -> str:
    """A cell's method as the report groups and names it: its grid values other than the replicate axis."""
    return " / ".join(str(v) for k, v in values.items() if k != replicate) or "all"


def load_study_dir(study_dir: str | Path) -> dict[str, Any]:
    study_dir = Path(study_dir)
    manifest = run_report._read_json(study_dir / "study.json")
    if manifest is None:
        raise TailorError(f"{study_dir} has no study.json; pass the study_dir of a `tailor-jax study`")
    replicate = manifest.get("replicate_axis")
    cells, methods = [], {}
    for cell in manifest["cells"]:
        label = method_label(cell["values"], replicate)
        run = run_report.load_run(study_dir / cell["name"]) if (study_dir / cell["name"]).is_dir() else None
        if run is not None:
            drop_outdated(run, cell.get("stage_hashes"))
        entry = {**cell, "method": label, "replicate": cell["values"].get(replicate, cell["name"]), "run": run}
        cells.append(entry)
        methods.setdefault(label, []).append(entry)
    return {"dir": study_dir, "manifest": manifest, "cells": cells, "methods": methods,
            "threshold": float(manifest.get("threshold") or DEFAULT_THRESHOLD)}


def drop_outdated(run: dict, accepted: dict[str, list[str]] | None) -> None:
    """Keep only the results of stages finished under the cell's current config (`accepted`:
    per stage, the hashes `tailor-jax study` recorded for the cell in study.json).

    A cell whose config changed (say, the study's `sft.steps`) keeps its old stage directories
    until the rerun overwrites them; their results must not enter the figures, nor those of a
    stage still running. `run["outdated"]` lists the stages left out."""
    outdated: list[str] = []
    run["outdated"] = outdated
    if accepted is None:  # a study.json written before the hashes were recorded: nothing to check against
        return
    for stage in (*run_report.STAGES, "teacher"):
        info = run_report._read_json(run["dir"] / stage / "stage.json")
        if stage in accepted and info is not None and not (info.get("status") == "done" and info.get("hash") in accepted[stage]):
            outdated.append(stage)
            run["stages"][stage] = None
    if "warm_start" in outdated:
        run["warm_start"] = None
    if "sft" in outdated:
        run["sft_metrics"] = []
    if "grpo" in outdated:
        run["grpo_metrics"] = []
    if "eval" in outdated:
        run["eval"] = {}


def same_demonstrations(study: dict) -> list[list[str]]:
    """Groups of 2+ cells whose SFT demonstrations are the same records, the `primitive` label
    aside: methods under two names that trained on one data set (e.g. GF's `rule_based`, whose
    trace is the `forward` walk). Their comparisons are of one computation, not two warm starts."""
    groups: dict[str, list[str]] = {}
    for cell in study["cells"]:
        run = cell["run"]
        path = run["dir"] / "warm_start" / "sft.jsonl" if run else None
        if path is None or "warm_start" in run["outdated"] or not path.is_file():
            continue
        digest = hashlib.sha256()
        with path.open() as lines:
            for line in lines:
                record = json.loads(line)
                record.pop("primitive", None)
                digest.update(json.dumps(record, sort_keys=True).encode())
        groups.setdefault(digest.hexdigest(), []).append(cell["name"])
    return [names for names in groups.values() if len(names) > 1]


def summarize(study: dict) -> dict[str, Any]:
    threshold = study["threshold"]
    per_cell = {c["name"]: cell_metrics(c["run"], threshold) if c["run"] else {} for c in study["cells"]}
    selection = {c["name"]: curve for c in study["cells"] if c["run"] and (curve := selection_curve(c["run"]["grpo_metrics"]))}
    for name, curve in selection.items():
        per_cell[name].update(selection_metrics(curve))
    for prefix in SHARE_PREFIXES:  # a cell without a primitive / strategy has a share of 0 (not a missing value)
        names = {k for m in per_cell.values() for k in m if k.startswith(prefix)}
        for m in per_cell.values():
            if any(k.startswith(prefix) for k in m):
                for k in sorted(names):  # a fixed order: summary.json diffs show only what changed
                    m.setdefault(k, 0.0)
    keys = sorted({k for m in per_cell.values() for k in m})
    methods = {}
    for label, cells in study["methods"].items():
        evaluated = [c for c in cells if "sft_acc" in per_cell[c["name"]]]
        methods[label] = {"cells": [c["name"] for c in cells], "evaluated": len(evaluated),
                          "reached_threshold": sum("steps_to_threshold" in per_cell[c["name"]] for c in cells),
                          # there before RL's first step: such a cell says nothing about how fast RL rises
                          "at_threshold_before_rl": sum(per_cell[c["name"]].get("steps_to_threshold") == 0 for c in cells)}
        for key in keys:
            methods[label][key] = mean_interval([per_cell[c["name"]][key] for c in cells if key in per_cell[c["name"]]])
    comparisons = []
    labels = list(study["methods"])
    # the study file's own pairs first, in its orientation; then the first method against each other
    # one, unless the study file already compares that pair (either way round: a - b and b - a say
    # the same thing twice)
    pairs = [tuple(p) for p in study["manifest"].get("compare", [])]
    pairs += [(labels[0], other) for other in labels[1:]
              if (labels[0], other) not in pairs and (other, labels[0]) not in pairs]
    # after RL per level too when the eval has several: the headline is their mean, so a level every
    # model fails (KK at 4 people) halves every difference; the per-level lines state it unhalved
    levels = sorted({k for m in per_cell.values() for k in m if k.startswith("rl_acc/")}, key=study_plots.level_order)
    for first, other in pairs:
        for key in ("rl_acc", *(levels if len(levels) > 1 else ()), "sft_acc", "rl_eval_acc_mean",
                    "steps_to_threshold", "seconds_to_threshold"):
            a = {c["replicate"]: per_cell[c["name"]][key] for c in study["methods"].get(first, []) if key in per_cell[c["name"]]}
            b = {c["replicate"]: per_cell[c["name"]][key] for c in study["methods"].get(other, []) if key in per_cell[c["name"]]}
            if a and b:
                comparison = {"a": first, "b": other, "metric": key, **difference(a, b)}
                if key in levels and not any(a.values()) and not any(b.values()):
                    comparison["all_zero"] = True  # "+0.0 +- 0.0, the interval includes 0" would hide why
                comparisons.append(comparison)
    return {"study_dir": str(study["dir"]), "threshold": threshold, "axes": study["manifest"]["axes"],
            "replicate_axis": study["manifest"].get("replicate_axis"), "cells": per_cell, "methods": methods,
            "comparisons": comparisons, "same_demonstrations": same_demonstrations(study),
            "selection": {name: [list(point) for point in curve] for name, curve in selection.items()}}


# ---------------------------------------------------------------------------------------
# Markdown.
def _fmt(stat: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat or not stat.get("n"):
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" +- {scale * stat['std']:.{digits}f}"
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text + f" (n={stat['n']})"


def _share(stat: dict) -> str:
    if stat["mean"] < 0.0005:  # a handful of demonstrations in thousands: "0.0 +- 0.0" would read as none
        return "< 0.1"
    return f"{100 * stat['mean']:.1f}" + (f" +- {100 * stat['std']:.1f}" if stat.get("std") is not None else "")


METRIC_NAMES = {
    "sft_acc": ("held-out accuracy after SFT (%)", 100.0, 1),
    "rl_acc": ("held-out accuracy after RL (%)", 100.0, 1),
    "rl_gain": ("RL gain (points)", 100.0, 1),
    "rl_eval_acc_best": ("best accuracy during RL, trainer's eval set (%)", 100.0, 1),
    "rl_eval_acc_mean": ("mean accuracy over RL's eval points (area under the curve, %)", 100.0, 1),
    "steps_to_threshold": ("GRPO steps to the threshold", 1.0, 0),
    "seconds_to_threshold": ("GRPO seconds to the threshold", 1.0, 0),
    "seconds": ("compute seconds per cell (all stages, redistill's teacher included)", 1.0, 0),
}


def metric_name(metric: str) -> tuple[str, float, int]:
    """(label, scale, digits) of a summary metric; "rl_acc/3" is rl_acc at level 3."""
    base, _, level = metric.partition("/")
    name, scale, digits = METRIC_NAMES[base]
    if level:
        name = name.replace(" (%)", f" at level {level} (%)")
    return name, scale, digits


def describe_comparison(c: dict) -> str:
    """One plain sentence, whichever way it goes."""
    name, scale, digits = metric_name(c["metric"])
    unit = " points" if scale == 100.0 else ""
    if c["mean"] is None:
        return f"{c['a']} - {c['b']}, {name}: no shared results yet"
    if c.get("all_zero"):
        return f"{c['a']} - {c['b']}, {name}: every cell of both scored 0 ({c['n']} seed{'s' if c['n'] != 1 else ''})."
    text = f"{c['a']} - {c['b']}, {name}: {scale * c['mean']:+.{digits}f}{unit}"
    if c.get("ci95"):
        lo, hi = c["ci95"]
        # +- the spread as the per-method tables give it (std), named, since an interval follows
        spread = "std of the paired differences" if c["paired"] else "standard error, unpaired (Welch)"
        text += f" +- {scale * c['std']:.{digits}f} ({spread}; 95% CI [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
        text += f", {c['n']} seeds)"
        more, less = ("more", "fewer") if c["metric"].endswith("threshold") else ("higher", "lower")
        if lo > 0 or hi < 0:
            text += f": {c['a']} is {more if lo > 0 else less} than {c['b']} beyond the seed spread."
        else:
            text += ": the interval includes 0, no difference shown at this spread."
    else:
        text += f" ({c['n']} seed{'s' if c['n'] != 1 else ''}; too few for an interval)."
    if c.get("unpaired_left_out"):
        left = c["unpaired_left_out"]
        text += f" Paired on the seeds both have: {left} result{'s' if left != 1 else ''} without a partner left out."
    return text


def _sampling_error_lines(summary: dict) -> list[str]:
    """How much of a comparison's spread the held-out set's size alone explains: the binomial
    standard error of one cell's accuracy after RL, averaged over the cells that have one."""
    cells = summary["cells"].values()
    keys = ["rl_sampling_error", *study_plots.level_keys(summary, "rl_sampling_error")]
    errors = {k: [m[k] for m in cells if k in m] for k in keys}
    if not errors["rl_sampling_error"]:
        return []
    mean = {k: 100 * sum(v) / len(v) for k, v in errors.items()}
    # a level every cell scored 0 (or 100) on has no binomial error to speak of; its comparisons say so
    levels = "".join(f"; at level {k.rsplit('/', 1)[1]}: {mean[k]:.1f}" for k in keys[1:] if mean[k])
    return ["", f"Sampling error of the evaluation alone: one cell's held-out accuracy after RL has a binomial "
            f"standard error of {mean['rl_sampling_error']:.1f} points (mean over {len(errors['rl_sampling_error'])} "
            f"cells){levels}. The difference of two cells carries about sqrt(2) = 1.4 times that if their "
            "models fail on unrelated problems, less if on the same ones: a paired spread well above it comes from the "
            "seeds, not from the size of the held-out set."]


def _reached(label: str, method: dict) -> str:
    """"tailor 2 of 3 (1 before RL)": how many cells reached the threshold, and how many of those
    were there at GRPO step 0 (summaries written before that count existed lack it)."""
    text = f"{label} {method['reached_threshold']} of {len(method['cells'])}"
    before = method.get("at_threshold_before_rl", 0)
    return text + (f" ({before} before RL)" if before else "")


def _selection_lines(study: dict, summary: dict) -> list[str]:
    """How fast RL narrowed each cell's outputs to one strategy (the trainer's periodic eval)."""
    curves = summary.get("selection") or {}
    if not curves:
        return []
    keys = [("rl_top_strategy_first", "first eval"), ("rl_top_strategy_last", "last eval")]
    lines = ["", "## Selection during RL", "",
             "Share of the most common strategy (`other` aside) among the greedy outputs of the GRPO trainer's "
             f"periodic eval (%), and the GRPO step from which one strategy had >= {100 * SELECTED_SHARE:.0f}% of them.", "",
             "| method | " + " | ".join(title for _, title in keys) + f" | steps to one strategy (cells reaching it) |",
             "|---|---|---|---|"]
    for label, m in summary["methods"].items():
        if any(c in curves for c in m["cells"]):
            reached = sum("steps_to_one_strategy" in summary["cells"][c] for c in m["cells"])
            lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k)) for k, _ in keys)
                         + f" | {_fmt(m.get('steps_to_one_strategy'), 1.0, 0)} ({reached} of {len(m['cells'])}) |")
    lines.append("")
    for cell in study["cells"]:
        if cell["name"] in curves:
            lines.append(f"- {cell['name']}: " + " -> ".join(f"step {step} {name} {100 * share:.0f}%"
                                                             for step, name, share in curves[cell["name"]]))
    return lines


def markdown(study: dict, summary: dict, plots: dict[str, Path]) -> str:
    base = study["dir"]
    methods = summary["methods"]
    axes = ", ".join(f"`{k}` {v}" for k, v in summary["axes"].items())
    lines = [f"# Study report: {base.name}", "",
             f"Grid: {axes}; {len(summary['cells'])} cells. Methods are the grid values other than `seed`; each figure is "
             "mean +- sample std [95% t-interval of the mean] (n = seeds with a result). Held-out accuracy is greedy, on "
             "the run's `eval` set (problems not in the SFT pool).", ""]
    evaluated = sum("sft_acc" in m for m in summary["cells"].values())
    if evaluated < len(summary["cells"]):
        lines += [f"**{len(summary['cells']) - evaluated} of {len(summary['cells'])} cells have no evaluation yet; "
                  "the figures cover the finished ones.**", ""]
    lines += ["## Per method", "", "| method | " + " | ".join(METRIC_NAMES[k][0] for k in METRIC_NAMES) + " |",
              "|---|" + "---|" * len(METRIC_NAMES)]
    for label, m in methods.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k), *METRIC_NAMES[k][1:]) for k in METRIC_NAMES) + " |")
    lines += ["", f"Threshold for steps / seconds: held-out accuracy >= {100 * summary['threshold']:.0f}% on the GRPO "
              "trainer's periodic eval; cells reaching it: " + ", ".join(_reached(k, m) for k, m in methods.items()) + ".", ""]
    lines += ["## Comparisons", ""]
    lines += [f"- {describe_comparison(c)}" for c in summary["comparisons"]] or ["(one method only)"]
    lines += _sampling_error_lines(summary)
    for prefix, title in (("sft_acc", "after SFT"), ("rl_acc", "after RL")):
        keys = study_plots.level_keys(summary, prefix)
        if keys:
            lines += ["", f"## Held-out accuracy {title} by level (%)", "",
                      "| method | " + " | ".join(f"level {k.rsplit('/', 1)[1]}" for k in keys) + " |", "|---|" + "---|" * len(keys)]
            lines += [f"| {label} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |" for label, m in methods.items()]
    passes = sorted({k for m in methods.values() for k in m if "_pass@" in k})
    if passes:
        lines += ["", "## pass@k (%)", "", "| method | " + " | ".join(passes) + " |", "|---|" + "---|" * len(passes)]
        lines += [f"| {label} | " + " | ".join(_fmt(m.get(k)) for k in passes) + " |" for label, m in methods.items()]
    cut = [k for k in ("sft_truncated", "grpo_truncated") if any((m.get(k) or {}).get("mean") for m in methods.values())]
    if cut:  # a truncated completion scores as wrong: say how much of each accuracy that explains
        lines += ["", "## Greedy completions cut at eval.max_new_tokens (%, scored wrong)", "",
                  "| method | " + " | ".join(k.replace("_truncated", "") for k in cut) + " |", "|---|" + "---|" * len(cut)]
        lines += [f"| {label} | " + " | ".join(_fmt(m.get(k)) for k in cut) + " |" for label, m in methods.items()]
    ws = [k for k in WARM_START_METRICS if any(f"warm_start/{k}" in m for m in methods.values())]
    if ws:
        lines += ["", "## Warm-start data", "", "| method | " + " | ".join(ws) + " |", "|---|" + "---|" * len(ws)]
        lines += [f"| {label} | " + " | ".join(_fmt(m.get(f"warm_start/{k}"), 1.0, 0 if k.startswith("num") else 3) for k in ws) + " |"
                  for label, m in methods.items()]
    for prefix, title in SHARE_PREFIXES.items():
        shares = {label: sorted(((k.split("/", 1)[1], m[k]) for k in m if k.startswith(prefix) and m[k]["mean"]),
                                key=lambda item: -item[1]["mean"]) for label, m in methods.items()}
        if any(shares.values()):
            lines += ["", f"{title} (mean +- std over seeds; n: the cells that have it):", ""]
            lines += [f"- {label} (n={max(stat['n'] for _, stat in items)}): "
                      + ", ".join(f"{name} {_share(stat)}" for name, stat in items) for label, items in shares.items() if items]
    lines += _selection_lines(study, summary)
    if summary["same_demonstrations"]:
        lines += ["", "Cells that trained on the same demonstrations (the `primitive` label aside), so their "
                  "comparisons are of one data set under two names: "
                  + "; ".join(" = ".join(group) for group in summary["same_demonstrations"]) + "."]
    lines += ["", "## Cells", "", "Stages left out: not finished under the cell's current config (running, not started, or from "
              "an earlier version of the study file).", "",
              "| cell | SFT acc (%) | RL acc (%) | steps to threshold | seconds | stages left out |", "|---|---|---|---|---|---|"]
    for cell in study["cells"]:
        m = summary["cells"][cell["name"]]
        pct = lambda k: f"{100 * m[k]:.1f}" if k in m else "-"  # noqa: E731
        steps = f"{m['steps_to_threshold']:.0f}" if "steps_to_threshold" in m else "-"
        left_out = ", ".join((cell["run"] or {}).get("outdated", [])) if cell["run"] else "all (not started)"
        lines.append(f"| {cell['name']} | {pct('sft_acc')} | {pct('rl_acc')} | {steps} | "
                     f"{m.get('seconds', 0.0):.0f} | {left_out or '-'} |")
    lines += ["", "## Plots", "", *run_report._embed(plots, base), ""]
    return "\n".join(lines)


def write_study_report(study_dir: str | Path) -> Path:
    """STUDY_DIR/report.md, summary.json and plots/*.png."""
    study = load_study_dir(study_dir)
    summary = summarize(study)
    plots = study_plots.make_plots(study, summary, study["dir"] / "plots")
    write_json(study["dir"] / "summary.json", summary, allow_nan=False, default=str)
    path = study["dir"] / "report.md"
    write_text(path, markdown(study, summary, plots))
    return path


def is_study_dir(path: str | Path) -> bool:
    return (Path(path) / "study.json").is_file()
