"""The contenders of bench/train.py, one function each, for one `Setup` (device, model size, precision...).

Every contender trains the same model from the same init (torch seed 0), on the same synthetic blocks
(Zipf-distributed token ids), with the same hyper-parameters (one TrainingConfig, `training_config`):
AdamW (0.9, 0.95, decay 0.1 on matrices), lr with linear warmup over 5% of the steps and cosine to 10%,
clipping at 1.0. They are plain functions so that a test can run them on CPU (tests/test_bench_train.py);
bench/train.py runs each in a fresh process (`worker`).

Every contender reports the same steady-state clock (`StepClock`): wall time from the end of optimizer
step W (`Setup.warmup`) to the end of the last step, the device synchronised at both ends, so compile,
autotuning and first allocations are left out alike. It hooks every optimizer's step (a global torch
hook), so no loop, ours included, needs timing code for it. Each also reports its last step's loss.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

SEED = 0


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration; the defaults are the CPU benchmark's (demo student, fp32)."""

    device: str = "cpu"
    size: str = "tiny"        # a GPT-2 preset of pipeline/lm/presets.py
    vocab: int = 4096
    block: int = 128
    batch: int = 8            # global batch in blocks
    steps: int = 120
    lr: float = 3e-3
    precision: str = "fp32"   # fp32 | bf16
    compile: str = "auto"     # train.compile: auto (on CUDA only), on, off; the reference loop follows it
    warmup: int = 1           # optimizer steps before the steady-state clock starts
    log_every: int = 10       # ours' log rows and the Trainer's logging_steps

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.block

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Setup":
        return cls(**json.loads(text))


def training_config(setup: Setup):
    """The hyper-parameters of every contender (ours takes it as is, the others read their values from it)."""
    from pipeline.config import TrainingConfig

    return TrainingConfig(epochs=1.0, batch_size=setup.batch, lr=setup.lr, warmup_fraction=0.05, min_lr_ratio=0.1,
                          weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, precision=setup.precision,
                          compile=setup.compile, checkpoint_every=0, log_every=setup.log_every, keep_best=False)


def token_ids(setup: Setup):
    """(steps * batch, block) Zipf-distributed ids: one epoch of exactly `steps` optimizer steps."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    return (rng.zipf(1.2, size=(setup.steps * setup.batch, setup.block)) - 1) % setup.vocab


def blocks(setup: Setup):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": token_ids(setup).tolist()})


def model(setup: Setup):
    import torch

    from pipeline.config import ModelConfig
    from pipeline.lm.loading import build_model

    torch.manual_seed(SEED)
    return build_model(ModelConfig(family="gpt2", size=setup.size, dropout=0.0), setup.vocab, setup.block, 0, 0)


class StepClock:
    """Seconds from the end of optimizer step `warmup` to the end of step `steps` (see the module docstring)."""

    def __init__(self, setup: Setup) -> None:
        if not 1 <= setup.warmup < setup.steps:
            raise ValueError(f"warm-up steps must be in [1, steps): {setup.warmup} of {setup.steps}")
        self.setup, self.count = setup, 0
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.count += 1
        if self.count not in (self.setup.warmup, self.setup.steps):
            return
        if self.setup.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.count == self.setup.warmup:
            self.start = now
        else:
            self.end = now

    def tokens_per_s(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the clock saw {self.count} optimizer steps, expected {self.setup.steps}")
        return (self.setup.steps - self.setup.warmup) * self.setup.tokens_per_step / (self.end - self.start)


def peak_memory(setup: Setup) -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if setup.device.startswith("cuda") else None


# ---------------------------------------------------------------- the contenders


def run_ours(setup: Setup, out: Path) -> dict:
    """pipeline.lm.training.train_model as the train stage runs it (Accelerate picks the device: pinned to CPU
    with ACCELERATE_USE_CPU when the setup says cpu, also on a GPU host)."""
    from pipeline.lm.training.loop import train_model

    pin_cpu = {"ACCELERATE_USE_CPU": "true"} if setup.device == "cpu" else {}
    with mock.patch.dict(os.environ, pin_cpu), StepClock(setup) as clock:
        metrics = train_model(model(setup), blocks(setup), None, training_config(setup), out, seed=SEED,
                              block_size=setup.block)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    # The last row is the last step's loss when it covers that step alone (log_every = steps - 1 does that).
    last_alone = (steps[-1] - steps[-2] if len(steps) > 1 else steps[-1]) == 1
    return {"tokens_per_s": metrics["tokens_per_s"], "steady_tokens_per_s": clock.tokens_per_s(),
            "steps": metrics["steps"], "final_loss": rows[-1]["loss"],
            "last_loss": rows[-1]["loss"] if last_alone else None, "peak_memory": peak_memory(setup),
            "peak_flops": metrics["peak_flops_per_process"], "flops_per_token": metrics["flops_per_token"],
            "precision": metrics["precision"], "compiled": metrics["compiled"],
            "chunked_loss": metrics["chunked_loss"]}


def run_trainer(setup: Setup, out: Path) -> dict:
    """transformers.Trainer as a user runs it: its defaults (fused AdamW, its own data order) but our
    hyper-parameters, bf16=True for a bf16 setup, no torch_compile."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        """First step's start to the end of training: the same span as ours' own tokens/s (CPU report)."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    training = training_config(setup)
    data = blocks(setup)
    data = data.add_column("labels", data["input_ids"]).with_format("torch")
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=setup.batch, max_steps=setup.steps,
                             learning_rate=training.lr, weight_decay=training.weight_decay,
                             adam_beta1=training.beta1, adam_beta2=training.beta2,
                             warmup_steps=training.warmup_fraction, lr_scheduler_type="cosine_with_min_lr",
                             lr_scheduler_kwargs={"min_lr_rate": training.min_lr_ratio},
                             max_grad_norm=training.grad_clip, logging_steps=setup.log_every, save_strategy="no",
                             eval_strategy="no", report_to="none", use_cpu=setup.device == "cpu",
                             bf16=setup.precision == "bf16", dataloader_num_workers=0, seed=SEED)
    clock, net, last = Clock(), model(setup), {}
    # The model's own loss of each forward, kept on the device (no sync): the last step's loss at the end.
    net.register_forward_hook(lambda module, inputs, output: last.update(loss=output.loss.detach()))
    with StepClock(setup) as steady:
        result = Trainer(model=net, args=args, train_dataset=data, callbacks=[clock]).train()
    return {"tokens_per_s": setup.steps * setup.tokens_per_step / (clock.end - clock.start),
            "steady_tokens_per_s": steady.tokens_per_s(), "steps": result.global_step, "final_loss": clock.loss,
            "last_loss": float(last["loss"]), "peak_memory": peak_memory(setup)}


def run_reference(setup: Setup) -> dict:
    """The loop to beat, as a careful user writes it (nanoGPT style): torch.compile(model) (when the setup
    compiles), fused AdamW, autocast in the setup's precision, the model's own loss; ours' data order
    (pipeline/lm/training/data.py's permutation), schedule and clipping, so the last losses compare."""
    import numpy as np
    import torch

    from pipeline.lm.training.optim import lr_multiplier, resolve_compile

    training, device = training_config(setup), torch.device(setup.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    data = torch.from_numpy(token_ids(setup)).to(device)
    order = torch.from_numpy(np.random.default_rng([SEED, 0]).permutation(len(data))).to(device)
    net = model(setup).to(device)
    net.train()
    matrices = [p for p in net.parameters() if p.ndim >= 2]
    others = [p for p in net.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": training.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=training.lr,
                                  betas=(training.beta1, training.beta2), fused=True)
    warmup = int(round(training.warmup_fraction * setup.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, setup.steps, warmup, training.min_lr_ratio))
    forward = torch.compile(net) if resolve_compile(setup.compile, device.type) else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.precision == "bf16")
    with StepClock(setup) as clock:
        for step in range(setup.steps):
            ids = data[order[step * setup.batch:(step + 1) * setup.batch]]
            with autocast:
                loss = forward(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), training.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    last = float(loss.detach())
    return {"tokens_per_s": clock.tokens_per_s(), "steady_tokens_per_s": clock.tokens_per_s(), "steps": setup.steps,
            "final_loss": last, "last_loss": last, "peak_memory": peak_memory(setup)}


# ---------------------------------------------------------------- one fresh process per trial


def worker(kind: str, setup: Setup, result_file: Path, threads: int | None) -> None:
    """Run one contender and write its result (JSON). Ours starts like the `collapse` entry point: MKL
    dispatch fix on AMD CPUs, MKL_CBWR, allocator (pipeline/orchestration/cpu_startup.py), before torch."""
    if kind == "ours":
        from pipeline.orchestration.cpu_startup import start_up

        status = start_up()["fast_mkl"]
    elif kind == "trainer-fast-mkl":
        from pipeline.orchestration.cpu_startup import enable_fast_mkl_on_amd

        status = enable_fast_mkl_on_amd()
    else:
        status = "off"
    import tempfile

    import torch

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if kind == "reference":
            result = run_reference(setup)
        else:
            result = (run_ours if kind == "ours" else run_trainer)(setup, Path(tmp))
    cuda = setup.device.startswith("cuda")
    result.update(mkl_fix=status, threads=torch.get_num_threads(), torch=torch.__version__,
                  device_name=torch.cuda.get_device_name() if cuda else None)
    result_file.write_text(json.dumps(result))
