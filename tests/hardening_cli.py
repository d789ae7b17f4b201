"""The in-process `collapse` CLI and the fixtures of the hardening tests, shared by tests/test_hardening.py,
tests/test_hardening_plan.py, tests/test_hardening_results.py and tests/test_mixture_floor.py.

A module of its own, not a test module, so that no test module imports another (pytest would collect
the fixtures of an imported test module twice, and the test files would depend on each other). Fixtures
are imported by each module that needs them: `isolated` (autouse: each test in its own tmp_path, with
its own toy ledger and cache) and `toy` (the toy stages of tests/toy_stages.py). Helpers without pytest
stay in tests/hardening_helpers.py, which also runs as a script (the toy `collapse` CLI).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest

from hardening_helpers import artefacts, files_under, toy_config, use_toy_stages
from pipeline.orchestration.cli import main

TOY_UNITS = ["prepare/prepare"] + [f"{s}/p{p}-n{n}" for s in ("mix", "train") for p in ("0.0", "0.5") for n in (100, 200)]

DISK_MESSAGES = {
    errno.EROFS: "Read-only file system; the run directory must be writable (runs_dir: to write elsewhere)",
    errno.EACCES: "Permission denied; the run directory must be writable (runs_dir: to write elsewhere)",
    errno.ENOSPC: "No space left on device; free disk space and re-run the same command: it continues where it stopped",
    errno.EDQUOT: "Disk quota exceeded; free quota and re-run the same command: it continues where it stopped",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOY_LEDGER", str(tmp_path / "ledger.txt"))
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    for var in ("TOY_SLOW_UNIT", "TOY_FAIL_UNIT", "TOY_SLOW_MARK", "TOY_SLOW_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    yield
    _close_run_logs()


@pytest.fixture
def toy(monkeypatch):
    use_toy_stages(monkeypatch)


def _close_run_logs() -> None:
    """cmd_run leaves its runs/NAME/logs/collapse.log handler open; close it (mounts must unmount)."""
    root = logging.getLogger("collapse")
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    finally:
        _close_run_logs()
    out, err = capsys.readouterr()
    return rc, out, err


def ledger(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger.txt"
    return path.read_text().split() if path.exists() else []


def toy_run(tmp_path: Path, capsys, config: Path | None = None, *extra) -> tuple[int, str, str]:
    return cli(capsys, "run", config or toy_config(tmp_path), "--no-progress", *extra)


def undamaged_toy(tmp_path: Path, capsys, monkeypatch, **sections) -> dict:
    """Artefacts of an uninterrupted, undamaged toy run in a separate directory (its own ledger)."""
    ref = tmp_path / "reference"
    with monkeypatch.context() as m:
        m.setenv("TOY_LEDGER", str(ref / "ledger.txt"))
        rc, _, err = toy_run(ref, capsys, toy_config(ref, **sections))
    assert rc == 0, err
    return artefacts(ref / "runs" / "toy")


def finished_toy(tmp_path: Path, capsys) -> Path:
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert sorted(ledger(tmp_path)) == sorted(TOY_UNITS)
    return tmp_path / "runs" / "toy"


def assert_nothing_written(tmp_path: Path, name: str = "tiny") -> None:
    run_dir = tmp_path / "runs" / name
    assert not run_dir.exists(), f"bad input left {files_under(run_dir) or 'an empty run dir'} behind"
    assert files_under(tmp_path / "runs") == []


def status_of(capsys, run_dir: Path) -> dict[str, str]:
    """`collapse status RUN_DIR` parsed: {stage/unit: state}."""
    rc, out, err = cli(capsys, "status", run_dir)
    assert rc == 0, err
    states, stage = {}, None
    for line in out.splitlines():
        if m := re.match(r"== (\w+): \d+/\d+ done", line):
            stage = m.group(1)
        elif stage and line and not line.startswith(("unit", "-", "==")) and len(line.split()) >= 2:
            states[f"{stage}/{line.split()[0]}"] = line.split()[1]
    return states
