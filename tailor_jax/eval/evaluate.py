"""Held-out evaluation of a trained model: accuracy per difficulty level (and per GF kind),
pass@k, mean completion length, and the Logic-RL-style table.

    tailor-jax eval CONFIG.yaml --checkpoint DIR [key=value ...]

DIR is a Hugging Face-format model directory with its tokenizer (a run's `sft/model` or
`grpo/model`, or a run's stage directory holding `model/`). The problems come from the run
config's `eval` section (the same held-out set `tailor-jax run` uses when the run directory
has one, else freshly generated from `eval.levels`, `eval.per_level`, `eval.seed`).

Pure core: `score_outcomes` (per-problem outcomes -> tables) and `format_table`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailor_jax.errors import TailorError


# ---------------------------------------------------------------------------------------
# Pure core.
def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def score_outcomes(outcomes: Sequence[dict]) -> dict[str, Any]:
    """Aggregate per-problem outcomes into the evaluation result.

    Each outcome: {"level": int, "kind": str | None, "correct": bool (greedy), "length": int
    (tokens), "pass": bool | None (any of k samples correct; None when pass@k is off)}.
    Result: acc, acc_by_level, acc_by_kind, acc_by_kind_level, pass_at_k (+ by level),
    mean_length (+ by level), num_problems, num_by_level. Level keys are strings (JSON).
    """
    by_level: dict[int, list[dict]] = {}
    by_kind: dict[str, list[dict]] = {}
    for o in outcomes:
        by_level.setdefault(int(o["level"]), []).append(o)
        if o.get("kind") is not None:
            by_kind.setdefault(str(o["kind"]), []).append(o)
    levels = sorted(by_level)
    result: dict[str, Any] = {
        "num_problems": len(outcomes),
        "acc": _mean([float(o["correct"]) for o in outcomes]),
        "acc_by_level": {str(lv): _mean([float(o["correct"]) for o in by_level[lv]]) for lv in levels},
        "num_by_level": {str(lv): len(by_level[lv]) for lv in levels},
        "mean_length": _mean([o["length"] for o in outcomes]),
        "mean_length_by_level": {str(lv): _mean([o["length"] for o in by_level[lv]]) for lv in levels},
        "acc_by_kind": {k: _mean([float(o["correct"]) for o in v]) for k, v in sorted(by_kind.items())},
        "acc_by_kind_level": {
            k: {str(lv): _mean([float(o["correct"]) for o in v if int(o["level"]) == lv])
                for lv in sorted({int(o["level"]) for o in v})}
            for k, v in sorted(by_kind.items())
        },
    }
    if outcomes and all(o.get("pass") is not None for o in outcomes):
        result["pass_at_k"] = _mean([float(o["pass"]) for o in outcomes])
        result["pass_at_k_by_level"] = {str(lv): _mean([float(o["pass"]) for o in by_level[lv]]) for lv in levels}
    return result


def format_table(results: dict[str, dict], *, key: str = "acc_by_level", label: str = "level") -> str:
    """A Markdown table, one row per model, one column per level plus the average (the layout of
    the Logic-RL paper's per-difficulty table). Values are percentages."""
    levels = sorted({lv for r in results.values() for lv in r.get(key, {})}, key=lambda s: (len(s), s))
    head = f"| model | " + " | ".join(f"{label} {lv}" for lv in levels) + " | avg |"
    lines = [head, "|---" * (len(levels) + 2) + "|"]
    for name, result in results.items():
        values = result.get(key, {})
        cells = [f"{100 * values[lv]:.1f}" if lv in values else "-" for lv in levels]
        avg = result["acc"] if key == "acc_by_level" else _mean(list(values.values()))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * avg:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Decoding.
def evaluate_records(
    sampler, task, tokenizer, records: Sequence[dict], *, prompt_style: str = "plain", think_prefill: bool = False,
    max_new_tokens: int = 256, pass_k: int = 0, temperature: float = 1.0, seed: int = 0, chunk: int = 64,
) -> list[dict]:
    """Per-problem outcomes: greedy correctness and length, plus pass@k over `pass_k` samples."""
    from tailor_jax.data import tokenizer as tok_lib

    prompts = [task.prompt(r, style=prompt_style, think_prefill=think_prefill) for r in records]
    ids = [tok_lib.encode_prompt(tokenizer, p) for p in prompts]
    eos = [tokenizer.eos_token_id]

    def scores(block: range, out, samples: int) -> list[list[float]]:
        texts = tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
        return [
            [task.reward("binary", records[i], prompts[i].prefill + texts[j * samples + s],
                         finished=bool(out.finished[j * samples + s])) for s in range(samples)]
            for j, i in enumerate(block)
        ]

    outcomes = []
    for start in range(0, len(records), chunk):
        block = range(start, min(start + chunk, len(records)))
        greedy = sampler.generate([ids[i] for i in block], max_new_tokens=max_new_tokens, temperature=0.0, eos_token_ids=eos)
        greedy_scores = scores(block, greedy, 1)
        passed: list[bool | None] = [None] * len(block)
        if pass_k:
            sampled = sampler.generate([ids[i] for i in block], max_new_tokens=max_new_tokens, temperature=temperature,
                                       num_samples=pass_k, eos_token_ids=eos, seed=seed + start)
            passed = [max(s) > 0 for s in scores(block, sampled, pass_k)]
        for j, i in enumerate(block):
            outcomes.append({
                "level": task.difficulty(records[i]), "kind": records[i].get("kind"),
                "correct": greedy_scores[j][0] > 0, "length": int(greedy.lengths[j]), "pass": passed[j],
            })
    return outcomes


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
) -> dict[str, Any]:
    """Load a model directory (with tokenizer), decode `records`, return `score_outcomes` + metadata."""
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
                                max_new_tokens=max_new_tokens, pass_k=pass_k, temperature=temperature, seed=seed)
    result = score_outcomes(outcomes)
    result.update(model=str(path), pass_k=pass_k, max_new_tokens=max_new_tokens, seconds=time.perf_counter() - start)
    return result


def write_result(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
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
    parts.append(f"mean completion length: {result['mean_length']:.1f} tokens over {result['num_problems']} problems")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------
# CLI.
def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model on held-out problems per difficulty level")
    parser.add_argument("config", help="YAML run config (its task, task_options and eval section are used)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.per_level=100")
    parser.add_argument("--checkpoint", required=True, help="model directory (e.g. RUN_DIR/grpo/model)")
    parser.add_argument("--out", help="also write the result as JSON to this file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from tailor_jax import run as run_lib
    from tailor_jax.tasks import get_task

    cfg = run_lib.load_run_config(args.config, args.overrides)
    if (run_lib.stage_dir(cfg, "data") / "train.jsonl").is_file():
        # the run's held-out problems (none in its SFT pool); the same as its eval stage's when the
        # eval section is unchanged, and the overridden levels / counts otherwise
        records = run_lib.eval_records(cfg)
    else:
        from tailor_jax.eval.accuracy import level_records

        records = level_records(cfg.task, {**cfg.task_options, **cfg.eval.task_options}, cfg.eval.levels,
                                cfg.eval.per_level, cfg.eval.seed)
    task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
    result = evaluate_model(args.checkpoint, task, records, prompt_style=cfg.prompt_style, think_prefill=cfg.think_prefill,
                            max_new_tokens=cfg.eval.max_new_tokens, pass_k=cfg.eval.pass_k,
                            temperature=cfg.eval.temperature, seed=cfg.eval.seed, mesh=run_lib.mesh_dict(cfg))
    print(describe(result, cfg.task, name=Path(args.checkpoint).name))
    if args.out:
        write_result(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
