"""Shared by the Slurm tests: jobs of a run, waiting for the queue, `scontrol show job` as dicts."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from pipeline.orchestration.launchers import slurm_state

WAIT_S = 240  # a safety net for a stuck queue, not a timing assertion


def job_ids(run_dir: Path) -> list[str]:
    return [a["job_id"] for s in read_jobs_at(run_dir)["submissions"] for a in s["arrays"]]


def read_jobs_at(run_dir: Path) -> dict:
    return json.loads((run_dir / "slurm" / "jobs.json").read_text())


def wait_for_queue_to_drain(ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], check=False, capture_output=True, text=True).stdout
        if not out.strip():
            return
        assert time.monotonic() < deadline, f"jobs still queued after {WAIT_S}s:\n{out}"
        time.sleep(1)


def scontrol_job(job_id: str) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], check=False, capture_output=True, text=True).stdout
    return [dict(slurm_state._FIELD.findall(line)) for line in out.splitlines()]
