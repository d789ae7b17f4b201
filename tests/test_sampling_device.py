"""The decode plan of sampling (pipeline/lm/sampling_device.py): compiled, bucketed decode on CUDA.

What CPU can check: the plan per device, bucket choice at its edges, that the bucketed path (run on
CPU through `plan=`) keeps exactly the documents and counts of the unbucketed one, that padding rows
are never kept or counted, and (compiling on CPU, without CUDA graphs) that the CompileConfig reaches
`generate` and the forward compiles as one graph per bucket. The CUDA tests (skipped without a GPU)
check the promise of sampling.py's docstring there. Runtime on 2 shared CPU cores: ~30 s, most of it
the CPU compilation.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from generate_helpers import EOS, known_distribution, unigram_model
from pipeline.lm import sampling as S
from pipeline.lm import sampling_device as SD

BUCKETED = SD.DecodePlan(bucket=True)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def flat_model(seed: int = 0):
    """An untrained GPT-2: logits depend on the whole context (attention), EOS is rare."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=300, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=EOS,
                        eos_token_id=EOS)
    return GPT2LMHeadModel(config).eval()


def sample(model, plan=None, target=3_000, batch_size=64, prompts=None, seed=0, **settings):
    settings.setdefault("max_new_tokens", 48)
    return S.sample_documents(model, S.SamplingSettings(**settings), prompts or S.PromptSampler(EOS),
                              target_tokens=target, eos_id=EOS, pad_id=EOS, seed=seed, batch_size=batch_size,
                              progress=False, plan=plan)


def same_result(a, b) -> None:
    assert a.documents == b.documents and a.prompts == b.prompts
    assert (a.kept_tokens, a.computed_tokens, a.sequences, a.rows) == (b.kept_tokens, b.computed_tokens,
                                                                       b.sequences, b.rows)


# ---------------------------------------------------------------- the plan


def test_cpu_decodes_eagerly_unpadded_and_cuda_compiles_bucketed_graphs():
    model = flat_model()
    cpu = SD.decode_plan(model, torch.device("cpu"))
    assert cpu == SD.DecodePlan() and cpu.compile_config() is None and cpu.rows_to_run(5, 64) == 5
    config = S.SamplingSettings().generation_config(EOS, EOS, cpu.compile_config())
    assert config.disable_compile is True and config.compile_config is None
    cuda = SD.decode_plan(model, torch.device("cuda"))  # deciding touches no GPU
    assert (cuda.compile, cuda.bucket, cuda.fullgraph) == (True, True, True)  # GPT-2 compiles as one graph
    compile_config = cuda.compile_config()
    assert (compile_config.mode, compile_config.dynamic, compile_config.fullgraph) == ("reduce-overhead", False, True)
    config = S.SamplingSettings().generation_config(EOS, EOS, compile_config)
    assert config.disable_compile is False and config.compile_config is compile_config
    assert config.cache_implementation == "static"
    model._can_compile_fullgraph = False  # a model with graph breaks: compiled, not as one graph
    assert SD.decode_plan(model, torch.device("cuda")).fullgraph is False


@pytest.mark.parametrize("rows, batch_size, bucket", [
    (1, 4096, 64), (64, 4096, 64), (65, 4096, 128), (2048, 4096, 2048), (2049, 4096, 4096), (4096, 4096, 4096),
    (1, 16, 1), (3, 16, 4), (9, 16, 16), (1, 1, 1), (1, 48, 1), (2, 48, 3), (24, 48, 24), (25, 48, 48),
    (1, 100, 1), (2, 100, 3), (4, 100, 6), (51, 100, 100),
])
def test_bucket_is_the_smallest_halving_of_the_batch_that_holds_the_rows(rows, batch_size, bucket):
    assert SD.bucket_size(rows, batch_size) == bucket
    assert len({SD.bucket_size(r, batch_size) for r in range(1, batch_size + 1)}) <= SD.MAX_HALVINGS + 1


@pytest.mark.parametrize("rows", [0, 65])
def test_bucket_rejects_rows_outside_the_batch(rows):
    with pytest.raises(ValueError, match="rows"):
        SD.bucket_size(rows, 64)


def test_padding_copies_the_last_row_and_generated_columns_end_at_the_last_eos():
    prompts, keys = SD.pad_rows([[0], [0, 5]], np.array([7, 9], dtype=np.uint64), 4)
    assert prompts == [[0], [0, 5], [0, 5], [0, 5]] and keys.tolist() == [7, 9, 9, 9]
    with pytest.raises(ValueError):
        SD.pad_rows([[0], [0]], np.array([1, 2], dtype=np.uint64), 1)
    assert SD.generated_columns(torch.tensor([[3, EOS, EOS, EOS], [4, 4, EOS, EOS]]), EOS) == 3
    assert SD.generated_columns(torch.tensor([[3, EOS, EOS, EOS], [4, 4, 4, 4]]), EOS) == 4  # a row ran to the end


def test_uniforms_of_a_whole_batch_equal_the_per_step_ones_bit_for_bit():
    keys = S.counter_hash(np.uint64(123), np.arange(50, dtype=np.uint64))
    table = S.uniforms(keys[:, None], np.arange(40, dtype=np.uint64)[None, :])
    assert all(np.array_equal(table[:, t], S.uniforms(keys, t)) for t in range(40))


# ---------------------------------------------------------------- bucketed == unbucketed on CPU


@pytest.mark.parametrize("which", ["unigram", "flat", "flat-human"])
def test_bucketed_path_keeps_exactly_the_documents_and_counts_of_the_unbucketed_one(which):
    model = unigram_model(known_distribution()) if which == "unigram" else flat_model()
    prompts = None
    if which == "flat-human":
        docs = ["".join(chr(97 + (i * j) % 26) for j in range(4 + i % 11)) for i in range(40)]
        prompts = S.PromptSampler(EOS, docs, lambda texts: [[1 + ord(c) % 200 for c in t] for t in texts], 3, seed=2)
    kwargs = dict(target=2_500, batch_size=48, prompts=prompts, temperature=0.9, top_p=0.95)
    plain, bucketed = sample(model, **kwargs), sample(model, plan=BUCKETED, **kwargs)
    same_result(plain, bucketed)
    assert plain.run_rows == plain.rows
    assert bucketed.run_rows == [SD.bucket_size(r, 48) for r in bucketed.rows]
    assert sum(bucketed.run_rows) > sum(bucketed.rows), "the shrinking last batches were padded"


def test_padding_rows_are_never_kept_or_counted(monkeypatch):
    """Padding rows' output replaced by a marker that never ends: none of it may reach the result."""
    marker, real_rows = 299, []

    class CountingPrompts(S.PromptSampler):
        def prompts(self, indices):
            real_rows.append(len(indices))
            return super().prompts(indices)

    model = flat_model()
    real_generate = model.generate

    def generate(**kwargs):
        out = real_generate(**kwargs)
        out[real_rows[-1]:, kwargs["input_ids"].shape[1]:] = marker
        return out

    monkeypatch.setattr(model, "generate", generate)
    bucketed = sample(model, plan=BUCKETED, prompts=CountingPrompts(EOS), target=2_000, batch_size=32)
    assert sum(bucketed.run_rows) > sum(bucketed.rows) == sum(real_rows)
    assert not any(set(doc) == {marker} for doc in bucketed.documents)
    same_result(sample(flat_model(), target=2_000, batch_size=32), bucketed)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_bucketed_decode_on_cpu_reaches_generate_as_one_graph_per_bucket():
    """The CUDA plan minus CUDA graphs: CompileConfig reaches generate, fullgraph compiles, two buckets =
    two graphs, and the text is the eager text (equal up to ties; a tiny model has none in practice)."""
    import torch._dynamo.config as dynamo_config
    import torch._dynamo.utils as dynamo_utils
    import torch._inductor.config as inductor_config

    settings_before = (inductor_config.deterministic, dynamo_config.recompile_limit)
    model = flat_model()
    plan = SD.DecodePlan(compile=True, fullgraph=True, bucket=True)
    eager = sample(model, target=400, batch_size=16, max_new_tokens=24)
    dynamo_utils.counters.clear()
    compiled = sample(model, plan, target=400, batch_size=16, max_new_tokens=24)
    assert compiled.run_rows == [SD.bucket_size(r, 16) for r in compiled.rows] and len(set(compiled.run_rows)) == 2
    assert hasattr(model, "_compiled_call") and dynamo_utils.counters["stats"]["unique_graphs"] == 2
    same_result(eager, compiled)
    assert (inductor_config.deterministic, dynamo_config.recompile_limit) == settings_before, "settings restored"


# ---------------------------------------------------------------- CUDA


@needs_cuda
def test_cuda_same_seed_shard_and_batch_give_the_same_text_twice():
    """A second run on a fresh copy of the model (as a resumed shard loads it), bf16, compiled. In one
    process, so the compiled kernels are shared; a rerun in a new process compiles again (not checked here)."""
    model = flat_model().to("cuda", torch.bfloat16)
    fresh = copy.deepcopy(model)  # before sampling: a copy made after would share the compiled call
    first = sample(model, target=2_500, batch_size=32, max_new_tokens=64)  # rows ~[32, 14]: the last padded
    assert hasattr(model, "_compiled_call") and sum(first.run_rows) > sum(first.rows)
    second = sample(fresh, target=2_500, batch_size=32, max_new_tokens=64)
    same_result(first, second)
    assert sample(model, target=2_500, batch_size=32, max_new_tokens=64, seed=1).documents != first.documents


@needs_cuda
def test_cuda_bucketed_equals_unbucketed():
    """On the unigram model, whose logits are exact whatever the batch shape (a zeroed final layer norm
    times the embedding), so that bucket padding is the only difference between the two runs. (On a
    real model the two run their rows in different batch shapes: equal only up to bf16 ties.)"""
    model = unigram_model(known_distribution()).to("cuda", torch.bfloat16)
    compiled = SD.decode_plan(model, torch.device("cuda"))
    bucketed = sample(model, target=3_000, batch_size=40)  # rows ~[40, 40, 16, 3] run as [40, 40, 20, 5]
    unbucketed = sample(model, plan=SD.DecodePlan(compile=compiled.compile, fullgraph=compiled.fullgraph),
                        target=3_000, batch_size=40)
    assert sum(bucketed.run_rows) > sum(bucketed.rows) and unbucketed.run_rows == unbucketed.rows
    same_result(bucketed, unbucketed)
