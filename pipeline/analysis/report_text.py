"""The report's markdown sections for a fit.json (pipeline/stages/fit.py documents its layout): tables and sentences.

Every function takes fit.json (a dict) and returns lines. A number the fit could not establish is printed as
what is missing, never as a finding: plateaus that are not identified, predictions that were not made, forms of
the theory the points cannot tell apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FINDING_TEXT = {
    "clean_loss_falls_with_budget": "With only human data (p = 0), the test loss falls as the token budget grows.",
    "loss_rises_with_fraction_at_largest_budget":
        "At the largest budget, the test loss rises with the synthetic fraction p.",
    "plateau_grows_with_fraction":
        "The fitted plateau E_p (the loss as n → ∞) grows with p: more data does not remove the synthetic penalty.",
}


def num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def interval(ci: list[float] | None, spec: str = ".4f") -> str:
    return f"[{num(ci[0], spec)}, {num(ci[1], spec)}]" if ci else "–"


def params(n: Any) -> str:
    return f"{n / 1e6:.2f}M" if isinstance(n, (int, float)) else "?"


def _mark(holds: bool | None) -> str:
    return {True: "✅ holds", False: "❌ does NOT hold in this run", None: "⚠️ not testable here"}[holds]


def outcome(fit: dict) -> list[str]:
    lines = ["## Outcome", ""]
    for label, student in sorted(fit["students"].items()):
        lines += [f"**{label}** ({params(student.get('parameters'))} parameters):", ""]
        for key, finding in student["findings"].items():
            values = ", ".join(f"{v:.4f}" for v in finding["values"])
            detail = finding.get("why") or f"{finding['what']}: {values}"
            lines.append(f"- {FINDING_TEXT.get(key, key)} — {_mark(finding['holds'])} ({detail})")
        lines.append("")
    verdicts = [f["holds"] for s in fit["students"].values() for f in s["findings"].values()]
    if False in verdicts:
        lines += ["Where a finding does not hold, read the figures before the theory: too few optimizer steps, a "
                  "teacher weaker than the clean student, or seed noise larger than the synthetic penalty all hide "
                  "collapse at this scale (see the seed spread in the results table).", ""]
    return lines


def _prediction_row(label: str, held: dict, p: str, entry: dict, excess: bool) -> str:
    measured = f"{entry['measured']:.4f}" + (f" ± {entry['measured_sd']:.4f}" if entry["measured_sd"] else "")
    inside = {True: "yes", False: "**no**", None: "– (no interval)"}[entry["inside"]]
    cells = [label, p, ", ".join(f"{n:,}" for n in held["fitted_budgets"]), f"{held['heldout_budget']:,}",
             f"{entry['predicted']:.4f}", interval(entry["interval"]), f"{measured} ({entry['seeds']})",
             f"{entry['relative_error']:+.2%}", inside]
    if excess:
        rel = entry.get("excess_relative_error")
        cells += [num(entry.get("predicted_excess")), num(entry.get("measured_excess")),
                  f"{rel:+.1%}" if rel is not None else "–"]
    return "| " + " | ".join(cells) + " |"


def predictions(fit: dict) -> list[str]:
    """Predict, then verify: the held-out largest budget against the curve fitted without it."""
    excess = bool(fit.get("reference_language"))
    lines = ["## Predict, then verify", "",
             "For every curve with at least four budgets, L_p(n) = E_p + A_p·n^(−α) was fitted WITHOUT the largest "
             "budget and then asked for the loss there. The interval is a 95% prediction interval for the measured "
             "mean over the held-out cell's seeds: the interval of the curve at that budget with the variance of "
             f"that many new seeds added (method: {_interval_method(fit)}). Relative error = (predicted − measured) / "
             "measured.", ""]
    header = ("| curve | p | fitted on n | held-out n | predicted | 95% interval | measured ± sd (seeds) | rel. error "
              "| inside? |")
    if excess:
        header += " predicted excess | measured excess | excess rel. error |"
    table, notes, made = [header, "|---" * (header.count("|") - 1) + "|"], [], []
    for label, student in sorted(fit["students"].items()):
        held = student["holdout"]
        for p, entry in held.get("per_fraction", {}).items():
            table.append(_prediction_row(label, held, p, entry, excess))
            made.append(entry)
        if not held.get("made"):
            notes.append(f"- {label}: no prediction made: {held['why']}.")
        notes += [f"- {label}, p = {p}: not predicted: {why}." for p, why in held.get("skipped", {}).items()
                  if held.get("made")]
    if made:
        errors = sorted(abs(e["relative_error"]) for e in made)
        inside = sum(bool(e["inside"]) for e in made)
        lines += table + ["", f"{inside} of {len(made)} held-out measurements fall inside their intervals; "
                          f"|relative error| median {errors[len(errors) // 2]:.2%}, largest {errors[-1]:.2%}.", ""]
    return lines + notes + ([""] if notes else [])


def _interval_method(fit: dict) -> str:
    methods = [s["curves"].get("interval_method") for s in fit.get("students", {}).values()]
    return next((m for m in methods if m), "–")


def _form_line(label: str, curves: dict) -> str:
    """How one student's fit was made: what the curves share, the seed noise, the F tests of the form."""
    noise, amplitude, lack = curves.get("noise"), curves.get("amplitude_test"), curves.get("lack_of_fit")
    parts = [f"curves share: {curves['share'].replace('_', ' ')}"]
    parts.append(f"seed noise sd {noise['sd']:.4f} nats ({noise['dof']} dof, {noise['source']})" if noise
                 else "no seed-noise estimate (no intervals)")
    if amplitude:
        verdict = "rejected: each curve has its own A_p" if amplitude["rejects_shared_amplitude"] else "not rejected"
        parts.append(f"one amplitude A for every curve: F test p = {amplitude['p_value']:.3g} ({verdict})")
    if lack:
        parts.append(f"lack of fit against the seed noise: F test p = {lack['p_value']:.3g}")
    return f"- {label}: " + "; ".join(parts) + "."


def scaling_fit(fit: dict) -> list[str]:
    excess = bool(fit.get("reference_language"))
    header = ("| curve | p | budgets | plateau E_p | 95% interval |" + (" E_p − entropy |" if excess else "")
              + " α | 95% interval | A_p | 95% interval |")
    rule = next((s["identification"].get("rule") for s in fit["students"].values()), None)
    lines = ["## Scaling-law fit (all budgets)", "",
             "L_p(n) = E_p + A_p·n^(−α), least squares on the cell means over seeds (weighted by seeds). Intervals "
             f"(plateaus, α, A_p, plateau gaps): {_interval_method(fit)}.", ""]
    if rule:
        lines += [f"Identification: {rule}.", ""]
    lines += [header, "|---" * (header.count("|") - 1) + "|"]
    missing, forms, warnings = [], [], []
    for label, student in sorted(fit["students"].items()):
        curves, status = student["curves"], student["identification"]["per_fraction"]
        for p, per in sorted(curves["per_fraction"].items(), key=lambda kv: float(kv[0])):
            ok = status[p]["identified"]
            cells = [label, p, str(per["budgets"]), num(per["E"]) if ok else "not identified",
                     interval(per.get("E_ci")) if ok else "–"]
            if excess:
                cells.append(num(student["excess"]["plateaus"][p]["E"]) if ok and "excess" in student else "–")
            cells += [num(per.get("alpha"), ".3f"), interval(per.get("alpha_ci"), ".3f"), num(per.get("A"), ".3g"),
                      interval(per.get("A_ci"), ".3g")]
            lines.append("| " + " | ".join(cells) + " |")
            if not ok:
                missing.append(f"- {label}, p = {p}: {status[p]['missing']}.")
        forms.append(_form_line(label, curves))
        if curves.get("warning"):
            warnings.append(f"> {label}: {curves['warning']}")
    lines += [""] + forms + [""]
    if missing:
        lines += ["**Plateaus not identified** (no plateau is reported for these; what is missing):", ""] + missing + [""]
    if fit.get("left_out"):
        lines += [f"Left out of every fit (loss not finite): {', '.join(fit['left_out'])}.", ""]
    return lines + warnings + ([""] if warnings else [])


def linear_theory(fit: dict) -> list[str]:
    lines = ["## Linear theory: n → ∞ form vs finite-n form", "",
             "Strong Model Collapse's isotropic ridge model gives the gap E_p − E_0 = p²c² as n → ∞ and "
             "(p² + p(1−p)u)c², u = φ/(1−φ), φ = d/n, at finite n. Both are fitted to the points below by generalised "
             "least squares (the gaps share E_0 and, for plateaus, one exponent); the finite-n form is preferred only "
             "when a parametric bootstrap of the likelihood ratio under u = 0 rejects the n → ∞ form at the 5% level. "
             "On plateaus (n → ∞) φ = d/n is 0: a u fitted there is an extra term, not φ.", ""]
    for label, student in sorted(fit["students"].items()):
        theory = student["theory"]
        if not theory.get("fitted"):
            lines += [f"**{label}**: not fitted: {theory['why']}.", ""]
            continue
        lines += [f"**{label}**, on {theory['source']}. Method: {theory['method']}.", "",
                  "| form | c² | 95% interval | u (φ) | R² | residuals by p |", "|---|---|---|---|---|---|"]
        for form, name in (("asymptotic", "n → ∞: p²c²"), ("finite_n", "finite n: (p²+p(1−p)u)c²")):
            entry = theory[form]
            u = f"{num(entry.get('u'), '.3g')} ({num(entry.get('phi'), '.3g')})" if form == "finite_n" else "–"
            residuals = ", ".join(f"{p}: {r:+.4f}" for p, r in entry["residuals"].items())
            lines.append(f"| {name} | {num(entry['c2'], '.4g')} | {interval(entry.get('c2_ci'), '.4g')} | {u} | "
                         f"{num(entry['r2'], '.3f')} | {residuals} |")
        lines += ["", f"Verdict: {theory['verdict']}."]
        if theory.get("warning"):
            lines.append(f"> {theory['warning']}")
        lines.append("")
    return lines


def _gap_methods(fit: dict) -> tuple[str, str]:
    trends = [s.get("gap_trends") or {} for s in fit.get("students", {}).values()]
    found = next((t for t in trends if t.get("method")), {})
    return found.get("gap_method", "–"), found.get("method", "–")


def _p_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


def collapse_gap(fit: dict) -> list[str]:
    gaps = fit.get("collapse_gap") or []
    if not gaps:
        return []
    gap_method, trend_method = _gap_methods(fit)
    lines = ["## Collapse gap per student", "",
             "Plateau gap E_p − E_0: only where both plateaus are identified (interval as in the scaling-law fit). "
             f"Measured gap at the largest budget: {gap_method}. Gap with n: {trend_method}; it grows (or shrinks) "
             "when that interval lies above (below) 0, else it holds.", "",
             "| curve | parameters | p | plateau gap E_p − E_0 | 95% interval | measured gap L_p − L_0 "
             "| 95% interval | Holm p (L_p > L_0) | gap per doubling of n | 95% interval | gap with n |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in gaps:
        ok = g["plateau_identified"]
        measured = f"{num(g['measured_gap'])} at n = {g['budget']:,}" if g.get("budget") else "–"
        lines.append(f"| {g['curve']} | {params(g['parameters'])} | {g['fraction']:g} | "
                     f"{num(g['plateau_gap']) if ok else 'not identified'} | "
                     f"{interval(g['plateau_gap_ci']) if ok else '–'} | "
                     f"{measured} | {interval(g['measured_gap_ci'])} | {_p_value(g.get('measured_gap_p_holm'))} | "
                     f"{num(g.get('gap_slope_per_doubling'), '+.4f')} | {interval(g.get('gap_slope_ci'))} | "
                     f"{g.get('gap_verdict') or '–'} |")
    return lines + [""]


def gaps_by_budget(fit: dict) -> list[str]:
    """The measured gap L_p(n) − L_0(n) at every budget, with its Welch interval and Holm-corrected test."""
    rows = [(label, p, n, gap) for label, student in sorted(fit.get("students", {}).items())
            for p, trend in (student.get("gap_trends") or {}).get("per_fraction", {}).items()
            for n, gap in ((n, trend["gaps"][str(n)]) for n in trend["budgets"])]
    if not rows:
        return []
    gap_method, _ = _gap_methods(fit)
    lines = ["## Measured gap at every budget", "", f"L_p(n) − L_0(n) over seeds: {gap_method}.", "",
             "| curve | p | n | L_p − L_0 | 95% interval | seeds (p, 0) | Holm p (L_p > L_0) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {p} | {int(n):,} | {num(g['gap'])} | {interval(g['gap_ci'])} | "
              f"{g['seeds'][0]}, {g['seeds'][1]} | {_p_value(g.get('p_holm'))} |" for label, p, n, g in rows]
    return lines + [""]


def replicates(fit: dict) -> list[str]:
    """Which units the intervals count as independent, and each level's share of the variance (with replicates)."""
    summary = fit.get("replicates") or {}
    components = {label: c for label, c in (summary.get("variance_components") or {}).items()
                  if set(c.get("levels", {})) - {"seed"}}
    if not components:
        return []
    lines = ["## Replicates: teachers, mixture draws, seeds", "", f"Intervals: {summary['method']}.",
             f"Variance components: {next(iter(components.values()))['method']}.", "",
             "| curve | level | sd (nats) | degrees of freedom | cells |", "|---|---|---|---|---|"]
    names = {"teacher_replicate": "teacher", "mix_draw": "mixture draw", "seed": "seed (init, order)"}
    for label, c in sorted(components.items()):
        lines += [f"| {label} | {names.get(level, level)} | {num(v['sd'])} | {v['dof']} | {v['cells']} |"
                  for level, v in c["levels"].items()]
    return lines + [""]


def power(fit: dict) -> list[str]:
    """For the smallest p of each curve: how many replicates a 2σ detection of its predicted gap needs."""
    stated = {label: s["power"] for label, s in sorted(fit.get("students", {}).items())
              if (s.get("power") or {}).get("stated")}
    if not stated:
        return []
    lines = ["## Power at the smallest fraction", "", f"Method: {next(iter(stated.values()))['method']}.", "",
             "| curve | p | predicted gap (source) | replicate sd | replicates now | sigmas now | replicates needed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {v['fraction']:g} | {v['predicted_gap']:.2g} ({v['source']}) | {num(v['sd'])} | "
              f"{v['replicates']} | {num(v['sigmas_now'], '.2g')} | {num(v['replicates_needed'], ',d')} |"
              for label, v in stated.items()]
    return lines + [""]


def model_sizes(fit: dict) -> list[str]:
    sizes = fit.get("model_sizes") or {}
    if not sizes.get("compared"):
        return ["## Model size", "", f"Not compared: {sizes.get('why', 'no comparison in fit.json')}.", ""]
    theory = sizes["theory"]
    names = {str(s["parameters"]): s["curve"] for s in sizes["sizes"]}
    order = lambda sizes_: " < ".join(names.get(str(s), str(s)) for s in sizes_) or "–"
    applies = theory["applies"]
    agree = {True: "yes", False: "**no**", None: "–"}
    lines = ["## Model size", "",
             f"Sizes compared on {sizes['source']} (generation {sizes['generation']}); each order lists the "
             "students from the smallest gap (or loss) to the largest. The random-projection model predicts the gap "
             "to grow with size below the interpolation threshold (parameters < tokens) and to shrink with size above "
             f"it. Regime that applies: **{applies}** ({theory['regime_why']}). Method: {theory['method']}.", "",
             "| p | observed gap order | predicted below threshold | predicted above threshold "
             f"| agrees ({applies}) | observed loss order | predicted loss order ({applies}) | agrees |",
             "|---|---|---|---|---|---|---|---|"]
    for p, entry in theory["fractions"].items():
        predicted = entry["predicted"]
        lines.append(f"| {p} | {order(entry.get('observed_gap_order', []))} | "
                     f"{order(predicted['below'].get('gap_order', []))} | "
                     f"{order(predicted['above'].get('gap_order', []))} | "
                     f"{agree[predicted[applies].get('gap_order_agrees')]} | {order(entry['observed_loss_order'])} | "
                     f"{order(predicted[applies]['loss_order'])} | {agree[predicted[applies]['loss_order_agrees']]} |")
    from pipeline.analysis.size_order import gap_order_lines  # here, not at the top: as tails_fit in tails()

    return lines + ["", f"Caveat: {theory['caveat']}.", ""] + gap_order_lines(sizes)


def _generation_verdict(finding: dict) -> str:
    return _mark(finding["holds"]) + (f": {finding['why']}" if finding.get("why") else f": {finding.get('what', '')}")


def generations(fit: dict) -> list[str]:
    block = fit.get("generations") or {}
    trends = block.get("trends") or []
    if not trends:
        return []
    margin = block.get("accumulate_margin")
    lines = ["## Generations", "",
             f"Teacher generation mode: {block.get('generate_mode') or 'not given'}. Model Collapse Demystified "
             "predicts linear growth of the test error with the generation index under `replace`, a bounded error "
             f"under `accumulate`. Method: {trends[0]['method']}; R² that of the same line. `replace` grows: one-sided "
             "t-test, the slope's lower 95% bound above 0. `accumulate` bounded: two one-sided tests, the slope's 90% "
             f"interval inside ±{num(margin, 'g')} nats per generation (fit.accumulate_margin).", "",
             "| student | mix | p | n | generations (seeds) | mean loss per generation | slope | 95% interval "
             "| 90% interval | R² | finding |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in trends:
        generations_seeds = ", ".join(f"{g} ({k})" for g, k in zip(t["generations"], t["seeds"]))
        lines.append(f"| {t['student']} | {t['mix_mode']} | {t['fraction']:g} | {t['budget']:,} | {generations_seeds} | "
                     f"{', '.join(f'{m:.4f}' for m in t['mean_loss'])} | {t['slope']:+.4f} | "
                     f"{interval(t['slope_ci'])} | {interval(t['slope_ci90'])} | {num(t['r2'], '.3f')} | "
                     f"{_generation_verdict(t['finding'])} |")
    return lines + [""]


def excess_exponents(fit: dict) -> list[str]:
    """The straight-line (log-log) exponent of the excess loss per curve and p, next to A Tale of Tails' 1 − 1/β."""
    rows = [(label, p, e) for label, student in sorted(fit.get("students", {}).items())
            for p, e in (student.get("excess", {}).get("exponents") or {}).items()]
    if not rows:
        return []
    lines = ["## Excess-loss exponent", "", "−slope of log(L − H) on log n over every budget (H: the exact entropy); "
             "95% t-interval from each budget's seeds (delta-method variance of the log mean excess, "
             "Welch–Satterthwaite degrees of freedom; with one seed per cell, the residuals of the line).", "",
             "| curve | p | budgets | exponent | 95% interval |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {p} | {e['budgets']} | {num(e['exponent'], '.3f')} | {interval(e['ci'])} |"
              for label, p, e in rows]
    betas = [t["human"]["beta"] for t in (fit.get("tails") or {}).values() if t.get("human", {}).get("beta")]
    if betas:
        beta = betas[0]
        lines += ["", f"A Tale of Tails: a learner of a Zipf(β) source improves as n^−(1 − 1/β); with the human words' "
                  f"fitted β = {beta:.3f} that is an exponent of {1 - 1 / beta:.3f}."]
    return lines + [""]


def tails(fit: dict) -> list[str]:
    """Tails per corpus (fitted β, top-p cut), the test mass each corpus misses with its theory, the clean exponent."""
    from pipeline.analysis import tails_fit  # here, not at the top: the rest of this module formats only

    found = fit.get("tails") or {}
    if not found:
        return []
    lines = ["## Tails", "", "| corpus | Zipf β human words | Zipf β synthetic words | top-p cutoff k (theory, N = ∞) |",
             "|---|---|---|---|"]
    for name, fits in sorted(found.items()):
        cut = fits.get("predicted_cutoff") or {}
        lines.append(f"| {name} | {num(fits.get('human', {}).get('beta'), '.3f')} | "
                     f"{num(fits.get('synthetic', {}).get('beta'), '.3f')} | {cut.get('cutoff', cut.get('why', '–'))} |")
    return lines + [""] + tails_fit.missing_mass_lines(fit) + tails_fit.clean_exponent_lines(fit)


def figures_section(drawn: dict[str, Path], fit: dict) -> list[str]:
    captions = [
        ("loss_vs_budget", "**Loss vs data.** One line per synthetic fraction p (dark = clean); dashed: the fitted "
         "L_p(n) = E_p + A_p·n^(−α); dotted: the plateau E_p where it is identified; open diamonds: the held-out "
         "prediction with its interval, beside the measurement it did not see."),
        ("excess_vs_budget", "**Excess loss vs data** (log-log): the loss minus the exact entropy of the test text, "
         "where a scaling law is a straight line until it flattens on a plateau."),
        ("gap_vs_budget", "**Measured gap vs data.** L_p(n) − L_0(n) over seeds at every budget with its 95% Welch "
         "interval (filled: above p = 0 after the Holm correction); the legend says whether the gap grows, holds or "
         "shrinks with n."),
        ("plateau_vs_fraction", "**Plateau vs fraction.** Plateaus with 95% intervals (or, where they are not "
         "identified, the loss at the largest budget) against the linear theory fitted in its n → ∞ form (solid) "
         "and its finite-n form (dashed)."),
        ("gap_vs_size", "**Collapse gap vs model size.**"),
        ("loss_vs_size", "**Loss vs model size** at the largest budget."),
        ("loss_vs_generation", "**Loss vs teacher generation** with the fitted line."),
    ]
    lines = ["## Figures", ""]
    for key, caption in captions:
        if key in drawn:
            lines += [caption, "", f"![{key.replace('_', ' ')}]({drawn[key]})", ""]
    if "rank_frequency" in drawn:
        lines += ["## Synthetic text", "",
                  "Rank-frequency of words, human vs synthetic (A Tale of Tails: sampling cuts the tail).", "",
                  f"![rank frequency]({drawn['rank_frequency']})", ""]
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def diagnostics_table(diagnostics: dict) -> list[str]:
    keys = ["zipf_word", "zipf_token", "human_test_type_coverage", "distinct_1", "distinct_2", "distinct_3",
            "mean_document_tokens", "tail_mass", "teacher_test_ppl"]
    lines = ["| corpus | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, diag in sorted(diagnostics.items()):
        for side in ("human", "synthetic"):
            values = diag.get(side) or {}
            lines.append(f"| {name} {side} | " + " | ".join(_cell(values.get(k)) for k in keys) + " |")
    return lines + [""]
