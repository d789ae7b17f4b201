"""Predict, then verify; and the measured summaries the studies read (pure numpy/scipy, JSON-able dicts out).

- `identification`: which plateaus E_p the fit identifies (IDENTIFICATION_RULE, stated in the report).
- `predict_heldout`: hold out the largest budget, fit L_p(n) = E_p + A_p·n^(−α) on the others, predict the held-out
  loss with a 95% interval, compare with the measurement (and, with an exact entropy, the excess loss).
- `cell_means`, `measured_gaps`, `gap_trends`: test loss per (p, n) over seeds; L_p(n) − L_0(n) at a budget
  (Welch t-interval, Holm-corrected test of "above p = 0"); and how that gap changes with n (its slope on log n).
- `excess_exponents`: the log-log slope of the excess loss over the exact entropy.
Every interval here is measured for coverage on simulated runs in tests/test_coverage.py.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.analysis import intervals
from pipeline.analysis.fitting import fit_curves

MIN_BUDGETS_PLATEAU = 3  # E_p, A_p and α: three parameters per curve
MIN_BUDGETS_HOLDOUT = 4  # three left to fit after holding out the largest
PRECISION_SHARE = 0.5  # a plateau's 95% half-width may be at most this share of the effect it is compared with
FLAT_RATIO = 1.0  # the fitted decline left beyond n_max may be at most this multiple of the decline measured
IDENTIFICATION_RULE = (
    f"a plateau E_p is identified when (1) its curve has at least {MIN_BUDGETS_PLATEAU} budgets, (2) the curve has "
    f"flattened: the decline the fit leaves beyond the largest budget, L_p(n_max) − E_p, is at most "
    f"{FLAT_RATIO:g}× the decline fitted over the budgets measured, L_p(n_min) − L_p(n_max), and (3) its 95% interval "
    f"is narrow: for E_0, a half-width of at most {PRECISION_SHARE:.0%} of the decline L_0(n_max) − E_0 the plateau "
    f"claims beyond the data; for p > 0, a half-width of the plateau gap E_p − E_0 of at most {PRECISION_SHARE:.0%} "
    f"of that gap, with E_0 identified. A plateau gap is reported only where both plateaus are identified")
GAP_TREND_METHOD = ("least-squares slope of the measured gap L_p(n) − L_0(n) on log n, per doubling of n; 95% "
                    "t-interval from the seed spread of every cell it uses (Welch–Satterthwaite degrees of freedom; "
                    "with one seed per cell, from the residuals of the line)")
GAP_METHOD = ("Welch t-interval on the seeds of the two cells (Welch–Satterthwaite degrees of freedom); one-sided "
              "Welch test of L_p > L_0, Holm-corrected over the fractions of the curve at that budget")


def _key(p: float) -> str:
    return f"{p:g}"


def _budget_list(budgets) -> str:
    return ", ".join(f"{int(n):,}" for n in budgets)


def budgets_by_fraction(rows: list[dict]) -> dict[float, list[int]]:
    found: dict[float, set[int]] = defaultdict(set)
    for row in rows:
        found[float(row["synthetic_fraction"])].add(int(row["token_budget"]))
    return {p: sorted(found[p]) for p in sorted(found)}


def _half_width(ci: list[float] | None) -> float | None:
    return None if ci is None else (ci[1] - ci[0]) / 2


def _plateau_missing(p: float, budgets: list[int], fitted: dict, clean_identified: bool) -> list[str]:
    """What keeps one plateau from being identified under IDENTIFICATION_RULE (empty: identified)."""
    missing = []
    if len(budgets) < MIN_BUDGETS_PLATEAU:
        missing.append(f"{len(budgets)} budget(s) (n = {_budget_list(budgets)}); a plateau needs at least "
                       f"{MIN_BUDGETS_PLATEAU} distinct budgets, spread over at least a factor of 4")
    elif fitted["remaining"] > FLAT_RATIO * fitted["decline"]:
        missing.append(f"the curve has not flattened: the fit leaves {fitted['remaining']:.3f} of decline beyond "
                       f"n = {budgets[-1]:,}, more than the {fitted['decline']:.3f} fitted over the budgets measured")
    if p != 0.0 and "gap" not in fitted:
        return missing + ["no p = 0 curve to compare it with"]
    effect, ci, what = ((fitted["remaining"], fitted["E_ci"], "L_0(n_max) − E_0") if p == 0.0
                        else (abs(fitted["gap"]), fitted["gap_ci"], "the gap E_p − E_0"))
    half = _half_width(ci)
    if half is None:
        missing.append("no interval (no seed noise estimate)")
    elif half > PRECISION_SHARE * effect:
        missing.append(f"its 95% interval is too wide: ±{half:.3f} against {what} = {effect:.3f} (at most "
                       f"{PRECISION_SHARE:.0%} of it)")
    if p != 0.0 and not clean_identified:
        missing.append("the clean plateau E_0 it is compared with is not identified")
    return missing


def identification(rows: list[dict], curves: dict) -> dict:
    """Per fraction: is the fitted plateau E_p identified (IDENTIFICATION_RULE), and if not, what is missing."""
    per_fraction = {}
    by_fraction = budgets_by_fraction(rows)
    clean = by_fraction.get(0.0)
    clean_missing = (_plateau_missing(0.0, clean, curves["per_fraction"]["0"], True) if clean is not None
                     else ["no p = 0 curve to compare with"])
    for p, budgets in by_fraction.items():
        missing = clean_missing if p == 0.0 else _plateau_missing(p, budgets, curves["per_fraction"][_key(p)],
                                                                  not clean_missing)
        per_fraction[_key(p)] = {"budgets": len(budgets), "identified": not missing,
                                 "missing": "; ".join(missing) or None}
    return {"identified": all(v["identified"] for v in per_fraction.values()), "per_fraction": per_fraction,
            "rule": IDENTIFICATION_RULE}


def cell_means(rows: list[dict], field: str = "loss") -> dict[tuple[float, int], dict]:
    """{(p, n): {"mean", "sd", "seeds", "values"}} of `field` over the seeds of each cell (rows lacking it skipped)."""
    groups: dict[tuple[float, int], list[float]] = defaultdict(list)
    for row in rows:
        if row.get(field) is not None:
            groups[(float(row["synthetic_fraction"]), int(row["token_budget"]))].append(float(row[field]))
    return {key: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                  "seeds": len(v), "values": v} for key, v in sorted(groups.items())}


def exact_entropy(rows: list[dict]) -> float | None:
    """The test split's exact entropy (nats/token) when every row carries it (builtin:reference-language)."""
    values = [r.get("entropy") for r in rows]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _verified(fit, f: int, held: int, cell: dict, entropy: float | None, excess: dict | None) -> dict:
    """One held-out comparison: predicted vs measured, relative error, inside the 95% prediction interval."""
    value, curve_interval = fit.quantity(fit.at(held, f))
    interval = fit.quantity(fit.at(held, f), new_seeds=cell["seeds"])[1]
    measured = cell["mean"]
    entry = {"predicted": value, "curve_interval": curve_interval, "interval": interval, "measured": measured,
             "measured_sd": cell["sd"], "seeds": cell["seeds"], "relative_error": (value - measured) / measured,
             "inside": None if interval is None else bool(interval[0] <= measured <= interval[1])}
    if entropy is not None and excess is not None:
        entry.update(entropy=entropy, predicted_excess=value - entropy, measured_excess=excess["mean"],
                     excess_relative_error=((value - entropy - excess["mean"]) / excess["mean"]
                                            if excess["mean"] else None),
                     excess_interval=None if interval is None else [interval[0] - entropy, interval[1] - entropy])
    return entry


def predict_heldout(rows: list[dict], share: str = "exponent") -> dict:
    """Hold out the largest budget of these rows, fit the others, predict it, compare with the measurement.

    Predicted for every fraction with >= 4 budgets including the held-out one; the fit uses every other row
    (no row at the held-out budget, of any fraction), so nothing of the held-out rows enters the prediction.
    "interval": a 95% prediction interval for the measured mean over the held-out cell's k seeds: the profile
    interval of the curve at that budget with the variance of k new seeds added (`fitting.INTERVAL_METHOD`).
    "curve_interval": the interval of the curve alone.
    """
    by_fraction = budgets_by_fraction(rows)
    held = max(n for budgets in by_fraction.values() for n in budgets)
    eligible = [p for p, b in by_fraction.items() if len(b) >= MIN_BUDGETS_HOLDOUT and held in b]
    skipped = {_key(p): f"{len(b)} budget(s) (n = {_budget_list(b)}); predict-then-verify needs at least "
                        f"{MIN_BUDGETS_HOLDOUT} including n = {held:,}"
               for p, b in by_fraction.items() if p not in eligible}
    if not eligible:
        return {"made": False, "heldout_budget": held, "skipped": skipped,
                "why": f"no curve has {MIN_BUDGETS_HOLDOUT} budgets (3 to fit, the largest to predict)"}
    fitted_rows = [r for r in rows if int(r["token_budget"]) != held]
    fit = fit_curves(fitted_rows, share=share, bootstrap=0)  # its intervals need no draws
    index = {float(p): f for f, p in enumerate(fit.fractions)}
    measured, excess = cell_means(rows), cell_means(rows, "excess_loss")
    entropy = exact_entropy(rows)
    per_fraction = {_key(p): _verified(fit, index[p], held, measured[(p, held)], entropy, excess.get((p, held)))
                    for p in eligible}
    noise = fit.noise or {}
    return {"made": True, "heldout_budget": held, "share": fit.share,
            "fitted_budgets": sorted({int(r["token_budget"]) for r in fitted_rows}),
            "noise_sd": noise.get("sd"), "noise_dof": noise.get("dof"), "noise_source": noise.get("source"),
            "alpha": float(fit.point["alpha"][0]) if fit.share != "nothing" else None,
            "per_fraction": per_fraction, "skipped": skipped}


def _difference(cell: dict, base: dict) -> dict:
    """L_p − L_0 of two cells with its Welch t-interval and one-sided p-value of "L_p > L_0"."""
    gap, combination = intervals.cell_contrast([1, -1], [cell, base])
    return {"gap": gap, "gap_ci": intervals.t_interval(gap, combination), "seeds": [cell["seeds"], base["seeds"]],
            "dof": None if combination is None else combination["dof"],
            "p_value": intervals.p_above_zero(gap, combination)}


def _gaps_at(cells: dict, budget: int) -> dict:
    """`measured_gaps` at one budget from cell means already grouped."""
    gaps = {_key(p): {**_difference(cell, cells[(0.0, n)]), "budget": n}
            for (p, n), cell in cells.items() if n == budget and p > 0 and (0.0, n) in cells}
    adjusted = intervals.holm({p: gap["p_value"] for p, gap in gaps.items()})
    for p, gap in gaps.items():
        gap.update(p_holm=adjusted[p], above=None if adjusted[p] is None else adjusted[p] < 0.05)
    return gaps


def measured_gaps(rows: list[dict], budget: int | None = None) -> dict:
    """L_p(n) − L_0(n) at one budget (default: the largest where p = 0 was measured) per p > 0 (GAP_METHOD).

    "p_value": one-sided Welch test of L_p > L_0; "p_holm": Holm-adjusted over this budget's fractions; "above":
    p_holm < 0.05. No interval or test with one seed in either cell.
    """
    cells = cell_means(rows)
    clean = sorted(n for p, n in cells if p == 0.0)
    if not clean:
        return {}
    return _gaps_at(cells, clean[-1] if budget is None else int(budget))


def _slope(log_budgets: np.ndarray, cells: list[list[dict]], signs: tuple[int, ...], values) -> dict:
    """Least-squares slope of Σ sign·(cell value) on log n with a t-interval (`intervals.combination_interval`).

    cells[i]: the cells measured at budget i; values(cell) -> (estimate, variance of the estimate, dof).
    """
    weights = (log_budgets - log_budgets.mean()) / np.sum((log_budgets - log_budgets.mean()) ** 2)
    terms = [(w * s, *values(cell)[1:]) for w, group in zip(weights, cells) for s, cell in zip(signs, group)]
    points = np.array([sum(s * values(cell)[0] for s, cell in zip(signs, group)) for group in cells])
    slope = float(weights @ points)
    combination = intervals.combination_interval(*zip(*terms))
    if combination is None and len(points) > 2:  # one seed per cell: the residuals of the line give the noise
        intercept = points.mean() - slope * log_budgets.mean()
        residual = float(np.sum((points - intercept - slope * log_budgets) ** 2)) / (len(points) - 2)
        combination = intervals.combination_interval([1.0], [residual * np.sum(weights**2)], [len(points) - 2])
    return {"slope": slope, "ci": intervals.t_interval(slope, combination)}


def _seed_mean(cell: dict) -> tuple[float, float, int]:
    return cell["mean"], (cell["sd"] or 0.0) ** 2 / cell["seeds"], cell["seeds"] - 1


def gap_trends(rows: list[dict]) -> dict:
    """Per p > 0: the measured gap at every budget p = 0 shares (`measured_gaps`), and its slope per doubling of n
    (GAP_TREND_METHOD): "grows" when the slope's interval lies above 0, "shrinks" below, else "holds"."""
    cells = cell_means(rows)
    by_budget = {n: _gaps_at(cells, n) for n in sorted({n for p, n in cells if p == 0.0})}
    trends = {}
    for p in sorted({p for p, _ in cells if p > 0}):
        budgets = sorted(n for q, n in cells if q == p and (0.0, n) in cells)
        if not budgets:
            continue
        gaps = {str(n): by_budget[n][_key(p)] for n in budgets}
        entry = {"budgets": budgets, "gaps": gaps, "slope_per_doubling": None, "slope_ci": None, "verdict": None}
        if len(budgets) >= 2:
            pairs = [[cells[(p, n)], cells[(0.0, n)]] for n in budgets]
            fitted = _slope(np.log(np.array(budgets, dtype=float)), pairs, (1, -1), _seed_mean)
            per_doubling = lambda value: float(value * np.log(2))
            ci = fitted["ci"] and [per_doubling(v) for v in fitted["ci"]]
            verdict = None if ci is None else "grows" if ci[0] > 0 else "shrinks" if ci[1] < 0 else "holds"
            entry.update(slope_per_doubling=per_doubling(fitted["slope"]), slope_ci=ci, verdict=verdict)
        trends[_key(p)] = entry
    return {"method": GAP_TREND_METHOD, "gap_method": GAP_METHOD, "per_fraction": trends}


def _log_mean(cell: dict) -> tuple[float, float, int]:
    """log of a cell's mean excess loss, its delta-method variance s²/(k·mean²), and the dof of s²."""
    return float(np.log(cell["mean"])), (cell["sd"] or 0.0) ** 2 / (cell["seeds"] * cell["mean"] ** 2), \
        cell["seeds"] - 1


def excess_exponents(rows: list[dict]) -> dict:
    """Per p: the exponent of the excess loss, −(least-squares slope of log(L − H) on log n) over every budget.

    The straight-line form of a scaling law before any plateau (A Tale of Tails gives 1 − 1/β for a Zipf(β)
    source). ci: 95% t-interval, each budget's log mean excess with its delta-method variance from the seeds
    (Welch–Satterthwaite dof); with one seed per cell, from the residuals of the line. Needs the exact entropy
    (excess_loss in every row), two budgets, and a positive excess everywhere.
    """
    cells = cell_means(rows, "excess_loss")
    exponents = {}
    for p in sorted({p for p, _ in cells}):
        budgets = sorted(n for q, n in cells if q == p)
        if len(budgets) < 2 or min(min(cells[(p, n)]["values"]) for n in budgets) <= 0:
            continue
        fitted = _slope(np.log(np.array(budgets, dtype=float)), [[cells[(p, n)]] for n in budgets], (1,), _log_mean)
        exponents[_key(p)] = {"exponent": -fitted["slope"], "budgets": len(budgets),
                              "ci": fitted["ci"] and [-fitted["ci"][1], -fitted["ci"][0]]}
    return exponents
