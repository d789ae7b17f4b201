"""`collapse status`: what is done, pending, running or failed, per stage, and the results table."""

from __future__ import annotations

from typing import Any

from pipeline.config import STAGES, Config
from pipeline.orchestration.executor import Executor
from pipeline.stages.artifacts import RESULT_COLUMNS, format_cell, result_rows, result_sort_key


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def key_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    """A few scalar metrics, preferring the ones a researcher looks at first."""
    preferred = ("loss", "ppl", "bpb", "best_val_loss", "tokens", "blocks", "parameters", "E_inf")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ordered = [k for k in preferred if k in scalars] + [k for k in scalars if k not in preferred]
    return " ".join(f"{k}={_fmt(scalars[k])}" for k in ordered[:limit])


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def planned_state(executor: Executor, unit) -> str:
    """A unit's state as `collapse run` treats it: a done unit downstream of a damaged one is redone (after
    sweep.mark_damaged has scheduled it), so plan and status never call it done."""
    state = executor.state(unit)
    return "redo" if state == "done" and executor.must_run(unit) else state


def unit_rows(cfg: Config, executor: Executor, stage: str, slurm_states: dict[str, str]) -> list[list[str]]:
    rows = []
    for unit in executor.planned.units(stage):
        state = planned_state(executor, unit)
        detail = ""
        if state == "done":
            detail = key_metrics((executor.run_dir.manifest(unit) or {}).get("metrics", {}))
        elif state == "failed":
            failure = executor.run_dir.failed(unit) or {}
            detail = f"{failure.get('error', '?')}  (log: {failure.get('log', '?')})"
        slurm = slurm_states.get(unit.key, "")
        rows.append([unit.id, state + (f" [{slurm}]" if slurm else ""), detail])
    return rows


def print_status(cfg: Config, executor: Executor) -> None:
    from pipeline.orchestration.launchers import scheduler_states
    from pipeline.orchestration.sweep import mark_damaged

    slurm_states = scheduler_states(cfg, executor)
    mark_damaged(executor, list(executor.planned))  # a unit that read a damaged one is not done: status says redo
    print(f"run: {cfg.run_dir}")
    for stage in STAGES:
        rows = unit_rows(cfg, executor, stage, slurm_states)
        if not rows:
            continue
        done = sum(r[1].startswith("done") for r in rows)
        print(f"\n== {stage}: {done}/{len(rows)} done")
        print(format_table(rows, ["unit", "state", "metrics / error"]))
    # The rows of the finished units themselves (what fit and the report read), never the summary file,
    # which a user may have deleted or edited; a summary that does not match them is pointed out.
    rd = executor.run_dir
    rows = result_rows({u.key: rd.final(u) for u in executor.planned.units("evaluate") if executor.state(u) == "done"})
    if rows:
        print("\n== results (evaluate/results.jsonl)")
        print(results_table(rows))
    for path in (path for stage in executor.stages for path in executor.stale_summaries(stage)):
        print(f"\n{path} does not match the finished units; `collapse verify {cfg.run_dir} --repair` rebuilds it")


def results_table(rows: list[dict[str, Any]]) -> str:
    """The results table (columns: pipeline/stages/artifacts.py RESULT_COLUMNS, the one definition)."""
    columns = [c for c in RESULT_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    body = [[format_cell(r, key, spec) for key, _, spec in columns] for r in sorted(rows, key=result_sort_key)]
    return format_table(body, [header for _, header, _ in columns])
