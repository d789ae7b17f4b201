"""The stage runner: a config expands into stages, a stage into units, a unit into one directory.

A unit is a pure function of its config slice (`params`) and its inputs. Its fingerprint hashes both
(with the stage's VERSION), so changing one config value changes exactly the fingerprints of the units
that read it and of everything downstream. A unit runs in a private work dir, writes `manifest.json`
last, and is renamed into `runs/NAME/STAGE/UNIT/` in one step: a directory with a matching manifest is
done, anything else is not. A per-unit lock (flock, released by the kernel when its holder dies) keeps
two processes — two terminals, two Slurm array tasks — from running one unit at once.

Every stage module has the same shape, the unit contract in pipeline/unit.py: NAME, VERSION,
plan(cfg, planned) -> [Unit], run(ctx) -> metrics, and optionally summary(stage_dir, units).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.config import STAGES, Config
from pipeline.io import first_difference, read_json_object
from pipeline.unit import PlanView, Stage, Unit

log = logging.getLogger("collapse")


class Planned(PlanView):
    """All units of a run with fingerprints, in an order where every unit comes after its inputs."""

    def __init__(self, units: list[Unit], versions: dict[str, int]) -> None:
        super().__init__()
        by_key: dict[str, Unit] = {}
        for unit in units:
            if unit.key in by_key:
                raise RuntimeError(f"stage {unit.stage} planned unit {unit.id!r} twice")
            by_key[unit.key] = unit
        for unit in units:
            missing = [k for k in unit.inputs if k not in by_key]
            if missing:
                raise RuntimeError(f"unit {unit.key} names inputs that no stage planned: {missing}")
        self.by_key = {u.key: u for u in dependency_order(units)}
        self.fingerprints: dict[str, str] = {}
        for unit in self.by_key.values():  # inputs first, so their fingerprints exist
            inputs = {k: self.fingerprints[k] for k in unit.inputs}
            self.fingerprints[unit.key] = fingerprint(unit, versions.get(unit.stage, 1), inputs)


def dependency_order(units: list[Unit]) -> list[Unit]:
    """Plan order, except that a unit waits until its inputs are placed (stable topological sort).

    The teacher stage plans every generation, but teacher g1 needs generate/g0, which a later stage
    plans: it is placed right after that corpus unit.
    """
    placed: set[str] = set()
    remaining, ordered = list(units), []
    while remaining:
        ready = next((u for u in remaining if all(k in placed for k in u.inputs)), None)
        if ready is None:
            cycle = ", ".join(u.key for u in remaining[:5])
            raise RuntimeError(f"units with circular inputs: {cycle}")
        ordered.append(ready)
        placed.add(ready.key)
        remaining.remove(ready)
    return ordered


def fingerprint(unit: Unit, version: int, input_fingerprints: dict[str, str]) -> str:
    payload = {"stage": unit.stage, "id": unit.id, "version": version, "params": unit.params,
               "inputs": input_fingerprints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def metrics_digest(metrics: Any) -> str:
    """sha256 of a manifest's metrics as JSON with sorted keys: an edited number is found like an edited file."""
    return hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()


def default_stages() -> dict[str, Stage]:
    """The stage modules, loaded by name: orchestration knows them only through pipeline/unit.py."""
    import importlib

    return {name: importlib.import_module(f"pipeline.stages.{name}") for name in STAGES}


def plan_run(cfg: Config, stages: dict[str, Stage]) -> Planned:
    """Every stage plans all of its own units (seeing the earlier stages' units); then fingerprints."""
    so_far = PlanView()
    units: list[Unit] = []
    for name, module in stages.items():
        for unit in module.plan(cfg, so_far):
            units.append(unit)
            so_far.by_key.setdefault(unit.key, unit)
    return Planned(units, {name: module.VERSION for name, module in stages.items()})


# ---------------------------------------------------------------- on-disk state


class RunDir:
    """Paths of a run: final unit dirs, and the runner's own state under .collapse/."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.internal = self.root / ".collapse"  # the runner's own files: work dirs, locks, failures

    def final(self, unit: Unit) -> Path:
        return self.root / unit.relpath

    def work(self, unit: Unit, fp: str) -> Path:
        return self.internal / "work" / unit.stage / f"{unit.id}.{fp[:12]}"

    def lock(self, unit: Unit) -> Path:
        return self.internal / "locks" / unit.stage / f"{unit.id}.lock"

    def failure(self, unit: Unit) -> Path:
        return self.internal / "failed" / unit.stage / f"{unit.id}.json"

    def log_file(self, unit: Unit) -> Path:
        return self.root / "logs" / unit.stage / f"{unit.id}.log"

    def manifest(self, unit: Unit) -> dict[str, Any] | None:
        return read_json_object(self.final(unit) / "manifest.json")

    def is_done(self, unit: Unit, fp: str) -> bool:
        """Its manifest has this fingerprint and every file it records is there with its size (cheap: stat)."""
        manifest = self.manifest(unit)
        return manifest is not None and manifest.get("fingerprint") == fp and self.damage(unit, manifest) is None

    def damage(self, unit: Unit, manifest: dict[str, Any] | None = None, hashes: bool = False) -> str | None:
        """What is wrong with a finished unit's files ("model/x.safetensors has 1,000 bytes, ...") or with the
        metrics its manifest records (later stages and the report read them), or None. Manifests written
        before they listed files or hashed metrics are not checked for what they do not record."""
        manifest = manifest if manifest is not None else self.manifest(unit)
        if not manifest:
            return None
        files = manifest.get("files")
        if isinstance(files, dict) and (problem := first_difference(self.final(unit), files, hashes=hashes)):
            return problem
        recorded = manifest.get("metrics_sha256")
        if recorded is not None and metrics_digest(manifest.get("metrics")) != recorded:
            return "manifest.json has other metrics than the unit wrote (sha256 differs)"
        return None

    def holder(self, unit: Unit) -> str:
        """Who holds the unit's lock, as "pid P on HOST" (from the lock file), for messages."""
        info = read_json_object(self.lock(unit)) or {}
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')}"

    def is_running(self, unit: Unit) -> bool:
        """Whether a live process holds the unit's lock. A probe opens it read-only (flock needs no write
        access), so that `collapse status` works on a read-only run dir and never creates a lock file."""
        try:
            handle = open(self.lock(unit), "rb")
        except FileNotFoundError:  # never locked (or its run dir is gone)
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def failed(self, unit: Unit) -> dict[str, Any] | None:
        return read_json_object(self.failure(unit))


@contextlib.contextmanager
def unit_lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """Yield True while this process holds the unit's lock, False if another live process does.

    With wait=True, block until the lock is free (for short critical sections such as summaries).

    flock is tied to the open file: when the holder dies (even by SIGKILL) the kernel releases it,
    so a stale lock file from a dead process is simply taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
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
