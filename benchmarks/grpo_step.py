"""The `grpo_step` workload of /work/shared/BENCHMARKS.md: one GRPO optimizer step, tailor-jax vs TRL.

    python benchmarks/grpo_step.py [--runs 3] [--peers trl] [--micro-batch 32] [--trl-micro-batch 4] [--cpu-devices N] [--mesh auto|fsdp]

One invocation builds the `bench-tiny` Qwen2 checkpoint (HF, random weights, seed 0, plus a
word-level tokenizer whose word "t<i>" is id i, so that text prompts carry the same ids through
TRL) in a temp dir, measures this machine's float32 matmul peak through JAX, then times one full
GRPO step per system: 16 prompts of 64 random token ids x G = 8 completions of 128 tokens
(temperature 1, EOS never sampled), reward = fraction of even token ids in the completion,
group-scaled advantages, beta 0.04 (k3 KL to a frozen reference), epsilon 0.2, token-mean loss,
AdamW lr 1e-5, one optimizer update per rollout batch. Ours runs as the `tailor-jax` CLI does: one
JAX CPU device per core on the mesh's `data` axis (parallel.cpu, `mesh_preset: auto`).

Ours drives the GRPO trainer's own pieces exactly as `tailor_jax.train.grpo.train` (its step body, `grpo_update`) does
for one step (sampler -> group advantages -> `build_rows` -> `pack_micro_batches` -> reference
log-probs with the jitted `make_logp_fn` -> `make_accumulate_fn` over micro-batches ->
`make_apply_fn`), with a device sync after each phase so the split is exact. TRL's
`GRPOTrainer` runs in its own venv (created on first use under ~/.cache/tailor-jax/trl-venv),
see benchmarks/_peers/trl_grpo.py.

Each system warms up (compiles) for one step, then `--runs` rounds are timed: in each round every
system makes one step, one system at a time, the order rotating (TRL waits between its steps, see
the peer's lock-step protocol), so a round's ratio compares steps under about the same machine
load. Prints one JSON line per system and a table: seconds per step (median, min, max), the
split (sampling, reference, update), ours/TRL speed-up on the medians and per round, and the
fraction of the arithmetic roofline.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench_tiny import BENCH_TINY, matmul_peak_flops
from result_file import write_result_file
from tailor_jax.parallel.cpu import configure_cpu_devices

HERE = Path(__file__).resolve().parent
TRL_VENV = Path(os.environ.get("TAILOR_JAX_TRL_VENV", Path.home() / ".cache/tailor-jax/trl-venv"))
TRL_REQUIREMENTS = ["trl==1.16.*", "torch==2.13.0", "transformers==5.23.0"]

WORKLOAD = dict(prompts=16, prompt_len=64, samples=8, new_tokens=128, beta=0.04, epsilon=0.2, lr=1e-5, seed=0)
EOS_ID = 1  # never sampled: TRL suppresses it (min_new_tokens), ours passes eos_token_ids=[]
PAD_ID = 0
UNK_ID = 2


def even_token_reward(completions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The cheap programmatic reward: the fraction of even token ids in each completion."""
    valid = np.arange(completions.shape[1])[None, :] < lengths[:, None]
    return ((completions % 2 == 0) & valid).sum(1) / np.maximum(lengths, 1)


def build_checkpoint(directory: Path) -> dict:
    """`bench-tiny` with random weights (seed 0) and a word-level tokenizer ("t<i>" <-> id i)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**BENCH_TINY, bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    # Special tokens must not be prefixes of "t<i>" words: added tokens match inside words.
    specials = {PAD_ID: "<pad>", EOS_ID: "<eos>", UNK_ID: "<unk>"}
    vocab = {specials.get(i, f"t{i}"): i for i in range(BENCH_TINY["vocab_size"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def make_prompts() -> list[list[int]]:
    """16 prompts of 64 random ids, avoiding the special ids (pad 0, eos 1, unk 2)."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, BENCH_TINY["vocab_size"], WORKLOAD["prompt_len"]).tolist() for _ in range(WORKLOAD["prompts"])]


def forward_flops(parameters: int, context_lengths) -> float:
    """2 x parameters per processed token + attention 4 x layers x hidden x context (BENCHMARKS.md)."""
    layers, hidden = BENCH_TINY["num_hidden_layers"], BENCH_TINY["hidden_size"]
    return float(sum(2 * parameters + 4 * layers * hidden * c for c in context_lengths))


def step_flops(parameters: int) -> dict[str, float]:
    """FLOPs of one step: sampling (prefill each distinct prompt once + every generated token at its
    context), the reference forward over all rows x (prompt + completion), and the training
    forward/backward (3x a forward) over the same tokens."""
    p, n = WORKLOAD["prompt_len"], WORKLOAD["new_tokens"]
    rows = WORKLOAD["prompts"] * WORKLOAD["samples"]
    prefill = WORKLOAD["prompts"] * forward_flops(parameters, range(1, p + 1))
    decode = rows * forward_flops(parameters, range(p + 1, p + n + 1))
    sequence = rows * forward_flops(parameters, range(1, p + n + 1))
    return {"sampling": prefill + decode, "reference": sequence, "update": 3 * sequence}


# ---------------------------------------------------------------------------------------
# Ours: the trainer's pieces, one step as in grpo.train.
def make_ours(model_dir: Path, prompts: list[list[int]], micro_batch: int,
              prompt_slots: int | None = None, mesh_layout: str = "auto") -> tuple[Callable[[int], dict], Callable[[], dict]]:
    """`(step, info)`: `step(seed)` runs and times one full GRPO step; `info()` describes the run."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from tailor_jax.config import OptimizerConfig
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh
    from tailor_jax.parallel.sharding import use_sharding
    from tailor_jax.sampling import Sampler
    from tailor_jax.train import grpo as gt
    from tailor_jax.train.grpo import group_advantages
    from tailor_jax.train.optim import make_optimizer
    from tailor_jax.train.state import create_train_state, merge_model, state_shardings_of
    from tailor_jax.model.hf_io import load_pretrained

    g, rows_total = WORKLOAD["samples"], WORKLOAD["prompts"] * WORKLOAD["samples"]
    micro = micro_batch or rows_total
    # "auto" as `tailor-jax run` (mesh_preset: auto); "fsdp" the MeshConfig default (every device on fsdp)
    mesh_cfg = MeshConfig.auto() if mesh_layout == "auto" else MeshConfig()
    mesh, rules = create_mesh(mesh_cfg), mesh_cfg.axis_rules()
    loss_cfg = gt.LossConfig(epsilon_low=WORKLOAD["epsilon"], epsilon_high=WORKLOAD["epsilon"], beta=WORKLOAD["beta"],
                             kl="k3", loss_agg="token_mean", scale_rewards="group")
    rollout_cfg = gt.RolloutConfig(prompts_per_step=WORKLOAD["prompts"], num_generations=g,
                                   max_new_tokens=WORKLOAD["new_tokens"], temperature=1.0)
    model = load_pretrained(model_dir, mesh=mesh, rules=rules)
    # TRL's default optimizer: AdamW, no warmup, weight decay 0, grad clip 1.0 (max_grad_norm).
    tx = make_optimizer(OptimizerConfig(lr=WORKLOAD["lr"], warmup_steps=0, grad_clip=1.0), 1000)
    graphdef, state = create_train_state(model, tx, WORKLOAD["seed"], mesh, rules)
    ref_params = jax.tree.map(jnp.copy, state.params)
    sampler = Sampler(model, mesh=mesh, rules=rules, pad_id=PAD_ID)
    del model
    shardings, replicated = state_shardings_of(state), NamedSharding(mesh, PartitionSpec())
    with use_sharding(mesh, rules):  # jitted as in grpo.train: the state keeps its layout
        logp_fn = jax.jit(gt.make_logp_fn(graphdef, rollout_cfg.temperature))
        accumulate = jax.jit(gt.make_accumulate_fn(graphdef, loss_cfg, rollout_cfg.temperature, rollout_cfg.max_new_tokens),
                             donate_argnums=0, out_shardings=(shardings.params, replicated))
        apply = jax.jit(gt.make_apply_fn(tx), donate_argnums=0, out_shardings=(shardings, replicated))

    slots_used: set[int] = set()

    def step(seed: int) -> dict:
        nonlocal state
        t0 = time.perf_counter()
        sampler.update_weights(merge_model(graphdef, state))
        out = sampler.generate(prompts, max_new_tokens=rollout_cfg.max_new_tokens, temperature=rollout_cfg.temperature,
                               num_samples=g, eos_token_ids=[], seed=seed)
        lengths = np.asarray(out.lengths)
        rewards = even_token_reward(out.token_array, lengths).astype(np.float32)
        t_sample = time.perf_counter()
        advantages = np.asarray(group_advantages(jnp.asarray(rewards), g, loss_cfg.scale_rewards), np.float32)
        prompt_ids = [prompts[row // g] for row in range(len(rewards))]
        rows = gt.build_rows(prompt_ids, out.token_array, lengths, PAD_ID)
        logp = out.logprob_array.astype(np.float32)
        rows.update(advantages=advantages, sampler_logp=logp, old_logp=logp)
        keep = gt.order_by_group_length(gt.select_rows(advantages, 0.1, False), lengths, g)
        micro_batches = gt.pack_micro_batches(rows, keep, micro, prompt_slots)
        slots_used.add(len(micro_batches[0]["prompt_tokens"]))
        total_tokens = max(float(rows["completion_mask"].sum()), 1.0)
        weights = [float(b["completion_mask"].sum()) / total_tokens for b in micro_batches]
        device_batches = [gt.place_rows(b, mesh, rules) for b in micro_batches]
        for b in device_batches:
            b["ref_logp"] = logp_fn(ref_params, state.rest, b)
        jax.block_until_ready([b["ref_logp"] for b in device_batches])
        t_ref = time.perf_counter()
        grads = None  # as grpo_update: the first micro-batch's gradient starts the sum
        for b, w in zip(device_batches, weights):
            grads, metrics = accumulate(grads, state.params, state.rest, b, jnp.float32(w))
        state, norm = apply(state, grads)
        grad_norm = float(norm)
        t_end = time.perf_counter()
        return {"step": t_end - t0, "sampling": t_sample - t0, "reference": t_ref - t_sample, "update": t_end - t_ref,
                "tokens": int(lengths.sum()), "reward": float(rewards.mean()), "grad_norm": grad_norm,
                "logp_diff_max": float(metrics["sampler_trainer/logp_diff_max"])}

    def info() -> dict:
        return {"system": "tailor_jax", "micro_batch": micro, "prompt_slots": sorted(slots_used),
                "sampler_compiles": sampler.num_compiles,
                "mesh": dict(mesh.shape), "version": f"jax {jax.__version__}"}

    return step, info


# ---------------------------------------------------------------------------------------
# TRL in its own venv.
def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    print(f"creating TRL's venv at {TRL_VENV} ({', '.join(TRL_REQUIREMENTS)}) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
    return python


class TRLPeer:
    """TRL's GRPOTrainer in its own venv, stepping in lock-step with us (see _peers/trl_grpo.py)."""

    def __init__(self, model_dir: Path, prompts_file: Path, runs: int, micro_batch: int, log: Path):
        python = ensure_trl_venv()
        settings = {**WORKLOAD, "eos_id": EOS_ID, "micro_batch": micro_batch, "runs": runs}
        command = [str(python), str(HERE / "_peers" / "trl_grpo.py"), "--model-dir", str(model_dir),
                   "--prompts", str(prompts_file), "--settings", json.dumps(settings)]
        self.log = log
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                                         text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})

    def _read(self, event: str | None) -> dict:
        """The next JSON line of the peer with this `event` (None: the final summary line)."""
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:  # the trainer's own log lines
                continue
            if isinstance(message, dict) and message.get("event") == event:
                return message
        self.process.wait()
        raise SystemExit(f"TRL peer failed (exit {self.process.returncode}):\n{self.log.read_text()[-4000:]}")

    def step(self) -> dict:
        self._read("ready")
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self._read("step")

    def summary(self) -> dict:
        """The peer's closing line: its timed steps (with the update share and reward) and versions."""
        summary = self._read(None)
        self.process.wait()
        return summary


# ---------------------------------------------------------------------------------------
def summarize(result: dict, flops: dict[str, float], peak: float) -> dict:
    timed = result.pop("timed")
    expected = WORKLOAD["prompts"] * WORKLOAD["samples"] * WORKLOAD["new_tokens"]
    if any(t["tokens"] != expected for t in timed):
        raise SystemExit(f"{result['system']} generated {[t['tokens'] for t in timed]} tokens per step, expected {expected}")
    steps = [t["step"] for t in timed]
    roofline_s = sum(flops.values()) / peak
    result.update(
        workload="grpo_step", model="bench-tiny", cores=os.cpu_count(),
        step_s_median=statistics.median(steps), step_s_min=min(steps), step_s_max=max(steps),
        **{f"{k}_s_median": statistics.median(t[k] for t in timed) for k in ("sampling", "reference", "update")},
        roofline_fraction=roofline_s / statistics.median(steps),
        steps_s=steps, rewards=[t["reward"] for t in timed],
        **({"logp_diff_max": max(t["logp_diff_max"] for t in timed)} if "logp_diff_max" in timed[0] else {}),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="grpo_step workload: tailor-jax vs TRL GRPOTrainer")
    parser.add_argument("--runs", type=int, default=3, help="timed steps per system (after one warm-up step)")
    parser.add_argument("--peers", default="trl", help="comma list: trl (empty: ours only)")
    parser.add_argument("--micro-batch", type=int, default=32,
                        help="our rows per micro-batch (0: all 128 at once; on CPU 32-row micro-batches stay in cache: "
                             "the update ran 2.66x faster than all 128 at once, benchmarks/README.md)")
    parser.add_argument("--prompt-slots", type=int, default=None,
                        help="prompt slots per micro-batch (default: the trainer's rule, 4 for 32 rows; "
                             "16 = min(micro-batch, prompts), the rule before 2026-12-03)")
    parser.add_argument("--trl-micro-batch", type=int, default=4, help="TRL per_device_train_batch_size")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="JAX CPU devices for ours (default: one per core, as the tailor-jax CLI does; "
                             "1 reproduces the figures from before 2026-12-05)")
    parser.add_argument("--mesh", choices=["auto", "fsdp"], default="auto",
                        help="ours: auto (on CPU every device on data, as `tailor-jax run`) or fsdp (every device on fsdp)")
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/grpo_step_<UTC date_time>.json; '' writes none)")
    args = parser.parse_args()
    configure_cpu_devices(args.cpu_devices)
    peers = [p for p in args.peers.split(",") if p]

    prompts = make_prompts()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, prompts_file = Path(tmp) / "bench-tiny", Path(tmp) / "prompts.json"
        info = build_checkpoint(model_dir)
        prompts_file.write_text(json.dumps(prompts))
        peak = matmul_peak_flops()
        ours_step, ours_info = make_ours(model_dir, prompts, args.micro_batch, args.prompt_slots, args.mesh)
        systems = {"tailor_jax": ours_step}
        if "trl" in peers:
            peer = TRLPeer(model_dir, prompts_file, args.runs, args.trl_micro_batch, Path(tmp) / "trl.log")
            systems["trl"] = lambda seed: peer.step()
        for name, step in systems.items():  # warm-up (compiles), one system at a time
            step(1)
        # Rounds: every system runs one step per round (rotating the order), so each ratio
        # compares steps made under about the same background load.
        timed = {name: [] for name in systems}
        names = list(systems)
        for round_ in range(args.runs):
            for i in range(len(names)):
                name = names[(round_ + i) % len(names)]
                timed[name].append(systems[name](round_ + 2))
        results = [{**ours_info(), "timed": timed["tailor_jax"]}]
        if "trl" in peers:
            results.append(peer.summary())
        peak_after = matmul_peak_flops()

    flops = step_flops(info["parameters"])
    results = [summarize(r, flops, peak) for r in results]
    ours = results[0]
    for r in results:
        r["ours_speedup_per_round"] = [t / o for t, o in zip(r["steps_s"], ours["steps_s"])]
    for result in results:
        print(json.dumps(result))
    roofline_s = sum(flops.values()) / peak
    context = {"matmul_peak_gflops_after": peak_after / 1e9, "step_gflop": {k: v / 1e9 for k, v in flops.items()},
               "roofline_step_s": roofline_s, "parameters": info["parameters"],
               "settings": {"micro_batch": args.micro_batch, "prompt_slots": args.prompt_slots,
                            "trl_micro_batch": args.trl_micro_batch, "cpu_devices": args.cpu_devices, "mesh": args.mesh}}
    print(json.dumps({"matmul_peak_gflops": peak / 1e9, **context}))
    write_result_file("grpo_step", results, matmul_peak_gflops=peak / 1e9, out=args.out, **context)
    print(f"\ngrpo_step workload, bench-tiny, {os.cpu_count()} cores; matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({peak_after / 1e9:.0f} after) -> roofline {roofline_s:.2f} s/step")
    print(f"{'system':<12}{'median s':>10}{'min':>8}{'max':>8}{'sampling':>10}{'reference':>11}{'update':>8}"
          f"{'x ours':>8}  {'x ours per round':<26}{'roofline':>8}")
    for r in results:
        rounds = " ".join(f"{x:.2f}" for x in r["ours_speedup_per_round"])
        print(f"{r['system']:<12}{r['step_s_median']:>10.2f}{r['step_s_min']:>8.2f}{r['step_s_max']:>8.2f}"
              f"{r['sampling_s_median']:>10.2f}{r['reference_s_median']:>11.2f}{r['update_s_median']:>8.2f}"
              f"{r['step_s_median'] / ours['step_s_median']:>7.2f}x  {rounds:<26}{r['roofline_fraction']:>8.0%}")


if __name__ == "__main__":
    main()
