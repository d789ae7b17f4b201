"""Small stages with the real stage shape, for testing the runner without ML.

prepare (1 unit) -> mix (fraction x budget) -> train (one per mix unit). Each run appends its unit key
to $TOY_LEDGER so tests can count executions; $TOY_SLOW_UNIT makes that unit write half its output,
then sleep (so a test can SIGKILL it mid-write).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from pipeline.unit import Unit


def _ledger(key: str) -> None:
    path = os.environ.get("TOY_LEDGER")
    if path:
        with open(path, "a") as handle:
            handle.write(key + "\n")


def _write_slowly_if_asked(ctx) -> None:
    (ctx.out / "part1.txt").write_text("first half")
    if os.environ.get("TOY_SLOW_UNIT") == ctx.unit.key:
        Path(os.environ["TOY_SLOW_MARK"]).write_text("started")
        time.sleep(float(os.environ.get("TOY_SLOW_SECONDS", "30")))
    (ctx.out / "part2.txt").write_text("second half")


def plan_prepare(cfg, planned):
    return [Unit("prepare", "prepare", {"source": cfg.corpus.source, "seed": cfg.corpus.seed})]


def run_prepare(ctx):
    _ledger(ctx.unit.key)
    _write_slowly_if_asked(ctx)
    (ctx.out / "corpus.txt").write_text(f"{ctx.params}")
    return {"documents": 3}


def plan_mix(cfg, planned):
    return [Unit("mix", f"p{p}-n{n}", {"p": p, "n": n, "seed": cfg.mix.seed}, ("prepare/prepare",))
            for p in cfg.mix.synthetic_fractions for n in cfg.mix.token_budgets]


def run_mix(ctx):
    _ledger(ctx.unit.key)
    assert (ctx.inputs["prepare/prepare"] / "corpus.txt").is_file()
    _write_slowly_if_asked(ctx)
    return {"tokens": ctx.params["n"]}


def plan_train(cfg, planned):
    return [Unit("train", m.id, {"lr": cfg.train.training.lr}, (m.key, "prepare/prepare"), resumable=True)
            for m in planned.units("mix")]


def run_train(ctx):
    _ledger(ctx.unit.key)
    if os.environ.get("TOY_FAIL_UNIT") == ctx.unit.key:
        raise RuntimeError("planned failure for the test")
    _write_slowly_if_asked(ctx)
    return {"loss": 1.0 + ctx.params["lr"]}


STAGES = {
    "prepare": SimpleNamespace(NAME="prepare", VERSION=1, plan=plan_prepare, run=run_prepare),
    "mix": SimpleNamespace(NAME="mix", VERSION=1, plan=plan_mix, run=run_mix),
    "train": SimpleNamespace(NAME="train", VERSION=1, plan=plan_train, run=run_train),
}
