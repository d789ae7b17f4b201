"""The linear theory of Strong Model Collapse (Dohmatob et al., arXiv:2410.04840) fitted to measured plateaus.

Ridge regression on a mixture of real and synthetic samples, isotropic features, ridge → 0, φ = d/n < 1, synthetic
labels off by a fixed error of size c² (the paper's deterministic equivalent; `pipeline.theory.linear`):
    E(p, n) = σ²φ/(1 − φ) + (p² + p(1 − p)·φ/(1 − φ))·c²        (`isotropic_mixture_risk`)
    E(p, ∞) = p²c²                                              (`synthetic_floor`, "strong" collapse)
so the collapse gap E_p − E_0 is p²c² as n → ∞ and (p² + p(1 − p)u)c², u = φ/(1 − φ), at finite n.
`fit_linear_theory` fits both forms to {p: E_p} and says which one the points support (an F-test of the extra
term); `compare_model_sizes` orders student sizes against the paper's random-projection model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls
from scipy.stats import f as f_distribution

from pipeline.theory import linear

ASYMPTOTIC = "E_p - E_0 = p^2 c2 (n -> infinity)"
FINITE_N = "E_p - E_0 = (p^2 + p(1-p) u) c2, u = phi/(1-phi), phi = d/n (finite n)"
_LEVEL = 0.05  # the finite-n term must be significant at this level to be preferred


def theory_gap(form: dict, fractions) -> np.ndarray:
    """E_p − E_0 of a fitted form at `fractions`, evaluated with the theory's own functions."""
    p = np.atleast_1d(np.asarray(fractions, dtype=float))
    c2 = max(float(form["c2"]), 0.0)
    phi = form.get("phi")
    if not phi:  # the asymptotic form, or a finite-n fit whose extra term is 0
        return np.array([linear.synthetic_floor(q, c2) for q in p])
    return np.asarray(linear.isotropic_mixture_risk(phi, p, c2, noise_var=0.0), dtype=float)


def _form_entry(form: str, c2: float, phi: float | None, p: np.ndarray, gap: np.ndarray) -> dict:
    entry = {"form": form, "c2": float(c2), "parameters": 1 if form == ASYMPTOTIC else 2}
    if form == FINITE_N:
        entry.update(phi=phi, u=None if phi is None else phi / (1 - phi))
    residual = gap - theory_gap(entry, p)
    total = float(np.sum((gap - gap.mean()) ** 2))
    rss = float(np.sum(residual**2))
    entry.update(residuals={f"{q:g}": float(r) for q, r in zip(p, residual)}, rss=rss,
                 r2=1 - rss / total if p.size > 1 and total > 0 else None)
    return entry


def _finite_n_fit(p: np.ndarray, gap: np.ndarray) -> tuple[float, float | None]:
    """(c², φ) of the finite-n form: non-negative least squares for c²·p² + b·p(1 − p), b = u·c²."""
    (c2, b), _ = nnls(np.c_[p**2, p * (1 - p)], gap)
    if c2 <= 0 or b <= 0:
        return float(c2), None
    u = b / c2
    return float(c2), float(u / (1 + u))


def _which_form(asymptotic: dict, finite_n: dict, points: int) -> tuple[str | None, dict | None, str]:
    """(supported form, F-test, one sentence): the extra finite-n term must earn its parameter."""
    if points < 3:
        return None, None, (f"{points} fraction(s) p > 0: telling the forms apart needs at least 3 "
                            "(two parameters and one degree of freedom left)")
    dof = points - 2
    gain = max(asymptotic["rss"] - finite_n["rss"], 0.0)
    statistic = math.inf if finite_n["rss"] <= 0 and gain > 0 else gain / max(finite_n["rss"] / dof, 1e-300)
    p_value = 0.0 if math.isinf(statistic) else float(f_distribution.sf(statistic, 1, dof))
    test = {"F": statistic, "dof": [1, dof], "p_value": p_value, "level": _LEVEL}
    if p_value < _LEVEL:
        return "finite_n", test, (f"the finite-n term p(1-p)u c2 is significant (F-test p = {p_value:.3g}): the data "
                                  "support the finite-n form, i.e. these plateaus are not yet the n -> infinity p^2 c2")
    return "asymptotic", test, (f"the finite-n term is not significant (F-test p = {p_value:.3g}): the data do not "
                                "need more than the n -> infinity form p^2 c2")


def fit_linear_theory(points) -> dict:
    """Both forms of the isotropic theory fitted to {p: E_p} (E_0 present, at least one p > 0).

    c² < 0 is outside the theory (synthetic data that lowers the loss): c² is fitted with the bound c² >= 0 and a
    "warning" says so. R² is over the gaps E_p − E_0 of the fractions p > 0; it is None with one such fraction.
    A form whose best R² is below 0.5 is not said to describe the data even when it is the better of the two.
    """
    try:
        values = {float(p): float(e) for p, e in dict(points).items()}
    except (TypeError, ValueError):
        raise ValueError("points must map synthetic fractions to numbers, e.g. {0.0: 3.1, 0.2: 3.3}") from None
    if 0.0 not in values:
        raise ValueError("points must contain the clean fraction 0 (E_0)")
    p = np.array(sorted(q for q in values if q > 0))
    if p.size < 1 or np.any(p > 1):
        raise ValueError("points needs at least one fraction in (0, 1] besides 0")
    gap = np.array([values[q] for q in p]) - values[0.0]
    asymptotic = _form_entry(ASYMPTOTIC, max(float(p**2 @ gap / (p**2 @ p**2)), 0.0), None, p, gap)
    finite_n = _form_entry(FINITE_N, *_finite_n_fit(p, gap), p, gap)
    supported, test, verdict = _which_form(asymptotic, finite_n, int(p.size))
    best = {"asymptotic": asymptotic, "finite_n": finite_n}.get(supported)
    if best is not None and (best["r2"] is None or best["r2"] < 0.5):
        r2 = best["r2"] if best["r2"] is None else round(best["r2"], 3)
        verdict += f"; but R² = {r2}: neither form describes these points well"
    result = {"gaps": {f"{q:g}": float(g) for q, g in zip(p, gap)}, "asymptotic": asymptotic, "finite_n": finite_n,
              "supported": supported, "f_test": test, "verdict": verdict}
    if np.all(gap <= 0) or asymptotic["c2"] == 0:
        result["warning"] = "synthetic data did not raise the loss (c2 at its bound 0): the collapse model does not fit"
    return result


# ----------------------------------------------------------------------------------------------- model size


def compare_model_sizes(plateaus_by_size, regime="below", n=50, ridge=1e-3, c2=1.0, noise_var=0.25, draws=4,
                        seed=0) -> dict:
    """Observed ordering of student sizes against the random-projection model's ordering (Strong Model Collapse).

    plateaus_by_size: {parameter_count: {p: E_p}}. The k-th smallest student is mapped to the k-th projection
    size m: below the interpolation threshold (regime="below", m from 0.15n to 0.75n — LM students see far more
    tokens than they have parameters) or above it (regime="above", m from 1.5n to 6n). The toy problem is
    isotropic, d = 8n features, Δ = (c²/d)I. Compared per fraction p: the order of the plateaus E_p and, when
    E_0 is given for every size, the order of the collapse gap E_p − E_0 (the robust prediction: the gap grows
    with m below the threshold and shrinks above it). Raw-loss orders depend on the toy spectrum; read them as such.
    """
    if regime not in ("below", "above"):
        raise ValueError(f"regime must be 'below' or 'above', got {regime!r}")
    sizes = sorted(int(s) for s in plateaus_by_size)
    if len(sizes) < 2:
        raise ValueError("plateaus_by_size needs at least two model sizes")
    observed = {s: {float(p): float(e) for p, e in plateaus_by_size[s].items()} for s in sizes}
    spread = np.linspace(0.15, 0.75, len(sizes)) if regime == "below" else np.geomspace(1.5, 6.0, len(sizes))
    m_of = dict(zip(sizes, np.maximum(1, np.round(spread * n)).astype(int)))
    d = 8 * n
    w_star = make_unit_vector(d, seed)
    delta = np.full(d, c2 / d)

    def risk(size, p):
        return linear.random_projection_risk(np.ones(d), w_star, delta, n, int(m_of[size]), p, ridge, noise_var,
                                             draws=draws, seed=seed).total

    def order(values):  # sizes by ascending value: best first
        return [s for s, _ in sorted(values.items(), key=lambda kv: kv[1])]

    common = sorted(set.intersection(*(set(v) for v in observed.values())))
    per_fraction = {}
    for p in (q for q in common if q > 0):
        seen = {s: observed[s][p] for s in sizes}
        predicted = {s: risk(s, p) for s in sizes}
        entry = {"observed_loss_order": order(seen), "predicted_loss_order": order(predicted)}
        entry["loss_order_agrees"] = entry["observed_loss_order"] == entry["predicted_loss_order"]
        if 0.0 in common:
            seen_gap = {s: seen[s] - observed[s][0.0] for s in sizes}
            predicted_gap = {s: predicted[s] - risk(s, 0.0) for s in sizes}
            entry.update(observed_gap_order=order(seen_gap), predicted_gap_order=order(predicted_gap),
                         observed_gap={str(s): v for s, v in seen_gap.items()},
                         predicted_gap={str(s): v for s, v in predicted_gap.items()})
            entry["gap_order_agrees"] = entry["observed_gap_order"] == entry["predicted_gap_order"]
        entry["observed"] = {str(s): v for s, v in seen.items()}
        entry["predicted_risk"] = {str(s): v for s, v in predicted.items()}
        per_fraction[f"{p:g}"] = entry
    return {
        "method": ("orders of student sizes (best first) by plateau E_p and by collapse gap E_p - E_0, against a "
                     f"random-projection ridge model: isotropic, d={d}, n={n}, ridge={ridge:g}, c2={c2:g}, "
                     f"k-th smallest student -> k-th m {regime} the interpolation threshold m=n"),
        "regime": regime,
        "projection_sizes": {str(s): int(m) for s, m in m_of.items()},
        "fractions": per_fraction,
        "caveat": ("the gap order is the model's robust prediction; the raw-loss order depends on the toy "
                   "spectrum, ridge and noise chosen here and is not a prediction for language models"),
    }


def make_unit_vector(d: int, seed: int) -> np.ndarray:
    """A random direction with ‖w*‖ = 1 (the toy target of `compare_model_sizes`)."""
    w = np.random.default_rng(seed).standard_normal(d)
    return w / math.sqrt(float(w @ w))
