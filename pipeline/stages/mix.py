"""mix: human and synthetic blocks at exact, nested ratios (see pipeline/data/mixing.py).

One unit per generation x synthetic fraction x budget (x teacher replicate for p > 0, x mix.draws), id
`g{g}-p{p}-n{n}` (see `unit_id` for replicates and draws), at runs/NAME/mix/ID/:
  blocks/   dataset with `input_ids`, `source` (0 human, 1 synthetic), `block` (row in its source)
Inputs: `prepare/prepare` (human train blocks) and, unless p = 0, the generation's corpus unit
`generate/g{g}`, whose `blocks/` holds synthetic text packed with the same tokenizer and block size.

Budgets: mode replace uses `mix.token_budgets` (total tokens); mode add uses `mix.human_budget`
(human tokens, synthetic added on top so that its share is p), so the grid has one budget there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.mixing import write_mixture
from pipeline.errors import UserError
from pipeline.stages import artifacts
from pipeline.stages.artifacts import PREPARE_KEY
from pipeline.unit import Unit

NAME = "mix"
VERSION = 1
_DRAW_STREAM = 0x44524157  # separates mixture draws' seeds from other derived seeds


def unit_id(generation: int, fraction: float, budget: int, replicate: int = 0, draw: int = 0) -> str:
    """gG-pP-nN, with -tR after gG for teacher replicate r >= 1 and -dD at the end for draw d >= 1."""
    mixture = f"{artifacts.generation_id(generation, replicate)}-p{fraction:g}-n{budget}"
    return mixture if draw == 0 else f"{mixture}-d{draw}"


def draw_seed(seed: int, draw: int) -> int:
    """The block-order seed of mixture draw d: mix.seed itself for draw 0."""
    from pipeline.lm.sampling import derive_seed

    return seed if draw == 0 else derive_seed(seed, draw, _DRAW_STREAM) % 2**32


def budget_key(mode: str) -> str:
    """The config key a user changes when a budget does not fit (named in the error)."""
    return "mix.token_budgets" if mode == "replace" else "mix.human_budget"


def plan(cfg, planned) -> list[Unit]:
    mix = cfg.mix
    budgets = list(mix.token_budgets) if mix.mode == "replace" else [mix.human_budget]
    units = []
    for replicate in range(cfg.teacher.replicates):
        for generation in mix.generations:
            for fraction in mix.synthetic_fractions:
                if fraction == 0 and replicate > 0:  # reads no synthetic text: one per draw, shared by teachers
                    continue
                units += _draws(cfg, generation, fraction, budgets, replicate)
    check_synthetic_supply(cfg, units)
    check_student_batches(cfg.train.training.batch_size, units)
    return units


def _draws(cfg, generation: int, fraction: float, budgets: list[int], replicate: int) -> list[Unit]:
    mix, units = cfg.mix, []
    for budget in budgets:
        for draw in range(mix.draws):
            params = {"generation": generation, "fraction": fraction, "budget": budget, "mode": mix.mode,
                      "seed": draw_seed(mix.seed, draw), "block_size": cfg.packing.block_size,
                      **artifacts.replicate_params(replicate), **({"draw": draw} if draw else {})}
            # A p = 0 mixture reads no synthetic text: without the input, regenerating leaves it done.
            inputs = (PREPARE_KEY,) if fraction == 0 else (PREPARE_KEY, artifacts.corpus_key(generation, replicate))
            units.append(Unit(NAME, unit_id(generation, fraction, budget, replicate, draw), params, inputs))
    return units


def check_synthetic_supply(cfg, units: list[Unit]) -> None:
    """At plan time: the mixtures cannot need more synthetic tokens than generate.tokens can make."""
    from pipeline.data.mixing import block_counts

    block, gen = cfg.packing.block_size, cfg.generate
    needed = max((block_counts(u.params["fraction"], u.params["budget"], block, u.params["mode"])[1] * block
                  for u in units), default=0)
    usable = int(gen.tokens * (1 - gen.heldout_fraction))
    if needed > usable:
        at = max(units, key=lambda u: block_counts(u.params["fraction"], u.params["budget"], block, u.params["mode"])[1])
        raise UserError(f"generate.tokens: {gen.tokens:,} (of which {usable:,} are not held out) cannot cover the "
                        f"{needed:,} synthetic tokens mix {at.id} needs; valid: at least "
                        f"{int(needed / (1 - gen.heldout_fraction)) + 1:,}, or lower {budget_key(at.params['mode'])}")


def check_student_batches(batch_size: int, units: list[Unit]) -> None:
    """At plan time: every mixture holds at least one block, and one student batch (train reads a mixture's
    blocks batch_size at a time; found only at the train unit, after the teacher and sampling ran)."""
    from pipeline.data.mixing import plan_mixture

    sizes = {}
    for unit in units:
        p = unit.params
        plan = plan_mixture(p["fraction"], p["budget"], p["block_size"], p["mode"], available_human=2**62,
                            available_synthetic=2**62, budget_key=budget_key(p["mode"]))
        sizes[unit.id] = plan.human_blocks + plan.synthetic_blocks
    smallest = min(sizes, key=sizes.get, default=None)
    if smallest is not None and sizes[smallest] < batch_size:
        p = units[0].params
        raise UserError(f"train.training.batch_size: {batch_size} blocks per step, but mix {smallest} holds "
                        f"{sizes[smallest]} blocks of {p['block_size']} tokens; valid: at most {sizes[smallest]}, "
                        f"or raise {budget_key(p['mode'])}")


def preflight(units: list[Unit], done_inputs: dict[str, Path]) -> bool:
    """Right after prepare: every mixture's human part fits the human train split (else no teacher or
    sampling time is spent before the error). True once checked."""
    from pipeline.data.mixing import plan_mixture

    if PREPARE_KEY not in done_inputs:
        return False
    available = int(artifacts.split_stats(done_inputs[PREPARE_KEY], "train")["blocks"])
    block_size = artifacts.block_size(done_inputs[PREPARE_KEY])
    for unit in units:
        p = unit.params
        plan_mixture(p["fraction"], p["budget"], block_size, p["mode"], available_human=available,
                     available_synthetic=2**62, budget_key=budget_key(p["mode"]))
    return True


def run(ctx) -> dict[str, Any]:
    params = ctx.params
    human = artifacts.blocks(ctx.inputs[PREPARE_KEY], "train")
    # The block size prepare packed with, as every stage reads it; params["block_size"] holds the same
    # config value for plan-time checks, before prepare has run.
    block_size = artifacts.block_size(ctx.inputs[PREPARE_KEY])
    synthetic = None
    if params["fraction"] > 0:
        corpus = artifacts.corpus_key(params["generation"], artifacts.replicate_of(params))
        synthetic_dir = Path(ctx.inputs[corpus]) / "blocks"
        synthetic = artifacts.blocks(synthetic_dir.parent, "blocks")
        _check_same_vocabulary(ctx, synthetic, synthetic_dir)
    stats = write_mixture(human, synthetic, params["fraction"], params["budget"], block_size,
                          params["mode"], params["seed"], Path(ctx.out) / "blocks",
                          budget_key=budget_key(params["mode"]))
    ctx.log.info("mix %s: %d human + %d synthetic blocks (share %.4f)", ctx.unit.id, stats["human_blocks"],
                 stats["synthetic_blocks"], stats["realised_fraction"])
    return stats


def _check_same_vocabulary(ctx, synthetic, synthetic_dir: Path) -> None:
    """Synthetic ids must come from the run's tokenizer; an id past its vocabulary means they do not."""
    import pyarrow.compute as pc

    if len(synthetic) == 0:
        return
    vocab = len(artifacts.tokenizer(ctx.inputs[PREPARE_KEY]))
    largest = pc.max(pc.list_flatten(synthetic.data.column("input_ids"))).as_py()
    if largest is not None and largest >= vocab:
        raise UserError(f"mix: {synthetic_dir} holds token id {largest}, outside the run's tokenizer "
                        f"({vocab} tokens); regenerate it with the prepare stage's tokenizer")
