"""A sweep: run the units of a plan in dependency order through a launcher, as `collapse run` does.

Done units are skipped (their manifest's fingerprint matches and their files have the recorded sizes).
A damaged unit (a file missing or of another size) is redone, and so is everything that read it. A
unit locked by another live process (a second terminal, a Slurm task) is waited for, then skipped if
that process finished it, so overlapping runs cooperate and whichever finishes last completes fit and
report. A failed unit blocks its dependents and the sweep goes on; bad input (UserError) and a full,
read-only or over-quota disk (pipeline.errors.DISK_ERRORS) stop it.
Before each unit runs, every stage's optional `preflight(units, done_inputs) -> bool` checks what can
be known from the inputs done so far (mix: budgets against the prepared corpus, right after prepare),
so hours of teacher training and sampling are not spent before a bad value is found.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.errors import UserError, is_disk_error
from pipeline.orchestration.executor import Executor, UnitOutcome
from pipeline.unit import Preflights, Unit

log = logging.getLogger("collapse")
LOCK_POLL_SECONDS = 2.0


def dependents(executor: Executor, keys: set[str]) -> set[str]:
    """Every planned unit downstream of `keys` (transitively)."""
    found = set(keys)
    for unit in executor.planned:  # dependency order: inputs come first
        if any(k in found for k in unit.inputs):
            found.add(unit.key)
    return found - set(keys)


def mark_damaged(executor: Executor, units: list[Unit], hashes: bool = False) -> set[str]:
    """Find finished-but-damaged units; schedule them and their dependents to be redone. Returns them."""
    rd = executor.run_dir
    damaged = {}
    for unit in units:
        manifest = rd.manifest(unit)
        if manifest is None or manifest.get("fingerprint") != executor.planned.fingerprints[unit.key]:
            continue
        problem = rd.damage(unit, manifest, hashes=hashes)
        if problem:
            damaged[unit.key] = problem
    downstream = dependents(executor, set(damaged))
    for key, problem in damaged.items():
        log.warning("unit %s is damaged: %s; it is redone with the units that read it", key, problem)
    executor.redo = executor.redo | frozenset(damaged) | frozenset(downstream)
    return set(damaged)


def check_inputs_come_first(executor: Executor, units: list[Unit]) -> None:
    """Before a sweep starts: every input of `units` is done or among them (else the UserError naming the
    stage to run), so that a cut-short `--stages` fails before any unit runs, not after some finished."""
    coming = frozenset(u.key for u in units)
    for unit in units:
        executor.check_inputs(unit, coming)


def wait_while_locked(executor: Executor, unit: Unit) -> None:
    """Block while another live process holds the unit's lock (saying so once)."""
    rd = executor.run_dir
    if rd.is_running(unit):
        log.info("unit %s is being run by %s; waiting for it", unit.key, rd.holder(unit))
    while rd.is_running(unit):
        time.sleep(LOCK_POLL_SECONDS)


def preflight(executor: Executor, stage: str, checked: set[str]) -> None:
    """The stage's early checks, given the inputs done so far; once it says it has checked, not again."""
    module = executor.stages[stage]
    if not isinstance(module, Preflights) or stage in checked:
        return
    units = executor.planned.units(stage)
    rd, planned = executor.run_dir, executor.planned
    keys = {k for u in units for k in u.inputs}
    done = {k: rd.final(planned.get(k)) for k in keys if rd.is_done(planned.get(k), planned.fingerprints[k])}
    if module.preflight(units, done):
        checked.add(stage)


def run_units(executor: Executor, units: list[Unit], launcher: Any, progress: bool = True) -> list[UnitOutcome]:
    """Run `units` (plan order) through `launcher`; see the module docstring for what is skipped."""
    from pipeline.lm.progress import progress_bar

    mark_damaged(executor, units)
    pending = [u for u in units if executor.state(u) != "done" or executor.must_run(u)]
    outcomes = [UnitOutcome(u, "done") for u in units if u not in pending]
    blocked: set[str] = set()
    checked: set[str] = set()
    bar = progress_bar(total=len(pending), show=progress and bool(pending), desc="units", unit="unit",
                       dynamic_ncols=True)
    try:
        for unit in pending:
            bar.set_postfix_str(unit.key)
            outcome = _run_one(executor, unit, launcher, blocked, checked)
            if outcome.status in ("failed", "skipped"):
                blocked.add(unit.key)
            outcomes.append(outcome)
            bar.update()
    finally:
        bar.close()
    refresh_summaries(executor, list(dict.fromkeys(u.stage for u in units)))
    return outcomes


def refresh_summaries(executor: Executor, stages: list[str]) -> list[Path]:
    """Rebuild the stage summaries (evaluate/results.jsonl) that do not match their finished units: deleted,
    edited, or listing a unit since redone. Each unit's finish rebuilds its stage's; this catches the rest."""
    rebuilt = [path for stage in stages for path in executor.summarize(stage)]
    for path in rebuilt:
        log.warning("%s did not match its finished units; rebuilt from them", path)
    return rebuilt


def _run_one(executor: Executor, unit: Unit, launcher: Any, blocked: set[str], checked: set[str]) -> UnitOutcome:
    if any(k in blocked for k in unit.inputs):
        return UnitOutcome(unit, "skipped", error="an input did not finish")
    for stage in executor.stages:  # every stage whose inputs are ready checks its grid before work starts
        preflight(executor, stage, checked)
    try:
        outcome = launcher.launch(executor, unit)
        while outcome.status == "locked":
            wait_while_locked(executor, unit)
            outcome = launcher.launch(executor, unit)
    except UserError:
        raise
    except Exception as exc:  # recorded in .collapse/failed by execute(); the sweep goes on
        if is_disk_error(exc):  # a full or read-only disk fails every unit after it: stop, the CLI says how
            if exc.filename is None:  # a failed write() names no file: name the run dir the unit wrote to
                raise OSError(exc.errno, exc.strerror, str(executor.run_dir.root)) from exc
            raise
        outcome = UnitOutcome(unit, "failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        log.error("unit %s failed: %s (log: %s)", unit.key, outcome.error, executor.run_dir.log_file(unit))
    return outcome
