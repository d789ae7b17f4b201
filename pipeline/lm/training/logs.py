"""Training log: JSON lines (out_dir/log.jsonl), Accelerate's experiment trackers, a tqdm bar with ETA.

Written by the main process only. Trackers are Accelerate's (`Accelerator(log_with=...)`): TensorBoard
by default (events under out_dir/tb/<project>), wandb, mlflow, aim or comet_ml when installed and named
in `training.trackers`. One tracker run per unit: project = the run's name (so a run's units group
together), run name = the unit id, config = the unit's parameters. Trackers stay offline unless the
user's environment says otherwise (WANDB_MODE, COMET_START_ONLINE, MLFLOW_TRACKING_URI; aim and
TensorBoard only write local files).

On resume, rows after the checkpoint's step (written by the killed run after its last checkpoint) are
dropped from the JSONL and TensorBoard purges its events past that step, so a resumed run's log reads
like an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import json_line, write_text_atomic

# Tracker name (accelerate's log_with) -> the package that must be importable for it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim", "comet_ml": "comet_ml"}


def tracker_problem(names: list[str]) -> str | None:
    """What is wrong with a list of tracker names (one unknown, or not installed), or None."""
    valid = ", ".join(TRACKERS)
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return f"unknown tracker {', '.join(map(repr, unknown))}; valid values: {valid} (or [] for none)"
    missing = [name for name in names if importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        return (f"{', '.join(missing)} is not installed (pip install "
                f"{' '.join(TRACKERS[m].replace('_', '-') for m in missing)}), or remove it; valid values: "
                f"{valid} (or [] for none)")
    return None


def check_trackers(names: list[str]) -> list[str]:
    """The trackers to use (duplicates dropped); a UserError for an unknown or uninstalled one (a config
    refuses those when it is read, naming teacher.training.trackers or train.training.trackers)."""
    problem = tracker_problem(names)
    if problem:
        raise UserError(f"training.trackers: {problem}")
    return list(dict.fromkeys(names))


def offline_by_default(names: list[str]) -> None:
    """Keep trackers that could reach a server offline unless the user chose otherwise in the environment."""
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")


def tracker_kwargs(names: list[str], project: str, name: str, out_dir: Path, start_step: int) -> dict[str, dict]:
    """init_kwargs per tracker: the unit's run named after the unit, grouped under the run's name."""
    kwargs: dict[str, dict] = {
        # Events of a killed run past the checkpoint are purged on resume.
        "tensorboard": {"purge_step": start_step or None},
        "wandb": {"name": name, "group": project, "dir": str(out_dir)},
        "mlflow": {"run_name": name},
        "aim": {"experiment": project},
        "comet_ml": {} if "COMET_START_ONLINE" in os.environ else {"online": False},
    }
    return {tracker: kwargs[tracker] for tracker in names}


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameters as flat scalars ("a.b": 1): what every tracker's config/hparams accepts."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # None, lists: TensorBoard's hparams refuse them
            flat[name] = json.dumps(value, default=str)
    return flat


class TrainLog:
    def __init__(self, out_dir: Path, start_step: int, total_steps: int, accelerator, desc: str = "train",
                 run_info: dict | None = None, config: dict | None = None) -> None:
        self.enabled = accelerator.is_main_process
        self.accelerator = accelerator
        self.path = Path(out_dir) / "log.jsonl"
        self._file = self._bar = None
        self._tracking = False
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = open(self.path, "a")
        names = [str(tracker) for tracker in accelerator.log_with]
        if names:
            offline_by_default(names)
            info = run_info or {}
            project, name = str(info.get("project") or "collapse-lab"), str(info.get("name") or desc)
            accelerator.init_trackers(project, config=flat_config(info.get("config") or config or {}),
                                      init_kwargs=tracker_kwargs(names, project, name, Path(out_dir), start_step))
            self._tracking = True
        # In a log file (Slurm, launcher logs) a redraw every second would flood it: every 30 s there.
        interactive = sys.stderr.isatty()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                         mininterval=1.0 if interactive else 30.0)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def record(self, row: dict[str, Any]) -> None:
        """One JSON line; each numeric field logged to the trackers at row['step']."""
        if not self.enabled:
            return
        if not math.isfinite(row.get("grad_norm", 0.0)):  # an fp16 overflow step, skipped by the loss scaler
            row = {**row, "grad_norm": None}
        self._file.write(json_line(row))
        self._file.flush()
        if self._tracking:
            scalars = {k: v for k, v in row.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(scalars, step=row["step"])
        shown = {k: row[k] for k in ("loss", "val_loss", "tokens_per_s", "mfu") if row.get(k) is not None}
        if shown and self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def close(self) -> None:
        """Finish every tracker run. (Not accelerator.end_training(): it also destroys the process group,
        which the stages of the same launch still use after training.)"""
        if self._tracking:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []
            self._tracking = False
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._file = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep only rows with step <= `step` (atomically); nothing to do for a fresh run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut by a kill mid-write
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))
