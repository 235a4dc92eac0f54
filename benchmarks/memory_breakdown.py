"""What the compiled temporaries of one training program are made of: the buffers live at XLA's
peak, from its buffer-assignment dump. Compiled, never run, like benchmarks/memory.py (same
`tailor_jax.train.memory_plan` programs), on one CPU device; `--layers` cuts the preset to fewer
decoder layers, so the per-layer and fixed parts separate in seconds rather than minutes.

    python benchmarks/memory_breakdown.py --preset qwen2.5-0.5b --rows 4 --length 1024 --layers 2
    python benchmarks/memory_breakdown.py --preset qwen2.5-1.5b --rows 8 --length 2048 --layers 2 --mlp-chunk 4096 --stage grpo
    python benchmarks/memory_breakdown.py --preset qwen2.5-1.5b --rows 8 --length 2048 --layers 2 --mlp-chunk 4096 --stage grpograd

Prints the estimate and the largest buffers live at the peak (XLA's `Live ranges at N (peak)`,
name and GiB); `--out` appends one record (commit, options, estimate, top buffers) to a JSON list.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--preset", default="qwen2.5-0.5b")
p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the preset's)")
p.add_argument("--rows", type=int, default=4)
p.add_argument("--length", type=int, default=1024)
p.add_argument("--stage", choices=["sft", "grpo", "grpograd"], default="sft",
               help="grpograd: one GRPO micro-batch's gradient alone, without the accumulator")
p.add_argument("--remat", default="full")
p.add_argument("--attention", default="chunked")
p.add_argument("--mlp-chunk", type=int, default=0)
p.add_argument("--top", type=int, default=12)
p.add_argument("--out", default=None, help="JSON file to append the record to")
args = p.parse_args()
dump = tempfile.mkdtemp(prefix="memory-breakdown-")
os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(step|accumulate|gradient).*"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402

import jax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import commit  # noqa: E402
from tailor_jax.model import get_preset  # noqa: E402
from tailor_jax.parallel.mesh import MeshConfig, create_mesh  # noqa: E402
from tailor_jax.train import memory_plan as mp  # noqa: E402

GIB = 2**30
mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
preset = get_preset(args.preset)
options = {"mlp_chunk": args.mlp_chunk} if args.mlp_chunk else {}  # (older trees, e.g. to compare, lack it)
cfg = dataclasses.replace(preset, num_layers=args.layers or preset.num_layers, remat=args.remat,
                          attention=args.attention, **options)
model = mp.AbstractModel.build(cfg, mesh)
t0 = time.perf_counter()
if args.stage == "sft":
    estimate = mp.sft_step(model, args.rows, args.length)
else:
    estimate = mp.grpo_update(model, args.rows, 256, args.length, accumulate=args.stage == "grpo")
seconds = time.perf_counter() - t0
live = sorted(glob.glob(f"{dump}/*live-range.txt"), key=os.path.getsize)[-1]
text = Path(live).read_text()
peak = text[text.index("Live ranges at"):]
peak = peak[: peak.index("Stack trace")] if "Stack trace" in peak else peak
buffers = [(name, int(size)) for name, size in re.findall(r"^\s+(\S+): (\d+) bytes", peak, re.M)]
buffers.sort(key=lambda b: -b[1])
shutil.rmtree(dump, ignore_errors=True)
record = {"commit": commit(), "preset": args.preset, "layers": cfg.num_layers, "stage": args.stage,
          "rows": args.rows, "length": args.length, "remat": args.remat, "attention": args.attention,
          "mlp_chunk": args.mlp_chunk, **estimate.as_dict(), "compile_s": round(seconds, 1),
          "peak_buffers_gib": [[n, round(s / GIB, 3)] for n, s in buffers[: args.top]]}
print(json.dumps({k: v for k, v in record.items() if k != "peak_buffers_gib"}))
for name, size in buffers[: args.top]:
    print(f"  {size / GIB:7.3f} GiB  {name}")
if args.out:
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(records + [record], indent=1) + "\n")
