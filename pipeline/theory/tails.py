"""A Tale of Tails: memorisation under a Zipf law (docs/theory-notes.md, section 2).

Items i = 1..N (N = `support`) have test probabilities p_i ∝ i^(−β), β > 1, and one deterministic answer each.
A learner that memorises every pair it saw in T draws from a training law q has expected test error

    E(T) = Σ_i p_i (1 − q_i)^T.

Training laws q considered (all built by `training_distribution`):
    q = π·p + (1 − π)·q_cut,   q_cut = p^(1/τ) restricted to i ≤ k and renormalised,
with π = clean_fraction, k = cutoff (None: no cut) and τ = temperature (1: none).

Asymptotics (N → ∞): clean E ~ Γ(1 − 1/β)/(β ζ(β)^(1/β)) · T^(−c), c = 1 − 1/β; a cut at k adds the plateau
Σ_{i>k} p_i ≈ k^(−(β−1))/((β−1)ζ(β)); a mixture stalls on it from T ≈ k^β to ≈ k^β/π, then resumes as (πT)^(−c).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gamma, zeta

from pipeline.theory._spectral import check_count, check_real

_CHUNK = 1 << 16  # items per block: keeps the (len(T) × chunk) exponent matrix small
_NEGLIGIBLE_EXPONENT = -700.0  # exp(-700) ≈ 1e-304: blocks whose largest term is below this are skipped


def _check_beta(beta) -> float:
    return check_real(beta, "beta", 1.0, math.inf, low_open=True)


def _partial_zeta(s: float, first: int, last: int) -> float:
    """Σ_{i=first}^{last} i^(−s) via Hurwitz zeta differences (exact up to float rounding, O(1) cost)."""
    if last < first:
        return 0.0
    if s > 1.0:
        return float(zeta(s, first) - zeta(s, last + 1))
    # scipy's Hurwitz zeta is undefined for s <= 1 (possible when temperature >= β): sum directly.
    return float(sum(np.sum(np.arange(lo, min(lo + _CHUNK, last + 1), dtype=float) ** -s)
                     for lo in range(first, last + 1, _CHUNK)))


def _check_law(beta, cutoff, clean_fraction, support, temperature):
    beta = _check_beta(beta)
    support = check_count(support, "support")
    if cutoff is not None:
        cutoff = check_count(cutoff, "cutoff")
        if cutoff > support:
            raise ValueError(f"cutoff must be <= support={support}, got {cutoff}")
    clean_fraction = check_real(clean_fraction, "clean_fraction", 0.0, 1.0)
    temperature = check_real(temperature, "temperature", 0.0, math.inf, low_open=True)
    return beta, cutoff, clean_fraction, support, temperature


def _law_blocks(beta, cutoff, clean_fraction, support, temperature, chunk=_CHUNK):
    """Yield (p, q) on consecutive blocks of items, with normalisers from Hurwitz zeta (no full-length arrays)."""
    beta, cutoff, clean_fraction, support, temperature = _check_law(beta, cutoff, clean_fraction, support,
                                                                      temperature)
    k = support if cutoff is None else cutoff
    beta_gen = beta / temperature
    p_norm = _partial_zeta(beta, 1, support)
    cut_norm = _partial_zeta(beta_gen, 1, k)
    for start in range(1, support + 1, chunk):
        ranks = np.arange(start, min(start + chunk, support + 1), dtype=float)
        log_ranks = np.log(ranks)
        p = np.exp(-beta * log_ranks) / p_norm
        q_cut = np.where(ranks <= k, np.exp(-beta_gen * log_ranks) / cut_norm, 0.0)
        yield p, clean_fraction * p + (1.0 - clean_fraction) * q_cut


def zipf_probabilities(beta, support) -> np.ndarray:
    """p_i = i^(−β)/Σ_{j≤N} j^(−β) for i = 1..N, as one array (for simulation and small supports)."""
    return np.concatenate([p for p, _ in _law_blocks(beta, None, 0.0, support, 1.0)])


def training_distribution(beta, cutoff=None, clean_fraction=0.0, support=10**7, temperature=1.0) -> np.ndarray:
    """q = π·p + (1 − π)·(p^(1/τ) cut at k, renormalised), as one array of length `support`."""
    return np.concatenate([q for _, q in _law_blocks(beta, cutoff, clean_fraction, support, temperature)])


def memorization_error(T, beta, cutoff=None, clean_fraction=0.0, support=10**7, temperature=1.0):
    """E(T) = Σ_i p_i (1 − q_i)^T for the law q described in the module docstring (docs/theory-notes.md §2).

    Vectorised over T (scalar -> float, array -> array of the same shape). Exact float64 summation over the
    support in blocks: (1 − q)^T is evaluated as exp(T·log1p(−q)), which stays accurate for q ≪ 1/T, and blocks
    whose every term is below exp(−700) are skipped (q decreases with i, so only the block's last item counts).
    """
    T_arr = np.asarray(T, dtype=float)
    if np.any(~np.isfinite(T_arr)) or np.any(T_arr < 0):
        raise ValueError(f"T must be finite and >= 0, got {T!r}")
    flat_T = T_arr.ravel()
    total = np.zeros(flat_T.size)
    for p, q in _law_blocks(beta, cutoff, clean_fraction, support, temperature):
        if not np.any(q):  # beyond a hard cut with π = 0: never seen, every item counts fully
            total += p.sum()
            continue
        log_keep = np.log1p(-q)  # log(1 − q_i) <= 0
        # Smallest |log(1 − q)| in the block bounds every term: skip (T, block) pairs that are all negligible.
        live = flat_T * log_keep.max() > _NEGLIGIBLE_EXPONENT
        if not np.any(live):
            continue
        total[live] += np.exp(np.outer(flat_T[live], log_keep)) @ p
    return float(total[0]) if T_arr.ndim == 0 else total.reshape(T_arr.shape)


# ------------------------------------------------------------------------------------------------ helpers


def tail_mass(cutoff, beta, support=None) -> float:
    """Σ_{i>k} p_i: the plateau E(∞) of a learner trained on p cut at k (support None: N = ∞)."""
    beta = _check_beta(beta)
    k = check_count(cutoff, "cutoff", 0)
    if support is None:
        return float(zeta(beta, k + 1) / zeta(beta))
    support = check_count(support, "support")
    return _partial_zeta(beta, k + 1, support) / _partial_zeta(beta, 1, support)


def top_p_cutoff(top_p, beta, support=None) -> int:
    """Nucleus size k for top-p sampling from a Zipf(β) law: the smallest k with Σ_{i≤k} p_i >= top_p.

    Asymptotically k ≈ ((1 − top_p)(β − 1)ζ(β))^(−1/(β−1)) ∝ (1 − top_p)^(−1/(β−1)) (docs/theory-notes.md §2).
    """
    top_p = check_real(top_p, "top_p", 0.0, 1.0, low_open=True)
    beta = _check_beta(beta)
    hi = 10**15 if support is None else check_count(support, "support")  # 10^15: "unbounded" for bisection
    if top_p == 1.0:
        if support is None:
            raise ValueError("top_p must be < 1 for an unbounded support (the nucleus is then infinite)")
        return int(support)
    lo = 0  # invariant: head mass(lo) < top_p <= head mass(hi)
    if 1.0 - tail_mass(hi, beta, support) < top_p:
        raise ValueError(f"top_p={top_p} needs more than {hi} items for beta={beta}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if 1.0 - tail_mass(mid, beta, support) >= top_p:
            hi = mid
        else:
            lo = mid
    return int(hi)


def top_p_cutoff_asymptotic(top_p, beta) -> float:
    """((1 − top_p)(β − 1)ζ(β))^(−1/(β−1)): the large-k approximation of `top_p_cutoff`."""
    top_p = check_real(top_p, "top_p", 0.0, 1.0, low_open=True, high_open=True)
    beta = _check_beta(beta)
    return float(((1.0 - top_p) * (beta - 1.0) * zeta(beta)) ** (-1.0 / (beta - 1.0)))


def temperature_exponent(beta, temperature) -> float:
    """β' = β/τ: sampling at temperature τ from a Zipf(β) law gives a Zipf(β/τ) law (docs/theory-notes.md §2)."""
    return _check_beta(beta) / check_real(temperature, "temperature", 0.0, math.inf, low_open=True)


def temperature_error_exponent(beta, temperature) -> float:
    """Exponent of E ~ T^(−(β−1)/β') when training on the temperature-τ law (β' = β/τ, τ < 1 narrows it)."""
    return (_check_beta(beta) - 1.0) / temperature_exponent(beta, temperature)


def generator_cutoff(T0, beta) -> float:
    """Rank k where a generator that memorised T₀ samples stops knowing items: T₀·p_k = 1, k = (T₀/ζ(β))^(1/β).

    This is the notes' k ~ T₀^(1/β) with the Zipf normaliser made explicit (infinite support).
    """
    T0 = check_real(T0, "T0", 0.0, math.inf, low_open=True)
    beta = _check_beta(beta)
    return float((T0 / zeta(beta)) ** (1.0 / beta))


def clean_error_exponent(beta) -> float:
    """c = 1 − 1/β in E(T) ~ T^(−c) for clean data (docs/theory-notes.md §2)."""
    return 1.0 - 1.0 / _check_beta(beta)


def clean_error_asymptotic(T, beta):
    """Leading term of the clean error, Γ(1 − 1/β)/(β ζ(β)^(1/β)) · T^(−(1−1/β)) (integral approximation)."""
    beta = _check_beta(beta)
    T_arr = np.asarray(T, dtype=float)
    value = gamma(1.0 - 1.0 / beta) / (beta * zeta(beta) ** (1.0 / beta)) * T_arr ** (-(1.0 - 1.0 / beta))
    return float(value) if T_arr.ndim == 0 else value


def plateau_asymptotic(cutoff, beta) -> float:
    """k^(−(β−1))/((β−1)ζ(β)): the large-k approximation of `tail_mass` (the plateau of a cut at k)."""
    beta = _check_beta(beta)
    k = check_real(cutoff, "cutoff", 0.0, math.inf, low_open=True)
    return float(k ** (1.0 - beta) / ((beta - 1.0) * zeta(beta)))


def mixture_plateau_window(cutoff, beta, clean_fraction) -> tuple[float, float]:
    """(T_start, T_end) of the stall of a π-mixture on the plateau (docs/theory-notes.md §2: k^β to k^β/π).

    T_start is where the clean asymptote reaches the plateau, C·T^(−c) = k^(−(β−1))/((β−1)ζ(β)), which is ∝ k^β;
    the clean part π·T then needs T_end = T_start/π to get there.
    """
    pi = check_real(clean_fraction, "clean_fraction", 0.0, 1.0, low_open=True)
    beta = _check_beta(beta)
    prefactor = gamma(1.0 - 1.0 / beta) / (beta * zeta(beta) ** (1.0 / beta))
    t_start = (prefactor / plateau_asymptotic(cutoff, beta)) ** (1.0 / clean_error_exponent(beta))
    return float(t_start), float(t_start / pi)
