"""Careless users against the results: a copied run checked in place, a diverged student, edited or
deleted result numbers, replaced pretrained weights, the evaluation batch size, bits per byte.

Same idioms as tests/test_hardening.py (whose fixtures and CLI helper, in tests/hardening_cli.py, this
module uses): tiny pipeline runs of tests/configs/tiny.yaml with `--stages` cut short, and every case
asserts the exit code, the one line `collapse: error: ...` and that nothing was written or the damage was
repaired.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest

from hardening_cli import _close_run_logs, cli, isolated, status_of  # noqa: F401  (isolated: the autouse fixture)
from hardening_helpers import TINY, artefacts, files_under, last_error, snapshot, tiny_args
from pipeline.errors import ExitCode
from pipeline.orchestration.cli import main as cli_main

P0_MIX = ("mix.synthetic_fractions=[0.0]", "mix.token_budgets=[3000]")
MIX_UNIT = "mix/g0-p0-n3000"


def _mixed_run(tmp_path: Path, capsys, *sets: str) -> tuple[list[str], Path]:
    args = tiny_args(tmp_path, *P0_MIX, *sets)
    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare,mix", "--no-progress")
    assert rc == 0, err
    return args, tmp_path / "runs" / "tiny"


# ---------------------------------------------------------------- a copied run is the run checked


def test_verify_and_status_of_a_copied_run_check_the_copy_and_repair_it(tmp_path, capsys, monkeypatch):
    _, original = _mixed_run(tmp_path, capsys)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy, symlinks=True)
    untouched = snapshot(original)
    (copy / MIX_UNIT / "blocks" / "data-00000-of-00001.arrow").unlink()
    monkeypatch.chdir(copy.parent)  # a relative path from another working directory

    assert status_of(capsys, Path("copy"))[MIX_UNIT] == "damaged"
    rc, out, err = cli(capsys, "verify", "copy")
    assert rc == ExitCode.FAILED and f", 1 damaged: {MIX_UNIT}" in out, out + err
    assert "blocks/data-00000-of-00001.arrow is missing" in err
    rc, out, err = cli(capsys, "verify", "copy", "--repair")
    assert rc == 0, err
    assert artefacts(copy) == artefacts(original)
    assert snapshot(original) == untouched, "the original run is neither checked nor written"
    rc, out, _ = cli(capsys, "status", "copy")
    assert out.startswith("run: copy\n")


# ---------------------------------------------------------------- a diverged student is not a result


def test_a_diverging_student_stops_at_the_first_non_finite_loss_and_is_not_kept(tmp_path, capsys):
    args, run_dir = _mixed_run(tmp_path, capsys)
    before = snapshot(run_dir)
    rc, _, err = cli(capsys, "run", *args, "--set", "train.training.lr=1e30", "--stages", "train", "--no-progress")
    assert rc == ExitCode.BAD_INPUT, err
    line = last_error(err)
    assert re.fullmatch(r"unit train/gpt2-nano-g0-p0-n3000-s0: the training loss is (NaN|[+-]infinity) at step \d+: "
                        r"the run diverged; lower train\.training\.lr \(now 1e\+30\) or set train\.training\.grad_clip "
                        r"\(now 1; 0 is off\) and run again", line), line
    train = {path for path in set(snapshot(run_dir)) - set(before) if "/train/" in f"/{path}"}
    assert train <= {".collapse/locks/train", ".collapse/locks/train/gpt2-nano-g0-p0-n3000-s0.lock",
                     "logs/train", "logs/train/gpt2-nano-g0-p0-n3000-s0.log"}, sorted(train)
    assert status_of(capsys, run_dir)["train/gpt2-nano-g0-p0-n3000-s0"] == "pending", "neither done nor failed"


def test_json_outputs_refuse_nan_and_infinity_naming_where_it_is(tmp_path):
    from pipeline.io import json_line, write_json_atomic

    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics\.json: metrics\.rows\[1\] is not a finite number"):
        write_json_atomic(target, {"metrics": {"rows": [1.0, float("nan")]}})
    with pytest.raises(ValueError, match=r"loss is not a finite number"):
        json_line({"loss": float("inf")})
    assert not target.exists() and files_under(tmp_path) == []


# ---------------------------------------------------------------- result numbers are covered by hashes

EVALUATED = ("generate.tokens=1000", "generate.shards=1", "teacher.training.tokens=1024", "tokenizer.kind=pretrained")
THROUGH_EVALUATE = "prepare,teacher,generate,mix,train,evaluate"
EVAL_UNIT = "evaluate/gpt2-nano-g0-p0-n3000-s0"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """One student trained and evaluated (teacher and generate cut to a step and one shard) on a
    SentencePiece-style tokenizer, built once; each test works on its own copy (`evaluated_copy`)."""
    base = tmp_path_factory.mktemp("evaluated")
    tokenizer = sentencepiece_style_tokenizer(base / "tokenizer")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setenv("COLLAPSE_CACHE", str(base / "cache"))
        args = tiny_args(base, *P0_MIX, *EVALUATED, f"tokenizer.path={tokenizer}")
        rc, _, err = _cli_quiet("run", *args, "--stages", THROUGH_EVALUATE, "--no-progress")
    assert rc == 0, err
    return base / "runs" / "tiny"


def sentencepiece_style_tokenizer(path: Path) -> Path:
    """A BPE whose pre-tokenizer writes "▁" for a space and before every document, as SentencePiece
    does: its tokens spell one byte more per document than the text has."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.data.reference import ReferenceLanguage

    texts = ReferenceLanguage(1.3, 400, 10.0, 6.0, seed=0).sample_documents(200, seed=5)
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(path)
    return path


def _cli_quiet(*argv) -> tuple[int, str, str]:
    """The CLI outside a test's capsys (for a module fixture): (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main([str(a) for a in argv])
    finally:
        _close_run_logs()
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def evaluated_copy(evaluated, tmp_path) -> Path:
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(evaluated, copy, symlinks=True)
    return copy


def _results_file_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "evaluate" / "results.jsonl").read_text().splitlines()]


def test_an_edited_loss_in_an_evaluate_manifest_is_damage_that_verify_finds_and_repairs(evaluated_copy, capsys):
    before = artefacts(evaluated_copy)
    manifest_path = evaluated_copy / EVAL_UNIT / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"]["loss"] = 1.25
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert status_of(capsys, evaluated_copy)[EVAL_UNIT] == "damaged"

    rc, out, err = cli(capsys, "verify", evaluated_copy)
    assert rc == ExitCode.FAILED and f", 1 damaged: {EVAL_UNIT}" in out, out + err
    assert f"unit {EVAL_UNIT} is damaged: manifest.json has other metrics than the unit wrote (sha256 differs)" in err
    rc, _, err = cli(capsys, "verify", evaluated_copy, "--repair")
    assert rc == 0, err
    assert artefacts(evaluated_copy) == before
    assert [row["loss"] for row in _results_file_rows(evaluated_copy)] == [before[EVAL_UNIT]["metrics"]["loss"]]


def test_a_manifest_written_before_metrics_were_hashed_stays_done(evaluated_copy, capsys):
    manifest_path = evaluated_copy / EVAL_UNIT / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["metrics_sha256"]
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert status_of(capsys, evaluated_copy)[EVAL_UNIT] == "done"
    rc, out, err = cli(capsys, "verify", evaluated_copy)
    assert rc == 0 and ", 0 damaged" in out, out + err


def test_a_deleted_results_summary_is_rebuilt_by_run_and_shown_by_status_meanwhile(evaluated_copy, capsys):
    summary = evaluated_copy / "evaluate" / "results.jsonl"
    original = summary.read_bytes()
    summary.unlink()
    rc, out, _ = cli(capsys, "status", evaluated_copy)
    assert rc == 0 and "== results (evaluate/results.jsonl)" in out and "gpt2-nano" in out.split("== results")[1]
    assert f"{summary} does not match the finished units; `collapse verify {evaluated_copy} --repair` rebuilds it" in out
    rc, out, err = cli(capsys, "verify", evaluated_copy)
    assert rc == ExitCode.FAILED and "1 stage summaries do not match their finished units: evaluate/results.jsonl" in out
    rc, _, err = cli(capsys, "run", evaluated_copy / "config.yaml", "--stages", THROUGH_EVALUATE, "--no-progress")
    assert rc == 0, err
    assert f"{summary} did not match its finished units; rebuilt from them" in err
    assert summary.read_bytes() == original


def test_an_edited_results_summary_is_not_shown_and_verify_repair_rebuilds_it(evaluated_copy, capsys):
    summary = evaluated_copy / "evaluate" / "results.jsonl"
    original = summary.read_bytes()
    true_loss = _results_file_rows(evaluated_copy)[0]["loss"]
    summary.write_text(summary.read_text().replace(f'"loss": {true_loss!r}', '"loss": 1.25'))
    assert _results_file_rows(evaluated_copy)[0]["loss"] == 1.25
    rc, out, _ = cli(capsys, "status", evaluated_copy)
    table = out.split("== results")[1]
    assert f"{true_loss:.4f}" in table and "1.2500" not in table
    rc, out, err = cli(capsys, "verify", evaluated_copy)
    assert rc == ExitCode.FAILED and "evaluate/results.jsonl" in out
    rc, _, err = cli(capsys, "verify", evaluated_copy, "--repair")
    assert rc == 0, err
    assert summary.read_bytes() == original
    rc, out, _ = cli(capsys, "verify", evaluated_copy)
    assert rc == 0 and "stage summaries" not in out


# ---------------------------------------------------------------- replaced pretrained weights


def _fingerprints(tmp_path: Path, *sets: str) -> dict[str, str]:
    from pipeline.config import load_config
    from pipeline.orchestration.runner import default_stages, plan_run

    cfg = load_config(TINY, [f"runs_dir={tmp_path / 'runs'}", *sets])
    return plan_run(cfg, default_stages()).fingerprints


def test_other_weights_of_the_same_size_in_a_pretrained_dir_are_another_teacher(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    checkpoint = tmp_path / "pretrained"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(checkpoint)
    sets = (f"teacher.model.pretrained={checkpoint}", "teacher.model.finetune=none", "tokenizer.kind=bpe")
    before = _fingerprints(tmp_path, *sets)

    weights = checkpoint / "model.safetensors"
    size, mtime = weights.stat().st_size, weights.stat().st_mtime_ns
    tensors = load_file(weights)
    tensors["transformer.wte.weight"] += 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    os.utime(weights, ns=(mtime + 10**9, mtime + 10**9))  # a later mtime, whatever the filesystem's resolution
    assert weights.stat().st_size == size, "the same size: only the content tells them apart"
    after = _fingerprints(tmp_path, *sets)

    changed = {key for key in before if before[key] != after[key]}
    assert {"teacher/g0", "generate/g0"} <= changed
    assert {key.split("/")[0] for key in changed} - {"teacher", "generate", "mix", "train", "evaluate", "fit", "report"} == set()
    assert not any(key.startswith("prepare/") for key in changed)


# ---------------------------------------------------------------- the evaluation's numbers


def test_evaluation_does_not_depend_on_the_batch_size():
    import numpy as np
    import torch

    from pipeline.lm.evaluation import evaluate_stream
    from train_helpers import tiny_model

    model = tiny_model(seed=3).eval()
    ids = np.random.default_rng(0).integers(1, 96, size=40 * 31 + 5)
    results = [evaluate_stream(model, ids, window=32, eos_id=0, n_bytes=4000, batch_size=batch,
                               device=torch.device("cpu"), progress=False) for batch in (1, 3, 64)]
    assert results[0] == results[1] == results[2], "every number equal to the last digit"


def test_bits_per_byte_divide_by_the_text_bytes_with_a_sentencepiece_style_tokenizer(evaluated):
    import math

    from pipeline.data.packing import text_bytes
    from pipeline.stages import artifacts

    prepare = json.loads((evaluated / "prepare" / "manifest.json").read_text())["metrics"]
    test = prepare["splits"]["test"]
    assert test["token_bytes"] == test["bytes"] + test["documents"], "the fixture's tokens add one byte per document"
    assert test["bytes"] == sum(text_bytes(doc) for doc in artifacts.documents(evaluated / "prepare", "test"))

    teacher = json.loads((evaluated / "teacher" / "g0" / "manifest.json").read_text())["metrics"]["test"]
    assert not teacher["capped"] and teacher["bytes"] == test["bytes"]
    assert teacher["bits_per_byte"] == pytest.approx(teacher["loss"] * teacher["tokens"] / math.log(2) / test["bytes"])

    row = json.loads((evaluated / EVAL_UNIT / "manifest.json").read_text())["metrics"]
    assert row["test_bytes"] == test["bytes"]
    assert row["synthetic_bytes"] == artifacts.corpus_bytes(evaluated / "generate" / "g0", heldout=True) > 0
    assert row["synthetic_bpb"] == pytest.approx(row["synthetic_loss"] * row["synthetic_tokens"] / math.log(2)
                                                 / row["synthetic_bytes"])
