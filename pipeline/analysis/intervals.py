"""95% intervals and tests over seeds that hold at the seed counts people run (2–5): small helpers, numpy/scipy only.

- `combination_interval`: a linear combination of means over seeds (a gap between two cells, a slope across
  budgets), each mean with its own variance; Welch–Satterthwaite degrees of freedom and a t quantile. With two
  cells and coefficients (+1, −1) it is the Welch t-interval.
- `holm`: Holm's step-down adjustment of p-values, for one test per fraction of a curve.
tests/test_coverage.py measures the coverage of every interval built from these on simulated runs (the fit's own
intervals are profile-likelihood intervals: `profile`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import stdtr, stdtrit  # Student t CDF and quantile as plain ufuncs (scipy.stats adds ~1 ms a call)

CONFIDENCE = 0.95


def combination_interval(coefficients, variances, dofs) -> dict | None:
    """Standard error, Welch–Satterthwaite dof and 95% half-width of Σ c_j·m_j for independent estimates m_j.

    variances: each estimate's variance (s_j²/k_j for a mean of k_j seeds); dofs: each variance's degrees of
    freedom (k_j − 1). None when a term with a non-zero coefficient has no degree of freedom.
    """
    c, v, d = (np.asarray(a, dtype=float) for a in (coefficients, variances, dofs))
    used = c != 0
    if np.any(d[used] < 1):
        return None
    parts = c[used] ** 2 * v[used]
    variance = float(parts.sum())
    dof = float(variance**2 / np.sum(parts**2 / d[used])) if variance > 0 else float(d[used].sum())
    se = float(np.sqrt(variance))
    return {"se": se, "dof": dof, "half_width": float(stdtrit(dof, 0.5 + CONFIDENCE / 2) * se)}


def cell_contrast(coefficients, cells) -> tuple[float, dict | None]:
    """Σ c_j·mean_j over cells {mean, sd, seeds} (each the mean of independent replicates) and its
    `combination_interval` (a cell of one replicate has no degree of freedom: no interval)."""
    estimate = sum(c * cell["mean"] for c, cell in zip(coefficients, cells))
    variances = [(cell["sd"] or 0.0) ** 2 / cell["seeds"] for cell in cells]
    return float(estimate), combination_interval(coefficients, variances, [cell["seeds"] - 1 for cell in cells])


def t_interval(estimate: float, combination: dict | None) -> list[float] | None:
    if combination is None:
        return None
    return [float(estimate - combination["half_width"]), float(estimate + combination["half_width"])]


def t_bounds(estimate: float, se: float, dof: float, level: float = CONFIDENCE) -> list[float]:
    """Two-sided t-interval at `level` around an estimate with standard error se on dof degrees of freedom."""
    half = float(stdtrit(dof, 0.5 + level / 2)) * se
    return [float(estimate - half), float(estimate + half)]


def p_above_zero(estimate: float, combination: dict | None) -> float | None:
    """One-sided p-value of "the true value is <= 0" given the estimate and its t distribution."""
    if combination is None:
        return None
    if combination["se"] == 0:
        return 0.0 if estimate > 0 else 1.0
    return float(stdtr(combination["dof"], -estimate / combination["se"]))


def holm(p_values: dict) -> dict:
    """Holm-adjusted p-values {key: p} (None stays None): controls the chance of any false claim at the level."""
    known = sorted(((p, key) for key, p in p_values.items() if p is not None), key=lambda item: item[0])
    adjusted, running = {}, 0.0
    for rank, (p, key) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[key] = running
    return {key: adjusted.get(key) for key in p_values}
