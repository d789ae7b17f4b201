"""The `slurm:` section: sbatch resources per stage for `collapse submit` (pipeline/orchestration/launchers/slurm.py).

Every value here ends up in a shell script (#SBATCH lines, setup lines), so none may hold a newline or
a control character: one would start a command where sbatch expects options.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config.base import Section, StageName


class SlurmResources(Section):
    """sbatch resources of a stage's job array."""

    partition: str | None = Field(None, description="--partition")
    account: str | None = Field(None, description="--account")
    qos: str | None = Field(None, description="--qos")
    time: str = Field("01:00:00", description="--time (walltime per array task).")
    nodes: int = Field(1, ge=1, description="--nodes per task (train/generate use multi-node accelerate when > 1).")
    gpus_per_node: int = Field(0, ge=0, description="--gpus-per-node (0: CPU job).")
    cpus_per_task: int = Field(2, ge=1, description="--cpus-per-task")
    mem: str | None = Field("8G", description="--mem per node")
    extra: list[str] = Field(default_factory=list, description="Extra '#SBATCH ...' option lines, verbatim (one option per item).")

    @field_validator("partition", "account", "qos", "time", "mem", "extra", mode="after")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            _no_control_characters(item)
        return value


class SlurmConfig(SlurmResources):
    """`collapse submit`: defaults for every stage, overridden per stage under `stages:`."""

    stages: dict[StageName, dict[str, Any]] = Field(default_factory=dict, description="Per-stage overrides of the fields above.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before each task (module load, venv activate); one line per item.")

    _setup_one_line = field_validator("setup", "accelerate_config", mode="after")(
        lambda cls, v: [_no_control_characters(x) for x in (v if isinstance(v, list) else [v])] and v)
    max_array_size: int | None = Field(None, ge=1, description="Split arrays above this size; default: the cluster's MaxArraySize.")
    accelerate_config: str | None = Field(None, description="accelerate config file for GPU units (e.g. configs/accelerate/fsdp.yaml); default: plain data parallel.")
    signal_seconds: int = Field(120, ge=10, description="Send USR1 this long before the time limit: checkpoint and requeue.")
    requeue: bool = Field(True, description="Requeue on preemption / time limit (resumes from the checkpoint).")

    @model_validator(mode="after")
    def _stage_overrides_valid(self) -> "SlurmConfig":
        for stage in self.stages:
            try:
                self.for_stage(stage)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"stages.{stage}.{where}: {err['msg'].removeprefix('Value error, ')}") from None
        return self

    def for_stage(self, stage: str) -> SlurmResources:
        base = self.model_dump(include=set(SlurmResources.model_fields))
        return SlurmResources.model_validate({**base, **self.stages.get(stage, {})})


# Control characters (C0 with \n, \r, \t, ESC; DEL; C1 with NEL) and the Unicode line and paragraph
# separators: anything that may end or garble a line of a shell script.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def control_character(text: str) -> str | None:
    """The first character of `text` that has no place in one line of a script, else None.

    The one definition of what a Slurm value may not hold: the config refuses it here (`collapse plan`,
    `run`, `submit`) and the sbatch renderer (pipeline/orchestration/launchers/slurm_templates.py)
    refuses it again for values that never went through a config.
    """
    return next((char for char in text if unicodedata.category(char) in _CONTROL_CATEGORIES), None)


def _no_control_characters(value: Any) -> Any:
    """Slurm values reach #SBATCH lines of a shell script: a newline would start a command there."""
    if isinstance(value, str) and (bad := control_character(value)) is not None:
        raise ValueError(f"{value!r} contains a newline or control character ({bad!r}); "
                         "give one line of plain text")
    return value
