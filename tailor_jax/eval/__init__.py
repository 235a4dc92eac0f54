"""Evaluation: exact-answer accuracy per difficulty level, pass@k, reports."""
