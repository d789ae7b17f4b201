"""The one training loop (students and the scratch teacher), on Accelerate.

Runs unchanged in one process, under `accelerate launch` with DDP (CPU gloo or GPU NCCL) and with FSDP
(configs/accelerate/*.yaml). The global batch is `training.batch_size` blocks per optimizer step
whatever the number of processes: each process takes B / processes rows of the step's batch and
accumulates micro-batches of `micro_batch_size` rows (gradients synchronised on the last one only).
With `train.compile` (auto: on CUDA) the model is torch.compiled in place with static shapes: every
micro-batch has the same rows (a short last one is padded, its padding carries no loss), so it compiles
once per unit; validation runs eagerly. On CUDA the loss is chunked over tokens from the final hidden
states (loss.py), never the fp32 logits of a whole micro-batch; on CPU (small vocabularies, the demo) the
whole-batch loss over the logits: cheap there, and what README's and docs/studies' CPU numbers used.
See pipeline/lm/training/data.py (position), checkpoint.py (kill-safety), signals.py (exit 75).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.lm.evaluation import Windows, stream_windows, summed_nll, token_stream
from pipeline.lm.models import count_parameters, flops_per_token
from pipeline.distributed import broadcast_from_main, force_cpu
from pipeline.lm.training.checkpoint import Checkpoints, load_run_snapshot, load_snapshot, save_final_model
from pipeline.lm.training.data import BlockBatches, blocks_tensor, micro_batches, pad_rows, total_steps
from pipeline.lm.training.divergence import DivergenceWatch, check_finite
from pipeline.lm.training.logs import TrainLog, check_trackers
from pipeline.lm.training.loss import OutputHead, causal_lm_loss
from pipeline.lm.training.mfu import mfu, peak_flops, remeasure_peak
from pipeline.lm.training.optim import (compile_in_place, compute_dtype, eager, make_optimizer, make_scheduler,
                                        resolve_compile, resolve_precision, uncompile)
from pipeline.lm.training.signals import Preempted, StopFlag
from pipeline.lm.training.state import Stopwatch, TrainState


def train_model(model, train_dataset, val_dataset, training, out_dir: Path, *, seed: int, block_size: int,
                log: logging.Logger | None = None, desc: str = "train", delete_checkpoints: bool = True,
                run_info: dict | None = None) -> dict[str, Any]:
    """Train `model` on `input_ids` blocks of `block_size` tokens; save the final model to out_dir/"model".

    `block_size` is the packing's (prepare's manifest): full blocks of it are trained on, a shorter
    tail block is dropped, a longer block is an error. Resumes from the newest checkpoint in
    out_dir/"checkpoints" if there is one. Validates on the `val_dataset` token stream (every token, see
    pipeline/lm/evaluation.py), keeps the best model by validation loss if `training.keep_best`. Raises
    `Preempted` (exit code 75) after checkpointing when SIGTERM/SIGUSR1 arrives. A LoRA (peft) model is
    merged in place when the final model is saved: afterwards `model` holds the merged weights.
    Checkpoints are deleted once the final model is saved unless `delete_checkpoints=False`. `run_info`
    ({"project": run name, "name": unit id, "config": unit params}) names the experiment trackers' run
    (pipeline/lm/training/logs.py). Returns JSON-able metrics (losses and counts agree across processes;
    timings are each process's own).
    """
    # Handlers first: a SIGTERM/SIGUSR1 during setup is honoured at the first step boundary.
    with StopFlag() as stop:
        return _train(model, train_dataset, val_dataset, training, Path(out_dir), seed=seed, block_size=block_size,
                      log=log or logging.getLogger("collapse"), desc=desc, stop=stop,
                      delete_checkpoints=delete_checkpoints, run_info=run_info)


def _train(model, train_dataset, val_dataset, training, out_dir: Path, *, seed: int, block_size: int,
           log: logging.Logger, desc: str, stop: StopFlag, delete_checkpoints: bool,
           run_info: dict | None) -> dict[str, Any]:
    started = time.time()
    accelerator, mixed = _accelerator(training.precision, check_trackers(training.trackers), out_dir)
    from accelerate.utils import set_seed

    set_seed(seed, device_specific=True)  # dropout differs per process, reproducibly
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    batches = BlockBatches(blocks_tensor(train_dataset, block_size, log), training.batch_size, seed, rank, world,
                           device)
    steps = total_steps(training, batches.steps_per_epoch, block_size)
    micro = min(training.micro_batch_size or batches.local_batch, batches.local_batch)
    val_windows = _validation_windows(val_dataset, model, block_size, rank, world)
    config = accelerator.unwrap_model(model).config
    per_token = flops_per_token(config, block_size)
    peak = peak_flops(device, compute_dtype(mixed))
    params = count_parameters(model)

    model, optimizer, scheduler, checkpoints = _prepare(accelerator, model, training, steps, out_dir)

    run = {"global_batch": training.batch_size, "n_blocks": batches.n_blocks, "block_size": block_size,
           "total_steps": steps, "seed": seed}
    state = _start_state(accelerator, checkpoints, scheduler, run, log)
    resumed_from = state.step
    head, compiled = _fast_paths(accelerator, model, batches, training, mixed)
    if accelerator.is_main_process:
        _log_plan(log, desc, steps, training, batches, world, micro, mixed, head, compiled, resumed_from)

    train_log = TrainLog(out_dir, resumed_from, steps, accelerator, desc, run_info, {"train": training.model_dump()})
    loop = _Loop(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, batches=batches,
                 training=training, state=state, val_windows=val_windows, checkpoints=checkpoints,
                 train_log=train_log, micro=micro, tokens_per_step=training.batch_size * block_size,
                 per_token=per_token, peak=peak, head=head, compiled=compiled)
    try:
        loop.run(steps, stop)
    finally:
        train_log.close()
        uncompile(compiled)

    model_step = _save_final(accelerator, model, training, state, checkpoints, out_dir, delete_checkpoints)
    return _metrics(state, params, steps, batches, loop.peak, per_token, world, mixed, resumed_from, started) | {
        "model_step": model_step, "compiled": compiled is not None, "chunked_loss": head is not None}


def _prepare(accelerator, model, training, steps: int, out_dir: Path):
    """(model, optimizer) prepared by Accelerate, the LR schedule, and the checkpoint directory (partial
    checkpoints of a killed run removed)."""
    optimizer = make_optimizer(model, training, accelerator.device.type, sharded=_is_fsdp(accelerator))
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = make_scheduler(optimizer.optimizer, training, steps)
    checkpoints = Checkpoints(out_dir / "checkpoints", training.keep_checkpoints)
    if accelerator.is_main_process:
        checkpoints.remove_partial()
    accelerator.wait_for_everyone()
    return model, optimizer, scheduler, checkpoints


def _log_plan(log, desc: str, steps: int, training, batches: BlockBatches, world: int, micro: int, mixed: str,
              head, compiled, resumed_from: int) -> None:
    extras = "".join([", compiled" if compiled is not None else "", ", chunked loss" if head is not None else ""])
    log.info("%s: %d steps x %d blocks x %d tokens (%d blocks/epoch, %d processes, micro-batch %d, %s%s)%s",
             desc, steps, training.batch_size, batches.block_size, batches.n_blocks, world, micro, mixed, extras,
             f", resuming at step {resumed_from}" if resumed_from else "")


def _start_state(accelerator, checkpoints: Checkpoints, scheduler, run: dict[str, Any], log) -> TrainState:
    """A fresh run's state, or the newest checkpoint's (model, optimizer, RNG and scheduler restored)."""
    world = accelerator.num_processes
    latest = broadcast_from_main(checkpoints.latest() if accelerator.is_main_process else None)
    if latest is None:
        return TrainState(processes=world, run=run)
    saved = load_run_snapshot(accelerator, latest, run, log)
    scheduler.load_state_dict(saved["scheduler"])
    return replace(TrainState.from_disk(saved), processes=world)


def _save_final(accelerator, model, training, state: TrainState, checkpoints: Checkpoints, out_dir: Path,
                delete_checkpoints: bool) -> int:
    """Save the final model (the best validation's weights with keep_best); returns the step it is from."""
    model_step = state.step
    if training.keep_best and state.best_step is not None and state.best_step != state.step:
        load_snapshot(accelerator, checkpoints.path(state.best_step, "best"))
        model_step = state.best_step
    save_final_model(accelerator, model, out_dir / "model")
    if accelerator.is_main_process and delete_checkpoints:
        checkpoints.delete_all()
    accelerator.wait_for_everyone()
    return model_step


def _fast_paths(accelerator, model, batches: BlockBatches, training, mixed: str):
    """(the output head for the chunked loss or None, the module compiled in place or None)."""
    unwrapped = accelerator.unwrap_model(model)
    head = None
    if accelerator.device.type == "cuda":  # on CPU the whole-batch path keeps earlier results bit for bit
        sample = batches.blocks[:1].to(accelerator.device).long()
        head = OutputHead.attach(unwrapped, sample, compute_dtype(mixed), False, sharded=_is_fsdp(accelerator))
    if not resolve_compile(training.compile, accelerator.device.type):
        return head, None
    if head is not None:
        head.compiled = True
    compile_in_place(unwrapped)  # after the eager check above, which must not compile an eval graph
    return head, unwrapped


def _metrics(state: TrainState, params, steps: int, batches: BlockBatches, peak: float, per_token: float, world: int,
             mixed: str, resumed_from: int, started: float) -> dict[str, Any]:
    tokens_per_s = state.tokens / state.train_seconds if state.train_seconds > 0 else None
    return {
        "parameters": params["total"], "non_embedding_parameters": params["non_embedding"],
        "trainable_parameters": params["trainable"], "steps": state.step, "planned_steps": steps,
        "tokens": state.tokens, "epochs": state.step / batches.steps_per_epoch,
        "best_val_loss": state.best_val_loss, "best_step": state.best_step,
        "final_val_loss": state.last_val_loss, "stopped_early": state.step < steps,
        "wall_time_s": time.time() - started, "train_seconds": state.train_seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, per_token, peak, world) if tokens_per_s else None,
        "flops_per_token": per_token, "peak_flops_per_process": peak, "processes": world,
        "precision": mixed, "resumed_from_step": resumed_from, "batches_fetched": batches.fetched,
    }


@dataclass(kw_only=True, eq=False)
class _Loop:
    """The step loop and its bookkeeping (one object so the phases share state without globals)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    batches: BlockBatches
    training: Any  # TrainingConfig
    state: TrainState
    val_windows: Windows | None
    checkpoints: Checkpoints
    train_log: TrainLog
    micro: int  # rows per micro-batch
    tokens_per_step: int
    per_token: float  # training FLOPs per token
    peak: float  # peak FLOP/s of one process
    head: OutputHead | None = None  # the chunked loss's output head (None: whole-batch logits)
    compiled: torch.nn.Module | None = None  # the module compiled in place, if any

    def __post_init__(self) -> None:
        self.watch = Stopwatch(self.state.train_seconds)  # a resumed run goes on from its checkpoint's seconds
        self.window_start = self.state.train_seconds  # stopwatch seconds when the current log window began
        self.last_checkpoint: int | None = None
        self.last_grad_norm: torch.Tensor | None = None
        self.peak_checked = False
        self.divergence = DivergenceWatch(self.accelerator.device)

    def run(self, steps: int, stop: StopFlag) -> None:
        training, state = self.training, self.state
        self.model.train()
        running = torch.zeros((), device=self.accelerator.device)
        window_steps = 0
        for step in range(state.step, steps):
            self.watch.resume()
            loss_sum = self._train_step(step)
            running += loss_sum
            done = step + 1
            self.divergence.note(done, loss_sum)
            state.step, state.tokens = done, state.tokens + self.tokens_per_step
            window_steps += 1
            self.train_log.step()
            if done % training.log_every == 0 or done == steps:
                self._log_train(done, running, window_steps)
                running.zero_()
                window_steps = 0
            self._pause()  # validation, checkpoints and the stop vote are not training time
            stop_early = self._maybe_validate(done, steps)
            if training.checkpoint_every and done % training.checkpoint_every == 0 and done < steps:
                self._checkpoint(done)
            if done < steps and self._stop_requested(stop):
                self._checkpoint(done)
                raise Preempted(done, stop.signum or 15)
            if stop_early:
                break

    def _pause(self) -> float:
        """Pause the training clock; the state's train_seconds are its seconds so far (returned)."""
        self.state.train_seconds = self.watch.pause()
        return self.state.train_seconds

    def _train_step(self, step: int) -> torch.Tensor:
        """One optimizer step over this process's share of the global batch; returns its mean loss."""
        accelerator, model = self.accelerator, self.model
        parts = micro_batches(self.batches.fetch(step), self.micro)
        total = None
        for i, (input_ids, weight) in enumerate(parts):
            real = None
            if self.compiled is not None:  # one shape for the compiled graph
                input_ids, real = pad_rows(input_ids, self.micro)
            sync = accelerator.no_sync(model) if i < len(parts) - 1 else contextlib.nullcontext()
            with sync:
                loss = causal_lm_loss(model, input_ids, self.head, real)
                accelerator.backward(loss * weight)
            total = loss.detach() * weight if total is None else total + loss.detach() * weight
        if self.training.grad_clip > 0:
            self.last_grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.training.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _log_train(self, done: int, running: torch.Tensor, window_steps: int) -> None:
        """Record the window's train-log row (the clock paused from when the window's loss is known)."""
        self.divergence.check(self.accelerator)  # never a NaN row, and no step past a diverged one is logged
        mean_loss = float(self.accelerator.reduce(running / window_steps, reduction="mean"))
        # Stop the clock only after the loss reached the host: on CUDA the steps run asynchronously, and
        # a clock read before that wait would miss the window's queued kernels (optimistic tokens/s).
        seconds = self._pause()
        elapsed, self.window_start = seconds - self.window_start, seconds
        tokens_per_s = window_steps * self.tokens_per_step / max(elapsed, 1e-9)
        if not self.peak_checked and mfu(tokens_per_s, self.per_token, self.peak, self.accelerator.num_processes) > 1.0:
            # Faster than the cached "peak": it was measured under load. Once per run (outside the timing).
            self.peak = remeasure_peak(self.accelerator.device, compute_dtype(self.accelerator.mixed_precision))
            self.peak_checked = True
        row = {"step": done, "epoch": done / self.batches.steps_per_epoch, "tokens": self.state.tokens,
               "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
               "mfu": mfu(tokens_per_s, self.per_token, self.peak, self.accelerator.num_processes)}
        if self.last_grad_norm is not None:
            row["grad_norm"] = float(self.last_grad_norm)
        self.train_log.record(row)

    def _maybe_validate(self, done: int, steps: int) -> bool:
        """Validate when due; returns True when early stopping says stop."""
        training, state = self.training, self.state
        every = training.eval_every
        due = done == steps or (done % every == 0 if every else done % self.batches.steps_per_epoch == 0)
        if self.val_windows is None or not due:
            return False
        self.divergence.check(self.accelerator)
        loss = self.validate()
        check_finite(done, loss, "validation")
        state.last_val_loss = loss
        improved = state.best_val_loss is None or loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_since_best = loss, done, 0
            if training.keep_best and done < steps:  # at the last step the live weights are the best
                self.checkpoints.save(self.accelerator, done, self._state_for_disk(), kind="best")
        else:
            state.evals_since_best += 1
        self.train_log.record({"step": done, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                               "best_val_loss": state.best_val_loss})
        patience = training.early_stopping_patience
        return bool(patience) and state.evals_since_best >= patience

    def validate(self) -> float:
        """Mean NLL per token over every validation token (summed over processes, then divided)."""
        with eager(self.compiled):
            nll, count = summed_nll(self.model, self.val_windows, max(self.micro, 1) * 2, self.accelerator.device,
                                    _eval_precision(self.accelerator.mixed_precision))
        totals = torch.tensor([nll, float(count)], dtype=torch.float64, device=self.accelerator.device)
        totals = self.accelerator.reduce(totals, reduction="sum")
        return float(totals[0] / totals[1])

    def _stop_requested(self, stop: StopFlag) -> bool:
        """A signal reached any process: every process must agree to checkpoint this step."""
        flag = stop.raised
        if self.accelerator.num_processes > 1:
            tensor = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(tensor, reduction="sum").item() > 0)
        return flag

    def _checkpoint(self, done: int) -> None:
        """Write checkpoint `done` (the clock is paused: its train_seconds are those of its steps)."""
        if self.last_checkpoint == done:  # a signal right after a periodic checkpoint
            return
        self.divergence.check(self.accelerator)  # a diverged run is not worth resuming
        self.last_checkpoint = done
        self.checkpoints.save(self.accelerator, done, self._state_for_disk())

    def _state_for_disk(self) -> dict[str, Any]:
        epoch, batch = self.batches.position(self.state.step)
        return self.state.on_disk(epoch=epoch, batches_consumed=batch, scheduler=self.scheduler.state_dict())


# ---------------------------------------------------------------- setup helpers


def _accelerator(precision: str, trackers: list[str], out_dir: Path):
    """An Accelerator for this run (a previous run's precision in this process is reset, not reused);
    tracker files under out_dir/tb."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    device_type = "cpu" if force_cpu() else "cuda"  # a use_cpu launcher config keeps a GPU host's workers on CPU
    mixed = resolve_precision(precision, device_type)
    if device_type == "cuda" and mixed != "no":
        torch.set_float32_matmul_precision("high")  # the fp32 leftovers of a bf16 run (TF32); an fp32 run stays fp32
    AcceleratorState._reset_state()  # keeps the process group (PartialState)
    GradientState._reset_state()
    project = ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "tb"))
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=mixed, step_scheduler_with_optimizer=False,
                              log_with=trackers or None, project_config=project)
    return accelerator, mixed


def _is_fsdp(accelerator) -> bool:
    return str(accelerator.distributed_type).endswith("FSDP")


def _eval_precision(mixed: str) -> str:
    return {"no": "fp32"}.get(str(mixed), str(mixed))


def _validation_windows(val_dataset, model, block_size: int, rank: int, world: int) -> Windows | None:
    if val_dataset is None or len(val_dataset) == 0:
        return None
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is None:
        raise UserError("model: config has no eos_token_id; validation windows start with EOS "
                        "(build the model with the tokenizer's eos id)")
    return stream_windows(token_stream(val_dataset), block_size, int(eos)).shard(rank, world)
