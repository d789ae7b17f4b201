"""What Slurm knows about our array tasks: squeue for live jobs, then whatever records finished ones.

Finished jobs are read from sacct when the cluster keeps accounting, else from `scontrol show job`
(kept for MinJobAge after the end), else from the jobcomp/filetxt file. Each source is optional: a
missing command or a disabled service yields nothing, never an exception. Results are keyed by
(array job id, task index).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
_FIELD = re.compile(r"(\w+)=(\S*)")
_TASK_ID = re.compile(r"^(\d+)_(\d+)$")
_TASK_RANGE = re.compile(r"^(\d+)_\[(.+)\]$")

TaskKey = tuple[str, int]


@dataclass(frozen=True)
class TaskState:
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str = ""
    exit_code: str = ""  # "rc:signal"

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    """stdout of a Slurm command, or None when it is missing or fails (the caller tries the next source)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def cluster_config() -> dict[str, str]:
    """`scontrol show config` as a dict ({} without Slurm)."""
    out = _run(["scontrol", "show", "config"]) or ""
    config = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def parse_indices(spec: str) -> list[int]:
    """Array task indices from Slurm's notation: "0-3", "1,4-5", "0-7%2" (the throttle is dropped)."""
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            indices.extend(range(int(first), int(last or first) + 1))
    return indices


def _state_word(text: str) -> str:
    return text.split()[0] if text else "UNKNOWN"  # sacct writes "CANCELLED by 0"


def squeue_states(job_ids: list[str]) -> dict[TaskKey, TaskState]:
    """Live tasks (pending ones too, one line each with -r)."""
    out = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    states: dict[TaskKey, TaskState] = {}
    for line in (out or "").splitlines():
        task, state, reason = (line.split("|") + ["", ""])[:3]
        match = _TASK_ID.match(task.strip())
        if match:
            states[(match.group(1), int(match.group(2)))] = TaskState(state, "" if reason == "None" else reason)
    return states


def sacct_states(job_ids: list[str]) -> dict[TaskKey, TaskState] | None:
    """None when accounting is disabled (sacct then fails): the caller falls back to scontrol."""
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode,Reason"])
    return None if out is None else parse_sacct(out)


def parse_sacct(out: str) -> dict[TaskKey, TaskState]:
    """`sacct -n -P -X -o JobID,State,ExitCode,Reason` lines: "12_3|FAILED|1:0|None", "12_[4-7]|PENDING|..."."""
    states: dict[TaskKey, TaskState] = {}
    for line in out.splitlines():
        job, state, exit_code, reason = (line.split("|") + ["", "", ""])[:4]
        state = TaskState(_state_word(state), "" if reason == "None" else reason, exit_code)
        if match := _TASK_ID.match(job):
            states[(match.group(1), int(match.group(2)))] = state
        elif match := _TASK_RANGE.match(job):  # tasks that never started share one record
            for index in parse_indices(match.group(2)):
                states.setdefault((match.group(1), index), state)
    return states


def _record_tasks(fields: dict[str, str], job_ids: set[str], sizes: dict[str, int]) -> list[TaskKey]:
    """The tasks one scontrol/jobcomp record describes: one task, a range of them, or a whole array."""
    array_job = fields.get("ArrayJobId") or fields.get("JobId", "")
    if array_job not in job_ids:
        return []
    spec = fields.get("ArrayTaskId")
    indices = parse_indices(spec) if spec else list(range(sizes.get(array_job, 0)))
    return [(array_job, i) for i in indices]


def scontrol_states(job_ids: list[str], sizes: dict[str, int]) -> dict[TaskKey, TaskState]:
    states: dict[TaskKey, TaskState] = {}
    wanted = set(job_ids)
    for job in job_ids:
        for line in (_run(["scontrol", "-o", "show", "job", job]) or "").splitlines():
            fields = dict(_FIELD.findall(line))
            state = TaskState(fields.get("JobState", "UNKNOWN"), _reason(fields.get("Reason", "")),
                              fields.get("ExitCode", ""))
            for key in _record_tasks(fields, wanted, sizes):
                states[key] = state
    return states


def jobcomp_states(job_ids: list[str], sizes: dict[str, int], path: Path) -> dict[TaskKey, TaskState]:
    """jobcomp/filetxt: one line per finished job, in time order (a requeued task's later line wins)."""
    states: dict[TaskKey, TaskState] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return states
    wanted = set(job_ids)
    for line in lines:
        fields = dict(_FIELD.findall(line))
        state = TaskState(fields.get("JobState", "UNKNOWN"), "", fields.get("ExitCode", ""))
        for key in _record_tasks(fields, wanted, sizes):
            states[key] = state
    return states


def _reason(text: str) -> str:
    return "" if text in ("None", "(null)") else text


def task_states(sizes: dict[str, int]) -> dict[TaskKey, TaskState]:
    """The best-known state of every task of these array jobs ({job id: number of tasks})."""
    job_ids = sorted(sizes, key=int)
    if not job_ids or shutil.which("squeue") is None:
        return {}
    finished = sacct_states(job_ids)
    if finished is None:
        finished = {}
        config = cluster_config()
        if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
            finished.update(jobcomp_states(job_ids, sizes, Path(config["JobCompLoc"])))
        finished.update(scontrol_states(job_ids, sizes))
    return {**finished, **squeue_states(job_ids)}


def max_array_size() -> int | None:
    """Tasks per array the cluster allows (MaxArraySize: indices 0..MaxArraySize-1)."""
    value = cluster_config().get("MaxArraySize", "")
    return int(value) if value.isdigit() else None
