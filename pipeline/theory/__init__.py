"""Theory of model collapse (numpy/scipy only): formulas from docs/theory-notes.md and their simulations.

- `linear`: ridge on a real/synthetic mixture, isotropic closed form, weighted mixing, random projections (§1).
- `tails`: memorisation under a Zipf law with tail cuts and mixtures (§2).
- `iterative`: iterated retraining on the previous generation's labels (§3).
- `simulate`: a Monte Carlo counterpart for every formula above.
- `figures`, `cli`: theory-vs-simulation plots and the `collapse theory` subcommand (import them directly;
  they pull in matplotlib/argparse and are not re-exported here).
"""

from pipeline.theory.iterative import collapse_rate, iterated_ridge_risk, overparameterized_noiseless_risk
from pipeline.theory.linear import (
    RiskResult,
    isotropic_mixture_risk,
    mixture_ridge_risk,
    random_projection_risk,
    synthetic_floor,
    weighted_mixture_risk,
)
from pipeline.theory.simulate import (
    MonteCarloEstimate,
    simulate_iterated_ridge,
    simulate_memorization,
    simulate_mixture_ridge,
    simulate_overparameterized_noiseless,
    simulate_random_projection,
    simulate_weighted_mixture,
)
from pipeline.theory.tails import (
    clean_error_asymptotic,
    clean_error_exponent,
    generator_cutoff,
    memorization_error,
    mixture_plateau_window,
    plateau_asymptotic,
    tail_mass,
    temperature_error_exponent,
    temperature_exponent,
    top_p_cutoff,
    top_p_cutoff_asymptotic,
    training_distribution,
    zipf_probabilities,
)

__all__ = [
    "MonteCarloEstimate",
    "RiskResult",
    "clean_error_asymptotic",
    "clean_error_exponent",
    "collapse_rate",
    "generator_cutoff",
    "isotropic_mixture_risk",
    "iterated_ridge_risk",
    "memorization_error",
    "mixture_plateau_window",
    "mixture_ridge_risk",
    "overparameterized_noiseless_risk",
    "plateau_asymptotic",
    "random_projection_risk",
    "simulate_iterated_ridge",
    "simulate_memorization",
    "simulate_mixture_ridge",
    "simulate_overparameterized_noiseless",
    "simulate_random_projection",
    "simulate_weighted_mixture",
    "synthetic_floor",
    "tail_mass",
    "temperature_error_exponent",
    "temperature_exponent",
    "top_p_cutoff",
    "top_p_cutoff_asymptotic",
    "training_distribution",
    "weighted_mixture_risk",
    "zipf_probabilities",
]
