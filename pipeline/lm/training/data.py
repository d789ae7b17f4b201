"""Training batches: every block pinned in one tensor, a seeded permutation per epoch, position = step.

The data-loader position is a single integer, the number of optimizer steps taken: step s reads epoch
s // steps_per_epoch, batch s % steps_per_epoch of that epoch's permutation. Resuming at step s indexes
the permutation directly; no consumed batch is read again (nothing is iterated to skip). Each epoch's
order is `default_rng([seed, epoch]).permutation(n_blocks)`, the same in every process and every run;
the global batch (B rows) is split into contiguous per-process slices of B / processes rows, so the
rows a step trains on do not depend on the number of processes. The last partial batch of an epoch is
dropped (every optimizer step sees exactly B blocks; the next epoch's permutation differs).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import UserError


def blocks_tensor(dataset, block_size: int, log=None) -> torch.Tensor:
    """(N, block_size) int32 tensor of the dataset's full `input_ids` blocks, read from the Arrow buffers.

    `block_size` is the packing's (prepare's manifest); a shorter tail block is dropped, a longer block
    means the data was packed for another run.
    """
    import pyarrow.compute as pc

    from pipeline.data.packing import concatenated_ids

    dataset = dataset.with_format(None)
    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    if len(dataset) == 0:
        raise UserError("train: the training dataset has no blocks")
    lengths = np.concatenate([pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
                              for chunk in dataset.data.column("input_ids").chunks])
    ids = concatenated_ids(dataset)
    if int(lengths.max()) > block_size:
        raise UserError(f"train: the training data has blocks of {int(lengths.max())} tokens, longer than the "
                        f"packing's block size {block_size}; it was packed for another run")
    if (lengths == block_size).all():
        return torch.from_numpy(ids.reshape(len(lengths), block_size))
    # Training needs equal-length blocks; a partial tail block (kept by evaluation splits) is dropped.
    ends = np.cumsum(lengths)
    full = np.flatnonzero(lengths == block_size)
    rows = np.stack([ids[ends[i] - block_size:ends[i]] for i in full]) if len(full) else np.zeros((0, block_size), np.int32)
    if log is not None:
        log.warning("train: dropped %d blocks shorter than %d tokens", len(lengths) - len(full), block_size)
    return torch.from_numpy(np.ascontiguousarray(rows))


class BlockBatches:
    """Per-step batches of a fixed block tensor for one process of `world`."""

    def __init__(self, blocks: torch.Tensor, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if global_batch % world:
            raise UserError(f"train.training.batch_size: {global_batch} blocks do not split over {world} processes; "
                            f"use a multiple of {world}")
        if len(blocks) < global_batch:
            raise UserError(f"train.training.batch_size: {global_batch} blocks per step but the data has only "
                            f"{len(blocks)} blocks; lower batch_size or add data")
        self.device = torch.device(device)
        self.blocks = blocks.pin_memory() if self.device.type == "cuda" else blocks
        self.global_batch, self.seed, self.rank, self.world = global_batch, seed, rank, world
        self.local_batch = global_batch // world
        self.steps_per_epoch = len(blocks) // global_batch
        self.fetched = 0  # batches read by this object (tests check resume reads no consumed batch)
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[1])

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.shape[0])

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batches of that epoch already consumed) before optimizer step `step` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def rows(self, step: int) -> torch.Tensor:
        """Indices of this process's blocks for optimizer step `step`."""
        epoch, batch = self.position(step)
        start = batch * self.global_batch + self.rank * self.local_batch
        return self._permutation(epoch)[start:start + self.local_batch]

    def fetch(self, step: int) -> torch.Tensor:
        """This process's (B / world, T) int64 batch for `step`, on the device."""
        self.fetched += 1
        batch = self.blocks.index_select(0, self.rows(step))
        return batch.to(self.device, non_blocking=True).long()

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._order_epoch != epoch:
            self._order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks))
            self._order_epoch = epoch
        return self._order


def total_steps(training, steps_per_epoch: int, block_size: int) -> int:
    """Optimizer steps of the whole run: `tokens` if set, else `epochs` passes (fractions allowed),
    raised to `min_tokens` when that is set."""
    tokens_per_step = training.batch_size * block_size
    if training.tokens:
        steps = -(-training.tokens // tokens_per_step)
    elif training.epochs:
        steps = int(round(training.epochs * steps_per_epoch))
    else:
        raise UserError("train: set epochs or tokens (both are empty)")
    if training.min_tokens:
        steps = max(steps, -(-training.min_tokens // tokens_per_step))
    return max(1, steps)


def micro_batches(batch: torch.Tensor, micro_size: int) -> list[tuple[torch.Tensor, float]]:
    """Split a process's batch into micro-batches, each with its share of the rows (the loss weight)."""
    rows = batch.shape[0]
    return [(batch[i:i + micro_size], min(micro_size, rows - i) / rows) for i in range(0, rows, micro_size)]


def pad_rows(micro_batch: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """(`micro_batch` grown to `rows` rows by repeating its first row, its real row count).

    A compiled step keeps one shape: the short last micro-batch of a step is padded instead of compiling
    a second graph; the loss ignores the padded rows (pipeline/lm/training/loss.py), so the gradient is
    that of the real rows.
    """
    real = micro_batch.shape[0]
    if real >= rows:
        return micro_batch, real
    filler = micro_batch[:1].expand(rows - real, -1)
    return torch.cat([micro_batch, filler]), real

