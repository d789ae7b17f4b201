"""evaluate: every trained student on the human TEST split (and held-out synthetic text).

One unit per train unit (same id), at runs/NAME/evaluate/ID/ with only its manifest: the metrics ARE
the results row (the fit stage reads them; the manifest hashes them, so an edited number makes the unit
damaged, found by `collapse run` and `collapse verify` and redone with what read it). Loss (nats/token), perplexity and bits per byte come from
the summed NLL of every test token (pipeline/lm/evaluation.py: windows of block_size tokens with stride
block_size - 1 over [EOS] + the test stream, pooled by the `summed_nll_perplexity` metric module).
Also, when present:
  synthetic_*  the same on generation g's held-out synthetic blocks (`generate/g{g}/heldout/`)
  excess_*     for builtin:reference-language, the loss above the exact entropy of the test split
               (nats/token and bits/byte): what the model has not learnt of a language we know fully.
`summary` is runs/NAME/evaluate/results.jsonl (one row per finished unit), which the runner rewrites
whenever it does not match the units (a unit finished or redone, the file deleted or edited).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import json_line
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY
from pipeline.unit import Unit

NAME = "evaluate"
VERSION = 2  # 2: sums independent of evaluate.batch_size; synthetic bits per byte over the text's own bytes
RESULTS_FILE = "results.jsonl"


def plan(cfg, planned) -> list[Unit]:
    corpora = set(artifacts.corpus_keys(planned))
    units = []
    for train_unit in planned.units("train"):
        [mix_key] = train_unit.inputs_from("mix")
        mix_params = planned.get(mix_key).params
        corpus = artifacts.corpus_key(mix_params["generation"], artifacts.replicate_of(mix_params))
        inputs = [train_unit.key, PREPARE_KEY, mix_key] + ([corpus] if corpus in corpora else [])
        # The model's trust_remote_code comes from the config (through the train unit's params), never from disk.
        params = {"precision": cfg.evaluate.precision,
                  "trust_remote_code": bool(train_unit.params["model"].get("trust_remote_code", False))}
        units.append(Unit(NAME, train_unit.id, params, inputs=tuple(inputs),
                          settings={"batch_size": cfg.evaluate.batch_size}))
    return units


def run(ctx) -> dict[str, Any]:
    import torch

    from pipeline.distributed import default_device
    from pipeline.lm.evaluation import evaluate_stream, token_stream
    from pipeline.lm.loading import load_model
    from pipeline.lm.metrics import load_metric

    train_dir, mix_dir, corpus = ctx.input_of("train"), ctx.input_of("mix"), ctx.input_of("generate")
    train_manifest, mix_manifest = artifacts.manifest(train_dir), artifacts.manifest(mix_dir)
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    tokenizer = artifacts.tokenizer(prepare_dir)
    device = default_device()
    model = load_model(Path(train_dir) / "model", trust_remote_code=ctx.params["trust_remote_code"], device=device)
    precision = ctx.params["precision"]
    if precision == "auto":  # bf16 on a GPU, fp32 on a CPU (as in training)
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    settings = dict(window=artifacts.block_size(prepare_dir), eos_id=int(tokenizer.eos_token_id),
                    batch_size=ctx.settings["batch_size"], device=device, precision=precision,
                    metric=load_metric("summed_nll_perplexity"), progress=ctx.is_main_process)

    # prepare counted the test text's bytes with pipeline.data.packing.text_bytes, as below for synthetic text
    test = evaluate_stream(model, token_stream(artifacts.blocks(prepare_dir, "test")),
                           n_bytes=int(artifacts.split_stats(prepare_dir, "test")["bytes"]), desc=f"test {ctx.unit.id}",
                           **settings)
    row = _identity(ctx.unit.id, train_manifest, mix_manifest)
    row.update(loss=test["loss"], ppl=test["perplexity"], bpb=test["bits_per_byte"], test_tokens=test["tokens"],
               test_bytes=test["bytes"], test_nll_sum=test["nll_sum"])
    reference = artifacts.reference_entropy(prepare_dir, "test")
    if reference:
        row.update(entropy=reference["nats_per_token"], entropy_bpb=reference["bits_per_byte"],
                   excess_loss=test["loss"] - reference["nats_per_token"],
                   excess_bpb=test["bits_per_byte"] - reference["bits_per_byte"] if test["bits_per_byte"] else None)
    if corpus is not None and artifacts.has_blocks(corpus, "heldout"):
        ids = token_stream(artifacts.blocks(corpus, "heldout"))
        if len(ids):
            synthetic = evaluate_stream(model, ids, n_bytes=artifacts.corpus_bytes(corpus, heldout=True),
                                        desc=f"synthetic {ctx.unit.id}", **settings)
            row.update(synthetic_loss=synthetic["loss"], synthetic_ppl=synthetic["perplexity"],
                       synthetic_bpb=synthetic["bits_per_byte"], synthetic_tokens=synthetic["tokens"],
                       synthetic_bytes=synthetic["bytes"])
    ctx.log.info("evaluate %s: test loss %.4f nats/token, ppl %.2f, %s bits/byte%s", ctx.unit.id, row["loss"],
                 row["ppl"], "-" if row["bpb"] is None else f"{row['bpb']:.4f}",
                 f", synthetic loss {row['synthetic_loss']:.4f}" if "synthetic_loss" in row else "")
    return row


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
        **_replicate_fields(mix_params), "seed": train_params["seed"], "step": train_metrics.get("model_step", train_metrics.get("steps")),
        "train_steps": train_metrics.get("steps"), "train_tokens": train_metrics.get("tokens"),
        "best_val_loss": train_metrics.get("best_val_loss"),
    }


def _replicate_fields(mix_params: dict[str, Any]) -> dict[str, int]:
    """teacher_replicate and mix_draw where not 0 (rows of a run without replicates are what they always were)."""
    fields = {"teacher_replicate": artifacts.replicate_of(mix_params), "mix_draw": int(mix_params.get("draw", 0))}
    return {key: value for key, value in fields.items() if value}


def summary(stage_dir: Path, units: list[Unit]) -> dict[str, str | None]:
    """{"results.jsonl": one row per finished evaluate unit given, or None (no file) when there is none}.
    The runner passes the done units of this plan: units left in the directory by an earlier grid of the
    same run name are not listed."""
    rows = artifacts.result_rows({unit.key: Path(stage_dir) / unit.id for unit in units})
    return {RESULTS_FILE: "".join(json_line(row) for row in rows) if rows else None}
