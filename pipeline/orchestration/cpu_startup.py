"""Fast float32 matmuls on AMD CPUs: let Intel MKL pick its AVX-512/AVX2 kernels by CPU features.

PyTorch's x86 wheels do float32 matmuls with Intel MKL. MKL asks an internal function,
`mkl_serv_intel_cpu_true`, whether the CPU is made by Intel and on AMD CPUs falls back to generic
kernels: on this machine's AMD EPYC a 1024^3 float32 matmul runs at ~45 GFLOP/s per core instead of
~150 (measured; see bench/train.py). Matmuls are most of a training step, so a small model trains about
twice as fast with the fix. The fix is the widely used one: a one-line shared library defining that
function to return 1, loaded (RTLD_GLOBAL) before torch so that MKL's call binds to it. MKL then
dispatches on the CPU's feature flags like on any Intel CPU. Results stay IEEE float32 (another
kernel, so another summation order: differences at the 1e-7 relative level).

It only works if applied before `import torch` (torch binds the symbol when it is loaded), hence
`enable_fast_mkl_on_amd()` is meant for the first lines of an entry point; it also puts the library in
LD_PRELOAD so child processes (accelerate workers) get it. Opt out with COLLAPSE_FAST_MKL=0. A no-op on
non-AMD CPUs, without a C compiler, or once torch is imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
LIBRARY_STEM = "mkl_features_dispatch"
ACTIVE_ENV = "COLLAPSE_MKL_BY_FEATURES"  # set to 1 once the shim is loaded; inherited by worker processes


def cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def library_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "collapse-lab"
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    return root / f"{LIBRARY_STEM}-{digest}.so"


def build_library() -> Path | None:
    """Compile the shim once per machine into the cache (temp file + rename); None without a compiler."""
    path = library_path()
    if path.is_file():
        return path
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source, output = Path(tmp) / "shim.c", Path(tmp) / "shim.so"
        source.write_text(SOURCE)
        result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(output), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return None
        os.replace(output, path)
    return path


def is_active() -> bool:
    """Whether the shim is loaded in this process (so MFU peaks are keyed apart from the slow path)."""
    try:
        return LIBRARY_STEM in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def enable_fast_mkl_on_amd() -> str:
    """Apply the fix if it can work here; returns what happened (for a log line)."""
    if os.environ.get("COLLAPSE_FAST_MKL", "1") == "0":
        return "disabled (COLLAPSE_FAST_MKL=0)"
    if is_active():
        return "active"
    if "torch" in sys.modules:
        return "not applied: torch was imported first"
    if cpu_vendor() != "AuthenticAMD":
        return "not needed: not an AMD CPU"
    path = build_library()
    if path is None:
        return "not applied: no C compiler to build the shim"
    ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    os.environ[ACTIVE_ENV] = "1"  # read by the MFU peak cache key (pipeline/lm/training/mfu.py)
    preload = os.environ.get("LD_PRELOAD", "")
    if str(path) not in preload.split(":"):
        os.environ["LD_PRELOAD"] = f"{path}:{preload}" if preload else str(path)
    return "active"
