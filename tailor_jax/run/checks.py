"""Checks of a run config before any stage runs, so that a bad config fails in `--dry-run` with
one line (exit 2), not after hours of training: batch sizes against the mesh, learning-rate
schedules, input paths, problem sets and pool sizes, context lengths, the memory plan."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from tailor_jax.errors import TailorError
from tailor_jax.run.config import RunConfig, grpo_config, mesh_dict, sft_config


def check_batches(cfg: RunConfig) -> None:
    """Batch sizes must split evenly over the data-parallel devices (checked here so that a bad
    config fails in `--dry-run`, not after the SFT stage). A mesh with a -1 axis is resolved on
    this process's devices; a fixed one is checked as written (a TPU config dry-runs anywhere)."""
    import jax

    from tailor_jax.parallel.mesh import MeshConfig

    mesh = mesh_dict(cfg)
    if mesh.get("rules"):
        return  # custom rules may map the batch elsewhere: checked by the trainers
    config = MeshConfig(**mesh)
    if -1 in config.sizes():
        devices = jax.devices()
        data, fsdp, _ = config.resolve(len(devices))
        where = f"mesh {mesh} on {len(devices)} {devices[0].platform.upper()} devices"
        if devices[0].platform == "cpu":
            where += " (TAILOR_CPU_DEVICES=N sets their count)"
    else:
        data, fsdp, _ = config.sizes()
        where = f"mesh {mesh}"
    shards = data * fsdp
    sft = sft_config(cfg)
    if (sft.batch_size // sft.accum_steps) % shards:
        raise TailorError(f"sft.batch_size / sft.accum_steps = {sft.batch_size // sft.accum_steps} is not a multiple of the "
                          f"{shards}-way data parallelism of {where}; change sft.batch_size or the mesh")
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        micro = grpo.dash.micro_batch_size or grpo.rollout.prompts_per_step * grpo.rollout.num_generations
        if micro % shards:
            raise TailorError(f"grpo rows per micro-batch ({micro}) are not a multiple of the {shards}-way data parallelism "
                              f"of {where}; change grpo.dash.micro_batch_size or the rollout size")
        generation = grpo.rollout.generation_batch_size
        if generation % shards:
            raise TailorError(f"grpo.rollout.generation_batch_size ({generation}) is not a multiple of the {shards}-way data "
                              f"parallelism of {where}; use 0 (one sampler call) or a multiple of {shards}")


def check_schedules(cfg: RunConfig) -> None:
    """The trainers' learning-rate schedules build (e.g. warmup within the steps), before any stage runs."""
    from tailor_jax.train.optim import learning_rate_schedule

    sections = [("sft", sft_config(cfg), 1)]
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        sections.append(("grpo", grpo, grpo.loss.num_iterations))
    for name, section, updates_per_step in sections:
        try:
            learning_rate_schedule(section.optimizer, section.steps * updates_per_step)
        except TailorError as err:
            raise TailorError(f"{name}.optimizer: {err}") from None


def check_input_paths(cfg: RunConfig) -> None:
    """Every file or directory a stage reads that the run does not write itself exists and holds
    what the stage needs (the checkpoint's config.json, a tokenizer), before any stage runs."""
    sft = sft_config(cfg)
    model_key = "pretrained" if cfg.pretrained is not None else "sft.model.pretrained"
    tokenizer_key = "pretrained" if cfg.pretrained is not None else "sft.tokenizer.path"
    wanted = [(model_key, sft.model.pretrained, "config.json",
               "a local Hugging Face checkpoint directory (nothing is downloaded at run time: fetch it first)"),
              (tokenizer_key, sft.tokenizer.path, "tokenizer.json", "a directory with tokenizer.json (or null to train one)")]
    grpo = grpo_config(cfg) if cfg.grpo is not None else None
    if grpo is not None and grpo.train_file is not None:
        wanted.append(("grpo.train_file", grpo.train_file, None, "a JSONL file of problems"))
    for key, path, inside, what in wanted:
        if path is None:
            continue
        where = Path(path)
        if not where.exists():
            raise TailorError(f"{key}: {path} does not exist; give {what}")
        if inside is None and not where.is_file():
            raise TailorError(f"{key}: {path} is not a file; give {what}")
        if inside == "tokenizer.json" and not any((where / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise TailorError(f"{key}: {path} has no tokenizer.json; give {what}")
        if inside == "config.json" and not (where / inside).is_file():
            raise TailorError(f"{key}: {path} has no config.json; give {what}")


def check_problem_sets(cfg: RunConfig) -> None:
    """Every problem set the run draws from can be generated: one problem per evaluation level
    (e.g. iGSM's test split has no 2-op templates) and per GRPO curriculum stage, before any
    stage runs, instead of an error after training."""
    from tailor_jax.eval.accuracy import level_records
    from tailor_jax.tasks import get_task
    from tailor_jax.train.grpo import task_options_at

    sets = [("eval", cfg.task_options | cfg.eval.task_options, cfg.eval.levels)]
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        sets.append(("grpo.eval", grpo.task_options | grpo.eval.task_options, grpo.eval.levels))
        for start in [0] + [stage.start_step for stage in grpo.curriculum]:
            try:
                next(iter(get_task(grpo.task, **task_options_at(grpo, start)).generate(1, seed=0)))
            except TailorError as err:
                where = "grpo.task_options" if start == 0 else f"grpo.curriculum stage at step {start}"
                raise TailorError(f"{where}: {err}") from None
    for name, options, levels in sets:
        for level in levels:
            try:
                level_records(cfg.task, options, [level], 1, seed=0)
            except TailorError as err:
                raise TailorError(f"{name}.levels: level {level}: {err}") from None


def _most_at_one_level(num: int, levels: int) -> int:
    """About the most of `num` problems, each at a level drawn uniformly from `levels`, that one
    level receives: the mean plus four standard deviations (exact when there is one level)."""
    if levels == 1:
        return num
    p = 1.0 / levels
    return math.ceil(num * p + 4.0 * math.sqrt(num * p * (1.0 - p)))


def check_pool_sizes(cfg: RunConfig) -> None:
    """Each pool the run generates fits the distinct problems its setting has, level by level
    (tasks that can count them: `max_distinct`), so that generation cannot run dry mid-stage."""
    from tailor_jax.tasks import get_task, task_class

    pools = [("data.num_train", cfg.task_options | cfg.data.train_options, cfg.data.num_train, None),
             ("data.num_sft_eval", cfg.task_options | cfg.data.train_options, 3 * cfg.data.num_sft_eval + 10, None)]
    pools += [("eval.per_level", cfg.task_options | cfg.eval.task_options, 2 * cfg.eval.per_level, level)
              for level in cfg.eval.levels]  # 2x: candidates, of which those in the SFT pool are left out
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        pools += [("grpo.eval.per_level", grpo.task_options | grpo.eval.task_options, 2 * grpo.eval.per_level, level)
                  for level in grpo.eval.levels]
    level_option = task_class(cfg.task).level_option
    for key, options, num, level in pools:
        if level is not None:
            options = {**options, level_option: int(level)}
        task = get_task(cfg.task, **options)
        if not hasattr(task, "max_distinct"):
            continue
        lo, hi = task.level_range()
        for at in range(lo, hi + 1):
            most = task.max_distinct(at)
            wanted = _most_at_one_level(num, hi - lo + 1)
            if most is None or wanted <= most:
                continue
            if level is not None:
                spread = f"{key} {num // 2} draws {num} candidates"
            elif hi > lo:
                spread = f"{num} problems over {level_option} {lo}-{hi} put up to {wanted}"
            else:
                spread = f"the pool asks for {num}"
            fits = max((n for n in range(num, 0, -1) if _most_at_one_level(n, hi - lo + 1) <= most), default=0) if hi > lo else most
            fix = (f"lower {key} to {fits if key != 'data.num_sft_eval' else max((fits - 10) // 3, 0)} or leave "
                   f"{level_option}={at} out") if hi > lo else f"lower {key} to {most // 2 if level is not None else most}"
            raise TailorError(
                f"{key}: {cfg.task} at {level_option}={at} ({_setting(task)}) has at most {most} distinct problems, "
                f"but {spread} at that level; {fix}"
            )


def check_context_lengths(cfg: RunConfig) -> None:
    """SFT's sequence length and each generation budget within the model's max_position_embeddings
    (the prompts' lengths are known only once tokenized: the sampler warns when prompt + budget
    may run past it)."""
    from tailor_jax.train.memory_plan import sft_model_config

    sft = sft_config(cfg)
    model_cfg, _ = sft_model_config(sft)
    if model_cfg is None:  # a pretrained directory without config.json: check_input_paths says so
        return
    model_cfg.check_context(sft.data.longest, "sft.data.seq_len", "sft.data.seq_len")
    budgets = {"eval.max_new_tokens": cfg.eval.max_new_tokens}
    if sft.eval_samples:
        budgets["sft.max_new_tokens"] = sft.max_new_tokens
    if cfg.grpo is not None:
        budgets["grpo.rollout.max_new_tokens"] = grpo_config(cfg).rollout.max_new_tokens
    for knob, budget in budgets.items():
        model_cfg.check_context(budget + 1, f"{knob} {budget} + a prompt of at least one token", knob)


def _setting(task) -> str:
    return ", ".join(f"{name} {getattr(task, name)}" for name in ("depth", "width") if hasattr(task, name))


def memory_plan(cfg: RunConfig, say: Callable[[str], None]) -> None:
    """Each training stage's per-device memory estimate (train.memory_plan); one TailorError line
    (exit 2) when one exceeds the device's memory. The GRPO stage trains the SFT stage's model."""
    from tailor_jax.train import memory_plan as mp

    sft = sft_config(cfg)
    limit_gib, limit_from = mp.device_limit_gib(cfg.device_memory_gib or sft.memory.device_memory_gib)
    if limit_gib is None:  # compiling every stage takes a while on CPU: only against a known limit
        say(f"memory plan: not estimated: device memory {limit_from}; benchmarks/memory.py prints estimates")
        return
    model_cfg, why = mp.sft_model_config(sft)
    stages = [("sft", sft)] + ([("grpo", grpo_config(cfg))] if cfg.grpo is not None else [])
    mp.run_memory_plan(stages, model_cfg, why, limit_gib, limit_from, say)
