"""Small, deterministic training setups shared by the trainer tests (and runnable as a child process).

    python tests/train_helpers.py OUT_DIR [key=value ...]     # trains, writes OUT_DIR.metrics-RANK.json

The child form is what the kill/resume tests start, signal and SIGKILL.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VOCAB, BLOCK, EOS = 96, 32, 0


def token_blocks(n_blocks: int, block: int = BLOCK, seed: int = 0, partial: int = 0, language: int = 1234):
    """A `datasets.Dataset` of `input_ids` blocks from a small Markov chain (learnable, not uniform).

    `language` seeds the chain itself, `seed` the sample drawn from it; a different `language` gives
    held-out text a model trained on this one gets worse at (for best-checkpoint tests).
    """
    from datasets import Dataset

    transition = np.random.default_rng(language).dirichlet(np.full(VOCAB, 0.02), size=VOCAB)
    rng = np.random.default_rng(seed)
    n_tokens = n_blocks * block + partial
    ids = np.empty(n_tokens, dtype=np.int64)
    ids[0] = 1
    for i in range(1, n_tokens):
        ids[i] = rng.choice(VOCAB, p=transition[ids[i - 1]])
    rows = [ids[i:i + block].tolist() for i in range(0, n_tokens, block)]
    return Dataset.from_dict({"input_ids": rows})


def tiny_model(seed: int = 0, family: str = "gpt2"):
    import torch

    from pipeline.config import ModelConfig
    from pipeline.lm.loading import build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(family=family, size="nano"), VOCAB, BLOCK, EOS, EOS)


def training_config(**overrides):
    from pipeline.config import TrainingConfig

    values = dict(epochs=3.0, batch_size=8, lr=3e-3, eval_every=5, checkpoint_every=5, log_every=5,
                  keep_checkpoints=2)
    values.update(overrides)
    return TrainingConfig(**values)


def run_training(out_dir: Path, threads: int = 1, **overrides) -> dict:
    """Train the tiny model on the tiny data (1 thread: results do not depend on the machine's load)."""
    import torch

    from pipeline.lm.training.loop import train_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train_model(tiny_model(), token_blocks(48), token_blocks(6, seed=1, partial=7),
                           training_config(**overrides), Path(out_dir), seed=0, block_size=BLOCK)
    finally:
        torch.set_num_threads(previous)


def churn_allocator(torch, model) -> None:
    """What a process with a history has done before the measured work: allocate and free odd-sized buffers of
    every scale, and train `model` a little (optimizer state, autograd buffers, freed logits), so that later
    buffers land at other addresses and alignments than in a fresh process."""
    kept = []
    for i in range(300):
        size = 1 + (i * 7919) % 100_003 + (i % 7) * 300_007  # 4 B to 10 MB, odd sizes
        tensor = torch.empty(size, dtype=torch.float32 if i % 3 else torch.float64).fill_(1.0)
        if i % 10 == 0:
            kept.append(tensor)  # some stay, so later buffers land elsewhere
    from pipeline.orchestration.cpu_startup import tune_cpu_allocator

    tune_cpu_allocator()  # as the training loop does (a no-op when start-up did it)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(1, model.config.vocab_size, (8, min(64, model.config.n_positions)), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    del kept[::2]


def _parse(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


if __name__ == "__main__":
    from pipeline.orchestration.cpu_startup import start_up

    start_up()  # as every CLI process starts: before torch loads
    out = Path(sys.argv[1])
    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
    metrics = run_training(out, **{k: _parse(v) for k, v in overrides.items()})
    rank = os.environ.get("RANK", "0")  # set per worker by accelerate launch
    Path(f"{out}.metrics-{rank}.json").write_text(json.dumps(metrics))
