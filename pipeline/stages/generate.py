"""generate: synthetic text from each generation's teacher, in shards, merged into a packed corpus.

Units per generation g (the runner orders them after teacher g, and teacher g+1 after corpus g):
  generate/gG-sKKK  a shard: its share of generate.tokens sampled from teacher/gG (pipeline/lm/sampling.py).
                    text.jsonl: {"text", "tokens"[, "prompt"]} per document, in sequence order.
                    Under `accelerate launch` every process samples its own chunk of each round; the
                    main process writes. Shard k's sequences come from the seed (generate.seed, g, k),
                    so a rerun after a kill redoes only missing shards and produces identical text.
  generate/gG       the corpus: shard texts concatenated in shard order; a seeded `heldout_fraction`
                    of the documents is packed into heldout/ (final partial block kept), the rest into
                    blocks/ (column `input_ids`), both with prepare's tokenizer and block size.
                    text.jsonl: {"text", "heldout"} per document; diagnostics.json: synthetic vs human
                    statistics (pipeline/lm/diagnostics.py) with rank-frequency arrays for the report.
With teacher.replicates > 1, replicate r >= 1 has the same units with ids gG-tR-sKKK and gG-tR, read from
teacher/gG-tR and sampled from (generate.seed, g, k, r).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY, shard_id
from pipeline.unit import Unit

NAME = "generate"
VERSION = 2
_HELDOUT_STREAM = 0x48454C44  # separates the held-out draw from the sampling seeds


def shard_tokens(total: int, shards: int, shard: int) -> int:
    """Shard k's share of the generation's tokens (the first total % shards shards take one more)."""
    return total // shards + (shard < total % shards)


def plan(cfg, planned) -> list[Unit]:
    from pipeline.lm.sampling import SamplingSettings

    gen = cfg.generate
    sampling = SamplingSettings.from_config(gen).as_dict()
    trust = cfg.teacher.model.trust_remote_code
    units: list[Unit] = []
    for r in range(cfg.teacher.replicates):
        for g in range(gen.generations):
            teacher_key, replicate = artifacts.teacher_key(g, r), artifacts.replicate_params(r)
            shards = []
            for k in range(gen.shards):
                params = {"generation": g, "shard": k, "tokens": shard_tokens(gen.tokens, gen.shards, k),
                          "sampling": sampling, "prompt": gen.prompt, "seed": gen.seed, "trust_remote_code": trust,
                          **replicate}
                if gen.prompt == "human":
                    params["prompt_tokens"] = gen.prompt_tokens
                # The text does not depend on the batch size (counter-based sampling), so it is a setting. (On
                # CUDA in bf16 it does beyond floating-point ties: see pipeline/lm/sampling.py's docstring.)
                shards.append(Unit(NAME, shard_id(g, k, r), params, inputs=(teacher_key, PREPARE_KEY),
                                   settings={"batch_size": gen.batch_size}, multiprocess=True))
            units += shards
            corpus_params = {"generation": g, "heldout_fraction": gen.heldout_fraction, "tail_rank": gen.tail_rank,
                             "seed": gen.seed, "sampling": {**sampling, "prompt": gen.prompt}, **replicate}
            units.append(Unit(NAME, artifacts.generation_id(g, r), corpus_params,
                              inputs=(*(s.key for s in shards), PREPARE_KEY, teacher_key),
                              settings={"num_proc": cfg.packing.num_proc}))
    return units


def sampling_seed(params: dict[str, Any]) -> int:
    """Shard k of generation g samples from (generate.seed, g, k), and teacher replicate r >= 1 from (..., r)."""
    from pipeline.lm.sampling import derive_seed

    parts = (params["seed"], params["generation"], params["shard"])
    replicate = artifacts.replicate_of(params)
    return derive_seed(*parts, replicate) if replicate else derive_seed(*parts)


def run(ctx) -> dict[str, Any]:
    return run_shard(ctx) if artifacts.is_shard(ctx.unit.id) else run_corpus(ctx)


# ---------------------------------------------------------------- shards


def run_shard(ctx) -> dict[str, Any]:
    from accelerate.utils import gather_object

    from pipeline.distributed import process_state
    from pipeline.lm.sampling import PromptSampler, SamplingSettings, sample_documents, start_token_id

    params, state = ctx.params, process_state()
    teacher_key = artifacts.teacher_key(params["generation"], artifacts.replicate_of(params))
    model, tokenizer = artifacts.teacher_model(ctx.inputs[teacher_key], state.device, params["trust_remote_code"])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"{teacher_key}: its tokenizer has no EOS token; documents could not end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seed = sampling_seed(params)
    if params["prompt"] == "human":  # TRAIN documents only: validation/test text never reaches the teacher
        prompts = PromptSampler(start_token_id(tokenizer), artifacts.documents(Path(ctx.inputs[PREPARE_KEY]), "train"),
                                lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"],
                                params["prompt_tokens"], seed)
    else:
        prompts = PromptSampler(start_token_id(tokenizer))
    result = sample_documents(model, SamplingSettings(**params["sampling"]), prompts, target_tokens=params["tokens"],
                              eos_id=eos, pad_id=pad, seed=seed, batch_size=ctx.settings["batch_size"],
                              rank=state.process_index, world=state.num_processes, gather=gather_object,
                              progress=ctx.is_main_process, desc=f"generate {ctx.unit.id}")
    if ctx.is_main_process:
        lines = []
        for doc, prompt in zip(result.documents, result.prompts):
            row: dict[str, Any] = {"text": tokenizer.decode(doc, skip_special_tokens=True), "tokens": len(doc)}
            if params["prompt"] == "human":
                row["prompt"] = tokenizer.decode(prompt[1:], skip_special_tokens=True)
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        write_text_atomic(Path(ctx.out) / "text.jsonl", "".join(lines))
        ctx.log.info("generate %s: %d documents, %d tokens, %.0f tokens/s, batch %d, %.0f%% of computed tokens "
                     "after EOS", ctx.unit.id, len(result.documents), result.kept_tokens, result.tokens_per_second,
                     result.batch_size, 100 * result.wasted_fraction)
    return {"documents": len(result.documents), "tokens": result.kept_tokens, "sequences": result.sequences,
            "computed_tokens": result.computed_tokens, "wasted_fraction": result.wasted_fraction,
            "tokens_per_s": result.tokens_per_second, "seconds": result.seconds, "batch_size": result.batch_size,
            "processes": state.num_processes, "device": str(state.device)}


# ---------------------------------------------------------------- corpus


def heldout_mask(n_documents: int, fraction: float, seed: int, generation: int) -> np.ndarray:
    """Which documents are held out: a seeded choice of round(fraction * n) (at least one if fraction > 0)."""
    n_heldout = 0 if fraction == 0 or n_documents < 2 else min(n_documents - 1, max(1, round(fraction * n_documents)))
    from pipeline.lm.sampling import derive_seed

    rng = np.random.default_rng(derive_seed(seed, generation, _HELDOUT_STREAM))
    mask = np.zeros(n_documents, dtype=bool)
    mask[rng.choice(n_documents, size=n_heldout, replace=False)] = True
    return mask


def run_corpus(ctx) -> dict[str, Any]:
    from pipeline.data.packing import pack_documents

    params, out = ctx.params, Path(ctx.out)
    shards = ctx.inputs_of(NAME)  # in shard order
    rows = [row for path in shards.values() for row in artifacts.shard_rows(path)]
    texts = [row["text"] for row in rows]
    if not texts:
        raise UserError(f"generate {ctx.unit.id}: the shards hold no documents; raise generate.tokens")
    prepare_dir = Path(ctx.inputs[PREPARE_KEY])
    tokenizer = artifacts.tokenizer(prepare_dir)
    block_size = artifacts.block_size(prepare_dir)
    held = heldout_mask(len(texts), params["heldout_fraction"], params["seed"], params["generation"])
    num_proc = ctx.settings["num_proc"]
    packed = pack_documents([t for t, h in zip(texts, held) if not h], tokenizer, block_size, out / "blocks",
                            num_proc=num_proc)
    if packed["blocks"] == 0:
        raise UserError(f"generate.tokens: the {sum(len(t) for t in texts):,} characters sampled for {ctx.unit.id} "
                        f"make no full block of {block_size} tokens; raise generate.tokens")
    heldout = (pack_documents([t for t, h in zip(texts, held) if h], tokenizer, block_size, out / "heldout",
                              num_proc=num_proc, keep_remainder=True) if held.any() else None)
    write_text_atomic(out / "text.jsonl", "".join(json.dumps({"text": t, "heldout": bool(h)}, ensure_ascii=False) + "\n"
                                                  for t, h in zip(texts, held)))

    diagnostics = corpus_statistics(ctx, texts, prepare_dir, tokenizer)
    write_json_atomic(out / "diagnostics.json", diagnostics)
    shard_metrics = [artifacts.manifest(path)["metrics"] for path in shards.values()]
    from pipeline.lm.diagnostics import without_arrays

    synthetic = diagnostics["synthetic"]
    human, shown = diagnostics["human"], lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
    ctx.log.info("generate %s: %d documents (%d held out), %d blocks; Zipf words %s (human %s), tail mass %s "
                 "(human %s), test-type coverage %s", ctx.unit.id, len(texts), int(held.sum()), packed["blocks"],
                 shown(synthetic["zipf_word"], 3), shown(human["zipf_word"], 3), shown(synthetic["tail_mass"], 4),
                 shown(human["tail_mass"], 4), shown(synthetic["human_test_type_coverage"], 3))
    return {"generation": params["generation"], "documents": len(texts), "heldout_documents": int(held.sum()),
            "teacher_tokens": sum(m["tokens"] for m in shard_metrics),
            "sampling_seconds": sum(m["seconds"] for m in shard_metrics),
            "blocks": packed, "heldout": heldout, "diagnostics": without_arrays(diagnostics)}


def corpus_statistics(ctx, texts: list[str], prepare_dir: Path, tokenizer) -> dict[str, Any]:
    """pipeline.lm.diagnostics on this corpus vs prepare's train/test documents, plus the teacher's test scores."""
    from pipeline.data.packing import plain_backend
    from pipeline.lm.diagnostics import corpus_diagnostics

    backend = plain_backend(tokenizer)

    def tokenize(batch: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in backend.encode_batch_fast(batch, add_special_tokens=False)]

    diagnostics = corpus_diagnostics(texts, artifacts.documents(prepare_dir, "train"), artifacts.documents(prepare_dir, "test"),
                                     tokenize, ctx.params["tail_rank"], distinct=distinct_via_evaluate())
    teacher_key = artifacts.teacher_key(ctx.params["generation"], artifacts.replicate_of(ctx.params))
    test = ctx.manifest(teacher_key)["metrics"].get("test") or {}
    diagnostics["synthetic"].update(teacher_test_loss=test.get("loss"), teacher_test_ppl=test.get("perplexity"),
                                    teacher_test_bpb=test.get("bits_per_byte"))
    diagnostics["generation"] = ctx.params["generation"]
    diagnostics["teacher_replicate"] = artifacts.replicate_of(ctx.params)
    diagnostics["sampling"] = ctx.params["sampling"]
    return diagnostics


def distinct_via_evaluate():
    """distinct-1/2/3 through the shipped `distinct_n` evaluate module (units joined by spaces)."""
    from pipeline.lm.metrics import load_metric

    metric = load_metric("distinct_n")

    def distinct(documents) -> dict[str, float | None]:
        result = metric.compute(predictions=[" ".join(map(str, doc)) for doc in documents], max_n=3)
        return {f"distinct_{n}": result[f"distinct_{n}"] for n in (1, 2, 3)}

    return distinct
