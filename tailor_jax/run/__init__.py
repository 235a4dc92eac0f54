"""`tailor-jax run CONFIG.yaml`: data -> warm start -> SFT -> GRPO -> evaluation -> report.

Everything lives in one run directory, one sub-directory per stage:

    RUN_DIR/config.yaml              the resolved run config
    RUN_DIR/data/                    train.jsonl (SFT problem pool), sft_eval.jsonl (held out)
    RUN_DIR/warm_start/              sft.jsonl (demonstrations with `completion`), stats.json
    RUN_DIR/sft/                     the SFT trainer's run dir; model/ (HF format + tokenizer)
    RUN_DIR/grpo/                    the GRPO trainer's run dir; model/
    RUN_DIR/eval/                    records.jsonl (held-out), <model>.json per evaluated model
    RUN_DIR/report.md, RUN_DIR/plots/*.png

Each stage writes `<stage>/stage.json` = {"hash", "status": "running" | "done", ...}. The hash
covers the stage's own config (not where it runs: paths and the mesh are left out) and the hash
of the stage before it, so a stage is skipped when it is done with the same hash, resumed when
it was interrupted with the same hash (the trainers restore their latest checkpoint), and
started afresh (its directory cleared) when its config or anything upstream changed (the stage
cache: `tailor_jax.stage_cache`).

The package, one module per concern (each re-exported here, so `tailor_jax.run.X` keeps working):

    config.py        RunConfig and its sections; the trainer configs, mesh and directories it resolves to
    hashes.py        stage hashes (and the legacy ones older run directories hold)
    checks.py        checks of the whole config before any stage runs (also in --dry-run)
    stages.py        the stage functions: data, warm start, SFT, GRPO, eval, report
    driver.py        the plan, the driver, the `tailor-jax run` command
    eval_command.py  the `tailor-jax eval` command (a model on the run config's held-out problems)
"""

from tailor_jax.run.checks import (
    check_batches, check_input_paths, check_pool_sizes, check_problem_sets, check_schedules, memory_plan,
)
from tailor_jax.run.config import (
    MESH_PRESETS, REDISTILL_OPTIONS, STAGES, TEACHER_STAGES, WARM_START_METHODS, DataSection, EvalSection, RunConfig,
    WarmStartSection, derived_seed, grpo_config, load_run_config, mesh_dict, model_dir, run_stages, sft_config, stage_dir,
    teacher_config, trained_models,
)
from tailor_jax.run.driver import (
    STAGE_FUNCTIONS, PlannedStage, execute, format_plan, format_resolved, plan, register, run, run_teacher,
)
from tailor_jax.run.hashes import LEGACY_MESHES, accepted_hashes, stage_hashes
from tailor_jax.run.stages import (
    Interrupted, diversity_stats, eval_records, export_model, run_data, run_eval, run_grpo, run_report, run_sft,
    run_warm_start, train_keys, warm_start_records,
)
from tailor_jax.stage_cache import read_stage, stage_status, write_stage
from tailor_jax.tasks import problem_key

__all__ = [
    "check_batches", "check_input_paths", "check_pool_sizes", "check_problem_sets", "check_schedules",
    "memory_plan", "MESH_PRESETS", "REDISTILL_OPTIONS", "STAGES", "TEACHER_STAGES", "WARM_START_METHODS",
    "DataSection", "EvalSection", "RunConfig", "WarmStartSection", "derived_seed", "grpo_config", "load_run_config",
    "mesh_dict", "model_dir", "run_stages", "sft_config", "stage_dir", "teacher_config", "trained_models",
    "STAGE_FUNCTIONS", "PlannedStage", "execute", "format_plan", "format_resolved", "plan", "register", "run",
    "run_teacher", "LEGACY_MESHES", "accepted_hashes", "stage_hashes", "Interrupted", "diversity_stats",
    "eval_records", "export_model", "run_data", "run_eval", "run_grpo", "run_report", "run_sft", "run_warm_start",
    "train_keys", "warm_start_records", "read_stage", "stage_status", "write_stage", "problem_key",
]
