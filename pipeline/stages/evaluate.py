"""evaluate: every trained student on the human TEST split (and held-out synthetic text).

One unit per train unit (same id), at runs/NAME/evaluate/ID/ with only its manifest: the metrics ARE
the results row (the fit stage reads them). Loss (nats/token), perplexity and bits per byte come from
the summed NLL of every test token (pipeline/lm/evaluation.py: windows of block_size tokens with stride
block_size - 1 over [EOS] + the test stream, pooled by the `summed_nll_perplexity` metric module).
Also, when present:
  synthetic_*  the same on generation g's held-out synthetic blocks (`generate/g{g}/heldout/`)
  excess_*     for builtin:reference-language, the loss above the exact entropy of the test split
               (nats/token and bits/byte): what the model has not learnt of a language we know fully.
`summarize` rebuilds runs/NAME/evaluate/results.jsonl (one row per finished unit) atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.orchestration.runner import Unit, write_text_atomic

NAME = "evaluate"
VERSION = 1
PREPARE_KEY = "prepare/prepare"
log = logging.getLogger("collapse")


def plan(cfg, planned) -> list[Unit]:
    corpora = {u.id for u in planned.units("generate")}
    units = []
    for train_unit in planned.units("train"):
        mix_key = next(k for k in train_unit.inputs if k.startswith("mix/"))
        generation = planned.get(mix_key).params["generation"]
        inputs = [train_unit.key, PREPARE_KEY, mix_key]
        if f"g{generation}" in corpora:  # its held-out synthetic text, if the corpus unit writes one
            inputs.append(f"generate/g{generation}")
        units.append(Unit(NAME, train_unit.id, {"precision": cfg.evaluate.precision}, inputs=tuple(inputs)))
    return units


def run(ctx) -> dict[str, Any]:
    import torch

    from pipeline.data.packing import load_blocks
    from pipeline.data.tokenizer import load_tokenizer, token_byte_lengths
    from pipeline.lm.evaluation import evaluate_stream, token_stream
    from pipeline.lm.metrics import load_metric

    keys = {key.split("/", 1)[0]: key for key in ctx.unit.inputs}
    train_manifest, mix_manifest = ctx.manifest(keys["train"]), ctx.manifest(keys["mix"])
    prepare = ctx.manifest(PREPARE_KEY)["metrics"]
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    tokenizer = load_tokenizer(prepare_dir / "tokenizer")
    byte_lengths = token_byte_lengths(tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _load_model(Path(ctx.inputs[keys["train"]]) / "model", train_manifest["params"], device)
    metric = load_metric("summed_nll_perplexity")
    precision = ctx.params["precision"]
    if precision == "auto":  # bf16 on a GPU, fp32 on a CPU (as in training)
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    settings = dict(window=int(prepare["block_size"]), eos_id=int(tokenizer.eos_token_id), byte_lengths=byte_lengths,
                    batch_size=ctx.cfg.evaluate.batch_size, device=device, precision=precision,
                    metric=metric, progress=ctx.is_main_process)

    test = evaluate_stream(model, token_stream(load_blocks(prepare_dir / "test", torch_format=False)),
                           desc=f"test {ctx.unit.id}", **settings)
    row = _identity(ctx.unit.id, train_manifest, mix_manifest)
    row.update(loss=test["loss"], ppl=test["perplexity"], bpb=test["bits_per_byte"], test_tokens=test["tokens"],
               test_bytes=test["bytes"], test_nll_sum=test["nll_sum"])
    reference = prepare.get("reference", {}).get("test")
    if reference:
        row.update(entropy=reference["nats_per_token"], entropy_bpb=reference["bits_per_byte"],
                   excess_loss=test["loss"] - reference["nats_per_token"],
                   excess_bpb=test["bits_per_byte"] - reference["bits_per_byte"] if test["bits_per_byte"] else None)
    heldout = Path(ctx.inputs[keys["generate"]]) / "heldout" if "generate" in keys else None
    if heldout is not None and (heldout / "state.json").is_file():
        ids = token_stream(load_blocks(heldout, torch_format=False))
        if len(ids):
            synthetic = evaluate_stream(model, ids, desc=f"synthetic {ctx.unit.id}", **settings)
            row.update(synthetic_loss=synthetic["loss"], synthetic_ppl=synthetic["perplexity"],
                       synthetic_bpb=synthetic["bits_per_byte"], synthetic_tokens=synthetic["tokens"])
    ctx.log.info("evaluate %s: test loss %.4f nats/token, ppl %.2f, %.4f bits/byte%s", ctx.unit.id, row["loss"],
                 row["ppl"], row["bpb"] or float("nan"),
                 f", synthetic loss {row['synthetic_loss']:.4f}" if "synthetic_loss" in row else "")
    return row


def _load_model(path: Path, train_params: dict[str, Any], device):
    import torch
    from transformers import AutoModelForCausalLM

    trust = bool(train_params.get("model", {}).get("trust_remote_code", False))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=trust)
    return model.to(device).eval()


def _identity(unit_id: str, train_manifest: dict[str, Any], mix_manifest: dict[str, Any]) -> dict[str, Any]:
    """Who was evaluated: student, size, mixture (from the mix unit's params) and training run."""
    train_params, train_metrics = train_manifest["params"], train_manifest["metrics"]
    mix_params, mix_metrics = mix_manifest["params"], mix_manifest.get("metrics", {})
    return {
        "unit": unit_id, "student": train_params["student"], "family": train_metrics.get("family"),
        "parameters": train_metrics.get("parameters"),
        "non_embedding_parameters": train_metrics.get("non_embedding_parameters"),
        "synthetic_fraction": mix_params["fraction"], "realised_fraction": mix_metrics.get("realised_fraction"),
        "token_budget": mix_params["budget"], "mix_mode": mix_params["mode"], "generation": mix_params["generation"],
        "seed": train_params["seed"], "step": train_metrics.get("model_step", train_metrics.get("steps")),
        "train_steps": train_metrics.get("steps"), "train_tokens": train_metrics.get("tokens"),
        "best_val_loss": train_metrics.get("best_val_loss"),
    }


def planned_ids(cfg) -> set[str]:
    """Evaluate unit ids of this config (student x mixture x seed), without planning the other stages."""
    from pipeline.stages import mix, train

    return {train.unit_id(student.label, mix_unit.id, seed) for student in cfg.train.students
            for mix_unit in mix.plan(cfg, None) for seed in cfg.train.seeds}


def summarize(run_dir: Path, cfg) -> None:
    """runs/NAME/evaluate/results.jsonl: one row per finished evaluate unit of this config, rewritten
    atomically (units left in the directory by an earlier grid of the same run name are not listed)."""
    stage_dir = Path(run_dir) / NAME
    wanted = planned_ids(cfg) if cfg is not None else None
    rows = []
    for manifest_path in sorted(stage_dir.glob("*/manifest.json")):
        if wanted is not None and manifest_path.parent.name not in wanted:
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):  # a unit being replaced right now; the next summary has it
            continue
        rows.append(manifest["metrics"])
    rows.sort(key=lambda r: (str(r.get("student")), r.get("generation", 0), r.get("synthetic_fraction", 0),
                             r.get("token_budget", 0), r.get("seed", 0)))
    write_text_atomic(stage_dir / "results.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
