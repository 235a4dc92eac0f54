"""Per-device memory of every training stage, from XLA's compiled memory analysis: compiled, never run.

Each stage's jitted program (the SFT train step, the GRPO update micro-batch, the old/reference
log-prob pass, the sampler) is lowered and compiled with abstract inputs (`jax.ShapeDtypeStruct`,
parameters from `nnx.eval_shape`) through `tailor_jax.train.memory_plan`, the same code as the
memory plan of `tailor-jax run --dry-run`. Virtual CPU devices stand in for chips
(`--devices N` sets XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts), so a
config's mesh (e.g. tpu-v5e-8: data 2 x fsdp 4) compiles as it would shard.

Workloads (choose with flags; each compile takes seconds to minutes on CPU):
  --targets     the issue-22 done-when shapes: SFT micro-batch gradient qwen2.5-0.5b 4 x 1024 and
                qwen2.5-1.5b 8 x 2048; the GRPO update micro-batch at the same rows and lengths + a
                256-token prompt (default when nothing else is chosen)
  --presets P   the presets (comma list, e.g. qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-3b,qwen2.5-7b) at
                --lengths (default 1024,2048,4096) completions + 256-token prompt, --rows rows
  --configs     every shipped config in configs/ on the mesh it names (a pretrained checkpoint that
                is not here is replaced by the preset its file name starts with)
By default each program is compiled with the model cut to 1, 2 and 3 decoder layers and its
figures extrapolated to the full depth (`tailor_jax.train.memory_plan.extrapolate`: minutes, not
the hour a 28-layer compile takes on a loaded 2-core CPU); `--exact` compiles the whole model.
Prints a table and writes JSON (commit, date, devices, rows) to --out
(default benchmarks/results/memory.json).

    python benchmarks/memory.py --targets
    python benchmarks/memory.py --presets qwen2.5-0.5b,qwen2.5-1.5b --lengths 1024,2048 --stages sft,grpo
    python benchmarks/memory.py --configs --devices 8
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", action="store_true", help="the done-when shapes of issue 22 (default)")
    p.add_argument("--presets", default="", help="comma list of model presets")
    p.add_argument("--lengths", default="1024,2048,4096", help="completion lengths for --presets")
    p.add_argument("--rows", type=int, default=8, help="rows per micro-batch for --presets")
    p.add_argument("--configs", action="store_true", help="every shipped config on the mesh it names")
    p.add_argument("--only", default="", help="with --configs: comma list of config names (file stems) to keep")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --configs: an override for every config, as on the tailor-jax command line "
                        "(e.g. mesh_preset=tpu-v5e-8)")
    p.add_argument("--stages", default="sft,grpo,logp,sampler",
                   help="comma list of sft (the whole train step: gradient, clipping, AdamW), sftgrad (one micro-batch's "
                        "gradient alone, its grads as outputs: the issue-22 measure), grpo, grpograd (the same for "
                        "one GRPO micro-batch), logp, sampler")
    p.add_argument("--devices", type=int, default=8, help="virtual CPU devices (for the configs' meshes)")
    p.add_argument("--remat", default=None, help="remat policy for --targets/--presets (none, full, dots, ...; default: the preset's)")
    p.add_argument("--attention", default=None, help="attention implementation for --targets/--presets (default: the preset's)")
    p.add_argument("--mlp-chunk", type=int, default=None, help="tokens per MLP chunk for --targets/--presets (default: the preset's, 0)")
    p.add_argument("--logprob-chunk", type=int, default=None, help="tokens per log-prob chunk (default: the library's)")
    p.add_argument("--exact", action="store_true",
                   help="compile the whole model (default: compile 1, 2, 3 layers and extrapolate)")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from tailor_jax.model import get_preset  # noqa: E402
from tailor_jax.parallel.mesh import MeshConfig, create_mesh  # noqa: E402
from tailor_jax.train import memory_plan as mp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = 256
TARGETS = [("qwen2.5-0.5b", 4, 1024), ("qwen2.5-1.5b", 8, 2048)]


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _chunk(args) -> dict:
    return {} if args.logprob_chunk is None else {"logprob_chunk": args.logprob_chunk}


def preset_rows(name: str, rows: int, length: int, stages: list[str], args) -> list[dict]:
    """One device (a single GPU): the stages at `rows` x (`PROMPT` +) `length`."""
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    options = {k: v for k, v in (("remat", args.remat), ("attention", args.attention), ("mlp_chunk", args.mlp_chunk))
               if v is not None}
    model = mp.AbstractModel.build(dataclasses.replace(get_preset(name), **options), mesh, exact=args.exact)
    out = []
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "sft":
            e = mp.sft_step(model, rows, length, **_chunk(args))
        elif stage == "sftgrad":
            e = sft_gradient(model, rows, length, **_chunk(args))
        elif stage in ("grpo", "grpograd"):
            e = mp.grpo_update(model, rows, PROMPT, length, accumulate=stage == "grpo", **_chunk(args))
        elif stage == "logp":
            e = mp.logprob_pass(model, rows, PROMPT, length, **_chunk(args))
        else:
            e = mp.sampler_program(model, max(1, rows // 8), PROMPT, length)
        out.append({"workload": name, "mesh": "1 device", **e.as_dict(), "compile_s": round(time.perf_counter() - t0, 1)})
        print_row(out[-1])
        save(args, PARTIAL + out)
    return out


def sft_gradient(model: mp.AbstractModel, rows: int, length: int,
                 logprob_chunk: int | None = mp.DEFAULT_CHUNK_TOKENS) -> mp.StageEstimate:
    """One SFT micro-batch's loss gradient, jitted on its own (the gradients are its outputs):
    the program issue 22 measured. `sft` adds clipping and the AdamW update around it, which
    keeps every gradient alive at once."""
    from tailor_jax.train.sft_step import sft_loss

    def program(m: mp.AbstractModel):
        grad_fn = jax.grad(lambda params, batch: sft_loss(params, m.graphdef, m.rest, batch, chunk_tokens=logprob_chunk)[0])
        batch = {k: m.batch((rows, length)) for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
        return grad_fn, (m.params, batch), {}

    figures, how = model.measure(program)
    return mp.StageEstimate("sft micro-batch gradient", f"{rows}x{length}", mp.nbytes_per_device(model.params), 0,
                            *figures, **how)


def config_rows(path: Path, stages: list[str]) -> list[dict]:
    from tailor_jax import run as run_lib

    cfg = run_lib.load_run_config(path, [f"run_dir=/tmp/memory-bench/{path.stem}", *ARGS.set])
    sft = run_lib.sft_config(cfg)
    model_cfg, why = mp.sft_model_config(sft)
    source = why
    if model_cfg is None:
        matches = [n for n in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama-3.2-1b", "llama-3.2-3b")
                   if path.stem.startswith(n)]
        if not matches:
            print(f"{path.name}: skipped ({why})", file=sys.stderr)
            return []
        model_cfg, source = get_preset(matches[0]).replace(**sft.model.overrides), f"preset {matches[0]} (checkpoint not here)"
    out = []
    sections = [("sft", sft)] + ([("grpo", run_lib.grpo_config(cfg))] if cfg.grpo is not None else [])
    for name, section in sections:
        mesh, why_not = mp.plan_mesh(section.mesh)
        if mesh is None:
            print(f"{path.name} {name}: skipped ({why_not})", file=sys.stderr)
            continue
        rules = section.mesh.axis_rules()
        if ARGS.exact:
            section = dataclasses.replace(section, memory=dataclasses.replace(section.memory, estimate="exact"))
        t0 = time.perf_counter()
        if name == "sft":
            if "sft" not in stages:
                continue
            estimates = mp.sft_plan(section, model_cfg, mesh, rules)
        else:
            programs = tuple(p for p, s in (("sampler", "sampler"), ("logp", "logp"), ("update", "grpo")) if s in stages)
            estimates = mp.grpo_plan(section, mp.grpo_model_config(model_cfg, getattr(section, "model", {})), mesh, rules,
                                     programs=programs)
        for e in estimates:
            out.append({"workload": path.stem, "overrides": ARGS.set, "model": source, "mesh": dict(mesh.shape), **e.as_dict(),
                        "compile_s": round(time.perf_counter() - t0, 1)})
            print_row(out[-1])
            save(ARGS, PARTIAL + out)
    return out


PARTIAL: list[dict] = []  # rows of the workloads finished so far (the JSON is rewritten after every row)


def save(args, rows: list[dict]) -> None:
    result = {"benchmark": "memory", "commit": commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "jax": jax.__version__, "platform": jax.devices()[0].platform, "devices": len(jax.devices()),
              "method": "jit(...).lower(abstract inputs).compile().memory_analysis(), per device; "
                        "peak = arguments + outputs - aliased + temporaries + resident"
                        + ("" if args.exact else "; arguments, outputs, aliased and temporaries extrapolated "
                           "linearly from compiles at 1, 2, 3 decoder layers (each row's method, fit_error)"),
              "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),  # remat, attention, chunks, rows
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def print_row(r: dict) -> None:
    print(f"{r['workload']:<22} {str(r['mesh']):<34} {r['stage']:<26} {r['shape']:<24} {r['params_gib']:>7.2f} "
          f"{r['optimizer_gib']:>7.2f} {r['temporaries_gib']:>8.2f} {r['peak_gib']:>8.2f}", flush=True)


def main() -> None:
    args = ARGS
    stages = [s for s in args.stages.split(",") if s]
    print(f"{'workload':<22} {'mesh':<34} {'stage':<26} {'shape':<24} {'params':>7} {'optim':>7} {'temp':>8} {'peak':>8}"
          "  (GiB per device)")
    rows: list[dict] = []
    if args.targets or not (args.presets or args.configs):
        for name, r, length in TARGETS:
            rows += preset_rows(name, r, length, [s for s in stages if s in ("sft", "sftgrad", "grpo", "grpograd")], args)
            PARTIAL[:] = rows
    for name in [p for p in args.presets.split(",") if p]:
        for length in [int(x) for x in args.lengths.split(",")]:
            rows += preset_rows(name, args.rows, length, stages, args)
            PARTIAL[:] = rows
    if args.configs:
        only = {n for n in args.only.split(",") if n}
        for path in sorted((ROOT / "configs").glob("*.yaml")):
            if only and path.stem not in only:
                continue
            rows += config_rows(path, stages)
            PARTIAL[:] = rows
    save(args, rows)
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
