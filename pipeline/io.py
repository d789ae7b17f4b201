"""Files written so that a reader sees the old version or the new one, never half of one.

Every output of the project goes through these helpers: a temp sibling (same directory, so the rename
stays on one filesystem), fsync for files, then one `os.replace`/`os.rename`. A kill at any moment
leaves either the previous file/dir or the new one, plus at worst a dot-prefixed temp that the next
writer of the same path removes. This module imports nothing from the project: every layer uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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


def json_text(data: Any, **options: Any) -> str:
    """JSON text of `data` (json.dumps options); NaN and infinities are refused with a ValueError naming
    where they are: they are not JSON (strict readers fail on them), and a result holding one is a bug
    to fix where the number is made, never a value to pass on."""
    try:
        return json.dumps(data, allow_nan=False, **options)
    except ValueError:
        where = non_finite_path(data)
        if where is None:
            raise
        raise ValueError(f"{where} is not a finite number; NaN and infinities are not written as JSON") from None


def non_finite_path(data: Any, prefix: str = "") -> str | None:
    """Where the first NaN or infinite float in nested dicts/lists is ("metrics.loss", "rows[3]"), else None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (prefix or "the value")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_path(value, f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}".lstrip("."))
        if found:
            return found
    return None


def json_line(row: Any) -> str:
    """One line of a JSONL file (finite numbers only, see json_text)."""
    return json_text(row) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    try:
        text = json_text(data, indent=2, sort_keys=True, default=str)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    write_text_atomic(path, text + "\n")


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


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under `folder` (what a manifest records)."""
    folder = Path(folder)
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in skip:
            found[rel] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return found


def first_difference(folder: Path, files: dict[str, dict[str, Any]], hashes: bool = False) -> str | None:
    """The first recorded file that is missing, has another size, or (hashes=True) other bytes; else None."""
    for rel, expected in sorted(files.items()):
        path = Path(folder) / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != expected.get("bytes"):
            return f"{rel} has {size:,} bytes, its manifest says {expected.get('bytes', 0):,}"
        if hashes and expected.get("sha256") and file_digest(path) != expected["sha256"]:
            return f"{rel} has other bytes than when it was written (sha256 differs)"
    return None


def content_identity(paths: list[Path], cache_file: Path | None = None) -> dict[str, Any]:
    """What a fingerprint records of input files read from outside a run: size, mtime and content hash.

    Hashes are cached by (path, size, mtime) in `cache_file` so that planning a run over a large
    corpus does not re-read it; an edited file (new size or mtime) is hashed again.
    """
    cache = (read_json_object(cache_file) or {}) if cache_file else {}
    identity, changed = {}, False
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key], changed = file_digest(path), True
        identity[str(path)] = {"bytes": stat.st_size, "sha256": cache[key]}
    if cache_file and changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing next time
            write_json_atomic(cache_file, cache)
    return identity


CACHE_ENV = "COLLAPSE_CACHE"


def cache_root() -> Path:
    """The one data cache (converted checkpoints, cleaned Wikipedia, content hashes): $COLLAPSE_CACHE,
    else data/cache under the working directory (git-ignored). Deleting it only costs recomputing."""
    return Path(os.environ.get(CACHE_ENV) or "data/cache")
