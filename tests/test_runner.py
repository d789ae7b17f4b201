"""The stage runner, with toy stages: skip when done, exact reruns, kill safety, locking."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.runner import RunDir, plan_run, unit_lock
from runner_helpers import _hold_lock_then_run, make_executor, run_all
from toy_stages import STAGES

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, **over) -> Path:
    data = {"name": "toy", "runs_dir": str(tmp_path / "runs"),
            "mix": {"synthetic_fractions": [0.0, 0.5], "token_budgets": [100, 200]}, "train": {"training": {"lr": 0.01}}}
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def ledger(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger.txt"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(autouse=True)
def toy_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_LEDGER", str(tmp_path / "ledger.txt"))
    for var in ("TOY_SLOW_UNIT", "TOY_FAIL_UNIT"):
        monkeypatch.delenv(var, raising=False)


def test_first_run_does_everything_then_nothing(tmp_path):
    cfg_path = write_config(tmp_path)
    outcomes = run_all(make_executor(cfg_path))
    assert [o.status for o in outcomes].count("ran") == 1 + 4 + 4
    assert len(ledger(tmp_path)) == 9
    outcomes = run_all(make_executor(cfg_path))
    assert {o.status for o in outcomes} == {"done"}
    assert len(ledger(tmp_path)) == 9, "a finished run must do no work the second time"


def test_unit_directory_layout_and_manifest(tmp_path):
    executor = make_executor(write_config(tmp_path))
    run_all(executor)
    root = tmp_path / "runs" / "toy"
    assert (root / "prepare" / "corpus.txt").is_file(), "single-unit stage lives at runs/NAME/STAGE"
    manifest = json.loads((root / "mix" / "p0.5-n200" / "manifest.json").read_text())
    assert manifest["fingerprint"] == executor.planned.fingerprints["mix/p0.5-n200"]
    assert manifest["inputs"] == {"prepare/prepare": executor.planned.fingerprints["prepare/prepare"]}
    assert manifest["metrics"] == {"tokens": 200}
    assert {"torch", "transformers", "pipeline", "python"} <= set(manifest["versions"])
    assert manifest["wall_time_s"] >= 0
    assert not list((root / ".collapse" / "work").rglob("*.txt")), "work dirs are renamed away when done"


def test_one_value_change_reruns_exactly_the_affected_units(tmp_path):
    cfg_path = write_config(tmp_path)
    run_all(make_executor(cfg_path))
    before = len(ledger(tmp_path))

    run_all(make_executor(cfg_path, ["train.training.lr=0.02"]))  # only train reads lr
    rerun = ledger(tmp_path)[before:]
    assert sorted(rerun) == sorted(f"train/p{p}-n{n}" for p in (0.0, 0.5) for n in (100, 200))

    before = len(ledger(tmp_path))
    run_all(make_executor(cfg_path, ["train.training.lr=0.02", "mix.synthetic_fractions=[0.0,0.5,1.0]"]))
    assert sorted(ledger(tmp_path)[before:]) == ["mix/p1.0-n100", "mix/p1.0-n200", "train/p1.0-n100", "train/p1.0-n200"]

    before = len(ledger(tmp_path))
    run_all(make_executor(cfg_path, ["corpus.seed=7"]))  # upstream of everything
    assert len(ledger(tmp_path)[before:]) == 9


def test_force_redoes_one_stage(tmp_path):
    cfg_path = write_config(tmp_path)
    run_all(make_executor(cfg_path))
    before = len(ledger(tmp_path))
    executor = make_executor(cfg_path)
    executor.force = frozenset({"mix"})
    run_all(executor)
    assert sorted(ledger(tmp_path)[before:]) == sorted(f"mix/p{p}-n{n}" for p in (0.0, 0.5) for n in (100, 200))


def _run_in_subprocess(cfg_path: Path, env: dict) -> subprocess.Popen:
    code = ("import sys; sys.path.insert(0, 'tests');"
            "from runner_helpers import make_executor, run_all;"
            f"run_all(make_executor(__import__('pathlib').Path({str(cfg_path)!r})))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env})


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_mid_write_leaves_nothing_and_is_redone(tmp_path):
    cfg_path = write_config(tmp_path)
    mark = tmp_path / "slow-started"
    proc = _run_in_subprocess(cfg_path, {"TOY_SLOW_UNIT": "mix/p0.5-n100", "TOY_SLOW_MARK": str(mark)})
    _wait_for(mark)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = tmp_path / "runs" / "toy" / "mix" / "p0.5-n100"
    assert not final.exists(), "a killed unit must leave no output in its final place"
    executor = make_executor(cfg_path)
    unit = executor.planned.get("mix/p0.5-n100")
    assert executor.state(unit) == "pending", "a stale lock from a dead process does not count as running"
    run_all(executor)
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "part1.txt", "part2.txt"]
    assert ledger(tmp_path).count("mix/p0.5-n100") == 2


def test_a_resumed_unit_drops_the_half_written_outputs_of_the_killed_attempt(tmp_path):
    """A kill during an atomic write (e.g. the final model) leaves a .tmp- entry in a resumable unit's work dir;
    the attempt that resumes there must not carry it into the finished unit."""
    executor = make_executor(write_config(tmp_path))
    unit = executor.planned.get("train/p0.5-n100")
    work = executor.run_dir.work(unit, executor.planned.fingerprints[unit.key])
    (work / ".tmp-model.x1y2" / "sub").mkdir(parents=True)
    (work / ".tmp-model.x1y2" / "sub" / "config.json").write_text("{half")
    (work / ".tmp-metrics.json.z9").write_text("{")
    (work / "checkpoint-kept.txt").write_text("resume state")
    run_all(executor)
    final = tmp_path / "runs" / "toy" / "train" / "p0.5-n100"
    assert sorted(p.name for p in final.iterdir()) == ["checkpoint-kept.txt", "manifest.json", "part1.txt", "part2.txt"]


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    executor = make_executor(write_config(tmp_path))
    unit = executor.planned.get("prepare/prepare")
    lock_path = RunDir(executor.cfg.run_dir).lock(unit)
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text(json.dumps({"host": "gone", "pid": 999999}))  # left behind by a dead holder
    assert executor.execute(unit).status == "ran"


def test_two_concurrent_runners_never_run_one_unit_twice(tmp_path, monkeypatch):
    cfg_path = write_config(tmp_path)
    mark = tmp_path / "slow-started"
    monkeypatch.setenv("TOY_SLOW_UNIT", "prepare/prepare")
    monkeypatch.setenv("TOY_SLOW_MARK", str(mark))
    monkeypatch.setenv("TOY_SLOW_SECONDS", "3")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    first = ctx.Process(target=_hold_lock_then_run, args=(str(cfg_path), queue))
    first.start()
    _wait_for(mark)
    second = ctx.Process(target=_hold_lock_then_run, args=(str(cfg_path), queue))
    second.start()
    first.join(60)
    second.join(60)
    assert sorted([queue.get(timeout=5), queue.get(timeout=5)]) == ["locked", "ran"]
    assert ledger(tmp_path).count("prepare/prepare") == 1


def test_whole_runs_in_parallel_split_the_work(tmp_path):
    cfg_path = write_config(tmp_path, mix={"synthetic_fractions": [0.0, 0.25, 0.5, 0.75], "token_budgets": [100, 200]})
    procs = [_run_in_subprocess(cfg_path, {}) for _ in range(2)]
    for proc in procs:
        proc.wait(120)
    # Re-running picks up anything a racing runner skipped because its input was locked.
    run_all(make_executor(cfg_path))
    counts = {key: ledger(tmp_path).count(key) for key in set(ledger(tmp_path))}
    assert len(counts) == 1 + 8 + 8
    assert set(counts.values()) == {1}, f"some unit ran twice: {counts}"


def test_failed_unit_is_recorded_and_downstream_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_FAIL_UNIT", "train/p0.5-n200")
    executor = make_executor(write_config(tmp_path))
    outcomes = {o.unit.key: o.status for o in run_all(executor)}
    assert outcomes["train/p0.5-n200"] == "failed"
    assert outcomes["train/p0.0-n100"] == "ran"
    unit = executor.planned.get("train/p0.5-n200")
    assert executor.state(unit) == "failed"
    failure = RunDir(executor.cfg.run_dir).failed(unit)
    assert failure["error"] == "RuntimeError: planned failure for the test"
    assert Path(failure["log"]).name == "p0.5-n200.log"
    monkeypatch.delenv("TOY_FAIL_UNIT")
    run_all(executor)
    assert executor.state(unit) == "done"
    assert RunDir(executor.cfg.run_dir).failed(unit) is None


def test_unit_lock_is_exclusive_within_and_across_handles(tmp_path):
    path = tmp_path / "x.lock"
    with unit_lock(path) as first:
        assert first
        with unit_lock(path) as second:
            assert not second
    with unit_lock(path) as again:
        assert again


def test_checkpoint_exit_is_an_interruption_not_a_failure(tmp_path):
    """A unit that checkpointed on SIGUSR1/SIGTERM exits 75: resumable, so not recorded as failed."""
    from types import SimpleNamespace

    def run_preempted(ctx):
        raise SystemExit(75)

    stages = dict(STAGES)
    stages["prepare"] = SimpleNamespace(NAME="prepare", VERSION=1, plan=STAGES["prepare"].plan, run=run_preempted)
    cfg = load_config(write_config(tmp_path))
    executor = Executor(cfg=cfg, stages=stages, planned=plan_run(cfg, stages))
    unit = executor.planned.get("prepare/prepare")
    with pytest.raises(SystemExit):
        executor.execute(unit)
    assert executor.state(unit) == "pending"
    assert RunDir(cfg.run_dir).failed(unit) is None
