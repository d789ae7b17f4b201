"""Spectral building blocks shared by the ridge formulas (docs/theory-notes.md, preamble).

Everything here works in the eigenbasis of the feature covariance Σ, so Σ is given by its eigenvalues.

    df_m(t) = tr Σ^m (Σ + tI)^(-m)
    κ > 0 solves κ − λ = κ·df₁(κ)/n            (λ → 0 and rank Σ < n: κ = 0)
    u = (df₂(κ)/n) / (1 − df₂(κ)/n)

Also the argument checks that every public function of the package uses, so the error messages have one style:
they name the argument and say what is valid.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy.optimize import brentq

# Eigenvalues below this fraction of the largest are treated as exact zeros: every term of the ridge formulas
# carries a factor λ_i, so null directions contribute nothing (this matters for random projections with m > d,
# where Σ_S = SΣSᵀ is singular).
NULL_EIGENVALUE_RTOL = 1e-12


def degrees_of_freedom(eigenvalues: np.ndarray, t: float, power: int) -> float:
    """df_power(t) = Σ_i λ_i^power / (λ_i + t)^power (eigenvalues must be > 0 when t = 0)."""
    ratio = eigenvalues / (eigenvalues + t)
    return float(np.sum(ratio**power))


def solve_kappa(eigenvalues: np.ndarray, n: int, ridge: float) -> float:
    """Effective regularisation κ of ridge with n samples (docs/theory-notes.md, preamble).

    κ solves G(κ) = 1 − df₁(κ)/n − λ/κ = 0, i.e. κ − λ = κ·df₁(κ)/n divided by κ. G is strictly increasing in
    κ (df₁ decreases, −λ/κ increases) and G(∞) = 1, so the root is unique; we bracket it and solve in log κ,
    which keeps full relative precision when κ is many decades below the top eigenvalue.

    λ = 0: if rank Σ < n, G(0⁺) = 1 − rank/n > 0 and the limit is κ = 0 (under-parameterised OLS); if
    rank Σ > n, κ > 0 solves df₁(κ) = n (minimum-norm interpolator); rank Σ = n is the interpolation threshold,
    where the risk is infinite, and raises.
    """
    eigenvalues = eigenvalues[eigenvalues > 0]
    rank = eigenvalues.size
    if ridge == 0.0:
        if rank < n:
            return 0.0
        if rank == n:
            raise ValueError(
                f"ridge=0 with rank(Σ)={rank} equal to n={n}: the risk is infinite at the interpolation "
                "threshold; use ridge > 0 or a different n"
            )

    def g(log_kappa: float) -> float:
        kappa = math.exp(log_kappa)
        return 1.0 - degrees_of_freedom(eigenvalues, kappa, 1) / n - ridge / kappa

    # κ·df₁(κ) ≤ tr Σ, so G(λ + tr Σ/n) ≥ 0: an upper bracket.
    upper = ridge + float(np.sum(eigenvalues)) / n
    # G(λ) = −df₁(λ)/n < 0 when λ > 0; when λ = 0 (rank > n) G(0⁺) = 1 − rank/n < 0, so shrinking finds it.
    lower = ridge if ridge > 0 else upper
    while g(math.log(lower)) >= 0.0:
        lower /= 10.0
        if lower < 1e-300:  # pragma: no cover - unreachable for valid inputs
            raise RuntimeError("could not bracket κ")
    if g(math.log(upper)) <= 0.0:
        return upper
    log_kappa = brentq(g, math.log(lower), math.log(upper), xtol=1e-14, rtol=1e-14, maxiter=500)
    return math.exp(log_kappa)


def drop_null_directions(eigenvalues: np.ndarray, *per_direction: np.ndarray) -> tuple[np.ndarray, ...]:
    """Remove (numerically) zero eigenvalues and the matching entries of the per-direction arrays."""
    keep = eigenvalues > NULL_EIGENVALUE_RTOL * float(np.max(eigenvalues))
    return (eigenvalues[keep],) + tuple(a[keep] for a in per_direction)


def make_generator(seed: int, stream: int) -> np.random.Generator:
    """A numpy Generator for `seed` on a stream distinct from `default_rng(seed)`.

    Why: a caller who draws w* with default_rng(0) and then asks for seed=0 would otherwise get projections or
    designs built from the very same normal numbers (e.g. the first row of S equal to w*·√d, so A₁ = 0).
    """
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream),)))


# ----------------------------------------------------------------------------------------------- validation


def check_spectrum(eigenvalues, name: str = "eigenvalues") -> np.ndarray:
    arr = np.asarray(eigenvalues, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (the diagonal of Σ), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or not np.any(arr > 0):
        raise ValueError(f"{name} must be finite and >= 0 with at least one > 0")
    return arr


def check_vector(values, d: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != (d,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite 1-D array of length d={d}, got shape {arr.shape}")
    return arr


def check_covariance(delta, d: int, name: str = "delta") -> np.ndarray:
    """Δ as its diagonal (1-D, entries >= 0) or a full symmetric PSD d×d matrix; returned as given (1-D or 2-D)."""
    arr = np.asarray(delta, dtype=float)
    if arr.ndim == 1:
        if arr.shape != (d,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{name} as a 1-D array must be the diagonal of Δ: length d={d}, finite, >= 0")
        return arr
    if arr.shape != (d, d) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a 1-D diagonal of length {d} or a {d}x{d} matrix, got shape {arr.shape}")
    if not np.allclose(arr, arr.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} must be symmetric")
    if np.linalg.eigvalsh(arr)[0] < -1e-10 * max(1.0, float(np.abs(arr).max())):
        raise ValueError(f"{name} must be positive semi-definite")
    return arr


def check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(value, name: str, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    x = float(value)
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if not math.isfinite(x) or too_low or too_high:
        raise ValueError(f"{name} must be {_valid_range(low, high, low_open, high_open)}, got {value!r}")
    return x


def _valid_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """The valid values in words: every value is finite, so an infinite bound is written as no bound."""
    above = f"{'>' if low_open else '>='} {low:g}"
    below = f"{'<' if high_open else '<='} {high:g}"
    if math.isinf(low) and math.isinf(high):
        return "a finite number"
    if math.isinf(high):
        return f"finite and {above}"
    if math.isinf(low):
        return f"finite and {below}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
