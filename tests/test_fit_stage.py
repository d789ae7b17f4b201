"""The fit and report stages on synthetic results rows: plan/run driven directly, no training.

Each test writes evaluate manifests (one results row each) for losses drawn from a known law, runs fit.run and
report.run with a context built here, and reads fit.json / report.md as a user would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.stages import fit, report
from pipeline.unit import Unit, UnitContext

TRUTH = {"E0": 2.0, "c2": 0.8, "A": 40.0, "alpha": 0.45}


def law(p: float, n: float) -> float:
    return TRUTH["E0"] + p**2 * TRUTH["c2"] + TRUTH["A"] * n ** (-TRUTH["alpha"])


def make_rows(fractions=(0.0, 0.2, 0.5), budgets=(10_000, 20_000, 40_000, 80_000, 160_000), seeds=(0, 1),
              students=(("gpt2-nano", 100_000),), generations=(0,), noise=0.002, entropy=None, seed=0,
              loss=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for student, size in students:
        for g in generations:
            for p in fractions:
                for n in budgets:
                    for s in seeds:
                        value = (loss or law)(p, n) * (1 + 0.5 * g * p) * np.exp(noise * rng.standard_normal())
                        row = {"unit": f"{student}-g{g}-p{p:g}-n{n}-s{s}", "student": student, "parameters": size,
                               "family": "gpt2", "synthetic_fraction": p, "token_budget": n, "generation": g,
                               "mix_mode": "replace", "seed": s, "step": 10, "loss": float(value),
                               "ppl": float(np.exp(value)), "bpb": float(value / np.log(2) / 4)}
                        if entropy is not None:
                            row.update(entropy=entropy, excess_loss=float(value) - entropy)
                        rows.append(row)
    return rows


def write_inputs(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    inputs = {}
    for row in rows:
        unit_dir = tmp_path / "evaluate" / row["unit"]
        unit_dir.mkdir(parents=True)
        (unit_dir / "manifest.json").write_text(json.dumps({"metrics": row}))
        inputs[f"evaluate/{row['unit']}"] = unit_dir
    return inputs


def context(unit: Unit, out: Path, inputs: dict[str, Path]) -> UnitContext:
    out.mkdir(parents=True, exist_ok=True)
    # prepare is read only with synthetic corpora (the tails' word counts); these runs have none
    return UnitContext(unit=unit, out=out, inputs={key: inputs[key] for key in unit.inputs if key in inputs},
                       log=logging.getLogger("t"))


def fake_cfg(generate_mode="replace", generations=1) -> SimpleNamespace:
    dump = lambda fields: SimpleNamespace(model_dump=lambda mode=None: dict(fields), **fields)
    return SimpleNamespace(
        name="synthetic", corpus=SimpleNamespace(source="builtin:reference-language"),
        teacher=SimpleNamespace(model=SimpleNamespace(pretrained=None, label="gpt2-nano", finetune="full"), replicates=1),
        generate=SimpleNamespace(mode=generate_mode, generations=generations, temperature=1.0, top_p=1.0, top_k=0),
        mix=SimpleNamespace(mode="replace", draws=1), train=SimpleNamespace(seeds=[0, 1]),
        fit=dump({"share": "exponent", "bootstrap": 60, "accumulate_margin": 0.02}), report=dump({"title": None, "theory_figures": False}))


def fake_planned(inputs: dict[str, Path]) -> SimpleNamespace:
    units = [SimpleNamespace(key=key, id=key.split("/", 1)[1]) for key in inputs]
    return SimpleNamespace(units=lambda stage: [u for u in units if u.key.startswith(stage + "/")])


def run_stages(tmp_path: Path, rows: list[dict], **cfg) -> tuple[dict, str, Path]:
    inputs = write_inputs(tmp_path, rows)
    config, planned = fake_cfg(**cfg), fake_planned(inputs)
    [fit_unit] = fit.plan(config, planned)
    fit.run(context(fit_unit, tmp_path / "fit", inputs))
    [report_unit] = report.plan(config, planned)
    report_ctx = context(report_unit, tmp_path / "report", {**inputs, "fit/fit": tmp_path / "fit"})
    report.run(report_ctx)
    return (json.loads((tmp_path / "fit" / "fit.json").read_text()), (tmp_path / "report" / "report.md").read_text(),
            tmp_path / "report")


def test_plans_put_what_run_reads_into_params():
    """run() reads no config: fit's and report's params carry the fit settings and the run's description."""
    planned = fake_planned({"evaluate/a": Path("a"), "generate/g0": Path("g"), "generate/g0-s000": Path("s")})
    [fit_unit] = fit.plan(fake_cfg(), planned)
    assert fit_unit.inputs == ("prepare/prepare", "evaluate/a", "generate/g0")
    assert fit_unit.params["fit"] == {"share": "exponent", "bootstrap": 60, "accumulate_margin": 0.02}
    assert fit_unit.params["generate_mode"] == "replace"
    [report_unit] = report.plan(fake_cfg(), planned)
    assert "fit/fit" in report_unit.inputs and "generate/g0-s000" not in report_unit.inputs
    description = report_unit.params["description"]
    assert description["corpus_source"] == "builtin:reference-language" and description["teacher"] == "gpt2-nano"
    json.dumps(report_unit.params)


def test_heldout_prediction_of_a_known_law_is_close_and_inside(tmp_path):
    fitted, text, out = run_stages(tmp_path, make_rows(seeds=(0, 1, 2), entropy=1.9))
    student = fitted["students"]["gpt2-nano"]
    held = student["holdout"]
    assert held["made"] and held["heldout_budget"] == 160_000
    assert held["fitted_budgets"] == [10_000, 20_000, 40_000, 80_000]
    for p, entry in held["per_fraction"].items():
        truth = law(float(p), 160_000)
        assert entry["predicted"] == pytest.approx(truth, rel=0.01)
        assert entry["relative_error"] == pytest.approx((entry["predicted"] - entry["measured"]) / entry["measured"])
        assert abs(entry["relative_error"]) < 0.01 and entry["inside"] is True, (p, entry)
        assert entry["interval"][0] < entry["predicted"] < entry["interval"][1]
        assert entry["predicted_excess"] == pytest.approx(entry["predicted"] - 1.9)
    assert student["identification"]["identified"] is True
    assert all(f["holds"] is True for f in student["findings"].values())
    assert "## Predict, then verify" in text and "3 of 3 held-out measurements fall inside" in text
    assert "E_p − entropy" in text and (out / "figures" / "excess_vs_budget.png").is_file()
    assert student["excess"]["plateaus"]["0"]["E"] == pytest.approx(student["curves"]["per_fraction"]["0"]["E"] - 1.9)


def _refuse_nan(constant: str):
    raise ValueError(f"fit.json holds {constant}")


def test_a_diverged_run_is_left_out_and_the_report_states_its_methods(tmp_path, caplog):
    rows = make_rows(seeds=(0, 1, 2), loss=lambda p, n: law(p, n) + (0.01 * np.log(n) if p == 0.5 else 0.0))
    diverged = rows[7]
    diverged["loss"] = float("nan")
    with caplog.at_level(logging.WARNING):
        fitted, text, out = run_stages(tmp_path, rows)
    assert fitted["left_out"] == [diverged["unit"]] and diverged["unit"] in caplog.text
    json.loads((tmp_path / "fit" / "fit.json").read_text(), parse_constant=_refuse_nan)
    student = fitted["students"]["gpt2-nano"]
    assert student["curves"]["n_rows"] == len(rows) - 1 and f"Left out of every fit (loss not finite): {diverged['unit']}" in text
    trends = student["gap_trends"]["per_fraction"]
    assert trends["0.5"]["verdict"] == "grows" and trends["0.2"]["verdict"] == "holds"  # the gap at 0.5 grows with log n
    assert [g["gap_verdict"] for g in fitted["collapse_gap"]] == ["holds", "grows"]
    for method in ("Identification: a plateau E_p is identified when", "profile likelihood", "Welch t-interval",
                   "least-squares slope of the measured gap", "## Measured gap at every budget"):
        assert method in text, method
    assert (out / "figures" / "gap_vs_budget.png").is_file()


def test_two_budgets_report_the_plateau_as_not_identified(tmp_path):
    fitted, text, _ = run_stages(tmp_path, make_rows(budgets=(10_000, 40_000)))
    student = fitted["students"]["gpt2-nano"]
    assert student["identification"]["identified"] is False
    assert "2 budget(s)" in student["identification"]["per_fraction"]["0.5"]["missing"]
    finding = student["findings"]["plateau_grows_with_fraction"]
    assert finding["holds"] is None and "not identified" in finding["why"]
    assert student["holdout"]["made"] is False and "4 budgets" in student["holdout"]["why"]
    assert student["theory"]["source"].startswith("mean test loss at n = 40,000")
    assert "**Plateaus not identified**" in text and "not testable here" in text
    fitted_plateau = f"{student['curves']['per_fraction']['0.5']['E']:.4f}"
    assert fitted_plateau not in text, "an unidentified plateau must not be printed as a number"
    assert "no prediction made" in text


def test_model_sizes_are_a_structure_and_render_as_a_table(tmp_path):
    """Regression: fit.json's model_sizes["compared"] was overwritten by a sentence and report.md dumped raw JSON."""
    rows = make_rows(students=(("small", 100_000), ("large", 400_000)), budgets=(10_000, 20_000, 40_000))
    fitted, text, out = run_stages(tmp_path, rows)
    sizes = fitted["model_sizes"]
    assert sizes["compared"] is True
    assert [s["parameters"] for s in sizes["sizes"]] == [100_000, 400_000]
    assert "random-projection" in sizes["theory"]["method"]
    assert set(sizes["theory"]["fractions"]) == {"0.2", "0.5"}
    # 100k and 400k parameters against at most 40k tokens: above the interpolation threshold.
    assert sizes["tokens"] == 40_000 and sizes["theory"]["applies"] == "above"
    assert "| p | observed gap order | predicted below threshold | predicted above threshold |" in text
    assert "Regime that applies: **above**" in text
    assert '{"' not in text and "'compared'" not in text, "no raw JSON in the report"
    gaps = fitted["collapse_gap"]
    assert {(g["curve"], g["fraction"]) for g in gaps} == {(s, p) for s in ("small", "large") for p in (0.2, 0.5)}
    for g in gaps:  # over 10k-40k the curves have not flattened: no plateau gap is given, the measured gap is
        assert g["plateau_identified"] is False and g["plateau_gap"] is None and g["plateau_gap_ci"] is None
        assert g["measured_gap_ci"][0] <= g["measured_gap"] <= g["measured_gap_ci"][1]
    assert "has not flattened" in fitted["students"]["small"]["identification"]["per_fraction"]["0"]["missing"]
    assert (out / "figures" / "gap_vs_size.png").is_file()


def test_plateau_figure_fits_both_theory_forms_and_says_which_the_data_support(tmp_path):
    fractions = (0.0, 0.1, 0.3, 0.6, 1.0)
    # Noise small enough that the smallest plateau gap (E_0.1 − E_0 = 0.008) is identified to within ±50%.
    rows = make_rows(fractions=fractions, budgets=(10_000, 40_000, 160_000), noise=0.0003)
    fitted, text, _ = run_stages(tmp_path, rows)
    theory = fitted["students"]["gpt2-nano"]["theory"]
    assert theory["source"] == "fitted plateaus E_p"
    assert theory["asymptotic"]["c2"] == pytest.approx(TRUTH["c2"], rel=0.1)
    assert set(theory["asymptotic"]["residuals"]) == {"0.1", "0.3", "0.6", "1"}
    assert theory["finite_n"]["phi"] is None, "phi = d/n has no meaning on n -> infinity plateaus"
    if theory["forms_test"] is None:  # the plateau fit gave no joint draws: the forms are not compared
        assert theory["supported"] is None and "not compared" in theory["verdict"]
    else:
        assert theory["supported"] in ("asymptotic", "finite_n") and 0 < theory["forms_test"]["p_value"] <= 1
        assert theory["asymptotic"]["c2_ci"][0] <= TRUTH["c2"] <= theory["asymptotic"]["c2_ci"][1]
    assert "## Linear theory" in text and "Verdict:" in text and "Method:" in text


def test_linear_theory_on_losses_at_a_budget_uses_the_seed_spread(tmp_path):
    rows = make_rows(fractions=(0.0, 0.2, 0.5, 1.0), budgets=(10_000, 40_000), seeds=(0, 1, 2))
    fitted, text, _ = run_stages(tmp_path, rows)
    theory = fitted["students"]["gpt2-nano"]["theory"]
    assert theory["source"].startswith("mean test loss at n = 40,000")
    assert "seed spread" in theory["forms_test"]["covariance"] and theory["supported"] == "asymptotic"
    assert theory["finite_n"]["u_meaning"].startswith("u = phi/(1-phi)")
    assert "bootstrap of the likelihood ratio" in text


def test_generations_give_a_slope_with_an_interval_and_a_finding(tmp_path):
    rows = make_rows(fractions=(0.5,), budgets=(40_000,), seeds=(0, 1), generations=(0, 1, 2, 3))
    fitted, text, out = run_stages(tmp_path, rows, generate_mode="replace", generations=4)
    [trend] = fitted["generations"]["trends"]
    assert trend["generations"] == [0, 1, 2, 3] and trend["seeds"] == [2, 2, 2, 2] and trend["dof"] == 2
    assert trend["slope"] > 0 and trend["slope_ci"][0] > 0
    assert trend["r2"] > 0.99 and trend["finding"]["holds"] is True and trend["finding"]["p_value"] < 0.05
    assert fitted["generations"]["accumulate_margin"] == 0.02 and "per-generation means" in text
    assert set(fitted["students"]) == {f"gpt2-nano gen{g}" for g in range(4)}
    assert "## Generations" in text and (out / "figures" / "loss_vs_generation.png").is_file()


def test_results_table_uses_the_one_column_definition(tmp_path):
    _, text, out = run_stages(tmp_path, make_rows(budgets=(10_000, 40_000), fractions=(0.0, 0.5)))
    results = (out / "results.md").read_text()
    assert results.splitlines()[0].startswith("| student | parameters | g | p | n | seed | step | loss | ppl | bpb |")
    assert "excess" not in results.splitlines()[0], "a column nothing measured is left out"
    assert results.strip() in text
