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
from typing import TYPE_CHECKING

import pipeline
from pipeline.config.slurm import control_character
from pipeline.errors import UserError

if TYPE_CHECKING:  # annotations only: rendering reads attributes, so checks can run on any config object
    from pipeline.config import SlurmConfig, SlurmResources

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


def task_shape(multiprocess: bool, resources: SlurmResources) -> TaskShape:
    """GPU units (and multi-node CPU units) of stages that can run multi-process go through accelerate.

    A unit that declares multiprocess=True runs one process per GPU; on CPU-only nodes it runs one
    process per node (gloo), which only pays off across several nodes. Everything else is one process.
    """
    if not multiprocess or (resources.gpus_per_node == 0 and resources.nodes == 1):
        return TaskShape("unit")
    if resources.gpus_per_node == 0:
        return TaskShape("accelerate", processes_per_node=1, use_cpu=True)
    return TaskShape("accelerate", processes_per_node=resources.gpus_per_node)


def checkout_templates() -> Path:
    """slurm/ of the checkout: beside the `pipeline` package, wherever inside it this module lives."""
    return Path(pipeline.__file__).resolve().parent.parent / "slurm"


def template_path(kind: str, search_dir: Path | None = None) -> Path:
    name = TEMPLATES[kind]
    candidates = [(search_dir or Path.cwd()) / "slurm" / name, checkout_templates() / name]
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


def one_line(key: str, value: str) -> str:
    """`value` unchanged if it is one line of printable text; else a UserError naming `key`.

    The render-time defence against shell injection (the config validates the same): a newline in a
    value would end its `#SBATCH` line and put the rest of the value into the script as a command, and
    sbatch stops reading options at the first command, silently dropping the ones after it.
    """
    bad = control_character(str(value))
    if bad is not None:
        raise UserError(f"{key}: {str(value)!r} contains the control character {bad!r} (newline, tab or the like); "
                        "valid: one line of printable text")
    return str(value)


def _key(field: str, slurm: SlurmConfig, stage: str | None) -> str:
    """The config key a resource value came from: the stage's override if it has one."""
    overrides = (getattr(slurm, "stages", None) or {}).get(stage, {}) if stage else {}
    return f"slurm.stages.{stage}.{field}" if field in overrides else f"slurm.{field}"


def sbatch_options(resources: SlurmResources, slurm: SlurmConfig, *, job_name: str, array_size: int,
                   chdir: Path, log_pattern: Path, shape: TaskShape, stage: str | None = None) -> list[str]:
    """The #SBATCH lines of one array job, in the order a reader looks for them.

    Values are checked to be one line (`one_line`) and shell-quoted: sbatch reads `#SBATCH` arguments
    with shell-like quoting, so `--account='my account'` is one argument, and `#` cannot start a comment.
    """
    def option(flag: str, value, key: str) -> str:
        return f"--{flag}={shlex.quote(one_line(key, value))}"

    lines = [option("job-name", job_name, "name"), f"--array=0-{array_size - 1}"]
    for flag in ("partition", "account", "qos"):
        if getattr(resources, flag):
            lines.append(option(flag, getattr(resources, flag), _key(flag, slurm, stage)))
    nodes = resources.nodes if shape.kind == "accelerate" else 1  # one process cannot use a second node
    lines += [option("time", resources.time, _key("time", slurm, stage)), f"--nodes={int(nodes)}",
              "--ntasks-per-node=1", f"--cpus-per-task={int(resources.cpus_per_task)}"]
    if resources.mem:
        lines.append(option("mem", resources.mem, _key("mem", slurm, stage)))
    if resources.gpus_per_node:
        lines.append(f"--gpus-per-node={int(resources.gpus_per_node)}")
    lines += [option("chdir", chdir, "the directory `collapse submit` runs in"),
              option("output", log_pattern, "runs_dir")]
    commented = [
        ("--open-mode=append", "a requeued task appends to its log instead of truncating it"),
        (f"--signal=B:USR1@{int(slurm.signal_seconds)}", "USR1 to this shell before the time limit: checkpoint"),
        ("--requeue" if slurm.requeue else "--no-requeue", "may run again after preemption or a checkpoint"
         if slurm.requeue else "slurm.requeue is off"),
        ("--kill-on-invalid-dep=yes", "cancelled, not pending forever, when a job it waits for fails"),
    ]
    out = [f"#SBATCH {line}" for line in lines]
    out += [f"#SBATCH {option:<28} # {comment}" for option, comment in commented]
    key = _key("extra", slurm, stage)
    for i, extra in enumerate(resources.extra):  # verbatim options: one line each, a comment to bash
        extra = one_line(f"{key}[{i}]", extra).strip()
        out.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    return out


def setup_lines(slurm: SlurmConfig) -> str:
    """slurm.setup: shell lines by design (module load, source venv), so not quoted; but each one line."""
    if not slurm.setup:
        return "# (none: set slurm.setup to load modules or activate an environment)"
    return "\n".join(one_line(f"slurm.setup[{i}]", line) for i, line in enumerate(slurm.setup))


def device_env(shape: TaskShape) -> str:
    if shape.use_cpu:
        return "export ACCELERATE_USE_CPU=1   # no GPUs: one process per node, gloo between nodes"
    return "# GPUs: Slurm sets CUDA_VISIBLE_DEVICES; accelerate gives each process one of them"


def render_script(shape: TaskShape, *, options: list[str], slurm: SlurmConfig, python: str, entry: list[str],
                  stage: str, run_dir: Path, config: Path, units_file: Path, search_dir: Path | None = None) -> str:
    paths = {"the interpreter": python, "runs_dir": run_dir, "the config path": config, "units file": units_file,
             "slurm.accelerate_config": slurm.accelerate_config or ""}
    for key, value in paths.items():
        one_line(key, value)
    values = {
        "sbatch_options": "\n".join(options),
        "setup": setup_lines(slurm),
        "python": shlex.quote(python),
        "entry": " ".join(shlex.quote(one_line("entry", part)) for part in entry),
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
    path = template_path(shape.kind, search_dir)
    script = fill(path.read_text(), values)
    check_header(script, path)
    return script


def check_header(script: str, template: Path) -> None:
    """Every `#SBATCH` line must come before the first command: sbatch ignores the ones after it."""
    first_command = None
    for number, line in enumerate(script.splitlines(), start=1):
        stripped = line.strip()
        if first_command is None and stripped and not stripped.startswith("#"):
            first_command = number
        elif first_command is not None and stripped.startswith("#SBATCH"):
            raise UserError(f"sbatch template {template}: #SBATCH on line {number} comes after the first command "
                            f"(line {first_command}) and sbatch would ignore it; keep every #SBATCH line at the top")
