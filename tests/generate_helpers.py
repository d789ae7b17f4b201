"""Shared by the sampling tests (tests/test_generate.py, tests/test_sampling_device.py) and the teacher
tests (tests/test_teacher.py): a GPT-2 whose next-token distribution is known, and the prepare -> teacher
-> generate stages of tests/configs/tiny.yaml run through the runner.

A module of its own, not a test module, so that no test module imports another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EOS = 0


def known_distribution(vocabulary: int = 200, s: float = 1.1, eos_probability: float = 0.02) -> np.ndarray:
    """p over ids 0..V-1: EOS (id 0) with eos_probability, ids 1..V-1 Zipf(s) in id order."""
    zipf = np.arange(1, vocabulary, dtype=float) ** -s
    return np.concatenate([[eos_probability], (1 - eos_probability) * zipf / zipf.sum()])


def unigram_model(p: np.ndarray):
    """A real GPT2LMHeadModel whose logits are log p at every position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(p), n_positions=512, n_embd=16, n_layer=1, n_head=2, bos_token_id=EOS,
                        eos_token_id=EOS)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = torch.tensor(np.log(p), dtype=torch.float32)
    return model


def run_pipeline(runs_dir: Path, *overrides: str):
    from pipeline.config import load_config
    from pipeline.orchestration.executor import Executor
    from pipeline.orchestration.sweep import run_units
    from pipeline.orchestration.launchers.local import LocalLauncher
    from pipeline.orchestration.runner import plan_run
    from pipeline.stages import generate, prepare, teacher

    tiny = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
    cfg = load_config(tiny, [f"runs_dir={runs_dir}", "generate.tokens=3000", "generate.shards=3",
                             "generate.max_new_tokens=48", "generate.batch_size=32", *overrides])
    stages = {"prepare": prepare, "teacher": teacher, "generate": generate}
    executor = Executor(cfg=cfg, stages=stages, planned=plan_run(cfg, stages))
    outcomes = run_units(executor, list(executor.planned), LocalLauncher(), progress=False)
    failed = [(o.unit.key, o.error) for o in outcomes if o.status not in ("ran", "done")]
    assert not failed, failed
    return cfg.run_dir, {o.unit.key: o.status for o in outcomes}
