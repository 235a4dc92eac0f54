"""Held-out evaluation of a trained model directory: accuracy per difficulty level (and per GF
kind), pass@k, mean completion length, the strategy each completion follows (share and accuracy
per primitive of the task's library), and the Logic-RL-style table.

`evaluate_model` loads a Hugging Face-format model directory with its tokenizer (a run's
`sft/model` or `grpo/model`, or a run's stage directory holding `model/`) and scores it with the
evaluator (`tailor_jax.eval.evaluator`). The run's eval stage and `tailor-jax eval CONFIG
--checkpoint DIR` (`tailor_jax.run.eval_command`, which picks the problems from the run config)
call it. Pure: `format_table`, `describe`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tailor_jax.atomic import write_json
from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluator import StrategyLabeller, evaluate_records, mean_or_zero, score_outcomes


# ---------------------------------------------------------------------------------------
# Tables.
def format_table(results: dict[str, dict], *, key: str = "acc_by_level", label: str = "level") -> str:
    """A Markdown table, one row per model, one column per level plus the average (the layout of
    the Logic-RL paper's per-difficulty table). Values are percentages."""
    levels = sorted({lv for r in results.values() for lv in r.get(key, {})}, key=lambda s: (len(s), s))
    head = f"| model | " + " | ".join(f"{label} {lv}" for lv in levels) + " | avg |"
    lines = [head, "|---" * (len(levels) + 2) + "|"]
    for name, result in results.items():
        values = result.get(key, {})
        cells = [f"{100 * values[lv]:.1f}" if lv in values else "-" for lv in levels]
        avg = result["acc"] if key == "acc_by_level" else mean_or_zero(list(values.values()))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * avg:.1f} |")
    return "\n".join(lines)


def format_strategies(table: dict[str, dict]) -> str:
    """A `strategy_table` in one line: "forward 60.0% (right 100.0%), backward 20.0% (...)"."""
    return ", ".join(f"{name} {100 * row['share']:.1f}% (right {100 * row['acc']:.1f}%)" for name, row in table.items())


# ---------------------------------------------------------------------------------------
# A model directory.
def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a directory holding `model/` (a run's stage directory)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise TailorError(f"no model in {path} (no config.json); pass a Hugging Face-format model directory such as RUN_DIR/grpo/model")


def evaluate_model(
    model_path: str | Path, task, records: Sequence[dict], *, prompt_style: str = "plain", think_prefill: bool = False,
    max_new_tokens: int = 256, pass_k: int = 0, temperature: float = 1.0, seed: int = 0, mesh: dict | None = None,
    strategy_of: StrategyLabeller | None = None,
) -> dict[str, Any]:
    """Load a model directory (with tokenizer), decode `records`, return `score_outcomes` + metadata.
    `strategy_of` (record, completion) -> strategy name labels the completions
    (`tailor_jax.primitives.classify.task_strategy_classifier`; the primitive libraries sit above
    the evaluator, so the caller passes it)."""
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.model.hf_io import load_pretrained
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh
    from tailor_jax.sampling import Sampler

    if not records:
        raise TailorError("no evaluation problems; set eval.levels and eval.per_level")
    path = resolve_model_dir(model_path)
    mesh_cfg = MeshConfig(**mesh) if mesh else MeshConfig.auto()
    device_mesh, rules = create_mesh(mesh_cfg), mesh_cfg.axis_rules()
    tokenizer = tok_lib.load_tokenizer(path)
    model = load_pretrained(path, mesh=device_mesh, rules=rules)
    sampler = Sampler(model, mesh=device_mesh, rules=rules, pad_id=tok_lib.pad_id(tokenizer))
    start = time.perf_counter()
    outcomes = evaluate_records(sampler, task, tokenizer, records, prompt_style=prompt_style, think_prefill=think_prefill,
                                max_new_tokens=max_new_tokens, pass_k=pass_k, temperature=temperature, seed=seed,
                                strategy_of=strategy_of)
    result = score_outcomes(outcomes)
    result.update(model=str(path), pass_k=pass_k, max_new_tokens=max_new_tokens, seconds=time.perf_counter() - start)
    return result


def write_result(result: dict, path: str | Path) -> Path:
    path = Path(path)
    write_json(path, result)
    return path


def describe(result: dict, task_name: str, name: str = "model") -> str:
    """The tables of one result as text (per level, per kind for GF, pass@k, mean length)."""
    from tailor_jax.tasks import task_class

    label = task_class(task_name).level_label
    parts = [format_table({name: result}, label=label)]
    if result.get("acc_by_kind"):
        kinds = {f"{name} ({kind})": {"acc": acc, "acc_by_level": result["acc_by_kind_level"][kind]}
                 for kind, acc in result["acc_by_kind"].items()}
        parts.append(format_table(kinds, label=label))
    if "pass_at_k" in result:
        parts.append(format_table({f"{name} pass@{result.get('pass_k', 'k')}": {"acc": result["pass_at_k"],
                                                                        "acc_by_level": result["pass_at_k_by_level"]}},
                                  label=label))
    for key, what in (("strategies", "greedy"), ("sampled_strategies", "samples")):
        if key in result:
            parts.append(f"strategy ({what}): {format_strategies(result[key])}")
    parts.append(f"mean completion length: {result['mean_length']:.1f} tokens over {result['num_problems']} problems")
    if result.get("truncated"):
        parts.append(f"{100 * result['truncated']:.1f}% of greedy completions were cut at max_new_tokens = "
                     f"{result.get('max_new_tokens', '?')} without an end token (scored wrong); raise it if they were "
                     "still reasoning")
    return "\n\n".join(parts)
