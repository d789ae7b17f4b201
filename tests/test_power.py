"""Power, stated (pipeline/analysis/power.py): the replicates a 2σ detection needs, against a direct simulation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import power


@pytest.mark.parametrize("gap, sd, expected", [(0.1, 0.05, 2), (0.01, 0.02, 32), (0.005, 0.02, 128)])
def test_replicates_needed_follow_the_two_sample_formula(gap, sd, expected):
    assert power.replicates_needed(gap, sd) == expected


def test_no_positive_gap_needs_no_count():
    assert power.replicates_needed(0.0, 0.02) is None and power.replicates_needed(-0.01, 0.02) is None


@pytest.mark.parametrize("gap, sd", [(0.01, 0.02), (0.03, 0.02), (0.004, 0.01)])
def test_at_the_stated_count_a_simulated_gap_sits_at_least_two_standard_errors_out(gap, sd):
    k = power.replicates_needed(gap, sd)
    rng = np.random.default_rng(0)
    a = rng.normal(gap, sd, size=(20_000, k)).mean(axis=1)
    b = rng.normal(0.0, sd, size=(20_000, k)).mean(axis=1)
    se = np.std(a - b)  # the standard error of the difference, measured
    assert gap / se >= 2 * 0.97  # at k (rounded up) the gap is at least 2 measured standard errors
    if k > 2:
        assert gap / (se * np.sqrt(k / (k - 1))) < 2 * 1.03  # and one replicate fewer would not reach it
    assert power.sigmas(gap, sd, k) == pytest.approx(gap / (sd * np.sqrt(2 / k)))


def test_the_statement_uses_the_smallest_fraction_and_the_theory_form():
    theory = {"fitted": True, "points": {"0": 4.0, "0.5": 4.1, "0.05": 4.0, "1": 4.3}, "asymptotic": {"c2": 0.2}}
    stated = power.smallest_fraction(theory, {"sd": 0.01, "dof": 4}, replicates=2)
    assert stated["fraction"] == 0.05 and stated["predicted_gap"] == pytest.approx(0.2 * 0.05**2)
    assert stated["replicates_needed"] == power.replicates_needed(0.0005, 0.01) == 3200
    assert power.smallest_fraction({"fitted": False}, {"sd": 0.01, "dof": 4}, 2)["stated"] is False


def test_the_spread_is_pooled_within_cells():
    spread = power.pooled_spread([[1.0, 3.0], [10.0, 10.0, 13.0], [7.0]])
    assert spread["dof"] == 3 and spread["sd"] == pytest.approx(((2 + 6) / 3) ** 0.5)
