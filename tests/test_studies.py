"""Every study config plans (valid config, every stage has units) without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import STAGES, load_config
from pipeline.orchestration.runner import default_stages, plan_run

STUDIES = sorted((Path(__file__).resolve().parents[1] / "configs" / "studies").glob("*.yaml"))


def test_there_are_studies_for_each_paper():
    names = {p.stem for p in STUDIES}
    assert {"strong-collapse-reference", "strong-collapse-wikipedia", "model-size", "tails", "tails-truncated",
            "generations", "generations-accumulate"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_plans_every_stage_with_two_seeds(path):
    cfg = load_config(path)
    planned = plan_run(cfg, default_stages())
    assert all(planned.units(stage) for stage in STAGES), "every stage has units"
    assert len(cfg.train.seeds) >= 2, "every finding carries an interval over seeds"
    header = path.read_text().split("\n\n")[0]
    assert "collapse run configs/studies/" in header and "docs/studies/" in header
    assert "Scale to the paper" in path.read_text(), "each study says how to scale it to the paper's setting"
