"""TRL's GRPOTrainer on the `grpo_step` workload, run by benchmarks/grpo_step.py in TRL's own venv.

    python benchmarks/_peers/trl_grpo.py --model-dir DIR --prompts FILE --settings JSON

Loads the same HF directory (model + word-level tokenizer, token "t<i>" = id i), turns each
prompt's ids into text that tokenizes back to exactly those ids, and trains `runs + 1` optimizer
steps with the workload's settings (one generation batch of 16 prompts x G per optimizer step,
split into micro-batches of `micro_batch` completions with gradient accumulation). Step 1 is the
warm-up; the others are timed. Per step it records the wall-clock of the optimizer step, the
time in `_generate` (tokenize + HF generate + decode) and in reference-model log-probs.

Lock-step protocol (so the caller can alternate steps with another system under the same
machine load): before every step it prints {"event": "ready"} and waits for a line on stdin;
after every step it prints {"event": "step", ...}. The time spent waiting is not counted. At
the end it prints one JSON line with all steps. Imports nothing from tailor_jax.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--settings", required=True, help="JSON: the workload dict of grpo_step.py")
    args = parser.parse_args()
    settings = json.loads(args.settings)
    with open(args.prompts) as f:
        prompts = json.load(f)

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(os.cpu_count() or 1)
    # AutoTokenizer would rebuild a Qwen2 BPE tokenizer from the model type; load the saved one as is.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model_dir)
    texts = [" ".join(f"t{i}" for i in p) for p in prompts]
    if [tokenizer(t)["input_ids"] for t in texts] != prompts:
        raise SystemExit("the word-level tokenizer does not reproduce the prompt ids")
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)

    rows = settings["prompts"] * settings["samples"]
    micro = settings["micro_batch"]
    if rows % micro:
        raise SystemExit(f"micro_batch {micro} must divide the {rows} completions of a step")
    config = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(args.model_dir), "trl_out"),
        per_device_train_batch_size=micro, gradient_accumulation_steps=rows // micro,
        num_generations=settings["samples"], max_completion_length=settings["new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": settings["new_tokens"]},  # EOS is never sampled
        beta=settings["beta"], epsilon=settings["epsilon"], loss_type="dapo", scale_rewards="group",
        num_iterations=1, learning_rate=settings["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=settings["runs"] + 1, seed=settings["seed"],
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, disable_tqdm=True,
    )

    def even_token_reward(completions, completion_ids, **_):
        return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]

    trainer = GRPOTrainer(model=model, reward_funcs=even_token_reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer)

    phases = {"sampling": 0.0, "reference": 0.0, "tokens": 0}

    def timed_generate(original):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = original(*a, **k)
            phases["sampling"] += time.perf_counter() - start
            completion_ids = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if isinstance(completion_ids, list) and completion_ids and isinstance(completion_ids[0], list):
                phases["tokens"] += sum(len(c) for c in completion_ids)
            return out
        return wrapper

    def timed_logps(original):
        def wrapper(model, *a, **k):
            start = time.perf_counter()
            out = original(model, *a, **k)
            if model is trainer.ref_model:
                phases["reference"] += time.perf_counter() - start
            return out
        return wrapper

    trainer._generate = timed_generate(trainer._generate)
    trainer._get_per_token_logps_and_entropies = timed_logps(trainer._get_per_token_logps_and_entropies)
    if trainer.ref_model is None:
        raise SystemExit("TRL built no reference model although beta > 0")

    steps: list[dict] = []

    def wait_for_turn() -> float:
        print(json.dumps({"event": "ready"}), flush=True)
        if not sys.stdin.readline():
            raise SystemExit("the caller closed stdin")
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.start = wait_for_turn()

        def on_step_end(self, *_, **__):
            step = {"step": time.perf_counter() - self.start, "sampling": phases["sampling"],
                    "reference": phases["reference"], "tokens": phases["tokens"]}
            steps.append(step)
            print(json.dumps({"event": "step", **step}), flush=True)
            phases.update(sampling=0.0, reference=0.0, tokens=0)
            if len(steps) < config.max_steps:
                self.start = wait_for_turn()

    trainer.add_callback(StepTimer())
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    timed = steps[1:]
    for s, reward in zip(timed, rewards[1:]):
        s["update"] = s["step"] - s["sampling"] - s["reference"]
        s["reward"] = reward
    print(json.dumps({"system": "trl", "timed": timed, "micro_batch": micro,
                      "version": f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
                      "torch_threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
