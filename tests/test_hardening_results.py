"""Careless users against the results: a copied run checked in place, a diverged student, edited or
deleted result numbers, replaced pretrained weights, the evaluation batch size, bits per byte.

Same idioms as tests/test_hardening.py (whose fixtures and CLI helper this module uses): tiny pipeline
runs of tests/configs/tiny.yaml with `--stages` cut short, and every case asserts the exit code, the one
line `collapse: error: ...` and that nothing was written or the damage was repaired.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

import pytest

from hardening_helpers import artefacts, files_under, last_error, snapshot, tiny_args
from pipeline.errors import ExitCode
from test_hardening import cli, isolated, status_of  # noqa: F401  (isolated: the autouse fixture)

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
