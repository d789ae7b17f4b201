"""Held-out evaluation: summed NLL over every token equals a plain transformers forward, bits per byte
are exact, the metric modules load offline by path, and the train + evaluate stages run through the
real runner on a tiny pipeline (stand-in generate stage). Runtime ~40 s on 2 slow CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from train_helpers import tiny_model

TEXTS = ["The cat sat on the mat.", "Zoë's café serves crème brûlée — naïvely priced at €4.",
         "Model collapse: tails vanish first.", "日本語のテキストも少し。", "Short one."]


def test_every_token_is_predicted_once_and_matches_a_transformers_forward():
    from pipeline.lm.evaluation import IGNORE, stream_windows, summed_nll

    torch.manual_seed(0)
    model = tiny_model(seed=3).eval()
    ids = np.random.default_rng(0).integers(1, 96, size=3 * 31 + 12)  # 3 full windows and a partial one
    windows = stream_windows(ids, window=32, eos_id=0)
    targets = windows.targets[windows.targets != IGNORE]
    assert torch.equal(targets, torch.from_numpy(ids)), "each token is a target exactly once, in order"
    assert windows.inputs[0, 0] == 0, "the stream starts with EOS, so the first token is predicted too"

    nll, count = summed_nll(model, windows, batch_size=3, device=torch.device("cpu"))
    direct, direct_count = 0.0, 0
    with torch.no_grad():
        for inputs, window_targets in zip(windows.inputs, windows.targets):
            labels = torch.cat([torch.tensor([IGNORE]), window_targets])  # transformers shifts labels itself
            valid = int((window_targets != IGNORE).sum())
            direct += model(input_ids=inputs[None], labels=labels[None]).loss.double().item() * valid
            direct_count += valid
    assert count == direct_count == len(ids)
    assert nll == pytest.approx(direct, rel=1e-5)


def test_shards_cover_every_window_once():
    from pipeline.lm.evaluation import IGNORE, stream_windows

    windows = stream_windows(np.arange(1, 200), window=16, eos_id=0)
    shards = [windows.shard(rank, 3) for rank in range(3)]
    assert len({len(s.inputs) for s in shards}) == 1, "every rank runs the same number of windows"
    assert sum(s.n_targets for s in shards) == windows.n_targets == 199
    pooled = torch.cat([s.targets[s.targets != IGNORE] for s in shards]).sort().values
    assert torch.equal(pooled, torch.arange(1, 200))


def test_bits_per_byte_divide_by_the_bytes_of_the_text(tmp_path):
    from pipeline.data.packing import text_bytes
    from pipeline.data.tokenizer import token_byte_lengths, train_bpe_tokenizer
    from pipeline.lm.evaluation import evaluate_stream

    tokenizer = train_bpe_tokenizer(TEXTS * 20, 300, tmp_path / "tok")
    eos = tokenizer.eos_token_id
    ids = np.concatenate([tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in TEXTS])
    n_bytes = sum(text_bytes(text) for text in TEXTS)
    assert n_bytes == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert int(token_byte_lengths(tokenizer)[ids].sum()) == n_bytes, "byte-level BPE tokens spell the text; EOS 0 bytes"

    torch.manual_seed(0)
    from pipeline.config import ModelConfig
    from pipeline.lm.loading import build_model

    model = build_model(ModelConfig(family="llama", size="nano"), len(tokenizer), 32, eos, eos)
    result = evaluate_stream(model, ids, window=32, eos_id=eos, n_bytes=n_bytes, batch_size=4,
                             device=torch.device("cpu"), progress=False)
    assert result["tokens"] == len(ids) and result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(result["nll_sum"] / math.log(2) / result["bytes"])
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["loss"] == pytest.approx(result["nll_sum"] / len(ids))


def test_metric_modules_load_offline_by_path():
    import evaluate

    from pipeline.lm.metrics import metric_path

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    perplexity = evaluate.load(metric_path("summed_nll_perplexity"))
    # Two chunks: 3 tokens with 6 nats, 1 token with 2 nats. Pooled: 2 nats/token (a mean of chunk means: 2.0 too
    # here), so use unequal per-token losses to tell the two apart: 3 tokens/3 nats and 1 token/5 nats.
    pooled = perplexity.compute(nll_sums=[3.0, 5.0], token_counts=[3, 1], byte_counts=[6, 2])
    assert pooled["loss"] == pytest.approx(2.0)  # 8 nats / 4 tokens, not (1 + 5) / 2 = 3
    assert pooled["perplexity"] == pytest.approx(math.exp(2.0))
    assert pooled["bits_per_byte"] == pytest.approx(8 / math.log(2) / 8)
    distinct = evaluate.load(metric_path("distinct_n"))
    result = distinct.compute(predictions=[[1, 2, 1, 2], [3, 3]], max_n=3)
    assert result["distinct_1"] == pytest.approx(3 / 6)
    assert result["distinct_2"] == pytest.approx(3 / 4)  # (1,2) (2,1) (1,2) | (3,3)
    assert result["distinct_3"] == pytest.approx(2 / 2)
    assert distinct.compute(predictions=["a b a b"], max_n=2)["distinct_2"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- the stages through the runner


def _plan_generate(cfg, planned):
    from pipeline.orchestration.runner import Unit

    params = {"reference": cfg.corpus.reference.model_dump(), "block_size": cfg.packing.block_size}
    return [
        Unit("generate", f"g{g}", {"generation": g, **params}, ("prepare/prepare",))
        for g in range(cfg.generate.generations)]


def _run_generate(ctx):
    """Stand-in for the teacher: text of the same reference language (another seed), packed like the real
    corpus unit, with held-out blocks."""
    from pipeline.data.packing import pack_documents
    from pipeline.data.reference import ReferenceLanguage
    from pipeline.stages import artifacts

    reference = ctx.params["reference"]
    language = ReferenceLanguage(reference["beta"], reference["lexicon_size"], reference["mean_sentence_words"],
                                 reference["mean_document_sentences"], seed=reference["seed"])
    tokenizer = artifacts.tokenizer(ctx.inputs["prepare/prepare"])
    heldout, train = language.sample_documents(15, seed=77), language.sample_documents(120, seed=7)
    pack_documents(heldout, tokenizer, ctx.params["block_size"], ctx.out / "heldout", keep_remainder=True)
    (ctx.out / "text.jsonl").write_text("".join(json.dumps({"text": text, "heldout": held}) + "\n"
                                                for texts, held in ((train, False), (heldout, True)) for text in texts))
    return pack_documents(train, tokenizer, ctx.params["block_size"], ctx.out / "blocks")


def test_train_and_evaluate_stages_through_the_runner(tmp_path):
    from pipeline.config import load_config
    from pipeline.orchestration.executor import Executor
    from pipeline.orchestration.sweep import run_units
    from pipeline.orchestration.launchers.local import LocalLauncher
    from pipeline.orchestration.runner import plan_run
    from pipeline.stages import evaluate, mix, prepare, train

    generate = SimpleNamespace(NAME="generate", VERSION=1, plan=_plan_generate, run=_run_generate)
    stages = {"prepare": prepare, "generate": generate, "mix": mix, "train": train, "evaluate": evaluate}
    tiny = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
    cfg = load_config(tiny, [f"runs_dir={tmp_path}", "corpus.source=builtin:reference-language",
                             "corpus.reference.documents=200", "tokenizer.vocab_size=400", "packing.block_size=32",
                             "generate.max_new_tokens=32", "generate.generations=1", "mix.generations=[0]", "mix.mode=replace",
                             "mix.synthetic_fractions=[0.0,1.0]", "mix.token_budgets=[2048]",
                             "train.students=[{family: gpt2, size: nano}]", "train.seeds=[0]", "train.training.epochs=1.0",
                             "train.training.batch_size=8", "train.training.eval_every=0", "train.training.checkpoint_every=0"])
    executor = Executor(cfg=cfg, stages=stages, planned=plan_run(cfg, stages))
    train_ids = [u.id for u in executor.planned.units("train")]
    assert train_ids == ["gpt2-nano-g0-p0-n2048-s0", "gpt2-nano-g0-p1-n2048-s0"]
    unit = executor.planned.get("train/gpt2-nano-g0-p1-n2048-s0")
    assert unit.multiprocess and unit.resumable and unit.inputs == ("mix/g0-p1-n2048", "prepare/prepare")
    assert "checkpoint_every" not in unit.params["training"] and unit.params["model"]["n_layer"] == 1
    assert executor.planned.get("evaluate/gpt2-nano-g0-p1-n2048-s0").inputs[-1] == "generate/g0"

    outcomes = run_units(executor, list(executor.planned), LocalLauncher(), progress=False)
    assert all(o.status == "ran" for o in outcomes), [(o.unit.key, o.error) for o in outcomes]
    run_dir = tmp_path / "tiny"
    trained = json.loads((run_dir / "train" / train_ids[1] / "manifest.json").read_text())["metrics"]
    assert trained["steps"] == 8 and trained["tokens"] == 2048 and trained["tokens_per_s"] > 0
    assert (run_dir / "train" / train_ids[1] / "model" / "model.safetensors").is_file()
    assert (run_dir / "train" / train_ids[1] / "model" / "tokenizer.json").is_file()
    rows = [json.loads(line) for line in (run_dir / "evaluate" / "results.jsonl").read_text().splitlines()]
    assert [(r["synthetic_fraction"], r["token_budget"], r["seed"]) for r in rows] == [(0.0, 2048, 0), (1.0, 2048, 0)]
    prepare_metrics = json.loads((run_dir / "prepare" / "manifest.json").read_text())["metrics"]
    for row in rows:
        assert row["student"] == "gpt2-nano" and row["family"] == "gpt2" and row["generation"] == 0
        assert row["test_tokens"] == prepare_metrics["splits"]["test"]["tokens"], "every test token is predicted"
        assert row["test_bytes"] == prepare_metrics["splits"]["test"]["bytes"]
        assert row["ppl"] == pytest.approx(math.exp(row["loss"]))
        assert row["excess_loss"] == pytest.approx(row["loss"] - prepare_metrics["reference"]["test"]["nats_per_token"])
        assert row["excess_loss"] > 0, "no model beats the true entropy of the language"
        assert row["synthetic_loss"] > 0 and row["synthetic_tokens"] > 0
        assert row["synthetic_bpb"] == pytest.approx(row["synthetic_loss"] * row["synthetic_tokens"] / math.log(2)
                                                      / row["synthetic_bytes"])

    stale = run_dir / "evaluate" / "gpt2-nano-g0-p0.5-n999-s0"  # left by an earlier grid of this run name
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"metrics": {**rows[0], "token_budget": 999}}))
    assert executor.summarize("evaluate") == [], "the units left by another grid change nothing"
    again = [json.loads(line) for line in (run_dir / "evaluate" / "results.jsonl").read_text().splitlines()]
    assert again == rows, "results.jsonl lists only this config's units"
