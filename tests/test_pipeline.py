"""The whole pipeline through the `collapse` CLI on tests/configs/tiny.yaml (~1 minute on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_helpers import collapse

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pipeline")
    proc = collapse("run", str(TINY), "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_every_stage_writes_its_outputs(finished_run):
    cwd, proc = finished_run
    run = cwd / "runs" / "tiny"
    assert "units: 25 ran" in proc.stderr
    for path in ["prepare/tokenizer", "prepare/test", "teacher/g0/model", "generate/g0/blocks",
                 "generate/g0/diagnostics.json", "mix/g0-p0.5-n6000/manifest.json", "evaluate/results.jsonl",
                 "fit/fit.json", "report/report.md", "report/figures/loss_vs_budget.png",
                 "report/figures/plateau_vs_fraction.png", "report/figures/rank_frequency.png", "config.yaml",
                 "logs/collapse.log"]:
        assert (run / path).exists(), path
    rows = [json.loads(line) for line in (run / "evaluate" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    required = {"student", "family", "parameters", "synthetic_fraction", "token_budget", "mix_mode", "generation",
                "seed", "step", "loss", "ppl", "bpb"}
    assert all(required <= set(row) for row in rows)
    fit = json.loads((run / "fit" / "fit.json").read_text())
    assert set(fit["students"]["gpt2-nano"]["curves"]["per_fraction"]) == {"0", "0.5", "1"}
    report = (run / "report" / "report.md").read_text()
    assert "## Outcome" in report and "![loss vs budget](figures/loss_vs_budget.png)" in report


def test_rerunning_a_finished_run_does_no_work(finished_run):
    cwd, _ = finished_run
    manifest = cwd / "runs" / "tiny" / "train" / "gpt2-nano-g0-p1-n6000-s0" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    proc = collapse("run", str(TINY), "--no-progress", cwd=cwd)
    assert proc.returncode == 0
    assert "units: 25 done" in proc.stderr
    assert manifest.stat().st_mtime_ns == before


def test_status_and_plan_show_every_stage(finished_run):
    cwd, _ = finished_run
    status = collapse("status", "runs/tiny", cwd=cwd)
    assert status.returncode == 0, status.stderr
    for stage in ("prepare", "teacher", "generate", "mix", "train", "evaluate", "fit", "report"):
        assert f"== {stage}: " in status.stdout
    assert "== results (evaluate/results.jsonl)" in status.stdout
    plan = collapse("plan", str(TINY), "--set", "train.training.lr=0.001", cwd=cwd)
    assert plan.returncode == 0
    assert "train: 6 units (0 done, 6 to run)" in plan.stdout, "changing lr makes every train unit pending"
    assert "mix: 6 units (6 done, 0 to run)" in plan.stdout, "and nothing upstream of train"
    assert "evaluate: 6 units (0 done, 6 to run)" in plan.stdout, "but everything downstream"


def test_demo_config_plans_every_stage(tmp_path):
    plan = collapse("plan", str(REPO / "configs" / "demo.yaml"), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    for stage, count in [("prepare", 1), ("teacher", 1), ("generate", 3), ("mix", 9), ("train", 18),
                         ("evaluate", 18), ("fit", 1), ("report", 1)]:
        assert f"{stage}: {count} units (0 done, {count} to run)" in plan.stdout
    assert not (tmp_path / "runs").exists(), "plan writes nothing"


def test_accelerate_launcher_runs_training_units_in_two_processes(tmp_path):
    """launcher: accelerate starts the teacher under `accelerate launch` (2 CPU processes): one unit, done once."""
    proc = collapse("run", str(TINY), "--no-progress", "--stages", "prepare,teacher", "--set", "launcher=accelerate",
                    "--set", f"accelerate_config={REPO / 'configs' / 'accelerate' / 'cpu2.yaml'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "units: 2 ran" in proc.stderr
    log = (tmp_path / "runs" / "tiny" / "logs" / "teacher" / "g0.log").read_text()
    assert "2 processes" in log, log[-2000:]
    assert (tmp_path / "runs" / "tiny" / "teacher" / "g0" / "manifest.json").is_file()
