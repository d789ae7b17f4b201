"""Profile-likelihood 95% intervals for the power law: its exponents, and any linear function of E_p and A_p.

At a fixed exponent the law is linear in β = (E_p, A_p), so for a quantity q = c(α)·β (a plateau, an amplitude, a
plateau gap, the curve at a budget) the smallest residual sum of squares among the fits with q at a given value v
has a closed form: RSS(α) + (v − ĉ·β̂(α))² / h(α), with h = c·(XᵀWX)⁻¹·c. The 95% interval is every v whose
profile, minimised over α, stays within s²·F(0.95; 1, ν) of the best fit — s² the seed noise, ν its degrees of
freedom (pure error is independent of the cell means, so the ratio is F-distributed). With α known this is the
exact t-interval; with α fitted, the likelihood-ratio form follows the curvature in α, which a bootstrap
percentile interval does not (on the simulations of tests/test_coverage.py the latter covered α and E_p in 92–94%,
this one in 94–97%). For the mean of k new seeds at a budget, h gains 1/k: a prediction interval. α is profiled on
a grid that resolves the exponents within the threshold; the interval of v is the union over that grid.

The profile is the unconstrained linear fit at each α, while the point fit keeps E_p and A_p inside their bounds
(`power_law`: A_p >= 0, E_p above the lowest plateau). Where a bound binds (a law that misfits, a flat curve) the
unconstrained minimum lies below the point fit's RSS and, measured from it, the interval could exclude the point
estimate itself. So "the best fit" is the point fit's RSS whenever that is larger: the interval is then a superset
of the unconstrained one (never less coverage) and always holds the estimate; where no bound binds nothing changes.
"""

from __future__ import annotations

import numpy as np
from scipy.special import fdtri  # the F quantile as a plain ufunc

from pipeline.analysis.intervals import CONFIDENCE
from pipeline.analysis.power_law import ALPHA_BOUNDS

_GRID = np.geomspace(*ALPHA_BOUNDS, 401)


class _LinearFits:
    """Weighted least squares of one block of cells at each exponent of a grid: β̂, RSS and (XᵀWX)⁻¹."""

    def __init__(self, alphas: np.ndarray, log_scaled: np.ndarray, onehot: np.ndarray, shared_amplitude: bool,
                 weights: np.ndarray, means: np.ndarray, bounded_rss: float = 0.0):
        self.alphas = alphas
        x = np.exp(-alphas[:, None] * log_scaled[None, :])  # [G, C]
        amplitude = x[:, :, None] if shared_amplitude else x[:, :, None] * onehot[None]
        design = np.concatenate([np.broadcast_to(onehot, (alphas.size, *onehot.shape)), amplitude], axis=2)
        weighted = np.swapaxes(design * weights[None, :, None], 1, 2)  # [G, P, C]
        self.inverse = np.linalg.inv(weighted @ design)
        self.beta = (self.inverse @ (weighted @ means)[..., None])[..., 0]
        residual = means - (design @ self.beta[..., None])[..., 0]
        self.rss = residual**2 @ weights
        self.best = max(float(self.rss.min()), bounded_rss)  # the point fit's RSS where a bound binds (docstring)


class Profile:
    """The law's profile over the exponent grid for the cells of one fit.

    law: a `power_law.PowerLaw`; means: its cell means; noise: {"sd", "dof"} of one seed's loss; point: the law's
    fit of those means (its bounded RSS per block and its exponents join the grid). Curves that share
    α are one block; with share "nothing" each curve is its own block (its own exponent, fitted apart).
    Terms of a quantity: [(f, cE, cA)], q = Σ cE·E_f + cA(α)·A_f with A_f the amplitude at the reference budget.
    """

    def __init__(self, law, means: np.ndarray, noise: dict, point: dict):
        self.law = law
        self.threshold = noise["sd"] ** 2 * fdtri(1, noise["dof"], CONFIDENCE)
        seeds = law.weights.sum(1)
        squares = seeds * (means - law.curve(point, law.budgets, law.fraction_index)) ** 2  # the point fit's, per cell
        if law.share == "nothing":
            self.blocks = [self._block(seeds, means, law.fraction_index == f, False, squares, point["alpha"][f])
                           for f in range(law.n_fractions)]
        else:
            everything = np.ones_like(seeds, dtype=bool)
            self.blocks = [self._block(seeds, means, everything, law.share == "exponent_and_amplitude", squares,
                                       point["alpha"][0])]

    def _block(self, seeds, means, cells, shared_amplitude: bool, squares, alpha: float) -> _LinearFits:
        """The fits of the chosen cells (E per curve, then A per curve or one A) on a grid that spans the exponents
        within the threshold: found on the coarse grid, then resolved by as many points between its neighbours
        (and the point fit's own exponent)."""
        index = self.law.fraction_index[cells]
        onehot = (index[:, None] == np.unique(index)[None, :]).astype(float)
        fits = lambda alphas: _LinearFits(alphas, self.law.log_scaled[cells], onehot, shared_amplitude,
                                          seeds[cells], means[cells], float(squares[cells].sum()))
        coarse = fits(_GRID)
        inside = np.flatnonzero(coarse.rss - coarse.best <= self.threshold)
        low, high = _GRID[max(inside[0] - 1, 0)], _GRID[min(inside[-1] + 1, _GRID.size - 1)]
        return fits(np.union1d(np.geomspace(low, high, _GRID.size), [alpha]))

    def _coefficients(self, block: int, terms) -> np.ndarray:
        """c(α) [G, P] of the terms that belong to one block."""
        fits = self.blocks[block]
        columns = fits.beta.shape[1]
        curves = [block] if self.law.share == "nothing" else list(range(self.law.n_fractions))
        c = np.zeros((fits.alphas.size, columns))
        for f, c_plateau, c_amplitude in terms:
            if f in curves:
                slot = curves.index(f)
                amp_column = len(curves) + (slot if columns == 2 * len(curves) else 0)
                c[:, slot] += c_plateau
                c[:, amp_column] += c_amplitude(fits.alphas) if callable(c_amplitude) else c_amplitude
        return c

    def _pieces(self, block: int, terms) -> tuple[np.ndarray, np.ndarray]:
        c = self._coefficients(block, terms)
        fits = self.blocks[block]
        return np.sum(c * fits.beta, axis=1), np.sum((fits.inverse @ c[..., None])[..., 0] * c, axis=1)

    def interval(self, terms, new_seeds: int | None = None) -> list[float]:
        """95% interval of q (terms), or of the mean of `new_seeds` new runs of it (a prediction interval)."""
        excess, estimate, spread = np.zeros(1), np.zeros(1), np.zeros(1)
        for block in sorted({self._block_of(f) for f, _, _ in terms}):
            # curves in different blocks have their own exponents: every combination of them
            q, h = self._pieces(block, terms)
            fits = self.blocks[block]
            excess = (excess[:, None] + (fits.rss - fits.best)[None, :]).ravel()
            estimate = (estimate[:, None] + q[None, :]).ravel()
            spread = (spread[:, None] + h[None, :]).ravel()
        if new_seeds:
            spread = spread + 1.0 / new_seeds
        room = self.threshold - excess
        inside = room >= 0
        half = np.sqrt(spread[inside] * room[inside])
        return [float(np.min(estimate[inside] - half)), float(np.max(estimate[inside] + half))]

    def _block_of(self, f: int) -> int:
        return f if self.law.share == "nothing" else 0

    def alpha_interval(self, f: int) -> list[float]:
        """95% interval of the exponent of curve f: where the best fit at that α stays within the threshold."""
        fits = self.blocks[self._block_of(f)]
        inside = np.flatnonzero(fits.rss - fits.best <= self.threshold)
        return [float(fits.alphas[inside[0]]), float(fits.alphas[inside[-1]])]
