"""fit: scaling laws and the linear theory, fitted to the measured curves; predictions checked on held-out budgets.

One unit, `fit/fit`, at runs/NAME/fit/ with `fit.json`. Inputs: every evaluate unit (its manifest carries one
results row, read through `artifacts.result_rows`) and every synthetic corpus (its diagnostics). A curve is one
student (and one synthetic generation when the run mixes several). fit.json:
  students.CURVE      student, generation, parameters, family, mix_mode, budgets, fractions;
                      curves: L_p(n) = E_p + A_p n^-alpha on every budget (`fitting.fit_scaling_curves`: 95%
                      intervals from joint draws, plateau gaps E_p - E_0, plateau_draws, F tests of the form);
                      measured_gaps, gap_trends: L_p(n) - L_0(n) at the largest / every budget (Welch intervals,
                      Holm-corrected tests) and its slope on log n: grows, holds or shrinks;
                      identification: per p, is E_p identified (`prediction.IDENTIFICATION_RULE`), what is missing;
                      holdout: predict-then-verify on the largest budget (>= 4 budgets; `prediction.predict_heldout`);
                      theory: both forms of the linear theory on the plateaus (or, when those are not identified,
                      on the loss at the largest budget), GLS with the points' covariance (joint bootstrap draws of
                      the plateaus, or the seed spread), which one the points support (`theory_fit`);
                      findings: the papers' qualitative claims, holds true / false / null (not testable: "why");
                      excess: with an exact entropy (builtin:reference-language), E_p minus it;
                      power: replicates per arm a 2σ detection of the smallest p's predicted gap needs (`power`).
  curve_of_unit       evaluate unit id -> CURVE (how the report groups rows).
  replicates          method: every fit above sees one row per independent unit of its cell (`replicates.METHOD`:
                      teachers, else mixture draws, else seeds); variance_components per CURVE (teacher, draw, seed).
  collapse_gap        rows of {curve, parameters, fraction, plateau_gap(+_ci) where both plateaus are identified,
                      measured_gap(+_ci, p_holm) at the largest budget, the gap's slope per doubling of n and verdict}.
  left_out            units whose loss is not finite (left out of every fit, with a warning in the log).
  model_sizes         {compared: bool, why | generation, source, tokens, sizes, theory: `compare_model_sizes`,
                      gap_order: {p: `size_order.gap_order` of the measured gaps at n = tokens}}.
  generations         {generate_mode, accumulate_margin, trends: loss vs generation index per student x mix_mode x
                      p x n, slope from the per-generation means (`generations`), finding per the generate mode}.
  tails               per corpus: Zipf beta of human and synthetic words, the cutoff top-p implies.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

from pipeline.analysis import fitting, generations, power, prediction, replicates, size_order, tails_fit, theory_fit
from pipeline.data.sources import REFERENCE_LANGUAGE
from pipeline.io import write_json_atomic
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY
from pipeline.unit import Unit

NAME = "fit"
VERSION = 7


def plan(cfg, planned) -> list[Unit]:
    # prepare: the human test and train words the tails' missing mass is counted against
    inputs = (PREPARE_KEY, *(u.key for u in planned.units("evaluate")), *artifacts.corpus_keys(planned))
    params = {"fit": cfg.fit.model_dump(mode="json"), "generate_mode": cfg.generate.mode,
              "sampling": {"temperature": cfg.generate.temperature, "top_p": cfg.generate.top_p,
                           "top_k": cfg.generate.top_k}}
    return [Unit(NAME, NAME, params, inputs)]


def curve_label(row: dict, several_generations: bool) -> str:
    """One fitted curve per student (and per synthetic generation when a run mixes several)."""
    return f"{row['student']} gen{row.get('generation', 0)}" if several_generations else row["student"]


def label_rows(rows: list[dict]) -> dict[str, list[dict]]:
    several_generations = len({row.get("generation", 0) for row in rows}) > 1
    curves: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        curves[curve_label(row, several_generations)].append(row)
    return dict(sorted(curves.items()))


def run(ctx) -> dict[str, Any]:
    params = ctx.params["fit"]
    raw_rows, left_out = fitting.finite_rows(artifacts.result_rows(ctx.inputs))
    for unit in left_out:
        ctx.log.warning("fit: %s left out: its loss is not finite", unit)
    rows = replicates.replicate_rows(raw_rows)  # one row per independent unit: teacher, draw or seed
    curves, raw_curves = label_rows(rows), label_rows(raw_rows)
    students = {}
    for label, curve_rows in curves.items():
        students[label] = fit_curve(curve_rows, params)
        ctx.log.info("fit %s: %s", label, _one_line(students[label]))
    result = {
        "students": students,
        "curve_of_unit": {row["unit"]: label for label, curve_rows in raw_curves.items() for row in curve_rows},
        "replicates": replicate_summary(raw_curves),
        "collapse_gap": collapse_gap(students),
        "model_sizes": compare_sizes(students),
        "generations": generation_trends(rows, ctx.params.get("generate_mode"), params.get("accumulate_margin")),
        "tails": fit_tails(ctx.inputs_of("generate"), ctx.params.get("sampling") or {}, ctx.inputs.get(PREPARE_KEY)),
        "reference_language": prediction.exact_entropy(rows) is not None,
        "n_rows": len(rows),
        "left_out": left_out,
    }
    write_json_atomic(Path(ctx.out) / "fit.json", result)
    verdicts = [f["holds"] for s in students.values() for f in s["findings"].values()]
    made = [v for s in students.values() for v in s["holdout"].get("per_fraction", {}).values()]
    return {"alpha": next(iter(students.values()), {}).get("curves", {}).get("alpha"),
            "findings_hold": all(v is True for v in verdicts), "findings_untestable": verdicts.count(None),
            "predictions": len(made), "predictions_inside": sum(bool(v["inside"]) for v in made)}


def replicate_summary(raw_curves: dict[str, list[dict]]) -> dict[str, Any]:
    """What the intervals treat as independent, and the variance each level of the design carries, per curve."""
    return {"method": replicates.METHOD,
            "variance_components": {label: replicates.variance_components(curve_rows)
                                    for label, curve_rows in raw_curves.items()}}


def fit_curve(rows: list[dict], params: dict) -> dict[str, Any]:
    """Everything fitted to one curve's rows: scaling law, identification, held-out prediction, theory, findings."""
    share, bootstrap = params["share"], params["bootstrap"]
    curves = fitting.fit_scaling_curves(rows, share=share, bootstrap=bootstrap)
    identified = prediction.identification(rows, curves)
    first = rows[0]
    entry = {"student": first["student"], "generation": first.get("generation", 0),
             "parameters": first.get("parameters"), "family": first.get("family"), "mix_mode": first.get("mix_mode"),
             "budgets": sorted({int(r["token_budget"]) for r in rows}),
             "fractions": sorted({float(r["synthetic_fraction"]) for r in rows}),
             "mean_loss": mean_loss_table(rows), "measured_gaps": prediction.measured_gaps(rows),
             "gap_trends": prediction.gap_trends(rows), "curves": curves, "identification": identified,
             "holdout": prediction.predict_heldout(rows, share=share),
             "theory": fit_theory(rows, curves, identified["identified"]),
             "findings": findings(rows, curves, identified)}
    entry["power"] = power_at_largest_budget(rows, entry["theory"])
    entropy = prediction.exact_entropy(rows)
    if entropy is not None:
        entry["excess"] = {"entropy": entropy, "plateaus": {
            p: {"E": v["E"] - entropy, "E_ci": v["E_ci"] and [v["E_ci"][0] - entropy, v["E_ci"][1] - entropy]}
            for p, v in curves["per_fraction"].items()}, "exponents": prediction.excess_exponents(rows)}
    return entry


def power_at_largest_budget(rows: list[dict], theory: dict) -> dict[str, Any]:
    """`power.smallest_fraction` with the replicate spread and the fewest replicates of the largest budget's cells."""
    cells = prediction.cell_means(rows)
    budget = max(n for _, n in cells)
    at_budget = [cell for (_, n), cell in cells.items() if n == budget]
    spread = power.pooled_spread([cell["values"] for cell in at_budget])
    return {**power.smallest_fraction(theory, spread, min(c["seeds"] for c in at_budget)), "budget": budget}


def mean_loss_table(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{n: {p: {mean, sd, seeds}}} of the test loss (and, with an exact entropy, the excess loss) over seeds."""
    table: dict[str, dict[str, dict]] = defaultdict(dict)
    excess = prediction.cell_means(rows, "excess_loss")
    for (p, n), cell in prediction.cell_means(rows).items():
        entry = {k: cell[k] for k in ("mean", "sd", "seeds")}
        if (p, n) in excess:
            entry.update(excess_mean=excess[(p, n)]["mean"], excess_sd=excess[(p, n)]["sd"])
        table[str(n)][f"{p:g}"] = entry
    return dict(table)


def fit_theory(rows: list[dict], curves: dict, identified: bool) -> dict[str, Any]:
    """The linear theory on the plateaus when they are identified, else on the mean loss at the largest budget.

    The points' covariance: from the plateau fit's joint bootstrap draws ("plateau_draws", one row of E_p per
    draw over "fractions"), or for losses at one budget from the seeds; without it the forms are not compared.
    """
    if identified:
        points, source, budget = fitting.plateaus_from_fit(curves), "fitted plateaus E_p", None
    else:
        cells = prediction.cell_means(rows)
        budget = max(n for _, n in cells)
        points = {p: cell["mean"] for (p, n), cell in cells.items() if n == budget}
        source = f"mean test loss at n = {budget:,} (the plateaus are not identified)"
    if 0.0 not in points or len(points) < 2:
        return {"fitted": False, "source": source,
                "why": "needs p = 0 and at least one p > 0" + (f" measured at n = {budget:,}" if budget else "")}
    if identified:
        covariance = theory_fit.gap_covariance_from_draws(curves.get("plateau_draws"),
                                                          curves.get("fractions") or sorted(points))
    else:
        covariance = theory_fit.gap_covariance_from_seeds({p: cells[(p, budget)]["values"] for p in points})
    return {"fitted": True, "source": source, "budget": budget, "points": {f"{p:g}": v for p, v in points.items()},
            **theory_fit.fit_linear_theory(points, covariance, plateaus=identified)}


def _verdict(holds: bool | None, values: list[float], what: str, why: str | None = None) -> dict[str, Any]:
    entry = {"holds": holds, "values": values, "what": what}
    if why:
        entry["why"] = why
    return entry


def _increasing(values: list[float], why: str) -> tuple[bool | None, str | None]:
    if len(values) < 2:
        return None, why
    return all(b > a for a, b in pairwise(values)), None


def _plateau_steps(curves: dict) -> tuple[bool | None, str | None]:
    """E_p grows with p: the step from each fraction to the next has its 95% interval above 0; False when a step's
    interval lies below 0; None while a step's interval holds 0."""
    fractions = curves["fractions"]
    if len(fractions) < 2:
        return None, "needs two fractions or more"
    steps = {(a, b): curves["per_fraction"][f"{b:g}"].get("step_ci") for a, b in pairwise(fractions)}
    if any(ci is None for ci in steps.values()):
        return None, "no interval for a step between plateaus"
    if any(ci[1] < 0 for ci in steps.values()):
        return False, None
    unresolved = [f"E_{b:g} − E_{a:g} in [{ci[0]:.4f}, {ci[1]:.4f}]" for (a, b), ci in steps.items() if ci[0] <= 0]
    return (None, "not resolved: 95% interval of a step holds 0: " + "; ".join(unresolved)) if unresolved else (True, None)


def findings(rows: list[dict], curves: dict, identified: dict) -> dict[str, dict[str, Any]]:
    """The papers' qualitative claims, checked on this curve's numbers: holds true, false, or null (with why)."""
    cells = {key: cell["mean"] for key, cell in prediction.cell_means(rows).items()}
    fractions = sorted({p for p, _ in cells})
    budgets = sorted({n for _, n in cells})
    clean = [cells[(0.0, n)] for n in budgets if (0.0, n) in cells]
    largest = budgets[-1]
    at_largest = [cells[(p, largest)] for p in fractions if (p, largest) in cells]
    plateaus = [curves["per_fraction"][f"{p:g}"]["E"] for p in fractions]
    falls = _increasing([-v for v in clean], "needs p = 0 at two budgets or more")
    rises = _increasing(at_largest, f"needs two fractions or more at n = {largest:,}")
    grows = _plateau_steps(curves)
    if not identified["identified"]:
        missing = [f"p = {p}: {v['missing']}" for p, v in identified["per_fraction"].items() if not v["identified"]]
        grows = (None, "plateaus not identified; " + "; ".join(missing))
    return {
        "clean_loss_falls_with_budget": _verdict(falls[0], clean, "p = 0: test loss at each budget, smallest first",
                                                 falls[1]),
        "loss_rises_with_fraction_at_largest_budget": _verdict(
            rises[0], at_largest, f"n = {largest:,}: test loss at each fraction {fractions}", rises[1]),
        "plateau_grows_with_fraction": _verdict(grows[0], plateaus if identified["identified"] else [],
                                                f"fitted E_p at each fraction {fractions}; each step's 95% "
                                                "interval above 0", grows[1]),
    }


def collapse_gap(students: dict[str, dict]) -> list[dict[str, Any]]:
    """Per curve and p > 0: the fitted plateau gap E_p − E_0 (only where both plateaus are identified), the measured
    gap at n_max with its test, and the measured gap's slope per doubling of n with its verdict."""
    entries = []
    for label, student in students.items():
        per_fraction = student["curves"]["per_fraction"]
        if "0" not in per_fraction:
            continue
        status = student["identification"]["per_fraction"]
        measured, trends = student.get("measured_gaps", {}), student.get("gap_trends", {}).get("per_fraction", {})
        for p, fitted in per_fraction.items():
            if float(p) == 0.0:
                continue
            both = status[p]["identified"] and status["0"]["identified"]
            trend = trends.get(p, {})
            entries.append({"curve": label, "student": student["student"], "parameters": student["parameters"],
                            "generation": student["generation"], "fraction": float(p), "plateau_identified": both,
                            "plateau_gap": fitted.get("gap") if both else None,
                            "plateau_gap_ci": fitted.get("gap_ci") if both else None,
                            "gap_slope_per_doubling": trend.get("slope_per_doubling"),
                            "gap_slope_ci": trend.get("slope_ci"), "gap_verdict": trend.get("verdict"),
                            **_measured_gap(measured.get(p))})
    return entries


def _measured_gap(measured: dict | None) -> dict[str, Any]:
    if not measured:
        return {"measured_gap": None, "measured_gap_ci": None, "budget": None, "measured_gap_p_holm": None}
    return {"measured_gap": measured["gap"], "measured_gap_ci": measured["gap_ci"], "budget": measured["budget"],
            "measured_gap_p_holm": measured["p_holm"]}


def compare_sizes(students: dict[str, dict]) -> dict[str, Any]:
    """Student sizes of the first generation ordered by collapse gap, against the random-projection model."""
    if not students:
        return {"compared": False, "why": "no results rows"}
    generation = min(s["generation"] for s in students.values())
    sized = {label: s for label, s in students.items() if s.get("parameters") and s["generation"] == generation}
    if len({s["parameters"] for s in sized.values()}) < len(sized) or len(sized) < 2:
        return {"compared": False, "why": "needs at least two students of different parameter counts"}
    budget = min(max(s["budgets"]) for s in sized.values())
    if all(s["identification"]["identified"] for s in sized.values()):
        source = (f"fitted plateaus E_p (extrapolated to n -> infinity, where every size would fall below the "
                  f"threshold; the regime is decided at the largest budget they were fitted on, n = {budget:,})")
        values = {s["parameters"]: fitting.plateaus_from_fit(s["curves"]) for s in sized.values()}
    else:
        source = f"mean test loss at n = {budget:,} (the plateaus are not all identified)"
        values = {s["parameters"]: {float(p): c["mean"] for p, c in s["mean_loss"].get(str(budget), {}).items()}
                  for s in sized.values()}
    common = set.intersection(*(set(v) for v in values.values()))
    if 0.0 not in common or len(common) < 2:
        return {"compared": False, "why": f"the students share no p = 0 and p > 0 pair in {source}"}
    theory = theory_fit.compare_model_sizes(values, tokens=budget)
    return {"compared": True, "generation": generation, "source": source, "tokens": budget,
            "sizes": [{"curve": label, "student": s["student"], "parameters": s["parameters"]}
                      for label, s in sorted(sized.items(), key=lambda kv: kv[1]["parameters"])],
            "theory": theory, "gap_order": measured_gap_order(sized, budget, theory["applies"])}


def measured_gap_order(sized: dict[str, dict], budget: int, applies: str) -> dict[str, Any]:
    """Per p > 0 every size measured at `budget` has: `size_order.gap_order` on the measured gaps there."""
    cells = {s["parameters"]: s["mean_loss"].get(str(budget), {}) for s in sized.values()}
    shared = set.intersection(*(set(c) for c in cells.values()))
    if "0" not in shared:
        return {}
    return {p: {"budget": budget, **size_order.gap_order({size: {"p": c[p], "0": c["0"]} for size, c in cells.items()},
                                                         applies)}
            for p in sorted(shared - {"0"}, key=float)}


def generation_trends(rows: list[dict], generate_mode: str | None, margin: float | None) -> dict[str, Any]:
    """Loss vs generation index for every student x mix mode x p x n measured at two generations or more."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = (row["student"], row.get("mix_mode"), float(row["synthetic_fraction"]), int(row["token_budget"]))
        groups[key].append(row)
    trends = []
    for (student, mix_mode, p, n), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len({r.get("generation", 0) for r in group}) < 2:
            continue
        trend = {"student": student, "mix_mode": mix_mode, "fraction": p, "budget": n,
                 **generations.generation_trend([{**r, "generation": r.get("generation", 0)} for r in group])}
        trend["finding"] = _generation_finding(trend, generate_mode, margin)
        trends.append(trend)
    return {"generate_mode": generate_mode, "accumulate_margin": margin, "trends": trends}


def _generation_finding(trend: dict, generate_mode: str | None, margin: float | None) -> dict[str, Any]:
    """replace: the loss grows (one-sided test of the slope); accumulate: it stays within ±margin (equivalence)."""
    if generate_mode == "replace":
        return generations.growth(trend)
    if generate_mode == "accumulate":
        return generations.boundedness(trend, margin)
    return {"holds": None, "why": "the teacher's generate mode is not known to this fit (params generate_mode)"}


def human_words(prepare_dir: Path) -> dict[str, Any]:
    """The human test split's word counts and train split's word types, and the lexicon size N (`tails_fit`)."""
    from collections import Counter

    from pipeline.lm.diagnostics import words

    test = Counter(w for doc in artifacts.documents(prepare_dir, "test") for w in words(doc))
    train_types = {w for doc in artifacts.documents(prepare_dir, "train") for w in words(doc)}
    corpus = artifacts.manifest(prepare_dir)["params"]["corpus"]
    if corpus.get("source") == REFERENCE_LANGUAGE:
        reference = artifacts.reference_parameters(prepare_dir)
        return {"test": test, "train_types": train_types, "lexicon_size": int(reference["lexicon_size"]),
                "lexicon_size_source": "the reference language's lexicon"}
    return {"test": test, "train_types": train_types, "lexicon_size": len(train_types),
            "lexicon_size_source": "human train word types (a lower bound)"}


def synthetic_types(corpus_dir: Path) -> set[str]:
    """Word types of a corpus's training text (its held-out documents left out: no student trains on them)."""
    from pipeline.lm.diagnostics import words

    return {w for text in artifacts.corpus_documents(corpus_dir, heldout=False) for w in words(text)}


def fit_tails(corpora: dict[str, Path], sampling: dict, prepare_dir: Path | None) -> dict[str, Any]:
    """Zipf exponents of human vs synthetic word unigrams (generate diagnostics of each corpus, by unit id), the
    cut top-p implies, and (`tails_fit.corpus_tails`) the lexicon size, words per token, the human test mass the
    corpus misses and the finite-support theory beside it."""
    tails, human = {}, human_words(Path(prepare_dir)) if corpora else None
    for corpus_id, corpus_dir in sorted(corpora.items()):
        diag = artifacts.corpus_diagnostics(corpus_dir)
        fits = {side: fitting.fit_tail_model(diag[side]["word_rank_frequency"])
                for side in ("human", "synthetic") if "word_rank_frequency" in diag.get(side, {})}
        top_p = sampling.get("top_p")
        if "human" in fits and top_p is not None and top_p < 1:
            try:
                fits["predicted_cutoff"] = fitting.predicted_tail_cutoff(fits["human"]["beta"], top_p=top_p)
            except ValueError as exc:  # beta <= 1: the Zipf formulas do not apply
                fits["predicted_cutoff"] = {"why": str(exc)}
        if "human" in fits:
            words = {**human, "synthetic_types": synthetic_types(corpus_dir)}
            fits.update(tails_fit.corpus_tails(diag, fits["human"]["beta"], sampling, words))
        if fits:
            tails[corpus_id] = fits
    return tails


def _one_line(student: dict) -> str:
    curves = student["curves"]
    plateaus = ", ".join(f"E({p})={v['E']:.3f}" for p, v in curves["per_fraction"].items())
    alpha = curves.get("alpha")
    held = student["holdout"]
    checks = ", ".join(f"p={p}: {v['relative_error']:+.2%} {'in' if v['inside'] else 'OUT'}"
                       for p, v in held.get("per_fraction", {}).items())
    return (f"alpha={alpha if alpha is None else round(alpha, 3)} {plateaus}; identified="
            f"{student['identification']['identified']}; held-out n={held['heldout_budget']:,}: {checks or held.get('why')}")
