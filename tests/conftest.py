"""The test process's CPU start-up (as the CLI's), and the `slurm_cluster` fixture: a real two-node Slurm
on localhost for tests marked `slurm`.

Started once per session, as root: a private munged (own socket, so it never touches a system one),
slurmctld, and two slurmd (node1, node2, both this machine) with tests/slurm/slurm.conf.in rendered
into a temp dir. SLURM_CONF points the client commands at it. Every daemon is stopped by its pid at
the end, also when a test fails. Without Slurm binaries or root the tests skip with the reason;
COLLAPSE_REQUIRE_SLURM=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import sys

TORCH_LOADED_BEFORE_START_UP = "torch" in sys.modules

# The test process starts like the CLI, before anything loads torch: MKL reads MKL_CBWR once, at its first
# call, so a reference computed in-process after some test had already run a matmul without it would be
# rounded differently from the children (which always start with it) on CPUs where MKL's default path is
# not reproducible (Intel). One start-up for every process keeps verdicts independent of vendor and order.
from pipeline.orchestration.cpu_startup import start_up  # noqa: E402

CPU_START_UP = start_up()

import os  # noqa: E402
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SBIN = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
CONF_TEMPLATE = Path(__file__).parent / "slurm" / "slurm.conf.in"
MAX_ARRAY_SIZE = 2  # small, so that a test sees a wave split into several arrays


def _why_no_slurm() -> str | None:
    missing = [p for p in SBIN if not os.access(p, os.X_OK)] + [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}; apt-get install slurm-wlm)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    if not Path("/etc/munge/munge.key").is_file():
        return "no munge key at /etc/munge/munge.key"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"slurm fixture: {what} did not happen within {timeout:.0f}s\n{tail}")
        time.sleep(0.2)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(pid_files: list[Path]) -> None:
    """SIGTERM each daemon by its pid file, SIGKILL what is still there after 10 s."""
    pids = [pid for pid in map(_pid, pid_files) if pid and _alive(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _nodes_idle(env: dict) -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, capture_output=True, text=True, env=env).stdout
    states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return states.get("node1") == "idle" and states.get("node2") == "idle"


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields {"conf": path, "state": dir, "env": environment with SLURM_CONF}."""
    reason = _why_no_slurm()
    if reason:
        if os.environ.get("COLLAPSE_REQUIRE_SLURM") == "1":
            pytest.fail(f"COLLAPSE_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="collapse-slurm-"))  # not under pytest's 0700 dir: munge must reach it
    state.chmod(0o755)
    munge = state / "munge"
    munge.mkdir()
    shutil.chown(munge, "munge", "munge")
    conf = state / "slurm.conf"
    conf.write_text(CONF_TEMPLATE.read_text().format(
        state=state, munge_socket=munge / "munge.socket", ctld_port=_free_port(), node1_port=_free_port(),
        node2_port=_free_port(), cpus=2, memory_mb=8000, max_array_size=MAX_ARRAY_SIZE))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [state / "slurmd-node1.pid", state / "slurmd-node2.pid", state / "slurmctld.pid", munge / "munged.pid"]
    old_conf = os.environ.get("SLURM_CONF")
    try:
        subprocess.run(["runuser", "-u", "munge", "--", SBIN[0], f"--socket={munge / 'munge.socket'}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}"], check=True, env=env)
        _wait(lambda: (munge / "munge.socket").exists(), 10, "munged socket", munge / "munged.log")
        subprocess.run([SBIN[1]], check=True, env=env)
        for node in ("node1", "node2"):
            subprocess.run([SBIN[2], "-N", node], check=True, env=env)
        _wait(lambda: _nodes_idle(env), 30, "both nodes idle in sinfo", state / "slurmctld.log")
        os.environ["SLURM_CONF"] = str(conf)
        yield {"conf": conf, "state": state, "env": env}
    finally:
        ids = subprocess.run(["squeue", "-h", "-o", "%A"], check=False, capture_output=True, text=True, env=env).stdout.split()
        if ids:
            subprocess.run(["scancel", *sorted(set(ids))], check=False, env=env, capture_output=True)
            time.sleep(1)
        _stop(pid_files)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(state, ignore_errors=True)


def pytest_configure(config):
    if TORCH_LOADED_BEFORE_START_UP:
        raise pytest.UsageError("torch was imported before tests/conftest.py could fix MKL's reproducible mode "
                                "(a pytest plugin or -p option loads it): run without it")


def pytest_report_header(config):
    return f"cpu start-up: {CPU_START_UP}"
