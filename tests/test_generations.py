"""Loss vs teacher generation: the slope from the per-generation means keeps its coverage when the seeds of a
generation share a teacher; growth and boundedness are decided by one-sided and equivalence tests.

Coverage is measured by simulation from a known slope (fixed seeds, numpy/scipy only) next to the old pooled
regression over every row, which counts seeds that share a teacher as independent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import t as t_distribution

from pipeline.analysis.generations import boundedness, generation_trend, growth

SLOPE, TEACHER_SD, SEED_SD = 0.05, 0.02, 0.02


def _rows(rng, generations: int, seeds: int, slope: float = SLOPE, teacher_sd: float = TEACHER_SD,
          seed_sd: float = SEED_SD) -> list[dict]:
    """Losses on a line in the generation, each generation's seeds moved together by its teacher's effect."""
    rows = []
    for g in range(generations):
        teacher = teacher_sd * rng.standard_normal()
        rows += [{"generation": g, "loss": 4.0 + slope * g + teacher + seed_sd * rng.standard_normal()}
                 for _ in range(seeds)]
    return rows


def _pooled_interval(rows: list[dict]) -> list[float]:
    """The previous method: least squares over every row, 95% t-interval on rows − 2 degrees of freedom."""
    x = np.array([r["generation"] for r in rows], dtype=float)
    y = np.array([r["loss"] for r in rows])
    slope, intercept = np.polyfit(x, y, 1)
    dof = x.size - 2
    se = np.sqrt(np.sum((y - slope * x - intercept) ** 2) / dof / np.sum((x - x.mean()) ** 2))
    half = t_distribution.ppf(0.975, dof) * se
    return [slope - half, slope + half]


@pytest.mark.parametrize("generations", [4, 5, 6])
@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_slope_interval_covers_when_seeds_share_a_teacher(seeds, generations):
    rng = np.random.default_rng(100 * seeds + generations)
    means, pooled = [], []
    for _ in range(500):
        rows = _rows(rng, generations, seeds)
        low, high = generation_trend(rows)["slope_ci"]
        means.append(low <= SLOPE <= high)
        low, high = _pooled_interval(rows)
        pooled.append(low <= SLOPE <= high)
    print(f"\n{seeds} seeds x {generations} generations: 95% interval coverage, per-generation means "
          f"{np.mean(means):.3f}, pooled rows {np.mean(pooled):.3f} (500 data sets)")
    assert 0.90 <= np.mean(means) <= 0.99
    assert np.mean(pooled) < np.mean(means), "pooling seeds that share a teacher narrows the interval"


def test_trend_reports_means_slope_and_linearity():
    rows = [{"generation": g, "loss": 3.0 + 0.1 * g + 0.01 * s} for g in range(4) for s in range(3)]
    trend = generation_trend(rows)
    assert trend["slope"] == pytest.approx(0.1) and trend["r2"] == pytest.approx(1.0)
    assert trend["generations"] == [0, 1, 2, 3] and trend["seeds"] == [3, 3, 3, 3] and trend["rows"] == 12
    assert trend["dof"] == 2 and trend["mean_loss"][0] == pytest.approx(3.01)
    json.dumps(trend)
    two = generation_trend([r for r in rows if r["generation"] < 2])
    assert two["slope_ci"] is None and two["r2"] is None
    assert growth(two)["holds"] is None and boundedness(two, 0.02)["holds"] is None
    with pytest.raises(ValueError, match="two generations"):
        generation_trend(rows[:3])


def test_growth_is_a_one_sided_test_of_the_slope():
    rng = np.random.default_rng(3)
    grows = growth(generation_trend(_rows(rng, 5, 2, slope=0.1)))
    assert grows["holds"] is True and grows["p_value"] < 0.05 and grows["lower_bound"] > 0
    flat = growth(generation_trend(_rows(rng, 5, 2, slope=0.0, teacher_sd=0.05)))
    assert flat["holds"] is False and flat["p_value"] >= 0.05 and "one-sided p" in flat["what"]


def test_bounded_needs_a_margin_and_enough_precision():
    rng = np.random.default_rng(4)
    precise = generation_trend(_rows(rng, 6, 3, slope=0.0, teacher_sd=0.002, seed_sd=0.002))
    assert boundedness(precise, 0.02)["holds"] is True
    assert boundedness(precise, None)["holds"] is None, "no margin: boundedness cannot be shown"
    assert boundedness(precise, 1e-6)["holds"] is None, "a margin inside the interval: undecided"
    noisy = generation_trend(_rows(rng, 4, 2, slope=0.0, teacher_sd=0.05, seed_sd=0.05))
    assert noisy["slope_ci"][0] <= 0 <= noisy["slope_ci"][1], "the old rule would call this bounded"
    undecided = boundedness(noisy, 0.02)
    assert undecided["holds"] is None and "cannot show" in undecided["why"]
    growing = boundedness(generation_trend(_rows(rng, 5, 2, slope=0.1, teacher_sd=0.005)), 0.02)
    assert growing["holds"] is False and growing["p_value"] > 0.05


def test_equivalence_rate_matches_its_level_at_the_margin():
    """A true slope exactly at the margin is called bounded at most 5% of the time (TOST at 5% per side)."""
    rng = np.random.default_rng(5)
    margin = 0.02
    bounded = [boundedness(generation_trend(_rows(rng, 5, 3, slope=margin, teacher_sd=0.005, seed_sd=0.005)),
                           margin)["holds"] is True for _ in range(600)]
    print(f"\nslope at the margin: called bounded in {np.mean(bounded):.3f} of 600 data sets")
    assert 0.02 <= np.mean(bounded) <= 0.08
