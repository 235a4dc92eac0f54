"""statement_analysis: each statement's allowed local role combinations, then joined."""

from __future__ import annotations

import itertools
import re

from tailor_jax.primitives.kk.common import (
    NAME, QUOTED, roles_tuple_text, parse_roles_tuple, Puzzle, Checker, numbered_lines,
)
from tailor_jax.tasks.kk import solution_text


# --- statement_analysis ------------------------------------------------------------------
Table = tuple[tuple[int, ...], frozenset[tuple[bool, ...]]]  # (people, allowed role rows)


def _statement_table(puzzle: Puzzle, speaker: int) -> Table:
    people = puzzle.involved[speaker]
    rows = set()
    for combo in itertools.product((True, False), repeat=len(people)):
        roles: list[bool | None] = [None] * puzzle.n
        for p, r in zip(people, combo):
            roles[p] = r
        if puzzle.fits(speaker, roles):
            rows.add(combo)
    return people, frozenset(rows)


def _join(a: Table, b: Table) -> Table:
    people = tuple(sorted(set(a[0]) | set(b[0])))
    rows = set()
    for row_a in a[1]:
        for row_b in b[1]:
            merged = dict(zip(a[0], row_a))
            if all(merged.setdefault(p, r) == r for p, r in zip(b[0], row_b)):
                rows.add(tuple(merged[p] for p in people))
    return people, frozenset(rows)


def _table_text(puzzle: Puzzle, table: Table) -> str:
    names = ", ".join(puzzle.names[p] for p in table[0])
    rows = " or ".join(roles_tuple_text(row) for row in sorted(table[1], reverse=True))
    return f"({names}) = {rows}" if rows else f"({names}) = nothing"


def _parse_table(puzzle: Puzzle, names_text: str, rows_text: str) -> Table | None:
    names = [name.strip() for name in names_text.split(",")]
    if any(name not in puzzle.index for name in names):
        return None
    people = tuple(puzzle.index[name] for name in names)
    rows = []
    for row_text in ([] if rows_text == "nothing" else rows_text.split(" or ")):
        row = parse_roles_tuple(row_text)
        if row is None or len(row) != len(people) or None in row:
            return None
        rows.append(row)
    return people, frozenset(rows)


SA_HEADER = "First list which roles each statement allows on its own, then combine the lists."
_SA_OWN = re.compile(rf'{NAME}: {QUOTED} allows \(([A-Za-z, ]+)\) = (.+)\.')
_SA_START = re.compile(rf"Combine, starting from {NAME}'s list\.")
_SA_ADD = re.compile(rf"Add {NAME}'s: \(([A-Za-z, ]+)\) = (.+)\.")
_SA_DONE = re.compile(r"One option remains: (.*)")


def render_statement_analysis(record: dict) -> str:
    puzzle = Puzzle.of(record)
    tables = [_statement_table(puzzle, i) for i in range(puzzle.n)]
    lines = [SA_HEADER]
    for i, table in enumerate(tables):
        lines.append(f'{puzzle.names[i]}: "{puzzle.texts[i]}" allows {_table_text(puzzle, table)}.')
    # Greedy join order: always add the list that leaves the fewest combined rows.
    start = min(range(puzzle.n), key=lambda i: (len(tables[i][1]), i))
    current, left = tables[start], [i for i in range(puzzle.n) if i != start]
    lines.append(f"Combine, starting from {puzzle.names[start]}'s list.")
    while left:
        pick = min(left, key=lambda i: (len(_join(current, tables[i])[1]), -len(set(tables[i][0]) & set(current[0])), i))
        left.remove(pick)
        current = _join(current, tables[pick])
        lines.append(f"Add {puzzle.names[pick]}'s: {_table_text(puzzle, current)}.")
    (row,) = current[1]
    lines.append(f"One option remains: {solution_text(puzzle.names, [dict(zip(current[0], row))[p] for p in range(puzzle.n)])}")
    return "\n".join(lines)


def check_statement_analysis(record: dict, trace: str) -> list[str]:
    puzzle = Puzzle.of(record)
    c = Checker(puzzle)
    lines = numbered_lines(trace)
    if not lines or lines[0][1] != SA_HEADER:
        c.fail(1, "missing the header line")
    listed: dict[int, Table] = {}
    current: Table | None = None
    combined: set[int] = set()
    concluded = False

    def same_table(line_no: int, claimed: Table | None, true: Table, what: str) -> None:
        if claimed is None:
            c.fail(line_no, f"cannot read the table of {what}")
        elif set(claimed[0]) != set(true[0]):
            c.fail(line_no, f"{what} concerns {', '.join(puzzle.names[p] for p in true[0])}")
        else:
            order = [claimed[0].index(p) for p in true[0]]
            rows = {tuple(row[k] for k in order) for row in claimed[1]}
            if rows - true[1]:
                c.fail(line_no, f"{what} lists {len(rows - true[1])} impossible option(s)")
            if true[1] - rows:
                c.fail(line_no, f"{what} misses {len(true[1] - rows)} possible option(s)")

    for line_no, line in lines[1:]:
        if concluded:
            c.fail(line_no, "text after the conclusion")
        elif m := _SA_OWN.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None or not c.statement_of(line_no, speaker, m[2]):
                continue
            true = _statement_table(puzzle, speaker)
            same_table(line_no, _parse_table(puzzle, m[3], m[4]), true, f"{m[1]}'s list")
            listed[speaker] = true
        elif m := _SA_START.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None:
                continue
            if speaker not in listed or current is not None:
                c.fail(line_no, f"cannot start combining from {m[1]}'s list here")
            current = _statement_table(puzzle, speaker)
            combined.add(speaker)
        elif m := _SA_ADD.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None:
                continue
            if current is None or speaker not in listed or speaker in combined:
                c.fail(line_no, f"{m[1]}'s list cannot be added here (not listed, already added, or no start)")
                continue
            current = _join(current, _statement_table(puzzle, speaker))
            combined.add(speaker)
            same_table(line_no, _parse_table(puzzle, m[2], m[3]), current, "the combined list")
        elif m := _SA_DONE.fullmatch(line):
            concluded = True
            if combined != set(range(puzzle.n)):
                missing = sorted(set(range(puzzle.n)) - combined)
                c.fail(line_no, f"concludes without combining the lists of {', '.join(puzzle.names[p] for p in missing)}")
            if current is None or len(current[1]) != 1:
                c.fail(line_no, "more than one option is left")
                c.conclusion(line_no, m[1])
            else:
                (row,) = current[1]
                c.conclusion(line_no, m[1], [dict(zip(current[0], row)).get(p) for p in range(puzzle.n)])
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not concluded:
        c.fail(len(lines), "no conclusion")
    return c.problems
