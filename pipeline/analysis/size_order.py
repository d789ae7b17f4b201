"""Is the collapse gap ordered by student size, beyond the seeds' noise? (Strong Model Collapse, model size.)

The random-projection model predicts an order: below the interpolation threshold the gap L_p − L_0 grows with
size, above it the gap shrinks. Comparing point estimates says nothing when two sizes' gaps differ by less than
their seeds' spread, so each pair of adjacent sizes gets the difference of their measured gaps at one budget,

    D = (L_p − L_0)[larger] − (L_p − L_0)[smaller],

a combination of four independent cell means with a Welch–Satterthwaite t-interval (`intervals.cell_contrast`;
coverage measured in tests/test_size_order.py at 2, 3 and 5 replicates). The order counts as resolved only when
every adjacent D's 95% interval excludes 0 with the same sign: an intersection–union test (Berger 1982), whose
error rate is at most that of one interval's side, 2.5%, with no correction for the number of pairs.
"""

from __future__ import annotations

from pipeline.analysis.intervals import cell_contrast, p_above_zero, t_interval

METHOD = ("difference of the measured gaps L_p - L_0 of adjacent sizes at one budget: Welch-Satterthwaite t-interval "
          "over the four cell means; the order is resolved when every adjacent difference's 95% interval excludes 0 "
          "with the same sign (intersection-union test)")
PREDICTED_DIRECTION = {"below": "grows", "above": "shrinks"}


def gap_difference(smaller: dict, larger: dict) -> dict:
    """D = gap(larger) − gap(smaller) from two sizes' cells {"p": cell, "0": cell}, cell = {mean, sd, seeds}."""
    cells = [larger["p"], larger["0"], smaller["p"], smaller["0"]]
    difference, combination = cell_contrast([1.0, -1.0, -1.0, 1.0], cells)
    return {"difference": difference, "ci": t_interval(difference, combination),
            "p_larger_gap": p_above_zero(difference, combination)}


def gap_order(cells_by_size: dict[int, dict], applies: str) -> dict:
    """Adjacent gap differences (sizes ascending) and whether the observed order is resolved and as predicted;
    "extremes": the same for the smallest against the largest size alone (a weaker claim than the full order,
    which one noisy middle size cannot spoil).

    cells_by_size: {parameters: {"p": cell, "0": cell}} at one budget and one fraction; applies: the regime the
    parameter counts put the students in ("below", "above" or "straddles", which predicts no single order).
    """
    sizes = sorted(cells_by_size)
    pair = lambda a, b: {"smaller": a, "larger": b, **gap_difference(cells_by_size[a], cells_by_size[b])}
    pairs = [pair(a, b) for a, b in zip(sizes, sizes[1:])]
    extremes = pair(sizes[0], sizes[-1])
    predicted = PREDICTED_DIRECTION.get(applies)
    return {"pairs": pairs, "predicted": predicted, "method": METHOD,
            **_verdict(pairs, predicted), "extremes": {**extremes, **_verdict([extremes], predicted)}}


def _verdict(pairs: list[dict], predicted: str | None) -> dict:
    observed = _resolved_direction(pairs)
    return {"observed": observed,
            "agrees": None if predicted is None or observed == "unresolved" else observed == predicted}


def _resolved_direction(pairs: list[dict]) -> str:
    """"grows" or "shrinks" when every interval lies on that side of 0, else "unresolved"."""
    if any(pair["ci"] is None for pair in pairs):
        return "unresolved"
    if all(pair["ci"][0] > 0 for pair in pairs):
        return "grows"
    if all(pair["ci"][1] < 0 for pair in pairs):
        return "shrinks"
    return "unresolved"


def gap_order_lines(sizes: dict) -> list[str]:
    """The report's table of adjacent gap differences (fit.json model_sizes), one row per p and pair."""
    names = {s["parameters"]: s["curve"] for s in sizes.get("sizes", [])}
    found = sizes.get("gap_order") or {}
    if not found:
        return []
    lines = ["Is the measured gap ordered by size beyond the replicates' noise? D = gap(larger) − gap(smaller) at "
             f"n = {sizes['tokens']:,}; method: {METHOD}.", "",
             "| p | smaller → larger | D | 95% interval | p (D > 0) | verdict | predicted | agrees |",
             "|---|---|---|---|---|---|---|---|"]
    agree = {True: "yes", False: "**no**", None: "–"}
    for p, order in found.items():
        rows = [(pair, order) for pair in order["pairs"]] + ([(order["extremes"], order["extremes"])]
                                                              if len(order["pairs"]) > 1 else [])
        for pair, verdict in rows:
            ci = "–" if pair["ci"] is None else f"[{pair['ci'][0]:+.4f}, {pair['ci'][1]:+.4f}]"
            p_value = "–" if pair["p_larger_gap"] is None else f"{pair['p_larger_gap']:.2g}"
            smaller, larger = (names.get(pair[k], pair[k]) for k in ("smaller", "larger"))
            scope = "smallest vs largest only" if verdict is not order else "order over all sizes"
            lines.append(f"| {p} | {smaller} → {larger} | {pair['difference']:+.4f} | {ci} | {p_value} | "
                         f"{verdict['observed']} ({scope}) | {order['predicted'] or 'no single order'} | "
                         f"{agree[verdict['agrees']]} |")
    return lines + [""]
