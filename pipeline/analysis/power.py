"""Power, stated: how many replicates per arm a study needs to see its smallest synthetic fraction's gap.

A gap g between two cell means of k independent replicates each, with replicate sd s, is seen at z standard errors
when g / (s·√(2/k)) ≥ z, so k ≥ 2·(z·s/g)². The gap to detect is a prediction (the linear theory's c²·p² at the
smallest p, or the floor `collapse floor` computes from P and Q), never the measured gap, which at small p is
mostly noise; s is the spread of independent replicates within the cells of the largest budget (where the gap is
measured), pooled over fractions.
"""

from __future__ import annotations

import math

import numpy as np

Z = 2.0
METHOD = ("replicates per arm for a 2σ detection: k = ⌈2·(2·s/g)²⌉, g the predicted gap, s the replicate sd "
          "within the cells of the largest budget, pooled over fractions; 'sigmas now' = g / (s·√(2/k)) at the "
          "replicates this run has")


def pooled_spread(cells: list[list[float]]) -> dict | None:
    """The sd of replicates within cells, pooled (each cell around its own mean), with its degrees of freedom."""
    squares = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in cells if len(v) > 1)
    dof = sum(len(v) - 1 for v in cells if len(v) > 1)
    return {"sd": math.sqrt(squares / dof), "dof": dof} if dof else None


def replicates_needed(gap: float, sd: float, z: float = Z) -> int | None:
    """Replicates per arm so that a true gap `gap` sits z standard errors from 0 (None: no positive gap)."""
    if gap is None or sd is None or gap <= 0 or sd <= 0:
        return None
    return max(2, math.ceil(2 * (z * sd / gap) ** 2))


def sigmas(gap: float, sd: float, replicates: int) -> float | None:
    """How many standard errors of a difference of two means of `replicates` each the gap is."""
    if gap is None or sd is None or sd <= 0 or replicates < 1:
        return None
    return float(gap / (sd * math.sqrt(2 / replicates)))


def smallest_fraction(theory: dict, spread: dict | None, replicates: int) -> dict:
    """The statement for the smallest p > 0 from the linear theory's n → ∞ form, or why there is none."""
    fractions = sorted(float(p) for p in (theory.get("points") or {}) if float(p) > 0)
    c2 = (theory.get("asymptotic") or {}).get("c2")
    sd = (spread or {}).get("sd")
    if not theory.get("fitted") or not fractions or c2 is None or sd is None:
        return {"stated": False, "why": "needs the linear theory fitted and a seed spread within cells"}
    p = fractions[0]
    gap = c2 * p * p
    return {"stated": True, "fraction": p, "predicted_gap": gap, "source": "linear theory, c²·p² (fitted c²)",
            "sd": sd, "sd_dof": spread["dof"], "replicates": replicates, "sigmas_now": sigmas(gap, sd, replicates),
            "replicates_needed": replicates_needed(gap, sd), "method": METHOD}
