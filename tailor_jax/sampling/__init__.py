"""Jitted sampling: prefill + decode loop over a KV cache, group sampling, length buckets."""

from tailor_jax.sampling.engine import SampleOutput, Sampler, generate
from tailor_jax.sampling.ops import SamplingParams, sample_tokens

__all__ = ["SampleOutput", "Sampler", "SamplingParams", "generate", "sample_tokens"]
