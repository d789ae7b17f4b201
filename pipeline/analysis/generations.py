"""Test loss against the teacher generation (Model Collapse Demystified: under `replace` the error grows linearly
in the generation index; under `accumulate` it stays bounded).

The seeds of one generation share that generation's teacher and synthetic corpus: a teacher that came out a little
worse moves all of them together, so they are not independent replicates of the line. A regression over every row
counts each seed as independent and makes the slope's interval too narrow (pseudoreplication). `generation_trend`
fits the line to the G per-generation means instead, with a t-interval on G − 2 degrees of freedom: exact when each
mean deviates from the line by a normal teacher effect plus the seeds' noise, whatever the split between the two
(with equal seed counts; nearly so with unequal ones).

The two findings are tests on that slope: `growth` (one-sided: the slope's lower 95% bound above 0) and
`boundedness` (two one-sided tests of equivalence: the 90% interval inside ±margin, a margin stated before the run).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.stats import t as t_distribution

from pipeline.analysis.intervals import t_bounds

METHOD = ("least squares on the per-generation means (the seeds of a generation share its teacher), t-intervals "
          "on G - 2 degrees of freedom")


def _generation_means(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(generations ascending, mean test loss of each, seeds of each)."""
    losses: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        losses[int(row["generation"])].append(float(row["loss"]))
    generations = sorted(losses)
    return (np.array(generations, dtype=float), np.array([np.mean(losses[g]) for g in generations]),
            [len(losses[g]) for g in generations])


def generation_trend(rows: list[dict]) -> dict:
    """Slope of test loss on the generation index, fitted to the per-generation means (see the module docstring).

    slope_ci: 95% t-interval; slope_ci90: 90% (the equivalence test's); slope_se and dof: what both are built from;
    r2: of the line through the means (how linear the growth is). Needs two generations; with two there is no
    interval (no degree of freedom left).
    """
    x, means, seeds = _generation_means(rows)
    if x.size < 2:
        raise ValueError("generation_trend needs rows of at least two generations")
    slope, intercept = np.polyfit(x, means, 1)
    residual = means - (slope * x + intercept)
    dof = x.size - 2
    total = float(np.sum((means - means.mean()) ** 2))
    trend = {"generations": [int(g) for g in x], "mean_loss": [float(m) for m in means], "seeds": seeds,
             "rows": int(sum(seeds)), "slope": float(slope), "intercept": float(intercept), "dof": dof,
             "slope_se": None, "slope_ci": None, "slope_ci90": None, "method": METHOD,
             "r2": 1 - float(np.sum(residual**2)) / total if dof > 0 and total > 0 else None}
    if dof > 0:
        se = float(np.sqrt(np.sum(residual**2) / dof / np.sum((x - x.mean()) ** 2)))
        trend.update(slope_se=se, slope_ci=t_bounds(slope, se, dof, 0.95), slope_ci90=t_bounds(slope, se, dof, 0.90))
    return trend


def growth(trend: dict) -> dict:
    """replace: the loss grows with the generation, one-sided t-test of slope > 0 at 5% (lower 95% bound > 0)."""
    if trend["slope_se"] is None:
        return {"holds": None, "why": "no interval for the slope (two generations: no degree of freedom left)"}
    se, dof = trend["slope_se"], trend["dof"]
    lower = trend["slope"] - float(t_distribution.ppf(0.95, dof)) * se
    p_value = float(t_distribution.sf(trend["slope"] / se, dof)) if se > 0 else float(trend["slope"] <= 0)
    return {"holds": bool(lower > 0), "p_value": p_value, "lower_bound": lower,
            "what": f"replace: test loss grows with the generation (one-sided p = {p_value:.3g}, lower 95% bound "
                    f"{lower:+.4f} per generation)"}


def boundedness(trend: dict, margin: float | None) -> dict:
    """accumulate: the loss stays within ±margin per generation, by two one-sided tests at 5% each.

    Holds when the slope's 90% interval lies inside [−margin, +margin]; fails when the interval lies above +margin
    (growth beyond the margin); otherwise undecided: an interval that merely reaches 0 is no evidence of a bound.
    """
    if not margin or margin <= 0:
        return {"holds": None, "why": "no equivalence margin (fit.accumulate_margin): boundedness cannot be shown"}
    if trend["slope_se"] is None:
        return {"holds": None, "why": "no interval for the slope (two generations: no degree of freedom left)"}
    slope, se, dof = trend["slope"], trend["slope_se"], trend["dof"]
    low, high = trend["slope_ci90"]
    p_value = max(float(t_distribution.sf((slope + margin) / se, dof)),
                  float(t_distribution.cdf((slope - margin) / se, dof))) if se > 0 else float(abs(slope) >= margin)
    entry = {"margin": float(margin), "p_value": p_value,
             "what": f"accumulate: slope within ±{margin:g} nats per generation; its 90% interval is "
                     f"[{low:+.4f}, {high:+.4f}], equivalence p = {p_value:.3g}"}
    if -margin < low and high < margin:
        return {"holds": True, **entry}
    if low > margin:
        return {"holds": False, **entry}
    side = "falls faster than" if high < -margin else "reaches beyond"
    return {"holds": None, **entry, "why": f"the slope's 90% interval [{low:+.4f}, {high:+.4f}] {side} ±{margin:g} "
                                           "per generation: these generations cannot show the loss is bounded"}
