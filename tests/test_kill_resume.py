"""A run SIGKILLed at several moments and then finished gives the files of an uninterrupted run.

The failure this guards against: the demo's process group killed, among other moments, just as a generate shard
started; the next `collapse run` regenerated that shard in a fresh process, whose text differed in a few
documents. Here tests/configs/tiny.yaml is killed (the whole process group, SIGKILL) as the teacher trains,
as the second generate shard starts, and as a student trains; each time the same command is run again, and
at the end every unit's files are compared byte for byte with an uninterrupted run. Only files that record
wall-clock speed (the training log's tokens/s, TensorBoard events, the manifests) are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "configs" / "tiny.yaml"
TIMING_FILES = {"manifest.json", "log.jsonl"}  # speeds and wall times; losses are compared through results


def start(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(TINY), "--no-progress"], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, marker: Path, after: float, limit: float = 600) -> None:
    """SIGKILL the process group `after` seconds once `marker` exists (a unit's log: the unit started)."""
    deadline = time.monotonic() + limit
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before {marker.name} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{marker} did not appear"
        time.sleep(0.02)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def unit_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of every finished unit, by path under the run dir."""
    hashes = {}
    for manifest in run_dir.rglob("manifest.json"):
        unit = manifest.parent
        if unit.relative_to(run_dir).parts[0] in (".collapse", "logs"):
            continue
        for path in unit.rglob("*"):
            rel = path.relative_to(run_dir)
            if path.is_file() and path.name not in TIMING_FILES and "tb" not in rel.parts:
                hashes[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def test_a_run_killed_at_several_moments_then_finished_matches_an_uninterrupted_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = start(tmp_path / "a")
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-3000:]
    logs = tmp_path / "b" / "runs" / "tiny" / "logs"
    moments = [(logs / "teacher" / "g0.log", 2.0),            # mid-training of the teacher
               (logs / "generate" / "g0-s001.log", 0.0),      # as a generate shard starts
               (logs / "train" / "gpt2-nano-g0-p0.5-n6000-s0.log", 1.0)]  # mid-training of a student
    for marker, after in moments:
        kill_when(start(tmp_path / "b"), marker, after)
    resumed = start(tmp_path / "b")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-3000:]

    expected = unit_files(tmp_path / "a" / "runs" / "tiny")
    got = unit_files(tmp_path / "b" / "runs" / "tiny")
    assert sorted(got) == sorted(expected)
    differing = [path for path in expected if got[path] != expected[path]]
    assert not differing, differing
    results = [json.loads(line) for line in (tmp_path / "a" / "runs" / "tiny" / "evaluate" / "results.jsonl")
               .read_text().splitlines()]
    assert len(results) == 6 and all(row["loss"] > 0 for row in results)
