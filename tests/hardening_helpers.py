"""Helpers for tests/test_hardening.py: the CLI in-process with the toy stages, tree snapshots, faulty
disks (simulated and, where the kernel lets us, real read-only bind mounts and full tmpfs mounts), and
lock holders in other processes.

Run as a script it is the `collapse` CLI with the toy stages of tests/toy_stages.py (and a short lock
poll), so a test can start a second, overlapping `collapse run` in another process:

    python tests/hardening_helpers.py run CONFIG --no-progress
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from config_files import write_config_file

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY = TESTS / "configs" / "tiny.yaml"
TEMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------- configs


def toy_config(tmp_path: Path, name: str = "toy", **sections) -> Path:
    """A config for the toy stages: prepare -> mix (2 fractions x 2 budgets) -> train (one per mix unit)."""
    defaults = {"stages": ["prepare", "mix", "train"], "train": {"training": {"lr": 0.01}},
                "mix": {"synthetic_fractions": [0.0, 0.5], "token_budgets": [100, 200]}}
    return write_config_file(tmp_path, name, defaults, sections)


def tiny_args(tmp_path: Path, *sets: str) -> list[str]:
    """tests/configs/tiny.yaml into tmp_path/runs, with a smaller corpus, plus `--set` items."""
    items = [f"runs_dir={tmp_path / 'runs'}", "corpus.reference.documents=200", *sets]
    return [str(TINY), *[a for item in items for a in ("--set", item)]]


# ---------------------------------------------------------------- the CLI


def error_line(err: str) -> str:
    """The one line a bad input prints; fails unless stderr is exactly `collapse: error: ...\\n`."""
    assert err.startswith("collapse: error: "), f"expected one error line, got: {err!r}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"expected exactly one line, got: {err!r}"
    return err[len("collapse: error: "):-1]


def last_error(err: str) -> str:
    """The error line of a command that logged progress first: exactly one `collapse: error:`, ending stderr,
    on one line (log lines and progress bars may come before it)."""
    assert err.count("collapse: error: ") == 1, f"expected one error line, got: {err!r}"
    assert err.endswith("\n"), err
    tail = err.split("collapse: error: ", 1)[1]
    assert tail.count("\n") == 1 and "\r" not in tail, f"the error must be one line: {tail!r}"
    return tail[:-1]


def use_toy_stages(monkeypatch, poll: float = 0.05) -> None:
    """`collapse` commands plan and run the toy stages (cli._executor imports default_stages at call time)."""
    import pipeline.orchestration.runner as runner
    import pipeline.orchestration.sweep as sweep
    from toy_stages import STAGES

    monkeypatch.setattr(runner, "default_stages", lambda: dict(STAGES))
    monkeypatch.setattr(sweep, "LOCK_POLL_SECONDS", poll)


def toy_cli_process(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`collapse ARGS` with the toy stages in another process (stdout/stderr piped)."""
    return subprocess.Popen([sys.executable, str(Path(__file__)), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, **popen)


# ---------------------------------------------------------------- trees


def files_under(root: Path) -> list[str]:
    """Every file (not directory) under root, relative, sorted; [] when root does not exist."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def temp_leftovers(root: Path) -> list[str]:
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"{TEMP_PREFIX}*")) if root.exists() else []


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, size, mtime and (files) content hash: equal snapshots = nothing written."""
    out = {}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            out[rel] = ("dir", st.st_mtime_ns)
    return out


def artefacts(run_dir: Path) -> dict[str, dict]:
    """What a run produced, for comparing two runs: per finished unit its fingerprint, metrics, and the
    sha256 of every file in its directory (read from disk, not from the manifest)."""
    run_dir = Path(run_dir)
    out = {}
    for manifest_path in sorted(run_dir.rglob("manifest.json")):
        rel = manifest_path.parent.relative_to(run_dir)
        if rel.parts and rel.parts[0] in (".collapse", "logs"):
            continue
        manifest = json.loads(manifest_path.read_text())
        unit_dir = manifest_path.parent
        nested = {p.parent for p in unit_dir.rglob("manifest.json") if p != manifest_path}
        files = {}
        for path in sorted(unit_dir.rglob("*")):
            if path.is_file() and path.name != "manifest.json" and not any(n in path.parents for n in nested):
                files[path.relative_to(unit_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        out[rel.as_posix()] = {"fingerprint": manifest["fingerprint"], "metrics": manifest["metrics"],
                               "files": files, "recorded": {k: v["sha256"] for k, v in manifest["files"].items()}}
    return out


# ---------------------------------------------------------------- faulty disks


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class FaultyDisk:
    """Make writes to paths under `root` (optionally only those whose path contains `only`) raise OSError(code).

    Patches os.open (tempfile.mkstemp), builtins.open/io.open in writing modes (logging, Path.write_text,
    lock files), os.mkdir, os.replace and os.rename. `attempts` lists the paths a write was tried on.
    """

    def __init__(self, root: Path, code: int, only: str | None = None) -> None:
        self.root, self.code, self.only = str(Path(root).resolve()), code, only
        self.attempts: list[str] = []

    def _hit(self, path) -> bool:
        try:
            full = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False
        if not (full == self.root or full.startswith(self.root + os.sep)):
            return False
        if self.only is not None and self.only not in full:
            return False
        self.attempts.append(full)
        return True

    def _fail(self, path):
        raise OSError(self.code, os.strerror(self.code), os.fsdecode(path))

    @contextlib.contextmanager
    def active(self, monkeypatch) -> Iterator["FaultyDisk"]:
        real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir
        real_replace, real_rename = os.replace, os.rename

        def os_open(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS and self._hit(path):
                self._fail(path)
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and self._hit(file):
                self._fail(file)
            return real_open(file, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if self._hit(path) and not os.path.isdir(path):
                self._fail(path)
            return real_mkdir(path, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            if self._hit(dst):
                self._fail(dst)
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            if self._hit(dst):
                self._fail(dst)
            return real_rename(src, dst, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(os, "open", os_open)
            m.setattr(builtins, "open", open_)
            m.setattr(io, "open", open_)
            m.setattr(os, "mkdir", mkdir)
            m.setattr(os, "replace", replace)
            m.setattr(os, "rename", rename)
            yield self


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only_mount(path: Path) -> Iterator[None]:
    """Bind-mount `path` read-only over itself (a real EROFS); skips the test where mounting is not allowed."""
    import pytest

    if not _mount("--bind", str(path), str(path)):
        pytest.skip("bind mounts need CAP_SYS_ADMIN (the simulated read-only cases still run)")
    try:
        if not _mount("-o", "remount,bind,ro", str(path), str(path)):
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        _umount(path)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m") -> Iterator[None]:
    """A small tmpfs at `path` (a real ENOSPC once full); skips the test where mounting is not allowed."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN (the simulated disk-full cases still run)")
    try:
        yield
    finally:
        _umount(path)


def fill_disk(folder: Path) -> Path:
    """Write zeros into folder/filler until the filesystem is full; returns the filler."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError):  # fill the last partial page too
        with open(folder / "filler2", "wb") as out:
            while True:
                out.write(b"\0")
                out.flush()
    return filler


# ---------------------------------------------------------------- lock holders


HOLD_LOCK = """
import fcntl, json, os, socket, sys, time
path, mark, release = sys.argv[1:4]
os.makedirs(os.path.dirname(path), exist_ok=True)
handle = open(path, "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0); handle.truncate()
handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})); handle.flush()
open(mark, "w").write("held")
while not os.path.exists(release):
    time.sleep(0.05)
"""


def hold_lock(lock: Path, mark: Path, release: Path) -> subprocess.Popen:
    """Another live process holding a unit's lock (as a runner does) until `release` exists."""
    return subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock), str(mark), str(release)])


def wait_for(path: Path, proc: subprocess.Popen | None = None, limit: float = 120) -> None:
    """Until `path` exists (fails if `proc` ends first, or after `limit` seconds: a hang, not a timing check)."""
    import time

    deadline = time.monotonic() + limit
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path} appeared")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    import pipeline.orchestration.runner as _runner
    import pipeline.orchestration.sweep as _sweep
    from toy_stages import STAGES as _STAGES

    _runner.default_stages = lambda: dict(_STAGES)
    _sweep.LOCK_POLL_SECONDS = 0.05
    from pipeline.orchestration.cli import main

    raise SystemExit(main(sys.argv[1:]))
