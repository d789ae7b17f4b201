"""Gap order across student sizes (pipeline/analysis/size_order.py): coverage of the gap-difference interval and
the error rate of the "order resolved" verdict, by simulation from known gaps at the replicate counts people run."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import size_order
from pipeline.stages import fit

RUNS = 2000


def _cell(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "seeds": int(values.size)}


def _simulated_sizes(rng, gaps: dict[int, float], sds: dict[int, float], k: int) -> dict[int, dict]:
    """One simulated study: per size a p = 0 and a p = 0.5 cell of k replicates, clean level 4 + 0.1 per size."""
    return {size: {"0": _cell(rng.normal(4.0 - 0.1 * i, sds[size], k)),
                   "p": _cell(rng.normal(4.0 - 0.1 * i + gaps[size], sds[size], k))}
            for i, size in enumerate(sorted(gaps))}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_the_gap_difference_interval_covers_the_true_difference(k):
    rng = np.random.default_rng(k)
    gaps, sds = {1: 0.03, 2: 0.05}, {1: 0.004, 2: 0.02}  # unequal spreads, as between a small and a large student
    covered = 0
    for _ in range(RUNS):
        low, high = size_order.gap_difference(*_simulated_sizes(rng, gaps, sds, k).values())["ci"]
        covered += low <= 0.02 <= high
    assert 0.93 <= covered / RUNS <= 0.995, covered / RUNS


@pytest.mark.parametrize("k", [2, 3, 5])
def test_an_order_with_one_tied_pair_is_declared_resolved_at_most_five_percent_of_the_time(k):
    rng = np.random.default_rng(10 + k)
    gaps, sds = {1: 0.02, 2: 0.06, 3: 0.06}, {1: 0.01, 2: 0.01, 3: 0.01}  # sizes 2 and 3 truly tied
    wrong = sum(size_order.gap_order(_simulated_sizes(rng, gaps, sds, k), "below")["observed"] == "grows"
                for _ in range(RUNS))
    assert wrong / RUNS <= 0.05, wrong / RUNS


def test_a_clear_order_is_resolved_and_compared_with_the_regime():
    rng = np.random.default_rng(0)
    cells = _simulated_sizes(rng, {1: 0.02, 2: 0.10, 3: 0.20}, {1: 0.002, 2: 0.002, 3: 0.002}, 3)
    below, above, straddles = (size_order.gap_order(cells, regime) for regime in ("below", "above", "straddles"))
    assert below["observed"] == "grows" and below["agrees"] is True
    assert above["predicted"] == "shrinks" and above["agrees"] is False
    assert straddles["predicted"] is None and straddles["agrees"] is None
    assert [(p["smaller"], p["larger"]) for p in below["pairs"]] == [(1, 2), (2, 3)]
    assert (below["extremes"]["smaller"], below["extremes"]["larger"]) == (1, 3)


def test_a_noisy_middle_size_leaves_the_order_unresolved_but_not_the_extremes():
    rng = np.random.default_rng(1)
    cells = _simulated_sizes(rng, {1: 0.02, 2: 0.06, 3: 0.10}, {1: 0.002, 2: 0.2, 3: 0.002}, 3)
    order = size_order.gap_order(cells, "below")
    assert order["observed"] == "unresolved" and order["agrees"] is None
    assert order["extremes"]["observed"] == "grows" and order["extremes"]["agrees"] is True


def test_one_replicate_per_cell_gives_no_interval_and_no_verdict():
    one = {"mean": 4.0, "sd": None, "seeds": 1}
    cells = {1: {"0": one, "p": {**one, "mean": 4.1}}, 2: {"0": one, "p": {**one, "mean": 4.3}}}
    order = size_order.gap_order(cells, "below")
    assert order["pairs"][0]["ci"] is None and order["observed"] == "unresolved"
    assert order["pairs"][0]["difference"] == pytest.approx(0.2)


def test_fit_orders_the_measured_gaps_at_the_shared_budget_and_the_report_prints_them():
    def student(params, gap_mean):
        return {"parameters": params, "mean_loss": {"1000": {
            "0": {"mean": 4.0, "sd": 0.01, "seeds": 3}, "0.5": {"mean": 4.0 + gap_mean, "sd": 0.01, "seeds": 3}}}}

    sized = {"a": student(100, 0.02), "b": student(400, 0.2)}
    order = fit.measured_gap_order(sized, 1000, "below")
    assert list(order) == ["0.5"] and order["0.5"]["budget"] == 1000
    assert order["0.5"]["pairs"][0]["difference"] == pytest.approx(0.18) and order["0.5"]["agrees"] is True
    lines = size_order.gap_order_lines({"tokens": 1000, "gap_order": order,
                                        "sizes": [{"parameters": 100, "curve": "a"}, {"parameters": 400, "curve": "b"}]})
    assert any(line.startswith("| 0.5 | a → b | +0.1800 |") and "| grows |" in line and line.endswith("| yes |")
               for line in lines), lines
    assert fit.measured_gap_order({"a": {"parameters": 1, "mean_loss": {"1000": {"0.5": {}}}}}, 1000, "below") == {}
