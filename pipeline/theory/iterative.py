"""Model Collapse Demystified: iterated retraining on the previous generation's labels (docs/theory-notes.md, section 3).

Generation 0 is w₀. Generation g+1 is the least-squares fit on T₀ fresh samples x ~ N(0, Σ) labelled by
generation g plus N(0, σ₀²) noise. Each refit adds an independent error with covariance σ₀²(XᵀX)⁻¹, whose mean
is σ₀²Σ⁻¹/(T₀ − d − 1) (inverse-Wishart), so after n generations w_n − w₀ has covariance n·σ₀²Σ⁻¹/(T₀ − d − 1).
A downstream ridge (λ) fitted on T samples labelled by generation n plus N(0, σ²) has test error E‖ŵ − w₀‖²_Σ:

    E_n = E_clean(T) + n σ₀² ρ,   ρ = [df₂(κ) + u κ² tr(Σ + κI)⁻²]/(T₀ − d − 1)    (κ, u taken with T)

and for OLS downstream (λ = 0, d < T − 1) the exact finite-sample form E_n = σ²d/(T − d − 1) + nσ₀²d/(T₀ − d − 1).
"""

from __future__ import annotations

import numpy as np

from pipeline.theory._spectral import (
    check_count,
    check_real,
    check_spectrum,
    check_vector,
    degrees_of_freedom,
    solve_kappa,
)
from pipeline.theory.linear import mixture_ridge_risk


def iterated_ridge_risk(eigenvalues, w0, generations, T0, T, noise0_var, noise_var, ridge) -> np.ndarray:
    """Test error E_n of the downstream ridge for n = 0..generations (docs/theory-notes.md §3); array of length G + 1.

    ridge = 0 with d < T − 1 uses the exact OLS expression; ridge > 0 uses the deterministic equivalent (the
    clean part is `linear.mixture_ridge_risk` with no synthetic data). Generations are OLS fits, so T₀ > d + 1.
    """
    eigenvalues = check_spectrum(eigenvalues)
    d = eigenvalues.size
    w0 = check_vector(w0, d, "w0")
    generations = check_count(generations, "generations", 0)
    T0 = check_count(T0, "T0")
    T = check_count(T, "T")
    noise0_var = check_real(noise0_var, "noise0_var", 0.0)
    noise_var = check_real(noise_var, "noise_var", 0.0)
    ridge = check_real(ridge, "ridge", 0.0)
    if T0 <= d + 1:
        raise ValueError(f"T0 must exceed d + 1 = {d + 1} (each generation is an OLS fit), got {T0}; "
                         "see overparameterized_noiseless_risk for T0 < d")
    steps = np.arange(generations + 1, dtype=float)
    if ridge == 0.0:
        if T <= d + 1:
            raise ValueError(f"T must exceed d + 1 = {d + 1} for an OLS downstream fit (ridge=0), got {T}")
        clean = noise_var * d / (T - d - 1)
        per_generation = noise0_var * d / (T0 - d - 1)
        return clean + steps * per_generation
    clean = mixture_ridge_risk(eigenvalues, w0, np.zeros(d), T, 0.0, ridge, noise_var=noise_var).total
    return clean + steps * noise0_var * collapse_rate(eigenvalues, T0, T, ridge)


def collapse_rate(eigenvalues, T0, T, ridge) -> float:
    """ρ: the error added per generation per unit σ₀² by a downstream ridge (λ > 0) on T samples.

    The accumulated error w_n − w₀ has covariance c·Σ⁻¹ (c = nσ₀²/(T₀ − d − 1)); ridge passes a signal v
    through as ‖v − λΣ̂_λ⁻¹v‖²_Σ, whose deterministic equivalent averaged over v is
    c·[d − 2κ tr(Σ + κI)⁻¹ + (1 + u)κ² tr(Σ + κI)⁻²] = c·[df₂(κ) + uκ² tr(Σ + κI)⁻²].
    """
    eigenvalues = check_spectrum(eigenvalues)
    d = eigenvalues.size
    T0, T = check_count(T0, "T0"), check_count(T, "T")
    ridge = check_real(ridge, "ridge", 0.0, low_open=True)
    if T0 <= d + 1:
        raise ValueError(f"T0 must exceed d + 1 = {d + 1}, got {T0}")
    if np.any(eigenvalues <= 0):
        raise ValueError("eigenvalues must be > 0: the accumulated error has covariance ∝ Σ⁻¹")
    kappa = solve_kappa(eigenvalues, T, ridge)
    df2 = degrees_of_freedom(eigenvalues, kappa, 2)
    u = (df2 / T) / (1.0 - df2 / T)
    return (df2 + u * kappa**2 * float(np.sum(1.0 / (eigenvalues + kappa) ** 2))) / (T0 - d - 1)


def overparameterized_noiseless_risk(w0_norm2, T0, d, generations) -> np.ndarray:
    """E‖w_n − w₀‖² = ‖w₀‖²(1 − (T₀/d)ⁿ) for n = 0..generations (docs/theory-notes.md §3): exponential collapse.

    Σ = I, noiseless labels, each generation the minimum-norm fit on T₀ < d samples, i.e. w_{g+1} = P_g w_g
    with P_g the projection on a uniformly random T₀-dimensional subspace. E P = (T₀/d)I, so
    E⟨w_n, w₀⟩ = E‖w_n‖² = (T₀/d)ⁿ‖w₀‖² and the error is ‖w₀‖² − 2E⟨w_n, w₀⟩ + E‖w_n‖².
    This is the error of generation n's own model (no downstream fit).
    """
    w0_norm2 = check_real(w0_norm2, "w0_norm2", 0.0)
    d = check_count(d, "d")
    T0 = check_count(T0, "T0")
    if T0 >= d:
        raise ValueError(f"T0 must be < d={d} (over-parameterised refits), got {T0}")
    generations = check_count(generations, "generations", 0)
    return w0_norm2 * (1.0 - (T0 / d) ** np.arange(generations + 1, dtype=float))
