"""Weighted least squares of L_p(n) = E_p + A_p·(n/n_ref)^(−α) on cell means, for many data sets at once.

At a fixed exponent the law is linear in (E_p, A_p), so their best values come in closed form and only α is
searched: on one fixed log-spaced grid over ALPHA_BOUNDS, then on a finer grid between the best point's
neighbours, then the vertex of a parabola through the three best fine points. Every fit runs this same search —
the main fit and each parametric-bootstrap refit alike — so no refit can stop in a local minimum in α that the
main fit escaped (a power law fitted by local descent has them). The arrays carry a leading axis of data sets, so
all bootstrap refits run as one vectorised pass.

`share` says what the curves of one fit have in common:
  "exponent"                one α; E_p and A_p per curve (the gap L_p − L_0 may change with n)
  "nothing"                 E_p, A_p and α_p per curve
  "exponent_and_amplitude"  one α and one A; only E_p per curve (the gap is the same at every n)
The loss is fitted in nats, not log nats: seed noise is additive in nats at these loss levels, and only on this
scale is the law linear in E_p and A_p. E_p >= 0 and A_p >= 0 hold per curve (the best fit on the boundary where
the free fit crosses it); the shared-amplitude form keeps A >= 0 only.
"""

from __future__ import annotations

import numpy as np

ALPHA_BOUNDS = (0.01, 2.0)
SHARES = ("exponent", "nothing", "exponent_and_amplitude")
_COARSE_ALPHAS = np.geomspace(*ALPHA_BOUNDS, 121)
_FINE_POINTS = 17
_CHUNK = 128  # data sets per vectorised pass: bounds memory at [chunk, grid, cells]


class PowerLaw:
    """The law on a fixed set of cells (fraction index, budget, seeds): fits cell means, evaluates the curves.

    Parameters per data set: alpha [F], plateau [F], amplitude [F] (A_p at n_ref, i.e. A_p·n_ref^(−α_p)); shared
    quantities are repeated across the F columns.
    """

    def __init__(self, fraction_index, budgets, seeds, n_fractions: int, share: str = "exponent"):
        if share not in SHARES:
            raise ValueError(f"share must be one of {SHARES}, got {share!r}")
        self.fraction_index = np.asarray(fraction_index)
        self.budgets = np.asarray(budgets, dtype=float)
        self.share = share
        self.n_fractions = n_fractions
        self.n_ref = float(np.exp(np.mean(np.log(self.budgets))))
        self.log_scaled = np.log(self.budgets / self.n_ref)
        onehot = (self.fraction_index[:, None] == np.arange(n_fractions)[None, :]).astype(float)
        self.weights = onehot * np.asarray(seeds, dtype=float)[:, None]  # [C, F]: a cell mean of k seeds weighs k
        self.group_index = self.fraction_index if share == "nothing" else np.zeros_like(self.fraction_index)
        self.n_groups = n_fractions if share == "nothing" else 1

    @property
    def n_parameters(self) -> int:
        F = self.n_fractions
        return {"exponent": 2 * F + 1, "nothing": 3 * F, "exponent_and_amplitude": F + 2}[self.share]

    def curve(self, params: dict, budgets, fraction_index) -> np.ndarray:
        """Values of the fitted curves at (budget, fraction) pairs: [..., len(budgets)] for params of shape [..., F]."""
        log_scaled = np.log(np.asarray(budgets, dtype=float) / self.n_ref)
        pick = lambda name: params[name][..., fraction_index]
        return pick("plateau") + pick("amplitude") * np.exp(-pick("alpha") * log_scaled)

    def fit(self, cell_means) -> dict:
        """Best fit of each row of cell_means [B, C] (or one [C]); returns arrays [B, F] (or [F]) and rss [B]."""
        y = np.asarray(cell_means, dtype=float)
        single = y.ndim == 1
        y = np.atleast_2d(y)
        parts = [self._fit_chunk(y[i:i + _CHUNK]) for i in range(0, y.shape[0], _CHUNK)]
        result = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        return {key: value[0] for key, value in result.items()} if single else result

    def _fit_chunk(self, y: np.ndarray) -> dict:
        offset = (y @ self.weights.sum(1)) / self.weights.sum()  # centring keeps the normal equations well scaled
        centred = y - offset[:, None]
        coarse = np.exp(-_COARSE_ALPHAS[:, None] * self.log_scaled[None, :])  # [G, C]: the same for every data set
        best = np.argmin(self._group_rss(coarse, centred, offset), axis=1)  # [B, groups]
        last = _COARSE_ALPHAS.size - 1
        low, high = _COARSE_ALPHAS[np.maximum(best - 1, 0)], _COARSE_ALPHAS[np.minimum(best + 1, last)]
        fine = low[:, None, :] + (high - low)[:, None, :] * np.linspace(0, 1, _FINE_POINTS)[None, :, None]
        alpha = _parabola_vertex(fine, self._group_rss(self._powers(fine), centred, offset))  # [B, groups]
        plateau, amplitude, rss = self._solve(self._powers(alpha[:, None, :]), centred, offset)
        return {"alpha": alpha[:, self._curve_group()], "plateau": plateau[:, 0] + offset[:, None],
                "amplitude": amplitude[:, 0], "rss": rss[:, 0].sum(-1)}

    def _curve_group(self) -> np.ndarray:
        return np.arange(self.n_fractions) if self.share == "nothing" else np.zeros(self.n_fractions, dtype=int)

    def _powers(self, alphas) -> np.ndarray:
        """(n/n_ref)^(−α) per cell [B, J, C] for exponents per group alphas [B, J, groups]."""
        return np.exp(-alphas[..., self.group_index] * self.log_scaled)

    def _group_rss(self, powers, centred, offset) -> np.ndarray:
        """Residual sum of squares [B, J, groups] at candidate powers [J, C] (all data sets) or [B, J, C]."""
        rss = self._solve(powers, centred, offset)[2]  # [B, J, F]
        return rss if self.share == "nothing" else rss.sum(-1, keepdims=True)

    def _solve(self, powers, centred, offset):
        """Best (plateau − offset, amplitude, rss per curve), each [B, J, F], at powers [J, C] or [B, J, C]."""
        W = self.weights
        over_cells = lambda values: (values.reshape(-1, W.shape[0]) @ W).reshape(*values.shape[:-1], W.shape[1])
        S0, S1, S2 = W.sum(0), over_cells(powers), over_cells(powers * powers)
        Ty, Tyy = over_cells(centred)[:, None, :], over_cells(centred * centred)[:, None, :]
        if powers.ndim == 2:  # one grid for every data set: a single matrix product
            J, (C, F) = powers.shape[0], W.shape
            Txy = (centred @ (powers.T[:, :, None] * W[:, None, :]).reshape(C, J * F)).reshape(-1, J, F)
        else:
            Txy = over_cells(powers * centred[:, None, :])
        if self.share == "exponent_and_amplitude":
            amplitude = _shared_amplitude(S0, S1, S2, Ty, Txy)
            plateau = (Ty - amplitude * S1) / S0
        else:
            plateau, amplitude = _per_curve_line(S0, S1, S2, Ty, Txy, -offset[:, None, None])
        rss = Tyy - 2 * plateau * Ty - 2 * amplitude * Txy + plateau**2 * S0 + 2 * plateau * amplitude * S1 \
            + amplitude**2 * S2
        return plateau, amplitude, np.maximum(rss, 0.0)


def _per_curve_line(S0, S1, S2, Ty, Txy, lowest_plateau):
    """Weighted least squares of y = E + A·x per curve from its sums, with A >= 0 and E >= lowest_plateau."""
    det = S0 * S2 - S1**2
    varies = det > 1e-12 * S0 * S2  # x varies within the curve (two budgets or more, α not ~0)
    amplitude = np.where(varies, (S0 * Txy - S1 * Ty) / np.where(varies, det, 1.0), 0.0)
    amplitude = np.maximum(amplitude, 0.0)  # a curve that does not fall: the best A >= 0 is 0, E its mean
    plateau = (Ty - amplitude * S1) / S0
    below = plateau < lowest_plateau
    amplitude = np.where(below, np.maximum((Txy - lowest_plateau * S1) / S2, 0.0), amplitude)
    return np.where(below, lowest_plateau, plateau), amplitude


def _shared_amplitude(S0, S1, S2, Ty, Txy):
    """One A for every curve (each its own E): the pooled within-curve slope, A >= 0, repeated over curves."""
    spread = (S2 - S1**2 / S0).sum(-1, keepdims=True)
    covariation = (Txy - S1 * Ty / S0).sum(-1, keepdims=True)
    amplitude = np.maximum(covariation / np.where(spread > 0, spread, 1.0), 0.0)
    return np.broadcast_to(amplitude, np.broadcast_shapes(S1.shape, Txy.shape))


def _parabola_vertex(alphas, rss):
    """The exponent [B, groups] at the vertex of the parabola through the best of alphas [B, J, groups] and its
    two neighbours (equal spacing), kept between them; the best point itself at either end of the grid."""
    J = alphas.shape[1]
    best = np.argmin(rss, axis=1)[:, None, :]
    middle = np.clip(best, 1, J - 2)
    take = lambda values, index: np.take_along_axis(values, index, axis=1)[:, 0, :]
    left, centre, right = (take(rss, middle + d) for d in (-1, 0, 1))
    step = take(alphas, middle + 1) - take(alphas, middle)
    curvature = left - 2 * centre + right
    shift = np.where(curvature > 0, 0.5 * step * (left - right) / np.where(curvature > 0, curvature, 1.0), 0.0)
    vertex = take(alphas, middle) + np.clip(shift, -step, step)
    at_end = (best[:, 0, :] == 0) | (best[:, 0, :] == J - 1)
    return np.where(at_end, take(alphas, best), vertex)
