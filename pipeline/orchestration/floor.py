"""`collapse floor RUN_DIR`: the loss floor predicted from P and Q, written before any student trains.

Reads the run's prepared test split (prepare/prepare: docs/test, tokenizer, block size) and its finished
generation-0 teacher (teacher/g0: the model whose text the generation-0 mixtures hold), computes
`pipeline.lm.mixture_floor` at the token and the document level for p = 0 and the run's
mix.synthetic_fractions, and writes RUN_DIR/floor/prediction.json atomically, with a UTC time and the
teacher unit's fingerprint (with teacher.replicates > 1, one file per replicate: prediction-tR.json for r >= 1). A prediction already made for the same teacher fingerprint is kept and
nothing is recomputed: it was written before the students, and stays the record of what was predicted.
One for another fingerprint (the teacher was retrained) is renamed beside it,
prediction-<its fingerprint[:12]>-<its UTC time>.json, before the new one is written.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data.sources import REFERENCE_LANGUAGE
from pipeline.errors import UserError
from pipeline.io import read_json_object, write_json_atomic
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY

log = logging.getLogger("collapse")

FLOOR_DIR = "floor"
PREDICTION = "prediction.json"
GENERATION = 0


def predict_floor(cfg: Config, executor) -> list[Path]:
    """One prediction per teacher replicate of generation 0 (each kept if already there for that teacher)."""
    return [_predict_one(cfg, executor, replicate) for replicate in range(cfg.teacher.replicates)]


def prediction_path(run_dir: Path, replicate: int) -> Path:
    """floor/prediction.json for the run's teacher (replicate 0), floor/prediction-tR.json for replicate r."""
    name = PREDICTION if replicate == 0 else f"prediction-t{replicate}.json"
    return run_dir / FLOOR_DIR / name


def _predict_one(cfg: Config, executor, replicate: int) -> Path:
    teacher = _finished_teacher(cfg, executor, replicate)
    fingerprint = executor.planned.fingerprints[teacher.key]
    path = prediction_path(cfg.run_dir, replicate)
    old = read_json_object(path) if path.exists() else None
    if old is not None and (old.get("teacher") or {}).get("fingerprint") == fingerprint:
        log.info("floor: %s was predicted for %s at %s; kept", path, teacher.key, old.get("created"))
        return path
    prediction = _prediction(cfg, executor, teacher, fingerprint)
    if path.exists():
        aside = _aside_name(path, old)
        os.replace(path, aside)
        log.info("floor: the prediction for an earlier %s is kept as %s", teacher.key, aside)
    write_json_atomic(path, prediction)
    _log_summary(path, prediction)
    return path


def _finished_teacher(cfg: Config, executor, replicate: int):
    """Teacher replicate r of generation 0, refusing a run the floor cannot be predicted for."""
    run_dir = cfg.run_dir
    if cfg.corpus.source != REFERENCE_LANGUAGE:
        raise UserError(f"{run_dir}: corpus.source is {cfg.corpus.source}; collapse floor needs {REFERENCE_LANGUAGE}, "
                        "the only corpus whose distribution P is known exactly")
    key = artifacts.teacher_key(GENERATION, replicate)
    if key not in executor.planned.by_key:
        raise UserError(f"{run_dir}: the run plans no {key}; collapse floor needs a run with a teacher")
    for unit_key in (PREPARE_KEY, key):
        state = executor.state(executor.planned.get(unit_key))
        if state != "done":
            raise UserError(f"{run_dir}: {unit_key} is {state}, not finished; run "
                            f"`collapse run {run_dir / 'config.yaml'} --stages prepare,teacher` first")
    return executor.planned.get(key)


def _prediction(cfg: Config, executor, teacher, fingerprint: str) -> dict[str, Any]:
    """Both levels from one teacher pass over the test documents, with what they were computed from."""
    from pipeline.data.reference import ReferenceLanguage
    from pipeline.distributed import default_device
    from pipeline.lm.mixture_floor import LEVELS, floor_report, score_documents
    from pipeline.lm.sampling import SamplingSettings

    prepare_unit = executor.planned.get(PREPARE_KEY)
    prepare_dir = executor.run_dir.final(prepare_unit)
    reference = artifacts.reference_parameters(prepare_dir)
    device = default_device()
    model, _ = artifacts.teacher_model(executor.run_dir.final(teacher), device, cfg.teacher.model.trust_remote_code)
    sampling = SamplingSettings.from_config(cfg.generate)
    window = artifacts.block_size(prepare_dir)
    scores = score_documents(ReferenceLanguage.from_params(reference), artifacts.documents(prepare_dir, "test"),
                             model, artifacts.tokenizer(prepare_dir), [0.0, *cfg.mix.synthetic_fractions],
                             window=window, sampling=sampling, batch_size=cfg.evaluate.batch_size, device=device)
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "teacher": {"unit": teacher.key, "fingerprint": fingerprint},
            "prepare": {"unit": PREPARE_KEY, "fingerprint": executor.planned.fingerprints[PREPARE_KEY]},
            "reference": reference, "sampling": sampling.as_dict(), "window": window, "device": str(device),
            **{level: floor_report(scores, level) for level in LEVELS}}


def _aside_name(path: Path, old: dict[str, Any] | None) -> Path:
    """Where a superseded prediction goes: named by its teacher fingerprint and the time it was written."""
    fingerprint = str(((old or {}).get("teacher") or {}).get("fingerprint") or "unreadable")[:12]
    written = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))
    return path.with_name(f"prediction-{fingerprint}-{written}.json")


def _log_summary(path: Path, prediction: dict[str, Any]) -> None:
    token, document = prediction["token"], prediction["document"]
    log.info("floor: H = %.4f nats/token on %d test tokens; teacher loss %s; chi2(Q||P) %.4f, Q's mass off P %.4f",
             token["entropy"], token["tokens"], _nats(token["teacher_loss"]), token["chi2"], token["outside_mass"])
    for p, row in token["per_fraction"].items():
        log.info("floor: p = %s: gap %s token level (chi2 approx %s), %s document level", p, _nats(row["gap"]),
                 _nats(row["chi2_approx_gap"]), _nats(document["per_fraction"][p]["gap"]))
    log.info("floor: %s", path)


def _nats(value: float | None) -> str:
    return "infinite" if value is None else f"{value:.4f}"
