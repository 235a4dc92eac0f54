"""Probe (issue 27, item 4): does a tiny from-scratch model learn KK or iGSM by SFT on CPU?

Runs the data, warm-start and SFT stages of a tiny config (default configs/kk-tiny.yaml: 4
layers x 128, 3 people, depth 2, width 2; or configs/igsm-tiny.yaml) with a larger pool (8,000
problems), a 1,024-token BPE vocabulary and STEPS SFT steps, for one warm start. The SFT trainer
evaluates 64 held-out problems every 500 steps; its checkpoints make the probe resumable (run the
same command again). Afterwards evaluate the model at a budget that holds the traces (KK
rule_based traces run to ~700 tokens), e.g.

    python benchmarks/sft_probe.py rule_based 1500 --run-dir /tmp/kk-rule_based
    tailor-jax eval configs/kk-tiny.yaml --checkpoint /tmp/kk-rule_based/sft/model \\
        --out benchmarks/results/kk_sft_probe/rule_based_1500.json run_dir=/tmp/kk-rule_based \\
        data.num_train=8000 data.num_sft_eval=64 "eval.levels=[3,4]" eval.per_level=50 eval.max_new_tokens=768

    python benchmarks/sft_probe.py tailor 1500 --config configs/igsm-tiny.yaml --run-dir /tmp/igsm-tailor
    tailor-jax eval configs/igsm-tiny.yaml --checkpoint /tmp/igsm-tailor/sft/model \\
        --out benchmarks/results/igsm_sft_probe/tailor_1500.json run_dir=/tmp/igsm-tailor \\
        data.num_train=8000 data.num_sft_eval=64 "eval.levels=[3,4,5]" eval.per_level=50 \\
        eval.task_options.split=train eval.max_new_tokens=768

(the iGSM evaluation above stays on the training templates' split with problems not in the pool;
igsm-tiny's own evaluation uses the test split's unseen templates.)

About 70 minutes for 1,500 KK steps on a loaded 2-core CPU (6-7 s per step of 8 x 1,024 tokens).
"""

import argparse
from pathlib import Path

from tailor_jax import run as run_lib

ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("method", choices=["tailor", "rule_based", "four_star"])
parser.add_argument("steps", type=int)
parser.add_argument("--run-dir", required=True)
parser.add_argument("--config", default=str(ROOT / "configs" / "kk-tiny.yaml"), help="the tiny config to probe")
parser.add_argument("--max-new-tokens", type=int, default=768, help="budget of the SFT trainer's evaluation")
parser.add_argument("overrides", nargs="*", help="more run-config overrides (key=value)")
args = parser.parse_args()
cfg = run_lib.load_run_config(args.config, [
    f"run_dir={args.run_dir}", f"warm_start.method={args.method}",
    "data.num_train=8000", "data.num_sft_eval=64", "sft.tokenizer.vocab_size=1024",
    f"sft.steps={args.steps}", "sft.eval_every=500", "sft.eval_samples=64", f"sft.max_new_tokens={args.max_new_tokens}",
    "sft.eval_batches=4", "sft.log_every=50", "sft.progress=false", "sft.checkpoint.every_steps=250", *args.overrides])
run_lib.execute(cfg, only={"data", "warm_start", "sft"})
