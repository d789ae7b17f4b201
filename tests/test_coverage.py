"""Measured coverage of every 95% interval that fit.json and the report print, on simulated runs of a known law.

Results are simulated from L_p(n) = E_p + A_p·n^(−α) with seed noise of sd 0.02 nats — budgets 10k..160k spaced 2×,
fractions {0, 0.2, 0.5, 1}, losses 3.9–4.5 nats — with a gap L_1 − L_0 that grows with n as the equal-steps study
measured (0.076 at 10k → 0.112 at 160k, α = 0.4) or one that holds (0.1·p at every n, α = 0.3), at 2, 3 and 5 seeds.
The project's own functions run on each data set: `fit_scaling_curves` (E_p, plateau gaps E_p − E_0, α, A_p and the
remaining decline L_p(n_max) − E_p), `predict_heldout` (the measured mean at the held-out 160k), `gap_trends` (the
measured gap at every budget and its slope per doubling of n) and `excess_exponents`. Each kind of interval must
cover the truth in 90–99% of DATA_SETS data sets (Monte Carlo sd ≈ 1 point at 95% for one interval per data
set, less for kinds pooled over fractions and budgets; generators seeded, so the test is deterministic).
`pytest -s tests/test_coverage.py` prints the measured coverages, per fraction as well.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from pipeline.analysis.fitting import fit_scaling_curves
from pipeline.analysis.prediction import excess_exponents, gap_trends, measured_gaps, predict_heldout

BUDGETS = (10_000, 20_000, 40_000, 80_000, 160_000)
FRACTIONS = (0.0, 0.2, 0.5, 1.0)
SEED_SD = 0.02  # nats: the seed spread of one run's test loss
ENTROPY = 3.5  # nats: the exact entropy the excess loss is measured against
DATA_SETS = 500
LOWEST, HIGHEST = 0.90, 0.99


def truth(shape: str) -> dict:
    """E_p and A_p per fraction and α: the clean curve falls from about 4.4 nats at 10k to 4.0 at 160k."""
    if shape == "growing":  # A_1 < A_0: the clean curve falls faster, so the gap grows from 0.076 to 0.112
        alpha, clean_plateau, clean_amplitude = 0.4, 3.80, 0.6 * 10_000**0.4
        x = lambda n: n**-alpha
        amplitude_step = -0.036 / (x(10_000) - x(160_000))
        plateau_step = 0.076 - amplitude_step * x(10_000)
    else:  # one amplitude: the gap 0.1·p at every n
        alpha, clean_plateau, clean_amplitude = 0.3, 3.70, 0.7 * 10_000**0.3
        amplitude_step, plateau_step = 0.0, 0.1
    return {"alpha": alpha, "plateau": {p: clean_plateau + p * plateau_step for p in FRACTIONS},
            "amplitude": {p: clean_amplitude + p * amplitude_step for p in FRACTIONS}}


def law(known: dict, p: float, n: float) -> float:
    return known["plateau"][p] + known["amplitude"][p] * n ** -known["alpha"]


def simulated_rows(rng, known: dict, seeds: int) -> list[dict]:
    rows = []
    for p in FRACTIONS:
        for n in BUDGETS:
            for s in range(seeds):
                loss = law(known, p, n) + SEED_SD * rng.standard_normal()
                rows.append({"unit": f"p{p:g}-n{n}-s{s}", "synthetic_fraction": p, "token_budget": n, "seed": s,
                             "loss": loss, "entropy": ENTROPY, "excess_loss": loss - ENTROPY})
    return rows


def projected_slope(values) -> float:
    """The least-squares slope on log n of values at BUDGETS: what a slope over these budgets estimates."""
    return float(np.polyfit(np.log(BUDGETS), values, 1)[0])


def _covers(interval, value) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def _fit_hits(hits, rows, known):
    fit = fit_scaling_curves(rows, bootstrap=0)  # the intervals come from the profile, not from draws
    hits["alpha", ""].append(_covers(fit["alpha_ci"], known["alpha"]))
    for p in FRACTIONS:
        entry = fit["per_fraction"][f"{p:g}"]
        hits["E_p", p].append(_covers(entry["E_ci"], known["plateau"][p]))
        hits["A_p", p].append(_covers(entry["A_ci"], known["amplitude"][p]))
        remaining = known["amplitude"][p] * BUDGETS[-1] ** -known["alpha"]
        hits["remaining decline", p].append(_covers(entry["remaining_ci"], remaining))
        if p > 0:
            gap = known["plateau"][p] - known["plateau"][0.0]
            hits["plateau gap E_p - E_0", p].append(_covers(entry["gap_ci"], gap))


def _measured_hits(hits, rows, known):
    held = predict_heldout(rows)
    for p, entry in held["per_fraction"].items():
        hits["held-out prediction", float(p)].append(bool(entry["inside"]))
    trends = gap_trends(rows)["per_fraction"]
    for p in FRACTIONS[1:]:
        trend, gaps = trends[f"{p:g}"], [law(known, p, n) - law(known, 0.0, n) for n in BUDGETS]
        for n, gap in zip(BUDGETS, gaps):
            hits["measured gap L_p(n) - L_0(n)", p].append(_covers(trend["gaps"][str(n)]["gap_ci"], gap))
        hits["gap slope per doubling", p].append(_covers(trend["slope_ci"], projected_slope(gaps) * np.log(2)))
    exponents = excess_exponents(rows)
    for p in FRACTIONS:
        exponent = -projected_slope([np.log(law(known, p, n) - ENTROPY) for n in BUDGETS])
        hits["excess-loss exponent", p].append(_covers(exponents[f"{p:g}"]["ci"], exponent))


def measure(shape: str, seeds: int) -> dict[tuple[str, float | str], list[bool]]:
    """Per (kind of interval, fraction): whether each data set's interval covered the truth."""
    known, hits = truth(shape), defaultdict(list)
    for data_set in range(DATA_SETS):
        rows = simulated_rows(np.random.default_rng([seeds, data_set, int(shape == "growing")]), known, seeds)
        _fit_hits(hits, rows, known)
        _measured_hits(hits, rows, known)
    return hits


def coverage_table(hits) -> tuple[dict[str, float], str]:
    """Coverage per kind (pooled over fractions) and a printable table with the per-fraction values."""
    kinds = sorted({kind for kind, _ in hits})
    pooled = {kind: float(np.mean([h for (k, _), v in hits.items() if k == kind for h in v])) for kind in kinds}
    lines = []
    for kind in kinds:
        parts = ", ".join(f"p={p:g}: {np.mean(v):.1%}" for (k, p), v in sorted(hits.items(), key=str)
                          if k == kind and p != "")
        lines.append(f"  {kind:<30} {pooled[kind]:6.1%}" + (f"   ({parts})" if parts else ""))
    return pooled, "\n".join(lines)


@pytest.mark.parametrize("seeds", [2, 3, 5])
@pytest.mark.parametrize("shape", ["growing", "constant"])
def test_every_printed_interval_covers_the_truth(shape, seeds):
    pooled, table = coverage_table(measure(shape, seeds))
    print(f"\n95% intervals, {shape} gap, {seeds} seeds, {DATA_SETS} data sets:\n{table}")
    outside = {kind: f"{value:.1%}" for kind, value in pooled.items() if not LOWEST <= value <= HIGHEST}
    assert not outside, f"coverage outside {LOWEST:.0%}-{HIGHEST:.0%} ({shape} gap, {seeds} seeds): {outside}\n{table}"


@pytest.mark.parametrize("seeds", [2, 5])
def test_holm_corrected_claims_keep_the_family_error_at_five_percent(seeds):
    """With no gap at any fraction, "p > 0 sits above p = 0" is claimed for some fraction in at most ~5% of runs."""
    null = {"alpha": 0.4, "plateau": dict.fromkeys(FRACTIONS, 3.8), "amplitude": dict.fromkeys(FRACTIONS, 23.9)}
    claims = [any(gap["above"] for gap in measured_gaps(simulated_rows(np.random.default_rng([seeds, i]), null,
                                                                        seeds)).values())
              for i in range(1000)]
    rate = float(np.mean(claims))
    print(f"\nfamily-wise false claims, {seeds} seeds: {rate:.1%}")
    assert rate <= 0.065, f"Holm-corrected claims under no gap: {rate:.1%} of 1000 runs (nominal at most 5%)"
