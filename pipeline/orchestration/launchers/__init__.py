"""Launchers start a unit's process; they share one contract: `launch(executor, unit) -> UnitOutcome`
(local: in this process; accelerate: under `accelerate launch` for multiprocess units).

Slurm is not one of them: `collapse submit` hands the whole plan to Slurm as job arrays (slurm.py), and
`scheduler_states` below reads back what Slurm says of each unit for `collapse status`. Whatever starts
a unit — this process, `accelerate launch`, a Slurm array task — it always runs through
`Executor.execute`, so locking, manifests and atomic renames are the same everywhere.
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
    from pipeline.orchestration.launchers.slurm import unit_states

    return unit_states(cfg, executor)
