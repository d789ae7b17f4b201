"""teacher: the model that writes synthetic text; one unit per generation ("g0", "g1", ...) and teacher
replicate (teacher.replicates: "g0-t1", ...; each replicate is its own chain of generations).

runs/NAME/teacher/gG/:
  model/      plain transformers checkpoint (safetensors, LoRA merged) + its tokenizer: what generate loads
  log.jsonl, tb/, checkpoints (while running)   when the teacher trains (pipeline/lm/training/loop.py)
Manifest metrics: how it was made, the trainer's metrics, and `test` = its loss / perplexity / bits per
byte on the human test split (tokenised with the teacher's own tokenizer; on a CPU capped, see below).

Scratch (teacher.model.pretrained empty): `teacher.model` trained on the human train split (prepare's
train/ blocks), as in the Strong Model Collapse experiment. Pretrained: `teacher.model.pretrained` (a
dir, a hub id, gguf:PACKAGE or a .gguf file; see pipeline/lm/pretrained.py), fine-tuned on the human
train split with model.finetune: full | lora, or used as is with finetune: none.
Generation g >= 1 starts from the same init and trains on generate/g{g-1}'s synthetic blocks (mode
replace) or on the human train split plus every corpus so far (mode accumulate), validating on the
matching held-out text. This stage plans every generation; the runner orders teacher g after the
corpus units it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY
from pipeline.unit import Unit, unit_key

NAME = "teacher"
VERSION = 2
# The teacher's test loss is a diagnostic (students are what evaluate measures). On a CPU it uses the
# first whole test documents whose tokens reach this many forward FLOPs (2 x parameters per token):
# every test token of the 0.9M demo teacher, ~7k for SmolLM2-135M (seconds, not minutes). On a GPU: all.
TEACHER_TEST_CPU_FLOPS = 2e12
_REPLICATE_STREAM = 0x54454143  # separates teacher replicates' seeds from other derived seeds


def training_corpora(generation: int, mode: str) -> list[int]:
    """Synthetic generations teacher g trains on: none (g0), the last (replace), or all so far (accumulate)."""
    if generation == 0:
        return []
    return [generation - 1] if mode == "replace" else list(range(generation))


def teacher_seed(generation: int, replicate: int) -> int:
    """Initialisation and data-order seed of teacher replicate r of generation g (replicate 0: g, as always)."""
    from pipeline.lm.sampling import derive_seed

    return generation if replicate == 0 else derive_seed(generation, replicate, _REPLICATE_STREAM) % 2**32


def teacher_unit(cfg, generation: int, replicate: int = 0) -> Unit:
    t = cfg.teacher
    params: dict[str, Any] = {"generation": generation, "seed": teacher_seed(generation, replicate),
                              "model": t.model.result_fields(), "checkpoint": t.model.checkpoint_identity(),
                              **artifacts.replicate_params(replicate)}
    if t.trains:
        params["training"] = t.training.result_fields()
        params["human"] = generation == 0 or cfg.generate.mode == "accumulate"
        params["corpora"] = training_corpora(generation, cfg.generate.mode)
    unit_id = artifacts.generation_id(generation, replicate)
    settings = {"training": t.training.settings(), "eval_batch_size": cfg.evaluate.batch_size,
                "run_info": {"project": cfg.name, "name": unit_key(NAME, unit_id)}}
    inputs = (PREPARE_KEY, *(artifacts.corpus_key(k, replicate) for k in params.get("corpora", [])))
    return Unit(NAME, unit_id, params, inputs=inputs, settings=settings, multiprocess=True, resumable=True)


def plan(cfg, planned) -> list[Unit]:
    return [teacher_unit(cfg, g, r) for r in range(cfg.teacher.replicates) for g in range(cfg.generate.generations)]


# ---------------------------------------------------------------- run


def run(ctx) -> dict[str, Any]:
    import torch

    params, out = ctx.params, Path(ctx.out)
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    block_size = artifacts.block_size(prepare_dir)
    run_tokenizer = artifacts.tokenizer(prepare_dir)
    torch.manual_seed(params["seed"])
    model, tokenizer = _initial_model(ctx, run_tokenizer, block_size)
    metrics: dict[str, Any] = {"generation": params["generation"],
                               "init": "pretrained" if params["model"].get("pretrained") else "scratch"}
    if "training" in params:
        train_blocks, val_blocks = training_data(ctx, tokenizer, run_tokenizer, block_size)
        metrics["data"] = {"human": params["human"], "corpora": params["corpora"], "train_blocks": len(train_blocks),
                           "validation_blocks": len(val_blocks)}
        metrics.update(_train(ctx, model, train_blocks, val_blocks, block_size))
    elif ctx.is_main_process:
        model.save_pretrained(str(out / "model"))  # safetensors: generate loads every teacher the same way
    if ctx.is_main_process:
        tokenizer.save_pretrained(str(out / "model"))
        metrics["test"] = human_test_metrics(ctx, out / "model", tokenizer, block_size)
        ctx.log.info("teacher %s: test loss %.4f nats/token, ppl %.2f", ctx.unit.id, metrics["test"]["loss"],
                     metrics["test"]["perplexity"])
    return metrics


def _initial_model(ctx, run_tokenizer, block_size: int):
    """(model, its tokenizer): a fresh scratch model on the run's tokenizer, or the pretrained one."""
    from pipeline.config import ModelConfig
    from pipeline.data.tokenizer import load_pretrained_tokenizer
    from pipeline.lm.loading import build_model, load_model
    from pipeline.lm.pretrained import resolve

    model_cfg = ModelConfig.model_validate(ctx.params["model"])
    if not model_cfg.pretrained:
        return build_model(model_cfg, len(run_tokenizer), block_size, run_tokenizer.bos_token_id,
                           run_tokenizer.eos_token_id), run_tokenizer
    spec, trust = model_cfg.pretrained, model_cfg.trust_remote_code
    _resolve_once(ctx, spec, trust)  # a GGUF file is converted by the main process, then read by all
    path = resolve(spec, trust)
    tokenizer = load_pretrained_tokenizer(path, trust_remote_code=trust)
    if model_cfg.finetune == "none":  # saved as it is stored (its own dtype), never widened
        return load_model(path, trust_remote_code=trust, dtype="auto"), tokenizer
    return build_model(model_cfg.model_copy(update={"pretrained": path}), len(tokenizer), block_size), tokenizer


def _resolve_once(ctx, spec: str, trust: bool) -> None:
    from pipeline.lm.pretrained import resolve

    if ctx.is_main_process:
        resolve(spec, trust)
    ctx.processes.barrier()


def _train(ctx, model, train_blocks, val_blocks, block_size: int) -> dict[str, Any]:
    from pipeline.config import TrainingConfig
    from pipeline.lm.training.divergence import Diverged
    from pipeline.lm.training.loop import train_model

    training = TrainingConfig.of_unit(ctx.params, ctx.settings)
    try:
        return train_model(model, train_blocks, val_blocks, training, Path(ctx.out), seed=ctx.params["seed"],
                           block_size=block_size, log=ctx.log, desc=f"teacher {ctx.unit.id}", run_info=_run_info(ctx))
    except Diverged as exc:  # a bad setting, not a failed unit: one line, nothing kept
        raise UserError(exc.advice(ctx.unit.key, "teacher.training", training)) from None


def _run_info(ctx) -> dict[str, Any]:
    return {**ctx.settings["run_info"], "config": ctx.params}


def same_vocabulary(a, b) -> bool:
    return a.eos_token_id == b.eos_token_id and a.get_vocab() == b.get_vocab()


def training_data(ctx, tokenizer, run_tokenizer, block_size: int):
    """(train, validation) block datasets: human train/validation and/or synthetic blocks/heldout.

    Everything on disk is packed with the run's tokenizer; a pretrained teacher with another
    vocabulary gets the same documents packed again with its own (under out/data/).
    """
    from datasets import concatenate_datasets

    params = ctx.params
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    corpora = [Path(ctx.inputs[artifacts.corpus_key(k, artifacts.replicate_of(params))]) for k in params["corpora"]]
    if not same_vocabulary(tokenizer, run_tokenizer):
        return _repacked(ctx, tokenizer, block_size, prepare_dir, corpora)
    train = ([artifacts.blocks(prepare_dir, "train")] if params["human"] else [])
    train += [artifacts.blocks(c, "blocks") for c in corpora]
    validation = [artifacts.blocks(c, "heldout") for c in corpora if artifacts.has_blocks(c, "heldout")]
    if params["human"] or not validation:  # no synthetic held-out text (heldout_fraction 0): human validation
        validation.insert(0, artifacts.blocks(prepare_dir, "validation"))
    return concatenate_datasets(train), concatenate_datasets(validation)


def _repacked(ctx, tokenizer, block_size: int, prepare_dir: Path, corpora: list[Path]):
    from pipeline.data.packing import load_blocks, pack_documents

    train_docs = list(artifacts.documents(prepare_dir, "train")) if ctx.params["human"] else []
    validation_docs = []
    for corpus in corpora:
        train_docs += artifacts.corpus_documents(corpus, heldout=False)
        validation_docs += artifacts.corpus_documents(corpus, heldout=True)
    if ctx.params["human"] or not validation_docs:
        validation_docs = list(artifacts.documents(prepare_dir, "validation")) + validation_docs
    data = Path(ctx.out) / "data"
    if ctx.is_main_process:
        pack_documents(train_docs, tokenizer, block_size, data / "train")
        pack_documents(validation_docs, tokenizer, block_size, data / "validation", keep_remainder=True)
    ctx.processes.barrier()
    return load_blocks(data / "train", torch_format=False), load_blocks(data / "validation", torch_format=False)


def human_test_metrics(ctx, model_dir: Path, tokenizer, block_size: int) -> dict[str, Any]:
    """The teacher's loss / perplexity / bits per byte on the human test documents (see TEACHER_TEST_CPU_FLOPS:
    on a CPU the first whole documents that reach the cap, so that bits per byte divide by their text's bytes)."""
    import numpy as np
    import pyarrow.compute as pc

    from pipeline.data.packing import concatenated_ids, tokenize_documents
    from pipeline.distributed import default_device
    from pipeline.lm.evaluation import evaluate_stream
    from pipeline.lm.loading import load_model

    device = default_device()
    trust = bool(ctx.params["model"].get("trust_remote_code", False))
    model = load_model(model_dir, trust_remote_code=trust, device=device)
    documents = artifacts.documents(Path(ctx.inputs[PREPARE_KEY]), "test")
    tokenized = tokenize_documents(list(documents), tokenizer)  # n_bytes: each text's bytes (packing.text_bytes)
    ends = np.cumsum(pc.list_value_length(tokenized.data.column("input_ids")).to_numpy())
    kept = len(ends)
    if device.type == "cpu":
        limit = max(block_size, int(TEACHER_TEST_CPU_FLOPS / (2 * sum(p.numel() for p in model.parameters()))))
        kept = min(kept, int(np.searchsorted(ends, limit)) + 1)
    ids = concatenated_ids(tokenized)[:ends[kept - 1]].astype("int64")
    n_bytes = int(np.asarray(tokenized["n_bytes"])[:kept].sum())
    result = evaluate_stream(model, ids, window=block_size, eos_id=tokenizer.eos_token_id, n_bytes=n_bytes,
                             batch_size=ctx.settings["eval_batch_size"], device=device,
                             progress=ctx.is_main_process, desc=f"teacher {ctx.unit.id} test")
    return {**{k: result[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes")},
            "capped": kept < len(ends)}
