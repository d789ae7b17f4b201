"""Launchers start a unit's process; they share one contract: `launch(executor, unit) -> UnitOutcome`,
and `unit_states(cfg, executor) -> {unit key: scheduler state}` for `collapse status`.

Whatever starts it — this process, `accelerate launch`, a Slurm array task — the unit itself always
runs through `Executor.execute`, so locking, manifests and atomic renames are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config


def get_launcher(cfg: Config, resolved_config: Path):
    if cfg.launcher == "accelerate":
        from pipeline.orchestration.launchers.accelerate import AccelerateLauncher

        return AccelerateLauncher(resolved_config, Path(cfg.accelerate_config))
    from pipeline.orchestration.launchers.local import LocalLauncher

    return LocalLauncher()


def scheduler_states(cfg: Config, executor) -> dict[str, str]:
    """What a batch scheduler says of each unit (Slurm job state), for `collapse status`; {} without one."""
    from pipeline.orchestration.launchers.slurm import SlurmLauncher

    return SlurmLauncher().unit_states(cfg, executor)
