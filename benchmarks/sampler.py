"""The `sample` workload of /work/shared/BENCHMARKS.md: this sampler vs Hugging Face generate vs tunix.

    python benchmarks/sampler.py [--runs 3] [--peers hf,tunix[,ours-1dev]] [--cpu-devices N]

One invocation: builds the `bench-tiny` Qwen2 checkpoint (HF, random weights, seed 0) in a temp
dir, measures this machine's float32 matmul peak through JAX, then times every system on the same
16 prompts x G=8 x 128 new tokens (temperature 1, no top-k/top-p, EOS off), end to end from token
ids in to token ids out. Each system warms up (compiles) once and is timed `--runs` times; prints
one JSON line per system and a table with tok/s (median, min, max), ratios and the fraction of the
arithmetic roofline. Ours runs as the `tailor-jax` CLI does: one JAX CPU device per core, the
batch split over them on the mesh's `data` axis (parallel.cpu, `mesh_preset: auto`). HF runs in
this venv (PyTorch CPU); tunix runs in its own venv, created on first use under
~/.cache/tailor-jax/peers-venv (google-tunix 0.1.7, jax 0.10.2), so it never touches this
project's environment; as its users run it, on one JAX device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_tiny import BENCH_TINY, matmul_peak_flops
from result_file import write_result_file
from tailor_jax.parallel.cpu import configure_cpu_devices

HERE = Path(__file__).resolve().parent
PEERS_VENV = Path(os.environ.get("TAILOR_JAX_PEERS_VENV", Path.home() / ".cache/tailor-jax/peers-venv"))
PEERS_REQUIREMENTS = ["google-tunix==0.1.7", "jax==0.10.2", "flax==0.12.8"]
PEERS = ("hf", "tunix", "ours-1dev")  # benchmarks/sampler_peers.py's systems

WORKLOAD = dict(prompts=16, prompt_len=64, samples=8, new_tokens=128)


def build_checkpoint(directory: Path) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**BENCH_TINY))
    model.save_pretrained(directory)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def workload_flops(parameters: int) -> float:
    """FLOPs of the workload: 2 x params per processed token + attention 4 x layers x hidden x context.

    Processed tokens: each distinct prompt once (16 x 64) and every generated token (128 x 128) at
    its context length (64 + t).
    """
    layers, hidden = BENCH_TINY["num_hidden_layers"], BENCH_TINY["hidden_size"]
    p, n = WORKLOAD["prompt_len"], WORKLOAD["new_tokens"]
    prefill = WORKLOAD["prompts"] * sum(2 * parameters + 4 * layers * hidden * (t + 1) for t in range(p))
    rows = WORKLOAD["prompts"] * WORKLOAD["samples"]
    decode = rows * sum(2 * parameters + 4 * layers * hidden * (p + t + 1) for t in range(n))
    return float(prefill + decode)


class OurSystem:
    """This project's sampler, in this process."""

    name = "tailor_jax"

    def __init__(self, model_dir: Path, prompts: list[list[int]]):
        from tailor_jax.model import load_pretrained
        from tailor_jax.parallel.mesh import MeshConfig, create_mesh
        from tailor_jax.sampling import Sampler

        mesh_cfg = MeshConfig.auto()  # as `tailor-jax run` (mesh_preset: auto)
        self.mesh, rules = create_mesh(mesh_cfg), mesh_cfg.axis_rules()
        self.sampler = Sampler(load_pretrained(model_dir, mesh=self.mesh, rules=rules), mesh=self.mesh, rules=rules)
        self.prompts = prompts
        self.run(0)  # warm-up (compilation)

    def run(self, seed: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = self.sampler.generate(self.prompts, max_new_tokens=WORKLOAD["new_tokens"], temperature=1.0,
                                    num_samples=WORKLOAD["samples"], eos_token_ids=[], seed=seed)
        return time.perf_counter() - start, out.num_tokens

    def meta(self) -> dict:
        return {"system": self.name, "compiles": self.sampler.num_compiles, "mesh": dict(self.mesh.shape)}

    def close(self) -> None:
        pass


class PeerSystem:
    """A peer in its own process (benchmarks/sampler_peers.py --serve): warm, then one run per request."""

    def __init__(self, python: str, system: str, model_dir: Path, prompts_file: Path):
        command = [python, str(HERE / "sampler_peers.py"), system, "--serve", "--model-dir", str(model_dir),
                   "--prompts", str(prompts_file), "--new-tokens", str(WORKLOAD["new_tokens"]),
                   "--samples", str(WORKLOAD["samples"])]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=os.environ | {"JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"},
        )
        self._meta = self._read()
        self.name = self._meta["system"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise SystemExit(f"peer {self.process.args[2]} failed:\n{self.stderr.read()[-3000:]}")
        return json.loads(line)

    def run(self, seed: int) -> tuple[float, int]:
        self.process.stdin.write(f"run {seed}\n")
        self.process.stdin.flush()
        reply = self._read()
        return reply["seconds"], reply["tokens"]

    def meta(self) -> dict:
        return {k: v for k, v in self._meta.items() if k != "ready"}

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def ensure_peers_venv() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import tunix.generate.sampler"],
                                          capture_output=True).returncode == 0:
        return python
    print(f"creating the peers' venv at {PEERS_VENV} ({', '.join(PEERS_REQUIREMENTS)}) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS_REQUIREMENTS], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description="sample workload: tailor-jax vs HF generate vs tunix")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", default="hf,tunix",
                        help="comma list of hf, tunix, ours-1dev (this sampler on one CPU device); empty: ours only")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="JAX CPU devices for ours (default: one per core, as the tailor-jax CLI does; "
                             "1 reproduces the figures from before 2026-12-05)")
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/sample_<UTC date_time>.json; '' writes none)")
    args = parser.parse_args()
    configure_cpu_devices(args.cpu_devices)
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"--peers: unknown {unknown}; use {', '.join(PEERS)}")

    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, BENCH_TINY["vocab_size"], WORKLOAD["prompt_len"]).tolist()
               for _ in range(WORKLOAD["prompts"])]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, prompts_file = Path(tmp) / "bench-tiny", Path(tmp) / "prompts.json"
        info = build_checkpoint(model_dir)
        prompts_file.write_text(json.dumps(prompts))
        systems = []
        try:
            for peer in peers:  # peers warm up one at a time, before anything is timed
                python = str(ensure_peers_venv()) if peer == "tunix" else sys.executable
                systems.append(PeerSystem(python, peer, model_dir, prompts_file))
            systems.insert(0, OurSystem(model_dir, prompts))
            peak = matmul_peak_flops()
            # Rounds: every system runs once per round (rotating the order), so each ratio compares
            # runs made under about the same background load.
            seconds = {s.name: [] for s in systems}
            for round_ in range(args.runs):
                for i in range(len(systems)):
                    system = systems[(round_ + i) % len(systems)]
                    elapsed, tokens = system.run(round_ + 1)
                    if tokens != WORKLOAD["prompts"] * WORKLOAD["samples"] * WORKLOAD["new_tokens"]:
                        raise SystemExit(f"{system.name} generated {tokens} tokens")
                    seconds[system.name].append(elapsed)
            peak_after = matmul_peak_flops()
            results = [s.meta() | {"seconds": seconds[s.name], "tokens": tokens} for s in systems]
        finally:
            for system in systems:
                system.close()

    flops = workload_flops(info["parameters"])
    generated = WORKLOAD["prompts"] * WORKLOAD["samples"] * WORKLOAD["new_tokens"]
    roofline = generated / (flops / peak)
    ours = None
    for result in results:
        rates = [generated / s for s in result["seconds"]]
        result.update(tok_per_s_median=statistics.median(rates), tok_per_s_min=min(rates),
                      tok_per_s_max=max(rates), roofline_fraction=statistics.median(rates) / roofline,
                      workload="sample", model="bench-tiny", cores=os.cpu_count())
        ours = ours or result
        result["ours_over_this_per_round"] = [o / t for o, t in zip(result["seconds"], ours["seconds"])]
        print(json.dumps(result))
    context = {"matmul_peak_gflops_after": peak_after / 1e9, "workload_gflop": flops / 1e9,
               "roofline_tok_per_s": roofline, "parameters": info["parameters"], "workload_shape": WORKLOAD}
    print(json.dumps({"matmul_peak_gflops": peak / 1e9, **context}))
    for result in results:
        result.setdefault("version", f"tailor-jax (this commit), jax {__import__('jax').__version__}")
    write_result_file("sample", results, matmul_peak_gflops=peak / 1e9, out=args.out, **context)
    print(f"\nsample workload, bench-tiny, {os.cpu_count()} cores; matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({peak_after / 1e9:.0f} after) -> roofline {roofline:,.0f} tok/s")
    width = 5 * args.runs + 2
    print(f"{'system':<16}{'median tok/s':>14}{'min':>10}{'max':>10}{'ours/this':>11}  {'per round':<{width}}{'roofline':>8}")
    for result in results:
        ratio = ours["tok_per_s_median"] / result["tok_per_s_median"]
        rounds = " ".join(f"{r:.2f}" for r in result["ours_over_this_per_round"])
        print(f"{result['system']:<16}{result['tok_per_s_median']:>14,.0f}{result['tok_per_s_min']:>10,.0f}"
              f"{result['tok_per_s_max']:>10,.0f}{ratio:>10.2f}x  {rounds:<{width}}{result['roofline_fraction']:>8.0%}")


if __name__ == "__main__":
    main()
