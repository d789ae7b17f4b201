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

Reproducibility: a unit redone in a process with another history (one that had trained first) must give
the same bytes as in a fresh one. Two things can make processes differ and are made equal here, for every
process (the CLI, its children, the test suite), at start-up (`start_up`):
  - MKL picks kernels and blocking per call and may round differently depending on the alignment of
    the buffers it gets; it only promises run-to-run identical results in conditional numerical
    reproducibility mode. `reproducible_mkl()` sets MKL_CBWR=AUTO,STRICT (the fastest code path for the
    CPU, made deterministic) unless the user set MKL_CBWR or COLLAPSE_MKL_CBWR=0; the environment
    carries it to child processes.
  - The glibc allocator tuning that training applied (`tune_cpu_allocator`) changed where large buffers
    come from (heap or mmap, hence their alignment) in training processes only. It now applies to every
    process; forked workers inherit it, and every process started through the CLI applies it again.
A third needs torch loaded and so is not done here: MKL's vector math (tanh, log, ...) chooses its code path at
its first call, and a first call made by several threads at once did not always compute alike;
`pipeline.lm.loading.settle_vector_math` makes it on one thread before any model is built or loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
CBWR = "AUTO,STRICT"  # MKL's conditional numerical reproducibility: best code path for this CPU, deterministic
CBWR_AUTO_STRICT = 0x10002  # what mkl_cbwr_get(MKL_CBWR_ALL) returns for CBWR (MKL_CBWR_AUTO | MKL_CBWR_STRICT)
MKL_CBWR_ALL = -1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1
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


def reproducible_mkl() -> str:
    """MKL_CBWR=AUTO,STRICT and MKL_DYNAMIC=OMP_DYNAMIC=FALSE unless set; before torch is imported (MKL reads
    them once, at its first call).

    COLLAPSE_MKL_CBWR=0 leaves MKL in its default mode, whose kernels may depend on buffer alignment
    (rounding differs at the 1e-7 level, which a few hundred optimizer steps amplify to ~1e-3 in loss).
    """
    if os.environ.get("COLLAPSE_MKL_CBWR", "1") == "0":
        return "MKL default mode (COLLAPSE_MKL_CBWR=0)"
    # MKL's reproducibility conditions also ask for a fixed thread count: with MKL_DYNAMIC (default TRUE) MKL may
    # run fewer threads than asked when the machine is busy, and only gemm-like routines are thread-invariant.
    for name in ("MKL_DYNAMIC", "OMP_DYNAMIC"):
        os.environ.setdefault(name, "FALSE")
    if os.environ.get("MKL_CBWR"):
        return f"MKL_CBWR={os.environ['MKL_CBWR']} (set by the user)"
    os.environ["MKL_CBWR"] = CBWR  # inherited by every child process
    if "torch" in sys.modules:
        return f"MKL_CBWR={CBWR} for child processes only: torch was imported first"
    return f"MKL_CBWR={CBWR}"


def mkl_cbwr_mode() -> int | None:
    """MKL's reproducibility setting as MKL reports it (MKL_CBWR_* bits; AUTO,STRICT = 0x10002), None without MKL.

    MKL fixes the setting at its first call, so this tells whether MKL_CBWR was in place in time. It asks
    `mkl_serv_cbwr_get`, the function behind mkl_cbwr_get that torch's statically linked MKL exports.
    """
    import torch

    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(MKL_CBWR_ALL))


def tune_cpu_allocator() -> str:
    """Keep freed memory in the process (glibc): no mmap/munmap + page faults per training step.

    A CPU training step allocates and frees the same (tokens x vocab) buffers every step; glibc serves
    them with fresh mmaps whose pages are faulted in and zeroed each time, which costs about as much
    as the log-softmax itself. Raising the mmap and trim thresholds reuses the heap instead (the
    process keeps its peak footprint, which a training step reaches anyway). Applied to every process
    at start-up, not only to those that train, so that all of them place buffers alike (see above).
    Idempotent; a no-op off glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not applied: not glibc"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "not applied: libc.so.6 not found"
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return "applied" if ok else "refused by mallopt"


def start_up() -> dict[str, str]:
    """Everything an entry point does first, before torch is imported; what happened, for a log line."""
    return {"fast_mkl": enable_fast_mkl_on_amd(), "mkl_cbwr": reproducible_mkl(), "allocator": tune_cpu_allocator()}
