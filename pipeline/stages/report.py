"""report: what a researcher reads at the end — runs/NAME/report/report.md, results.md and PNG figures.

One unit, `report/report`. It reads the fit only through fit/fit.json, the results rows and the corpora's
diagnostics through `artifacts`, and what the run was (corpus, teacher, sampling, mixing, seeds) from the
`description` its plan put into params. It draws the figures (pipeline/analysis/figures.py, and the
theory-vs-simulation panels from pipeline/theory) and states the outcome, including every finding this run does
NOT show and every number it cannot give (a plateau that is not identified is not printed as one). The markdown
of the fit's sections is in pipeline/analysis/report_text.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.analysis import figures, report_text
from pipeline.io import write_text_atomic
from pipeline.stages import artifacts
from pipeline.unit import Unit

NAME = "report"
VERSION = 5


def describe(cfg) -> dict[str, Any]:
    """What the run was, in the words the report prints (hashed: changing it re-renders the report)."""
    teacher = cfg.teacher.model
    init = f"pretrained, fine-tuning: {teacher.finetune}" if teacher.pretrained else "trained from scratch"
    return {"name": cfg.name, "title": cfg.report.title, "corpus_source": cfg.corpus.source,
            "teacher": teacher.pretrained or teacher.label, "teacher_init": init,
            "sampling": {"temperature": cfg.generate.temperature, "top_p": cfg.generate.top_p,
                         "top_k": cfg.generate.top_k},
            "generations": cfg.generate.generations, "generate_mode": cfg.generate.mode,
            "mix_mode": cfg.mix.mode, "seeds": list(cfg.train.seeds), **_replicates(cfg)}


def _replicates(cfg) -> dict[str, int]:
    """Teachers and mixture draws where there are several (a run without them describes itself as it always did)."""
    counts = {"teachers": cfg.teacher.replicates, "draws": cfg.mix.draws}
    return {key: count for key, count in counts.items() if count > 1}


def plan(cfg, planned) -> list[Unit]:
    inputs = (artifacts.FIT_KEY,) + tuple(u.key for u in planned.units("evaluate")) + artifacts.corpus_keys(planned)
    params = {"theory_figures": cfg.report.theory_figures, "description": describe(cfg)}
    return [Unit(NAME, NAME, params, inputs)]


def run(ctx) -> dict[str, Any]:
    out = Path(ctx.out)
    fit = artifacts.fit_results(ctx.inputs[artifacts.FIT_KEY])
    rows = artifacts.result_rows(ctx.inputs)
    for row in rows:
        row["curve"] = fit.get("curve_of_unit", {}).get(row.get("unit"), row["student"])
    diagnostics = {corpus_id: artifacts.corpus_diagnostics(path)
                   for corpus_id, path in ctx.inputs_of("generate").items()}
    diagnostics = {name: diag for name, diag in diagnostics.items() if diag}
    drawn = draw(fit, rows, diagnostics, out / "figures")
    theory = []
    if ctx.params["theory_figures"]:
        from pipeline.theory.figures import theory_figures

        theory = theory_figures(out / "figures" / "theory")
    text = render(ctx.params["description"], fit, rows, diagnostics,
                  {k: p.relative_to(out) for k, p in drawn.items()}, [p.relative_to(out) for p in theory])
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "results.md", results_markdown(rows) + "\n")
    return {"figures": len(drawn) + len(theory), "rows": len(rows)}


def draw(fit: dict, rows: list[dict], diagnostics: dict, figs: Path) -> dict[str, Path]:
    students = fit["students"]
    drawn = {"loss_vs_budget": figures.loss_vs_budget(rows, fit, figs / "loss_vs_budget.png"),
             "plateau_vs_fraction": figures.plateau_vs_fraction(students, figs / "plateau_vs_fraction.png"),
             "loss_vs_size": figures.loss_vs_size(rows, figs / "loss_vs_size.png")}
    if any((s.get("gap_trends") or {}).get("per_fraction") for s in students.values()):
        drawn["gap_vs_budget"] = figures.gap_vs_budget(fit, figs / "gap_vs_budget.png")
    if fit.get("reference_language"):
        drawn["excess_vs_budget"] = figures.loss_vs_budget(rows, fit, figs / "excess_vs_budget.png", excess=True)
    if len({g["parameters"] for g in fit.get("collapse_gap", [])}) > 1:
        drawn["gap_vs_size"] = figures.gap_vs_size(fit["collapse_gap"], figs / "gap_vs_size.png")
    trends = fit.get("generations", {}).get("trends")
    if trends:
        drawn["loss_vs_generation"] = figures.loss_vs_generation(trends, fit["generations"].get("generate_mode"),
                                                                 figs / "loss_vs_generation.png")
    if diagnostics:
        drawn["rank_frequency"] = figures.rank_frequency(diagnostics, figs / "rank_frequency.png")
    return drawn


def _setup(description: dict, rows: list[dict]) -> list[str]:
    title = description.get("title") or f"Model collapse: run `{description.get('name', '?')}`"
    fractions = sorted({float(r["synthetic_fraction"]) for r in rows})
    budgets = sorted({int(r["token_budget"]) for r in rows})
    sampling = description.get("sampling", {})
    generations = description.get("generations", 1)
    return [f"# {title}", "",
            f"Human corpus `{description.get('corpus_source')}`; teacher `{description.get('teacher')}` "
            f"({description.get('teacher_init')}); synthetic text sampled at temperature {sampling.get('temperature')}, "
            f"top-p {sampling.get('top_p')}, top-k {sampling.get('top_k')}"
            + (f", {generations} teacher generations ({description.get('generate_mode')})" if generations > 1 else "")
            + f". Students {', '.join(sorted({r['student'] for r in rows}))} trained on `{description.get('mix_mode')}` "
            f"mixtures with synthetic fractions p ∈ {{{', '.join(f'{p:g}' for p in fractions)}}} and token budgets "
            f"n ∈ {{{', '.join(f'{n:,}' for n in budgets)}}}, seeds {description.get('seeds')}"
            + "".join(f", {description[key]} {word}" for key, word in (("teachers", "teachers"),
                                                                        ("draws", "mixture draws")) if key in description)
            + "; each evaluated on "
            "held-out human test text (loss in nats/token from the summed NLL over every test token).", ""]


def render(description: dict, fit: dict, rows: list[dict], diagnostics: dict, drawn: dict[str, Path],
           theory: list[Path]) -> str:
    """The whole report.md; `drawn` and `theory` are figure paths relative to the report's directory."""
    lines = _setup(description, rows)
    lines += report_text.outcome(fit)
    lines += report_text.predictions(fit)
    lines += report_text.scaling_fit(fit)
    lines += report_text.linear_theory(fit)
    lines += report_text.collapse_gap(fit)
    lines += report_text.gaps_by_budget(fit)
    lines += report_text.replicates(fit)
    lines += report_text.power(fit)
    lines += report_text.model_sizes(fit)
    lines += report_text.generations(fit)
    lines += report_text.excess_exponents(fit)
    lines += report_text.tails(fit)
    lines += report_text.figures_section(drawn, fit)
    if "rank_frequency" in drawn:
        lines += report_text.diagnostics_table(diagnostics)
    if theory:
        lines += ["## Theory vs simulation", "",
                  "Panels from `pipeline/theory` (no run needed: `collapse theory`): lines are the deterministic "
                  "equivalents, markers Monte Carlo.", ""]
        lines += [f"![{p.stem}]({p})" for p in theory] + [""]
    name = description.get("name", "NAME")
    lines += ["## Every unit", "", results_markdown(rows), "",
              "## Reproduce", "", "```", f"collapse run runs/{name}/config.yaml", f"collapse status runs/{name}",
              "```", ""]
    return "\n".join(lines)


def results_markdown(rows: list[dict]) -> str:
    """The results table: `artifacts.RESULT_COLUMNS`, formatted by `artifacts.format_cell` (as `collapse status`)."""
    columns = [(key, header, spec) for key, header, spec in artifacts.RESULT_COLUMNS
               if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|---" * len(columns) + "|"]
    for row in sorted(rows, key=artifacts.result_sort_key):
        lines.append("| " + " | ".join(artifacts.format_cell(row, key, spec) for key, _, spec in columns) + " |")
    return "\n".join(lines)
