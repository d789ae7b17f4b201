"""Human/synthetic mixtures at exact ratios, nested across budgets and fractions.

Block counts (b = block_size tokens per block, p = synthetic fraction, n = token budget):

  replace   n training tokens, a share p of them synthetic:
              synthetic = round(p * n / b),  human = round((1 - p) * n / b)
  add       a fixed human budget H (`mix.human_budget`) plus enough synthetic text that the
            synthetic share of the total is p (H plays the role of n; p must be < 1):
              human = round(H / b),  synthetic = round(p / (1 - p) * human)

Each count is a rounded monotone function of n and p, so every target is met within one block
(half a block per part) and the counts never decrease as n grows, the human count never grows with
p and the synthetic count never shrinks with p. (round(n/b) - round(p n/b) would not have this
property: it can drop by one as n grows.)

Membership is nested: one fixed seeded permutation of the human blocks and one of the synthetic
blocks, and a mixture takes a prefix of each. Hence the mixture for a smaller budget is a subset
of the one for a larger budget at the same fraction, and the human part at a larger fraction is a
subset of the human part at a smaller one. Order inside a mixture is shuffled separately.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.errors import UserError

Mode = Literal["replace", "add"]
HUMAN, SYNTHETIC = 0, 1  # values of the `source` column


@dataclass(frozen=True)
class MixturePlan:
    """How many blocks of each kind a mixture takes (a prefix of each fixed permutation)."""

    fraction: float
    budget: int
    block_size: int
    mode: str
    human_blocks: int
    synthetic_blocks: int

    @property
    def human_tokens(self) -> int:
        return self.human_blocks * self.block_size

    @property
    def synthetic_tokens(self) -> int:
        return self.synthetic_blocks * self.block_size

    @property
    def tokens(self) -> int:
        return self.human_tokens + self.synthetic_tokens


def _round_half_up(x: float) -> int:
    # Explicit half-up (Python's round() is half-to-even, which is monotone too but less obvious to read).
    # The small epsilon absorbs float error in products like 0.3 * n so that exact halves round up.
    return math.floor(x + 0.5 + 1e-9)


def block_counts(fraction: float, budget: int, block_size: int, mode: Mode) -> tuple[int, int]:
    """(human_blocks, synthetic_blocks) for one mixture; see the module docstring."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"mix.synthetic_fractions: {fraction} is not valid; valid: 0 <= p <= 1")
    if budget <= 0:
        raise UserError(f"mix.token_budgets: {budget} is not valid; valid: a positive number of tokens")
    if mode == "replace":
        return _round_half_up((1.0 - fraction) * budget / block_size), _round_half_up(fraction * budget / block_size)
    if mode == "add":
        if fraction >= 1.0:
            raise UserError("mix.synthetic_fractions: 1.0 is not valid with mix.mode: add (a synthetic share of 1 "
                            "next to a fixed human budget needs infinite synthetic text); valid: 0 <= p < 1")
        human = _round_half_up(budget / block_size)
        return human, _round_half_up(fraction / (1.0 - fraction) * human)
    raise UserError(f"mix.mode: {mode!r} is not valid; valid: replace, add")


def plan_mixture(fraction: float, budget: int, block_size: int, mode: Mode, *, available_human: int,
                 available_synthetic: int, budget_key: str = "mix.token_budgets",
                 synthetic_key: str = "generate.tokens") -> MixturePlan:
    """The block counts, checked against what is available (UserError naming the key to change)."""
    human, synthetic = block_counts(fraction, budget, block_size, mode)
    if human + synthetic == 0:
        raise UserError(f"{budget_key}: {budget} tokens is less than half a block of {block_size} tokens; "
                        f"valid: at least {block_size} tokens")
    if human > available_human:
        raise UserError(f"{budget_key}: {budget} at synthetic fraction {fraction:g} needs {human * block_size} human "
                        f"tokens ({human} blocks of {block_size}) but the human train split has "
                        f"{available_human * block_size} ({available_human} blocks); lower the budget or add text")
    if synthetic > available_synthetic:
        raise UserError(f"{budget_key}: {budget} at synthetic fraction {fraction:g} needs {synthetic * block_size} "
                        f"synthetic tokens ({synthetic} blocks of {block_size}) but only {available_synthetic * block_size} "
                        f"({available_synthetic} blocks) were generated; raise {synthetic_key} or lower the budget")
    return MixturePlan(fraction, budget, block_size, mode, human, synthetic)


def block_order(n_blocks: int, seed: int, stream: int) -> np.ndarray:
    """The fixed permutation every mixture takes prefixes of (stream 0: human, 1: synthetic)."""
    return np.random.default_rng([seed, stream]).permutation(n_blocks)


def mixture_indices(plan: MixturePlan, available_human: int, available_synthetic: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into the human and synthetic block datasets: prefixes of the fixed permutations."""
    human = block_order(available_human, seed, HUMAN)[: plan.human_blocks]
    synthetic = block_order(available_synthetic, seed, SYNTHETIC)[: plan.synthetic_blocks]
    return human, synthetic


def full_block_count(dataset, block_size: int, name: str) -> int:
    """Rows of `dataset` that are full blocks; a shorter final row (an evaluation remainder) is not usable.

    Blocks must be consecutive full rows of `block_size` followed by at most one shorter last row.
    """
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return 0
    if dataset._indices is not None:  # a select()/shuffle() view: its rows are not the table's rows
        dataset = dataset.flatten_indices(keep_in_memory=True)  # never a cache file beside the input's files
    lengths = pc.list_value_length(dataset.data.column("input_ids")).to_numpy(zero_copy_only=False)
    full = int((lengths == block_size).sum())
    if full < len(lengths) - 1 or (full == len(lengths) - 1 and lengths[-1] > block_size):
        raise UserError(f"{name}: blocks have lengths {sorted(set(lengths.tolist()))[:5]}, not {block_size} "
                        "(packing.block_size); re-pack it with the same block size")
    return full


def write_mixture(human_ds, synthetic_ds, fraction: float, budget: int, block_size: int, mode: Mode, seed: int,
                  out_dir: str | Path, *, budget_key: str = "mix.token_budgets",
                  synthetic_key: str = "generate.tokens") -> dict:
    """Write the mixture, order shuffled with `seed`; return the plan's accounting and realised share.

    Columns: `input_ids`, `source` (0 human, 1 synthetic) and `block` (the row in its source dataset,
    for diagnostics). `synthetic_ds` may be None when the fraction is 0. Nothing is ever written
    beside the inputs (they are other units' finished outputs): every intermediate stays in memory.
    """
    from datasets import concatenate_datasets

    from pipeline.data.packing import save_dataset

    n_human = full_block_count(human_ds, block_size, "human train blocks")
    n_synthetic = 0 if synthetic_ds is None else full_block_count(synthetic_ds, block_size, "synthetic blocks")
    plan = plan_mixture(fraction, budget, block_size, mode, available_human=n_human,
                        available_synthetic=n_synthetic, budget_key=budget_key, synthetic_key=synthetic_key)
    human_idx, synthetic_idx = mixture_indices(plan, n_human, n_synthetic, seed)
    parts = [_tagged(human_ds, human_idx, HUMAN)]
    if len(synthetic_idx):
        parts.append(_tagged(synthetic_ds, synthetic_idx, SYNTHETIC))
    mixture = concatenate_datasets([part for part in parts if len(part)])
    mixture = mixture.shuffle(seed=seed, keep_in_memory=True).flatten_indices(keep_in_memory=True)
    save_dataset(mixture, Path(out_dir))
    stats = asdict(plan)
    stats.update(tokens=plan.tokens, human_tokens=plan.human_tokens, synthetic_tokens=plan.synthetic_tokens,
                 blocks=len(mixture), realised_fraction=plan.synthetic_tokens / plan.tokens,
                 available_human_blocks=n_human, available_synthetic_blocks=n_synthetic)
    return stats


def _tagged(dataset, indices: np.ndarray, source: int):
    import pyarrow as pa
    from datasets import Dataset

    # keep_in_memory: without it `datasets` writes cache-*.arrow files into the input's directory, a
    # finished unit of another stage (and fails when that directory is read-only).
    part = dataset.with_format(None).select_columns(["input_ids"]).select(indices.tolist(), keep_in_memory=True)
    part = part.flatten_indices(keep_in_memory=True)
    table = part.data.table.append_column("source", pa.array(np.full(len(part), source, np.int8)))
    return Dataset(table.append_column("block", pa.array(indices.astype(np.int64))))
