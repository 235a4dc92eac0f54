"""Quality, diversity and coverage metrics of an SFT set (any set: Tailor, a baseline, a JSONL file).

An SFT set is a list of `Example(record, completion, primitive)`; on disk it is JSONL of task
records with an extra `"completion"` field (and `"primitive"` when known), the format
`tailor-jax sft` reads. Metrics (`compute_metrics`):

- `verified_accuracy`: fraction whose completion gets binary reward 1 from the task verifier.
- `step_check_rate`: among examples whose primitive is a known programmatic one, the fraction
  whose trace passes the primitive's step checker (every intermediate claim true).
- `distinct_1/2/3`: distinct n-grams / all n-grams over the whole set (whitespace tokens).
- `embedding_distance`: mean pairwise cosine distance (1 - cos) over all pairs of completions.
  Embedding `model`: the mean-pooled final hidden states of the completion tokens under a given
  policy; without a model, `tfidf_char3`: TF-IDF vectors of character 3-grams (named in
  `embedding`, since the two are not comparable).
- `reasoning_state_coverage`: a trace is cut into steps (lines, then `; ` / `. ` sentences);
  a step's reasoning state is (step type, intermediate state): the type is the step's template,
  the step with the problem's own tokens masked (GF numeral symbols -> `$`, KK names -> `@`,
  numbers -> `#`, other capitalised words -> `@`, single-letter variables -> `v`, the task's
  own unknowns kept: `Task.trace_variables`, GF `x`/`y`); the state is the value the step ends
  on (its last masked token: a field element, a person index or a number; none if it has no
  such token). Coverage = |states the set reaches that the library
  could reach| / |states reachable|, where "reachable" is the union of the states of every library
  primitive and composition rendered on the set's own questions. In [0, 1]; more different
  strategies (and more different intermediate values) reach more states.
- `mean_length_words` (and `mean_length_tokens` with a model), `num_primitives`,
  `primitive_mix`, and `student_logprob` (mean per-token log-likelihood of the completions under
  the given model: its fit to the student).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tailor_jax.errors import TailorError
from tailor_jax.tasks import TASK_MODULES, Task, get_task, problem_key, task_class
from tailor_jax.tasks.prompt import THINK_CLOSE, THINK_OPEN


# --- examples ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Example:
    record: dict  # the task record (without "completion"/"primitive")
    completion: str  # the full assistant text: <think>trace</think>\n<answer>...</answer>
    primitive: str | None = None


def example_from_json(obj: dict, where: str = "example") -> Example:
    """From `{"record", "completion", "primitive"}` or a record carrying `completion`."""
    if not isinstance(obj, dict):
        raise TailorError(f"{where}: expected a JSON object")
    if "record" in obj and isinstance(obj["record"], dict):
        record, completion, primitive = obj["record"], obj.get("completion"), obj.get("primitive")
    else:
        record = {k: v for k, v in obj.items() if k not in ("completion", "primitive")}
        completion, primitive = obj.get("completion"), obj.get("primitive")
    if not isinstance(completion, str):
        raise TailorError(f"{where}: no \"completion\" string; an SFT set line is a task record with a completion field")
    if "task" not in record:
        raise TailorError(f"{where}: the record has no \"task\" field")
    return Example(record, completion, primitive if isinstance(primitive, str) else None)


def example_to_json(example: Example) -> dict:
    """The SFT line: the record plus `completion` (and `primitive`)."""
    out = dict(example.record)
    out["completion"] = example.completion
    if example.primitive is not None:
        out["primitive"] = example.primitive
    return out


def read_examples(path: str | Path) -> list[Example]:
    from tailor_jax.data.jsonl import read_jsonl

    return [example_from_json(obj, f"{path}:{i}") for i, obj in enumerate(read_jsonl(path), 1)]


def trace_of(completion: str) -> str:
    """The text inside <think> ... </think> (the whole completion if the tags are missing)."""
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start + 1 if start >= 0 else 0)
    if start < 0 or end < 0:
        return completion
    return completion[start + len(THINK_OPEN) : end]


# --- model-free diversity ---------------------------------------------------------------------
def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over all texts (whitespace tokens); 0 with no n-grams."""
    seen, total = set(), 0
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def char_ngrams(text: str, n: int = 3) -> Counter:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def tfidf_char_embeddings(texts: Sequence[str], n: int = 3) -> sp.csr_matrix:
    """Rows: L2-normalised TF-IDF vectors of character n-grams (idf = log((1+N)/(1+df)) + 1)."""
    counts = [char_ngrams(t, n) for t in texts]
    vocab: dict[str, int] = {}
    for c in counts:
        for gram in c:
            vocab.setdefault(gram, len(vocab))
    rows, cols, vals = [], [], []
    for i, c in enumerate(counts):
        for gram, k in c.items():
            rows.append(i)
            cols.append(vocab[gram])
            vals.append(float(k))
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), max(len(vocab), 1)), dtype=np.float64)
    df = np.bincount(matrix.indices, minlength=matrix.shape[1])
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    matrix = matrix @ sp.diags(idf)
    return normalize_rows(matrix)


def normalize_rows(matrix):
    """Rows scaled to unit L2 norm (zero rows stay zero); dense or sparse."""
    if sp.issparse(matrix):
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ matrix)
    matrix = np.asarray(matrix, np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def mean_pairwise_cosine_distance(embeddings) -> float:
    """Mean of 1 - cos(e_i, e_j) over pairs i < j, in O(N d): with unit rows,
    sum_{i != j} cos = |sum_i e_i|^2 - N. 0 for fewer than two rows."""
    unit = normalize_rows(embeddings)
    n = unit.shape[0]
    if n < 2:
        return 0.0
    total = np.asarray(unit.sum(axis=0)).ravel()
    self_sim = float(np.asarray(unit.multiply(unit).sum()) if sp.issparse(unit) else (unit * unit).sum())
    mean_cos = (float(total @ total) - self_sim) / (n * (n - 1))
    return 1.0 - mean_cos


# --- reasoning-state coverage -------------------------------------------------------------------
_TOKEN = re.compile(r"[A-Za-z]+|\d+|\S")
_SENTENCE = re.compile(r"(?<=[.;])\s+")


def trace_steps(trace: str) -> list[str]:
    """Lines, each cut further into sentences at `. ` and `; `."""
    return [s.strip() for line in trace.split("\n") for s in _SENTENCE.split(line) if s.strip()]


def _state_tables(record: dict) -> tuple[dict[str, int], dict[str, int], set[str]]:
    """(symbol -> value, name -> index, letters kept as they are) of a record, for `step_state`."""
    symbols = record.get("symbols") if isinstance(record.get("symbols"), dict) else {}
    names = record.get("names") if isinstance(record.get("names"), list) else []
    task = record.get("task")
    keep_letters = task_class(task).trace_variables if task in TASK_MODULES else frozenset()
    return {s: int(v) for v, s in symbols.items()}, {str(name): i for i, name in enumerate(names)}, keep_letters


def step_state(record: dict, step: str, tables: tuple | None = None) -> tuple[str, int | None]:
    """(template, values) of one step; see the module docstring. `tables` is `_state_tables(record)`
    when the caller already has it."""
    symbol_value, name_index, keep_letters = tables or _state_tables(record)
    template, values = [], []
    for position, token in enumerate(_TOKEN.findall(step)):
        if token in symbol_value:
            template.append("$")
            values.append(symbol_value[token])
        elif token in name_index:
            template.append("@")
            values.append(name_index[token])
        elif token.isdigit():
            template.append("#")
            values.append(int(token))
        elif len(token) == 1 and token.isalpha() and token not in keep_letters and token not in ("a", "A"):
            template.append("v")
        elif token[0].isupper() and position > 0:
            template.append("@")
        else:
            template.append(token)
    return " ".join(template), (values[-1] if values else None)


def trace_states(record: dict, trace: str) -> set[tuple[str, int | None]]:
    tables = _state_tables(record)
    return {step_state(record, step, tables) for step in trace_steps(trace)}


def reachable_states(task_name: str, records: Iterable[dict]) -> set[tuple[str, int | None]] | None:
    """Union of the states of every library primitive and composition on `records`;
    None when the task has no library."""
    from tailor_jax.primitives import all_primitives

    try:
        primitives = list(all_primitives(task_name).values())
    except TailorError:
        return None
    states: set = set()
    for record in records:
        for primitive in primitives:
            states |= trace_states(record, primitive.render(record))
    return states


# --- model-based scoring ----------------------------------------------------------------------
class ModelScorer:
    """Embeddings (mean-pooled final hidden states of the completion tokens) and per-token
    log-likelihood of completions under a policy: one forward pass per batch of examples."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_len: int = 1024):
        from flax import nnx

        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_len = max_len
        self.graphdef, self.state = nnx.split(model)
        self._fn = None

    @classmethod
    def from_directory(cls, path: str | Path, **kwargs) -> "ModelScorer":
        from tailor_jax.data.tokenizer import load_tokenizer
        from tailor_jax.model.hf_io import load_pretrained

        path = Path(path)
        if not (path / "config.json").is_file():
            raise TailorError(f"{path} has no config.json; give a Hugging Face-format model directory")
        return cls(load_pretrained(path), load_tokenizer(path), **kwargs)

    def _compiled(self):
        if self._fn is None:
            import jax
            import jax.numpy as jnp
            from flax import nnx

            from tailor_jax.model.logprobs import model_token_logprobs

            graphdef = self.graphdef

            def score(state, tokens, valid, completion):
                model = nnx.merge(graphdef, state)
                positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
                hidden = model.hidden_states(tokens, positions, attention_mask=valid)
                weights = completion.astype(jnp.float32)
                count = jnp.maximum(weights.sum(1), 1.0)
                pooled = (hidden.astype(jnp.float32) * weights[..., None]).sum(1) / count[:, None]
                target_logp = model_token_logprobs(model, hidden[:, :-1], tokens[:, 1:]).logp
                target_weights = weights[:, 1:]
                mean_logp = (target_logp * target_weights).sum(1) / jnp.maximum(target_weights.sum(1), 1.0)
                return pooled, mean_logp

            self._fn = jax.jit(score)
        return self._fn

    def encode(self, task: Task, example: Example, prompt_style: str = "plain") -> tuple[list[int], int]:
        from tailor_jax.data import tokenizer as tok_lib

        prompt = task.prompt(example.record, style=prompt_style)
        prompt_ids = tok_lib.encode_prompt(self.tokenizer, prompt)
        completion_ids = tok_lib.encode_completion(self.tokenizer, example.completion, prompt)
        ids = (prompt_ids + completion_ids)[: self.max_len]
        return ids, min(len(prompt_ids), len(ids))

    def score(self, task: Task, examples: Sequence[Example], prompt_style: str = "plain") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings [N, H], mean completion log-prob [N], completion token counts [N])."""
        encoded = [self.encode(task, ex, prompt_style) for ex in examples]
        fn = self._compiled()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        embeddings, logps = [], []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            length = max(64, -(-max(len(ids) for ids, _ in chunk) // 64) * 64)
            tokens = np.full((self.batch_size, length), pad, np.int32)
            valid = np.zeros((self.batch_size, length), bool)
            completion = np.zeros((self.batch_size, length), bool)
            for row, (ids, prompt_len) in enumerate(chunk):
                tokens[row, : len(ids)] = ids
                valid[row, : len(ids)] = True
                completion[row, prompt_len : len(ids)] = True
            pooled, mean_logp = fn(self.state, tokens, valid, completion)
            embeddings.append(np.asarray(pooled)[: len(chunk)])
            logps.append(np.asarray(mean_logp)[: len(chunk)])
        counts = np.asarray([len(ids) - p for ids, p in encoded])
        if not encoded:
            return np.zeros((0, 1)), np.zeros((0,)), counts
        return np.concatenate(embeddings).astype(np.float64), np.concatenate(logps).astype(np.float64), counts


# --- all metrics ---------------------------------------------------------------------------------
def is_verified(task: Task, example: Example) -> bool:
    return task.reward("binary", example.record, example.completion) == 1.0


def step_check(example: Example, primitives: dict) -> bool | None:
    """True/False when the example's primitive is programmatic and known, else None."""
    primitive = primitives.get(example.primitive) if example.primitive else None
    if primitive is None:
        return None
    try:
        return not primitive.check(example.record, trace_of(example.completion))
    except Exception:  # noqa: BLE001 - a checker crash on odd text counts as a failed check
        return False


def compute_metrics(
    examples: Sequence[Example],
    task: Task | None = None,
    *,
    scorer: ModelScorer | None = None,
    prompt_style: str = "plain",
    reachable: set | None = None,
) -> dict:
    """Every metric of the module docstring for one SFT set (all of one task). `reachable`: the
    reachable states of the set's questions when the caller has them already."""
    from tailor_jax.primitives import all_primitives

    if not examples:
        raise TailorError("the SFT set is empty; nothing to measure")
    task_names = {ex.record.get("task") for ex in examples}
    if len(task_names) != 1:
        raise TailorError(f"an SFT set must hold one task, got {sorted(map(str, task_names))}")
    task_name = task_names.pop()
    task = task or get_task(task_name)
    try:
        primitives = all_primitives(task_name)
    except TailorError:
        primitives = {}
    texts = [ex.completion for ex in examples]
    checks = [step_check(ex, primitives) for ex in examples]
    checked = [c for c in checks if c is not None]
    metrics: dict = {
        "size": len(examples),
        "verified_accuracy": float(np.mean([is_verified(task, ex) for ex in examples])),
        "step_check_rate": float(np.mean(checked)) if checked else None,
        "step_checked_fraction": len(checked) / len(examples),
    }
    for n in (1, 2, 3):
        metrics[f"distinct_{n}"] = distinct_n(texts, n)
    if scorer is not None:
        embeddings, logps, counts = scorer.score(task, examples, prompt_style)
        metrics["embedding"] = "model"
        metrics["embedding_distance"] = mean_pairwise_cosine_distance(embeddings)
        metrics["student_logprob"] = float(np.mean(logps))
        metrics["mean_length_tokens"] = float(np.mean(counts))
    else:
        metrics["embedding"] = "tfidf_char3"
        metrics["embedding_distance"] = mean_pairwise_cosine_distance(tfidf_char_embeddings(texts))
    questions = {problem_key(ex.record): ex.record for ex in examples}
    if reachable is None:
        reachable = reachable_states(task_name, questions.values())
    reached = set().union(*(trace_states(ex.record, trace_of(ex.completion)) for ex in examples))
    if reachable:
        metrics["reasoning_state_coverage"] = len(reached & reachable) / len(reachable)
        metrics["reasoning_states_reachable"] = len(reachable)
    else:
        metrics["reasoning_state_coverage"] = None
        metrics["reasoning_states_reachable"] = 0
    metrics["reasoning_states_reached"] = len(reached)
    metrics["mean_length_words"] = float(np.mean([len(t.split()) for t in texts]))
    mix = Counter(ex.primitive or "unknown" for ex in examples)
    metrics["num_primitives"] = len([name for name in mix if name != "unknown"])
    metrics["num_questions"] = len(questions)
    metrics["primitive_mix"] = dict(sorted(mix.items(), key=lambda kv: (-kv[1], kv[0])))
    return metrics


DIVERSITY_METRICS = ("distinct_1", "distinct_2", "distinct_3", "embedding_distance", "reasoning_state_coverage", "num_primitives")


def format_metrics_table(named: dict[str, dict]) -> str:
    """A Markdown table: one column per set, one row per scalar metric."""
    keys = [k for k in next(iter(named.values())) if not isinstance(next(iter(named.values()))[k], dict)]
    header = "| metric | " + " | ".join(named) + " |\n|---|" + "---|" * len(named) + "\n"

    def fmt(value) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4f}"
        return "n/a" if value is None else str(value)

    rows = "".join(f"| {k} | " + " | ".join(fmt(m.get(k)) for m in named.values()) + " |\n" for k in keys)
    return header + rows
