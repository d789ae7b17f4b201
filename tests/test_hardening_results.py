"""Careless users against the results: a copied run checked in place, a diverged student, edited or
deleted result numbers, replaced pretrained weights, the evaluation batch size, bits per byte.

Same idioms as tests/test_hardening.py (whose fixtures and CLI helper this module uses): tiny pipeline
runs of tests/configs/tiny.yaml with `--stages` cut short, and every case asserts the exit code, the one
line `collapse: error: ...` and that nothing was written or the damage was repaired.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

from hardening_helpers import artefacts, snapshot, tiny_args
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
