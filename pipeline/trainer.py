"""The training entry point shared by the train stage (students) and the teacher stage.

    from pipeline.trainer import train_model
    metrics = train_model(model, train_blocks, val_blocks, cfg.train.training(), ctx.out, seed, ctx.log)

`train_model` (pipeline/training/loop.py) trains on a `datasets.Dataset` of fixed-length `input_ids`
blocks, validates on the validation split's token stream, resumes from out_dir/checkpoints/, writes the
final model with `save_pretrained` (safetensors) to out_dir/model, the log to out_dir/log.jsonl and
TensorBoard events to out_dir/tb, and returns metrics. Call it in every process under
`accelerate launch`.

Exit code 75 (`EXIT_REQUEUE`): on SIGTERM or SIGUSR1 the loop finishes the current optimizer step,
writes a checkpoint and raises `Preempted` (a SystemExit(75)); rerunning the same unit resumes there.
"""

from pipeline.training.loop import save_final_model, train_model
from pipeline.training.signals import EXIT_REQUEUE, Preempted

__all__ = ["EXIT_REQUEUE", "Preempted", "save_final_model", "train_model"]
