"""Datasets: JSONL writing, TFDS/ArrayRecord builders, grain pipelines, tokenizers."""
