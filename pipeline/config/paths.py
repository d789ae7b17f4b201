"""Paths a config names, checked when it is read: the run directory and pretrained checkpoints.

Unchecked, a wrong path surfaces only when the unit that reads it starts, after earlier units ran, as a
traceback or with a message naming a key the user never set (tokenizer.path defaults to the teacher's
checkpoint). GGUF spellings are checked where the plan hashes the file (pipeline/lm/pretrained.py).
"""

from __future__ import annotations

import os
from pathlib import Path

VALID_PRETRAINED = "give an existing model directory, a .gguf file, gguf:PACKAGE or a hub id"


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot be or become a directory (it, or the nearest existing path above it, is no folder)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else f"{candidate} is a file, not a directory"
    return None


def pretrained_problem(spec: str, needs: tuple[str, ...]) -> str | None:
    """What is wrong with a pretrained spelling that is not GGUF, or None: a path must be a directory; a hub
    id must be in the local hub cache (one of the files `needs`) when HF_HUB_OFFLINE forbids downloads."""
    from pipeline.lm.pretrained import is_gguf

    if is_gguf(spec):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"a file, not a model directory; {VALID_PRETRAINED}"
    if not _is_hub_id(spec):
        return f"no such directory; {VALID_PRETRAINED}"
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not any(isinstance(try_to_load_from_cache(spec, name), str) for name in needs):
        return f"no such directory, and not in the local hub cache (HF_HUB_OFFLINE is set: nothing is downloaded); {VALID_PRETRAINED}"
    return None


def _is_hub_id(spec: str) -> bool:
    """`name` or `namespace/name` as the hub spells repositories (an absolute or ./ path is not one)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True
