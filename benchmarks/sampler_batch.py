"""The sampler's cost per row against rows per call: where DASH's preemptive sampling can help.

    python benchmarks/sampler_batch.py [--models bench-tiny quickstart] [--rows 8 16 32 64 128 256]
        [--init runs/quickstart/sft/model] [--runs 3] [--out benchmarks/results/sampler_batch.json]
    python benchmarks/sampler_batch.py --models qwen2.5-0.5b     # prepared for a GPU; not run on CPU

Preemptive sampling (`rollout.generation_batch_size: 0`) generates all of a step's rows in one
sampler call; standard GRPO makes one call per update micro-batch. It saves time only where a
call's cost grows less than linearly in its rows (a decode step that is bound by weight reads or
launch overhead, not arithmetic), and it pays for the slowest completion of the larger call.
For each model and each rows-per-call value this times `Sampler.generate` (G = 8 completions per
prompt, temperature 1, one warm-up call that compiles, then `--runs` timed calls with other
seeds) and prints seconds per call, milliseconds per row and per generated token, and the time
to sample 256 rows in calls of that size, relative to one call of 256.

Models:
- `bench-tiny` (BENCHMARKS.md, random weights, float32): 64-token random prompts, EOS off, so every
  row decodes the full `--new-tokens` (default 128): the pure per-row compute cost.
- `quickstart`: the quickstart's SFT model (`--init`) on GF(11) 3-5 step prompts (the quickstart's
  GRPO stage), stopping at EOS as in training (max 192 new tokens): the cost as a run sees it,
  including the wait for the longest completion of a call.
- `qwen2.5-0.5b`: the Qwen2.5-0.5B shape with random weights in bfloat16, 128-token random prompts,
  EOS off, 256 new tokens: the same curve on an accelerator. Prepared, not run here (no GPU).

Runs as the CLI does on CPU (one JAX device per core on the mesh's `data` axis).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

G = 8


def build(model_name: str, init: Path, args):
    """(model, prompts as token ids, max_new_tokens, eos ids, description) for one model."""
    from tailor_jax.model import create_model, get_preset, load_pretrained

    rng = np.random.default_rng(0)
    if model_name == "bench-tiny":
        config = get_preset("bench-tiny")
        prompts = [rng.integers(3, config.vocab_size, size=64).tolist() for _ in range(max(args.rows) // G)]
        return create_model(config, seed=0), prompts, args.new_tokens, [], "random weights, float32, EOS off"
    if model_name == "qwen2.5-0.5b":
        config = get_preset("qwen2.5-0.5b").replace(param_dtype="bfloat16", dtype="bfloat16")
        prompts = [rng.integers(3, config.vocab_size, size=128).tolist() for _ in range(max(args.rows) // G)]
        return create_model(config, seed=0), prompts, 256, [], "random weights, bfloat16, EOS off"
    if model_name == "quickstart":
        from tailor_jax.data import tokenizer as tok_lib
        from tailor_jax.tasks import get_task

        if not (init / "config.json").is_file():
            raise SystemExit(f"sampler_batch.py: no model at {init}; run `tailor-jax run configs/quickstart.yaml` or pass --init")
        tokenizer = tok_lib.load_tokenizer(init)
        task = get_task("gf", p=11, steps="3-5")
        records = list(islice(task.generate(max(args.rows) // G, 7), max(args.rows) // G))
        prompts = [tok_lib.encode_prompt(tokenizer, task.prompt(r)) for r in records]
        return load_pretrained(init), prompts, 192, [tokenizer.eos_token_id], "SFT model, GF(11) 3-5 prompts, stops at EOS"
    raise SystemExit(f"sampler_batch.py: unknown model {model_name!r}; use bench-tiny, quickstart or qwen2.5-0.5b")


def measure(model_name: str, init: Path, args) -> dict:
    import jax

    from tailor_jax.parallel.mesh import MeshConfig, create_mesh
    from tailor_jax.sampling import Sampler

    model, prompts, new_tokens, eos, what = build(model_name, init, args)
    mesh_cfg = MeshConfig.auto()
    mesh = create_mesh(mesh_cfg)
    sampler = Sampler(model, mesh=mesh, rules=mesh_cfg.axis_rules(), pad_id=0)
    points = []
    for rows in args.rows:
        call_prompts = prompts[: rows // G]

        def call(seed: int):
            start = time.perf_counter()
            out = sampler.generate(call_prompts, max_new_tokens=new_tokens, temperature=1.0, num_samples=G,
                                   eos_token_ids=eos, seed=seed)
            return time.perf_counter() - start, out

        call(0)  # compile
        timed = [call(seed) for seed in range(1, args.runs + 1)]
        seconds = statistics.median(t for t, _ in timed)
        tokens = statistics.median(out.num_tokens for _, out in timed)
        longest = statistics.median(max(out.lengths) for _, out in timed)
        points.append({"rows": rows, "seconds_per_call": round(seconds, 4), "ms_per_row": round(1e3 * seconds / rows, 3),
                       "ms_per_token": round(1e3 * seconds / max(tokens, 1), 4), "mean_tokens_per_row": round(tokens / rows, 1),
                       "longest_row": int(longest), "all_seconds": [round(t, 4) for t, _ in timed]})
        print(json.dumps({"model": model_name, **points[-1]}), flush=True)
    biggest = points[-1]
    for p in points:  # sampling max(rows) rows in calls of p["rows"], relative to one call
        p["seconds_for_max_rows"] = round(p["seconds_per_call"] * biggest["rows"] / p["rows"], 3)
        p["relative_to_one_call"] = round(p["seconds_for_max_rows"] / biggest["seconds_per_call"], 2)
    return {"model": model_name, "what": what, "new_tokens": new_tokens, "group": G, "device": str(jax.devices()[0].platform),
            "num_devices": len(jax.devices()), "mesh": dict(mesh.shape), "compiles": sampler.num_compiles, "points": points}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bench-tiny", "quickstart"])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256], help="rows per call (multiples of 8)")
    parser.add_argument("--init", default="runs/quickstart/sft/model", help="the quickstart SFT model directory")
    parser.add_argument("--new-tokens", type=int, default=128, help="bench-tiny's new tokens per row")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per point (median)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if any(r % G for r in args.rows):
        print(f"sampler_batch.py: --rows must be multiples of G = {G}", file=sys.stderr)
        return 2
    from tailor_jax.parallel.cpu import configure_cpu_devices

    configure_cpu_devices()
    results = [measure(name, Path(args.init), args) for name in args.models]
    for r in results:
        print(f"\n{r['model']} ({r['what']}, {r['new_tokens']} new tokens max, {r['num_devices']} {r['device']} devices)")
        print(f"{'rows/call':>9} {'s/call':>8} {'ms/row':>8} {'ms/token':>9} {'tok/row':>8} {'longest':>8} "
              f"{'s for ' + str(r['points'][-1]['rows']) + ' rows':>14} {'vs 1 call':>9}")
        for p in r["points"]:
            print(f"{p['rows']:>9} {p['seconds_per_call']:>8.3f} {p['ms_per_row']:>8.2f} {p['ms_per_token']:>9.3f} "
                  f"{p['mean_tokens_per_row']:>8.1f} {p['longest_row']:>8} {p['seconds_for_max_rows']:>14.2f} "
                  f"{p['relative_to_one_call']:>8.2f}x")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "sampler_batch", "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
