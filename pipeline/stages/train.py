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
from pipeline.orchestration.runner import Unit

NAME = "train"
VERSION = 1
PREPARE_KEY = "prepare/prepare"


def unit_id(label: str, mix_id: str, seed: int) -> str:
    return f"{label}-{mix_id}-s{seed}"


def model_slice(model_cfg) -> dict[str, Any]:
    """What determines the student's architecture and init: resolved dimensions (scratch) or the
    checkpoint and fine-tuning method (pretrained). A valid ModelConfig on its own."""
    if model_cfg.pretrained:
        keep = {"family", "pretrained", "finetune", "trust_remote_code"} | ({"lora"} if model_cfg.finetune == "lora" else set())
        return {**model_cfg.model_dump(mode="json", include=keep), "size": None}
    from pipeline.lm.models import model_dims

    return {"family": model_cfg.family, "size": None, "dropout": model_cfg.dropout, **model_dims(model_cfg)}


def plan(cfg, planned) -> list[Unit]:
    training = cfg.train.training_slice()
    units = []
    for student in cfg.train.students:
        student_params = model_slice(student)
        for mix_unit in planned.units("mix"):
            for seed in cfg.train.seeds:
                params = {"student": student.label, "model": student_params, "training": training, "seed": seed}
                units.append(Unit(NAME, unit_id(student.label, mix_unit.id, seed), params,
                                  inputs=(mix_unit.key, PREPARE_KEY), launcher="accelerate", resumable=True))
    return units


def training_config(ctx):
    """The fingerprinted training fields plus this config's bookkeeping (log/checkpoint intervals)."""
    from pipeline.config import TrainingConfig

    bookkeeping = ctx.cfg.train.model_dump(include={"checkpoint_every", "keep_checkpoints", "log_every"})
    return TrainingConfig.model_validate({**ctx.params["training"], **bookkeeping})


def run(ctx) -> dict[str, Any]:
    import torch

    from pipeline.config import ModelConfig
    from pipeline.data.packing import load_blocks
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.lm.models import build_model
    from pipeline.lm.training.loop import train_model

    params, out = ctx.params, Path(ctx.out)
    mix_key = ctx.unit.inputs[0]
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    tokenizer = load_tokenizer(prepare_dir / "tokenizer")
    train_blocks = load_blocks(Path(ctx.inputs[mix_key]) / "blocks", torch_format=False)
    val_blocks = load_blocks(prepare_dir / "validation", torch_format=False)
    block_size = _block_size(ctx, prepare_dir)

    torch.manual_seed(params["seed"])  # the init depends on the seed (and nothing else)
    model_cfg = ModelConfig.model_validate(params["model"])
    model = build_model(model_cfg, len(tokenizer), block_size, tokenizer.bos_token_id, tokenizer.eos_token_id)
    metrics = train_model(model, train_blocks, val_blocks, training_config(ctx), out, params["seed"], ctx.log,
                          desc=ctx.unit.id)
    if ctx.is_main_process:
        tokenizer.save_pretrained(str(out / "model"))
        ctx.log.info("train %s: %d steps, best val loss %.4f, %.0f tokens/s, MFU %.3f", ctx.unit.id,
                     metrics["steps"], metrics["best_val_loss"] or float("nan"), metrics["tokens_per_s"] or 0,
                     metrics["mfu"] or 0)
    return {"student": params["student"], "family": model.config.model_type, "mix": mix_key.split("/", 1)[1],
            "seed": params["seed"], **metrics}


def _block_size(ctx, prepare_dir: Path) -> int:
    block_size = ctx.manifest(PREPARE_KEY).get("metrics", {}).get("block_size")
    if block_size is None:
        raise UserError(f"train: {prepare_dir}/manifest.json has no block_size; rerun the prepare stage")
    return int(block_size)
