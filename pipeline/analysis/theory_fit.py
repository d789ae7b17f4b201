"""The linear theory of Strong Model Collapse (Dohmatob et al., arXiv:2410.04840) fitted to measured plateaus.

Ridge regression on a mixture of real and synthetic samples, isotropic features, ridge → 0, φ = d/n < 1, synthetic
labels off by a fixed error of size c² (the paper's deterministic equivalent; `pipeline.theory.linear`):
    E(p, n) = σ²φ/(1 − φ) + (p² + p(1 − p)·φ/(1 − φ))·c²        (`isotropic_mixture_risk`)
    E(p, ∞) = p²c²                                              (`synthetic_floor`, "strong" collapse)
so the collapse gap E_p − E_0 is p²c² as n → ∞ and (p² + p(1 − p)u)c², u = φ/(1 − φ), at finite n.

`fit_linear_theory` fits both forms by generalised least squares: the gaps share E_0, and fitted plateaus share
one exponent, so they are correlated, and their covariance comes from the joint bootstrap of the plateaus
(`gap_covariance_from_draws`) or, for losses at one budget, from the seed spread (`gap_covariance_from_seeds`).
The forms are told apart by a parametric bootstrap of the likelihood ratio under the n → ∞ form: that form is the
finite-n form with u on its bound 0, where the F and χ² reference distributions do not hold.
`compare_model_sizes` orders student sizes against the paper's random-projection model.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy.stats import norm
from scipy.stats import t as t_distribution

from pipeline.analysis.power import pooled_spread
from pipeline.theory import linear

ASYMPTOTIC = "E_p - E_0 = p^2 c2 (n -> infinity)"
FINITE_N = "E_p - E_0 = (p^2 + p(1-p) u) c2, u = phi/(1-phi), phi = d/n (finite n)"
LEVEL = 0.05  # the finite-n term must be significant at this level to be preferred
NULL_REPLICATES = 1999  # parametric-bootstrap replicates of the likelihood ratio (p-value resolution 0.0005)
MIN_DRAWS = 20  # joint plateau draws needed before their covariance is worth using
PLATEAU_U = ("fitted on n -> infinity plateaus, where phi = d/n -> 0: u is an extra p(1-p) term the plateaus "
             "ask for, not phi/(1-phi)")


def theory_gap(form: dict, fractions) -> np.ndarray:
    """E_p − E_0 of a fitted form at `fractions`, evaluated with the theory's own functions."""
    p = np.atleast_1d(np.asarray(fractions, dtype=float))
    c2 = max(float(form["c2"]), 0.0)
    u = form.get("u")
    if not u:  # the asymptotic form, or a finite-n fit whose extra term is 0
        return np.array([linear.synthetic_floor(q, c2) for q in p])
    return np.asarray(linear.isotropic_mixture_risk(u / (1 + u), p, c2, noise_var=0.0), dtype=float)


# ------------------------------------------------------------------------------------- covariance of the gaps


def gap_covariance_from_draws(draws, fractions) -> dict | None:
    """Covariance of the gaps E_p − E_0 (p > 0, ascending) from joint bootstrap draws of the plateau vector.

    draws: B rows, one value per fraction in `fractions`' order; rows with a non-finite value are dropped.
    None when the draws are absent, fewer than MIN_DRAWS remain, or they do not vary.
    """
    if draws is None or fractions is None:
        return None
    values = np.asarray(draws, dtype=float)
    p = np.asarray(fractions, dtype=float)
    if values.ndim != 2 or values.shape[1] != p.size or 0.0 not in p:
        raise ValueError(f"draws must be B rows of {p.size} plateaus, one per fraction (0 among them), "
                         f"got shape {values.shape}")
    values = values[np.all(np.isfinite(values), axis=1)]
    if values.shape[0] < MIN_DRAWS:
        return None
    order = [i for i in np.argsort(p) if p[i] > 0]
    gaps = values[:, order] - values[:, [int(np.flatnonzero(p == 0.0)[0])]]
    matrix = np.atleast_2d(np.cov(gaps, rowvar=False))
    if not np.any(np.diag(matrix) > 0):
        return None
    return {"matrix": matrix, "dof": values.shape[0] - 1,
            "source": f"joint bootstrap of the plateaus ({values.shape[0]} draws)"}


def gap_covariance_from_seeds(values_by_fraction) -> dict | None:
    """Covariance of the measured gaps L_p − L_0 at one budget from the seeds of each cell ({p: [loss per seed]}).

    Cells are independent students, so Var(L̄_p − L̄_0) = s²(1/k_p + 1/k_0) and two gaps share s²/k_0 through L̄_0.
    s² is the within-cell variance pooled over cells: two seeds give one degree of freedom per cell, too few for a
    variance of its own. None with one seed per cell (no degree of freedom) or seeds that agree exactly.
    """
    values = {float(p): np.asarray(v, dtype=float) for p, v in dict(values_by_fraction).items()}
    if 0.0 not in values:
        raise ValueError("values_by_fraction must contain the clean fraction 0")
    spread = pooled_spread(list(values.values()))
    if spread is None or spread["sd"] <= 0:
        return None
    pooled, dof = spread["sd"] ** 2, spread["dof"]
    counts = np.array([values[p].size for p in sorted(values) if p > 0])
    matrix = pooled * (np.diag(1 / counts) + 1 / values[0.0].size)
    return {"matrix": matrix, "dof": dof, "source": f"seed spread pooled over cells ({dof} degrees of freedom)"}


# --------------------------------------------------------------------------------- generalised least squares


def _whitener(covariance: np.ndarray) -> np.ndarray:
    """W with W Σ Wᵀ = I; eigenvalues floored so that a nearly singular bootstrap covariance stays usable."""
    values, vectors = np.linalg.eigh(np.atleast_2d(covariance))
    if values.max() <= 0:
        raise ValueError("the covariance of the gaps is zero: the points carry no noise estimate")
    return vectors.T / np.sqrt(np.maximum(values, values.max() * 1e-12))[:, None]


def _designs(p: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of each form: c² multiplies p², and the finite-n form adds b = u·c² on p(1 − p)."""
    return {"asymptotic": (p**2)[:, None], "finite_n": np.c_[p**2, p * (1 - p)]}


def _nonnegative_fit(design: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [q, R], residual sums of squares [R]) of least squares with coefficients >= 0, per column.

    The optimum is the unconstrained fit on its own set of non-zero coefficients, so with q <= 2 columns the best
    of the feasible fits on every subset of columns is exact, and vectorises over the R target columns.
    """
    q, replicates = design.shape[1], targets.shape[1]
    best, best_rss = np.zeros((q, replicates)), np.sum(targets**2, axis=0)
    for size in range(1, q + 1):
        for subset in map(list, combinations(range(q), size)):
            coefficients = np.linalg.lstsq(design[:, subset], targets, rcond=None)[0]
            rss = np.sum((targets - design[:, subset] @ coefficients) ** 2, axis=0)
            better = np.all(coefficients >= 0, axis=0) & (rss < best_rss)
            best[:, better] = 0.0
            best[np.ix_(subset, np.flatnonzero(better))] = coefficients[:, better]
            best_rss = np.where(better, rss, best_rss)
    return best, best_rss


def _likelihood_ratio(designs: dict[str, np.ndarray], targets: np.ndarray) -> np.ndarray:
    """−2 log Λ of the n → ∞ form against the finite-n form for whitened targets (Gaussian, known covariance)."""
    return _nonnegative_fit(designs["asymptotic"], targets)[1] - _nonnegative_fit(designs["finite_n"], targets)[1]


def forms_test(p: np.ndarray, gap: np.ndarray, covariance: dict, replicates: int = NULL_REPLICATES,
               seed: int = 0) -> dict:
    """p-value of "the gaps need the finite-n term" by a parametric bootstrap of the GLS likelihood ratio.

    Null: the n → ∞ form at its fitted c², Gaussian gaps with the estimated covariance Σ̂ (`covariance["dof"]`
    degrees of freedom; each replicate also redraws Σ̂'s scale from χ²_dof/dof). The null is u = 0, the bound of
    the finite-n form, so the reference distribution is simulated rather than taken from F or χ².
    """
    whitener = _whitener(covariance["matrix"])
    designs = {form: whitener @ columns for form, columns in _designs(p).items()}
    target = (whitener @ gap)[:, None]
    observed = float(_likelihood_ratio(designs, target)[0])
    null_c2 = _nonnegative_fit(designs["asymptotic"], target)[0]
    rng = np.random.default_rng(seed)
    simulated = designs["asymptotic"] @ null_c2 + rng.standard_normal((p.size, replicates))
    dof = covariance.get("dof")
    scale = rng.chisquare(dof, replicates) / dof if dof else np.ones(replicates)
    null = _likelihood_ratio(designs, simulated) / scale
    p_value = (1 + int(np.sum(null >= observed - 1e-12 * max(observed, 1.0)))) / (replicates + 1)
    return {"method": "parametric bootstrap of the GLS likelihood ratio under the n -> infinity form (u = 0, "
                      "its boundary)", "statistic": observed, "p_value": p_value, "replicates": replicates,
            "level": LEVEL, "covariance": covariance["source"]}


def _c2_interval(design: np.ndarray, target: np.ndarray, dof: int | None) -> list[float]:
    """95% interval of c² from the unconstrained GLS fit of one (whitened) design, cut at the bound c² >= 0."""
    inverse = np.linalg.pinv(design.T @ design)
    c2 = float((inverse @ design.T @ target)[0])
    quantile = t_distribution.ppf(0.975, dof) if dof else norm.ppf(0.975)
    half = quantile * math.sqrt(max(float(inverse[0, 0]), 0.0))
    return [float(max(c2 - half, 0.0)), float(max(c2 + half, 0.0))]


# ------------------------------------------------------------------------------------------ the two forms


def _gaps(points) -> tuple[np.ndarray, np.ndarray]:
    """(fractions p > 0 ascending, gaps E_p − E_0) from {p: E_p}, with the checks fit_linear_theory documents."""
    try:
        values = {float(p): float(e) for p, e in dict(points).items()}
    except (TypeError, ValueError):
        raise ValueError("points must map synthetic fractions to numbers, e.g. {0.0: 3.1, 0.2: 3.3}") from None
    if 0.0 not in values:
        raise ValueError("points must contain the clean fraction 0 (E_0)")
    p = np.array(sorted(q for q in values if q > 0))
    if p.size < 1 or np.any(p > 1):
        raise ValueError("points needs at least one fraction in (0, 1] besides 0")
    return p, np.array([values[q] for q in p]) - values[0.0]


def _form_entry(form: str, coefficients: np.ndarray, p: np.ndarray, gap: np.ndarray, plateaus: bool,
                c2_ci: list[float] | None) -> dict:
    c2 = float(coefficients[0])
    entry = {"form": form, "c2": c2, "c2_ci": c2_ci, "parameters": coefficients.size}
    if form == FINITE_N:
        u = float(coefficients[1]) / c2 if c2 > 0 else None
        phi = None if plateaus or u is None else u / (1 + u)
        entry.update(u=u, phi=phi, u_meaning=PLATEAU_U if plateaus else "u = phi/(1-phi), phi = d/n at this budget")
    residual = gap - _designs(p)["finite_n" if form == FINITE_N else "asymptotic"] @ coefficients
    total = float(np.sum((gap - gap.mean()) ** 2))
    rss = float(np.sum(residual**2))
    entry.update(residuals={f"{q:g}": float(r) for q, r in zip(p, residual)}, rss=rss,
                 r2=1 - rss / total if p.size > 1 and total > 0 else None)
    return entry


def _verdict(test: dict | None, why: str | None, plateaus: bool) -> tuple[str | None, str]:
    """(supported form, one sentence) from the forms test."""
    if test is None:
        return None, why
    p_value = test["p_value"]
    if p_value >= LEVEL:
        return "asymptotic", (f"the finite-n term is not needed (bootstrap likelihood-ratio p = {p_value:.3g}): the "
                              "points do not ask for more than the n -> infinity form p^2 c2")
    if plateaus:
        return "finite_n", (f"the plateaus need a p(1-p) term beyond p^2 c2 (bootstrap likelihood-ratio p = "
                            f"{p_value:.3g}); on n -> infinity plateaus it is not the finite-n phi = d/n, which "
                            "vanishes there: the plateaus are not the theory's n -> infinity p^2 c2 (not yet "
                            "reached, or not this isotropic form)")
    return "finite_n", (f"the finite-n term p(1-p)u c2 is significant (bootstrap likelihood-ratio p = {p_value:.3g}): "
                        "the losses at this budget follow the finite-n form, with phi = d/n as fitted")


def _fit_forms(p: np.ndarray, gap: np.ndarray, covariance: dict | None, plateaus: bool) -> dict[str, dict]:
    """Both forms by (GLS, or without a covariance ordinary) least squares with coefficients >= 0."""
    whitener = np.eye(p.size) if covariance is None else _whitener(covariance["matrix"])
    forms = {}
    for name, columns in _designs(p).items():
        design, target = whitener @ columns, whitener @ gap
        coefficients = _nonnegative_fit(design, target[:, None])[0][:, 0]
        c2_ci = None
        if covariance is not None and (name == "asymptotic" or np.all(coefficients > 0)):
            c2_ci = _c2_interval(design, target, covariance.get("dof"))
        forms[name] = _form_entry(ASYMPTOTIC if name == "asymptotic" else FINITE_N, coefficients, p, gap, plateaus,
                                  c2_ci)
    return forms


def fit_linear_theory(points, covariance: dict | None = None, plateaus: bool = True,
                      replicates: int = NULL_REPLICATES, seed: int = 0) -> dict:
    """Both forms of the isotropic theory fitted to {p: E_p} (E_0 present, at least one p > 0).

    covariance: of the gaps E_p − E_0 (p > 0 ascending), from `gap_covariance_from_draws` or
    `gap_covariance_from_seeds`; the fits are GLS with it, c² gets a 95% interval and the forms are compared
    (`forms_test`, two fractions p > 0 or more). Without it the fits are ordinary least squares, and nothing is
    compared: independent, equal-variance gaps would be an assumption the data contradict.
    plateaus: the points are n → ∞ plateaus, so the finite-n u is reported without a φ (see PLATEAU_U).
    c² < 0 is outside the theory (synthetic data that lowers the loss): c² is fitted with the bound c² >= 0 and a
    "warning" says so. R² is over the gaps E_p − E_0 of the fractions p > 0; it is None with one such fraction.
    """
    p, gap = _gaps(points)
    if covariance is not None and np.shape(covariance["matrix"]) != (p.size, p.size):
        raise ValueError(f"covariance must be {p.size} x {p.size} (one row per fraction p > 0)")
    forms = _fit_forms(p, gap, covariance, plateaus)
    if covariance is None:
        test, why = None, ("not compared: the points come without a covariance (no joint bootstrap draws of the "
                           "plateaus, or one seed per cell)")
    elif p.size < 2:
        test, why = None, "not compared: one fraction p > 0; telling the forms apart needs at least 2"
    else:
        test, why = forms_test(p, gap, covariance, replicates, seed), None
    supported, verdict = _verdict(test, why, plateaus)
    best = forms.get(supported)
    if best is not None and (best["r2"] is None or best["r2"] < 0.5):
        r2 = best["r2"] if best["r2"] is None else round(best["r2"], 3)
        verdict += f"; but R² = {r2}: neither form describes these points well"
    method = ("ordinary least squares of both forms (no covariance: no interval, no comparison)" if covariance is None
              else f"GLS fits of both forms with the gaps' covariance from the {covariance['source']}; c2 95% "
                   "interval from the GLS standard error; forms compared by a parametric bootstrap of the "
                   "likelihood ratio under u = 0")
    result = {"gaps": {f"{q:g}": float(g) for q, g in zip(p, gap)}, **forms, "supported": supported,
              "forms_test": test, "verdict": verdict, "method": method}
    if np.all(gap <= 0) or forms["asymptotic"]["c2"] == 0:
        result["warning"] = "synthetic data did not raise the loss (c2 at its bound 0): the collapse model does not fit"
    return result


# ----------------------------------------------------------------------------------------------- model size


def interpolation_regime(parameters, tokens: int) -> dict:
    """Where the students sit against the random-projection model's interpolation threshold m = n.

    A student with fewer parameters than training tokens is below it (there the collapse gap grows with size),
    one with more is above it (there the gap shrinks with size, never to zero; Strong Model Collapse, random
    projections). "straddles" when the sizes lie on both sides.
    """
    sides = {"below" if int(s) < int(tokens) else "above" for s in parameters}
    regime = sides.pop() if len(sides) == 1 else "straddles"
    counts = ", ".join(f"{int(s):,}" for s in sorted(parameters))
    return {"regime": regime, "tokens": int(tokens),
            "why": f"parameters {counts} against {int(tokens):,} training tokens: "
                   + {"below": "every student has fewer parameters than tokens",
                      "above": "every student has more parameters than tokens",
                      "straddles": "some students have fewer parameters than tokens, some more"}[regime]}


def _projection_sizes(sizes: list[int], tokens: int, regime: str, n: int) -> dict[int, int]:
    """The toy model's m per student, in size order: 0.15n..0.75n below the threshold, 1.5n..6n above it;
    for "straddles", each student on its own side of m = n."""
    sides = {s: regime if regime != "straddles" else ("below" if s < tokens else "above") for s in sizes}
    m_of = {}
    for side, spread in (("below", lambda k: np.linspace(0.15, 0.75, k)), ("above", lambda k: np.geomspace(1.5, 6, k))):
        members = [s for s in sizes if sides[s] == side]
        m_of.update(zip(members, np.maximum(1, np.round(spread(len(members)) * n)).astype(int).tolist()))
    return m_of


def _ascending(values: dict) -> list:
    """Keys by ascending value: smallest gap (or loss) first."""
    return [key for key, _ in sorted(values.items(), key=lambda kv: kv[1])]


def _predicted_orders(observed: dict, m_of: dict, p: float, risk) -> dict:
    """One regime's predicted loss and gap orders at fraction p, and whether the observed ones agree."""
    predicted = {s: risk(m_of[s], p) for s in m_of}
    entry = {"loss_order": _ascending(predicted), "risk": {str(s): v for s, v in predicted.items()}}
    entry["loss_order_agrees"] = entry["loss_order"] == _ascending({s: observed[s][p] for s in m_of})
    if all(0.0 in observed[s] for s in m_of):
        gap = {s: predicted[s] - risk(m_of[s], 0.0) for s in m_of}
        entry.update(gap_order=_ascending(gap), gap={str(s): v for s, v in gap.items()})
        entry["gap_order_agrees"] = entry["gap_order"] == _ascending({s: observed[s][p] - observed[s][0.0]
                                                                      for s in m_of})
    return entry


def compare_model_sizes(plateaus_by_size, tokens: int, n=50, ridge=1e-3, c2=1.0, noise_var=0.25, draws=4,
                        seed=0) -> dict:
    """Observed ordering of student sizes against the random-projection model's ordering (Strong Model Collapse).

    plateaus_by_size: {parameter_count: {p: E_p}}; tokens: the training tokens the students saw, which with the
    parameter counts decides the regime (`interpolation_regime`). The k-th smallest student is mapped to the k-th
    projection size m of a toy problem (isotropic, d = 8n features, Δ = (c²/d)I) in each regime; both regimes are
    computed, and "applies" names the one the counts put the students in. Compared per fraction p: the order of
    E_p and, with E_0 for every size, of the collapse gap E_p − E_0 (the robust prediction). Raw-loss orders
    depend on the toy spectrum; read them as such.
    """
    sizes = sorted(int(s) for s in plateaus_by_size)
    if len(sizes) < 2:
        raise ValueError("plateaus_by_size needs at least two model sizes")
    observed = {s: {float(p): float(e) for p, e in plateaus_by_size[s].items()} for s in sizes}
    placement = interpolation_regime(sizes, tokens)
    regimes = sorted({"below", "above", placement["regime"]})
    m_of = {regime: _projection_sizes(sizes, int(tokens), regime, n) for regime in regimes}
    d = 8 * n
    w_star, delta, cache = make_unit_vector(d, seed), np.full(d, c2 / d), {}

    def risk(m, p):
        if (m, p) not in cache:
            cache[(m, p)] = linear.random_projection_risk(np.ones(d), w_star, delta, n, m, p, ridge, noise_var,
                                                          draws=draws, seed=seed).total
        return cache[(m, p)]

    common = sorted(set.intersection(*(set(v) for v in observed.values())))
    per_fraction = {}
    for p in (q for q in common if q > 0):
        entry = {"observed": {str(s): observed[s][p] for s in sizes},
                 "observed_loss_order": _ascending({s: observed[s][p] for s in sizes}),
                 "predicted": {regime: _predicted_orders(observed, m_of[regime], p, risk) for regime in regimes}}
        if 0.0 in common:
            gaps = {s: observed[s][p] - observed[s][0.0] for s in sizes}
            entry.update(observed_gap={str(s): v for s, v in gaps.items()}, observed_gap_order=_ascending(gaps))
        per_fraction[f"{p:g}"] = entry
    return {
        "method": ("orders of student sizes (smallest first) by E_p and by collapse gap E_p - E_0, against a "
                   f"random-projection ridge model: isotropic, d={d}, n={n}, ridge={ridge:g}, c2={c2:g}, k-th "
                   "smallest student -> k-th m below (0.15n..0.75n) and above (1.5n..6n) the interpolation threshold "
                   "m = n; the regime that applies is decided by parameters against training tokens"),
        "applies": placement["regime"], "regime_why": placement["why"], "tokens": int(tokens),
        "projection_sizes": {regime: {str(s): m for s, m in sizes_.items()} for regime, sizes_ in m_of.items()},
        "fractions": per_fraction,
        "caveat": ("the gap order is the model's robust prediction (below the threshold larger models have larger "
                   "gaps, above it smaller ones); the raw-loss order depends on the toy spectrum, ridge and noise "
                   "chosen here and is not a prediction for language models"),
    }


def make_unit_vector(d: int, seed: int) -> np.ndarray:
    """A random direction with ‖w*‖ = 1 (the toy target of `compare_model_sizes`)."""
    w = np.random.default_rng(seed).standard_normal(d)
    return w / math.sqrt(float(w @ w))
