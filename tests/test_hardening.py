"""Bad input and damage, table by table: configs, corpora, CLI misuse, damaged and stale
artefacts, overlapping runs, read-only and full disks, Slurm values.

Every case asserts the exit code, the one line `collapse: error: ...` naming the key or file, and either
that nothing was written or that the damage was repaired; the damage cases then compare the repaired
run with an undamaged one (file by file). Runner-level cases use the toy stages of tests/toy_stages.py
through the real CLI (milliseconds each); pipeline-level ones use tests/configs/tiny.yaml with
`--stages` cut short. Disks: simulated faults (tests/hardening_helpers.py FaultyDisk) always, real
read-only bind mounts and a full tmpfs where the kernel allows mounting (else those skip).

A case that finds a real bug is marked xfail(strict=True), its reason saying what happens instead, until
the bug is fixed: it then turns into a failure (XPASS), so the marker must be removed with the fix.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest

from hardening_cli import (  # noqa: F401  (isolated: the autouse fixture; toy: the toy stages)
    DISK_MESSAGES,
    TOY_UNITS,
    _close_run_logs,
    assert_nothing_written,
    cli,
    finished_toy,
    isolated,
    ledger,
    status_of,
    toy,
    toy_run,
    undamaged_toy,
)
from hardening_helpers import (
    REPO,
    FaultyDisk,
    artefacts,
    error_line,
    last_error,
    files_under,
    fill_disk,
    hold_lock,
    read_only_mount,
    small_tmpfs,
    snapshot,
    temp_leftovers,
    tiny_args,
    toy_cli_process,
    toy_config,
    wait_for,
)
from pipeline.errors import ExitCode, UserError


# ================================================================ 1. configs
# tests/test_config.py holds ~35 bad-config cases; these are the ones it does not (and `plan`, not only `run`).

BAD_CONFIGS = [
    ("generation-twice", "generate: {generations: 2}\nteacher: {model: {finetune: full}}\nmix: {generations: [1, 1]}\n",
     [], "mix.generations: generation 1 is listed twice"),
    ("lora-moved", "teacher:\n  lora: {r: 8}\n", [], "bad.yaml: teacher.lora: this key moved; use teacher.model.lora"),
    ("trust-moved", "teacher:\n  trust_remote_code: true\n", [],
     "teacher.trust_remote_code: this key moved; use teacher.model.trust_remote_code"),
    ("warmup-moved-by-set", "name: x\n", ["train.warmup_fraction=0.1"],
     "--set train.warmup_fraction: train.warmup_fraction: this key moved; use train.training.warmup_fraction"),
    ("set-slurm-newline", "name: x\n", ['slurm.partition="gpu\\ntouch /tmp/x"'],
     "--set slurm.partition: slurm.partition: 'gpu\\ntouch /tmp/x' contains a newline"),
    ("slurm-stage-escape", 'slurm:\n  stages: {evaluate: {account: "a\\eb"}}\n', [], "stages.evaluate.account: "),
    ("slurm-accelerate-config", 'slurm:\n  accelerate_config: "x.yaml\\ntouch /tmp/x"\n', [], "slurm.accelerate_config: "),
    ("set-index-out-of-range", "mix: {token_budgets: [100, 200]}\n", ["mix.token_budgets.3=5"],
     "--set mix.token_budgets.3=5: mix.token_budgets is a list of 2; valid indices: 0..1"),
    ("comments-only", "# nothing but a comment\n\n", [], "bad.yaml: the config is empty"),
    ("generation-longer-than-context", "packing: {block_size: 64}\ngenerate: {max_new_tokens: 96}\n", [],
     "generate.max_new_tokens: 96 new tokens after a 1-token prompt do not fit the scratch teacher's context of 64"),
    ("base-loop", "base: bad.yaml\nname: x\n", [], "bad.yaml: base chain loops back to itself"),
]


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("text, sets, expected", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(tmp_path, capsys, command, text, sets, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc, out, err = cli(capsys, command, path, *[a for s in sets for a in ("--set", s)])
    assert rc == ExitCode.BAD_INPUT
    assert expected in error_line(err), err
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_config_that_is_not_utf8_names_the_file_and_byte(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    rc, _, err = cli(capsys, "run", "latin1.yaml")
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err) == "latin1.yaml: not UTF-8 text (byte 9)"
    assert not (tmp_path / "runs").exists()


# ================================================================ 2. corpora and runtime input


def test_files_glob_matching_nothing_is_a_plan_time_error(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    for command in ("plan", "run"):
        rc, _, err = cli(capsys, command, *tiny_args(tmp_path, "corpus.source=files:corpus/*.txt"))
        assert rc == ExitCode.BAD_INPUT
        assert error_line(err) == ("corpus.source: files:corpus/*.txt matches no files; "
                                   "give a glob of .txt, .jsonl or .parquet files")
    assert_nothing_written(tmp_path)


def test_files_corpus_with_an_unsupported_extension(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.csv").write_text("text\nhello\n")
    rc, _, err = cli(capsys, "run", *tiny_args(tmp_path, "corpus.source=files:corpus/*"), "--stages", "prepare")
    assert rc == ExitCode.BAD_INPUT
    assert "corpus/a.csv has extension '.csv'; valid: .txt, .jsonl, .parquet" in last_error(err)
    assert_nothing_written(tmp_path)


def _text_corpus(folder: Path, documents: int = 120, seed: int = 0) -> None:
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(3):
        blocks = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(documents // 3)]
        (folder / f"part{f}.txt").write_text("\n\n".join(blocks) + "\n")


def test_a_non_utf8_corpus_file_is_named_and_a_new_run_leaves_nothing(tmp_path, capsys):
    _text_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "part1.txt").write_bytes(b"caf\xe9 au lait\n\nmore text\n")
    rc, _, err = cli(capsys, "run", *tiny_args(tmp_path, "corpus.source=files:corpus/*.txt"), "--stages", "prepare")
    assert rc == ExitCode.BAD_INPUT
    line = last_error(err)
    assert "corpus/part1.txt" in line and "UTF-8" in line, line
    assert_nothing_written(tmp_path)


def test_a_non_utf8_corpus_in_an_existing_run_leaves_that_run_as_it_was(tmp_path, capsys):
    """Prepare redone on an edited corpus hits bad input: no work dir, log or failure record remains."""
    _text_corpus(tmp_path / "corpus")
    args = tiny_args(tmp_path, "corpus.source=files:corpus/*.txt")
    assert cli(capsys, "run", *args, "--stages", "prepare")[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "logs" / "prepare" / "prepare.log").unlink()  # so that we can see whether a new one is left
    before = snapshot(run_dir)
    (tmp_path / "corpus" / "part2.txt").write_bytes(b"na\xefve\n")
    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare")
    assert rc == ExitCode.BAD_INPUT
    assert "corpus/part2.txt" in last_error(err)
    after = snapshot(run_dir)
    new = sorted(set(after) - set(before))
    assert not [p for p in new if not p.startswith(".collapse/locks")], f"left behind: {new}"
    kept = lambda snap: {k: v for k, v in snap.items()  # noqa: E731  files only: a created-then-removed log touches dirs
                         if v[0] == "file" and not k.startswith(("logs/collapse.log", ".collapse"))}
    assert kept(after) == kept(before)


def test_editing_a_files_corpus_makes_prepare_stale_and_the_rerun_matches_a_fresh_run(tmp_path, capsys):
    _text_corpus(tmp_path / "corpus")
    args = tiny_args(tmp_path, "corpus.source=files:corpus/*.txt")
    assert cli(capsys, "run", *args, "--stages", "prepare")[0] == 0
    rc, out, _ = cli(capsys, "plan", *args)
    assert rc == 0 and re.search(r"^  prepare +[0-9a-f]{12}  done$", out, re.M), out
    _text_corpus(tmp_path / "corpus", seed=1)  # same names, other text
    rc, out, _ = cli(capsys, "plan", *args)
    assert rc == 0 and re.search(r"^  prepare +[0-9a-f]{12}  pending$", out, re.M), out
    assert cli(capsys, "run", *args, "--stages", "prepare")[0] == 0
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "corpus", fresh / "corpus")
    os.chdir(fresh)
    assert cli(capsys, "run", *tiny_args(fresh, "corpus.source=files:corpus/*.txt"), "--stages", "prepare")[0] == 0
    assert artefacts(tmp_path / "runs" / "tiny") == artefacts(fresh / "runs" / "tiny")


def test_a_budget_larger_than_the_corpus_stops_right_after_prepare(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", *tiny_args(tmp_path, "mix.synthetic_fractions=[0.0]",
                                               "mix.token_budgets=[3000,5000000]"), "--no-progress")
    assert rc == ExitCode.BAD_INPUT
    line = last_error(err)
    assert "mix.token_budgets" in line and "5000000" in line.replace(",", ""), line
    assert "teacher g0" not in err, "no teacher unit may start before the budgets are checked"
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "prepare" / "manifest.json").is_file(), "a later unit's bad input keeps finished units"
    assert [d.name for d in run_dir.iterdir() if not d.name.startswith((".", "logs", "config"))] == ["prepare"]


def test_generate_tokens_too_small_for_the_mixtures_is_a_plan_time_error(tmp_path, capsys):
    for command in ("plan", "run"):
        rc, _, err = cli(capsys, command, *tiny_args(tmp_path, "generate.tokens=2000"))
        assert rc == ExitCode.BAD_INPUT
        line = error_line(err)
        assert line.startswith("generate.tokens: 2,000 ") and "mix g0-p1-n6000" in line, line
    assert_nothing_written(tmp_path)


def test_a_generate_corpus_with_no_block_is_one_line_naming_generate_tokens(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", *tiny_args(tmp_path, "generate.tokens=1", "mix.synthetic_fractions=[0.0]"),
                     "--stages", "prepare,teacher,generate", "--no-progress")
    assert rc == ExitCode.BAD_INPUT
    line = last_error(err)
    assert line.startswith("generate.tokens: ") and "raise generate.tokens" in line, line
    states = status_of(capsys, tmp_path / "runs" / "tiny")
    assert states.pop("generate/g0") == "pending", "the corpus unit that met the bad input left nothing"
    assert {k: v for k, v in states.items() if k.split("/")[0] in ("prepare", "teacher", "generate")} == {
        "prepare/prepare": "done", "teacher/g0": "done", "generate/g0-s000": "done", "generate/g0-s001": "done"}


def _user_error_stage(base):
    def run(ctx):
        (ctx.out / "half.txt").write_text("written before the bad value was found")
        raise UserError("mix.seed: planned bad input for the test")

    return SimpleNamespace(NAME="mix", VERSION=base.VERSION, plan=base.plan, run=run)


def test_bad_input_in_a_unit_of_an_existing_run_leaves_no_work_dir_log_or_failure(tmp_path, capsys, monkeypatch, toy):
    import pipeline.orchestration.runner as runner
    from toy_stages import STAGES

    cfg = toy_config(tmp_path)
    assert cli(capsys, "run", cfg, "--stages", "prepare")[0] == 0
    run_dir = tmp_path / "runs" / "toy"
    before = set(files_under(run_dir))
    monkeypatch.setattr(runner, "default_stages", lambda: {**STAGES, "mix": _user_error_stage(STAGES["mix"])})
    rc, _, err = toy_run(tmp_path, capsys, cfg)
    assert rc == ExitCode.BAD_INPUT
    assert last_error(err) == "mix.seed: planned bad input for the test"
    left = sorted(set(files_under(run_dir)) - before - {".collapse/locks/mix/p0.0-n100.lock"})
    assert left == [], f"left behind: {left}"
    assert not (run_dir / ".collapse" / "work" / "mix").exists() and not (run_dir / ".collapse" / "failed").exists()
    assert (run_dir / "prepare" / "manifest.json").is_file(), "finished units of the run stay"


def test_bad_input_in_a_unit_of_a_new_run_keeps_the_units_it_finished(tmp_path, capsys, monkeypatch, toy):
    import pipeline.orchestration.runner as runner
    from toy_stages import STAGES

    monkeypatch.setattr(runner, "default_stages", lambda: {**STAGES, "mix": _user_error_stage(STAGES["mix"])})
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == ExitCode.BAD_INPUT
    assert last_error(err) == "mix.seed: planned bad input for the test"
    run_dir = tmp_path / "runs" / "toy"
    assert (run_dir / "prepare" / "manifest.json").is_file() and (run_dir / "config.yaml").is_file()
    assert not (run_dir / "mix").exists() and files_under(run_dir / ".collapse" / "work") == []


# ================================================================ 3. CLI misuse


CLI_MISUSE = [
    ("empty-stages", ["run", "{cfg}", "--stages", ","], "--stages ,: unknown stage (empty); valid: prepare, teacher"),
    ("unknown-force", ["run", "{cfg}", "--force", "mix,distill"], "--force mix,distill: unknown stage distill; valid:"),
    ("unknown-unit", ["stage", "mix", "{cfg}", "--unit", "p0.7-n100"],
     "--unit p0.7-n100: stage mix has no such unit; valid: p0.0-n100, p0.0-n200, p0.5-n100, p0.5-n200"),
    ("status-not-a-run", ["status", "runs/nowhere"], "runs/nowhere: not a run directory (no config.yaml)"),
    ("verify-not-a-run", ["verify", "{tmp}"], "not a run directory (no config.yaml)"),
    ("config-is-a-directory", ["plan", "{tmp}"], ": config file not found"),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CLI_MISUSE], ids=[c[0] for c in CLI_MISUSE])
def test_cli_misuse(tmp_path, capsys, toy, argv, expected):
    cfg = toy_config(tmp_path)
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in argv]
    rc, out, err = cli(capsys, *argv)
    assert rc == ExitCode.BAD_INPUT
    assert expected in error_line(err), err
    assert files_under(tmp_path / "runs") == [] and ledger(tmp_path) == []


def test_an_unknown_flag_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, toy):
    rc, _, err = cli(capsys, "run", toy_config(tmp_path), "--froce", "mix")
    assert rc == 2
    assert err.strip().splitlines()[-1].endswith("unrecognized arguments: --froce mix"), err
    assert files_under(tmp_path / "runs") == []


def test_running_a_stage_whose_inputs_were_never_run_writes_nothing(tmp_path, capsys, toy):
    rc, _, err = toy_run(tmp_path, capsys, None, "--stages", "mix,train")
    assert rc == ExitCode.BAD_INPUT
    assert last_error(err) == "unit mix/p0.0-n100 needs prepare/prepare, which is not done; run stage prepare first"
    assert_nothing_written(tmp_path, "toy")
    assert ledger(tmp_path) == []


def test_stage_whose_input_is_not_done_writes_nothing(tmp_path, capsys, toy):
    rc, _, err = cli(capsys, "stage", "train", toy_config(tmp_path), "--unit", "p0.5-n100")
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err) == "unit train/p0.5-n100 needs mix/p0.5-n100, which is not done; run stage mix first"
    assert not (tmp_path / "runs" / "toy").exists(), files_under(tmp_path / "runs")


def test_an_all_done_run_writes_nothing(tmp_path, capsys, toy):
    run_dir = finished_toy(tmp_path, capsys)
    before = snapshot(tmp_path / "runs")
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0 and "all 9 units done" in err
    assert snapshot(tmp_path / "runs") == before, "an all-done run must not touch config.yaml, logs or locks"
    assert ledger(tmp_path) == sorted(TOY_UNITS, key=ledger(tmp_path).index)
    assert (run_dir / "config.yaml").is_file()


def test_plan_writes_nothing(tmp_path, capsys):
    rc, out, _ = cli(capsys, "plan", *tiny_args(tmp_path))
    assert rc == 0 and "report: 1 units (0 done, 1 to run)" in out
    assert not (tmp_path / "runs").exists()


# ================================================================ 4. damaged and stale artefacts (toy stages)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3])


def _flip_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = [
    # (id, unit dir, what to do to it, units redone by `collapse run`)
    ("mix-file-truncated", "mix/p0.5-n100", lambda d: _truncate(d / "part1.txt"), ["mix/p0.5-n100", "train/p0.5-n100"]),
    ("mix-file-deleted", "mix/p0.0-n200", lambda d: (d / "part2.txt").unlink(), ["mix/p0.0-n200", "train/p0.0-n200"]),
    ("prepare-file-deleted", "prepare", lambda d: (d / "corpus.txt").unlink(), TOY_UNITS),
    ("train-file-grown", "train/p0.0-n100", lambda d: (d / "part2.txt").write_text("second half, and more"),
     ["train/p0.0-n100"]),
    ("mix-unit-dir-deleted", "mix/p0.5-n200", shutil.rmtree, ["mix/p0.5-n200"]),
]


@pytest.mark.parametrize("unit, damage, redone", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_damaged_unit_is_redone_with_its_dependents_and_matches_an_undamaged_run(
        tmp_path, capsys, monkeypatch, toy, unit, damage, redone):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = finished_toy(tmp_path, capsys)
    damage(run_dir / unit)
    key = unit if "/" in unit else f"{unit}/{unit}"
    if (run_dir / unit).is_dir():
        assert status_of(capsys, run_dir)[key] == "damaged"
    before = len(ledger(tmp_path))
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert sorted(ledger(tmp_path)[before:]) == sorted(redone)
    if (run_dir / unit).is_dir() and unit != "mix/p0.5-n200":
        assert f"unit {key} is damaged: " in err and "it is redone with the units that read it" in err
    assert artefacts(run_dir) == reference
    assert set(status_of(capsys, run_dir).values()) == {"done"}


BAD_MANIFESTS = [("list", "[1, 2]\n"), ("null", "null\n"), ("string", '"done"\n'), ("damaged", '{"fingerprint": "ab'),
                 ("empty-object", "{}\n"), ("not-utf8", b"\xff\xfe{}")]


@pytest.mark.parametrize("content", [c[1] for c in BAD_MANIFESTS], ids=[c[0] for c in BAD_MANIFESTS])
def test_a_manifest_that_is_not_a_json_object_means_not_done(tmp_path, capsys, monkeypatch, toy, content):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = finished_toy(tmp_path, capsys)
    manifest = run_dir / "mix" / "p0.5-n100" / "manifest.json"
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert status_of(capsys, run_dir)["mix/p0.5-n100"] == "pending"
    rc, out, err = cli(capsys, "verify", run_dir)
    assert rc == 0 and "9 units checked, 0 damaged" in out, out + err
    before = len(ledger(tmp_path))
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert ledger(tmp_path)[before:] == ["mix/p0.5-n100"], "same output, same fingerprint: train stays done"
    assert artefacts(run_dir) == reference


def test_same_size_damage_is_found_by_verify_and_repaired(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = finished_toy(tmp_path, capsys)
    _flip_same_size(run_dir / "prepare" / "part1.txt")
    _flip_same_size(run_dir / "train" / "p0.5-n200" / "part2.txt")
    rc, out, err = cli(capsys, "verify", run_dir)
    assert rc == ExitCode.FAILED
    assert "9 units checked, 2 damaged: prepare/prepare, train/p0.5-n200" in out
    assert "unit prepare/prepare is damaged: part1.txt has other bytes than when it was written (sha256 differs)" in err
    assert len(ledger(tmp_path)) == 9, "verify without --repair redoes nothing"
    rc, out, err = cli(capsys, "verify", run_dir, "--repair")
    assert rc == 0, err
    assert sorted(ledger(tmp_path)[9:]) == sorted(TOY_UNITS), "prepare is upstream of everything"
    assert artefacts(run_dir) == reference
    rc, out, _ = cli(capsys, "verify", run_dir)
    assert rc == 0 and "9 units checked, 0 damaged" in out


def test_damage_upstream_and_downstream_redoes_each_unit_once(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = finished_toy(tmp_path, capsys)
    _truncate(run_dir / "mix" / "p0.0-n100" / "part2.txt")
    (run_dir / "train" / "p0.0-n100" / "part1.txt").unlink()
    _truncate(run_dir / "train" / "p0.5-n100" / "part1.txt")
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert sorted(ledger(tmp_path)[9:]) == ["mix/p0.0-n100", "train/p0.0-n100", "train/p0.5-n100"]
    assert artefacts(run_dir) == reference


def test_a_damaged_failure_record_and_lock_file_are_ignored(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = tmp_path / "runs" / "toy"
    monkeypatch.setenv("TOY_FAIL_UNIT", "train/p0.5-n200")
    rc, _, _ = toy_run(tmp_path, capsys)
    assert rc == ExitCode.FAILED
    assert status_of(capsys, run_dir)["train/p0.5-n200"] == "failed"
    monkeypatch.delenv("TOY_FAIL_UNIT")
    (run_dir / ".collapse" / "failed" / "train" / "p0.5-n200.json").write_text("[")
    (run_dir / ".collapse" / "locks" / "train" / "p0.5-n200.lock").write_bytes(b"\x00garbage")
    assert status_of(capsys, run_dir)["train/p0.5-n200"] == "pending"
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert artefacts(run_dir) == reference
    assert not (run_dir / ".collapse" / "failed" / "train" / "p0.5-n200.json").exists()


def test_a_stale_work_dir_of_an_older_fingerprint_is_removed(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = finished_toy(tmp_path, capsys)
    stale = run_dir / ".collapse" / "work" / "mix" / "p0.5-n100.0123456789ab"
    stale.mkdir(parents=True)
    (stale / "part1.txt").write_text("from an older config")
    _truncate(run_dir / "mix" / "p0.5-n100" / "part1.txt")
    assert toy_run(tmp_path, capsys)[0] == 0
    assert not stale.exists()
    assert files_under(run_dir / ".collapse" / "work") == []
    assert artefacts(run_dir) == reference


# ---------------------------------------------------------------- damaged artefacts of the real stages


def test_real_prepare_file_truncated_is_redone_byte_identical(tmp_path, capsys):
    args = tiny_args(tmp_path)
    assert cli(capsys, "run", *args, "--stages", "prepare")[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = artefacts(run_dir)
    arrow = run_dir / "prepare" / "train" / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:1000])
    assert status_of(capsys, run_dir)["prepare/prepare"] == "damaged"
    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare", "--no-progress")
    assert rc == 0, err
    assert "unit prepare/prepare is damaged: train/data-00000-of-00001.arrow has 1,000 bytes" in err
    assert artefacts(run_dir) == before


def test_real_mix_blocks_deleted_are_redone_byte_identical(tmp_path, capsys):
    args = tiny_args(tmp_path, "mix.synthetic_fractions=[0.0]", "mix.token_budgets=[3000]")
    assert cli(capsys, "run", *args, "--stages", "prepare,mix", "--no-progress")[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = artefacts(run_dir)
    shutil.rmtree(run_dir / "mix" / "g0-p0-n3000" / "blocks")
    assert status_of(capsys, run_dir)["mix/g0-p0-n3000"] == "damaged"
    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare,mix", "--no-progress")
    assert rc == 0, err
    assert "unit mix/g0-p0-n3000 is damaged: blocks/" in err and " is missing" in err
    assert artefacts(run_dir) == before


def test_real_tokenizer_same_size_damage_verify_and_repair(tmp_path, capsys):
    args = tiny_args(tmp_path)
    assert cli(capsys, "run", *args, "--stages", "prepare")[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = artefacts(run_dir)
    _flip_same_size(run_dir / "prepare" / "tokenizer" / "tokenizer.json")
    rc, out, err = cli(capsys, "verify", run_dir)
    assert rc == ExitCode.FAILED and ", 1 damaged: prepare/prepare" in out
    assert "tokenizer/tokenizer.json has other bytes than when it was written" in err
    rc, out, err = cli(capsys, "verify", run_dir, "--repair")
    assert rc == 0, err
    assert artefacts(run_dir) == before


# ================================================================ 5. overlapping runs


def test_overlapping_runs_wait_for_each_other_and_both_finish(tmp_path, capsys, toy):
    """The issue's case: a second `collapse run` while the first works; both exit 0, nothing runs twice."""
    cfg = toy_config(tmp_path)
    mark = tmp_path / "slow-started"
    first = toy_cli_process("run", str(cfg), "--no-progress", env={
        "TOY_SLOW_UNIT": "prepare/prepare", "TOY_SLOW_MARK": str(mark), "TOY_SLOW_SECONDS": "1.5"})
    wait_for(mark, first)
    rc, _, err = toy_run(tmp_path, capsys, cfg)
    out1, err1 = first.communicate(timeout=120)
    assert rc == 0, err
    assert first.returncode == 0, err1
    assert re.search(rf"unit prepare/prepare is being run by pid {first.pid} on \S+; waiting for it", err), err
    assert sorted(ledger(tmp_path)) == sorted(TOY_UNITS), "every unit ran exactly once"
    assert set(status_of(capsys, tmp_path / "runs" / "toy").values()) == {"done"}


def test_a_waiting_run_takes_over_when_the_holder_is_killed(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    cfg = toy_config(tmp_path)
    mark = tmp_path / "slow-started"
    first = toy_cli_process("run", str(cfg), "--no-progress", env={
        "TOY_SLOW_UNIT": "mix/p0.5-n100", "TOY_SLOW_MARK": str(mark), "TOY_SLOW_SECONDS": "600"})
    wait_for(mark, first)
    second = toy_cli_process("run", str(cfg), "--no-progress")
    waiting = ""
    while "waiting for it" not in waiting:  # read the second run's log until it says it waits
        line = second.stderr.readline()
        assert line, f"second run ended without waiting: {waiting}"
        waiting += line
    assert f"unit mix/p0.5-n100 is being run by pid {first.pid}" in waiting
    first.send_signal(signal.SIGKILL)
    first.wait()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, waiting + err
    assert ledger(tmp_path).count("mix/p0.5-n100") == 2, "started by the killed run, redone by the waiting one"
    assert all(ledger(tmp_path).count(k) == 1 for k in TOY_UNITS if k != "mix/p0.5-n100")
    assert artefacts(tmp_path / "runs" / "toy") == reference


def test_status_says_running_and_stage_exits_3_while_another_process_holds_the_lock(tmp_path, capsys, toy):
    cfg = toy_config(tmp_path)
    assert cli(capsys, "run", cfg, "--stages", "prepare")[0] == 0
    run_dir = tmp_path / "runs" / "toy"
    mark, release = tmp_path / "held", tmp_path / "release"
    holder = hold_lock(run_dir / ".collapse" / "locks" / "mix" / "p0.5-n100.lock", mark, release)
    try:
        wait_for(mark, holder)
        assert status_of(capsys, run_dir)["mix/p0.5-n100"] == "running"
        rc, _, err = cli(capsys, "stage", "mix", cfg, "--unit", "p0.5-n100")
        assert rc == ExitCode.NOT_DONE, err
        assert "mix/p0.5-n100: locked" in err
        assert not (run_dir / "mix").exists() and "mix/p0.5-n100" not in ledger(tmp_path)
    finally:
        release.touch()
        holder.wait(60)
    assert status_of(capsys, run_dir)["mix/p0.5-n100"] == "pending", "a released lock is not 'running'"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    cfg = toy_config(tmp_path)
    mark, release = tmp_path / "held", tmp_path / "release"
    lock = tmp_path / "runs" / "toy" / ".collapse" / "locks" / "prepare" / "prepare.lock"
    holder = hold_lock(lock, mark, release)
    wait_for(mark, holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid, "the dead holder's record is still in the file"
    rc, _, err = toy_run(tmp_path, capsys, cfg)
    assert rc == 0, err
    assert "waiting for it" not in err
    assert artefacts(tmp_path / "runs" / "toy") == reference


# ================================================================ 6. read-only and full disks


@pytest.mark.parametrize("code", list(DISK_MESSAGES), ids=[errno.errorcode[c] for c in DISK_MESSAGES])
def test_a_disk_fault_on_the_first_write_is_one_line_and_leaves_no_file(tmp_path, capsys, monkeypatch, toy, code):
    cfg = toy_config(tmp_path)
    disk = FaultyDisk(tmp_path / "runs", code, only="config.yaml")
    with disk.active(monkeypatch):
        rc, _, err = toy_run(tmp_path, capsys, cfg)
    assert rc == ExitCode.BAD_INPUT
    line = error_line(err)
    # names the file it could not write (config.yaml, or the temp file it is written through), and the fix
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'runs' / 'toy'))}/(\.tmp-)?config\.yaml(\.\w+)?: "
                        rf"{re.escape(DISK_MESSAGES[code])}", line), line
    assert disk.attempts, "the fault was never hit"
    assert files_under(tmp_path / "runs") == [] and temp_leftovers(tmp_path / "runs") == []
    assert ledger(tmp_path) == []


def test_a_read_only_runs_dir_with_every_unit_done_runs_and_writes_nothing(tmp_path, capsys, monkeypatch, toy):
    finished_toy(tmp_path, capsys)
    before = snapshot(tmp_path / "runs")
    disk = FaultyDisk(tmp_path / "runs", errno.EROFS)
    with disk.active(monkeypatch):
        rc, _, err = toy_run(tmp_path, capsys)
        assert rc == 0, err
        rc, out, err = cli(capsys, "verify", tmp_path / "runs" / "toy")
        assert rc == 0 and "9 units checked, 0 damaged" in out, err
        assert set(status_of(capsys, tmp_path / "runs" / "toy").values()) == {"done"}
    assert disk.attempts == [], f"tried to write {disk.attempts}"
    assert snapshot(tmp_path / "runs") == before


def test_a_read_only_runs_dir_with_work_to_do_is_one_line(tmp_path, capsys, monkeypatch, toy):
    finished_toy(tmp_path, capsys)
    before = snapshot(tmp_path / "runs")
    with FaultyDisk(tmp_path / "runs", errno.EROFS).active(monkeypatch):
        rc, _, err = toy_run(tmp_path, capsys, None, "--set", "train.training.lr=0.5")
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err).endswith(DISK_MESSAGES[errno.EROFS])
    assert snapshot(tmp_path / "runs") == before and len(ledger(tmp_path)) == 9


def test_status_of_a_read_only_run_with_a_failed_unit(tmp_path, capsys, monkeypatch, toy):
    monkeypatch.setenv("TOY_FAIL_UNIT", "train/p0.5-n200")
    assert toy_run(tmp_path, capsys)[0] == ExitCode.FAILED
    with FaultyDisk(tmp_path / "runs", errno.EROFS).active(monkeypatch):
        rc, out, err = cli(capsys, "status", tmp_path / "runs" / "toy")
    assert rc == 0, err
    assert re.search(r"p0.5-n200 +failed +RuntimeError: planned failure for the test", out), out


def test_a_real_read_only_mount(tmp_path, capsys, toy):
    finished_toy(tmp_path, capsys)
    runs = tmp_path / "runs"
    before = snapshot(runs)
    with read_only_mount(runs):
        rc, _, err = toy_run(tmp_path, capsys)
        assert rc == 0 and "all 9 units done" in err, err
        rc, _, err = toy_run(tmp_path, capsys, None, "--set", "train.training.lr=0.5")
        assert rc == ExitCode.BAD_INPUT
        assert error_line(err).endswith(DISK_MESSAGES[errno.EROFS])
    assert snapshot(runs) == before


def test_disk_full_while_a_unit_finishes_is_one_line_exit_2(tmp_path, capsys, monkeypatch, toy):
    with FaultyDisk(tmp_path / "runs", errno.ENOSPC, only="manifest.json").active(monkeypatch):
        rc, _, err = toy_run(tmp_path, capsys)
    assert rc == ExitCode.BAD_INPUT, err
    assert last_error(err).endswith(DISK_MESSAGES[errno.ENOSPC])


@pytest.mark.parametrize("only", ["manifest.json", os.sep + ".collapse" + os.sep], ids=["manifest", "runner-state"])
def test_disk_full_leaves_no_temp_file_and_a_rerun_matches_an_undamaged_run(tmp_path, capsys, monkeypatch, toy, only):
    """Disk full at a unit's manifest (and, second case, at every runner file: work dirs, failure records)."""
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    run_dir = tmp_path / "runs" / "toy"
    disk = FaultyDisk(tmp_path / "runs", errno.ENOSPC, only=only)
    with disk.active(monkeypatch):
        rc, _, err = toy_run(tmp_path, capsys)
    assert rc != 0 and disk.attempts
    assert "No space left on device" in err
    assert temp_leftovers(run_dir) == [], "no .tmp may survive a disk-full"
    assert not (run_dir / "prepare").exists(), "a unit whose manifest could not be written is not in place"
    rc, _, err = toy_run(tmp_path, capsys)
    assert rc == 0, err
    assert artefacts(run_dir) == reference
    assert temp_leftovers(run_dir) == [] and files_under(run_dir / ".collapse" / "failed") == []


def test_a_real_full_disk(tmp_path, capsys, monkeypatch, toy):
    reference = undamaged_toy(tmp_path, capsys, monkeypatch)
    runs = tmp_path / "runs"
    with small_tmpfs(runs):
        rc, _, err = toy_run(tmp_path, capsys, None, "--stages", "prepare")
        assert rc == 0, err
        filler = fill_disk(runs)
        rc, _, err = toy_run(tmp_path, capsys)
        assert rc == ExitCode.BAD_INPUT, err
        assert last_error(err).endswith(DISK_MESSAGES[errno.ENOSPC])
        assert temp_leftovers(runs / "toy") == []
        filler.unlink()
        (runs / "filler2").unlink(missing_ok=True)
        rc, _, err = toy_run(tmp_path, capsys)
        assert rc == 0, err
        assert artefacts(runs / "toy") == reference
        _close_run_logs()


# ================================================================ 7. Slurm values


SLURM_VALUES = [
    ("partition-newline-set", [], ['slurm.partition="gpu\\ntouch /tmp/x"'], "--set slurm.partition: slurm.partition: "),
    ("stage-override-newline", ['  stages: {train: {partition: "gpu\\ntouch /tmp/x"}}'], [], "stages.train.partition"),
    ("extra-carriage-return", ['  extra: ["--exclusive", "--comment=a\\rtouch /tmp/x"]'], [], "slurm.extra: "),
    ("setup-newline", ['  setup: ["module load cuda", "true\\ntouch /tmp/x"]'], [], "slurm.setup: "),
    ("time-escape", ['  time: "01:00:00\\e[2J"'], [], "slurm.time: "),
    ("mem-delete", ['  mem: "8G\\x7f"'], [], "slurm.mem: "),
]


@pytest.mark.parametrize("lines, sets, expected", [c[1:] for c in SLURM_VALUES], ids=[c[0] for c in SLURM_VALUES])
def test_slurm_value_with_a_control_character(tmp_path, capsys, lines, sets, expected):
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(f"base: {REPO / 'tests' / 'configs' / 'tiny.yaml'}\nruns_dir: {tmp_path / 'runs'}\n"
                   + ("slurm:\n" + "\n".join(lines) + "\n" if lines else ""))
    rc, out, err = cli(capsys, "submit", cfg, "--dry-run", *[a for s in sets for a in ("--set", s)])
    assert rc == ExitCode.BAD_INPUT
    line = error_line(err)
    assert expected in line and "contains a newline or control character" in line, line
    assert not (tmp_path / "runs").exists(), "no script, no config.yaml"


def test_a_unicode_line_separator_in_a_slurm_value_writes_nothing(tmp_path, capsys):
    rc, _, err = cli(capsys, "submit", *tiny_args(tmp_path, 'slurm.partition="gpu\\u2028touch /tmp/x"'), "--dry-run")
    assert rc == ExitCode.BAD_INPUT
    # refused where the config is read (the validator refuses what the renderer does), naming the --set item
    assert error_line(err).startswith("--set slurm.partition: slurm.partition: 'gpu\\u2028touch /tmp/x' contains a "
                                      "newline or control character ('\\u2028')")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("char", ["\\x85", "\\u2028"], ids=["NEL", "LINE-SEPARATOR"])
def test_plan_refuses_every_slurm_control_character_the_renderer_refuses(tmp_path, capsys, char):
    rc, _, err = cli(capsys, "plan", *tiny_args(tmp_path, f'slurm.qos="normal{char}touch /tmp/x"'))
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err).startswith("--set slurm.qos: slurm.qos: ")


def test_submit_dry_run_from_another_directory_finds_the_templates(tmp_path, capsys):
    rc, out, err = cli(capsys, "submit", *tiny_args(tmp_path), "--dry-run")
    assert rc == 0, err
    assert "nothing submitted" in out


def test_odd_but_valid_slurm_values_stay_inside_their_sbatch_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # a cwd with slurm/ (whose templates come first); writes go to tmp_path/runs
    pwned = tmp_path / "pwned"
    sets = [f"slurm.partition=gpu;touch {pwned}", f"slurm.account=$(touch {pwned})", "slurm.qos=my qos",
            f"slurm.extra=['--comment=a `touch {pwned}`']", "slurm.stages.train.gpus_per_node=2"]
    rc, out, err = cli(capsys, "submit", *tiny_args(tmp_path, *sets), "--dry-run")
    assert rc == 0, err
    scripts = sorted((tmp_path / "runs" / "tiny" / "slurm" / "dry-run").glob("*.sbatch"))
    assert {p.name.split("-", 1)[1] for p in scripts} == {f"{s}.sbatch" for s in (
        "prepare", "teacher", "generate", "mix", "train", "evaluate", "fit", "report")}
    for script in scripts:
        lines = script.read_text().splitlines()
        first = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#"))
        header = lines[:first]
        assert not any("touch" in ln and not ln.startswith("#SBATCH ") for ln in header), script.name
        assert f"#SBATCH --partition='gpu;touch {pwned}'" in header
        assert f"#SBATCH --account='$(touch {pwned})'" in header and "#SBATCH --qos='my qos'" in header
        assert not any(ln.startswith("#SBATCH") for ln in lines[first:]), f"{script.name}: #SBATCH after a command"
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert not pwned.exists()


def test_the_renderer_refuses_a_control_character_the_config_never_saw(tmp_path):
    """Render-time defence, for values that bypass the config (a config object built in code)."""
    from pipeline.orchestration.launchers.slurm_templates import TaskShape, sbatch_options

    resources = SimpleNamespace(partition=None, account=None, qos=None, time="01:00:00", nodes=1, gpus_per_node=0,
                                cpus_per_task=2, mem="8G", extra=["--exclusive", "--comment=x\ntouch /tmp/x"])
    slurm = SimpleNamespace(stages={"evaluate": {"extra": resources.extra}}, signal_seconds=120, requeue=True)
    with pytest.raises(UserError) as info:
        sbatch_options(resources, slurm, job_name="tiny.07-evaluate", array_size=2, chdir=tmp_path,
                       log_pattern=tmp_path / "x.%A_%a.out", shape=TaskShape("unit"), stage="evaluate")
    assert str(info.value).startswith("slurm.stages.evaluate.extra[1]: '--comment=x\\ntouch /tmp/x' contains the "
                                      "control character '\\n'")


def test_submit_without_sbatch_writes_nothing(tmp_path, capsys, monkeypatch, toy):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    rc, _, err = cli(capsys, "submit", toy_config(tmp_path))
    assert rc == ExitCode.BAD_INPUT
    assert error_line(err) == "sbatch not found: run `collapse submit` on a Slurm login node (or add --dry-run)"
    assert not (tmp_path / "runs" / "toy").exists(), files_under(tmp_path / "runs")


# ================================================================ 8. progress bars


def test_no_progress_prints_no_bar(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", *tiny_args(tmp_path), "--stages",
                           "prepare,teacher", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    bars = [ln for ln in re.split(r"[\r\n]", proc.stderr) if re.search(r"\d+%\||it/s|batch/s|tok/s|step/s", ln)]
    assert bars == [], bars[:3]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_disk_error_in_an_accelerate_child_comes_back_as_that_disk_error(code, tmp_path, capsys):
    """The child prints the CLI's one line and exits 2; the parent must not take it for bad input, which would
    delete a new run together with the units it finished."""
    from pipeline.errors import DISK_ERRORS
    from pipeline.orchestration.launchers.accelerate import child_error

    path = tmp_path / "runs" / "demo" / "train" / "unit" / "model.safetensors"
    line = f"{path}: {os.strerror(code)}; {DISK_ERRORS[code]}"  # what the child's CLI printed
    exc = child_error(line)
    assert isinstance(exc, OSError) and exc.errno == code and exc.filename == str(path)
    bad = child_error("train.training.batch_size: 9 blocks do not split over 2 processes; use a multiple of 2")
    assert isinstance(bad, UserError) and str(bad).startswith("train.training.batch_size: 9")
