"""Deduplicated, seeded train/validation/test split by document.

Splitting by document (never by block) keeps every test document unseen in training; exact
duplicates are dropped first so that no text sits on both sides of the split.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


def deduplicate(docs: list[str]) -> tuple[list[str], int]:
    """Documents with exact duplicates removed (first occurrence kept, order kept), and how many went."""
    unique = list(dict.fromkeys(docs))
    return unique, len(docs) - len(unique)


def split_sizes(n_docs: int, validation_fraction: float, test_fraction: float) -> dict[str, int]:
    """Documents per split: held-out splits get round(fraction * n), at least 1; train gets the rest."""
    for key, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise UserError(f"corpus.{key}: {fraction} is not valid; valid: 0 < fraction < 1")
    if validation_fraction + test_fraction >= 1.0:
        raise UserError(f"corpus.validation_fraction + corpus.test_fraction = {validation_fraction + test_fraction:g}; "
                        "valid: below 1 (the rest is the train split)")
    n_validation = max(1, round(validation_fraction * n_docs))
    n_test = max(1, round(test_fraction * n_docs))
    n_train = n_docs - n_validation - n_test
    if n_train < 1:
        raise UserError(f"corpus.source: {n_docs} distinct documents cannot fill train, validation and test splits; "
                        "valid: at least 3 distinct documents (more for these fractions)")
    return {"train": n_train, "validation": n_validation, "test": n_test}


def split_documents(docs: list[str], validation_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, list[str]]:
    """{"train", "validation", "test"} lists: a seeded permutation of the distinct documents, cut in three.

    Deterministic in (docs, fractions, seed). Each split keeps the documents' source order, which
    makes outputs easy to diff; training order is shuffled later, per block.
    """
    unique, removed = deduplicate(docs)
    if removed:
        log.info("split: removed %d exact duplicate documents of %d", removed, len(docs))
    sizes = split_sizes(len(unique), validation_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = {"validation": (0, sizes["validation"]),
              "test": (sizes["validation"], sizes["validation"] + sizes["test"]),
              "train": (sizes["validation"] + sizes["test"], len(unique))}
    return {name: [unique[i] for i in sorted(order[start:stop])] for name, (start, stop) in
            ((name, bounds[name]) for name in SPLITS)}
