"""Supervised fine-tuning: masked next-token cross-entropy on completion tokens.

The pure core (testable with arrays alone: `sft_loss`, `make_train_step`, `make_eval_step`)
lives in train/sft_step.py, the config classes in train/sft_config.py; both are re-exported
here. `train` (the `tailor-jax sft` command) builds the data, model and jitted steps and hands
SFT's step, evaluation and data position to the shared training shell (train/loop.py:
checkpoints and exact resume, metrics, progress, preemption, the non-finite guard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from tailor_jax.config import load_config
from tailor_jax.data import pipeline
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.data.jsonl import read_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.model import get_preset
from tailor_jax.model.transformer import create_model
from tailor_jax.parallel.mesh import create_mesh
from tailor_jax.parallel.sharding import use_sharding
from tailor_jax.tasks import Task, get_task
from tailor_jax.train.memory_plan import check_trainer, sft_model_config
from tailor_jax.train.optim import learning_rate_schedule, make_optimizer
from tailor_jax.train.sft_config import (  # noqa: F401 (re-exported: callers read the configs from here)
    DataConfig, ModelSection, PositionGapsConfig, SFTConfig, TokenizerConfig,
)
from tailor_jax.train.sft_step import (  # noqa: F401 (re-exported: the pure core)
    Batch, gapped_positions, make_eval_step, make_train_step, sft_loss,
)
from tailor_jax.train.loop import LoopConfig, StepOutput, check_run_dir, open_run_dir, print_metrics, run_loop, stage_log
from tailor_jax.train.state import (
    TrainState, create_train_state, data_parallel_size, global_batch, merge_model, state_shardings_of,
)


# ---------------------------------------------------------------------------------------
# The stateful shell.
def load_records(cfg: DataConfig, split: str) -> Sequence[dict]:
    """The train (`split="train"`) or eval records as a random-access sequence."""
    if cfg.train_file is not None:
        path = cfg.train_file if split == "train" else cfg.eval_file
        return [] if path is None else list(read_jsonl(path))
        # (JSONL files are read whole: they are small; big sets go through TFDS.)
    name = cfg.train_split if split == "train" else cfg.eval_split
    if name is None:
        return []
    from tailor_jax.data.sources import open_records

    return open_records(cfg.task, cfg.tfds_config, name, cfg.tfds_dir)


def build_tokenizer(cfg: SFTConfig, records: Sequence[dict], task: Task, run_dir: Path):
    """The tokenizer: from `tokenizer.path`, else the run's own (trained once, then reused on resume).

    With several processes, process 0 trains and writes it and the others load it from the
    shared run directory.
    """
    if cfg.tokenizer.path is not None:
        return tok_lib.load_tokenizer(cfg.tokenizer.path)
    own = run_dir / "tokenizer"
    if jax.process_index() == 0 and not (own / "tokenizer.json").is_file():
        _train_tokenizer(cfg, records, task, run_dir, own)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tailor_sft_tokenizer")
    return tok_lib.load_tokenizer(own)


def _train_tokenizer(cfg: SFTConfig, records: Sequence[dict], task: Task, run_dir: Path, own: Path) -> None:
    texts, whole_words = [], set()
    for i in range(min(len(records), 20_000)):
        record = records[i]
        prompt, completion = pipeline.record_to_text(task, record, "plain", False)
        texts.append(prompt.text + completion)
        whole_words.update(record.get("symbols", {}).values() if isinstance(record.get("symbols"), dict) else ())
    tokenizer = tok_lib.train_bpe_tokenizer(texts, cfg.tokenizer.vocab_size, sorted(whole_words))
    from tailor_jax.atomic import replace_dir

    replace_dir(own, lambda tmp: tok_lib.save_tokenizer(tokenizer, tmp))


def build_model(cfg: SFTConfig, tokenizer, mesh, rules) -> nnx.Module:
    if cfg.model.pretrained is not None:
        from tailor_jax.model.hf_io import load_pretrained

        model = load_pretrained(cfg.model.pretrained, mesh=mesh, rules=rules, options=cfg.model.overrides)
        if model.config.vocab_size < len(tokenizer):
            raise TailorError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}; "
                "use the checkpoint's own tokenizer (tokenizer.path)"
            )
        return model
    try:
        model_cfg = get_preset(cfg.model.preset).replace(**cfg.model.overrides)
    except TypeError as err:
        raise TailorError(f"model.overrides: {err}; use ModelConfig field names such as hidden_size") from None
    model_cfg = model_cfg.replace(
        vocab_size=-(-len(tokenizer) // 8) * 8,  # a multiple of 8, >= the tokenizer's size
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tok_lib.pad_id(tokenizer),
    )
    return create_model(model_cfg, seed=cfg.seed, mesh=mesh, rules=rules)


def _batch_digest(batch: dict) -> str:
    digest = hashlib.sha256()
    for key in pipeline.BATCH_KEYS:
        digest.update(np.ascontiguousarray(batch[key]).tobytes())
    return digest.hexdigest()[:16]


def evaluate(
    cfg: SFTConfig, state: TrainState, graphdef, eval_step, eval_records, task: Task, tokenizer, mesh, rules
) -> dict[str, float]:
    """Held-out loss / token accuracy over `eval_batches` batches, and exact-answer accuracy
    (greedy decoding, per difficulty) on the first `eval_samples` records."""
    metrics: dict[str, float] = {}
    if cfg.eval_batches and len(eval_records):
        rows = cfg.batch_size // cfg.accum_steps // jax.process_count()
        pcfg = _pipeline_config(cfg, rows, num_epochs=1)
        sums = {"nll_sum": 0.0, "num_tokens": 0.0, "correct": 0.0}
        ds = pipeline.sft_dataset(eval_records, task, tokenizer, pcfg, *pipeline.host_shard())
        batches = list(itertools.islice(iter(ds), cfg.eval_batches))
        # Every process runs the same number of (collective) eval steps: a host whose share of
        # the eval set ran out feeds all-padding batches, which add nothing to the sums.
        width = batches[0]["inputs"].shape[1] if batches else cfg.data.longest
        padding = {k: np.zeros((rows, width), np.int32) for k in pipeline.BATCH_KEYS}
        batches += [padding] * (_max_over_processes(len(batches)) - len(batches))
        for batch in batches:
            out = eval_step(state, global_batch(batch, mesh, rules))
            sums = {k: sums[k] + float(out[k]) for k in sums}
        denom = max(sums["num_tokens"], 1.0)
        metrics["eval/loss"] = sums["nll_sum"] / denom
        metrics["eval/token_accuracy"] = sums["correct"] / denom
    if cfg.eval_samples and len(eval_records):
        from tailor_jax.eval.evaluator import evaluate_policy
        from tailor_jax.sampling import Sampler

        sampler = Sampler(merge_model(graphdef, state), pad_id=tok_lib.pad_id(tokenizer))
        chosen = [eval_records[i] for i in range(min(cfg.eval_samples, len(eval_records)))]
        metrics.update(evaluate_policy(sampler, task, tokenizer, chosen, prompt_style=cfg.data.prompt_style,
                                       think_prefill=cfg.data.think_prefill, max_new_tokens=cfg.max_new_tokens))
    return metrics


def _pipeline_config(cfg: SFTConfig, rows: int, num_epochs: int | None) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(
        seq_len=cfg.data.seq_len,
        batch_size=rows,
        packing=cfg.data.packing,
        buckets=cfg.data.buckets,
        seed=cfg.seed,
        num_epochs=num_epochs,
        prompt_style=cfg.data.prompt_style,
        think_prefill=cfg.data.think_prefill,
    )


def _max_over_processes(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def data_state_to_save(iterator) -> dict:
    """The data position to checkpoint. With several processes every host reads its own part
    of the data, and process 0 writes the checkpoint's JSON items, so it holds every host's
    iterator state: {"per_process": [state of process 0, state of process 1, ...]}."""
    state = iterator.get_state()
    if jax.process_count() == 1:
        return state
    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(len(data)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    rows = multihost_utils.process_allgather(padded)
    return {"per_process": [json.loads(bytes(row[:size]).decode()) for row, size in zip(rows, sizes)]}


def restored_data_state(data_state: dict, step: int) -> dict:
    """This process's iterator state from a checkpoint's data position (see `data_state_to_save`)."""
    states = data_state.get("per_process", [data_state]) if isinstance(data_state, dict) else [data_state]
    if len(states) != jax.process_count():
        raise TailorError(
            f"checkpoint step {step} was written by {len(states)} process(es) reading their own parts of the data; "
            f"resume it with {len(states)} process(es), not {jax.process_count()}"
        )
    return states[jax.process_index()]


def short_budgets(cfg: SFTConfig, task: Task, tokenizer, records: Sequence[dict],
                  budgets: dict[str, int] | None = None) -> list[str]:
    """A warning per generation budget ({knob: max_new_tokens}; default: this config's own
    evaluation budget when it decodes) that some demonstrations do not fit."""
    if budgets is None:
        budgets = {"max_new_tokens": cfg.max_new_tokens} if cfg.eval_samples else {}
    if not budgets:
        return []
    lengths = pipeline.completion_lengths(task, tokenizer, records, cfg.data.prompt_style, cfg.data.think_prefill)
    return [w for knob, budget in budgets.items() if (w := pipeline.budget_shortfall(lengths, budget, knob))]


@dataclasses.dataclass
class SFTResult:
    metrics: dict[str, float]  # the last logged training and evaluation metrics
    state: TrainState
    graphdef: nnx.GraphDef
    tokenizer: Any


def train(cfg: SFTConfig, *, generation_budgets: dict[str, int] | None = None) -> SFTResult:
    """Run (or resume) SFT as configured. `generation_budgets` ({knob: max_new_tokens}, default:
    this config's own evaluation budget when it evaluates accuracy) are checked against the
    demonstrations' lengths at the start: a budget shorter than them gets a warning line."""
    check_run_dir(cfg.run_dir)
    task = get_task(cfg.data.task, **cfg.data.task_options)
    records = load_records(cfg.data, "train")  # a missing file fails here, before anything is written
    eval_records = load_records(cfg.data, "eval")
    mesh = create_mesh(cfg.mesh)
    rules = cfg.mesh.axis_rules()
    shards = data_parallel_size(mesh, rules)
    micro = cfg.batch_size // cfg.accum_steps
    if micro % shards or cfg.batch_size % jax.process_count():
        raise TailorError(
            f"batch_size / accum_steps = {micro} rows must be a multiple of the {shards}-way data parallelism "
            f"and batch_size of the {jax.process_count()} processes; change batch_size or mesh"
        )
    if jax.process_count() > 1 and not cfg.data.packing and len(cfg.data.buckets) > 1:
        raise TailorError(
            f"data.buckets {list(cfg.data.buckets)}: with {jax.process_count()} processes every host's batch must have "
            "the same length; use data.packing or a single bucket"
        )
    planned, _ = sft_model_config(cfg)
    if planned is not None:
        planned.check_context(cfg.data.longest, "sft: data.seq_len", "sft.data.seq_len")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg, records, task, run_dir)
    open_run_dir(cfg)
    for warning in short_budgets(cfg, task, tokenizer, records, generation_budgets):
        _log(f"warning: {warning}")

    if planned is not None:  # stops here, before the weights load, if a stage cannot fit the device
        check_trainer("sft", cfg, planned.replace(vocab_size=max(planned.vocab_size, -(-len(tokenizer) // 8) * 8)), _log)
    model = build_model(cfg, tokenizer, mesh, rules)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.steps), learning_rate_schedule(cfg.optimizer, cfg.steps)
    graphdef, state = create_train_state(model, tx, cfg.seed, mesh, rules)
    del model
    with use_sharding(mesh, rules):
        # The state keeps its layout (one compiled step, also after a resume); metrics are
        # replicated scalars, readable on every process.
        replicated = NamedSharding(mesh, PartitionSpec())
        train_step = jax.jit(make_train_step(graphdef, tx, cfg.accum_steps, schedule, cfg.position_gaps,
                                             skip_nonfinite=cfg.nonfinite == "skip", logprob_chunk=cfg.memory.logprob_chunk),
                             donate_argnums=0, out_shardings=(state_shardings_of(state), replicated))
        eval_step = jax.jit(make_eval_step(graphdef, cfg.memory.logprob_chunk), out_shardings=replicated)

    # Each host reads its share of the global batch: batch_size / processes rows per step, as
    # accum_steps micro-batches stacked along the batch axis.
    rows = cfg.batch_size // jax.process_count()
    data = pipeline.sft_dataset(records, task, tokenizer, _pipeline_config(cfg, rows, cfg.num_epochs), *pipeline.host_shard())
    trainer = _SFTTrainer(cfg, iter(data), train_step, eval_step, graphdef, eval_records, task, tokenizer, mesh, rules)
    result = run_loop(LoopConfig.of("sft", cfg, eval_every=cfg.eval_every), trainer, state)
    return SFTResult(result.metrics, result.state, graphdef, tokenizer)


class _SFTTrainer:
    """SFT's part of the shared loop (train/loop.py): a batch per step, held-out loss and answer
    accuracy as the evaluation, the data iterator's position in checkpoints."""

    def __init__(self, cfg: SFTConfig, iterator, train_step, eval_step, graphdef, eval_records, task, tokenizer, mesh, rules):
        self.cfg, self.iterator, self.train_step, self.eval_step = cfg, iterator, train_step, eval_step
        self.graphdef, self.eval_records, self.task, self.tokenizer = graphdef, eval_records, task, tokenizer
        self.mesh, self.rules = mesh, rules
        record = cfg.record_batches and jax.process_index() == 0
        self.batches_log = (Path(cfg.run_dir) / "batches.txt").open("a") if record else None
        self.window_tokens, self.window_start, self.window_step = 0, None, 0

    def restore_data(self, data_state: dict | None, step: int) -> None:
        if data_state is None:
            raise TailorError(f"checkpoint step {step} in {self.cfg.checkpoint.dir or Path(self.cfg.run_dir) / 'checkpoints'} "
                              "has no data position; cannot resume exactly")
        self.iterator.set_state(restored_data_state(data_state, step))
        self.window_step = step

    def step(self, state: TrainState, step: int) -> tuple[TrainState, StepOutput]:
        if self.window_start is None:  # the first step of this process: the throughput window opens
            self.window_start = time.perf_counter()
        batch = next(self.iterator)
        if self.batches_log is not None:
            self.batches_log.write(f"{step} {_batch_digest(batch)}\n")
            self.batches_log.flush()
        state, metrics = self.train_step(state, global_batch(batch, self.mesh, self.rules))
        self.window_tokens += int((batch["segment_ids"] > 0).sum()) * jax.process_count()  # non-padding
        return state, StepOutput(metrics, metrics.pop("finite"))

    def read_metrics(self, step: int, metrics) -> dict[str, float]:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - self.window_start
        metrics["train/tokens_per_s"] = self.window_tokens / max(elapsed, 1e-9)
        metrics["step_time"] = elapsed / max(step - self.window_step, 1)
        self.logged_tokens = self.window_tokens
        self.window_tokens, self.window_start, self.window_step = 0, time.perf_counter(), step
        return metrics

    def progress(self, metrics) -> dict[str, Any]:
        return {"loss": metrics["loss"], "tokens": self.logged_tokens}

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        with use_sharding(self.mesh, self.rules):
            metrics = evaluate(self.cfg, state, self.graphdef, self.eval_step, self.eval_records, self.task,
                               self.tokenizer, self.mesh, self.rules)
        print_metrics(step, metrics)
        return metrics

    def data_state(self, step: int) -> dict:
        return data_state_to_save(self.iterator)

    def close(self) -> None:
        if self.batches_log is not None:
            self.batches_log.close()


def _log(message: str) -> None:
    stage_log("sft", message)


# ---------------------------------------------------------------------------------------
# CLI.
def register(subparsers) -> None:
    parser = subparsers.add_parser("sft", help="supervised fine-tuning on task demonstrations")
    parser.add_argument("config", help="YAML config (see docs/sft.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=200")
    parser.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(SFTConfig, args.config, args.overrides)
    metrics = train(cfg).metrics
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("loss", "eval/loss", "eval/acc"))
    _log(f"done: {summary}" if summary else "done")
    return 0
