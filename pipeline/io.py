"""Files written so that a reader sees the old version or the new one, never half of one.

Every output of the project goes through these helpers: a temp sibling (same directory, so the rename
stays on one filesystem), fsync for files, then one `os.replace`/`os.rename`. A kill at any moment
leaves either the previous file/dir or the new one, plus at worst a dot-prefixed temp that the next
writer of the same path removes. This module imports nothing from the project: every layer uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

TEMP_PREFIX = ".tmp-"  # names that start with this are never complete outputs


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_path)` (a library that insists on writing a path itself), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_dir_atomic(out_dir: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_dir)` into a temporary sibling directory, then `replace_dir` it over `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f"{TEMP_PREFIX}{out_dir.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; outputs are shared like any directory
        write(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path, trash_dir: Path | None = None) -> None:
    """Rename directory `new` over `target`. An existing target is first renamed aside, then deleted.

    Two renames, not one: a directory cannot be replaced by rename while it is non-empty. Between the
    two a reader finds no target (never a half one); `trash_dir` keeps the old copy off the listing.
    """
    new, target = Path(new), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        parent = Path(trash_dir) if trash_dir is not None else target.parent
        parent.mkdir(parents=True, exist_ok=True)
        old = parent / f"{TEMP_PREFIX}old-{target.name}.{os.getpid()}.{time.time_ns()}"
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object, or None when missing, unreadable, damaged or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def iter_temp_leftovers(folder: Path) -> Iterator[Path]:
    """Temp files/dirs a killed writer left in `folder` (safe to delete when nobody writes there)."""
    folder = Path(folder)
    if folder.is_dir():
        yield from (p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))
