"""report: what a researcher reads at the end — runs/NAME/report/report.md plus PNG figures.

One unit, `report/report`. It reads the fit (fit.json), every evaluate row, the synthetic corpora's
diagnostics and prepare's corpus statistics; it draws the figures (pipeline/analysis/figures.py, and the
theory-vs-simulation panels from pipeline/theory) and writes a report that states the experiment's
outcome, including when this run does NOT show a finding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.analysis import figures
from pipeline.orchestration.runner import Unit, write_text_atomic
from pipeline.stages.fit import result_rows

NAME = "report"
VERSION = 1

FINDING_TEXT = {
    "clean_loss_falls_with_budget": "With only human data (p = 0), the test loss falls as the token budget grows.",
    "loss_rises_with_fraction_at_largest_budget": "At the largest budget, the test loss rises with the synthetic fraction p.",
    "plateau_grows_with_fraction": "The fitted plateau E_p (the loss as n → ∞) grows with p: more data does not remove the synthetic penalty.",
}


def plan(cfg, planned) -> list[Unit]:
    inputs = ("fit/fit", "prepare/prepare") + tuple(u.key for u in planned.units("evaluate"))
    inputs += tuple(u.key for u in planned.units("generate") if "-s" not in u.id)
    params = {"report": cfg.report.model_dump(mode="json"), "name": cfg.name}
    return [Unit(NAME, NAME, params, inputs)]


def run(ctx) -> dict[str, Any]:
    out = Path(ctx.out)
    fit = json.loads((ctx.inputs["fit/fit"] / "fit.json").read_text())
    rows = result_rows(ctx)
    diagnostics = _diagnostics(ctx)
    figs = out / "figures"
    drawn = {
        "loss_vs_budget": figures.loss_vs_budget(rows, fit["students"], figs / "loss_vs_budget.png"),
        "plateau_vs_fraction": figures.plateau_vs_fraction(fit["students"], figs / "plateau_vs_fraction.png"),
        "loss_vs_size": figures.loss_vs_size(rows, figs / "loss_vs_size.png"),
    }
    if diagnostics:
        drawn["rank_frequency"] = figures.rank_frequency(diagnostics, figs / "rank_frequency.png")
    theory = []
    if ctx.params["report"]["theory_figures"]:
        from pipeline.theory.figures import theory_figures

        theory = theory_figures(figs / "theory")
    text = render(ctx, fit, rows, diagnostics, drawn, theory)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "results.md", results_markdown(rows))
    return {"figures": len(drawn) + len(theory), "rows": len(rows)}


def _diagnostics(ctx) -> dict[str, dict]:
    found = {}
    for key in ctx.unit.inputs:
        path = ctx.inputs[key] / "diagnostics.json"
        if key.startswith("generate/") and path.is_file():
            found[key.split("/", 1)[1]] = json.loads(path.read_text())
    return found


def render(ctx, fit: dict, rows: list[dict], diagnostics: dict, drawn: dict, theory: list[Path]) -> str:
    cfg = ctx.cfg
    title = ctx.params["report"]["title"] or f"Model collapse: run `{cfg.name}`"
    fractions = sorted({float(r["synthetic_fraction"]) for r in rows})
    budgets = sorted({int(r["token_budget"]) for r in rows})
    teacher = cfg.teacher.pretrained if cfg.teacher.init == "pretrained" else cfg.teacher.model.label
    lines = [f"# {title}", "",
             f"Human corpus `{cfg.corpus.source}`; teacher `{teacher}` ({cfg.teacher.init}); synthetic text sampled at "
             f"temperature {cfg.generate.temperature}, top-p {cfg.generate.top_p}, top-k {cfg.generate.top_k}. "
             f"Students {', '.join(sorted({r['student'] for r in rows}))} trained on `{cfg.mix.mode}` mixtures with "
             f"synthetic fractions p ∈ {{{', '.join(f'{p:g}' for p in fractions)}}} and token budgets "
             f"n ∈ {{{', '.join(f'{n:,}' for n in budgets)}}}, seeds {cfg.train.seeds}; each evaluated on held-out "
             f"human test text (loss in nats/token from the summed NLL over every test token).", ""]
    lines += ["## Outcome", ""]
    for student, sfit in sorted(fit["students"].items()):
        lines.append(f"**{student}** ({_params(sfit.get('parameters'))} parameters):")
        lines.append("")
        for key, finding in sfit["findings"].items():
            mark = "✅ holds" if finding["holds"] else "❌ does NOT hold in this run"
            values = ", ".join(f"{v:.4f}" for v in finding["values"])
            lines.append(f"- {FINDING_TEXT[key]} — {mark} ({finding['what']}: {values})")
        lines.append("")
    if not all(f["holds"] for s in fit["students"].values() for f in s["findings"].values()):
        lines += ["Where a finding does not hold, read the figures before the theory: too few optimizer steps, a "
                  "teacher weaker than the clean student, or seed noise larger than the synthetic penalty all hide "
                  "collapse at this scale (see the seed spread in the results table).", ""]
    lines += _fit_section(fit)
    lines += ["## Figures", "",
              "**Loss vs data.** Each line is one synthetic fraction p (dark = clean); dashed lines are the fitted "
              "L_p(n) = E_p + A·n^(−α), dotted lines the plateaus E_p. Collapse looks like lines that flatten "
              "at a higher level as p grows instead of continuing down.", "",
              f"![loss vs budget]({drawn['loss_vs_budget'].relative_to(ctx.out)})", "",
              "**Plateau vs fraction.** Fitted plateaus with bootstrap intervals against the linear theory's "
              "E_0 + c²p² (+ b·p(1−p)) (Strong Model Collapse, isotropic limit); c² is the effective synthetic "
              "quality of this teacher.", "",
              f"![plateau vs fraction]({drawn['plateau_vs_fraction'].relative_to(ctx.out)})", "",
              "**Loss vs model size** at the largest budget.", "",
              f"![loss vs size]({drawn['loss_vs_size'].relative_to(ctx.out)})", ""]
    if "rank_frequency" in drawn:
        lines += ["## Synthetic text", "",
                  "Rank-frequency of words, human vs synthetic (A Tale of Tails: sampling cuts the tail).", "",
                  f"![rank frequency]({drawn['rank_frequency'].relative_to(ctx.out)})", ""]
        lines += _diagnostics_table(diagnostics)
    if theory:
        lines += ["## Theory vs simulation", "",
                  "Panels from `pipeline/theory` (no run needed: `collapse theory`): lines are the deterministic "
                  "equivalents, markers Monte Carlo.", ""]
        lines += [f"![{p.stem}]({p.relative_to(ctx.out)})" for p in theory] + [""]
    lines += ["## Every unit", "", results_markdown(rows), "",
              "## Reproduce", "", "```", f"collapse run {ctx.run_dir / 'config.yaml'}",
              f"collapse status {ctx.run_dir}", "```", ""]
    return "\n".join(lines)


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "–"


def _params(n: Any) -> str:
    return f"{n / 1e6:.2f}M" if isinstance(n, (int, float)) else "?"


def _fit_section(fit: dict) -> list[str]:
    lines = ["## Scaling-law fit", "", "| student | p | plateau E_p | 95% interval | α | A | c² | R² (c² form) |",
             "|---|---|---|---|---|---|---|---|"]
    for student, sfit in sorted(fit["students"].items()):
        curves, quality = sfit["curves"], sfit.get("quality") or {}
        for p, per in sorted(curves["per_fraction"].items(), key=lambda kv: float(kv[0])):
            ci = per.get("E_ci") or [float("nan")] * 2
            alpha, amplitude = per.get("alpha", curves.get("alpha")), per.get("A", curves.get("A"))
            lines.append(f"| {student} | {float(p):g} | {per['E']:.4f} | [{_num(ci[0])}, {_num(ci[1])}] | "
                         f"{_num(alpha, '.3f')} | {_num(amplitude, '.3g')} | {_num(quality.get('c2'))} | "
                         f"{_num(quality.get('r2'), '.3f')} |")
        if curves.get("warning"):
            lines.append(f"\n> {student}: {curves['warning']}\n")
    sizes = fit.get("model_sizes", {})
    lines += ["", f"Model sizes: {sizes.get('summary') or sizes.get('why') or json.dumps(sizes)}", ""]
    return lines


def _diagnostics_table(diagnostics: dict) -> list[str]:
    keys = ["zipf_word", "zipf_token", "human_test_type_coverage", "distinct_1", "distinct_2", "distinct_3",
            "mean_document_tokens", "tail_mass", "teacher_test_ppl"]
    lines = ["| corpus | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, diag in sorted(diagnostics.items()):
        for side in ("human", "synthetic"):
            values = diag.get(side) or {}
            cells = [_cell(values.get(k)) for k in keys]
            lines.append(f"| {name} {side} | " + " | ".join(cells) + " |")
    return lines + [""]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_markdown(rows: list[dict]) -> str:
    columns = ["student", "parameters", "generation", "synthetic_fraction", "token_budget", "seed", "step",
               "loss", "ppl", "bpb", "synthetic_loss"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    ordered = sorted(rows, key=lambda r: (r["student"], r.get("generation", 0), r["synthetic_fraction"],
                                          r["token_budget"], r.get("seed", 0)))
    for row in ordered:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
