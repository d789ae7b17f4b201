"""Strong Model Collapse: ridge regression on a mixture of real and synthetic data (docs/theory-notes.md, section 1).

Setting. Real samples x ~ N(0, Σ), y = xᵀw* + ε, ε ~ N(0, σ²); synthetic samples have the same x and
y = xᵀ(w* + δ) + ε', ε' ~ N(0, σ_s²), where δ ~ N(0, Δ) is drawn once for the synthetic source. A fraction p₂ of
the n training samples is synthetic (p₁ = 1 − p₂). Ridge: ŵ = (XᵀX/n + λI)⁻¹Xᵀy/n. Test error on the real
distribution, noise excluded: E = E‖ŵ − w*‖²_Σ.

Deterministic equivalent, with κ and u from `_spectral` (proportional limit):

    E ≈ B + V + ζ
    B = (1 + u) κ² · w*ᵀ Σ (Σ + κI)⁻² w*
    V = (p₁σ² + p₂σ_s²) · u
    ζ = p₂² (1 + p₁u) · tr(Δ Σ³ (Σ + κI)⁻²) + p₂ u · tr(Δ Σ (p₁Σ + κI)² (Σ + κI)⁻²)

Because Σ is diagonal here, only the diagonal of Δ enters; the random-projection model needs a rotation first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from pipeline.theory._blas import single_blas_thread
from pipeline.theory._spectral import (
    check_count,
    check_covariance,
    check_real,
    check_spectrum,
    check_vector,
    degrees_of_freedom,
    drop_null_directions,
    make_generator,
    solve_kappa,
)


@dataclass(frozen=True)
class RiskResult:
    """Test error E‖ŵ − w*‖²_Σ split into bias, noise variance and the synthetic-data term ζ."""

    bias: float
    variance: float
    synthetic: float
    total: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", float(self.bias + self.variance + self.synthetic))


def _eigenbasis_mixture_risk(eigenvalues, w_squared, delta_diagonal, n, p2, ridge, noise_var, synthetic_noise_var):
    """The section-1 formula in the eigenbasis of Σ: only w*_i² and Δ_ii enter."""
    eigenvalues, w_squared, delta_diagonal = drop_null_directions(eigenvalues, w_squared, delta_diagonal)
    p1 = 1.0 - p2
    kappa = solve_kappa(eigenvalues, n, ridge)
    df2 = degrees_of_freedom(eigenvalues, kappa, 2)
    u = (df2 / n) / (1.0 - df2 / n)
    shrink_sq = 1.0 / (eigenvalues + kappa) ** 2  # (Σ + κI)⁻² on the diagonal
    bias = (1.0 + u) * kappa**2 * float(np.sum(eigenvalues * w_squared * shrink_sq))
    variance = (p1 * noise_var + p2 * synthetic_noise_var) * u
    # ζ: the teacher's error δ, seen through the mixture (section 1, third line of the formula).
    shift_term = float(np.sum(delta_diagonal * eigenvalues**3 * shrink_sq))
    mixing_term = float(np.sum(delta_diagonal * eigenvalues * (p1 * eigenvalues + kappa) ** 2 * shrink_sq))
    synthetic = p2**2 * (1.0 + p1 * u) * shift_term + p2 * u * mixing_term
    return RiskResult(bias=bias, variance=variance, synthetic=synthetic)


def check_mixture_arguments(eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var, synthetic_noise_var):
    """Validated arrays and numbers of a mixture problem (shared by the theory and its Monte Carlo)."""
    eigenvalues = check_spectrum(eigenvalues)
    d = eigenvalues.size
    w_star = check_vector(w_star, d, "w_star")
    delta = check_covariance(delta, d)
    n = check_count(n, "n")
    p2 = check_real(synthetic_fraction, "synthetic_fraction", 0.0, 1.0)
    ridge = check_real(ridge, "ridge", 0.0)
    noise_var = check_real(noise_var, "noise_var", 0.0)
    synthetic_noise_var = noise_var if synthetic_noise_var is None else check_real(
        synthetic_noise_var, "synthetic_noise_var", 0.0)
    return eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var


def mixture_ridge_risk(eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var=1.0,
                       synthetic_noise_var=None) -> RiskResult:
    """Deterministic equivalent of E‖ŵ − w*‖²_Σ for ridge on a real/synthetic mixture (docs/theory-notes.md §1).

    Args:
        eigenvalues: diagonal of Σ (we work in its eigenbasis), shape (d,).
        w_star: ground-truth weights in the same basis, shape (d,).
        delta: covariance Δ of the teacher's error δ: its diagonal (d,) or a full symmetric PSD (d, d) matrix
            (only the diagonal enters, since Σ is diagonal).
        n: total number of training samples; synthetic_fraction: p₂ in [0, 1].
        ridge: λ >= 0. λ = 0 is the κ → 0 limit when rank Σ < n, the minimum-norm interpolator when
            rank Σ > n; rank Σ = n raises (infinite risk).
        noise_var, synthetic_noise_var: σ² and σ_s² (σ_s² defaults to σ²).
    """
    eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var = check_mixture_arguments(
        eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var, synthetic_noise_var)
    delta_diagonal = delta if delta.ndim == 1 else np.diag(delta).copy()
    return _eigenbasis_mixture_risk(eigenvalues, w_star**2, delta_diagonal, n, p2, ridge, noise_var,
                                    synthetic_noise_var)


def isotropic_mixture_risk(phi, synthetic_fraction, c2, noise_var=1.0, synthetic_noise_var=None):
    """Closed form for Σ = I, λ → 0, φ = d/n < 1, c² = tr(ΣΔ) (docs/theory-notes.md §1):

        E = (p₁σ² + p₂σ_s²) φ/(1 − φ) + (p₂² + p₁p₂ φ/(1 − φ)) c².

    With σ_s² = σ² this is the notes' σ²φ/(1 − φ) + (p₂² + p₁p₂φ/(1 − φ))c². As n → ∞ (φ → 0) it tends to the
    floor p₂²c². Broadcasts over array-valued phi and synthetic_fraction; returns a float for scalars.
    """
    phi_arr = np.asarray(phi, dtype=float)
    p2 = np.asarray(synthetic_fraction, dtype=float)
    if np.any(~np.isfinite(phi_arr)) or np.any(phi_arr <= 0) or np.any(phi_arr >= 1):
        raise ValueError(f"phi must be in (0, 1) (d < n for the λ → 0 limit), got {phi!r}")
    if np.any(~np.isfinite(p2)) or np.any(p2 < 0) or np.any(p2 > 1):
        raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction!r}")
    c2 = check_real(c2, "c2", 0.0)
    noise_var = check_real(noise_var, "noise_var", 0.0)
    synthetic_noise_var = noise_var if synthetic_noise_var is None else check_real(
        synthetic_noise_var, "synthetic_noise_var", 0.0)
    u = phi_arr / (1.0 - phi_arr)
    p1 = 1.0 - p2
    risk = (p1 * noise_var + p2 * synthetic_noise_var) * u + (p2**2 + p1 * p2 * u) * c2
    return float(risk) if risk.ndim == 0 else risk


def synthetic_floor(synthetic_fraction, c2) -> float:
    """The n → ∞ plateau p₂²c² of the isotropic mixture risk ("strong" collapse, notes section 1)."""
    p2 = check_real(synthetic_fraction, "synthetic_fraction", 0.0, 1.0)
    return p2**2 * check_real(c2, "c2", 0.0)


def _weighted_effective_trace(phi, fractions, weights):
    """τ = tr (XᵀWX)⁻¹ (weights summing to n) from its self-consistent equation φ = Σ_g p_g w_g τ/(1 + w_g τ)."""
    usable = float(np.sum(fractions[weights > 0]))
    if usable <= phi:
        raise ValueError(f"weighted least squares needs more positively weighted samples than features: "
                         f"the weighted fraction {usable:.3g} must exceed phi={phi:.3g}")

    def excess(log_tau):
        tau = np.exp(log_tau)
        return float(np.sum(fractions * weights * tau / (1.0 + weights * tau))) - phi

    return float(np.exp(brentq(excess, -60.0, 60.0, xtol=1e-14, rtol=1e-14)))


def check_weighted_arguments(synthetic_fraction, weight, c2, noise_var, synthetic_noise_var):
    """Validated (p₂, a, c², σ², σ_s²) of a weighted mixture (shared by the theory and its Monte Carlo)."""
    p2 = check_real(synthetic_fraction, "synthetic_fraction", 0.0, 1.0, low_open=True, high_open=True)
    a = check_real(weight, "weight", 0.0, 1.0)
    c2 = check_real(c2, "c2", 0.0)
    noise_var = check_real(noise_var, "noise_var", 0.0)
    synthetic_noise_var = noise_var if synthetic_noise_var is None else check_real(
        synthetic_noise_var, "synthetic_noise_var", 0.0)
    return p2, a, c2, noise_var, synthetic_noise_var


def weighted_mixture_risk(phi, synthetic_fraction, weight, c2, noise_var=1.0, synthetic_noise_var=None,
                          form="proportional") -> float:
    """Risk of weighted mixing: sample weight (1 − a)/p₁ on real and a/p₂ on synthetic samples, λ → 0.

    form="notes": the small-φ form of the notes (section 1),  E ≈ a²c² + φ[(1 − a)²σ²/p₁ + a²σ_s²/p₂].

    form="proportional" (default; our derivation, checked against `simulate.simulate_weighted_mixture`):
    whiten so Σ = I and c² = tr(ΣΔ) = ‖δ‖². Along δ the weighted fit recovers θ‖δ‖, and the leave-one-out
    leverage of a group-g sample is w_gτ/(1 + w_gτ), so (Frisch–Waugh)

        θ = s₂/(s₁ + s₂),  s_g = p_g w_g/(1 + w_g τ),  where τ solves φ = Σ_g p_g w_g τ/(1 + w_g τ).

    Orthogonal to δ, the residuals (1[synthetic] − θ)xᵀδ + ε are independent of the features: they act as
    label noise of variance v₁ = σ² + θ²c² (real) and v₂ = σ_s² + (1 − θ)²c² (synthetic). Weighted OLS noise
    then gives
        E = θ²c² + τ₂ Σ_g p_g w_g² v_g/(1 + w_g τ)²,   τ₂ = (τ²/φ)/(1 − (τ²/φ) Σ_g p_g w_g²/(1 + w_g τ)²),

    τ₂ being n·tr (XᵀWX)⁻² (from differentiating τ's equation in a ridge shift). Whitening makes this hold for
    any Σ at λ → 0 with c² = tr(ΣΔ).

    At a = p₂ this is `isotropic_mixture_risk`; as φ → 0 it reduces to the notes' form plus the O(φc²)
    fluctuation terms; any fixed a > 0 leaves the floor a²c².
    """
    phi = check_real(phi, "phi", 0.0, 1.0, low_open=True, high_open=True)
    p2, a, c2, noise_var, synthetic_noise_var = check_weighted_arguments(
        synthetic_fraction, weight, c2, noise_var, synthetic_noise_var)
    p1 = 1.0 - p2
    if form == "notes":
        return float(a**2 * c2 + phi * ((1 - a) ** 2 * noise_var / p1 + a**2 * synthetic_noise_var / p2))
    if form != "proportional":
        raise ValueError(f"form must be 'proportional' or 'notes', got {form!r}")
    fractions = np.array([p1, p2])
    weights = np.array([(1.0 - a) / p1, a / p2])
    tau = _weighted_effective_trace(phi, fractions, weights)
    leverage_free = fractions * weights / (1.0 + weights * tau)  # s_g
    theta = float(leverage_free[1] / leverage_free.sum())
    group_noise = np.array([noise_var + theta**2 * c2, synthetic_noise_var + (1.0 - theta) ** 2 * c2])
    spread = float(np.sum(fractions * weights**2 / (1.0 + weights * tau) ** 2))
    tau2 = (tau**2 / phi) / (1.0 - tau**2 / phi * spread)
    return float(theta**2 * c2 + tau2 * np.sum(fractions * weights**2 * group_noise / (1.0 + weights * tau) ** 2))


# ------------------------------------------------------------------------------------------ random projections


def _projected_problem(S, eigenvalues, w_star, delta):
    """Exact reduction of the projected model f(x) = vᵀSx to a misspecified ridge in R^m (docs/theory-notes.md §1).

    Σ_S = SΣSᵀ, M = Σ_S⁺SΣ, v* = Mw*, residual E = I − SᵀM (uncorrelated with Sx, hence independent Gaussian
    noise). Returns the eigenvalues μ of Σ_S, (Uᵀv*)², diag(UᵀMΔMᵀU), A₁ = ‖Ew*‖²_Σ and tr(EᵀΣEΔ).
    Σ_S⁺ is the pseudo-inverse: for m > d, Σ_S has rank d and null directions carry no signal.
    """
    sigma_s = (S * eigenvalues) @ S.T
    mu, U = np.linalg.eigh(sigma_s)
    keep = mu > 1e-12 * mu.max()
    mu, U = mu[keep], U[:, keep]
    rotated_map = (U.T @ (S * eigenvalues)) / mu[:, None]  # UᵀM, shape (rank, d)
    v_rot = rotated_map @ w_star
    residual_map = np.eye(S.shape[1]) - S.T @ (U @ rotated_map)  # E = I − SᵀM
    residual_w = residual_map @ w_star
    approx_error = float(np.sum(eigenvalues * residual_w**2))
    if delta.ndim == 1:
        delta_rot = (rotated_map**2) @ delta
        residual_delta = float(np.sum(eigenvalues[:, None] * residual_map**2 * delta[None, :]))
    else:
        delta_rot = np.einsum("ij,jk,ik->i", rotated_map, delta, rotated_map)
        residual_delta = float(np.trace(residual_map.T @ (eigenvalues[:, None] * residual_map) @ delta))
    return mu, v_rot**2, delta_rot, approx_error, residual_delta


def random_projection_risk(eigenvalues, w_star, delta, n, m, synthetic_fraction, ridge, noise_var=1.0,
                           synthetic_noise_var=None, draws=8, seed=0) -> RiskResult:
    """Test error of the random-projection model of size m, f(x) = vᵀSx, S_ij ~ N(0, 1/d) (docs/theory-notes.md §1).

    Conditional on S, E_test = A₁ + [section-1 formula with Σ → Σ_S, w* → Mw*, Δ → MΔMᵀ, real noise σ² + A₁,
    synthetic noise σ_s² + A₂], A₂ = A₁ + tr(EᵀΣEΔ); averaged over `draws` draws of S (numpy Generator `seed`).
    The approximation error A₁ is reported inside `bias`. With ridge → 0 the risk diverges at m = n; ridge = 0
    with m = n (or rank Σ_S = n) raises.
    """
    eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var = check_mixture_arguments(
        eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var, synthetic_noise_var)
    m = check_count(m, "m")
    draws = check_count(draws, "draws")
    d = eigenvalues.size
    rng = make_generator(seed, stream=1)
    parts = np.zeros(3)
    with single_blas_thread():  # small eigh/matmul per draw: threads only add contention (see _blas)
        for _ in range(draws):
            S = rng.standard_normal((m, d)) / np.sqrt(d)
            mu, v_squared, delta_rot, approx_error, residual_delta = _projected_problem(S, eigenvalues, w_star,
                                                                                        delta)
            risk = _eigenbasis_mixture_risk(mu, v_squared, delta_rot, n, p2, ridge, noise_var + approx_error,
                                            synthetic_noise_var + approx_error + residual_delta)
            parts += (risk.bias + approx_error, risk.variance, risk.synthetic)
    parts /= draws
    return RiskResult(bias=float(parts[0]), variance=float(parts[1]), synthetic=float(parts[2]))
