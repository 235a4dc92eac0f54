"""Per-device memory of each training stage, from XLA's compiled memory analysis, before anything runs.

Each stage's jitted program is lowered and compiled with abstract inputs (`jax.ShapeDtypeStruct`
with their shardings; parameters from `nnx.eval_shape`), never run, and
`compiled.memory_analysis()` gives per device: arguments, outputs, the part of the outputs
aliased to donated arguments, and temporaries. A stage's peak estimate is
    arguments + outputs - aliased + temporaries + what stays resident outside the program
(the optimizer state during a GRPO update micro-batch, the reference weights when beta > 0).

Used by `benchmarks/memory.py` (presets x lengths x stages) and by `tailor-jax run --dry-run` and
the start of `tailor-jax sft` / `grpo` (`check_plan`): a stage over the device's memory stops the
run with one line naming the stage, the estimate, the limit and the knobs to turn.
On CPU the analysis is of XLA:CPU's program; GPU/TPU programs differ in fusion, so treat the
figures as estimates (docs/gpu.md compares them with a measured peak where one was measured).

The model's layers are an unrolled Python loop, so a compile's time grows with the layer count
(the 28-layer qwen2.5-1.5b SFT step took 47 minutes on a loaded 2-core CPU). By default
(`memory.estimate: extrapolate`) each program is therefore compiled with the same config cut to
`FIT_LAYERS` (1, 2, 3) decoder layers, everything else identical (widths, vocabulary, rows,
tokens, remat, chunks, mesh), and each figure of the analysis is extrapolated linearly in the
layer count (`extrapolate`); parameters, optimizer state and what stays resident are computed from
the full model's abstract shapes. `memory.estimate: exact` (`benchmarks/memory.py --exact`)
compiles the whole model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tailor_jax.config import OptimizerConfig, require
from tailor_jax.errors import TailorError
from tailor_jax.model.attention import CPU_KEEP_BARRIERS
from tailor_jax.model.config import ModelConfig
from tailor_jax.model.logprobs import DEFAULT_CHUNK_TOKENS
from tailor_jax.parallel.sharding import Rules, logical_sharding, state_shardings, use_sharding

GIB = 2**30
FIT_LAYERS = (1, 2, 3)  # decoder layers of the compiles an extrapolated estimate is fitted to
FIT_TOLERANCE = 0.02  # how far (relative) the 1-layer point may lie off the 2-3-layer line before a warning


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    """One compiled program's per-device memory (bytes)."""

    stage: str  # e.g. "sft step", "grpo update micro-batch"
    shape: str  # rows x tokens, for the reader
    params: int  # the model's parameters on one device
    optimizer: int  # the optimizer state on one device
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    resident: int = 0  # held outside this program while it runs (see the module docstring)
    knobs: str = ""  # what to turn when it does not fit
    method: str = "compiled"  # or "extrapolated from 1,2,3 layers"
    fit_error: float = 0.0  # extrapolated: the largest relative distance of a fitted point from the line
    fit_points: tuple = ()  # extrapolated: (layers, (arguments, outputs, aliased, temporaries)) per compile

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident

    def as_dict(self) -> dict[str, Any]:
        gib = {k: round(getattr(self, k) / GIB, 3) for k in
               ("params", "optimizer", "arguments", "outputs", "aliased", "temporaries", "resident", "peak")}
        return {"stage": self.stage, "shape": self.shape, **{f"{k}_gib": v for k, v in gib.items()},
                "method": self.method, "fit_error": round(self.fit_error, 4),
                **({"fit_temporaries_gib": {n: round(p[3] / GIB, 4) for n, p in self.fit_points}} if self.fit_points else {})}


def nbytes_per_device(tree) -> int:
    """Bytes of `tree` (arrays or ShapeDtypeStructs with shardings) held on one device."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.shape
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = sharding.shard_shape(shape)
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def _analysis(compiled) -> tuple[int, int, int, int]:
    m = compiled.memory_analysis()
    return (int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.alias_size_in_bytes),
            int(m.temp_size_in_bytes))


@dataclasses.dataclass(frozen=True)
class Fit:
    """Analysis figures (arguments, outputs, aliased, temporaries) extrapolated to a layer count."""

    figures: tuple[int, int, int, int]
    error: float  # the largest relative distance of the smallest layer count's point from the line
    points: tuple  # (layers, figures) per compile


def extrapolate(layers: tuple[int, ...], points: list[tuple[int, ...]], target: int) -> Fit:
    """Each figure as a + b * layers through the two largest layer counts, at `target` layers.

    Every figure grows linearly in the layer count when each layer adds the same buffers (its
    parameters, gradients, saved activations, KV cache); the smallest count's point checks that.
    `error` is its distance from the line, relative to the figure; where it is large, XLA scheduled
    the smallest program differently (seen at toy widths, where one layer's buffers are smaller
    than the scheduler's choices) and the line through the larger counts is the better guide."""
    require(len(layers) == len(points) >= 3 and sorted(set(layers)) == list(layers),
            f"extrapolate: needs >= 3 increasing layer counts with a point each, got {layers}")
    (l0, l1, l2), (p0, p1, p2) = layers[-3:], points[-3:]
    figures, error = [], 0.0
    for a, b, c in zip(p0, p1, p2):
        slope = (c - b) / (l2 - l1)
        error = max(error, abs(a - (b - slope * (l1 - l0))) / max(abs(a), abs(c), 1))
        figures.append(int(round(c + slope * (target - l2))))
    return Fit(tuple(figures), error, tuple(zip(layers, points)))


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


@dataclasses.dataclass
class AbstractModel:
    """A model's structure and abstract, sharded parameters (nothing allocated)."""

    config: ModelConfig
    mesh: Mesh
    rules: Rules | None
    graphdef: Any  # of nnx.split(model, nnx.Param, ...)
    params: Any
    rest: Any
    sampler_graphdef: Any  # of nnx.split(model): the sampler's layout
    exact: bool = False  # compile the whole model, not FIT_LAYERS layers and extrapolate (module docstring)

    @classmethod
    def build(cls, config: ModelConfig, mesh: Mesh, rules: Rules | None = None, *, exact: bool = False) -> "AbstractModel":
        from tailor_jax.model.transformer import Transformer

        abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
        graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
        shardings = state_shardings(params, mesh, rules)

        def place(var, sharding_var):
            value = var.get_value()
            return var.replace(_abstract(value.shape, value.dtype, sharding_var.get_value()))

        params = jax.tree.map(place, params, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
        replicated = NamedSharding(mesh, PartitionSpec())
        rest = jax.tree.map(lambda x: _abstract(x.shape, x.dtype, replicated), rest)
        return cls(config, mesh, rules, graphdef, params, rest, nnx.split(abstract)[0], exact)

    def sampler_state(self):
        """The abstract `nnx.split(model)[1]` (one State with every variable), as the sampler holds it."""
        state = nnx.split(nnx.merge(self.graphdef, self.params, self.rest))[1]
        return state

    def batch(self, shape, dtype=jnp.int32) -> jax.ShapeDtypeStruct:
        axes = ("batch",) + (None,) * (len(shape) - 1)
        return _abstract(shape, dtype, logical_sharding(axes, self.mesh, self.rules, shape))

    def scalar(self, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
        return _abstract((), dtype, NamedSharding(self.mesh, PartitionSpec()))

    def opt_state(self, tx: optax.GradientTransformation):
        """Abstract optimizer state, laid out as `train.state.create_train_state` lays it out."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        shapes = jax.eval_shape(tx.init, self.params)
        shardings = optax.tree_map_params(
            tx, lambda _, p: p.sharding, shapes, self.params, transform_non_params=lambda _: replicated)
        return jax.tree.map(lambda s, sh: _abstract(s.shape, s.dtype, sh), shapes, shardings)

    def compile(self, fn, *args, **jit_kwargs):
        # XLA:CPU drops the optimization barriers that remat and the chunked attention rely on, so a
        # CPU compile standing in for a device's memory keeps them (see model/attention.py).
        # Its bfloat16 matmuls also run on float32 copies of the weights, made just before use only
        # when tied to their inputs (model/projection.weights_at_use).
        from tailor_jax.model.projection import weights_at_use

        cpu = jax.default_backend() == "cpu"
        with use_sharding(self.mesh, self.rules), (weights_at_use() if cpu else contextlib.nullcontext()):
            return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options=CPU_KEEP_BARRIERS if cpu else None)

    def measure(self, program) -> tuple[tuple[int, int, int, int], dict[str, Any]]:
        """(arguments, outputs, aliased, temporaries) and StageEstimate fields saying how they were
        obtained. `program(model)` returns (fn, args, jit_kwargs) for an AbstractModel of any layer count."""
        layers = self.config.num_layers
        if self.exact or layers <= FIT_LAYERS[-1]:
            fn, args, jit_kwargs = program(self)
            return _analysis(self.compile(fn, *args, **jit_kwargs)), {"method": "compiled"}
        points = []
        for n in FIT_LAYERS:
            small = AbstractModel.build(self.config.replace(num_layers=n), self.mesh, self.rules, exact=True)
            fn, args, jit_kwargs = program(small)
            points.append(_analysis(small.compile(fn, *args, **jit_kwargs)))
        fit = extrapolate(FIT_LAYERS, points, layers)
        return fit.figures, {"method": f"extrapolated from {','.join(map(str, FIT_LAYERS))} layers",
                             "fit_error": fit.error, "fit_points": fit.points}


def _supports(fn, name: str) -> bool:
    # benchmarks/memory.py also measures commits from before `logprob_chunk` existed
    return name in inspect.signature(fn).parameters


def sft_step(model: AbstractModel, rows: int, length: int, *, accum_steps: int = 1,
             optimizer: OptimizerConfig | None = None, logprob_chunk: int | None = DEFAULT_CHUNK_TOKENS) -> StageEstimate:
    """The SFT train step as `train.sft.train` jits it: `rows` per micro-batch, `accum_steps` micro-batches."""
    from tailor_jax.train import sft_step as sft
    from tailor_jax.train.optim import make_optimizer
    from tailor_jax.train.state import TrainState

    tx = make_optimizer(optimizer or OptimizerConfig(), 1000)
    total = rows * accum_steps
    kwargs = {"logprob_chunk": logprob_chunk} if _supports(sft.make_train_step, "logprob_chunk") else {}

    def program(m: AbstractModel):
        state = TrainState(step=m.scalar(jnp.int32), params=m.params, rest=m.rest, opt_state=m.opt_state(tx),
                           rng=_abstract((2,), jnp.uint32, NamedSharding(m.mesh, PartitionSpec())))
        batch = {k: m.batch((total, length)) for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
        return sft.make_train_step(m.graphdef, tx, accum_steps, **kwargs), (state, batch), {"donate_argnums": 0}

    figures, how = model.measure(program)
    return StageEstimate("sft step", f"{rows}x{length}" + (f" x{accum_steps} accum" if accum_steps > 1 else ""),
                         nbytes_per_device(model.params), nbytes_per_device(model.opt_state(tx)), *figures,
                         knobs="sft.batch_size / sft.accum_steps (rows per micro-batch), sft.data.seq_len, "
                               "model remat, sft.memory.logprob_chunk", **how)


def _grpo_batch(model: AbstractModel, rows: int, prompts: int, prompt_len: int, completion_len: int, ref: bool):
    batch = {
        "prompt_tokens": model.batch((prompts, prompt_len)),
        "prompt_positions": model.batch((prompts, prompt_len)),
        "prompt_mask": model.batch((prompts, prompt_len), jnp.bool_),
        "row_prompt": model.batch((rows,)),
        "tokens": model.batch((rows, completion_len)),
        "positions": model.batch((rows, completion_len)),
        "completion_mask": model.batch((rows, completion_len), jnp.float32),
        "advantages": model.batch((rows,), jnp.float32),
        "sampler_logp": model.batch((rows, completion_len), jnp.float32),
        "old_logp": model.batch((rows, completion_len), jnp.float32),
    }
    if ref:
        batch["ref_logp"] = model.batch((rows, completion_len), jnp.float32)
    return batch


def _prompt_slots(rows: int, group: int) -> int:
    return max(1, -(-rows // group))


def grpo_update(model: AbstractModel, rows: int, prompt_len: int, completion_len: int, *, group: int = 8,
                beta: float = 0.0, optimizer: OptimizerConfig | None = None,
                logprob_chunk: int | None = DEFAULT_CHUNK_TOKENS, accumulate: bool = True) -> StageEstimate:
    """One GRPO update micro-batch (`make_accumulate_fn`, jitted as the trainer does) of `rows`
    completions from ceil(rows / group) prompts; resident: the optimizer state (and the reference
    weights when beta > 0).

    `accumulate=False` measures the micro-batch's gradient alone (its gradients are outputs; the
    counterpart of one SFT micro-batch's gradient): the program of an update's first micro-batch,
    which starts the sum. Later micro-batches add into the donated accumulator; XLA:CPU's program
    for that holds more temporaries (the tied embedding's gradient apart from the accumulator and,
    with a chunked MLP, part of each layer's: docs/gpu.md)."""
    from tailor_jax.train.grpo import update as gt
    from tailor_jax.train.optim import make_optimizer

    tx = make_optimizer(optimizer or OptimizerConfig(), 1000)
    opt_bytes = nbytes_per_device(model.opt_state(tx))
    params_bytes = nbytes_per_device(model.params)
    loss_cfg = gt.LossConfig(beta=beta)
    kwargs = {"chunk_tokens": logprob_chunk} if _supports(gt.make_accumulate_fn, "chunk_tokens") else {}

    def program(m: AbstractModel):
        fn = gt.make_accumulate_fn(m.graphdef, loss_cfg, 1.0, completion_len, **kwargs)
        batch = _grpo_batch(m, rows, _prompt_slots(rows, group), prompt_len, completion_len, beta > 0)
        if not accumulate:
            return functools.partial(fn, None), (m.params, m.rest, batch, m.scalar()), {}
        grads = jax.tree.map(lambda p: p, m.params)
        return fn, (grads, m.params, m.rest, batch, m.scalar()), {"donate_argnums": 0}

    figures, how = model.measure(program)
    resident = opt_bytes + (params_bytes if beta > 0 else 0)
    stage = "grpo update micro-batch" if accumulate else "grpo micro-batch gradient"
    return StageEstimate(stage, f"{rows}x({prompt_len}+{completion_len})", params_bytes, opt_bytes,
                         *figures, resident=resident,
                         knobs="grpo.dash.micro_batch_size, grpo.rollout.max_new_tokens, model remat, "
                               "grpo.memory.logprob_chunk", **how)


def logprob_pass(model: AbstractModel, rows: int, prompt_len: int, completion_len: int, *, group: int = 8,
                 resident: int = 0, logprob_chunk: int | None = DEFAULT_CHUNK_TOKENS) -> StageEstimate:
    """The old / reference log-prob pass (`make_logp_fn`) over one micro-batch."""
    from tailor_jax.train.grpo import update as gt

    kwargs = {"chunk_tokens": logprob_chunk} if _supports(gt.make_logp_fn, "chunk_tokens") else {}

    def program(m: AbstractModel):
        batch = _grpo_batch(m, rows, _prompt_slots(rows, group), prompt_len, completion_len, False)
        return gt.make_logp_fn(m.graphdef, 1.0, **kwargs), (m.params, m.rest, batch), {}

    figures, how = model.measure(program)
    return StageEstimate("grpo old/ref log-probs", f"{rows}x({prompt_len}+{completion_len})",
                         nbytes_per_device(model.params), 0, *figures, resident=resident,
                         knobs="grpo.dash.micro_batch_size, grpo.memory.logprob_chunk", **how)


def sampler_program(model: AbstractModel, prompts: int, prompt_len: int, new_tokens: int, *, group: int = 8,
                    resident: int = 0) -> StageEstimate:
    """The sampler's whole program (prefill + decode, KV cache included) for `prompts` x `group` rows."""
    from tailor_jax.sampling.engine import _sample_program, _segment_ends
    from tailor_jax.sampling.ops import SamplingParams

    replicated = NamedSharding(model.mesh, PartitionSpec())
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)

    def program(m: AbstractModel):
        fn = functools.partial(
            _sample_program, m.sampler_graphdef, num_samples=group, new_token_bucket=new_tokens,
            segment_ends=_segment_ends(new_tokens, 4), params=SamplingParams(temperature=1.0), pad_id=0,
            share_prompt_cache=True)
        args = (m.sampler_state(), m.batch((prompts, prompt_len)), m.batch((prompts, prompt_len)),
                m.batch((prompts, prompt_len), jnp.bool_), m.batch((prompts,)), key,
                m.scalar(), m.scalar(), m.scalar(jnp.int32),
                _abstract((4,), jnp.int32, replicated), _abstract((1, 1), jnp.int32, replicated))
        return fn, args, {}

    figures, how = model.measure(program)
    return StageEstimate("sampler", f"{prompts}x{group} rows, {prompt_len}+{new_tokens}",
                         nbytes_per_device(model.params), 0, *figures, resident=resident,
                         knobs="grpo.rollout.prompts_per_step / num_generations / max_new_tokens", **how)


# ---------------------------------------------------------------------------------------
# The plan of a trainer config and the check against the device's memory.
def device_limit_gib(configured: float | None) -> tuple[float | None, str]:
    """(per-device memory GiB, where it came from): the config's value, else the device's
    `memory_stats()["bytes_limit"]` where the platform reports one, else (None, why not)."""
    if configured is not None:
        return float(configured), "memory.device_memory_gib"
    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - platforms without memory stats raise various errors
        stats = {}
    if stats.get("bytes_limit"):
        return stats["bytes_limit"] / GIB, f"{device.platform} memory_stats"
    return None, f"not known on {device.platform} (set memory.device_memory_gib to check)"


def format_table(estimates: list[StageEstimate]) -> str:
    lines = [f"  {'stage':<32} {'shape':<26} {'params':>7} {'optim':>7} {'temp':>8} {'peak':>8}  (GiB per device)"]
    for e in estimates:
        lines.append(f"  {e.stage:<32} {e.shape:<26} {e.params / GIB:7.2f} {e.optimizer / GIB:7.2f} "
                     f"{e.temporaries / GIB:8.2f} {e.peak / GIB:8.2f}")
    methods = sorted({e.method for e in estimates if e.method != "compiled"})
    if methods:
        lines.append(f"  (temporaries and arguments {'; '.join(methods)}; memory.estimate: exact compiles the whole model)")
    for e in estimates:
        if e.fit_error > FIT_TOLERANCE:
            lines.append(f"  warning: {e.stage}: the layer fit's points disagree by {e.fit_error:.1%} (more than "
                         f"{FIT_TOLERANCE:.0%}); check with memory.estimate: exact")
    return "\n".join(lines)


def check(estimates: list[StageEstimate], limit_gib: float | None, where: str = "") -> None:
    """Raise one TailorError line for the first stage whose peak exceeds `limit_gib`."""
    if limit_gib is None:
        return
    for e in estimates:
        if e.peak > limit_gib * GIB:
            raise TailorError(
                f"{where}{e.stage} ({e.shape}) needs about {e.peak / GIB:.1f} GiB per device, more than the "
                f"{limit_gib:.1f} GiB available; lower {e.knobs}")


def sft_plan(cfg, model_cfg: ModelConfig, mesh: Mesh, rules: Rules | None) -> list[StageEstimate]:
    """The SFT config's train step at its micro-batch and longest sequence."""
    rows = cfg.batch_size // cfg.accum_steps
    length = cfg.data.longest
    model = AbstractModel.build(model_cfg, mesh, rules, exact=cfg.memory.estimate == "exact")
    return [sft_step(model, rows, length, accum_steps=cfg.accum_steps, optimizer=cfg.optimizer,
                     logprob_chunk=cfg.memory.logprob_chunk)]


def grpo_plan(cfg, model_cfg: ModelConfig, mesh: Mesh, rules: Rules | None, prompt_len: int = 256,
              programs: tuple[str, ...] = ("sampler", "logp", "update")) -> list[StageEstimate]:
    """The GRPO config's sampler, reference pass (beta > 0) and update micro-batch at its widest
    (those of them named in `programs`). An update of one micro-batch (`dash.micro_batch_size`
    unset or >= the step's rows) runs only the first micro-batch's program, with no accumulator."""
    from tailor_jax.sampling.buckets import bucket
    from tailor_jax.train.optim import make_optimizer

    model = AbstractModel.build(model_cfg, mesh, rules, exact=cfg.memory.estimate == "exact")
    g = cfg.rollout.num_generations
    rows = cfg.rollout.prompts_per_step * g
    micro = cfg.dash.micro_batch_size or rows
    completion = bucket(cfg.rollout.max_new_tokens, minimum=16)
    chunk = cfg.memory.logprob_chunk
    optimizer = nbytes_per_device(model.opt_state(make_optimizer(cfg.optimizer, 1000)))
    out = []
    if "sampler" in programs:
        out.append(sampler_program(model, cfg.rollout.prompts_per_step, prompt_len, completion, group=g,
                                   resident=optimizer))
    if cfg.loss.beta > 0 and "logp" in programs:
        out.append(logprob_pass(model, micro, prompt_len, completion, group=g, resident=optimizer, logprob_chunk=chunk))
    if "update" in programs:
        out.append(grpo_update(model, micro, prompt_len, completion, group=g, beta=cfg.loss.beta,
                               optimizer=cfg.optimizer, logprob_chunk=chunk, accumulate=micro < rows))
    return out


def sft_model_config(cfg) -> tuple[ModelConfig | None, str]:
    """The model an SFT config trains, as `train.sft.build_model` will build it (the vocabulary
    from the tokenizer's configured size when it is trained by the run), or (None, why not)."""
    from pathlib import Path

    from tailor_jax.model import get_preset
    from tailor_jax.model.hf_io import read_config

    if cfg.model.pretrained is not None:
        if not (Path(cfg.model.pretrained) / "config.json").is_file():
            return None, f"{cfg.model.pretrained} has no config.json here, so its shape is unknown"
        return read_config(cfg.model.pretrained).replace(**cfg.model.overrides), cfg.model.pretrained  # remat/attention only
    if cfg.tokenizer.path is not None:
        from tailor_jax.data.tokenizer import load_tokenizer

        vocab = len(load_tokenizer(cfg.tokenizer.path))
    else:
        vocab = cfg.tokenizer.vocab_size
    try:
        model_cfg = get_preset(cfg.model.preset).replace(**cfg.model.overrides)
    except TypeError as err:
        raise TailorError(f"model.overrides: {err}; use ModelConfig field names such as hidden_size") from None
    return model_cfg.replace(vocab_size=-(-vocab // 8) * 8), f"preset {cfg.model.preset}"


def grpo_model_config(model_cfg: ModelConfig, options: dict[str, Any]) -> ModelConfig:
    """The policy GRPO trains: the SFT stage's model as its export loads (runtime options at their
    defaults: the export keeps the shape only), with the GRPO config's `model:` options."""
    from tailor_jax.model.config import RUNTIME_OPTIONS

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name in RUNTIME_OPTIONS}
    return model_cfg.replace(**{**defaults, **options})


def plan_mesh(mesh_cfg) -> tuple[Mesh | None, str]:
    """The config's mesh on this process's devices, or (None, why it cannot be built here)."""
    from tailor_jax.parallel.mesh import create_mesh

    try:
        return create_mesh(mesh_cfg), ""
    except (TailorError, ValueError) as err:
        return None, f"its mesh does not fit this process's {len(jax.devices())} device(s) ({err})"


def run_memory_plan(stages: list[tuple[str, Any]], model_cfg: ModelConfig | None, why: str,
                    limit_gib: float | None, limit_from: str, say) -> list[StageEstimate]:
    """Estimate each (name, trainer config) stage, `say` a table, and raise one line (TailorError)
    for the first stage over `limit_gib`. Returns the estimates (empty when skipped)."""
    if model_cfg is None:
        say(f"memory plan: skipped: {why}")
        return []
    limit = f"{limit_gib:.1f} GiB per device ({limit_from})" if limit_gib is not None else f"device memory {limit_from}"
    say(f"memory plan (XLA compiled memory analysis on {jax.devices()[0].platform}; {limit}):")
    estimates = []
    for name, cfg in stages:
        mesh, why_not = plan_mesh(cfg.mesh)
        if mesh is None:
            say(f"  {name}: skipped: {why_not}")
            continue
        rules = cfg.mesh.axis_rules()
        part = (sft_plan(cfg, model_cfg, mesh, rules) if name == "sft"
                else grpo_plan(cfg, grpo_model_config(model_cfg, cfg.model), mesh, rules))
        part = [dataclasses.replace(e, stage=f"{name}: {e.stage}") for e in part]
        say(format_table(part))
        check(part, limit_gib)  # before the next stage's compile
        estimates += part
    return estimates


def check_trainer(name: str, cfg, model_cfg: ModelConfig, say) -> None:
    """At the start of `tailor-jax sft` / `grpo`: where the device's memory is known (configured
    or reported by the platform), estimate this trainer's stages and stop if one does not fit.
    Skipped on CPU without `memory.device_memory_gib` (the check compiles the step once more)."""
    limit_gib, limit_from = device_limit_gib(cfg.memory.device_memory_gib)
    if limit_gib is None:
        return
    run_memory_plan([(name, cfg)], model_cfg, "", limit_gib, limit_from, say)
