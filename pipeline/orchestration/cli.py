"""`collapse`: run, plan, inspect and submit experiments.

    collapse run [CONFIG] [--stages a,b] [--force STAGE[,STAGE]] [--set key.path=value]...
    collapse plan [CONFIG]                    units, fingerprints, done/pending — runs nothing
    collapse status RUN_DIR                   a table per stage; the results table
    collapse verify RUN_DIR [--repair]        hash every finished unit's files; redo damaged ones
    collapse stage STAGE CONFIG --unit ID     one unit (what Slurm array tasks and accelerate workers run)
    collapse submit CONFIG [--dry-run]        job arrays on a Slurm cluster
    collapse theory ...                       predictions and figures of the linear theory
    collapse floor RUN_DIR                    the loss floor predicted from P and the teacher, before students train

Bad input of any kind prints one line `collapse: error: ...` and exits 2 before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

import yaml

from pipeline.config import STAGES, Config, default_config_path, load_config
from pipeline.config.paths import directory_problem
from pipeline.errors import DISK_ERRORS, ExitCode, UserError, is_disk_error

log = logging.getLogger("collapse")


def main(argv: list[str] | None = None) -> int:
    from pipeline.orchestration.cpu_startup import start_up

    started = start_up()  # before anything imports torch (see pipeline/orchestration/cpu_startup.py)
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", False):
        os.environ["TQDM_DISABLE"] = "1"  # before tqdm is imported: it reads TQDM_* defaults at import
    _setup_console_logging(args.verbose)
    log.debug("CPU start-up: %s", started)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that closed the pipe early is found here, not in a traceback at exit
        return code
    except BrokenPipeError:  # `collapse status RUN | head -1`: end quietly, as a Unix tool does
        _discard_stdout()
        return ExitCode.BROKEN_PIPE
    except UserError as exc:
        print(f"collapse: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        print(f"collapse: error: {exc.filename or 'runs dir'}: {exc.strerror}; {DISK_ERRORS[exc.errno]}",
              file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        print("collapse: interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _discard_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it once more at exit, which would fail again."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (tests) has no flush to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collapse", description="Model-collapse experiments, stage by stage, resumable.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, optional: bool = True) -> None:
        p.add_argument("config", nargs="?" if optional else None, help="YAML config (default: configs/demo.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.training.lr=1e-3 (repeatable)")

    p = sub.add_parser("run", help="run the pipeline (skips finished units)")
    with_config(p)
    p.add_argument("--stages", help=f"comma-separated subset of: {','.join(STAGES)}")
    p.add_argument("--force", default="", help="redo these stages' units even if done (comma-separated)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="list units, fingerprints and what is done, without running")
    with_config(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="a table per stage: done / pending / running / failed")
    p.add_argument("run_dir", help="runs/NAME")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="check every finished unit's files against the hashes in its manifest")
    p.add_argument("run_dir", help="runs/NAME")
    p.add_argument("--repair", action="store_true", help="redo damaged units and the units that read them")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("stage", help="run one unit of one stage")
    p.add_argument("stage", choices=STAGES)
    with_config(p, optional=False)
    p.add_argument("--unit", required=True, help="unit id (see collapse plan)")
    p.add_argument("--force", action="store_true", help="redo it even if done")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("submit", help="submit the pending units to Slurm as job arrays")
    with_config(p)
    p.add_argument("--stages", help="comma-separated subset of stages")
    p.add_argument("--dry-run", action="store_true", help="render the sbatch scripts, submit nothing")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("floor", help="predict the mixture's loss floor from P and the finished teacher (reference language)")
    p.add_argument("run_dir", help="runs/NAME")
    p.set_defaults(func=cmd_floor)

    try:
        from pipeline.theory.cli import add_parser as add_theory_parser
    except ImportError:  # theory module optional at import time (it only needs numpy/scipy)
        add_theory_parser = None
    if add_theory_parser is not None:
        add_theory_parser(sub)
    return parser


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.orchestration.executor import UnitOutcome
    from pipeline.orchestration.sweep import check_inputs_come_first, refresh_summaries, run_units
    from pipeline.orchestration.launchers import get_launcher

    stages = _stage_list(args.stages, "--stages") if args.stages else None
    force = frozenset(_stage_list(args.force, "--force")) if args.force else frozenset()
    cfg, executor = _load(args)
    _quiet_library_progress(disable_ours=args.no_progress)
    selected = stages or list(cfg.stages)
    executor.force = force
    units = [u for u in executor.planned if u.stage in selected]
    if not force and all(executor.state(u) == "done" for u in units):  # nothing to do: write nothing
        log.info("run %s: all %d units done", cfg.run_dir, len(units))
        refresh_summaries(executor, selected)  # unless a stage summary was deleted or edited
        return _summarize_outcomes(cfg, [UnitOutcome(u, "done") for u in units])
    check_inputs_come_first(executor, units)
    with _bad_input_keeps_finished_units(executor):
        resolved = save_resolved_config(cfg)
        _add_run_log(cfg.run_dir)
        log.info("run %s: %d units in stages %s", cfg.run_dir, len(units), ",".join(selected))
        outcomes = run_units(executor, units, get_launcher(cfg, resolved), progress=not args.no_progress)
    return _summarize_outcomes(cfg, outcomes)


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.orchestration.status import planned_state
    from pipeline.orchestration.sweep import mark_damaged

    cfg, executor = _load(args)
    mark_damaged(executor, list(executor.planned))  # what read a damaged unit is redone too, and shown so
    print(f"run dir: {cfg.run_dir}")
    for stage in STAGES:
        units = executor.planned.units(stage)
        states = [planned_state(executor, u) for u in units]
        print(f"\n{stage}: {len(units)} units ({states.count('done')} done, {len(units) - states.count('done')} to run)")
        for unit, state in zip(units, states):
            fp = executor.planned.fingerprints[unit.key][:12]
            print(f"  {unit.id:<44} {fp}  {state}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.orchestration.status import print_status

    cfg = _run_dir_config(Path(args.run_dir))
    print_status(cfg, _executor(cfg))
    return ExitCode.OK


def _run_dir_config(run_dir: Path) -> Config:
    """The config of the run in `run_dir`, standing for `run_dir` itself (a copied or moved run included)."""
    resolved = run_dir / "config.yaml"
    if not resolved.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give runs/NAME of a run started with collapse run/submit")
    return load_config(resolved).at(run_dir)


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash every finished unit's files; report damage with the file; --repair redoes it (and dependents)."""
    from pipeline.orchestration.launchers import get_launcher
    from pipeline.orchestration.sweep import mark_damaged, refresh_summaries, run_units

    cfg = _run_dir_config(Path(args.run_dir))
    executor = _executor(cfg)
    units = list(executor.planned)
    damaged = mark_damaged(executor, units, hashes=True)
    stale = [path for stage in executor.stages for path in executor.stale_summaries(stage)]
    print(f"{len(units)} units checked, {len(damaged)} damaged" + (f": {', '.join(sorted(damaged))}" if damaged else ""))
    if stale:
        print(f"{len(stale)} stage summaries do not match their finished units: "
              f"{', '.join(p.relative_to(cfg.run_dir).as_posix() for p in stale)}")
    if not (damaged or stale) or not args.repair:
        return ExitCode.FAILED if damaged or stale else ExitCode.OK
    # Repair redoes what was finished: a damaged unit and the finished units that read it. Units
    # downstream that never ran (a run cut short with --stages) stay for `collapse run` to start.
    redo = [u for u in units if u.key in damaged or (u.key in executor.redo and executor.state(u) == "done")]
    _add_run_log(cfg.run_dir)
    outcomes = run_units(executor, redo, get_launcher(cfg, cfg.run_dir / "config.yaml"), progress=True)
    refresh_summaries(executor, list(executor.stages))
    return _summarize_outcomes(cfg, outcomes)


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.distributed import Processes
    from pipeline.unit import unit_key

    cfg, executor = _load(args)
    key = unit_key(args.stage, args.unit)
    if key not in executor.planned.by_key:
        known = ", ".join(u.id for u in executor.planned.units(args.stage)) or "(none)"
        raise UserError(f"--unit {args.unit}: stage {args.stage} has no such unit; valid: {known}")
    executor.force = frozenset([args.stage]) if args.force else frozenset()
    _quiet_library_progress(disable_ours=not sys.stderr.isatty())  # batch logs: no bars, the log lines carry progress
    dist = Processes.from_env()
    with _bad_input_keeps_finished_units(executor, dist.is_main):
        if dist.is_main:
            _add_run_log(cfg.run_dir)
        outcome = executor.execute(executor.planned.get(key), dist)
    if dist.is_main:
        log.info("%s: %s%s", key, outcome.status, f" in {outcome.seconds:.1f}s" if outcome.seconds else "")
    if outcome.status in ("done", "ran"):
        return ExitCode.OK
    return ExitCode.NOT_DONE if outcome.status == "locked" else ExitCode.FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.orchestration.launchers.slurm import submit

    stages = _stage_list(args.stages, "--stages") if args.stages else None
    cfg, executor = _load(args)
    selected = stages or list(cfg.stages)
    # Saved only once every script rendered (and sbatch was found): a refused submit writes nothing.
    return submit(cfg, executor, selected, resolved_config_path(cfg),
                  save_config=lambda: save_resolved_config(cfg), dry_run=args.dry_run)


def cmd_floor(args: argparse.Namespace) -> int:
    from pipeline.orchestration.floor import predict_floor

    cfg = _run_dir_config(Path(args.run_dir))
    _quiet_library_progress(disable_ours=True)
    for path in predict_floor(cfg, _executor(cfg)):
        print(path)
    return ExitCode.OK


# ---------------------------------------------------------------- helpers


def _load(args: argparse.Namespace) -> tuple[Config, "object"]:
    path = Path(args.config) if args.config else default_config_path()
    cfg = load_config(path, args.overrides)
    moved = {item.partition("=")[0] for item in args.overrides} & {"name", "runs_dir"}
    if _is_saved_run_config(path) and not moved:  # a run's own config.yaml (what accelerate and Slurm workers get)
        cfg = cfg.at(path.parent)
    problem = directory_problem(cfg.run_dir)
    if problem:
        raise UserError(f"runs_dir: {problem}; the run directory ({cfg.run_dir}) must be a directory or not exist yet")
    return cfg, _executor(cfg)


def _is_saved_run_config(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(RESOLVED_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def _executor(cfg: Config):
    from pipeline.orchestration.executor import Executor
    from pipeline.orchestration.runner import default_stages, plan_run

    stages = default_stages()
    return Executor(cfg=cfg, stages=stages, planned=plan_run(cfg, stages))


def _stage_list(text: str, flag: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise UserError(f"{flag} {text}: unknown stage {', '.join(unknown) or '(empty)'}; valid: {', '.join(STAGES)}")
    return names


RESOLVED_HEADER = "# resolved config of this run"  # first line of a run's config.yaml: it stands for its directory


def resolved_config_path(cfg: Config) -> Path:
    return cfg.run_dir / "config.yaml"


def save_resolved_config(cfg: Config) -> Path:
    """The validated config, as one file, in the run dir: what workers and `collapse status` read."""
    from pipeline.io import write_text_atomic

    path = resolved_config_path(cfg)
    text = f"{RESOLVED_HEADER} (base: chains and --set applied)\n" + yaml.safe_dump(
        cfg.model_dump(mode="json", exclude={"base"}), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        write_text_atomic(path, text)
    return path


@contextlib.contextmanager
def _bad_input_keeps_finished_units(executor, enabled: bool = True):
    """Bad input found while running: a run that did not exist before leaves nothing (its log included)
    unless a unit finished in it. A later unit's bad input never removes finished work: the run keeps it
    with its config.yaml and logs, so that `collapse status` shows it and the fixed re-run skips it (the
    unit that met the bad input has already removed its own work dir).

    Disk errors keep the run: what finished before the disk filled is kept, and a re-run continues.
    """
    rd = executor.run_dir
    new_run = enabled and not rd.root.exists()
    try:
        yield
    except UserError:
        if new_run and not any((rd.final(unit) / "manifest.json").is_file() for unit in executor.planned):
            _close_run_log()
            shutil.rmtree(rd.root, ignore_errors=True)
        raise


def _quiet_library_progress(disable_ours: bool) -> None:
    """Library bars (weights loading, dataset maps) are noise next to ours; --no-progress silences all."""
    if disable_ours:  # tqdm >= 4.66 reads TQDM_* defaults once, at import: before datasets imports it
        os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _setup_console_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("collapse")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _add_run_log(run_dir: Path) -> None:
    path = run_dir / "logs" / "collapse.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.set_name(_RUN_LOG)
    logging.getLogger("collapse").addHandler(handler)


def _close_run_log() -> None:
    root = logging.getLogger("collapse")
    for handler in [h for h in root.handlers if h.get_name() == _RUN_LOG]:
        root.removeHandler(handler)
        handler.close()


_RUN_LOG = "collapse-run-log"


def _summarize_outcomes(cfg: Config, outcomes: list) -> int:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    log.info("units: %s", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    report = cfg.run_dir / "report" / "report.md"
    if any(o.unit.stage == "report" and o.status in ("done", "ran") for o in outcomes):
        log.info("report: %s", report)
    bad = [o for o in outcomes if o.status in ("failed", "skipped", "locked")]
    for outcome in bad:
        log.info("  %s %s%s", outcome.status, outcome.unit.key, f": {outcome.error}" if outcome.error else "")
    if bad:
        log.info("see `collapse status %s`; re-run the same command to retry what is left", cfg.run_dir)
    return ExitCode.FAILED if bad else ExitCode.OK
