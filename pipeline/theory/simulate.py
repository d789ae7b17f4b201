"""Monte Carlo counterparts of every formula in `linear`, `tails` and `iterative` (docs/theory-notes.md, sections 1-3).

Each simulator samples the data-generating process literally (features, labels, the teacher's error δ, the
projection S, training streams) with a seeded numpy Generator and returns a `MonteCarloEstimate` with the mean
and its standard error over independent trials, so a test can say how far theory and simulation may honestly
differ. Test errors are computed exactly given the fitted weights (‖ŵ − w*‖²_Σ, or the unseen mass Σ p_i), so
only the training randomness is sampled.

Variance reduction that keeps the estimate unbiased: one design matrix X is reused for several independent
label draws (noise and δ) — each (X, labels) pair is an exact sample of the joint law, and the solve costs one
factorisation for all right-hand sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.theory._blas import single_blas_thread
from pipeline.theory._spectral import (
    check_count,
    check_spectrum,
    check_vector,
    make_generator,
)
from pipeline.theory.linear import check_mixture_arguments, check_weighted_arguments
from pipeline.theory.tails import training_distribution, zipf_probabilities


@dataclass(frozen=True)
class MonteCarloEstimate:
    """Mean over trials and the standard error of that mean (arrays for curves, floats for scalars)."""

    mean: np.ndarray | float
    stderr: np.ndarray | float
    trials: int


def _summarise(per_trial: np.ndarray) -> MonteCarloEstimate:
    per_trial = np.asarray(per_trial, dtype=float)
    trials = per_trial.shape[0]
    mean = per_trial.mean(axis=0)
    stderr = per_trial.std(axis=0, ddof=1) / np.sqrt(trials) if trials > 1 else np.full_like(mean, np.nan)
    if mean.ndim == 0:
        return MonteCarloEstimate(float(mean), float(stderr), trials)
    return MonteCarloEstimate(mean, stderr, trials)


def _fit_ridge(features: np.ndarray, labels: np.ndarray, ridge: float) -> np.ndarray:
    """ŵ = (FᵀF/n + λI)⁻¹Fᵀy/n for every column of `labels`; λ = 0 gives the minimum-norm least squares fit."""
    # Normal equations rather than lstsq: the SVD behind lstsq is ~40x slower at these sizes, and the designs
    # here are Gaussian with moderate condition numbers.
    n, k = features.shape
    if ridge == 0.0 and k >= n:  # minimum-norm interpolator Fᵀ(FFᵀ)⁻¹y
        return features.T @ np.linalg.solve(features @ features.T, labels)
    gram = features.T @ features / n + ridge * np.eye(k)
    return np.linalg.solve(gram, features.T @ labels / n)


def _covariance_sqrt(delta: np.ndarray) -> np.ndarray:
    """A matrix L with LLᵀ = Δ (Δ given as a diagonal or a full PSD matrix)."""
    if delta.ndim == 1:
        return np.diag(np.sqrt(delta))
    values, vectors = np.linalg.eigh(delta)
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def _mixture_labels(rng, X, w_star, n_synthetic, delta_sqrt, sources, noise_var, synthetic_noise_var):
    """Labels for `sources` independent synthetic sources: real rows first, then synthetic rows y = x(w*+δ)+ε'."""
    n, d = X.shape
    n_real = n - n_synthetic
    labels = np.repeat((X @ w_star)[:, None], sources, axis=1)
    labels[:n_real] += np.sqrt(noise_var) * rng.standard_normal((n_real, sources))
    if n_synthetic:
        deltas = delta_sqrt @ rng.standard_normal((d, sources))  # one δ per source, shared by its samples
        labels[n_real:] += X[n_real:] @ deltas + np.sqrt(synthetic_noise_var) * rng.standard_normal(
            (n_synthetic, sources))
    return labels


def _sigma_norm_sq(errors: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """‖e‖²_Σ for every column e of `errors` (Σ diagonal)."""
    return np.sum(eigenvalues[:, None] * errors**2, axis=0)


@single_blas_thread()
def simulate_mixture_ridge(eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var=1.0,
                           synthetic_noise_var=None, trials=40, sources=16, seed=0, projection_size=None):
    """Monte Carlo of E‖ŵ − w*‖²_Σ for ridge on round(p₂n) synthetic + the rest real samples (section 1).

    δ ~ N(0, Δ) is drawn once per synthetic source; each trial draws one X and `sources` (δ, noise) pairs.
    With projection_size=m the model is f(x) = vᵀSx with a fresh S_ij ~ N(0, 1/d) per trial (random
    projections), and the error is ‖Sᵀv̂ − w*‖²_Σ.
    """
    eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var = check_mixture_arguments(
        eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var, synthetic_noise_var)
    d = eigenvalues.size
    delta_sqrt = _covariance_sqrt(delta)
    trials, sources = check_count(trials, "trials"), check_count(sources, "sources")
    n_synthetic = int(round(p2 * n))
    rng = make_generator(seed, stream=2)
    scale = np.sqrt(eigenvalues)
    per_trial = np.empty(trials)
    for t in range(trials):
        X = rng.standard_normal((n, d)) * scale
        labels = _mixture_labels(rng, X, w_star, n_synthetic, delta_sqrt, sources, noise_var, synthetic_noise_var)
        if projection_size is None:
            w_hat = _fit_ridge(X, labels, ridge)
        else:
            S = rng.standard_normal((check_count(projection_size, "projection_size"), d)) / np.sqrt(d)
            w_hat = S.T @ _fit_ridge(X @ S.T, labels, ridge)
        per_trial[t] = _sigma_norm_sq(w_hat - w_star[:, None], eigenvalues).mean()
    return _summarise(per_trial)


def simulate_random_projection(eigenvalues, w_star, delta, n, m, synthetic_fraction, ridge, noise_var=1.0,
                               synthetic_noise_var=None, trials=40, sources=16, seed=0):
    """Monte Carlo for `linear.random_projection_risk`: ridge on v for features Sx, S redrawn every trial."""
    return simulate_mixture_ridge(eigenvalues, w_star, delta, n, synthetic_fraction, ridge, noise_var,
                                  synthetic_noise_var, trials, sources, seed, projection_size=m)


@single_blas_thread()
def simulate_weighted_mixture(d, n, synthetic_fraction, weight, c2, noise_var=1.0, synthetic_noise_var=None,
                              trials=200, sources=16, seed=0):
    """Monte Carlo of weighted least squares, weights (1 − a)/p₁ real and a/p₂ synthetic; Σ = I, Δ = (c²/d)I."""
    d, n = check_count(d, "d"), check_count(n, "n")
    p2, a, c2, noise_var, synthetic_noise_var = check_weighted_arguments(
        synthetic_fraction, weight, c2, noise_var, synthetic_noise_var)
    n_synthetic = int(round(p2 * n))
    p2 = n_synthetic / n
    sample_weight = np.r_[np.full(n - n_synthetic, (1 - a) / (1 - p2)), np.full(n_synthetic, a / p2)]
    root_weight = np.sqrt(sample_weight)[:, None]
    rng = make_generator(seed, stream=2)
    w_star = np.zeros(d)  # the error is invariant to w*: ŵ − w* does not depend on it
    delta_sqrt = np.full(d, np.sqrt(c2 / d))
    per_trial = np.empty(trials)
    for t in range(trials):
        X = rng.standard_normal((n, d))
        labels = _mixture_labels(rng, X, w_star, n_synthetic, np.diag(delta_sqrt), sources, noise_var,
                                 synthetic_noise_var)
        w_hat = _fit_ridge(X * root_weight, labels * root_weight, 0.0)
        per_trial[t] = np.sum(w_hat**2, axis=0).mean()
    return _summarise(per_trial)


# -------------------------------------------------------------------------------------------- memorisation


def simulate_memorization(T, beta, cutoff=None, clean_fraction=0.0, support=10**5, trials=20, seed=0,
                          temperature=1.0):
    """Monte Carlo of the memorising learner (docs/theory-notes.md §2): the test mass of items never seen in T draws.

    Training draws are i.i.d. from q (`tails.training_distribution`); for a grid of T the stream is extended
    incrementally by multinomial counts, so the T values share one nested stream per trial and each step costs
    O(support) regardless of T.
    """
    T_arr = np.asarray(T)
    flat_T = np.asarray(T_arr, dtype=np.int64).ravel()
    if np.any(flat_T < 0) or not np.array_equal(flat_T, T_arr.ravel()):
        raise ValueError("T must be non-negative integers")
    p = zipf_probabilities(beta, support)
    q = training_distribution(beta, cutoff, clean_fraction, support, temperature)
    order = np.argsort(flat_T)
    rng = make_generator(seed, stream=2)
    per_trial = np.empty((trials, flat_T.size))
    for t in range(trials):
        counts = np.zeros(support, dtype=np.int64)
        drawn = 0
        for idx in order:
            counts += rng.multinomial(flat_T[idx] - drawn, q)
            drawn = flat_T[idx]
            per_trial[t, idx] = p[counts == 0].sum()
    est = _summarise(per_trial)
    return MonteCarloEstimate(est.mean.reshape(T_arr.shape), est.stderr.reshape(T_arr.shape), trials)


# --------------------------------------------------------------------------------------- iterated retraining


@single_blas_thread()
def simulate_iterated_ridge(eigenvalues, w0, generations, T0, T, noise0_var, noise_var, ridge, trials=100,
                            sources=8, seed=0):
    """Monte Carlo of iterated retraining (docs/theory-notes.md §3), errors for generations 0..generations.

    Generation g+1 is OLS on T₀ fresh samples labelled by generation g plus N(0, σ₀²); the downstream ridge is
    fitted on T samples labelled by generation g plus N(0, σ²) and scored by ‖ŵ − w₀‖²_Σ.
    """
    eigenvalues = check_spectrum(eigenvalues)
    d = eigenvalues.size
    w0 = check_vector(w0, d, "w0")
    generations = check_count(generations, "generations", 0)
    T0, T = check_count(T0, "T0"), check_count(T, "T")
    if T0 <= d:
        raise ValueError(f"T0 must exceed d={d} (generations are OLS fits), got {T0}")
    scale = np.sqrt(eigenvalues)
    rng = make_generator(seed, stream=2)
    per_trial = np.empty((trials, generations + 1))
    for t in range(trials):
        w_gen = w0.copy()
        for g in range(generations + 1):
            X = rng.standard_normal((T, d)) * scale
            labels = (X @ w_gen)[:, None] + np.sqrt(noise_var) * rng.standard_normal((T, sources))
            w_hat = _fit_ridge(X, labels, ridge)
            per_trial[t, g] = _sigma_norm_sq(w_hat - w0[:, None], eigenvalues).mean()
            X0 = rng.standard_normal((T0, d)) * scale
            y0 = X0 @ w_gen + np.sqrt(noise0_var) * rng.standard_normal(T0)
            w_gen = _fit_ridge(X0, y0, 0.0)
    return _summarise(per_trial)


@single_blas_thread()
def simulate_overparameterized_noiseless(w0, T0, generations, trials=50, seed=0):
    """Monte Carlo of E‖w_n − w₀‖² for noiseless minimum-norm refits on T₀ < d isotropic samples (section 3).

    Each refit projects the previous weights on the row space of a fresh Gaussian T₀×d design.
    """
    w0 = np.asarray(w0, dtype=float)
    d = w0.size
    T0 = check_count(T0, "T0")
    generations = check_count(generations, "generations", 0)
    rng = make_generator(seed, stream=2)
    per_trial = np.empty((trials, generations + 1))
    for t in range(trials):
        w_gen = w0.copy()
        for g in range(generations + 1):
            per_trial[t, g] = np.sum((w_gen - w0) ** 2)
            X = rng.standard_normal((T0, d))
            w_gen = _fit_ridge(X, X @ w_gen, 0.0)
    return _summarise(per_trial)
