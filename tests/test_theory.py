"""Theory vs Monte Carlo on random valid parameters, plus the limits named in the theory notes.

Every comparison draws its parameters from a seeded Generator, so the tests are deterministic, but nothing is
tuned to one configuration. Tolerances are relative (5% unless said) and each test also checks that the
simulation's own standard error is small enough for the tolerance to mean something.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.theory import (
    clean_error_asymptotic,
    clean_error_exponent,
    generator_cutoff,
    isotropic_mixture_risk,
    iterated_ridge_risk,
    memorization_error,
    mixture_plateau_window,
    mixture_ridge_risk,
    overparameterized_noiseless_risk,
    plateau_asymptotic,
    random_projection_risk,
    simulate_iterated_ridge,
    simulate_memorization,
    simulate_mixture_ridge,
    simulate_overparameterized_noiseless,
    simulate_random_projection,
    simulate_weighted_mixture,
    synthetic_floor,
    tail_mass,
    temperature_error_exponent,
    top_p_cutoff,
    top_p_cutoff_asymptotic,
    weighted_mixture_risk,
    zipf_probabilities,
)

REL_TOL = 0.05


def _random_problem(rng, d):
    """A random spectrum (power law or uniform), target, Δ (diagonal, isotropic or full) and noise levels."""
    if rng.random() < 0.5:
        eigenvalues = np.arange(1, d + 1, dtype=float) ** -rng.uniform(0.5, 1.5)
    else:
        eigenvalues = rng.uniform(0.2, 2.0, d)
    eigenvalues /= eigenvalues.mean()
    w_star = rng.standard_normal(d) * rng.uniform(0.5, 1.5) / np.sqrt(d)
    kind = rng.integers(3)
    c2 = rng.uniform(0.5, 3.0)
    if kind == 0:
        delta = c2 * rng.uniform(0.5, 1.5, d) / (d * eigenvalues)  # spread over the spectrum
    elif kind == 1:
        delta = np.full(d, c2 / d)
    else:
        root = rng.standard_normal((d, d)) / np.sqrt(d)
        delta = c2 * root @ root.T / d
    return eigenvalues, w_star, delta, rng.uniform(0.2, 1.0), rng.uniform(0.2, 2.0)


def _assert_close(simulated, theory, rel_tol=REL_TOL):
    assert simulated.stderr < rel_tol / 2.5 * theory, "simulation too noisy for the tolerance to be meaningful"
    assert abs(simulated.mean - theory) <= rel_tol * theory, (simulated.mean, simulated.stderr, theory)


# ------------------------------------------------------------------------------ §1 ridge on a mixture


@pytest.mark.parametrize("case", range(4))
def test_mixture_risk_matches_simulation_on_random_parameters(case):
    rng = np.random.default_rng(100 + case)
    d = int(rng.integers(200, 301))
    n = 2 * d
    eigenvalues, w_star, delta, noise_var, synthetic_noise_var = _random_problem(rng, d)
    p2 = round(rng.uniform(0.05, 0.9) * n) / n
    ridge = 0.0 if case == 0 else float(10 ** rng.uniform(-3, -0.5))
    theory = mixture_ridge_risk(eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var)
    assert theory.total == pytest.approx(theory.bias + theory.variance + theory.synthetic)
    sim = simulate_mixture_ridge(eigenvalues, w_star, delta, n, p2, ridge, noise_var, synthetic_noise_var,
                                 trials=24, sources=32, seed=case)
    _assert_close(sim, theory.total)


def test_simulation_can_tell_the_mixing_term_apart():
    """The test above has power: dropping the p₁p₂u term of ζ moves the prediction well outside the tolerance."""
    d, n, p2 = 200, 400, 0.5
    eigenvalues, w_star, delta = np.ones(d), np.zeros(d), np.full(d, 2.0 / d)
    full = mixture_ridge_risk(eigenvalues, w_star, delta, n, p2, 0.0, noise_var=0.1)
    sim = simulate_mixture_ridge(eigenvalues, w_star, delta, n, p2, 0.0, 0.1, trials=12, sources=32, seed=7)
    without_mixing = full.variance + p2**2 * 2.0  # floor only, as if the finite-n term did not exist
    _assert_close(sim, full.total)
    assert abs(sim.mean - without_mixing) > 3 * REL_TOL * full.total


def test_zero_fraction_is_clean_ridge_and_ignores_delta():
    rng = np.random.default_rng(1)
    d, n = 250, 500
    eigenvalues, w_star, delta, noise_var, _ = _random_problem(rng, d)
    clean = mixture_ridge_risk(eigenvalues, w_star, delta, n, 0.0, 0.05, noise_var)
    huge_delta = mixture_ridge_risk(eigenvalues, w_star, 1e6 * np.ones(d), n, 0.0, 0.05, noise_var,
                                    synthetic_noise_var=1e6)
    assert clean.synthetic == 0.0
    assert huge_delta.total == pytest.approx(clean.total, rel=1e-12)
    sim = simulate_mixture_ridge(eigenvalues, w_star, 1e6 * np.ones(d), n, 0.0, 0.05, noise_var, 1e6,
                                 trials=16, sources=16, seed=3)
    _assert_close(sim, clean.total)


def test_isotropic_closed_form_is_the_general_formula_at_zero_ridge():
    d, c2 = 120, 1.7
    for n, p2 in [(150, 0.1), (400, 0.5), (2000, 0.9)]:
        general = mixture_ridge_risk(np.ones(d), np.ones(d), np.full(d, c2 / d), n, p2, 0.0, noise_var=0.3)
        assert general.total == pytest.approx(isotropic_mixture_risk(d / n, p2, c2, 0.3), rel=1e-10)


def test_isotropic_error_plateaus_at_p_squared_c2():
    c2, p2, d = 2.0, 0.2, 30
    risks = [isotropic_mixture_risk(d / n, p2, c2) for n in (10**3, 10**5, 10**7)]
    assert risks[0] > risks[1] > risks[2] > synthetic_floor(p2, c2)
    assert risks[2] == pytest.approx(p2**2 * c2, rel=1e-3)
    # The simulation at large n sits on the plateau too, not on the clean curve (which would be ~0.005).
    sim = simulate_mixture_ridge(np.ones(d), np.zeros(d), np.full(d, c2 / d), 6000, p2, 0.0, trials=16,
                                 sources=32, seed=5)
    _assert_close(sim, isotropic_mixture_risk(d / 6000, p2, c2))
    assert sim.mean > 10 * isotropic_mixture_risk(d / 6000, 0.0, c2)


@pytest.mark.parametrize("case", range(2))
def test_weighted_mixing_matches_simulation(case):
    rng = np.random.default_rng(200 + case)
    d = int(rng.integers(60, 121))
    n = int(d / rng.uniform(0.1, 0.3))
    p2, weight, c2 = rng.uniform(0.2, 0.7), rng.uniform(0.0, 1.0), rng.uniform(0.5, 3.0)
    p2 = round(p2 * n) / n
    theory = weighted_mixture_risk(d / n, p2, weight, c2, noise_var=0.5, synthetic_noise_var=1.5)
    sim = simulate_weighted_mixture(d, n, p2, weight, c2, 0.5, 1.5, trials=30, sources=32, seed=case)
    _assert_close(sim, theory)


def test_weighted_mixing_limits():
    # a = p₂ is plain mixing; small φ approaches the notes' form; φ → 0 leaves the floor a²c².
    assert weighted_mixture_risk(0.3, 0.4, 0.4, 2.0) == pytest.approx(isotropic_mixture_risk(0.3, 0.4, 2.0))
    notes = weighted_mixture_risk(1e-3, 0.3, 0.1, 1.0, form="notes")
    assert weighted_mixture_risk(1e-3, 0.3, 0.1, 1.0) == pytest.approx(notes, rel=0.02)
    assert weighted_mixture_risk(1e-7, 0.3, 0.1, 1.0) == pytest.approx(0.1**2, rel=1e-3)


# ----------------------------------------------------------------------------------- random projections


@pytest.mark.parametrize("case", range(2))
def test_random_projection_matches_simulation(case):
    rng = np.random.default_rng(300 + case)
    d, n = 200, 100
    eigenvalues = rng.uniform(0.5, 1.5, d)
    w_star = rng.standard_normal(d) / np.sqrt(d)
    delta = np.full(d, rng.uniform(0.5, 2.0) / d)
    p2, ridge = rng.uniform(0.1, 0.6), float(10 ** rng.uniform(-2, -0.5))
    for m in (40, 170, 300):
        theory = random_projection_risk(eigenvalues, w_star, delta, n, m, p2, ridge, 0.25, draws=12, seed=case)
        sim = simulate_random_projection(eigenvalues, w_star, delta, n, m, p2, ridge, 0.25, trials=24,
                                         sources=8, seed=case)
        _assert_close(sim, theory.total)


def test_random_projection_peaks_at_interpolation_threshold():
    rng = np.random.default_rng(4)
    d, n = 300, 100
    w_star = rng.standard_normal(d) / np.sqrt(d)
    delta = np.full(d, 1.0 / d)
    sizes = np.array([20, 50, 80, 95, 100, 105, 120, 200, 300])

    def risks(p):
        return np.array([random_projection_risk(np.ones(d), w_star, delta, n, int(m), p, 1e-4, 0.25, draws=4).total
                         for m in sizes])

    clean, mixed = risks(0.0), risks(0.2)
    assert sizes[np.argmax(clean)] == n and sizes[np.argmax(mixed)] == n
    gap = mixed - clean
    below, above = sizes < n, sizes > n
    assert np.all(np.diff(gap[below]) > 0), "below m = n larger models amplify collapse"
    assert np.all(np.diff(gap[above]) < 0) and np.all(gap > 0), "above it they mitigate but never remove it"


# -------------------------------------------------------------------------------------- §2 Tale of Tails


@pytest.mark.parametrize("law", [{}, {"cutoff": 50}, {"cutoff": 50, "clean_fraction": 0.1}, {"temperature": 0.8}])
def test_memorization_matches_simulation(law):
    beta, support = 1.8, 10**5
    T = np.array([300, 3_000, 30_000, 300_000])
    theory = memorization_error(T, beta, support=support, **law)
    sim = simulate_memorization(T, beta, support=support, trials=40, seed=11, **law)
    assert np.all(sim.stderr < 0.02 * theory)
    np.testing.assert_allclose(sim.mean, theory, rtol=REL_TOL)


def test_clean_memorization_scales_with_exponent_one_minus_one_over_beta():
    rng = np.random.default_rng(5)
    for beta in rng.uniform(1.7, 3.0, 2):
        T = np.geomspace(1e3, 1e5, 5)
        error = memorization_error(T, beta, support=10**7)
        slope = np.polyfit(np.log(T), np.log(error), 1)[0]
        assert slope == pytest.approx(-clean_error_exponent(beta), abs=0.02)
        np.testing.assert_allclose(error, clean_error_asymptotic(T, beta), rtol=0.05)


def test_tail_cut_plateaus_at_the_tail_mass():
    beta, k, support = 2.2, 300, 10**6
    late = memorization_error(np.array([1e9, 1e10]), beta, cutoff=k, support=support)
    np.testing.assert_allclose(late, tail_mass(k, beta, support), rtol=1e-9)
    assert tail_mass(k, beta) == pytest.approx(plateau_asymptotic(k, beta), rel=0.01)
    early = memorization_error(10.0, beta, cutoff=k, support=support)
    assert early == pytest.approx(memorization_error(10.0, beta, support=support), rel=0.01)


def test_mixture_stalls_then_resumes_clean_scaling():
    beta, k, pi, support = 2.0, 30, 0.05, 10**6
    start, end = mixture_plateau_window(k, beta, pi)
    plateau = tail_mass(k, beta, support)
    inside = memorization_error(np.sqrt(start * end), beta, cutoff=k, clean_fraction=pi, support=support)
    assert 0.5 * plateau < inside < 1.5 * plateau
    late_T = 1e3 * end
    mixed = memorization_error(late_T, beta, cutoff=k, clean_fraction=pi, support=support)
    assert mixed < 0.2 * plateau
    assert mixed == pytest.approx(memorization_error(pi * late_T, beta, support=support), rel=0.05)


def test_temperature_changes_the_exponent():
    beta, tau = 2.0, 0.7
    T = np.geomspace(1e4, 1e6, 5)
    error = memorization_error(T, beta, temperature=tau, support=10**6)
    slope = np.polyfit(np.log(T), np.log(error), 1)[0]
    assert slope == pytest.approx(-temperature_error_exponent(beta, tau), abs=0.03)


def test_cutoff_helpers():
    beta, support = 1.6, 10**5
    cumulative = np.cumsum(zipf_probabilities(beta, support))
    for top_p in (0.5, 0.9, 0.99):
        k = top_p_cutoff(top_p, beta, support)
        assert cumulative[k - 1] >= top_p > cumulative[k - 2]
    assert top_p_cutoff(0.999, 2.0) == pytest.approx(top_p_cutoff_asymptotic(0.999, 2.0), rel=0.01)
    k = generator_cutoff(1e6, 2.0)
    assert 1e6 * (k**-2.0 / (np.pi**2 / 6)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ §3 iterated retraining


@pytest.mark.parametrize("log10_ridge_range", [None, (-2.0, -1.0), (-0.5, 0.0)])
def test_iterated_retraining_grows_linearly_like_simulation(log10_ridge_range):
    """OLS (exact form) and ridge; at larger ridge the uκ²tr(Σ+κI)⁻² part of ρ is 5-15% of the slope."""
    rng = np.random.default_rng(17 if log10_ridge_range is None else 18 + int(log10_ridge_range[1]))
    d = int(rng.integers(40, 71))
    T0, T = int(rng.integers(3 * d, 4 * d)), int(rng.integers(3 * d, 4 * d))
    ridge = 0.0 if log10_ridge_range is None else float(10 ** rng.uniform(*log10_ridge_range))
    eigenvalues = np.arange(1, d + 1, dtype=float) ** -rng.uniform(0.5, 1.5)
    eigenvalues /= eigenvalues.mean()
    w0 = rng.standard_normal(d) / np.sqrt(d)
    noise0_var, noise_var = rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)
    generations = 6
    theory = iterated_ridge_risk(eigenvalues, w0, generations, T0, T, noise0_var, noise_var, ridge)
    sim = simulate_iterated_ridge(eigenvalues, w0, generations, T0, T, noise0_var, noise_var, ridge,
                                  trials=200, sources=4, seed=1)  # slope sd ≈ 1.2% at 200 trials
    gens = np.arange(generations + 1)
    theory_slope, theory_intercept = np.polyfit(gens, theory, 1)
    sim_slope, sim_intercept = np.polyfit(gens, sim.mean, 1)
    assert sim_slope == pytest.approx(theory_slope, rel=REL_TOL)
    assert sim_intercept == pytest.approx(theory_intercept, rel=REL_TOL)
    assert np.all(np.abs(sim.mean - theory) < 4 * sim.stderr + 0.02 * theory)


def test_overparameterized_noiseless_collapse_is_exponential():
    rng = np.random.default_rng(9)
    d, T0, generations = 150, 90, 6
    w0 = rng.standard_normal(d)
    theory = overparameterized_noiseless_risk(float(w0 @ w0), T0, d, generations)
    sim = simulate_overparameterized_noiseless(w0, T0, generations, trials=40, seed=2)
    np.testing.assert_allclose(sim.mean[1:], theory[1:], rtol=REL_TOL)
    remaining = np.log(1 - theory[1:] / (w0 @ w0))
    np.testing.assert_allclose(np.diff(remaining), np.log(T0 / d))


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("call, argument", [
    (lambda: mixture_ridge_risk([1.0, -1.0], [0, 0], [0, 0], 10, 0.1, 0.1), "eigenvalues"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0, 0], [0, 0], 10, 0.1, 0.1), "w_star"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [[1, 2], [0, 1]], 10, 0.1, 0.1), "delta"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [0, 0], 0, 0.1, 0.1), "n"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [0, 0], 10, 1.5, 0.1), "synthetic_fraction"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [0, 0], 10, 0.1, -1.0), "ridge"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [0, 0], 2, 0.1, 0.0), "ridge=0"),
    (lambda: mixture_ridge_risk([1.0, 1.0], [0, 0], [0, 0], 10, 0.1, 0.1, noise_var=-1), "noise_var"),
    (lambda: isotropic_mixture_risk(1.2, 0.1, 1.0), "phi"),
    (lambda: weighted_mixture_risk(0.1, 0.3, 1.5, 1.0), "weight"),
    (lambda: random_projection_risk([1.0] * 4, [0] * 4, [0] * 4, 10, 0, 0.1, 0.1), "m"),
    (lambda: memorization_error(10, 0.9), "beta"),
    (lambda: memorization_error(-1, 2.0, support=100), "T"),
    (lambda: memorization_error(10, 2.0, cutoff=500, support=100), "cutoff"),
    (lambda: memorization_error(10, 2.0, clean_fraction=2.0, support=100), "clean_fraction"),
    (lambda: top_p_cutoff(0.0, 2.0), "top_p"),
    (lambda: iterated_ridge_risk([1.0] * 5, [0] * 5, 3, 5, 50, 1.0, 1.0, 0.0), "T0"),
    (lambda: overparameterized_noiseless_risk(1.0, 20, 10, 3), "T0"),
])
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# ------------------------------------------------------------------------------------------------- CLI


def _theory_args(argv):
    import argparse

    from pipeline.theory import cli

    parser = argparse.ArgumentParser(prog="collapse")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return cli, parser.parse_args(["theory", *argv])


def test_cli_prints_predictions_and_draws_the_figures(tmp_path, capsys):
    cli, args = _theory_args(["--out", str(tmp_path), "--phi", "0.1", "--fraction", "0", "0.2", "--c2", "2"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert f"{isotropic_mixture_risk(0.1, 0.2, 2.0):.4g}" in out and f"{synthetic_floor(0.2, 2.0):.4g}" in out
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 10_000 for p in pngs)


def test_cli_rejects_bad_values_with_exit_code_2(capsys):
    cli, args = _theory_args(["--no-figures", "--fraction", "1.5"])
    assert cli.run(args) == 2
    assert "synthetic_fraction" in capsys.readouterr().err
