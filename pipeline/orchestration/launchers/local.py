"""The local launcher: run the unit in this process."""

from __future__ import annotations

from pipeline.orchestration.executor import Executor, UnitOutcome
from pipeline.unit import Unit


class LocalLauncher:
    def launch(self, executor: Executor, unit: Unit) -> UnitOutcome:
        return executor.execute(unit)
