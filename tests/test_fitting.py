"""Fits recover known parameters from synthetic noisy data; degrade gracefully and say so; reject bad input.

Coverage of every 95% interval is measured in tests/test_coverage.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import least_squares
from scipy.stats import ttest_ind

from pipeline.analysis.fitting import finite_rows, fit_scaling_curves, fit_tail_model, predicted_tail_cutoff
from pipeline.analysis.power_law import SHARES, PowerLaw
from pipeline.analysis.prediction import gap_trends, identification, measured_gaps, predict_heldout
from pipeline.analysis.theory_fit import fit_linear_theory
from pipeline.theory import generator_cutoff, tail_mass, top_p_cutoff, zipf_probabilities


def _curves(rng, fractions, budgets, seeds, clean_loss, c2, amplitude, alpha, noise, alphas=None):
    """Rows of L_p(n) = E_0 + p²c² + A·n^(−α_p), with multiplicative log-normal noise."""
    rows = []
    for p in fractions:
        a = alpha if alphas is None else alphas[p]
        for n in budgets:
            for s in range(seeds):
                loss = (clean_loss + p**2 * c2 + amplitude * n ** (-a)) * np.exp(noise * rng.standard_normal())
                rows.append({"synthetic_fraction": p, "token_budget": int(n), "seed": s, "loss": float(loss)})
    return rows


def _random_truth(rng):
    alpha = rng.uniform(0.3, 0.8)
    budgets = np.geomspace(1e5, 1e8, 7)
    amplitude = rng.uniform(1.0, 3.0) * budgets[0] ** alpha  # excess of 1-3 nats at the smallest budget
    return alpha, budgets, amplitude, rng.uniform(1.5, 3.0), rng.uniform(0.5, 2.0)


def _law_rows(rng, plateaus, amplitudes, alpha, budgets, seeds, sd=0.02):
    """Rows of L_p(n) = E_p + A_p·n^(−α) with additive seed noise of `sd` nats."""
    return [{"unit": f"p{p:g}-n{n}-s{s}", "synthetic_fraction": p, "token_budget": int(n), "seed": s,
             "loss": float(plateaus[p] + amplitudes[p] * n ** -alpha + sd * rng.standard_normal())}
            for p in plateaus for n in budgets for s in range(seeds)]


GROWING = {"plateaus": {0.0: 3.8, 0.5: 3.865, 1.0: 3.93}, "amplitudes": {0.0: 23.9, 0.5: 22.8, 1.0: 21.76},
           "alpha": 0.4}  # the gap at p = 1 grows from 0.076 at n = 10k to 0.112 at 160k
BUDGETS = (10_000, 20_000, 40_000, 80_000, 160_000)


@pytest.mark.parametrize("case", range(3))
def test_fit_recovers_plateaus_amplitudes_and_exponent(case):
    rng = np.random.default_rng(case)
    alpha, budgets, amplitude, clean_loss, c2 = _random_truth(rng)
    fractions = [0.0, 0.1, 0.3, 0.6]
    rows = _curves(rng, fractions, budgets, 3, clean_loss, c2, amplitude, alpha, noise=0.003)
    result = fit_scaling_curves(rows, bootstrap=100, seed=case)
    json.dumps(result, allow_nan=False)
    assert result["share"] == "exponent" and result["noise"]["dof"] == len(fractions) * len(budgets) * 2
    assert result["alpha"] == pytest.approx(alpha, rel=0.05)
    assert result["alpha_ci"][0] <= result["alpha"] <= result["alpha_ci"][1]
    for p in fractions:
        entry = result["per_fraction"][f"{p:g}"]
        assert entry["E"] == pytest.approx(clean_loss + p**2 * c2, rel=0.01)
        assert entry["A"] == pytest.approx(amplitude, rel=0.3)  # A and α co-vary: A is the loose one
        assert entry["points"] == len(budgets) * 3 and entry["alpha"] == result["alpha"]
    assert result["n_rows"] == len(rows) and result["n_cells"] == len(fractions) * len(budgets)
    assert result["fractions"] == fractions
    assert np.shape(result["plateau_draws"]) == (100, len(fractions))  # joint draws, columns in "fractions" order
    for p in fractions[1:]:
        entry = result["per_fraction"][f"{p:g}"]
        assert entry["gap"] == pytest.approx(p**2 * c2, abs=0.02 * clean_loss)
        assert entry["gap_ci"][0] <= entry["gap"] <= entry["gap_ci"][1]


@pytest.mark.parametrize("share", SHARES)
def test_grid_search_finds_the_least_squares_minimum(share):
    """The grid search in α with closed-form E_p, A_p reaches the best of a multi-start scipy fit, for every form."""
    rng = np.random.default_rng(3)
    fractions, budgets = np.repeat(np.arange(3), 5), np.tile(np.array(BUDGETS, dtype=float), 3)
    seeds = np.full(15, 2.0)
    means = np.array([3.8, 3.86, 3.93])[fractions] + np.array([23.9, 22.8, 21.8])[fractions] * budgets ** -0.4
    means = means + 0.014 * rng.standard_normal(15)
    law = PowerLaw(fractions, budgets, seeds, 3, share)
    fitted = law.fit(means)
    groups = 3 if share == "nothing" else 1
    amplitudes = 1 if share == "exponent_and_amplitude" else 3

    def residual(theta):
        params = {"plateau": theta[:3], "amplitude": np.resize(theta[3:3 + amplitudes], 3),
                  "alpha": np.resize(theta[3 + amplitudes:], 3)}
        return np.sqrt(seeds) * (law.curve(params, budgets, fractions) - means)

    best = min((least_squares(residual, np.r_[np.full(3, 3.5), np.full(amplitudes, 0.5), np.full(groups, a)],
                              method="lm", max_nfev=20_000) for a in (0.1, 0.3, 0.7, 1.5)), key=lambda r: r.cost)
    assert fitted["rss"] <= 2 * best.cost * (1 + 1e-6)
    assert fitted["alpha"][:groups] == pytest.approx(best.x[-groups:], rel=1e-3)


def test_one_amplitude_is_used_only_where_the_f_test_does_not_reject_it():
    growing = _law_rows(np.random.default_rng(4), GROWING["plateaus"], GROWING["amplitudes"], GROWING["alpha"],
                        BUDGETS, 5, sd=0.005)
    result = fit_scaling_curves(growing, share="exponent_and_amplitude", bootstrap=50)
    assert result["amplitude_test"]["p_value"] < 0.05 and result["share"] == "exponent"
    assert "one amplitude for every curve is rejected" in result["warning"]
    constant = _law_rows(np.random.default_rng(4), GROWING["plateaus"], dict.fromkeys(GROWING["plateaus"], 23.9),
                         GROWING["alpha"], BUDGETS, 5, sd=0.005)
    result = fit_scaling_curves(constant, share="exponent_and_amplitude", bootstrap=50)
    assert result["amplitude_test"]["p_value"] > 0.05 and result["share"] == "exponent_and_amplitude"
    assert "one amplitude kept for every curve" in result["warning"]  # and what that costs when the gap does grow
    assert result["A"] == pytest.approx(23.9, rel=0.5) and result["per_fraction"]["1"]["A"] == result["A"]


def test_unshared_fit_recovers_per_fraction_exponents():
    rng = np.random.default_rng(5)
    alphas = {0.0: 0.3, 0.5: 0.6}
    budgets = np.geomspace(1e5, 1e8, 8)
    rows = _curves(rng, list(alphas), budgets, 2, 2.0, 1.0, 200.0, None, noise=0.002, alphas=alphas)
    result = fit_scaling_curves(rows, share="nothing", bootstrap=30)
    assert result["alpha"] is None and result["share"] == "nothing" and result["amplitude_test"] is None
    for p, a in alphas.items():
        entry = result["per_fraction"][f"{p:g}"]
        assert entry["alpha"] == pytest.approx(a, rel=0.1)
        assert entry["alpha_ci"][0] < entry["alpha"] < entry["alpha_ci"][1]


def test_two_budgets_still_fit_and_warn_about_the_plateau():
    rng = np.random.default_rng(6)
    alpha, _, amplitude, clean_loss, c2 = _random_truth(rng)
    rows = _curves(rng, [0.0, 0.2, 0.5], [1e5, 1e7], 1, clean_loss, c2, amplitude, alpha, noise=0.003)
    result = fit_scaling_curves(rows, bootstrap=20)
    assert "fewer than 3 distinct budgets" in result["warning"]
    assert result["noise"] is None and result["per_fraction"]["0"]["E_ci"] is None  # no spare degree of freedom
    assert all(np.isfinite(entry["E"]) for entry in result["per_fraction"].values())
    json.dumps(result, allow_nan=False)


def test_one_seed_per_cell_takes_the_noise_from_the_residuals():
    rows = _law_rows(np.random.default_rng(7), GROWING["plateaus"], GROWING["amplitudes"], GROWING["alpha"],
                     BUDGETS, 1)
    result = fit_scaling_curves(rows, bootstrap=50)
    assert result["noise"]["source"].startswith("residual") and result["noise"]["dof"] == 15 - 7
    assert result["lack_of_fit"] is None and result["per_fraction"]["1"]["gap_ci"] is not None


def test_finite_rows_leave_out_a_diverged_run_by_unit():
    rows = _law_rows(np.random.default_rng(8), GROWING["plateaus"], GROWING["amplitudes"], GROWING["alpha"],
                     BUDGETS, 2)
    rows[3]["loss"], rows[7]["loss"], rows[9]["loss"] = float("nan"), float("inf"), None
    kept, left_out = finite_rows(rows)
    assert left_out == [rows[3]["unit"], rows[7]["unit"], rows[9]["unit"]] and len(kept) == len(rows) - 3
    json.dumps(fit_scaling_curves(kept, bootstrap=20), allow_nan=False)


def test_heldout_prediction_is_close_and_says_how_it_was_made():
    rows = _law_rows(np.random.default_rng(9), GROWING["plateaus"], GROWING["amplitudes"], GROWING["alpha"],
                     BUDGETS, 3)
    result = predict_heldout(rows)
    assert result["made"] and result["heldout_budget"] == 160_000 and result["fitted_budgets"] == list(BUDGETS[:-1])
    assert result["noise_dof"] == 3 * 4 * 2 and result["share"] == "exponent"
    for p, entry in result["per_fraction"].items():
        truth = GROWING["plateaus"][float(p)] + GROWING["amplitudes"][float(p)] * 160_000 ** -GROWING["alpha"]
        assert entry["predicted"] == pytest.approx(truth, abs=0.05)
        assert entry["interval"][0] < entry["curve_interval"][0] < entry["predicted"] < entry["curve_interval"][1] \
            < entry["interval"][1]  # the prediction interval adds the new seeds' noise to the curve's


def test_heldout_prediction_needs_four_budgets_and_says_so():
    rng = np.random.default_rng(11)
    rows = _curves(rng, [0.0, 0.5], [1e5, 2e5, 4e5], 2, 2.0, 1.0, 100.0, 0.5, noise=0.002)
    result = predict_heldout(rows)
    assert result["made"] is False and set(result["skipped"]) == {"0", "0.5"}
    assert "3 budget(s)" in result["skipped"]["0"]


def test_identification_needs_budgets_a_flattened_curve_and_a_narrow_interval():
    rng = np.random.default_rng(12)
    rows = _law_rows(rng, {0.0: 3.8, 0.5: 4.0}, {0.0: 23.9, 0.5: 23.9}, 0.4, BUDGETS, 3, sd=0.002)
    status = identification(rows, fit_scaling_curves(rows, bootstrap=100))
    assert status["identified"] is True and "flattened" in status["rule"]
    few = [r for r in rows if r["synthetic_fraction"] == 0.0 or r["token_budget"] in (10_000, 160_000)]
    status = identification(few, fit_scaling_curves(few, bootstrap=100))
    assert status["per_fraction"]["0"]["identified"] and not status["per_fraction"]["0.5"]["identified"]
    assert "2 budget(s) (n = 10,000, 160,000)" in status["per_fraction"]["0.5"]["missing"]
    steep = _law_rows(rng, {0.0: 3.0, 0.5: 3.2}, {0.0: 60.0, 0.5: 60.0}, 0.15, BUDGETS, 3, sd=0.002)
    status = identification(steep, fit_scaling_curves(steep, bootstrap=100))
    assert "has not flattened" in status["per_fraction"]["0"]["missing"]
    assert "clean plateau E_0 it is compared with is not identified" in status["per_fraction"]["0.5"]["missing"]
    noisy = _law_rows(rng, {0.0: 3.8, 0.5: 3.81}, {0.0: 23.9, 0.5: 23.9}, 0.4, BUDGETS, 2, sd=0.02)
    status = identification(noisy, fit_scaling_curves(noisy, bootstrap=100))
    assert "95% interval is too wide" in status["per_fraction"]["0.5"]["missing"]
    assert identification(rows, fit_scaling_curves(rows, bootstrap=0))["identified"]  # intervals need no draws
    bare = [r for r in rows if r["synthetic_fraction"] == 0.0 and r["seed"] == 0 and r["token_budget"] <= 40_000]
    assert "no interval" in identification(bare, fit_scaling_curves(bare))["per_fraction"]["0"]["missing"]


def test_measured_gap_is_the_welch_interval_with_holm_over_fractions():
    rows = [{"synthetic_fraction": p, "token_budget": 100, "seed": s, "loss": 3.0 + p + 0.01 * s * (1 + p)}
            for p in (0.0, 0.1, 0.5) for s in range(3)]
    gaps = measured_gaps(rows)
    values = lambda p: [r["loss"] for r in rows if r["synthetic_fraction"] == p]
    for p, key in ((0.1, "0.1"), (0.5, "0.5")):
        welch = ttest_ind(values(p), values(0.0), equal_var=False)
        assert gaps[key]["gap_ci"] == pytest.approx(list(welch.confidence_interval(0.95)))
        assert gaps[key]["dof"] == pytest.approx(welch.df)
        one_sided = ttest_ind(values(p), values(0.0), equal_var=False, alternative="greater").pvalue
        assert gaps[key]["p_value"] == pytest.approx(one_sided)
    smaller, larger = sorted((gaps["0.1"]["p_value"], gaps["0.5"]["p_value"]))
    assert min(gaps["0.1"]["p_holm"], gaps["0.5"]["p_holm"]) == pytest.approx(2 * smaller)
    assert max(gaps["0.1"]["p_holm"], gaps["0.5"]["p_holm"]) == pytest.approx(max(2 * smaller, larger))
    one_seed = measured_gaps([r for r in rows if r["seed"] == 0])
    assert one_seed["0.5"]["gap_ci"] is None and one_seed["0.5"]["p_holm"] is None


@pytest.mark.parametrize("gap_amplitude, verdict", [(-2.14, "grows"), (0.0, "holds"), (2.14, "shrinks")])
def test_gap_trend_says_whether_the_gap_grows_holds_or_shrinks(gap_amplitude, verdict):
    rows = _law_rows(np.random.default_rng(13), {0.0: 3.8, 1.0: 3.93}, {0.0: 23.9, 1.0: 23.9 + gap_amplitude},
                     0.4, BUDGETS, 3, sd=0.005)
    trend = gap_trends(rows)["per_fraction"]["1"]
    assert trend["verdict"] == verdict and trend["budgets"] == list(BUDGETS)
    assert set(trend["gaps"]) == {str(n) for n in BUDGETS}
    assert trend["slope_ci"][0] <= trend["slope_per_doubling"] <= trend["slope_ci"][1]
    one_seed = gap_trends([r for r in rows if r["seed"] == 0])["per_fraction"]["1"]
    assert one_seed["slope_ci"] is not None  # from the residuals of the line


def test_tail_model_recovers_zipf_exponent_from_sampled_counts():
    rng = np.random.default_rng(9)
    for beta in rng.uniform(1.5, 2.5, 3):
        counts = rng.multinomial(10**6, zipf_probabilities(beta, 10**5))
        result = fit_tail_model({f"item{i}": c for i, c in enumerate(counts)})
        assert result["beta"] == pytest.approx(beta, rel=0.04)
        assert result["r2"] > 0.99


def test_predicted_tail_cutoff_links_to_the_tails_formulas():
    result = predicted_tail_cutoff(1.5, top_p=0.95, teacher_tokens=1e9, clean_fraction=0.1)
    assert result["cutoffs"]["top_p"] == top_p_cutoff(0.95, 1.5)
    assert result["cutoffs"]["teacher_tokens"] == round(generator_cutoff(1e9, 1.5))
    assert result["cutoff"] == min(result["cutoffs"].values())
    assert result["plateau"] == pytest.approx(tail_mass(result["cutoff"], 1.5))
    assert result["stall_window"][1] == pytest.approx(10 * result["stall_window"][0])


@pytest.mark.parametrize("rows, message", [
    ([], "rows"),
    ([{"synthetic_fraction": 0.1, "token_budget": 10, "seed": 0}], "loss"),
    ([{"synthetic_fraction": 0.1, "token_budget": "many", "seed": 0, "loss": 1.0}], "token_budget"),
    ([{"synthetic_fraction": 0.1, "token_budget": 10, "seed": 0, "loss": -1.0}], "loss"),
    ([{"synthetic_fraction": 1.5, "token_budget": 10, "seed": 0, "loss": 1.0}], "synthetic_fraction"),
])
def test_bad_rows_raise_value_error_naming_the_field(rows, message):
    with pytest.raises(ValueError, match=message):
        fit_scaling_curves(rows)


def test_other_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="clean fraction"):
        fit_linear_theory({0.2: 1.0, 0.5: 1.2})
    with pytest.raises(ValueError, match="rank_window"):
        fit_tail_model([5, 3, 1], rank_window=(1, 10))
    with pytest.raises(ValueError, match="bootstrap"):
        fit_scaling_curves([{"synthetic_fraction": 0, "token_budget": 10, "seed": 0, "loss": 1.0}], bootstrap=-1)


def test_excess_exponent_recovers_a_known_power_law_and_its_seed_interval():
    from pipeline.analysis.prediction import excess_exponents

    entropy, rng = 3.0, np.random.default_rng(0)
    rows = [{"synthetic_fraction": p, "token_budget": n, "seed": s, "loss": entropy + excess,
             "excess_loss": excess}
            for p, exponent in ((0.0, 0.25), (1.0, 0.5)) for n in (10_000, 20_000, 40_000, 80_000)
            for s in range(3) for excess in [5.0 * n ** -exponent * float(np.exp(rng.normal(0, 0.01)))]]
    found = excess_exponents(rows)
    assert found["0"]["exponent"] == pytest.approx(0.25, abs=0.02) and found["1"]["exponent"] == pytest.approx(0.5, abs=0.02)
    assert found["0"]["ci"][0] < 0.25 < found["0"]["ci"][1] and found["0"]["budgets"] == 4
    assert excess_exponents([{**r, "excess_loss": None} for r in rows]) == {}  # no exact entropy: nothing claimed


@pytest.mark.parametrize("share", ["exponent", "nothing"])
def test_where_a_bound_binds_every_estimate_lies_inside_its_interval(share):
    """A decline that accelerates with n (as the Wikipedia study's did) has its unconstrained best fit at a negative
    plateau; the point fit stops at the bound, and its intervals must still hold it."""
    rng = np.random.default_rng(3)
    rows = [{"unit": f"p{p:g}-n{n}-s{s}", "synthetic_fraction": p, "token_budget": n, "seed": s,
             "loss": float(7.0 + 0.1 * p - 0.03 * np.log2(n / 10_000) ** 2 + 0.01 * rng.standard_normal())}
            for p in (0.0, 0.5) for n in BUDGETS for s in range(2)]
    result = fit_scaling_curves(rows, share=share, bootstrap=20)
    assert result["lack_of_fit"]["p_value"] < 0.01  # the law cannot describe it: the case the bound matters in
    for fitted in result["per_fraction"].values():
        alpha, alpha_ci = (fitted["alpha"], fitted["alpha_ci"]) if share == "nothing" else (result["alpha"],
                                                                                          result["alpha_ci"])
        assert alpha_ci[0] <= alpha <= alpha_ci[1], (alpha, alpha_ci)
        assert fitted["E_ci"][0] <= fitted["E"] <= fitted["E_ci"][1], (fitted["E"], fitted["E_ci"])
