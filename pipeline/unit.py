"""The unit contract: what every stage and the orchestration that runs them share, and nothing else.

A stage (one module under pipeline/stages/) has the shape of `Stage` below:

    NAME = "train"
    VERSION = 1                                  # bump when the stage's output changes meaning
    def plan(cfg, planned) -> list[Unit]         # every unit of this stage; earlier stages' via planned.units(stage)
    def run(ctx) -> dict                         # one unit's work, written only under ctx.out; returns metrics
    def summary(stage_dir, units) -> dict        # optional (`Summarizes`): {file name: text or None} of
                                                 #   stage-level tables, built from the done units
    def preflight(units, done_inputs) -> bool    # optional (`Preflights`): early checks from the inputs done
                                                 #   so far; True once checked

Both sides import this module and neither imports the other: orchestration loads stage modules by name
and calls them through these types; stages never import orchestration (tests/test_layers.py).

A unit key is `STAGE/ID` (`unit_key`); single-unit stages have id == stage (`prepare/prepare`).
Which keys exist, and how to read their outputs, is pipeline/stages/artifacts.py's business.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pipeline.distributed import Processes

if TYPE_CHECKING:
    from pipeline.config import Config


def unit_key(stage: str, unit_id: str) -> str:
    return f"{stage}/{unit_id}"


def key_stage(key: str) -> str:
    """The stage of a unit key (`mix` of `mix/g0-p0.5-n20000`)."""
    return key.partition("/")[0]


def key_id(key: str) -> str:
    """The unit id of a unit key (`g0-p0.5-n20000` of `mix/g0-p0.5-n20000`)."""
    return key.partition("/")[2]


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage's output for one point of the config grid.

    `params` is everything the unit's result depends on (hashed into its fingerprint); `settings` is
    what the unit reads that cannot change its result (batch sizes that do not change results,
    num_proc, log and checkpoint intervals, trackers): not hashed, so changing it redoes nothing.
    """

    stage: str
    id: str
    params: dict[str, Any]
    inputs: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict, compare=False)
    multiprocess: bool = False  # may run in several processes (under `accelerate launch`): train, teacher, shards
    resumable: bool = False  # keep the work dir across a kill (the unit checkpoints inside it)

    @property
    def key(self) -> str:
        return unit_key(self.stage, self.id)

    @property
    def relpath(self) -> str:
        """Single-unit stages (id == stage) live directly at runs/NAME/STAGE."""
        return self.stage if self.id == self.stage else f"{self.stage}/{self.id}"

    def inputs_from(self, stage: str) -> tuple[str, ...]:
        """The keys of this unit's inputs that `stage` planned, in input order."""
        return tuple(key for key in self.inputs if key_stage(key) == stage)


@dataclass
class UnitContext:
    """What a stage's run() gets: its unit (params, settings), where to write, its inputs, a logger.

    Deliberately not the config: a unit reads only what its plan put into params (fingerprinted) or
    settings (declared not to change results), so its fingerprint covers everything it depends on.
    """

    unit: Unit
    out: Path
    inputs: dict[str, Path]  # unit key -> the finished input's directory
    log: logging.Logger
    processes: Processes = field(default_factory=Processes.single)

    @property
    def params(self) -> dict[str, Any]:
        return self.unit.params

    @property
    def settings(self) -> dict[str, Any]:
        return self.unit.settings

    @property
    def is_main_process(self) -> bool:
        return self.processes.is_main

    def inputs_of(self, stage: str) -> dict[str, Path]:
        """This unit's inputs from `stage`: {unit id: directory}, in input order."""
        return {key_id(key): self.inputs[key] for key in self.unit.inputs_from(stage)}

    def input_of(self, stage: str) -> Path | None:
        """The directory of this unit's one input from `stage`; None when it has none."""
        found = list(self.inputs_of(stage).values())
        if len(found) > 1:
            raise RuntimeError(f"unit {self.unit.key} has {len(found)} inputs from stage {stage}, not one")
        return found[0] if found else None

    def manifest(self, key: str) -> dict[str, Any]:
        return json.loads((self.inputs[key] / "manifest.json").read_text())


class PlanView:
    """What a stage's plan() sees of the run's plan: the units planned so far, by key."""

    def __init__(self) -> None:
        self.by_key: dict[str, Unit] = {}

    def units(self, stage: str) -> list[Unit]:
        return [u for u in self.by_key.values() if u.stage == stage]

    def get(self, key: str) -> Unit:
        return self.by_key[key]

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.by_key.values())


class Stage(Protocol):
    """A stage module (see the module docstring); the optional hooks are `Summarizes` and `Preflights`."""

    NAME: str
    VERSION: int

    def plan(self, cfg: Config, planned: PlanView) -> list[Unit]: ...

    def run(self, ctx: UnitContext) -> dict[str, Any] | None: ...


@runtime_checkable
class Summarizes(Protocol):
    """A stage with stage-level tables: {file name under runs/NAME/STAGE/: its text, or None for no file}."""

    def summary(self, stage_dir: Path, units: list[Unit]) -> dict[str, str | None]: ...


@runtime_checkable
class Preflights(Protocol):
    """A stage that checks its grid against the inputs done so far (before hours of upstream work);
    returns True once it has checked (not called again)."""

    def preflight(self, units: list[Unit], done_inputs: dict[str, Path]) -> bool: ...
