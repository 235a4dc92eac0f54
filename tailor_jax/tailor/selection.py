"""Curate's selection: greedily grow the SFT set that maximises the (weighted) product of its
diversity metrics (`metrics.compute_metrics`):

    F(S) = w_d * mean_n log distinct_n(S) + w_c * log coverage(S) + w_e * log embedding_distance(S)
           + w_p * log num_primitives(S) + mean_{i in S} bonus_i

(or, with `primitive_term="entropy"`, w_p * H(S) in place of w_p * log num_primitives(S): the
entropy of S's primitive mix, the log of its effective number of primitives, see below).

The product is scale-free: a 1% gain on distinct-1 (about 0.005) counts as much as a 1% gain on
coverage (about 0.5), so no metric is traded away for another. Each kind of diversity (n-grams,
reasoning states, embeddings, primitives) has one vote by default; distinct-1/2/3 share theirs
(their geometric mean), or n-gram novelty, which favours short traces, would outvote the
reasoning-state coverage that long traces bring. Each step adds the item i that maximises
F(S + i) (the first in pool order on a tie), computed exactly from per-item counts kept up to
date as S grows:

- distinct_n(S + i) = (distinct n-grams of S + those of i new to S) / (n-grams of S + of i);
- coverage: the number of reasoning states S + i reaches among those its questions' primitives
  can reach (the metric's numerator; its denominator is held at the pool's by the difficulty
  quotas below, so the selection cannot raise the ratio by picking small problems);
- embedding_distance(S + i) = 1 - (|s + u_i|^2 - sum |u|^2) / (n (n - 1)), with s the sum of
  the unit embeddings of S: the mean pairwise cosine distance, through s . u_i;
- num_primitives(S + i) = primitives of S + [i's primitive is new]. A primitive's first item
  raises log num_primitives by log((P + 1) / P), far more than one item moves a ratio metric
  late in the selection, so every available primitive is represented. A primitive with one item
  counts as much as one with thousands; on GF the n-gram terms then favour the two shortest
  primitives (forward and backward walks, 99.6% of a 20,000-item set; docs/tailor.md).
- H(S + i) = -sum_p q_p log q_p over the primitive shares q of S + i: the log of the effective
  number of primitives, highest for an even mix, so it keeps pulling towards primitives the
  set holds few of.

Constraints: at most `max_per_group` items per question; the pool's difficulty mix (each
difficulty level gets the share of the budget that it has of the pool's questions, so easy
problems, whose short traces score well on distinct-n, cannot crowd out hard ones; a level that
runs out of items leaves its share to the others); near-duplicates (cosine >= `dedup_threshold`
to a chosen item) are never chosen.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from tailor_jax.errors import TailorError
from tailor_jax.tailor import metrics as metrics_lib
from tailor_jax.tasks import problem_key

NGRAM_ORDERS = (1, 2, 3)
PRIMITIVE_TERMS = ("count", "entropy")


@dataclasses.dataclass(frozen=True)
class Item:
    """What one demonstration adds to a set's metrics."""

    grams: tuple[frozenset, ...]  # its distinct word n-grams, one set per order in NGRAM_ORDERS
    num_grams: tuple[int, ...]  # its word n-grams counted with repeats, per order
    states: frozenset  # its reasoning states that its question's primitives can reach
    group: str  # its question
    level: int  # its question's difficulty
    label: str  # its primitive


@dataclasses.dataclass(frozen=True)
class Weights:
    distinct: float = 1.0  # of the geometric mean of distinct-1/2/3
    coverage: float = 1.0
    embedding: float = 1.0
    primitives: float = 1.0
    primitive_term: str = "count"  # "count": log num_primitives(S); "entropy": H(S) (module docstring)

    def __post_init__(self):
        if min(self.distinct, self.coverage, self.embedding, self.primitives) < 0:
            raise TailorError(f"selection weights must be >= 0, got {self}")
        if self.primitive_term not in PRIMITIVE_TERMS:
            raise TailorError(f"primitive_term must be one of {PRIMITIVE_TERMS}, got {self.primitive_term!r}")


def describe(record: dict, completion: str, primitive: str, level: int, reachable: frozenset) -> Item:
    """The `Item` of a demonstration; `reachable`: the reasoning states of its question."""
    tokens = completion.split()
    grams = tuple(frozenset(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in NGRAM_ORDERS)
    counts = tuple(max(len(tokens) - n + 1, 0) for n in NGRAM_ORDERS)
    states = frozenset(metrics_lib.trace_states(record, metrics_lib.trace_of(completion))) & reachable
    return Item(grams, counts, states, problem_key(record), level, primitive)


def incidence(rows: Sequence[frozenset]) -> sp.csr_matrix:
    """Binary rows x (union of the rows' elements) matrix."""
    columns: dict[Hashable, int] = {}
    indices = [columns.setdefault(x, len(columns)) for row in rows for x in row]
    indptr = np.cumsum([0] + [len(row) for row in rows])
    data = np.ones(len(indices), np.float64)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), max(len(columns), 1)))


class _Cover:
    """How many not-yet-covered columns each row of a binary matrix has, as columns get covered."""

    def __init__(self, matrix: sp.csr_matrix):
        self.rows = matrix
        self.columns = matrix.tocsc()
        self.covered = np.zeros(matrix.shape[1], bool)
        self.new = np.asarray(matrix.sum(axis=1), np.float64).ravel()  # uncovered columns per row
        self.total = 0  # covered columns

    def add(self, row: int) -> None:
        cols = self.rows.indices[self.rows.indptr[row] : self.rows.indptr[row + 1]]
        cols = cols[~self.covered[cols]]
        self.covered[cols] = True
        self.total += len(cols)
        self.new -= np.asarray(self.columns[:, cols].sum(axis=1), np.float64).ravel()

    def keep(self, rows: np.ndarray) -> None:
        """Drop every row not in `rows` (the covered columns stay covered)."""
        self.rows = self.rows[rows]
        self.columns = self.rows.tocsc()
        self.new = self.new[rows]


def _log_ratio(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
    """log(num / den), -inf where the ratio is 0 or undefined (a metric that cannot be had)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
        return np.where(np.isfinite(ratio) & (ratio > 0), np.log(ratio), -np.inf)


def _similarities(unit, row: int) -> np.ndarray:
    """cos(e_i, e_row) for every i."""
    if sp.issparse(unit):
        return unit @ unit[row].toarray().ravel()  # a dense vector: far cheaper than sparse @ sparse
    return unit @ unit[row]


def apportion(counts: Mapping[Hashable, int], total: int) -> dict[Hashable, int]:
    """`total` split in proportion to `counts` (largest remainder; ties to the first key)."""
    size = sum(counts.values())
    if size <= 0 or total < 0:
        raise TailorError(f"apportion: need positive counts and total >= 0, got {dict(counts)} and {total}")
    exact = {key: total * count / size for key, count in counts.items()}
    shares = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(counts, key=lambda key: shares[key] - exact[key])
    for key in by_remainder[: total - sum(shares.values())]:
        shares[key] += 1
    return shares


class _Objective:
    """F(S + i) for every item i (module docstring), kept exact as items join S."""

    def __init__(self, items: Sequence[Item], embeddings, weights: Weights, bonus: np.ndarray | None):
        n = len(items)
        self.weights = weights
        self.grams = [_Cover(incidence([item.grams[j] for item in items])) for j in range(len(NGRAM_ORDERS))]
        self.num_grams = np.asarray([item.num_grams for item in items], np.float64).reshape(n, len(NGRAM_ORDERS))
        self.gram_totals = np.zeros(len(NGRAM_ORDERS))
        self.states = _Cover(incidence([item.states for item in items]))
        self.use_coverage = weights.coverage > 0 and self.states.new.any()  # no library: no states to count
        label_index = {label: k for k, label in enumerate(dict.fromkeys(item.label for item in items))}
        self.of_label = np.asarray([label_index[item.label] for item in items])
        self.seen_label = np.zeros(len(label_index), bool)
        self.label_count = np.zeros(len(label_index))
        self.unit = metrics_lib.normalize_rows(embeddings)
        unit = self.unit
        self.self_sim = np.asarray(unit.multiply(unit).sum(axis=1) if sp.issparse(unit) else (unit * unit).sum(axis=1)).ravel()
        self.dot = np.zeros(n)  # sum over j in S of cos(e_i, e_j)
        self.sum_sq = self.sum_self = 0.0  # |sum over S of e_j|^2, sum over S of |e_j|^2
        self.bonus = np.zeros(n) if bonus is None else np.asarray(bonus, np.float64)
        self.sum_bonus = 0.0
        self.size = 0

    def scores(self) -> np.ndarray:
        w, size = self.weights, self.size + 1
        score = (self.sum_bonus + self.bonus) / size
        if w.distinct > 0:
            for j, cover in enumerate(self.grams):
                distinct = _log_ratio(cover.total + cover.new, self.gram_totals[j] + self.num_grams[:, j])
                score = score + w.distinct / len(self.grams) * distinct
        if self.use_coverage:
            score = score + w.coverage * _log_ratio(self.states.total + self.states.new, 1.0)
        if w.embedding > 0 and size >= 2:
            mean_cos = (self.sum_sq + 2 * self.dot - self.sum_self) / (size * (size - 1))
            score = score + w.embedding * _log_ratio(1.0 - mean_cos, 1.0)
        if w.primitives > 0 and w.primitive_term == "entropy":
            score = score + w.primitives * self._mix_entropy()[self.of_label]
        elif w.primitives > 0:
            score = score + w.primitives * np.log(self.seen_label.sum() + ~self.seen_label[self.of_label])
        return np.where(np.isnan(score), -np.inf, score)

    def _mix_entropy(self) -> np.ndarray:
        """H(S + one item of primitive l), for every primitive l."""
        counts = self.label_count[None, :] + np.eye(len(self.label_count))  # row l: S's counts, plus one for l
        shares = counts / counts.sum(axis=1, keepdims=True)
        return -(shares * np.log(np.where(shares > 0, shares, 1.0))).sum(axis=1)

    def keep(self, rows: np.ndarray) -> None:
        """Track only the items `rows` from now on (S's totals are kept); item k becomes rows[k]'s."""
        for cover in (*self.grams, self.states):
            cover.keep(rows)
        self.num_grams, self.of_label = self.num_grams[rows], self.of_label[rows]
        self.unit, self.self_sim, self.dot, self.bonus = self.unit[rows], self.self_sim[rows], self.dot[rows], self.bonus[rows]

    def add(self, i: int) -> np.ndarray:
        """Put item i into S; returns cos(e_j, e_i) for every item j."""
        for j, cover in enumerate(self.grams):
            cover.add(i)
        self.gram_totals += self.num_grams[i]
        self.states.add(i)
        self.seen_label[self.of_label[i]] = True
        self.label_count[self.of_label[i]] += 1
        sims = _similarities(self.unit, i)
        self.sum_sq += 2 * self.dot[i] + self.self_sim[i]
        self.sum_self += self.self_sim[i]
        self.dot += sims
        self.sum_bonus += self.bonus[i]
        self.size += 1
        return sims


def select_diverse(
    items: Sequence[Item],
    embeddings,
    budget: int,
    *,
    weights: Weights = Weights(),
    bonus: np.ndarray | None = None,
    max_per_group: int = 1,
    dedup_threshold: float = 0.98,
) -> tuple[list[int], int]:
    """Greedy maximisation of F (module docstring) over at most `budget` items, under its
    constraints.

    `embeddings`: one row per item (dense or sparse); `bonus`: a per-item score whose set mean
    is added to F. Returns (chosen indices in order, items excluded as near-duplicates of a
    chosen one).
    """
    n = len(items)
    if embeddings.shape[0] != n or (bonus is not None and len(bonus) != n):
        raise TailorError(f"select_diverse: {n} items but {embeddings.shape[0]} embeddings or a bonus of another length")
    objective = _Objective(items, embeddings, weights, bonus)
    group_index = {group: k for k, group in enumerate(dict.fromkeys(item.group for item in items))}
    groups = np.asarray([group_index[item.group] for item in items])
    levels = np.asarray([item.level for item in items])
    quota = apportion(Counter({item.group: item.level for item in items}.values()), budget)
    per_group: Counter = Counter()
    per_level: Counter = Counter()
    available = np.ones(n, bool)  # not chosen, its question not full, not a near-duplicate
    open_level = np.asarray([quota[item.level] > 0 for item in items])  # its level is below its quota
    max_sim = np.full(n, -np.inf)
    ids = np.arange(n)  # pool index of each item the loop still tracks
    chosen: list[int] = []
    duplicates = 0
    while available.any() and len(chosen) < budget:
        if available.sum() < 0.9 * len(ids):
            # Chosen, full-question and duplicate items never come back: stop paying for them in
            # every step's scores and similarities (order is kept, so ties still go the same way).
            rows = np.flatnonzero(available)
            objective.keep(rows)
            ids, available, open_level, groups, levels, max_sim = (
                a[rows] for a in (ids, available, open_level, groups, levels, max_sim))
        if not (available & open_level).any():  # every level gave what it could: fill from any
            open_level[:] = True
        candidates = np.flatnonzero(available & open_level)
        i = int(candidates[np.argmax(objective.scores()[candidates])])
        chosen.append(int(ids[i]))
        available[i] = False
        per_group[groups[i]] += 1
        if per_group[groups[i]] >= max_per_group:
            available[groups == groups[i]] = False
        per_level[levels[i]] += 1
        if per_level[levels[i]] >= quota[levels[i]]:
            open_level[levels == levels[i]] = False
        max_sim = np.maximum(max_sim, objective.add(i))
        near = available & (max_sim >= dedup_threshold)
        duplicates += int(near.sum())
        available &= ~near
    return chosen, duplicates
