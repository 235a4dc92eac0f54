"""Peer samplers for benchmarks/sampler.py, each run in its own process (and, for tunix, its own venv).

    python benchmarks/sampler_peers.py {hf,tunix,ours-1dev} --model-dir DIR --prompts FILE --new-tokens N
        --samples G (--runs R | --serve)

Reads prompts (a JSON list of token-id lists), warms up once, then times end-to-end runs (token
ids in, token ids out on the host): R of them, printing one JSON line {"system", "seconds": [...],
"tokens"}; or, with --serve, one per "run SEED" line on stdin (a JSON line each), so that
benchmarks/sampler.py can interleave the systems' runs.
`hf` and `tunix` import nothing from tailor_jax, so that they run in the peers' virtual
environment; `ours-1dev` is this project's sampler on one JAX CPU device (the layout before
2026-12-05), run from this project's venv as a baseline for the one-device-per-core default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def build_hf(model_dir: str, prompts: list[list[int]], new_tokens: int, samples: int):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, num_return_sequences=samples, eos_token_id=None, pad_token_id=0,
        use_cache=True,
    )

    def once(seed: int) -> tuple[float, int]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        input_ids = torch.tensor(prompts, dtype=torch.long)
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        completions = out[:, input_ids.shape[1]:].tolist()
        return time.perf_counter() - start, sum(len(c) for c in completions)

    return once, {"system": "hf_generate",
                  "version": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}"}


class _IdTokenizer:
    """Token ids written as space-separated text: lets tunix's string API carry ids unchanged."""

    def __init__(self, pad: int):
        self.pad = pad

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(t)) for t in ids)

    def bos_id(self):
        return None

    def eos_id(self) -> int:
        return -1

    def pad_id(self) -> int:
        return self.pad


def build_tunix(model_dir: str, prompts: list[list[int]], new_tokens: int, samples: int, greedy: bool = False):
    import jax
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params

    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    config = qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
        head_dim=hf["hidden_size"] // hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf["rope_theta"]) if "rope_theta" in hf else int(hf["rope_parameters"]["rope_theta"]),
        norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf.get("tie_word_embeddings", False),
    )
    model = qwen2_params.create_model_from_safe_tensors(model_dir, config)
    prompt_len = max(len(p) for p in prompts)
    used = {t for p in prompts for t in p}
    pad = next(t for t in range(hf["vocab_size"]) if t not in used)  # a pad id that no prompt uses
    sampler = sampler_lib.Sampler(
        model, _IdTokenizer(pad),
        sampler_lib.CacheConfig(cache_size=prompt_len + new_tokens, num_layers=config.num_layers,
                                num_kv_heads=config.num_kv_heads, head_dim=config.head_dim),
    )
    # tunix has no num_samples: each of the G copies of a prompt is its own row (prefilled separately).
    texts = [" ".join(map(str, p)) for p in prompts for _ in range(samples)]

    def once(seed: int) -> tuple[float, int]:
        start = time.perf_counter()
        # tunix samples only when top_p is given; with top_p=None it decodes greedily whatever the
        # temperature. The workload samples (top_p=1.0); --greedy measures the greedy mode for reference.
        out = sampler(texts, max_generation_steps=new_tokens, max_prompt_length=prompt_len,
                      temperature=1.0, top_p=None if greedy else 1.0, eos_tokens=[-1], seed=seed)
        tokens = [list(map(int, t)) for t in out.tokens]
        return time.perf_counter() - start, sum(len(t) for t in tokens)

    return once, {"system": "tunix_sampler_greedy" if greedy else "tunix_sampler",
                  "version": f"google-tunix {__import__('importlib.metadata').metadata.version('google-tunix')}, jax {jax.__version__}"}


def build_ours_one_device(model_dir: str, prompts: list[list[int]], new_tokens: int, samples: int):
    import jax

    from tailor_jax.model import load_pretrained
    from tailor_jax.parallel.cpu import configure_cpu_devices
    from tailor_jax.sampling import Sampler

    configure_cpu_devices(1)
    sampler = Sampler(load_pretrained(model_dir))

    def once(seed: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = sampler.generate(prompts, max_new_tokens=new_tokens, temperature=1.0, num_samples=samples,
                               eos_token_ids=[], seed=seed)
        return time.perf_counter() - start, out.num_tokens

    return once, {"system": "tailor_jax_1dev", "version": f"jax {jax.__version__}, one CPU device"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["hf", "tunix", "ours-1dev"])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--greedy", action="store_true", help="tunix only: its greedy mode (not the workload)")
    parser.add_argument("--serve", action="store_true",
                        help="after warm-up print 'ready', then time one run per 'run SEED' line read from stdin")
    args = parser.parse_args()
    with open(args.prompts) as f:
        prompts = json.load(f)
    if args.system == "hf":
        once, meta = build_hf(args.model_dir, prompts, args.new_tokens, args.samples)
    elif args.system == "ours-1dev":
        once, meta = build_ours_one_device(args.model_dir, prompts, args.new_tokens, args.samples)
    else:
        once, meta = build_tunix(args.model_dir, prompts, args.new_tokens, args.samples, greedy=args.greedy)
    once(0)  # warm-up (compilation)
    if args.serve:
        print(json.dumps(meta | {"ready": True}), flush=True)
        for line in sys.stdin:
            seconds, tokens = once(int(line.split()[1]))
            print(json.dumps({"seconds": seconds, "tokens": tokens}), flush=True)
        return
    timed = [once(seed + 1) for seed in range(args.runs)]
    print(json.dumps(meta | {"seconds": [t for t, _ in timed], "tokens": timed[0][1]}), flush=True)


if __name__ == "__main__":
    main()
