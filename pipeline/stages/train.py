"""train: every student x mixture x seed is one unit; the one training loop (pipeline/lm/training/loop.py).

Unit id `<student label>-<mix id>-s<seed>`, e.g. `gpt2-tiny-g0-p0.5-n200000-s0`, at runs/NAME/train/ID/:
  model/      the final model (save_pretrained, safetensors; the best validation's weights with
              keep_best) and the run's tokenizer, loadable with AutoModelForCausalLM/AutoTokenizer
  log.jsonl   loss, lr, tokens/s, MFU per log_every steps and every validation
  tb/         TensorBoard events
Inputs: the mix unit (its `blocks/` are the training data) and `prepare/prepare` (tokenizer and the
human validation split). The unit is resumable: checkpoints live in its work dir and a rerun after a
kill continues the same run; under `launcher: accelerate` it runs in every process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY
from pipeline.unit import Unit, unit_key

NAME = "train"
VERSION = 1


def unit_id(label: str, mix_id: str, seed: int) -> str:
    return f"{label}-{mix_id}-s{seed}"


def plan(cfg, planned) -> list[Unit]:
    training, settings = cfg.train.training.result_fields(), cfg.train.training.settings()
    units = []
    for student in cfg.train.students:
        student_params = student.result_fields()
        checkpoint = student.checkpoint_identity()
        for mix_unit in planned.units("mix"):
            for seed in cfg.train.seeds:
                uid = unit_id(student.label, mix_unit.id, seed)
                params = {"student": student.label, "model": student_params, "checkpoint": checkpoint,
                          "training": training, "seed": seed}
                run_info = {"project": cfg.name, "name": unit_key(NAME, uid)}
                units.append(Unit(NAME, uid, params, inputs=(mix_unit.key, PREPARE_KEY),
                                  settings={"training": settings, "run_info": run_info},
                                  multiprocess=True, resumable=True))
    return units


def run(ctx) -> dict[str, Any]:
    import torch

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.lm.loading import build_model
    from pipeline.lm.training.divergence import Diverged
    from pipeline.lm.training.loop import train_model

    params, out = ctx.params, Path(ctx.out)
    [(mix_id, mix_dir)] = ctx.inputs_of("mix").items()
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    tokenizer = artifacts.tokenizer(prepare_dir)
    train_blocks = artifacts.blocks(mix_dir, "blocks")
    val_blocks = artifacts.blocks(prepare_dir, "validation")
    block_size = artifacts.block_size(prepare_dir)

    torch.manual_seed(params["seed"])  # the init depends on the seed (and nothing else)
    model_cfg = ModelConfig.model_validate(params["model"])
    model = build_model(model_cfg, len(tokenizer), block_size, tokenizer.bos_token_id, tokenizer.eos_token_id)
    training = TrainingConfig.of_unit(ctx.params, ctx.settings)
    try:
        metrics = train_model(model, train_blocks, val_blocks, training, out, seed=params["seed"],
                              block_size=block_size, log=ctx.log, desc=ctx.unit.id, run_info={**ctx.settings["run_info"], "config": params})
    except Diverged as exc:  # a bad setting, not a failed unit: one line, nothing kept
        raise UserError(exc.advice(ctx.unit.key, "train.training", training)) from None
    if ctx.is_main_process:
        tokenizer.save_pretrained(str(out / "model"))
        ctx.log.info("train %s: %d steps, best val loss %.4f, %.0f tokens/s, MFU %.3f", ctx.unit.id,
                     metrics["steps"], metrics["best_val_loss"] or float("nan"), metrics["tokens_per_s"] or 0,
                     metrics["mfu"] or 0)
    return {"student": params["student"], "family": model.config.model_type, "mix": mix_id,
            "seed": params["seed"], **metrics}
