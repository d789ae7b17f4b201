"""Model FLOPs utilisation against a peak MEASURED on this machine, once, and cached.

The peak is the best rate of a square matmul at the training dtype (what a transformer step mostly
is), the best of many repetitions over about 1.5 s on this device with this many CPU threads (the best,
because other processes on a shared machine only ever slow a repetition down), and stored in
`$XDG_CACHE_HOME/collapse-lab/peak_flops.json` (default ~/.cache) under a key of device name, dtype,
torch version, thread count and, on CPU, which MKL kernels are in use (pipeline/training/cpu_blas.py). No vendor table: a throttled laptop, a MIG slice or a CPU without
AVX-512 each get their own honest denominator.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

CPU_SIZE, GPU_SIZE = 1024, 8192
MEASURE_SECONDS = 1.5


def cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "collapse-lab" / "peak_flops.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from pipeline.training.cpu_blas import is_active

    return f"{name} x{torch.get_num_threads()} threads" + (" mkl-by-features" if is_active() else "")


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    return f"{device_name(device)} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of this device at `dtype`: from the cache, else measured now and cached."""
    device = torch.device(device)
    key = peak_key(device, dtype)
    path = cache_file()
    table = _read(path)
    if key not in table:
        table = _read(path)  # another process may have written it meanwhile
        table[key] = measure_matmul_flops(device, dtype)
        _write_atomic(path, table)
    return float(table[key])


def measure_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Best observed FLOP/s of an n x n matmul (n = 1024 on CPU, 8192 on GPU) over ~1.5 s."""
    n = GPU_SIZE if device.type == "cuda" else CPU_SIZE
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = float("inf")
    deadline = time.perf_counter() + MEASURE_SECONDS
    for i in range(1000):
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        _sync(device)
        elapsed = (time.perf_counter() - start) / 4
        if i > 0:  # the first round pays for warm-up (allocation, kernel selection)
            best = min(best, elapsed)
        if i > 2 and time.perf_counter() > deadline:
            break
    return 2.0 * n ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, table: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def mfu(tokens_per_second: float, flops_per_token: float, peak_per_process: float, processes: int = 1) -> float:
    """Achieved training FLOP/s over the peak of all processes together."""
    return tokens_per_second * flops_per_token / (peak_per_process * processes)
