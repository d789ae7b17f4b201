"""Careless users against the plan: values that passed validation and failed mid-run (trackers, a batch
larger than a mixture, infinite or astronomic counts, negative seeds, a missing pretrained model), a
cut-short `--stages` list, bad input found mid-run deleting finished units, YAML 1.1 booleans, a closed
pipe, a file where a directory belongs, and a full disk reported by safetensors.

Same idioms as tests/test_hardening.py (whose fixtures and CLI helper, in tests/hardening_cli.py, this
module uses): runner-level cases use the toy stages of tests/toy_stages.py through the real CLI,
pipeline-level ones plan tests/configs/tiny.yaml (`collapse plan` where it shows the check). Every case
asserts the exit code, the one line `collapse: error: ...` naming the key, and that nothing was written or
nothing finished removed.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest

from hardening_cli import (  # noqa: F401  (isolated: the autouse fixture; toy: the toy stages)
    DISK_MESSAGES,
    TOY_UNITS,
    assert_nothing_written,
    cli,
    finished_toy,
    isolated,
    ledger,
    status_of,
    toy,
    toy_run,
)
from hardening_helpers import (
    error_line,
    files_under,
    last_error,
    small_tmpfs,
    snapshot,
    temp_leftovers,
    tiny_args,
    toy_cli_process,
    toy_config,
)
from pipeline.config import load_config
from pipeline.errors import ExitCode, UserError

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def plan_states(out: str) -> dict[str, str]:
    """`collapse plan` parsed: {stage/unit: state}."""
    states, stage = {}, None
    for line in out.splitlines():
        if m := re.match(r"(\w+): \d+ units", line):
            stage = m.group(1)
        elif m := re.match(r"  (\S+) +[0-9a-f]{12}  (\w+)$", line):
            states[f"{stage}/{m.group(1)}"] = m.group(2)
    return states


def replaced_stage(monkeypatch, name: str, run) -> None:
    """The toy stages, with `name`'s run() replaced (plan and version kept, so fingerprints stay)."""
    import pipeline.orchestration.runner as runner
    from toy_stages import STAGES

    base = STAGES[name]
    stage = SimpleNamespace(NAME=name, VERSION=base.VERSION, plan=base.plan, run=run)
    monkeypatch.setattr(runner, "default_stages", lambda: {**STAGES, name: stage})


# ================================================================ values checked when the config is read


PLAN_TIME = [
    # (id, --set items, the start of the one line)
    ("unknown-train-tracker", ["train.training.trackers=[bogus]"],
     "--set train.training.trackers: train.training.trackers: unknown tracker 'bogus'; valid values: tensorboard"),
    ("unknown-teacher-tracker", ["teacher.training.trackers=[tensorboard, tb]"],
     "--set teacher.training.trackers: teacher.training.trackers: unknown tracker 'tb'"),
    ("student-batch-over-a-mixture", ["train.training.batch_size=64"],
     "train.training.batch_size: 64 blocks per step, but mix g0-p0.5-n3000 holds 46 blocks of 64 tokens; "
     "valid: at most 46, or raise mix.token_budgets"),
    ("budget-under-half-a-block", ["mix.token_budgets=[10,3000]"],
     "mix.token_budgets: 10 tokens is less than half a block of 64 tokens"),
    ("epochs-infinite", ["teacher.training.epochs=.inf"],
     "--set teacher.training.epochs: teacher.training.epochs: Input should be a finite number"),
    ("epochs-astronomic", ["teacher.training.epochs=1e30"],
     "--set teacher.training.epochs: teacher.training.epochs: Input should be less than or equal to 10000"),
    ("tokens-astronomic", ["train.training.tokens=100000000000000000000"],
     "--set train.training.tokens: train.training.tokens: Input should be less than or equal to 100000000000000"),
    ("min-tokens-astronomic", ["train.training.min_tokens=100000000000000000000"],
     "train.training.min_tokens: Input should be less than or equal to 100000000000000"),
    ("generate-tokens-astronomic", ["generate.tokens=100000000000000000000"],
     "generate.tokens: Input should be less than or equal to 100000000000000"),
    ("budget-astronomic", ["mix.token_budgets=[3000,100000000000000000000]"],
     "mix.token_budgets: item 1 is 100000000000000000000; each token budget must be a positive number of tokens, "
     "at most 1e+14"),
    ("lr-nan", ["train.training.lr=.nan"], "train.training.lr: Input should be a finite number"),
    ("temperature-infinite", ["generate.temperature=.inf"], "generate.temperature: Input should be a finite number"),
    ("corpus-seed-negative", ["corpus.seed=-1"],
     "--set corpus.seed: corpus.seed: Input should be greater than or equal to 0 (got -1)"),
    ("reference-seed-negative", ["corpus.reference.seed=-3"], "corpus.reference.seed: Input should be greater than"),
    ("mix-seed-negative", ["mix.seed=-1"], "--set mix.seed: mix.seed: Input should be greater than or equal to 0"),
    ("generate-seed-negative", ["generate.seed=-1"], "generate.seed: Input should be greater than or equal to 0"),
    ("train-seed-negative", ["train.seeds=[0,-2]"], "train.seeds.1: Input should be greater than or equal to 0"),
    ("seed-too-large", ["corpus.seed=4294967296"], "corpus.seed: Input should be less than 4294967296"),
    ("seed-boolean", ["train.seeds=[true]"], "--set train.seeds: train.seeds: a boolean (true/false) is not a number"),
    ("batch-boolean", ["train.training.batch_size=true"],
     "train.training.batch_size: a boolean (true/false) is not a number; give a number"),
    ("title-boolean", ["report.title=false"], "report.title: Input should be a valid string (got False)"),
    ("pretrained-missing-path", ["teacher.model.pretrained=/nonexistent/model"],
     "--set teacher.model.pretrained: teacher.model.pretrained: no such directory; give an existing model "
     "directory, a .gguf file, gguf:PACKAGE or a hub id (got '/nonexistent/model')"),
    ("student-pretrained-missing", ["train.students.0.pretrained=./no/such/model"],
     "train.students.0.pretrained: no such directory"),
    ("tokenizer-path-missing", ["tokenizer.kind=pretrained", "tokenizer.path=/nonexistent/tokenizer"],
     "tokenizer.path: no such directory"),
]


@pytest.mark.parametrize("items, expected", [c[1:] for c in PLAN_TIME], ids=[c[0] for c in PLAN_TIME])
def test_a_value_no_unit_could_use_is_refused_by_plan(tmp_path, capsys, items, expected):
    rc, out, err = cli(capsys, "plan", *tiny_args(tmp_path, *items))
    assert rc == ExitCode.BAD_INPUT, out + err
    assert expected in error_line(err), err
    assert out == ""
    assert_nothing_written(tmp_path)


def test_a_tracker_that_is_not_installed_is_refused_by_plan(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aim" else real_find_spec(name, *a))
    rc, _, err = cli(capsys, "plan", *tiny_args(tmp_path, "teacher.training.trackers=[tensorboard, aim]"))
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err).startswith("--set teacher.training.trackers: teacher.training.trackers: aim is not "
                                      "installed (pip install aim), or remove it; valid values: tensorboard")


@pytest.mark.parametrize("items", [["train.training.trackers=[bogus]"], ["teacher.training.epochs=1e30"],
                                   ["mix.seed=-1"], ["train.training.batch_size=64"]],
                         ids=["tracker", "epochs", "seed", "batch"])
def test_run_refuses_them_before_any_unit_runs(tmp_path, capsys, items):
    rc, _, err = cli(capsys, "run", *tiny_args(tmp_path, *items), "--no-progress")
    assert rc == ExitCode.BAD_INPUT
    assert err.startswith("collapse: error: ") and err.count("\n") == 1, "refused before a unit logged a line"
    assert_nothing_written(tmp_path)


def test_a_hub_id_outside_the_offline_cache_is_refused_by_plan(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    rc, _, err = cli(capsys, "plan", *tiny_args(tmp_path, "teacher.model.pretrained=no-such-org/no-such-model"))
    assert rc == ExitCode.BAD_INPUT
    assert "teacher.model.pretrained: no such directory, and not in the local hub cache (HF_HUB_OFFLINE is set" in (
        error_line(err))
    assert_nothing_written(tmp_path)


def test_a_pretrained_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    rc, _, err = cli(capsys, "plan", *tiny_args(tmp_path, f"teacher.model.pretrained={tmp_path / 'weights.bin'}"))
    assert rc == ExitCode.BAD_INPUT
    assert "teacher.model.pretrained: a file, not a model directory" in error_line(err)


def test_yaml_1_1_booleans_stay_strings_where_a_string_is_expected(tmp_path):
    cfg = load_config(TINY, ["report.title=no", "corpus.streaming=yes", "train.training.compile=off"])
    assert cfg.report.title == "no" and cfg.corpus.streaming is True and cfg.train.training.compile == "off"
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {TINY}\nreport: {{title: off, theory_figures: no}}\nteacher: {{training: {{compile: on}}}}\n")
    cfg = load_config(path)
    assert cfg.report.title == "off" and cfg.report.theory_figures is False and cfg.teacher.training.compile == "on"
    assert load_config(TINY, ["report.theory_figures=false"]).report.theory_figures is False


def test_a_saved_config_keeps_a_string_that_reads_as_a_yaml_1_1_boolean(tmp_path, capsys, toy):
    rc, _, err = toy_run(tmp_path, capsys, None, "--set", "report.title=on", "--stages", "prepare")
    assert rc == 0, err
    assert load_config(tmp_path / "runs" / "toy" / "config.yaml").report.title == "on"


# ================================================================ a cut-short --stages, bad input mid-run


def test_stages_whose_inputs_neither_run_nor_are_done_fail_before_any_unit(tmp_path, capsys, toy):
    rc, _, err = toy_run(tmp_path, capsys, None, "--stages", "prepare,train")
    assert rc == ExitCode.BAD_INPUT
    assert last_error(err) == "unit train/p0.0-n100 needs mix/p0.0-n100, which is not done; run stage mix first"
    assert ledger(tmp_path) == [], "prepare must not run before the refusal"
    assert_nothing_written(tmp_path, "toy")


def test_stages_whose_missing_inputs_are_done_run(tmp_path, capsys, toy):
    assert toy_run(tmp_path, capsys, None, "--stages", "prepare,mix")[0] == 0
    rc, _, err = toy_run(tmp_path, capsys, None, "--stages", "train")
    assert rc == 0, err
    assert sorted(ledger(tmp_path)) == sorted(TOY_UNITS)


def _train_meets_bad_input(ctx):
    (ctx.out / "half.txt").write_text("written before the bad value was found")
    raise UserError("train.training.lr: planned bad input for the test")


def test_bad_input_found_mid_run_keeps_the_units_this_run_finished(tmp_path, capsys, monkeypatch, toy):
    with monkeypatch.context() as patched:
        replaced_stage(patched, "train", _train_meets_bad_input)
        rc, _, err = toy_run(tmp_path, capsys)
    assert rc == ExitCode.BAD_INPUT
    assert last_error(err) == "train.training.lr: planned bad input for the test"
    run_dir = tmp_path / "runs" / "toy"
    finished = [k for k in TOY_UNITS if not k.startswith("train/")]
    states = status_of(capsys, run_dir)
    assert {k: states[k] for k in finished} == dict.fromkeys(finished, "done"), states
    assert states["train/p0.0-n100"] == "pending", "no failure recorded for bad input"
    assert files_under(run_dir / "train") == [] and files_under(run_dir / ".collapse" / "work") == []
    before = len(ledger(tmp_path))
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert sorted(ledger(tmp_path)[before:]) == [k for k in sorted(TOY_UNITS) if k.startswith("train/")]


def test_bad_input_in_the_first_unit_of_a_new_run_still_leaves_nothing(tmp_path, capsys, monkeypatch, toy):
    def prepare_meets_bad_input(ctx):
        raise UserError("corpus.source: planned bad input for the test")

    replaced_stage(monkeypatch, "prepare", prepare_meets_bad_input)
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == ExitCode.BAD_INPUT and last_error(err) == "corpus.source: planned bad input for the test"
    assert_nothing_written(tmp_path, "toy")


# ================================================================ plan says what run will do


def test_plan_shows_the_units_downstream_of_a_damaged_unit_as_redone(tmp_path, capsys, toy):
    run_dir = finished_toy(tmp_path, capsys)
    (run_dir / "mix" / "p0.5-n100" / "part1.txt").write_text("x")
    before = snapshot(tmp_path / "runs")
    rc, out, err = cli(capsys, "plan", toy_config(tmp_path))
    assert rc == 0, err
    states = plan_states(out)
    assert states["mix/p0.5-n100"] == "damaged" and states["train/p0.5-n100"] == "redo", out
    assert [k for k, v in states.items() if v == "done"] == [k for k in TOY_UNITS if not k.endswith("p0.5-n100")]
    assert "train: 4 units (3 done, 1 to run)" in out
    assert snapshot(tmp_path / "runs") == before, "plan writes nothing"
    rc, out, err = cli(capsys, "status", str(run_dir))
    assert rc == 0, err
    rows = [line.split()[1] for line in out.splitlines() if line.strip().startswith("p0.5-n100")]
    assert rows == ["damaged", "redo"] and "== train: 3/4 done" in out and "== mix: 3/4 done" in out, out  # mix, train
    assert snapshot(tmp_path / "runs") == before, "status writes nothing"
    count = len(ledger(tmp_path))
    assert toy_run(tmp_path, capsys)[0] == 0
    assert sorted(ledger(tmp_path)[count:]) == ["mix/p0.5-n100", "train/p0.5-n100"], "run redoes what plan said"


# ================================================================ no traceback


@pytest.mark.parametrize("command", ["plan", "status"])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path, capsys, toy, command):
    """`collapse plan CONFIG | head -1`: stdout closed before the command writes (so the result never
    depends on how much fits the pipe's buffer)."""
    cfg = toy_config(tmp_path)
    if command == "status":
        finished_toy(tmp_path, capsys)
    proc = toy_cli_process(command, str(cfg) if command == "plan" else str(tmp_path / "runs" / "toy"))
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "", err
    assert proc.returncode == ExitCode.BROKEN_PIPE


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_runs_dir_that_is_a_file_is_one_line(tmp_path, capsys, toy, command, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    runs_dir = blocker if where == "file" else blocker / "runs"
    extra = ["--no-progress"] if command == "run" else []
    rc, out, err = cli(capsys, command, toy_config(tmp_path), "--set", f"runs_dir={runs_dir}", *extra)
    assert rc == ExitCode.BAD_INPUT
    assert err == (f"collapse: error: runs_dir: {blocker} is a file, not a directory; the run directory "
                   f"({runs_dir / 'toy'}) must be a directory or not exist yet\n")
    assert blocker.read_text() == "not a directory" and ledger(tmp_path) == []


@pytest.mark.parametrize("out_dir", ["figures", "figures/panels"], ids=["file", "below-a-file"])
def test_theory_out_that_is_a_file_is_one_line(tmp_path, capsys, out_dir):
    (tmp_path / "figures").write_text("not a directory")
    rc, out, err = cli(capsys, "theory", "--out", tmp_path / out_dir)
    assert rc == ExitCode.BAD_INPUT
    assert err == (f"collapse: error: --out {tmp_path / out_dir}: a file is in the way; give a directory for the "
                   "figures (created when missing)\n")
    assert out == "" and files_under(tmp_path) == ["figures"]


@pytest.mark.parametrize("option, value, expected", [
    ("--c2", "inf", "c2 must be finite and >= 0, got inf"),
    ("--noise-var", "-1", "noise_var must be finite and >= 0, got -1.0"),
    ("--fraction", "nan", "synthetic_fraction must be in [0, 1], got nan"),
])
def test_theory_states_the_valid_range_of_a_bad_number(tmp_path, capsys, option, value, expected):
    rc, out, err = cli(capsys, "theory", option, value, "--no-figures")
    assert rc == ExitCode.BAD_INPUT
    assert err == f"collapse: error: {expected}\n" and out == ""


# ================================================================ a full disk reported by safetensors


def _mix_saves_tensors(ctx):
    import torch
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(1 << 20)}, str(ctx.out / "model.safetensors"))  # 4 MiB


def _mix_meets_a_full_disk_in_safetensors(attempts: list[str]):
    def run(ctx):
        from safetensors import SafetensorError

        attempts.append(ctx.unit.key)
        (ctx.out / "part1.txt").write_text("first half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    return run


def _assert_full_disk_stopped_the_run(tmp_path: Path, err: str) -> None:
    run_dir = tmp_path / "runs" / "toy"
    assert last_error(err) == f"{run_dir}: {DISK_MESSAGES[errno.ENOSPC]}"
    assert not (run_dir / ".collapse" / "failed").exists(), "a full disk is not the unit's failure"
    assert (run_dir / "prepare" / "manifest.json").is_file(), "what finished before the disk filled stays"
    assert files_under(run_dir / "mix") == [] and files_under(run_dir / ".collapse" / "work") == []
    assert temp_leftovers(run_dir) == []


def test_a_full_disk_reported_by_safetensors_is_the_disk_error_line(tmp_path, capsys, monkeypatch, toy):
    attempts: list[str] = []
    replaced_stage(monkeypatch, "mix", _mix_meets_a_full_disk_in_safetensors(attempts))
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == ExitCode.BAD_INPUT, err
    _assert_full_disk_stopped_the_run(tmp_path, err)
    assert attempts == ["mix/p0.0-n100"], "the sweep stops: no unit after the full disk starts"


def test_a_real_full_disk_while_safetensors_writes(tmp_path, capsys, monkeypatch, toy):
    replaced_stage(monkeypatch, "mix", _mix_saves_tensors)
    with small_tmpfs(tmp_path / "runs", size="1m"):
        rc, _, err = toy_run(tmp_path, capsys)
        assert rc == ExitCode.BAD_INPUT, err
        _assert_full_disk_stopped_the_run(tmp_path, err)
