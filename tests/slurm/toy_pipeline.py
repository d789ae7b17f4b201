"""Stages with the real stage shape for the Slurm tests: prepare -> mix -> train -> evaluate, no ML.

They exercise what Slurm adds, fast: train units declare multiprocess=True and resumable=True,
run in every process of a (multi-node) launch, and keep the training loop's contract with the batch
script — on SIGUSR1/SIGTERM the main process saves a checkpoint and every process exits 75; a rerun
resumes from the checkpoint and ends with the same result. Every unit appends "KEY start|end TIME
rank/world" to $TOY_LEDGER (tests read execution order and process counts from it);
$TOY_FAIL_UNIT=KEY makes that unit fail; $TOY_STEP_SECONDS slows the training loop down.

`python tests/slurm/toy_pipeline.py ARGS` is the collapse CLI with these stages (what array tasks run).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from pipeline.unit import Unit

TRAIN_STEPS = 6
CHECKPOINTED = 75  # exit code: "checkpoint saved, requeue me"


def _ledger(ctx, event: str) -> None:
    path = os.environ.get("TOY_LEDGER")
    if path:
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        with open(path, "a") as handle:
            handle.write(f"{ctx.unit.key} {event} {time.time():.6f} {rank}/{world}\n")


def _maybe_fail(ctx) -> None:
    if os.environ.get("TOY_FAIL_UNIT") == ctx.unit.key:
        raise RuntimeError(f"planned failure of {ctx.unit.key} for the test")


def _barrier() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def plan_prepare(cfg, planned):
    return [Unit("prepare", "prepare", {"documents": cfg.corpus.reference.documents, "seed": cfg.corpus.seed})]


def run_prepare(ctx):
    _ledger(ctx, "start")
    (ctx.out / "corpus.json").write_text(json.dumps(ctx.params))
    _ledger(ctx, "end")
    return {"documents": ctx.params["documents"]}


def plan_mix(cfg, planned):
    return [Unit("mix", f"p{p}-n{n}", {"p": p, "n": n, "seed": cfg.mix.seed}, ("prepare/prepare",))
            for p in cfg.mix.synthetic_fractions for n in cfg.mix.token_budgets]


def run_mix(ctx):
    _ledger(ctx, "start")
    _maybe_fail(ctx)
    corpus = json.loads((ctx.inputs["prepare/prepare"] / "corpus.json").read_text())
    tokens = int(ctx.params["n"] * (1 + corpus["seed"]))
    (ctx.out / "mix.json").write_text(json.dumps({"tokens": tokens, "p": ctx.params["p"]}))
    _ledger(ctx, "end")
    return {"tokens": tokens}


def plan_train(cfg, planned):
    return [Unit("train", f"{cfg.train.students[0].label}-{m.id}", {"lr": cfg.train.training.lr, "steps": TRAIN_STEPS},
                 (m.key,), multiprocess=True, resumable=True) for m in planned.units("mix")]


def run_train(ctx):
    """A deterministic 'loss' accumulated over steps, checkpointed so that a resumed run ends identically."""
    _ledger(ctx, "start")
    _maybe_fail(ctx)
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    mix = json.loads((ctx.inputs[ctx.unit.inputs[0]] / "mix.json").read_text())
    checkpoint = ctx.out / "checkpoint.json"
    state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {"step": 0, "loss": float(mix["tokens"])}
    resumed_from = state["step"]
    for step in range(state["step"], ctx.params["steps"]):
        time.sleep(float(os.environ.get("TOY_STEP_SECONDS", "0")))
        state = {"step": step + 1, "loss": state["loss"] * (1 - ctx.params["lr"]) + mix["p"]}
        _ledger(ctx, f"step{step + 1}")
        if stop["signal"] is not None and step + 1 < ctx.params["steps"]:
            if ctx.is_main_process:
                checkpoint.write_text(json.dumps(state))
            # Every process waits for the checkpoint before exiting: a launcher whose workers all left
            # early would end the srun step and get the other nodes' processes killed mid-save.
            _barrier()
            _ledger(ctx, f"checkpointed-at-step{step + 1}")
            raise SystemExit(CHECKPOINTED)
    if ctx.is_main_process:
        (ctx.out / "model.json").write_text(json.dumps(state))
    _ledger(ctx, "end")
    return {"loss": state["loss"], "resumed_from": resumed_from,
            "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


def plan_evaluate(cfg, planned):
    return [Unit("evaluate", t.id, {}, (t.key,)) for t in planned.units("train")]


def run_evaluate(ctx):
    _ledger(ctx, "start")
    _maybe_fail(ctx)
    model = json.loads((ctx.inputs[ctx.unit.inputs[0]] / "model.json").read_text())
    _ledger(ctx, "end")
    return {"loss": model["loss"]}


STAGES = {
    "prepare": SimpleNamespace(NAME="prepare", VERSION=1, plan=plan_prepare, run=run_prepare),
    "mix": SimpleNamespace(NAME="mix", VERSION=1, plan=plan_mix, run=run_mix),
    "train": SimpleNamespace(NAME="train", VERSION=1, plan=plan_train, run=run_train),
    "evaluate": SimpleNamespace(NAME="evaluate", VERSION=1, plan=plan_evaluate, run=run_evaluate),
}


def main() -> int:
    """The collapse CLI, planning with these stages instead of pipeline.stages."""
    import pipeline.orchestration.launchers.slurm
    import pipeline.orchestration.runner
    from pipeline.orchestration.cli import main as cli_main

    pipeline.orchestration.runner.default_stages = lambda: STAGES
    pipeline.orchestration.launchers.slurm.ENTRY = [str(Path(__file__).resolve())]  # array tasks run this CLI too
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
