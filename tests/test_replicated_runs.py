"""Teachers and mixture draws as run dimensions (teacher.replicates, mix.draws): what is planned, what each
replicate reads and seeds, and a whole tiny run whose fit averages each cell to its independent units.

tests/test_replicates.py measures the coverage of the intervals this design feeds; here: the plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.orchestration.runner import default_stages, plan_run
from pipeline.stages import generate, mix, teacher
from pipeline_helpers import collapse

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
REPLICATED = ["teacher.replicates=2", "mix.draws=2"]


def _plan(tmp_path: Path, *overrides: str):
    return plan_run(load_config(TINY, [f"runs_dir={tmp_path / 'runs'}", *overrides]), default_stages())


def test_replicate_zero_and_draw_zero_keep_the_ids_and_fingerprints_of_a_run_without_them(tmp_path):
    plain, replicated = _plan(tmp_path), _plan(tmp_path, *REPLICATED)
    shared = {key: fp for key, fp in plain.fingerprints.items() if not key.startswith(("fit/", "report/"))}
    assert {key: replicated.fingerprints[key] for key in shared} == shared
    assert set(replicated.fingerprints) > set(plain.fingerprints)


def test_every_replicate_has_its_own_chain_and_p0_mixtures_are_shared(tmp_path):
    planned = _plan(tmp_path, *REPLICATED)
    ids = {stage: [u.id for u in planned.units(stage)] for stage in ("teacher", "generate", "mix")}
    assert ids["teacher"] == ["g0", "g0-t1"]
    assert ids["generate"] == ["g0-s000", "g0-s001", "g0", "g0-t1-s000", "g0-t1-s001", "g0-t1"]
    # p = 0 reads no synthetic text: one per draw, not per teacher; p > 0 per teacher and draw
    assert [i for i in ids["mix"] if "-p0-" in i] == ["g0-p0-n3000", "g0-p0-n3000-d1", "g0-p0-n6000", "g0-p0-n6000-d1"]
    assert {i for i in ids["mix"] if i.startswith("g0-t1-p0-")} == set()
    assert len(ids["mix"]) == 2 * 2 + 2 * 2 * 2 * 2  # p = 0: budgets x draws; p > 0: fractions x budgets x teachers x draws
    t1 = planned.get("mix/g0-t1-p0.5-n3000-d1")
    assert t1.inputs == ("prepare/prepare", "generate/g0-t1")
    assert len(planned.units("train")) == len(planned.units("evaluate")) == len(ids["mix"])
    assert planned.get("evaluate/gpt2-nano-g0-t1-p1-n6000-s0").inputs[-1] == "generate/g0-t1"


def test_replicates_and_draws_get_distinct_seeds(tmp_path):
    planned = _plan(tmp_path, *REPLICATED)
    teachers = [u.params["seed"] for u in planned.units("teacher")]
    assert teachers[0] == 0 and teachers[1] == teacher.teacher_seed(0, 1) != 0
    shards = {u.id: generate.sampling_seed(u.params) for u in planned.units("generate") if "-s" in u.id}
    assert len(set(shards.values())) == len(shards) == 4
    seeds = {u.id: u.params["seed"] for u in planned.units("mix")}
    assert seeds["g0-p0.5-n3000"] == 0 and seeds["g0-p0.5-n3000-d1"] == mix.draw_seed(0, 1) != 0
    assert seeds["g0-t1-p0.5-n3000"] == 0  # draw d is the same block order under every teacher


@pytest.mark.parametrize("key, value", [("teacher.replicates", "0"), ("mix.draws", "0"), ("mix.draws", "101")])
def test_replicate_counts_are_checked_when_the_config_is_read(tmp_path, key, value):
    with pytest.raises(Exception, match=key.split(".")[1]):
        load_config(TINY, [f"{key}={value}"])


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("replicated")
    sets = [a for item in [*REPLICATED, "mix.synthetic_fractions=[0.0,1.0]", "mix.token_budgets=[6000]"]
            for a in ("--set", item)]
    proc = collapse("run", str(TINY), *sets, "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "tiny"


def test_a_replicated_run_evaluates_every_replicate_and_fits_independent_units(replicated_run):
    rows = [json.loads(line) for line in (replicated_run / "evaluate" / "results.jsonl").read_text().splitlines()]
    design = sorted((r["synthetic_fraction"], r.get("teacher_replicate", 0), r.get("mix_draw", 0)) for r in rows)
    assert design == [(0.0, 0, 0), (0.0, 0, 1), (1.0, 0, 0), (1.0, 0, 1), (1.0, 1, 0), (1.0, 1, 1)]
    texts = [(replicated_run / "generate" / g / "text.jsonl").read_text() for g in ("g0", "g0-t1")]
    assert texts[0] != texts[1]  # another teacher writes other text
    fit = json.loads((replicated_run / "fit" / "fit.json").read_text())
    gap = fit["students"]["gpt2-nano"]["measured_gaps"]["1"]
    assert gap["seeds"] == [2, 2]  # two teachers against two draws, not four rows against two
    components = fit["replicates"]["variance_components"]["gpt2-nano"]["levels"]
    assert set(components) == {"teacher_replicate", "mix_draw"}
    report = (replicated_run / "report" / "report.md").read_text()
    assert "## Replicates: teachers, mixture draws, seeds" in report and "2 teachers, 2 mixture draws" in report
