"""`evaluate` metric modules shipped with the package, loadable offline by path.

    import evaluate
    from pipeline.lm.metrics import metric_path
    metric = evaluate.load(metric_path("summed_nll_perplexity"))

Each module lives in its own directory whose script has the directory's name (evaluate's rule for
local modules); nothing is fetched from the hub.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("summed_nll_perplexity", "distinct_n")


def metric_path(name: str) -> str:
    """The directory of a shipped metric, for `evaluate.load(...)`."""
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; shipped: {', '.join(NAMES)}")
    return str(METRICS_DIR / name)


def load_metric(name: str):
    """`evaluate.load` of a shipped metric by its path (works with HF_HUB_OFFLINE=1)."""
    import evaluate

    return evaluate.load(metric_path(name))
