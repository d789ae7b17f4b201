"""`collapse submit`: the pending units of a run as Slurm job arrays chained with afterok dependencies.

Slurm is not a launcher (pipeline/orchestration/launchers/__init__.py): a launcher starts one unit and
returns its outcome, while Slurm is handed the whole plan at once and runs it later, each array task
running its unit through `collapse stage` (the same `Executor.execute` as every launcher). So this module
offers `submit` (for `collapse submit`) and `unit_states` (what Slurm says of each unit, for `collapse status`).

Units of one stage can depend on units of the same stage or of later stages across generations
(teacher g1 needs generate g0, which needs teacher g0; a generation's corpus unit needs its shards). So
the units to submit are grouped into waves: a unit's level is one more than the highest level among
its inputs that are submitted with it, and one array holds the units of one stage at one level. Every
array then depends only on arrays submitted before it (`--dependency=afterok:...`, and
`--kill-on-invalid-dep=yes` so that the dependents of a failed task are cancelled, not left pending).

Array task i runs the unit on line i+1 of its units file with `collapse stage STAGE CONFIG --unit ID`
against the resolved config, so a task plans exactly the units that were submitted. Each submission
gets its own directory runs/NAME/slurm/submit-NNN/ (a requeued task re-reads its units file, so files
of live jobs are never rewritten), and runs/NAME/slurm/jobs.json records which job and task holds
which unit: `collapse status` maps Slurm's states back to units through it, and a later submit skips
units that are done or still queued (and makes its arrays wait for the queued ones).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config import STAGES, Config
from pipeline.errors import UserError
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.launchers.slurm_state import TaskState, task_states
from pipeline.orchestration.launchers.slurm_state import max_array_size as cluster_max_array_size
from pipeline.orchestration.launchers.slurm_templates import render_script, sbatch_options, task_shape
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.unit import Unit, unit_key

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, used when the cluster cannot be asked
ENTRY = ["-m", "pipeline"]  # python arguments that start the collapse CLI in an array task


@dataclass
class ArrayJob:
    """One sbatch call: units of one stage at one level (a part of it if the wave is over MaxArraySize)."""

    name: str  # "03-generate" or "03-generate.p1": file names and job name
    stage: str
    units: list[Unit]
    after_arrays: set[str] = field(default_factory=set)  # names of arrays of this submission it waits for
    after_tasks: set[str] = field(default_factory=set)  # "JOB_TASK" of units still queued from before
    job_id: str | None = None
    script: Path | None = None

    def dependency(self, job_ids: dict[str, str]) -> str | None:
        targets = sorted({job_ids[name] for name in self.after_arrays} | self.after_tasks)
        return f"afterok:{':'.join(targets)}" if targets else None


# ---------------------------------------------------------------- planning the arrays


def unit_levels(units: list[Unit]) -> dict[str, int]:
    """Level 0: no input among `units`; otherwise one more than its deepest input among them.

    `units` is in plan order, where inputs always come first, so one pass suffices.
    """
    levels: dict[str, int] = {}
    for unit in units:
        levels[unit.key] = 1 + max((levels[k] for k in unit.inputs if k in levels), default=-1)
    return levels


def plan_arrays(units: list[Unit], queued: dict[str, str], max_array_size: int) -> list[ArrayJob]:
    """Group units into waves (level, stage) in submission order, split them into arrays, link them.

    `queued` maps unit keys still queued from an earlier submission to their "JOB_TASK".
    """
    levels = unit_levels(units)
    waves: dict[tuple[int, str, str], list[Unit]] = {}
    for unit in units:  # one launcher per array: accelerate units and plain ones start differently
        waves.setdefault((levels[unit.key], unit.stage, unit.multiprocess), []).append(unit)
    order = sorted(waves, key=lambda wave: (wave[0], STAGES.index(wave[1]), wave[2]))
    arrays: list[ArrayJob] = []
    array_of: dict[str, str] = {}
    for number, wave in enumerate(order):
        members = waves[wave]
        parts = [members[i:i + max_array_size] for i in range(0, len(members), max_array_size)]
        for p, part in enumerate(parts):
            name = f"{number:02d}-{wave[1]}" + (f".p{p}" if len(parts) > 1 else "")
            inputs = {k for unit in part for k in unit.inputs}
            arrays.append(ArrayJob(name, wave[1], part, after_arrays={array_of[k] for k in inputs if k in array_of},
                                   after_tasks={queued[k] for k in inputs if k in queued}))
            array_of.update({unit.key: name for unit in part})
    _drop_implied_dependencies(arrays)
    return arrays


def _drop_implied_dependencies(arrays: list[ArrayJob]) -> None:
    """Keep only the arrays an array waits for directly: afterok:TEACHER, not afterok:PREPARE:TEACHER when
    the teacher array already waits for prepare. Same semantics, shorter and readable dependency lines."""
    upstream: dict[str, set[str]] = {}  # array -> every array it waits for, directly or not
    for array in arrays:  # in submission order: dependencies come first
        upstream[array.name] = set(array.after_arrays).union(*(upstream[d] for d in array.after_arrays))
        implied = set().union(*(upstream[d] for d in array.after_arrays))
        array.after_arrays -= implied


def units_to_submit(executor: Executor, stages: list[str], queued: dict[str, str]) -> list[Unit]:
    """Selected units that are neither done nor still queued; their inputs must be done or coming."""
    selected = [u for u in executor.planned if u.stage in stages]
    todo = [u for u in selected if u.key not in queued and executor.state(u) != "done"]
    coming = {u.key for u in todo} | set(queued)
    for unit in todo:
        for key in unit.inputs:
            upstream = executor.planned.get(key)
            if key not in coming and executor.state(upstream) != "done":
                raise UserError(f"unit {unit.key} needs {key}, which is neither done nor queued; "
                                f"add stage {upstream.stage} to --stages (or run it first)")
    return todo


# ---------------------------------------------------------------- jobs.json


def jobs_file(cfg: Config) -> Path:
    return cfg.run_dir / "slurm" / "jobs.json"


def read_jobs(cfg: Config) -> dict[str, Any]:
    try:
        return json.loads(jobs_file(cfg).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"submissions": []}


def latest_tasks(jobs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """unit key -> the array task that last held it: {job_id, task, log}."""
    tasks: dict[str, dict[str, Any]] = {}
    for submission in jobs.get("submissions", []):
        for array in submission.get("arrays", []):
            if not array.get("job_id"):
                continue
            for index, unit_id in enumerate(array["units"]):
                log = array["log"].replace("%A", array["job_id"]).replace("%a", str(index))
                tasks[unit_key(array["stage"], unit_id)] = {"job_id": array["job_id"], "task": index, "log": log}
    return tasks


def _array_sizes(tasks: dict[str, dict[str, Any]], jobs: dict[str, Any]) -> dict[str, int]:
    wanted = {t["job_id"] for t in tasks.values()}
    return {a["job_id"]: len(a["units"]) for s in jobs.get("submissions", []) for a in s.get("arrays", [])
            if a.get("job_id") in wanted}


def queued_units(cfg: Config) -> dict[str, str]:
    """Units whose latest array task is still pending or running: unit key -> "JOB_TASK"."""
    jobs = read_jobs(cfg)
    tasks = latest_tasks(jobs)
    states = task_states(_array_sizes(tasks, jobs))
    return {key: f"{t['job_id']}_{t['task']}" for key, t in tasks.items()
            if (s := states.get((t["job_id"], t["task"]))) is not None and s.live}


# ---------------------------------------------------------------- submit


def submit(cfg: Config, executor: Executor, selected_stages: list[str], resolved_config_path: Path,
           dry_run: bool = False, entry: list[str] | None = None,
           save_config: Callable[[], Any] | None = None) -> int:
    """Render and submit (or with dry_run only render) the arrays of the pending units. Returns 0.

    Everything that can refuse (sbatch missing, an input neither done nor queued, a value the renderer
    refuses) comes before the first write: `save_config()` (writes the resolved config the scripts
    name), then the scripts.
    """
    if not dry_run and shutil.which("sbatch") is None:
        raise UserError("sbatch not found: run `collapse submit` on a Slurm login node (or add --dry-run)")
    queued = queued_units(cfg)
    todo = units_to_submit(executor, selected_stages, queued)
    if not todo:
        print(f"collapse submit: nothing to submit in {cfg.run_dir} "
              f"({len(queued)} units still queued)" if queued else f"collapse submit: every unit of {cfg.run_dir} is done")
        return 0
    arrays = plan_arrays(todo, queued, _max_array_size(cfg))
    directory = _submission_dir(cfg, dry_run)
    scripts = _render(cfg, arrays, directory, Path(resolved_config_path).resolve(), entry or ENTRY)
    if save_config is not None:
        save_config()
    _write_scripts(cfg, arrays, scripts, directory)
    if dry_run:
        _print_dry_run(cfg, arrays, directory, len(queued))
        return 0
    _sbatch_all(cfg, arrays, directory)
    return 0


def _max_array_size(cfg: Config) -> int:
    return cfg.slurm.max_array_size or cluster_max_array_size() or DEFAULT_MAX_ARRAY_SIZE


def _submission_dir(cfg: Config, dry_run: bool) -> Path:
    root = (cfg.run_dir / "slurm").resolve()
    if dry_run:
        return root / "dry-run"  # emptied by _write_scripts once every script rendered
    numbers = [int(p.name.split("-")[1]) for p in root.glob("submit-[0-9]*") if p.name.split("-")[1].isdigit()]
    return root / f"submit-{max(numbers, default=0) + 1:03d}"


def task_logs(cfg: Config) -> Path:
    """Where array tasks write their logs (sbatch --output)."""
    return cfg.run_dir.resolve() / "logs" / "slurm"


def _render(cfg: Config, arrays: list[ArrayJob], directory: Path, config: Path, entry: list[str]) -> list[str]:
    """Every array's script, in memory: bad slurm values are refused before anything is written."""
    submit_dir = Path.cwd().resolve()
    run_dir = cfg.run_dir.resolve()
    logs = task_logs(cfg)
    scripts = []
    for array in arrays:
        resources = cfg.slurm.for_stage(array.stage)
        shape = task_shape(array.units[0].multiprocess, resources)  # one launcher per array (plan_arrays)
        units_file = directory / f"{array.name}.units"
        options = sbatch_options(resources, cfg.slurm, job_name=f"{cfg.name}.{array.name}",
                                 array_size=len(array.units), chdir=submit_dir,
                                 log_pattern=logs / f"{array.name}.%A_%a.out", shape=shape, stage=array.stage)
        scripts.append(render_script(
            shape, options=options, slurm=cfg.slurm, python=sys.executable, entry=entry, stage=array.stage,
            run_dir=run_dir, config=config, units_file=units_file))
    return scripts


def _write_scripts(cfg: Config, arrays: list[ArrayJob], scripts: list[str], directory: Path) -> None:
    """The rendered scripts and their units files into `directory`; the directory of the task logs."""
    task_logs(cfg).mkdir(parents=True, exist_ok=True)  # Slurm does not create the directory of --output
    for old in directory.glob("*"):  # only the dry-run directory is ever reused
        old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for array, script in zip(arrays, scripts):
        write_text_atomic(directory / f"{array.name}.units", "".join(f"{u.id}\n" for u in array.units))
        array.script = directory / f"{array.name}.sbatch"
        write_text_atomic(array.script, script)


def _sbatch_command(array: ArrayJob, dependency: str | None) -> list[str]:
    return ["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else []), str(array.script)]


def _sbatch_all(cfg: Config, arrays: list[ArrayJob], directory: Path) -> None:
    """Submit in order, recording each job in jobs.json as soon as it exists."""
    jobs = read_jobs(cfg)
    record = {"dir": str(directory), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "arrays": []}
    jobs["submissions"].append(record)
    job_ids: dict[str, str] = {}
    for array in arrays:
        dependency = array.dependency(job_ids)
        proc = subprocess.run(_sbatch_command(array, dependency), check=False, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
            done = ", ".join(f"{a.name}={a.job_id}" for a in arrays if a.job_id)
            raise UserError(f"sbatch {array.script} failed: {reason}" + (
                f" (submitted before it and still queued: {done}; recorded in {jobs_file(cfg)})" if done else ""))
        array.job_id = job_ids[array.name] = proc.stdout.strip().split(";")[0]
        record["arrays"].append({
            "name": array.name, "stage": array.stage, "job_id": array.job_id, "units": [u.id for u in array.units],
            "dependency": dependency, "script": str(array.script),
            "log": str(task_logs(cfg) / f"{array.name}.%A_%a.out"),
        })
        write_json_atomic(jobs_file(cfg), jobs)
        print(f"  {array.name:<22} {_count(array.units, 'unit'):>11}  job {array.job_id}"
              + (f"  after {dependency.removeprefix('afterok:')}" if dependency else ""))
    print(f"collapse submit: {len(arrays)} job arrays, {sum(len(a.units) for a in arrays)} units; "
          f"scripts in {directory}; follow with `collapse status {cfg.run_dir}`")


def _print_dry_run(cfg: Config, arrays: list[ArrayJob], directory: Path, queued: int) -> None:
    """The sbatch commands, as a script one could run by hand (job ids through shell variables)."""
    lines = ["#!/bin/bash", f"# collapse submit --dry-run for {cfg.run_dir}: the sbatch calls it would make", "set -euo pipefail"]
    for array in arrays:
        targets = sorted({f"${_var(name)}" for name in array.after_arrays} | array.after_tasks)
        dependency = f"afterok:{':'.join(targets)}" if targets else None
        command = " ".join(shlex.quote(part) if not part.startswith("--dependency") else f'"{part}"'
                           for part in _sbatch_command(array, dependency))
        lines.append(f"{_var(array.name)}=$({command})   # {_count(array.units, array.stage + ' unit')}")
    write_text_atomic(directory / "submit.sh", "\n".join(lines) + "\n")
    print("\n".join(lines[3:]))
    print(f"collapse submit --dry-run: {len(arrays)} job arrays, {sum(len(a.units) for a in arrays)} units"
          + (f" ({queued} still queued, not resubmitted)" if queued else "") + f"; nothing submitted. Scripts: {directory}")


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _var(name: str) -> str:
    return "JOB_" + name.replace("-", "_").replace(".", "_")


# ---------------------------------------------------------------- status


def unit_states(cfg: Config, executor: Executor) -> dict[str, str]:
    """unit key -> a short Slurm state for `collapse status`: "RUNNING 12_3", "FAILED 12_3 exit 1, log ...".

    Units never submitted, or whose jobs Slurm has forgotten, are left out.
    """
    jobs = read_jobs(cfg)
    tasks = latest_tasks(jobs)
    states = task_states(_array_sizes(tasks, jobs))
    out = {}
    for key, task in tasks.items():
        state = states.get((task["job_id"], task["task"]))
        if state is not None and key in executor.planned.by_key:
            out[key] = describe(state, f"{task['job_id']}_{task['task']}", task["log"])
    return out


def describe(state: TaskState, task: str, log: str) -> str:
    text = f"{state.state} {task}"
    if state.reason:
        text += f" ({state.reason})"
    if state.state not in ("PENDING", "RUNNING", "COMPLETED", "COMPLETING", "CONFIGURING") and Path(log).exists():
        code = state.exit_code.split(":")[0]
        text += (f" exit {code}" if code not in ("", "0") else "") + f", log {_short(log)}"
    return text


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
