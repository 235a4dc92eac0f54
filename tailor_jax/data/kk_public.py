"""Read the public Knights & Knaves JSONL files (Xie et al. 2024, e.g. `test/people3_num100.jsonl`)
into tailor-jax `kk` records, so evaluation can run on the published split when the files are
available locally (nothing is downloaded).

A public line has at least `quiz, names, solution, solution_text, solution_text_format,
statements`; `statements` is either a JSON list or a Python-literal string such as
"(('lying', 1), ('<=>', ('telling-truth', 0), ('lying', 1)))", parsed with `ast.literal_eval`
(literals only, never `eval`). Other fields (`index`, `knight_knave`, `cot_*`) are ignored.

Records get `depth`/`width` = the smallest sampler limits that could produce their statements
(width 2 when no and/or occurs), `answer` = `solution`, and id `kk-public-<file stem>-<line>`. With `verify=True` (default) each solution is re-derived by brute force and a line whose
stored solution is not the unique consistent assignment is rejected.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tailor_jax.errors import TailorError
from tailor_jax.tasks import kk

REQUIRED_FIELDS = ("quiz", "names", "solution", "solution_text", "solution_text_format", "statements")


def read_public_kk(path: str | os.PathLike, *, verify: bool = True) -> Iterator[dict]:
    """Yield `kk` records from a public K&K JSONL file; a malformed line raises TailorError
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TailorError(f"K&K file {path} not found; give the path of a public K&K .jsonl file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield convert_public_record(json.loads(line), f"kk-public-{path.stem}-{lineno}", verify=verify)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as err:
                # json.JSONDecodeError is a ValueError; literal_eval raises ValueError/SyntaxError.
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise TailorError(f"{path}:{lineno}: not a public K&K record ({message}); fix or remove the line") from None


def convert_public_record(public: dict, record_id: str, *, verify: bool = True) -> dict:
    """One public K&K record as a tailor-jax `kk` record (raises ValueError when malformed)."""
    if not isinstance(public, dict):
        raise ValueError("expected a JSON object")
    missing = [field for field in REQUIRED_FIELDS if field not in public]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    names = public["names"]
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError("'names' must be a list of non-empty strings")
    n = len(names)
    if not kk.MIN_PEOPLE <= n <= kk.MAX_PEOPLE:
        raise ValueError(f"{n} names; K&K problems have {kk.MIN_PEOPLE}..{kk.MAX_PEOPLE} people")
    if len(set(names)) != n:
        raise ValueError("'names' has a repeated name")
    raw = public["statements"]
    if isinstance(raw, str):
        raw = ast.literal_eval(raw)
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        raise ValueError(f"'statements' must hold one statement per person ({n})")
    statements = tuple(kk.statement_from_json(s, n) for s in raw)
    solution = public["solution"]
    if not isinstance(solution, list) or len(solution) != n or not all(isinstance(r, bool) for r in solution):
        raise ValueError(f"'solution' must be a list of {n} booleans (true = knight)")
    for field in ("quiz", "solution_text", "solution_text_format"):
        if not isinstance(public[field], str):
            raise ValueError(f"{field!r} must be a string")
    if verify:
        solutions = kk.brute_force_solutions(statements)
        if solutions != [solution]:
            raise ValueError(
                f"stored solution is not the unique consistent assignment ({len(solutions)} consistent); "
                "pass verify=False to read it anyway"
            )
    return {
        "task": "kk",
        "id": record_id,
        "n_people": n,
        "quiz": public["quiz"],
        "names": list(names),
        "statements": [kk.statement_to_json(s) for s in statements],
        "solution": list(solution),
        "solution_text": public["solution_text"],
        "solution_text_format": public["solution_text_format"],
        "depth": max(kk.statement_depth(s) for s in statements),
        "width": max(2, *(kk.statement_width(s) for s in statements)),
        "answer": list(solution),
    }
