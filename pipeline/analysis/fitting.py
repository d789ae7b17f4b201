"""Fits of measured losses (pure numpy/scipy; arguments in, JSON-able dicts out).

- `fit_curves`, `fit_scaling_curves`: L_p(n) = E_p + A_p·n^(−α) per synthetic fraction p (`power_law`: weighted least
  squares on the cell means over seeds, α searched on one grid), with a 95% interval for every parameter and
  derived quantity (plateau gap E_p − E_0, the curve at budgets it did not see, its remaining decline) by profile
  likelihood (INTERVAL_METHOD, `profile`), joint draws of the plateaus for use downstream (DRAWS_METHOD), and two
  F tests of the form: one amplitude for all curves, and lack of fit against the seed noise.
- `fit_tail_model`, `predicted_tail_cutoff`: Zipf exponent β of a rank-frequency list and the tail cut that
  top-p sampling or a finite teacher implies (A Tale of Tails, Dohmatob et al. 2024: a cut at rank k leaves a
  plateau of order k^−(β−1); via `pipeline.theory.tails`).
The linear theory fitted to the plateaus and the model-size comparison are in `theory_fit.py`; predict-then-verify
and the measured summaries (seed means, gaps and their trend over budgets) in `prediction.py`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import fdtrc  # the F survival function as a plain ufunc

from pipeline.analysis.power_law import ALPHA_BOUNDS, PowerLaw
from pipeline.analysis.profile import Profile
from pipeline.theory import tails

LEVEL = 0.05  # significance level of the F tests of the form
INTERVAL_METHOD = (
    "profile likelihood: every value whose best fit of the law stays within s²·F(0.95; 1, ν) of the best fit overall "
    "(s² the seed noise with ν degrees of freedom; the exact t-interval were α known, with α profiled on a grid)")
DRAWS_METHOD = (
    "studentised parametric bootstrap: cell means simulated from the fitted curves with the seed noise, its scale "
    "drawn from the noise estimate's chi-square, each refitted by the same grid search in alpha as the fit")
_REQUIRED = {"synthetic_fraction": float, "token_budget": int, "seed": int, "loss": float}


def _key(p: float) -> str:
    return f"{p:g}"


def _rows_to_arrays(rows):
    """Columns of the rows as arrays; ValueError naming the row and field when something is missing or invalid."""
    if not rows:
        raise ValueError("rows must be a non-empty list of dicts")
    columns = {name: [] for name in _REQUIRED}
    for i, row in enumerate(rows):
        for name, kind in _REQUIRED.items():
            if name not in row:
                raise ValueError(f"rows[{i}] lacks '{name}' (needs {sorted(_REQUIRED)})")
            try:
                columns[name].append(kind(row[name]))
            except (TypeError, ValueError):
                raise ValueError(f"rows[{i}]['{name}'] must be {kind.__name__}, got {row[name]!r}") from None
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    if np.any(arrays["token_budget"] <= 0):
        raise ValueError("rows: token_budget must be > 0")
    if np.any(~np.isfinite(arrays["loss"])) or np.any(arrays["loss"] <= 0):
        raise ValueError("rows: loss must be finite and > 0 (leave out non-finite rows with `finite_rows`)")
    if np.any(arrays["synthetic_fraction"] < 0) or np.any(arrays["synthetic_fraction"] > 1):
        raise ValueError("rows: synthetic_fraction must be in [0, 1]")
    return arrays


def finite_rows(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """(rows with a finite loss, the units of those left out): one diverged run must not stop a fit."""
    kept, left_out = [], []
    for row in rows:
        loss = row.get("loss")
        finite = isinstance(loss, (int, float)) and not isinstance(loss, bool) and bool(np.isfinite(loss))
        (kept if finite else left_out).append(row if finite else str(row.get("unit", row)))
    return kept, left_out


# ------------------------------------------------------------------------------------------ scaling curves


def _cells(data) -> tuple[np.ndarray, dict, tuple[float, int]]:
    """(fractions, cells {fraction_index, budgets, seeds, means}, pure error (sum of squares, dof)) of the rows."""
    fractions, fraction_of_row = np.unique(data["synthetic_fraction"], return_inverse=True)
    pairs, cell_of_row = np.unique(np.c_[fraction_of_row.ravel(), data["token_budget"]], axis=0, return_inverse=True)
    cell_of_row = cell_of_row.ravel()
    seeds = np.bincount(cell_of_row)
    means = np.bincount(cell_of_row, weights=data["loss"]) / seeds
    squares = float(np.sum((data["loss"] - means[cell_of_row]) ** 2))
    cells = {"fraction_index": pairs[:, 0].astype(int), "budgets": pairs[:, 1].astype(float), "seeds": seeds,
             "means": means}
    return fractions, cells, (squares, int(np.sum(seeds - 1)))


def _noise(pure_error: tuple[float, int], rss: float, spare: int) -> dict | None:
    """Seed noise of one loss (nats) with its degrees of freedom: the spread of seeds within cells, model-free;
    with one seed per cell, the fit's residual; None when neither has a degree of freedom."""
    squares, dof = pure_error
    if dof > 0:
        return {"sd": float(np.sqrt(squares / dof)), "dof": dof,
                "source": "pure error: the spread of the seeds within each (p, n) cell"}
    if spare > 0:
        return {"sd": float(np.sqrt(rss / spare)), "dof": spare, "source": "residual of the fit (one seed per cell)"}
    return None


def _f_test(extra_rss: float, extra_dof: int, noise: dict | None) -> dict | None:
    if noise is None or extra_dof <= 0:
        return None
    statistic = max(extra_rss, 0.0) / extra_dof / noise["sd"] ** 2
    return {"F": float(statistic), "dof": [int(extra_dof), int(noise["dof"])],
            "p_value": float(fdtrc(extra_dof, noise["dof"], statistic))}


def _amplitude_test(cells: dict, n_fractions: int, pure_error: tuple[float, int]) -> dict | None:
    """Extra-sum-of-squares F test of one amplitude A for every curve against A_p per curve (both with one α)."""
    if n_fractions < 2:
        return None
    args = (cells["fraction_index"], cells["budgets"], cells["seeds"], n_fractions)
    free = PowerLaw(*args, share="exponent")
    free_rss = float(free.fit(cells["means"])["rss"])
    shared_rss = float(PowerLaw(*args, share="exponent_and_amplitude").fit(cells["means"])["rss"])
    noise = _noise(pure_error, free_rss, cells["means"].size - free.n_parameters)
    test = _f_test(shared_rss - free_rss, n_fractions - 1, noise)
    return test and {**test, "level": LEVEL, "rejects_shared_amplitude": test["p_value"] < LEVEL}


class CurveFit:
    """One fit of the law to rows: the point estimate, the profile behind every interval, B joint draws."""

    def __init__(self, rows, share: str = "exponent", bootstrap: int = 200, seed: int = 0):
        if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
            raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
        data = _rows_to_arrays(rows)
        self.n_rows = int(data["loss"].size)
        self.fractions, self.cells, pure_error = _cells(data)
        self.notes: list[str] = []
        self.amplitude_test = _amplitude_test(self.cells, self.fractions.size, pure_error) if share != "nothing" \
            else None
        if share == "exponent_and_amplitude" and self.amplitude_test and self.amplitude_test["rejects_shared_amplitude"]:
            share = "exponent"
            self.notes.append(f"one amplitude for every curve is rejected (F test p = "
                              f"{self.amplitude_test['p_value']:.3g}): fitted with A_p per curve")
        if share == "exponent_and_amplitude" and self.amplitude_test:
            self.notes.append(f"one amplitude kept for every curve (F test p = {self.amplitude_test['p_value']:.3g}, "
                              "not rejected): the plateau gap is then the same at every n, and where the gap in "
                              "fact changes with n its interval covers it far less than 95% (measured: 57-59%)")
        self.share = share
        cells = self.cells
        self.law = PowerLaw(cells["fraction_index"], cells["budgets"], cells["seeds"], self.fractions.size, share)
        self.point = self.law.fit(cells["means"])
        spare = cells["means"].size - self.law.n_parameters
        self.noise = _noise(pure_error, float(self.point["rss"]), spare)
        self.lack_of_fit = _f_test(float(self.point["rss"]), spare, self.noise) if pure_error[1] else None
        separable = all(self.budgets_of(f).size >= 2 for f in range(self.fractions.size))
        self.profile = Profile(self.law, cells["means"], self.noise, self.point) if self.noise and separable else None
        self.draws = self._draw(bootstrap, seed)

    def _draw(self, count: int, seed: int) -> dict:
        """Refits of cell means simulated from the fitted curves; each draw's noise scale from sd·√(dof/χ²_dof)."""
        F = self.fractions.size
        if self.noise is None or count == 0:
            return {key: np.empty((0, F)) for key in ("alpha", "plateau", "amplitude")}
        rng = np.random.default_rng(seed)
        dof, cells = self.noise["dof"], self.cells
        scales = self.noise["sd"] * np.sqrt(dof / rng.chisquare(dof, count))
        fitted = self.law.curve(self.point, cells["budgets"], cells["fraction_index"])
        simulated = fitted + scales[:, None] * rng.standard_normal((count, fitted.size)) / np.sqrt(cells["seeds"])
        draws = self.law.fit(simulated)
        draws.pop("rss")
        return draws

    def quantity(self, terms, new_seeds: int | None = None) -> tuple[float, list[float] | None]:
        """(point, 95% interval) of Σ cE·E_f + cA(α_f)·A_f over terms [(f, cE, cA)] (A_f at the reference budget);
        with new_seeds, the interval is for the mean of that many new runs (a prediction interval)."""
        point = sum(c_plateau * self.point["plateau"][f]
                    + (c_amplitude(self.point["alpha"][f]) if callable(c_amplitude) else c_amplitude)
                    * self.point["amplitude"][f] for f, c_plateau, c_amplitude in terms)
        return float(point), (self.profile.interval(terms, new_seeds) if self.profile else None)

    def exponent(self, f: int) -> tuple[float, list[float] | None]:
        return float(self.point["alpha"][f]), (self.profile.alpha_interval(f) if self.profile else None)

    def at(self, budget: float, f: int) -> list:
        """Terms of the curve of fraction index f at a budget."""
        return [(f, 1.0, lambda alpha: (budget / self.law.n_ref) ** -alpha)]

    def amplitude(self, f: int) -> list:
        """Terms of A_p in the units of L = E + A·n^(−α) (the law holds A at the reference budget)."""
        return [(f, 0.0, lambda alpha: self.law.n_ref**alpha)]

    def budgets_of(self, f: int) -> np.ndarray:
        return np.unique(self.cells["budgets"][self.cells["fraction_index"] == f])


def _fraction_entry(fit: CurveFit, f: int, predict_at) -> dict:
    """One fraction's parameters, fitted decline over its budgets and remaining decline beyond them, 95% intervals."""
    budgets = fit.budgets_of(f)
    last = budgets[-1] / fit.law.n_ref
    entry = {"points": int(fit.cells["seeds"][fit.cells["fraction_index"] == f].sum()), "budgets": int(budgets.size)}
    entry["E"], entry["E_ci"] = fit.quantity([(f, 1.0, 0.0)])
    entry["A"], entry["A_ci"] = fit.quantity(fit.amplitude(f))
    entry["alpha"], entry["alpha_ci"] = fit.exponent(f)
    entry["remaining"], entry["remaining_ci"] = fit.quantity([(f, 0.0, lambda alpha: last**-alpha)])
    entry["decline"] = fit.quantity(fit.at(budgets[0], f))[0] - fit.quantity(fit.at(budgets[-1], f))[0]
    if f > 0:
        entry["step"], entry["step_ci"] = fit.quantity([(f, 1.0, 0.0), (f - 1, -1.0, 0.0)])
    if fit.fractions[0] == 0.0 and f > 0:
        entry["gap"], entry["gap_ci"] = fit.quantity([(f, 1.0, 0.0), (0, -1.0, 0.0)])
    if predict_at:
        entry["predicted"] = {}
        for n in predict_at:
            value, ci = fit.quantity(fit.at(float(n), f))
            entry["predicted"][str(int(n))] = {"value": value, "ci": ci}
    return entry


def _warnings(fit: CurveFit) -> list[str]:
    notes = list(fit.notes)
    weak = [_key(p) for f, p in enumerate(fit.fractions) if fit.budgets_of(f).size < 3]
    if weak:
        notes.append(f"fewer than 3 distinct budgets for p in {weak}: E_p and A_p are not separated by these "
                     "budgets (no plateau can be identified)")
    alpha = fit.point["alpha"]
    if np.any(alpha <= ALPHA_BOUNDS[0] * (1 + 1e-9)) or np.any(alpha >= ALPHA_BOUNDS[1] * (1 - 1e-9)):
        notes.append(f"alpha at a bound of [{ALPHA_BOUNDS[0]:g}, {ALPHA_BOUNDS[1]:g}]: the exponent is not "
                     "determined by these budgets")
    if fit.noise is None:
        notes.append("no interval: one seed per cell and no degree of freedom left over the fit")
    elif fit.profile is None:
        notes.append("no interval: a curve has a single budget, so its E_p and A_p are not separated")
    if fit.lack_of_fit and fit.lack_of_fit["p_value"] < LEVEL:
        notes.append(f"the law misses the cell means by more than the seed noise explains (lack-of-fit F test "
                     f"p = {fit.lack_of_fit['p_value']:.3g}): its intervals count the seed noise only")
    return notes


def fit_curves(rows, share: str = "exponent", bootstrap: int = 200, seed: int = 0) -> CurveFit:
    """The law fitted to rows of {synthetic_fraction, token_budget, seed, loss}, with `bootstrap` joint draws."""
    return CurveFit(rows, share=share, bootstrap=bootstrap, seed=seed)


def fit_scaling_curves(rows, share: str = "exponent", bootstrap: int = 200, seed: int = 0, predict_at=()) -> dict:
    """Fit L_p(n) = E_p + A_p·n^(−α) to rows of {synthetic_fraction, token_budget, seed, loss}: a JSON-able dict.

    share: what the curves have in common (`power_law.SHARES`; "exponent_and_amplitude" only where the F test of
    one amplitude does not reject it). Every "*_ci" is a 95% interval (INTERVAL_METHOD); "plateau_draws" holds
    `bootstrap` joint draws of [E_p for p in "fractions"] (DRAWS_METHOD) for joint use downstream. With p = 0
    among the fractions, each p > 0 also gets its plateau gap E_p − E_0 ("gap"); every fraction after the first its
    step from the previous one ("step"); `predict_at` budgets get the fitted curve there ("predicted"). "warning"
    says what these data cannot determine.
    """
    fit = fit_curves(rows, share=share, bootstrap=bootstrap, seed=seed)
    cells = fit.cells
    alpha, alpha_ci = fit.exponent(0) if fit.share != "nothing" else (None, None)
    amplitude, amplitude_ci = fit.quantity(fit.amplitude(0)) if fit.share == "exponent_and_amplitude" else (None, None)
    residual = cells["means"] - fit.law.curve(fit.point, cells["budgets"], cells["fraction_index"])
    result = {
        "model": "L_p(n) = E_p + A_p * n^(-alpha), weighted least squares on the cell means over seeds (nats)",
        "share": fit.share, "alpha": alpha, "alpha_ci": alpha_ci, "A": amplitude, "A_ci": amplitude_ci,
        "fractions": [float(p) for p in fit.fractions],
        "per_fraction": {_key(p): _fraction_entry(fit, f, predict_at) for f, p in enumerate(fit.fractions)},
        "plateau_draws": fit.draws["plateau"].tolist(),
        "noise": fit.noise, "amplitude_test": fit.amplitude_test, "lack_of_fit": fit.lack_of_fit,
        "draws": len(fit.draws["plateau"]), "interval_method": INTERVAL_METHOD, "draws_method": DRAWS_METHOD,
        "rmse_cells": float(np.sqrt(np.average(residual**2, weights=cells["seeds"]))),
        "n_rows": fit.n_rows, "n_cells": int(cells["means"].size),
    }
    notes = _warnings(fit)
    if notes:
        result["warning"] = "; ".join(notes)
    return result


def plateaus_from_fit(fit_result: dict) -> dict[float, float]:
    """{p: E_p} from a `fit_scaling_curves` result, ready for `theory_fit.fit_linear_theory`."""
    return {float(p): entry["E"] for p, entry in fit_result["per_fraction"].items()}


# --------------------------------------------------------------------------------------------------- tails


def fit_tail_model(rank_frequency_counts, rank_window=None, min_count=5) -> dict:
    """Zipf exponent β from counts: least squares of log count on log rank over a rank window.

    rank_frequency_counts: counts per item (a sequence or a mapping item -> count; sorted here, zeros dropped).
    rank_window: (first, last) ranks, 1-based inclusive; default 1 .. the last rank with count >= min_count,
    because sorting noisy small counts flattens the far tail.
    """
    values = rank_frequency_counts.values() if hasattr(rank_frequency_counts, "values") else rank_frequency_counts
    counts = np.sort(np.asarray(list(values), dtype=float))[::-1]
    if counts.size == 0 or np.any(~np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("rank_frequency_counts must be non-empty, finite and >= 0")
    counts = counts[counts > 0]
    if rank_window is None:
        last = int(np.sum(counts >= min_count))
        rank_window = (1, last)
    first, last = int(rank_window[0]), int(rank_window[1])
    if not 1 <= first < last <= counts.size or last - first < 2:
        raise ValueError(f"rank_window must satisfy 1 <= first < last <= {counts.size} with >= 3 ranks, "
                         f"got {rank_window} (lower min_count or pass more counts)")
    log_rank = np.log(np.arange(first, last + 1, dtype=float))
    log_count = np.log(counts[first - 1:last])
    slope, intercept = np.polyfit(log_rank, log_count, 1)
    residual = log_count - (slope * log_rank + intercept)
    r2 = 1 - np.sum(residual**2) / np.sum((log_count - log_count.mean()) ** 2)
    return {"beta": float(-slope), "r2": float(r2), "rank_window": [first, last], "n_ranks": int(counts.size)}


def predicted_tail_cutoff(beta, top_p=None, teacher_tokens=None, clean_fraction=None) -> dict:
    """Tail cut implied by top-p sampling and/or a finite teacher, with the plateau it predicts (A Tale of Tails).

    Uses `tails.top_p_cutoff` (nucleus size) and `tails.generator_cutoff` (k where T₀·p_k = 1); with both, the
    stricter (smaller) cut applies. With clean_fraction π, also the predicted stall window (k^β .. k^β/π).
    """
    cuts = {}
    if top_p is not None and top_p < 1:
        cuts["top_p"] = tails.top_p_cutoff(top_p, beta)
    if teacher_tokens is not None:
        cuts["teacher_tokens"] = max(1, round(tails.generator_cutoff(teacher_tokens, beta)))
    if not cuts:
        raise ValueError("predicted_tail_cutoff needs top_p < 1 or teacher_tokens")
    source = min(cuts, key=cuts.get)
    k = cuts[source]
    result = {"cutoff": int(k), "limited_by": source, "cutoffs": cuts, "plateau": tails.tail_mass(k, beta),
              "clean_exponent": tails.clean_error_exponent(beta)}
    if clean_fraction is not None:
        result["stall_window"] = list(tails.mixture_plateau_window(k, beta, clean_fraction))
    return result


