"""fit: scaling laws and the linear theory, fitted to the measured curves.

One unit, `fit/fit`, at runs/NAME/fit/ with `fit.json`. Inputs: every evaluate unit (its manifest
carries one results row) and every synthetic corpus (its diagnostics). Per student:
  - L_p(n) = E_p + A n^-alpha per synthetic fraction p (shared A, alpha by default), bootstrap intervals;
  - E_p - E_0 ~ p^2 c^2 (+ b p(1-p)): the effective synthetic quality c^2 of the linear theory;
  - the papers' qualitative findings, each checked on this run's own numbers (the report says when
    one does not hold).
Across students: the plateau ordering by model size against the random-projection prediction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.analysis import fitting
from pipeline.orchestration.runner import Unit, write_json_atomic

NAME = "fit"
VERSION = 1


def plan(cfg, planned) -> list[Unit]:
    inputs = tuple(u.key for u in planned.units("evaluate"))
    corpora = tuple(u.key for u in planned.units("generate") if "-s" not in u.id)
    params = {"fit": cfg.fit.model_dump(mode="json"), "tail_rank": cfg.generate.tail_rank}
    return [Unit(NAME, NAME, params, inputs + corpora)]


def curve_label(row: dict, several_generations: bool) -> str:
    """One fitted curve per student (and per synthetic generation when a run mixes several)."""
    return f"{row['student']} gen{row.get('generation', 0)}" if several_generations else row["student"]


def per_fraction(curves: dict) -> dict[float, dict]:
    """The fit's per-fraction entries keyed by the fraction as a float."""
    return {float(p): v for p, v in curves.get("per_fraction", {}).items()}


def result_rows(ctx) -> list[dict[str, Any]]:
    """One row per evaluate unit, from its manifest (the rows of evaluate/results.jsonl), plus its curve label."""
    rows = []
    for key in ctx.unit.inputs:
        if key.startswith("evaluate/"):
            row = dict(ctx.manifest(key)["metrics"])
            row.setdefault("unit", key.split("/", 1)[1])
            rows.append(row)
    several_generations = len({row.get("generation", 0) for row in rows}) > 1
    for row in rows:
        row["curve"] = curve_label(row, several_generations)
    return rows


def run(ctx) -> dict[str, Any]:
    params = ctx.params["fit"]
    rows = result_rows(ctx)
    by_student: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_student[row["curve"]].append(row)
    students = {}
    for student, student_rows in sorted(by_student.items()):
        students[student] = fit_student(student_rows, params)
        ctx.log.info("fit %s: %s", student, _one_line(students[student]))
    result = {
        "students": students,
        "model_sizes": _compare_sizes(students),
        "tails": _fit_tails(ctx),
        "n_rows": len(rows),
    }
    write_json_atomic(Path(ctx.out) / "fit.json", result)
    first = next(iter(students.values()), {})
    return {
        "alpha": first.get("curves", {}).get("alpha"),
        "c2": first.get("quality", {}).get("c2"),
        "findings_hold": all(all(f["holds"] for f in s["findings"].values()) for s in students.values()),
    }


def fit_student(rows: list[dict], params: dict) -> dict[str, Any]:
    """Curves, plateaus, c^2 and the qualitative findings for one student's rows."""
    curves = fitting.fit_scaling_curves(rows, shared=params["shared_exponent"], bootstrap=params["bootstrap"])
    plateaus = {p: v["E"] for p, v in per_fraction(curves).items()}
    quality = fitting.fit_synthetic_quality(plateaus) if 0.0 in plateaus and len(plateaus) >= 2 else {}
    return {"curves": curves, "quality": quality, "findings": findings(rows, curves),
            "parameters": rows[0].get("parameters"), "family": rows[0].get("family")}


def _mean_loss(rows: list[dict]) -> dict[tuple[float, int], float]:
    """Mean test loss over seeds at each (fraction, budget)."""
    groups: dict[tuple[float, int], list[float]] = defaultdict(list)
    for row in rows:
        groups[(float(row["synthetic_fraction"]), int(row["token_budget"]))].append(float(row["loss"]))
    return {key: sum(v) / len(v) for key, v in groups.items()}


def findings(rows: list[dict], curves: dict) -> dict[str, dict[str, Any]]:
    """The papers' three qualitative claims, checked on this run's numbers (never assumed)."""
    loss = _mean_loss(rows)
    fractions = sorted({p for p, _ in loss})
    budgets = sorted({n for _, n in loss})
    clean = [loss[(0.0, n)] for n in budgets if (0.0, n) in loss]
    largest = budgets[-1]
    at_largest = [loss[(p, largest)] for p in fractions if (p, largest) in loss]
    fitted = per_fraction(curves)
    plateau = [fitted[p]["E"] for p in fractions if p in fitted]
    return {
        "clean_loss_falls_with_budget": {
            "holds": len(clean) >= 2 and all(b < a for a, b in zip(clean, clean[1:])),
            "values": clean, "what": "p = 0: test loss at each budget, smallest budget first"},
        "loss_rises_with_fraction_at_largest_budget": {
            "holds": len(at_largest) >= 2 and all(b > a for a, b in zip(at_largest, at_largest[1:])),
            "values": at_largest, "what": f"n = {largest}: test loss at each fraction {fractions}"},
        "plateau_grows_with_fraction": {
            "holds": len(plateau) >= 2 and all(b > a for a, b in zip(plateau, plateau[1:])),
            "values": plateau, "what": f"fitted E_p at each fraction {fractions}"},
    }


def _compare_sizes(students: dict[str, dict]) -> dict[str, Any]:
    sized = {name: s for name, s in students.items() if s.get("parameters")}
    if len(sized) < 2:
        return {"compared": False, "why": "needs at least two student sizes"}
    by_size = {s["parameters"]: {p: v["E"] for p, v in per_fraction(s["curves"]).items()} for s in sized.values()}
    if len(by_size) < 2:
        return {"compared": False, "why": "students differ in name but not in parameter count"}
    return {"compared": True, **fitting.compare_model_sizes(by_size)}


def _fit_tails(ctx) -> dict[str, Any]:
    """Zipf exponents of human vs synthetic word unigrams, from the generate diagnostics."""
    tails = {}
    for key in ctx.unit.inputs:
        if not key.startswith("generate/"):
            continue
        diag_path = ctx.inputs[key] / "diagnostics.json"
        if diag_path.is_file():
            diag = json.loads(diag_path.read_text())
            tails[key.split("/", 1)[1]] = {
                side: fitting.fit_tail_model(diag[side]["word_rank_frequency"])
                for side in ("human", "synthetic") if side in diag and "word_rank_frequency" in diag[side]
            }
    return tails


def _one_line(student: dict) -> str:
    curves = student["curves"]
    plateaus = ", ".join(f"E({p:g})={v['E']:.3f}" for p, v in per_fraction(curves).items())
    alpha = curves.get("alpha")
    return f"alpha={alpha if alpha is None else round(alpha, 3)} {plateaus} c2={student['quality'].get('c2', float('nan')):.3f}"
