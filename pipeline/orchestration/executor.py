"""Executing units: lock, run in a private work dir, write the manifest, rename into place.

`Executor.execute` is the one code path for every launcher: the local loop calls it in-process, and
`collapse stage` (what an `accelerate launch` worker or a Slurm array task runs) calls it too. Under
accelerate every process enters it; the main process takes the lock and finalizes after a barrier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pipeline.config import Config
from pipeline.distributed import Processes
from pipeline.errors import ExitCode, UserError, is_disk_error, wrapped_disk_error
from pipeline.io import TEMP_PREFIX, json_text, list_files, replace_dir, write_json_atomic, write_text_atomic
from pipeline.orchestration.runner import Planned, RunDir, metrics_digest, unit_lock, versions
from pipeline.unit import Stage, Summarizes, Unit, UnitContext

log = logging.getLogger("collapse")


class Verdict(Enum):
    """What the main process decides before a unit runs (every process follows it)."""

    RUN = "run"
    DONE = "done"  # finished with this fingerprint: nothing to do
    LOCKED = "locked"  # another live process holds the unit's lock
    BAD_INPUT = "bad input"  # an input is not done: a UserError in every process


@dataclass
class UnitOutcome:
    unit: Unit
    status: str  # done | ran | locked | failed
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Executor:
    """Runs units of one planned run in this process (the local launcher and `collapse stage`)."""

    cfg: Config
    stages: dict[str, Stage]
    planned: Planned
    force: frozenset[str] = field(default_factory=frozenset)  # stages to redo even when done (--force)
    redo: frozenset[str] = field(default_factory=frozenset)  # unit keys to redo: damaged ones and what read them

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.cfg.run_dir)

    def must_run(self, unit: Unit) -> bool:
        return unit.stage in self.force or unit.key in self.redo

    def state(self, unit: Unit) -> str:
        rd, fp = self.run_dir, self.planned.fingerprints[unit.key]
        if rd.is_done(unit, fp):
            return "done"
        manifest = rd.manifest(unit)
        if manifest is not None and manifest.get("fingerprint") == fp:
            return "damaged"
        if rd.is_running(unit):
            return "running"
        failure = rd.failed(unit)
        if failure and failure.get("fingerprint") == self.planned.fingerprints[unit.key]:
            return "failed"
        return "pending"

    def missing_input(self, unit: Unit, coming: frozenset[str] = frozenset()) -> str | None:
        """The bad-input line for the first input of `unit` that is not done (nor `coming`: run before it), else None."""
        for key in unit.inputs:
            upstream = self.planned.get(key)
            if key in coming:
                continue
            if not self.run_dir.is_done(upstream, self.planned.fingerprints[key]):
                return f"unit {unit.key} needs {key}, which is not done; run stage {upstream.stage} first"
        return None

    def check_inputs(self, unit: Unit, coming: frozenset[str] = frozenset()) -> None:
        problem = self.missing_input(unit, coming)
        if problem:
            raise UserError(problem)

    def execute(self, unit: Unit, dist: Processes | None = None) -> UnitOutcome:
        """Run one unit unless done or locked. Under accelerate, every process calls this."""
        dist = dist or Processes.single()
        fp = self.planned.fingerprints[unit.key]
        with contextlib.ExitStack() as held:  # the unit's lock, when the main process takes it
            decided = self._verdict(unit, fp, held) if dist.is_main else (Verdict.RUN, None)
            verdict, problem = dist.broadcast(decided)
            if verdict is Verdict.BAD_INPUT:  # every process raises, none waits at a barrier for the main one
                raise UserError(problem)
            if verdict is Verdict.RUN:
                self.check_inputs(unit)  # an input redone (moved aside) while we took the lock
                return self._run_locked(unit, fp, dist)
        return UnitOutcome(unit, verdict.value)

    def _verdict(self, unit: Unit, fp: str, held: contextlib.ExitStack) -> tuple[Verdict, str | None]:
        """(verdict, the bad-input line or None); takes the unit's lock into `held` when it may run."""
        rd, forced = self.run_dir, self.must_run(unit)
        if rd.is_done(unit, fp) and not forced:
            return Verdict.DONE, None
        if problem := self.missing_input(unit):  # bad input: found before the lock file is created
            return Verdict.BAD_INPUT, problem
        if not held.enter_context(unit_lock(rd.lock(unit))):
            return Verdict.LOCKED, None
        if rd.is_done(unit, fp) and not forced:  # finished by someone while we waited
            return Verdict.DONE, None
        return Verdict.RUN, None

    def _run_locked(self, unit: Unit, fp: str, dist: Processes) -> UnitOutcome:
        rd, module = self.run_dir, self.stages[unit.stage]
        work = rd.work(unit, fp)
        if dist.is_main:
            _prepare_work_dir(rd, unit, work)
        dist.barrier()
        log_existed = rd.log_file(unit).exists()
        unit_log, handler = _unit_logger(rd.log_file(unit), unit, dist.is_main)
        ctx = UnitContext(unit=unit, out=work, inputs={k: rd.final(self.planned.get(k)) for k in unit.inputs},
                          log=unit_log, processes=dist)
        started = time.time()
        try:
            metrics = module.run(ctx) or {}
            dist.barrier()
            if dist.is_main:
                self._finalize(unit, fp, work, metrics, started)
        except BaseException as exc:
            disk = exc if is_disk_error(exc) else wrapped_disk_error(exc)
            if _is_interruption(exc):  # checkpointed on SIGTERM/SIGUSR1 or Ctrl-C: resumable, not failed
                unit_log.info("interrupted (%s); re-running the unit resumes it", _interruption_name(exc))
            elif isinstance(exc, UserError) and dist.is_main:  # bad input: leave nothing behind
                _discard_attempt(rd, unit, work, None if log_existed else rd.log_file(unit))
            elif disk is not None and dist.is_main:  # the disk, not the unit, failed: no failure record
                # a resumable unit keeps its checkpoints so that a re-run continues; others free the space
                if not unit.resumable:
                    _discard_attempt(rd, unit, work, None)
            elif dist.is_main:
                _record_failure(rd, unit, fp, exc)
            if disk is not None and disk is not exc:  # as the OSError it is: the CLI's one line with the fix
                raise OSError(disk.errno, disk.strerror, str(rd.root)) from exc
            raise
        finally:
            unit_log.removeHandler(handler)
            handler.close()
        return UnitOutcome(unit, "ran", time.time() - started)

    def _finalize(self, unit: Unit, fp: str, work: Path, metrics: dict, started: float) -> None:
        rd = self.run_dir
        try:  # the metrics as every reader will see them (keys as strings, tuples as lists), hashed as such
            metrics = json.loads(json_text(metrics, default=str))
        except ValueError as exc:
            raise ValueError(f"unit {unit.key}: metric {exc}") from None
        manifest = {
            "stage": unit.stage, "unit": unit.id, "fingerprint": fp, "params": unit.params,
            "inputs": {k: self.planned.fingerprints[k] for k in unit.inputs},
            "metrics": metrics, "metrics_sha256": metrics_digest(metrics),
            "files": list_files(work, skip=("manifest.json",)),
            "wall_time_s": round(time.time() - started, 3),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "host": socket.gethostname(), "versions": versions(),
        }
        write_json_atomic(work / "manifest.json", manifest)
        _swap_into_place(rd, work, rd.final(unit))
        with contextlib.suppress(FileNotFoundError):
            rd.failure(unit).unlink()
        self.summarize(unit.stage)

    def stale_summaries(self, stage: str) -> dict[Path, str | None]:
        """The stage's summary files (its optional `summary(stage_dir, units)`, built from the finished units)
        that are missing or hold other text: {path: the text it should hold, None where it should not exist}."""
        module = self.stages[stage]
        if not isinstance(module, Summarizes):
            return {}
        rd = self.run_dir
        done = [u for u in self.planned.units(stage) if rd.is_done(u, self.planned.fingerprints[u.key])]
        wanted = {rd.root / stage / name: text for name, text in module.summary(rd.root / stage, done).items()}
        return {path: text for path, text in wanted.items() if _text_or_none(path) != text}

    def summarize(self, stage: str) -> list[Path]:
        """Rewrite the stage's stale summary files, one writer at a time (waits for the lock); returns them.
        An up-to-date summary is not touched (nor its lock taken): a finished read-only run stays as it is."""
        if not self.stale_summaries(stage):
            return []
        rd = self.run_dir
        with unit_lock(rd.internal / "locks" / stage / ".summary.lock", wait=True) as held:
            if not held:  # unreachable with wait=True; never summarize without the lock
                raise RuntimeError(f"could not lock the {stage} summary")
            stale = self.stale_summaries(stage)
            for path, text in stale.items():
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    write_text_atomic(path, text)
        return sorted(stale)


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _prepare_work_dir(rd: RunDir, unit: Unit, work: Path) -> None:
    """Fresh work dir, unless the unit resumes from checkpoints inside it (then without the half-written
    outputs of the attempt that was killed). Old fingerprints' dirs go."""
    for stale in work.parent.glob(f"{unit.id}.*"):
        if stale != work and stale.name.rsplit(".", 1)[0] == unit.id:
            shutil.rmtree(stale, ignore_errors=True)
    if work.exists() and not unit.resumable:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for half_written in work.glob(f"{TEMP_PREFIX}*"):  # a kill mid-write (e.g. the final model) left these
        shutil.rmtree(half_written) if half_written.is_dir() else half_written.unlink()


def _swap_into_place(rd: RunDir, work: Path, final: Path) -> None:
    """Rename the finished work dir over the final dir (an old version is moved to trash, then deleted)."""
    replace_dir(work, final, trash_dir=rd.internal / "trash")


def _discard_attempt(rd: RunDir, unit: Unit, work: Path, new_log: Path | None) -> None:
    """A unit stopped by bad input wrote nothing worth keeping: its work dir and a log it created go."""
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # only when empty
    if new_log is not None:
        with contextlib.suppress(FileNotFoundError):
            new_log.unlink()


def _is_interruption(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == ExitCode.REQUEUE)


def _interruption_name(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "Ctrl-C"
    return f"checkpointed, exit {ExitCode.REQUEUE.value}"


def _record_failure(rd: RunDir, unit: Unit, fp: str, exc: BaseException) -> None:
    line = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    write_json_atomic(rd.failure(unit), {
        "fingerprint": fp, "error": line, "log": str(rd.log_file(unit)), "time": time.time(),
        "traceback": traceback.format_exc(),
    })


def _unit_logger(path: Path, unit: Unit, is_main: bool) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"collapse.{unit.stage}.{unit.id}")
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler
