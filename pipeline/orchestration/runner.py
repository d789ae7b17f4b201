"""The stage runner: a config expands into stages, a stage into units, a unit into one directory.

A unit is a pure function of its config slice (`params`) and its inputs. Its fingerprint hashes both
(with the stage's VERSION), so changing one config value changes exactly the fingerprints of the units
that read it and of everything downstream. A unit runs in a private work dir, writes `manifest.json`
last, and is renamed into `runs/NAME/STAGE/UNIT/` in one step: a directory with a matching manifest is
done, anything else is not. A per-unit lock (flock, released by the kernel when its holder dies) keeps
two processes — two terminals, two Slurm array tasks — from running one unit at once.

Every stage module has the same shape (see pipeline/stages/__init__.py): NAME, VERSION,
plan(cfg, planned) -> [Unit], run(ctx) -> metrics, and optionally summarize(run_dir, cfg).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from pipeline.config import STAGES, Config

log = logging.getLogger("collapse")


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage's output for one point of the config grid."""

    stage: str
    id: str
    params: dict[str, Any]
    inputs: tuple[str, ...] = ()
    launcher: str = "local"  # "accelerate": may run multi-process (train, teacher, generate shards)
    resumable: bool = False  # keep the work dir across a kill (the unit checkpoints inside it)

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.id}"

    @property
    def relpath(self) -> str:
        """Single-unit stages (id == stage) live directly at runs/NAME/STAGE."""
        return self.stage if self.id == self.stage else f"{self.stage}/{self.id}"


@dataclass
class UnitContext:
    """What a stage's run() gets: where to write, where its inputs are, and a logger."""

    unit: Unit
    cfg: Config
    out: Path
    run_dir: Path
    inputs: dict[str, Path]
    log: logging.Logger
    is_main_process: bool = True

    @property
    def params(self) -> dict[str, Any]:
        return self.unit.params

    def manifest(self, key: str) -> dict[str, Any]:
        return json.loads((self.inputs[key] / "manifest.json").read_text())


class Planned:
    """All units of a run, in pipeline order, with fingerprints. Built by `plan_run`."""

    def __init__(self) -> None:
        self.by_key: dict[str, Unit] = {}
        self.fingerprints: dict[str, str] = {}

    def units(self, stage: str) -> list[Unit]:
        return [u for u in self.by_key.values() if u.stage == stage]

    def get(self, key: str) -> Unit:
        return self.by_key[key]

    def add(self, unit: Unit, version: int) -> None:
        if unit.key in self.by_key:
            raise RuntimeError(f"stage {unit.stage} planned unit {unit.id!r} twice")
        missing = [k for k in unit.inputs if k not in self.by_key]
        if missing:
            raise RuntimeError(f"unit {unit.key} names inputs that are not planned before it: {missing}")
        self.by_key[unit.key] = unit
        self.fingerprints[unit.key] = fingerprint(unit, version, {k: self.fingerprints[k] for k in unit.inputs})

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.by_key.values())


def fingerprint(unit: Unit, version: int, input_fingerprints: dict[str, str]) -> str:
    payload = {"stage": unit.stage, "id": unit.id, "version": version, "params": unit.params,
               "inputs": input_fingerprints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def default_stages() -> dict[str, ModuleType]:
    import importlib

    return {name: importlib.import_module(f"pipeline.stages.{name}") for name in STAGES}


def plan_run(cfg: Config, stages: dict[str, ModuleType]) -> Planned:
    """Expand every stage into units. Later stages see earlier ones' units through `planned`."""
    planned = Planned()
    for name, module in stages.items():
        for unit in module.plan(cfg, planned):
            planned.add(unit, getattr(module, "VERSION", 1))
    return planned


# ---------------------------------------------------------------- on-disk state


class RunDir:
    """Paths of a run: final unit dirs, and the runner's own state under .collapse/."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state = self.root / ".collapse"

    def final(self, unit: Unit) -> Path:
        return self.root / unit.relpath

    def work(self, unit: Unit, fp: str) -> Path:
        return self.state / "work" / unit.stage / f"{unit.id}.{fp[:12]}"

    def lock(self, unit: Unit) -> Path:
        return self.state / "locks" / unit.stage / f"{unit.id}.lock"

    def failure(self, unit: Unit) -> Path:
        return self.state / "failed" / unit.stage / f"{unit.id}.json"

    def log_file(self, unit: Unit) -> Path:
        return self.root / "logs" / unit.stage / f"{unit.id}.log"

    def manifest(self, unit: Unit) -> dict[str, Any] | None:
        path = self.final(unit) / "manifest.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, unit: Unit, fp: str) -> bool:
        manifest = self.manifest(unit)
        return manifest is not None and manifest.get("fingerprint") == fp

    def is_running(self, unit: Unit) -> bool:
        path = self.lock(unit)
        if not path.exists():
            return False
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def failed(self, unit: Unit) -> dict[str, Any] | None:
        try:
            return json.loads(self.failure(unit).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None


@contextlib.contextmanager
def unit_lock(path: Path) -> Iterator[bool]:
    """Yield True while this process holds the unit's lock, False if another live process does.

    flock is tied to the open file: when the holder dies (even by SIGKILL) the kernel releases it,
    so a stale lock file from a dead process is simply taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_dir_atomic(out_dir: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a temporary sibling directory, then rename it over `out_dir`.

    Readers see the old directory or the new one, never a half-written one; a failure leaves nothing.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        write(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def versions() -> dict[str, str]:
    import pipeline

    found = {"python": platform.python_version(), "pipeline": pipeline.__version__}
    for name in ("torch", "transformers", "datasets", "accelerate", "tokenizers", "peft"):
        module = sys.modules.get(name)
        if module is None:
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                found[name] = version(name)
                continue
        found[name] = getattr(module, "__version__", "?") if module else "?"
    return found
