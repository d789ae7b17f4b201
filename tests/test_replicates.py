"""Replicates of a nested design (teacher > mixture draw > init seed): the collapse, the variance components, and the
measured coverage of the gap interval L_p − L_0 built on the collapsed rows.

The coverage simulation is the study's design at one budget: a p = 0 arm of M mixture draws × S init seeds and a
p > 0 arm of T teachers × M draws × S seeds, with the effect of draw m shared by both arms (the same human blocks),
teacher effects of sd 0.02, draw effects of sd 0.01, seed noise of sd 0.01 and a true gap of 0.05 nats. Each design's
interval must cover the gap in 90–99% of DATA_SETS data sets (Monte Carlo sd ≈ 0.5 point at 95%; generators seeded,
so the test is deterministic). Raw rows passed as if independent seeds cover far less: the pseudoreplication
`replicate_rows` removes. `pytest -s tests/test_replicates.py` prints the measured coverages.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.prediction import measured_gaps
from pipeline.analysis.replicates import LEVELS, METHOD, replicate_rows, variance_components

TEACHER_SD, DRAW_SD, SEED_SD, GAP = 0.02, 0.01, 0.01, 0.05
CLEAN_LOSS, FRACTION, BUDGET = 4.0, 0.5, 40_000
DATA_SETS = 2000
LOWEST, HIGHEST = 0.90, 0.99


def row(p, loss, seed, teacher=None, mix=None, n=BUDGET, **extra):
    out = {"student": "s", "generation": 1, "synthetic_fraction": p, "token_budget": n, "seed": seed, "loss": loss,
           "unit": f"p{p:g}-n{n}-t{teacher}-m{mix}-s{seed}", **extra}
    out.update({k: v for k, v in (("teacher_replicate", teacher), ("mix_draw", mix)) if v is not None})
    return out


def test_method_and_levels():
    assert LEVELS == ("teacher_replicate", "mix_draw", "seed")
    assert "outermost level that varies" in METHOD


def test_noop_when_only_seeds_vary():
    rows = [row(p, 4.0 + 0.1 * p + 0.01 * s, s, excess_loss=0.5 + 0.01 * s, n=n)
            for p in (0.0, 0.5) for n in (10_000, 20_000) for s in range(3)]
    rows += [row(0.2, 4.1, 0, teacher=3, mix=1), row(0.2, 4.2, 1, teacher=3, mix=1)]  # constant teacher and draw
    assert replicate_rows(rows) == rows
    assert replicate_rows([]) == []


def test_collapse_averages_to_the_outermost_varying_level():
    rows = [row(0.0, 4.00, 0), row(0.0, 4.02, 1), row(0.0, 4.10, 0, mix=1), row(0.0, 4.12, 1, mix=1),  # absent = 0
            row(0.5, 4.20, 0, teacher=0, mix=0, excess_loss=0.2), row(0.5, 4.22, 1, teacher=0, mix=1, excess_loss=0.3),
            row(0.5, 4.30, 0, teacher=1, mix=0, excess_loss=0.4), row(0.5, 4.34, 1, teacher=1, mix=1, excess_loss=None),
            row(0.2, 4.1, 0, teacher=2), row(0.2, 4.3, 1, teacher=2)]  # one teacher, seeds only: unchanged
    out = replicate_rows(rows)
    assert [(r["synthetic_fraction"], r["seed"], r.get("replicate_level"), r.get("replicate_rows")) for r in out] == [
        (0.0, 0, "mix_draw", 2), (0.0, 1, "mix_draw", 2), (0.5, 0, "teacher_replicate", 2), (0.5, 1, "teacher_replicate", 2),
        (0.2, 0, None, None), (0.2, 1, None, None)]
    np.testing.assert_allclose([r["loss"] for r in out], [4.01, 4.11, 4.21, 4.32, 4.1, 4.3])
    assert out[2]["excess_loss"] == pytest.approx(0.25) and out[3]["excess_loss"] is None  # None in one row: None
    assert "excess_loss" not in out[0] and out[0]["unit"] == rows[0]["unit"]
    gaps = measured_gaps(out)["0.5"]
    assert gaps["seeds"] == [2, 2] and gaps["gap"] == pytest.approx(4.265 - 4.06)


def simulated_design(rng, cells: int, sds: tuple[float, float, float], shape=(3, 3, 3)) -> list[dict]:
    """cells p > 0 cells of T×M×S rows and as many p = 0 cells of M×S rows, effects drawn afresh per cell."""
    (t_sd, m_sd, s_sd), (teachers, draws, seeds) = sds, shape
    rows = []
    for c in range(cells):
        for p, arm_teachers in ((0.0, 1), (0.5, teachers)):
            effects = (t_sd * rng.standard_normal(arm_teachers)[:, None, None] * (p > 0)
                       + m_sd * rng.standard_normal((arm_teachers, draws))[:, :, None]
                       + s_sd * rng.standard_normal((arm_teachers, draws, seeds)))
            rows += [row(p, float(CLEAN_LOSS + effects[t, m, s]), s, teacher=t, mix=m, n=1000 + c)
                     for t in range(arm_teachers) for m in range(draws) for s in range(seeds)]
    return rows


def test_variance_components_recover_the_simulated_ones():
    sds = (0.03, 0.02, 0.01)
    found = variance_components(simulated_design(np.random.default_rng(7), 200, sds))
    assert found["field"] == "loss" and found["method"]
    print("\nvariance components (true sd 0.03/0.02/0.01):",
          {level: round(entry["sd"], 4) for level, entry in found["levels"].items()})
    for level, sd in zip(LEVELS, sds):
        assert found["levels"][level]["sd"] == pytest.approx(sd, rel=0.15), level
    assert found["levels"]["teacher_replicate"] == {**found["levels"]["teacher_replicate"], "dof": 400, "cells": 200}
    mix, seed = found["levels"]["mix_draw"], found["levels"]["seed"]  # p > 0 cells: 27 rows; p = 0: 9
    assert (mix["cells"], mix["dof"], seed["cells"], seed["dof"]) == (400, 200 * 6 + 200 * 2, 400, 200 * 18 + 200 * 6)


def test_variance_components_omit_levels_that_never_vary():
    rows = [row(0.0, 4.0 + 0.01 * s, s, n=n) for n in (1, 2) for s in range(3)]
    found = variance_components(rows)
    assert list(found["levels"]) == ["seed"] and found["levels"]["seed"]["dof"] == 4
    assert found["levels"]["seed"]["variance"] == pytest.approx(1e-4)


def study_rows(rng, teachers: int, draws: int, seeds: int) -> list[dict]:
    """One budget of the study: p = 0 over draws × seeds, p > 0 over teachers × draws × seeds, draws shared."""
    draw = DRAW_SD * rng.standard_normal(draws)
    teacher = TEACHER_SD * rng.standard_normal(teachers)
    clean = CLEAN_LOSS + draw[:, None] + SEED_SD * rng.standard_normal((draws, seeds))
    mixed = CLEAN_LOSS + GAP + teacher[:, None, None] + draw[None, :, None] + SEED_SD * rng.standard_normal(
        (teachers, draws, seeds))
    rows = [row(0.0, float(clean[m, s]), s, teacher=0, mix=m) for m in range(draws) for s in range(seeds)]
    return rows + [row(FRACTION, float(mixed[t, m, s]), s, teacher=t, mix=m)
                   for t in range(teachers) for m in range(draws) for s in range(seeds)]


def coverage(design: tuple[int, int, int], collapse: bool) -> float:
    hits = []
    for data_set in range(DATA_SETS):
        rows = study_rows(np.random.default_rng([*design, data_set]), *design)
        ci = measured_gaps(replicate_rows(rows) if collapse else rows)[f"{FRACTION:g}"]["gap_ci"]
        hits.append(ci is not None and ci[0] <= GAP <= ci[1])
    return float(np.mean(hits))


@pytest.mark.parametrize("design", [(2, 2, 2), (3, 2, 2), (5, 2, 1)])
def test_gap_interval_on_replicates_covers_the_truth(design):
    collapsed = coverage(design, collapse=True)
    print(f"\n95% gap interval, (T, M, S) = {design}, {DATA_SETS} data sets: replicates {collapsed:.1%}")
    assert LOWEST <= collapsed <= HIGHEST, f"coverage {collapsed:.1%} outside {LOWEST:.0%}-{HIGHEST:.0%} at {design}"


def test_raw_rows_as_seeds_undercover():
    naive = coverage((2, 2, 2), collapse=False)
    print(f"\n95% gap interval, (T, M, S) = (2, 2, 2), {DATA_SETS} data sets: raw rows as seeds {naive:.1%}")
    assert naive < LOWEST, f"raw rows covered {naive:.1%}: the pseudoreplication this module fixes did not show"
