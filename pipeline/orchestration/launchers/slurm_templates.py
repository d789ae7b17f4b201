"""Rendering the sbatch scripts of `collapse submit` from the templates in slurm/.

The templates are plain bash a cluster user can read and edit: `{name}` marks a value filled in here
(only the names below; `${VAR}` and other braces are bash's and stay as they are). A copy of a template
in ./slurm/ of the directory `collapse submit` runs from takes precedence over the one in the checkout.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import SlurmConfig, SlurmResources
from pipeline.errors import UserError

TEMPLATES = {"unit": "unit.sbatch", "accelerate": "accelerate.sbatch"}
PLACEHOLDERS = ("sbatch_options", "setup", "python", "entry", "stage", "run_dir", "config", "units_file",
                "requeue", "lock_poll_seconds", "device_env", "processes_per_node", "accelerate_config")
_PLACEHOLDER = re.compile(r"(?<![$\\])\{(" + "|".join(PLACEHOLDERS) + r")\}")
LOCK_POLL_SECONDS = 60  # how often a task whose unit is locked by another process asks again


@dataclass(frozen=True)
class TaskShape:
    """How one array task runs its unit: one plain process, or `accelerate launch` on N nodes."""

    kind: str  # "unit" | "accelerate"
    processes_per_node: int = 1
    use_cpu: bool = False


def task_shape(launcher: str, resources: SlurmResources) -> TaskShape:
    """GPU units (and multi-node CPU units) of stages that can run multi-process go through accelerate.

    A unit that declares launcher="accelerate" runs one process per GPU; on CPU-only nodes it runs one
    process per node (gloo), which only pays off across several nodes. Everything else is one process.
    """
    if launcher != "accelerate" or (resources.gpus_per_node == 0 and resources.nodes == 1):
        return TaskShape("unit")
    if resources.gpus_per_node == 0:
        return TaskShape("accelerate", processes_per_node=1, use_cpu=True)
    return TaskShape("accelerate", processes_per_node=resources.gpus_per_node)


def template_path(kind: str, search_dir: Path | None = None) -> Path:
    name = TEMPLATES[kind]
    candidates = [(search_dir or Path.cwd()) / "slurm" / name, Path(__file__).resolve().parents[2] / "slurm" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"sbatch template {name} not found in {' or '.join(str(p.parent) for p in candidates)}")


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every `{name}` of PLACEHOLDERS; a placeholder without a value is an error, not a blank."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if missing:
        raise UserError(f"sbatch template needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def sbatch_options(resources: SlurmResources, slurm: SlurmConfig, *, job_name: str, array_size: int,
                   chdir: Path, log_pattern: Path, shape: TaskShape) -> list[str]:
    """The #SBATCH lines of one array job, in the order a reader looks for them."""
    lines = [f"--job-name={job_name}", f"--array=0-{array_size - 1}"]
    for flag, value in (("partition", resources.partition), ("account", resources.account), ("qos", resources.qos)):
        if value:
            lines.append(f"--{flag}={value}")
    nodes = resources.nodes if shape.kind == "accelerate" else 1  # one process cannot use a second node
    lines += [f"--time={resources.time}", f"--nodes={nodes}", "--ntasks-per-node=1",
              f"--cpus-per-task={resources.cpus_per_task}"]
    if resources.mem:
        lines.append(f"--mem={resources.mem}")
    if resources.gpus_per_node:
        lines.append(f"--gpus-per-node={resources.gpus_per_node}")
    lines += [f"--chdir={chdir}", f"--output={log_pattern}"]
    commented = [
        ("--open-mode=append", "a requeued task appends to its log instead of truncating it"),
        (f"--signal=B:USR1@{slurm.signal_seconds}", "USR1 to this shell before the time limit: checkpoint"),
        ("--requeue" if slurm.requeue else "--no-requeue", "may run again after preemption or a checkpoint"
         if slurm.requeue else "slurm.requeue is off"),
        ("--kill-on-invalid-dep=yes", "cancelled, not pending forever, when a job it waits for fails"),
    ]
    out = [f"#SBATCH {line}" for line in lines]
    out += [f"#SBATCH {option:<28} # {comment}" for option, comment in commented]
    for extra in resources.extra:
        extra = extra.strip()
        out.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    return out


def setup_lines(slurm: SlurmConfig) -> str:
    if not slurm.setup:
        return "# (none: set slurm.setup to load modules or activate an environment)"
    return "\n".join(slurm.setup)


def device_env(shape: TaskShape) -> str:
    if shape.use_cpu:
        return "export ACCELERATE_USE_CPU=1   # no GPUs: one process per node, gloo between nodes"
    return "# GPUs: Slurm sets CUDA_VISIBLE_DEVICES; accelerate gives each process one of them"


def render_script(shape: TaskShape, *, options: list[str], slurm: SlurmConfig, python: str, entry: list[str],
                  stage: str, run_dir: Path, config: Path, units_file: Path, search_dir: Path | None = None) -> str:
    values = {
        "sbatch_options": "\n".join(options),
        "setup": setup_lines(slurm),
        "python": shlex.quote(python),
        "entry": " ".join(shlex.quote(part) for part in entry),
        "stage": shlex.quote(stage),
        "run_dir": shlex.quote(str(run_dir)),
        "config": shlex.quote(str(config)),
        "units_file": shlex.quote(str(units_file)),
        "requeue": "1" if slurm.requeue else "0",
        "lock_poll_seconds": str(LOCK_POLL_SECONDS),
        "device_env": device_env(shape),
        "processes_per_node": str(shape.processes_per_node),
        "accelerate_config": shlex.quote(slurm.accelerate_config or ""),
    }
    return fill(template_path(shape.kind, search_dir).read_text(), values)
