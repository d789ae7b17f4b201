"""teacher: the model that writes synthetic text; one unit per generation ("g0", "g1", ...).

runs/NAME/teacher/gG/:
  model/      plain transformers checkpoint (safetensors, LoRA merged) + its tokenizer: what generate loads
  log.jsonl, tb/, checkpoints (while running)   when the teacher trains (the shared loop, pipeline/lm/training/loop.py)
Manifest metrics: how it was made, the trainer's metrics, and `test` = its loss / perplexity / bits per
byte on the human test split (tokenised with the teacher's own tokenizer; on a CPU capped, see below).

init: scratch     `teacher.model` trained on the human train split (prepare's train/ blocks), as in the
                  Strong Model Collapse experiment.
init: pretrained  `teacher.pretrained` (a dir, a hub id, gguf:PACKAGE or a .gguf file; see
                  pipeline/lm/pretrained.py), fine-tuned on the human train split with finetune: full | lora,
                  or used as is with finetune: none.
Generation g >= 1 starts from the same init and trains on generate/g{g-1}'s synthetic blocks (mode
replace) or on the human train split plus every corpus so far (mode accumulate), validating on the
matching held-out text. Those units are planned by the generate stage (they need its corpus units,
which are planned after this stage), through `teacher_unit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.orchestration.runner import Unit

NAME = "teacher"
VERSION = 1
PREPARE_KEY = "prepare/prepare"
# The teacher's test loss is a diagnostic (students are what evaluate measures). On a CPU it uses the
# first test tokens that fit in this many forward FLOPs (2 x parameters per token): every test token of
# the 0.9M demo teacher, ~7k for SmolLM2-135M (seconds, not minutes). On a GPU: every test token.
TEACHER_TEST_CPU_FLOPS = 2e12


def corpus_key(generation: int) -> str:
    return f"generate/g{generation}"


def training_corpora(generation: int, mode: str) -> list[int]:
    """Synthetic generations teacher g trains on: none (g0), the last (replace), or all so far (accumulate)."""
    if generation == 0:
        return []
    return [generation - 1] if mode == "replace" else list(range(generation))


def trains(cfg) -> bool:
    return cfg.teacher.init == "scratch" or cfg.teacher.finetune != "none"


def teacher_unit(cfg, generation: int) -> Unit:
    """Teacher of generation g. Its params carry this stage's VERSION: units of g >= 1 are added by the
    generate stage's plan, whose VERSION the runner hashes in."""
    from pipeline.stages.train import model_slice

    t = cfg.teacher
    params: dict[str, Any] = {"teacher_version": VERSION, "generation": generation, "init": t.init,
                              "seed": generation}
    if t.init == "scratch":
        params["model"] = model_slice(t.model)
    else:
        from pipeline.lm.pretrained import identity

        params.update(pretrained=identity(t.pretrained), finetune=t.finetune, trust_remote_code=t.trust_remote_code)
        if t.finetune == "lora":
            params["lora"] = t.lora.model_dump(mode="json")
    if trains(cfg):
        params["training"] = t.training_slice()
        params["human"] = generation == 0 or cfg.generate.mode == "accumulate"
        params["corpora"] = training_corpora(generation, cfg.generate.mode)
    inputs = (PREPARE_KEY, *(corpus_key(k) for k in params.get("corpora", [])))
    return Unit(NAME, f"g{generation}", params, inputs=inputs, launcher="accelerate", resumable=True)


def plan(cfg, planned) -> list[Unit]:
    if cfg.generate.generations > 1 and not trains(cfg):
        raise UserError("teacher.finetune: none cannot make later generations (generate.generations is "
                        f"{cfg.generate.generations}): teacher g>=1 trains on synthetic text; set finetune: full or lora")
    return [teacher_unit(cfg, 0)]


# ---------------------------------------------------------------- run


def run(ctx) -> dict[str, Any]:
    import torch

    from pipeline.data.tokenizer import load_tokenizer

    params, out = ctx.params, Path(ctx.out)
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    block_size = int(ctx.manifest(PREPARE_KEY)["metrics"]["block_size"])
    run_tokenizer = load_tokenizer(prepare_dir / "tokenizer")
    torch.manual_seed(params["seed"])
    model, tokenizer = _initial_model(ctx, run_tokenizer, block_size)
    metrics: dict[str, Any] = {"generation": params["generation"], "init": params["init"]}
    if "training" in params:
        from pipeline.lm.training.loop import train_model

        train_blocks, val_blocks = training_data(ctx, tokenizer, run_tokenizer, block_size)
        metrics["data"] = {"human": params["human"], "corpora": params["corpora"], "train_blocks": len(train_blocks),
                           "validation_blocks": len(val_blocks)}
        metrics.update(train_model(model, train_blocks, val_blocks, _training_config(ctx), out, params["seed"],
                                   ctx.log, desc=f"teacher {ctx.unit.id}"))
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
    from pipeline.config import LoraConfig, ModelConfig
    from pipeline.lm.models import build_model

    params = ctx.params
    if params["init"] == "scratch":
        model_cfg = ModelConfig.model_validate(params["model"])
        return build_model(model_cfg, len(run_tokenizer), block_size, run_tokenizer.bos_token_id,
                           run_tokenizer.eos_token_id), run_tokenizer
    from pipeline.lm.pretrained import load_model, load_tokenizer, resolve

    spec, trust = ctx.cfg.teacher.pretrained, params["trust_remote_code"]
    _resolve_once(ctx, spec, trust)  # a GGUF file is converted by the main process, then read by all
    path = resolve(spec, trust)
    tokenizer = load_tokenizer(path, trust_remote_code=trust)
    if params["finetune"] == "none":
        return load_model(path, trust_remote_code=trust), tokenizer
    model_cfg = ModelConfig(family="llama", size=None, pretrained=path, finetune=params["finetune"],
                            lora=LoraConfig.model_validate(params.get("lora", {})), trust_remote_code=trust)
    return build_model(model_cfg, len(tokenizer), block_size), tokenizer


def _resolve_once(ctx, spec: str, trust: bool) -> None:
    from pipeline.lm.pretrained import resolve

    if ctx.is_main_process:
        resolve(spec, trust)
    from pipeline.stages.generate import process_state

    process_state().wait_for_everyone()


def _training_config(ctx):
    from pipeline.config import TrainingConfig

    bookkeeping = ctx.cfg.teacher.model_dump(include={"checkpoint_every", "keep_checkpoints", "log_every"})
    return TrainingConfig.model_validate({**ctx.params["training"], **bookkeeping})


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
    corpora = [Path(ctx.inputs[corpus_key(k)]) for k in params["corpora"]]
    if not same_vocabulary(tokenizer, run_tokenizer):
        return _repacked(ctx, tokenizer, block_size, prepare_dir, corpora)
    from pipeline.data.packing import load_blocks

    train = ([load_blocks(prepare_dir / "train", torch_format=False)] if params["human"] else [])
    train += [load_blocks(c / "blocks", torch_format=False) for c in corpora]
    validation = [load_blocks(c / "heldout", torch_format=False) for c in corpora if (c / "heldout" / "state.json").is_file()]
    if params["human"] or not validation:  # no synthetic held-out text (heldout_fraction 0): human validation
        validation.insert(0, load_blocks(prepare_dir / "validation", torch_format=False))
    return concatenate_datasets(train), concatenate_datasets(validation)


def _repacked(ctx, tokenizer, block_size: int, prepare_dir: Path, corpora: list[Path]):
    from pipeline.data.packing import load_blocks, pack_documents
    from pipeline.stages import prepare
    from pipeline.stages.generate import corpus_documents

    train_docs = list(prepare.documents(prepare_dir, "train")) if ctx.params["human"] else []
    validation_docs = []
    for corpus in corpora:
        train_docs += corpus_documents(corpus, heldout=False)
        validation_docs += corpus_documents(corpus, heldout=True)
    if ctx.params["human"] or not validation_docs:
        validation_docs = list(prepare.documents(prepare_dir, "validation")) + validation_docs
    data = Path(ctx.out) / "data"
    if ctx.is_main_process:
        pack_documents(train_docs, tokenizer, block_size, data / "train")
        pack_documents(validation_docs, tokenizer, block_size, data / "validation", keep_remainder=True)
    from pipeline.stages.generate import process_state

    process_state().wait_for_everyone()
    return load_blocks(data / "train", torch_format=False), load_blocks(data / "validation", torch_format=False)


def human_test_metrics(ctx, model_dir: Path, tokenizer, block_size: int) -> dict[str, Any]:
    """The teacher's loss / perplexity / bits per byte on the human test documents (see TEACHER_TEST_CPU_FLOPS)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data.packing import concatenated_ids, tokenize_documents
    from pipeline.data.tokenizer import token_byte_lengths
    from pipeline.lm.evaluation import evaluate_stream
    from pipeline.stages import prepare

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 trust_remote_code=ctx.cfg.teacher.trust_remote_code).to(device).eval()
    documents = prepare.documents(Path(ctx.inputs[PREPARE_KEY]), "test")
    ids = concatenated_ids(tokenize_documents(list(documents), tokenizer)).astype("int64")
    if device.type == "cpu":
        limit = max(block_size, int(TEACHER_TEST_CPU_FLOPS / (2 * sum(p.numel() for p in model.parameters()))))
        capped, ids = len(ids) > limit, ids[:limit]
    else:
        capped = False
    result = evaluate_stream(model, ids, window=block_size, eos_id=tokenizer.eos_token_id,
                             byte_lengths=token_byte_lengths(tokenizer), batch_size=ctx.cfg.evaluate.batch_size,
                             device=device, progress=True, desc=f"teacher {ctx.unit.id} test")
    return {**{k: result[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes")}, "capped": capped}
