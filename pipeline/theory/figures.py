"""Theory-vs-simulation figures, one PNG per result of the theory notes (Agg backend, no display).

Lines are the formulas, markers the Monte Carlo simulations (mean ± standard error). Sizes are chosen so that
all four panels take a few seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from pipeline.theory import iterative, linear, simulate, tails  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markers(ax, x, estimate, color, label=None):
    ax.errorbar(x, estimate.mean, yerr=estimate.stderr, fmt="o", ms=4, color=color, capsize=2, label=label)


def strong_collapse_panel(path: Path, d=40, c2=1.0, noise_var=1.0, fractions=(0.0, 0.05, 0.2, 0.5)) -> Path:
    """(a) Error vs n for several synthetic fractions, Σ = I, λ → 0: every p > 0 plateaus at p²c² (§1)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    n_line = np.geomspace(2 * d, 400 * d, 60)
    n_sim = np.geomspace(2 * d, 100 * d, 5).astype(int)
    delta = np.full(d, c2 / d)
    for color, p in zip(COLORS, fractions):
        ax.plot(n_line, linear.isotropic_mixture_risk(d / n_line, p, c2, noise_var), color=color,
                label=f"p = {p:g}")
        sims = [simulate.simulate_mixture_ridge(np.ones(d), np.zeros(d), delta, int(n), p, 0.0, noise_var,
                                                trials=6, sources=16, seed=int(n)) for n in n_sim]
        _markers(ax, n_sim, simulate.MonteCarloEstimate(np.array([s.mean for s in sims]),
                                                         np.array([s.stderr for s in sims]), 6), color)
        if p > 0:
            ax.axhline(linear.synthetic_floor(p, c2), color=color, ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="training samples n", ylabel="test error  E‖ŵ − w*‖²",
           title="(a) Strong collapse: any fixed p > 0 plateaus at p²c² (dotted)")
    ax.legend(title=f"d = {d}, c² = {c2:g}", fontsize=8)
    return _save(fig, path)


def random_projection_panel(path: Path, d=200, n=80, ridge=1e-3, fractions=(0.0, 0.2, 0.5)) -> Path:
    """(b) Random-projection error vs model size m: peak at m = n; below it, larger m amplifies collapse (§1)."""
    rng = np.random.default_rng(0)
    eigenvalues = np.ones(d)
    w_star = rng.standard_normal(d) / np.sqrt(d)
    delta = np.full(d, 1.0 / d)
    m_line = np.unique(np.r_[np.geomspace(10, 2.5 * d, 22).astype(int), n])
    m_sim = np.array([20, 40, 60, 120, 200, 400])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for color, p in zip(COLORS, fractions):
        theory = [linear.random_projection_risk(eigenvalues, w_star, delta, n, int(m), p, ridge, 0.25, draws=3).total
                  for m in m_line]
        ax.plot(m_line, theory, color=color, label=f"p = {p:g}")
        sims = [simulate.simulate_random_projection(eigenvalues, w_star, delta, n, int(m), p, ridge, 0.25,
                                                    trials=8, sources=8, seed=int(m)) for m in m_sim]
        _markers(ax, m_sim, simulate.MonteCarloEstimate(np.array([s.mean for s in sims]),
                                                         np.array([s.stderr for s in sims]), 8), color)
    ax.axvline(n, color="gray", ls="--", lw=1, label="m = n")
    ax.set(xscale="log", yscale="log", xlabel="model size m (random features)", ylabel="test error",
           title="(b) Random projections: error peaks at m = n;\nbelow it larger m widens the synthetic gap")
    ax.legend(title=f"d = {d}, n = {n}, λ = {ridge:g}", fontsize=8)
    return _save(fig, path)


def tails_panel(path: Path, beta=2.0, cutoff=100, clean_fraction=0.05, support=10**6) -> Path:
    """(c) Memorisation error vs T: clean T^(−c), a tail cut plateaus, a clean mix resumes (§2)."""
    T_line = np.geomspace(10, 1e8, 36)
    T_sim = np.geomspace(100, 1e7, 6).astype(int)
    laws = [("clean (q = p)", dict()),
            (f"cut at k = {cutoff}", dict(cutoff=cutoff)),
            (f"cut + {clean_fraction:g} clean", dict(cutoff=cutoff, clean_fraction=clean_fraction))]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for color, (label, law) in zip(COLORS, laws):
        ax.plot(T_line, tails.memorization_error(T_line, beta, support=support, **law), color=color, label=label)
        sim = simulate.simulate_memorization(T_sim, beta, support=support, trials=4, seed=1, **law)
        _markers(ax, T_sim, sim, color)
    ax.axhline(tails.tail_mass(cutoff, beta, support), color="gray", ls=":", lw=1, label="plateau Σ_{i>k} p_i")
    start, end = tails.mixture_plateau_window(cutoff, beta, clean_fraction)
    ax.axvspan(start, end, color=COLORS[2], alpha=0.08, label="stall window k^β .. k^β/π")
    ax.set(xscale="log", yscale="log", xlabel="training samples T", ylabel="test error E(T)",
           title=f"(c) Tale of tails (β = {beta:g}): a cut tail stalls at k^−(β−1);\n"
                 f"mixing clean data resumes T^−(1−1/β) scaling")
    ax.legend(fontsize=8)
    return _save(fig, path)


def iterated_panel(path: Path, d=40, T0=160, T=160, generations=10) -> Path:
    """(d) Iterated retraining: error grows linearly in the generation for OLS and ridge downstream (§3)."""
    rng = np.random.default_rng(3)
    eigenvalues = np.arange(1, d + 1, dtype=float) ** -1.0
    eigenvalues /= eigenvalues.mean()
    w0 = rng.standard_normal(d) / np.sqrt(d)
    gens = np.arange(generations + 1)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for color, ridge in zip(COLORS, (0.0, 0.1)):
        label = "OLS downstream" if ridge == 0 else f"ridge λ = {ridge:g}"
        theory = iterative.iterated_ridge_risk(eigenvalues, w0, generations, T0, T, 0.5, 0.5, ridge)
        ax.plot(gens, theory, color=color, label=label)
        sim = simulate.simulate_iterated_ridge(eigenvalues, w0, generations, T0, T, 0.5, 0.5, ridge,
                                               trials=12, sources=4, seed=2)
        _markers(ax, gens, sim, color)
    ax.set(xlabel="generation n", ylabel="test error E‖ŵ − w₀‖²_Σ",
           title="(d) Iterated retraining: each generation adds a fixed error\n(linear growth; OLS and ridge)")
    ax.legend(title=f"d = {d}, T₀ = {T0}, T = {T}", fontsize=8)
    return _save(fig, path)


def theory_figures(out_dir) -> list[Path]:
    """Draw the four theory-vs-simulation panels into out_dir (created if needed); returns the PNG paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        strong_collapse_panel(out / "a_strong_collapse.png"),
        random_projection_panel(out / "b_random_projections.png"),
        tails_panel(out / "c_tale_of_tails.png"),
        iterated_panel(out / "d_iterated_retraining.png"),
    ]
