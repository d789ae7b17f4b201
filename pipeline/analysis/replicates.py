"""Independent replicates of a nested design (teacher > mixture draw > init seed): pure numpy, JSON-able dicts out.

The fit stage treats the rows of one (p, n) cell as independent seeds. With several teachers or mixture draws the
rows of a cell share those random effects, so a t-interval over raw rows is too narrow (pseudoreplication).
- `replicate_rows`: average each cell's rows to the outermost level that varies in it (METHOD); the intervals of
  `prediction` and `fitting` then see one row per independent unit. tests/test_replicates.py measures the coverage.
- `variance_components`: how much of a field's spread each level carries (nested ANOVA, method of moments), to
  say which level to replicate more.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

LEVELS = ("teacher_replicate", "mix_draw", "seed")  # outermost first
OUTCOMES = ("loss", "excess_loss", "bpb", "synthetic_loss", "ppl")
METHOD = ("the rows of a cell are averaged to the outermost level that varies in it (teachers for p > 0 when there "
          "are several, else mixture draws, else seeds), so that every interval treats independent units as "
          "replicates (exact for a balanced nested design: the variance of the grand mean is the top level's mean "
          "square over its count)")
COMPONENTS_METHOD = ("method-of-moments variance components of a nested ANOVA (teacher > mixture draw > seed): sums "
                     "of squares of each level's group means around their parent's mean, pooled over cells, solved "
                     "from the innermost level outward and truncated at 0; the innermost level that varies also "
                     "carries the variance of the levels below it that never vary")


def _level(row: dict, level: str) -> int:
    """A row's value at a level; rows written before teachers and draws were replicated carry 0."""
    value = row.get(level)
    return 0 if value is None else int(value)


def _cells(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by (student, generation, p, n), cells in the order they first appear (dicts keep it)."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (row.get("student"), row.get("generation"), float(row["synthetic_fraction"]), int(row["token_budget"]))
        cells[key].append(row)
    return cells


def _top_level(rows: list[dict]) -> str | None:
    """The outermost level with more than one value among these rows (None: a single row or exact repeats)."""
    return next((level for level in LEVELS if len({_level(r, level) for r in rows}) > 1), None)


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def _averaged(group: list[dict], level: str, value: int) -> dict:
    """One replicate: the first row with each outcome averaged over the group (None unless finite in every row)."""
    row = dict(group[0])
    for field in OUTCOMES:
        if any(field in r for r in group):
            values = [r.get(field) for r in group]
            row[field] = float(np.mean(values)) if all(_finite(v) for v in values) else None
    row.update(seed=value, replicate_level=level, replicate_rows=len(group), unit=group[0].get("unit"))
    return row


def replicate_rows(rows: list[dict]) -> list[dict]:
    """Rows whose replicates are independent: each cell averaged to the outermost level that varies in it (METHOD).

    Teachers (or draws) are shared by every row under them, so the rows under one teacher are not independent;
    their mean is, and a t-interval over those means has the right width for a balanced nested design. A cell
    where only seeds vary comes back unchanged (copies), so this is a no-op on studies without replicated teachers
    or draws. Replicates carry "seed" = the level's value (code that counts seeds counts replicates),
    "replicate_level" and "replicate_rows" (raw rows averaged). Cells keep their input order.
    """
    out: list[dict] = []
    for group in _cells(rows).values():
        level = _top_level(group)
        if level in (None, "seed"):
            out.extend(dict(row) for row in group)
            continue
        replicates: dict[int, list[dict]] = defaultdict(list)
        for row in group:
            replicates[_level(row, level)].append(row)
        out.extend(_averaged(members, level, value) for value, members in replicates.items())
    return out


def _cell_squares(values: np.ndarray, keys: np.ndarray) -> dict[str, tuple[float, int, np.ndarray]]:
    """Per level varying in one cell: (sum of squares, dof, rows per group at every level) of a nested ANOVA.

    values: the field per row; keys: rows × LEVELS. A level's groups are the distinct prefixes of the keys up to
    it; its sum of squares is Σ rows·(group mean − parent mean)², its dof the number of groups minus the parents'.
    The innermost level is the rows themselves (exact repeats count as seeds).
    """
    n = len(values)
    parent_means, parent_count = np.full(n, values.mean()), 1
    sizes = np.array([n / len({tuple(k[:i + 1]) for k in keys.tolist()}) for i in range(len(LEVELS) - 1)] + [1.0])
    out = {}
    for i, level in enumerate(LEVELS):
        if i == len(LEVELS) - 1:
            means, count = values, n
        else:
            _, inverse = np.unique(keys[:, :i + 1], axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            means = (np.bincount(inverse, values) / np.bincount(inverse))[inverse]
            count = int(inverse.max()) + 1
        if count > parent_count:
            out[level] = (float(np.sum((means - parent_means) ** 2)), count - parent_count, sizes)
        parent_means, parent_count = means, count
    return out


def variance_components(rows: list[dict], field: str = "loss") -> dict:
    """Variance of `field` due to each level in LEVELS that varies somewhere, pooled over cells (COMPONENTS_METHOD).

    Says where the spread comes from (one teacher vs another, one draw of the mixture vs another, init seeds) and
    so which level more replicates buy the most precision at. E[MS_level] = Σ over that level and those inside it
    of (rows per group at that inner level)·σ², the rows per group averaged over the cells by their dof; the
    triangular system is solved from the seeds outward. p = 0 cells (no teacher level) and p > 0 cells pool alike.
    """
    pooled: dict[str, list] = {level: [0.0, 0, 0, np.zeros(len(LEVELS))] for level in LEVELS}
    for group in _cells(rows).values():
        kept = [r for r in group if _finite(r.get(field))]
        if len(kept) < 2:
            continue
        keys = np.array([[_level(r, level) for level in LEVELS] for r in kept])
        for level, (squares, dof, sizes) in _cell_squares(np.array([float(r[field]) for r in kept]), keys).items():
            entry = pooled[level]
            entry[0] += squares
            entry[1] += dof
            entry[2] += 1
            entry[3] = entry[3] + dof * sizes
    varying = [level for level in LEVELS if pooled[level][1] > 0]
    raw: dict[str, float] = {}
    for level in reversed(varying):
        squares, dof, _, weighted = pooled[level]
        sizes = weighted / dof
        inner = sum(sizes[LEVELS.index(other)] * raw[other] for other in raw)
        raw[level] = (squares / dof - inner) / sizes[LEVELS.index(level)]
    levels = {}
    for level in varying:
        variance = max(0.0, float(raw[level]))
        levels[level] = {"sd": float(np.sqrt(variance)), "variance": variance, "dof": int(pooled[level][1]),
                         "cells": int(pooled[level][2])}
    return {"field": field, "levels": levels, "method": COMPONENTS_METHOD}
