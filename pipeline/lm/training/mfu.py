"""Model FLOPs utilisation against a peak MEASURED on this machine, once, and cached.

The peak is the best rate of square matmuls at the training dtype (what a transformer step mostly
is), the best of many repetitions of a few sizes over about 1.5 s on this device with this many CPU
threads (the best, because other processes on a shared machine only ever slow a repetition down), stored in
`$XDG_CACHE_HOME/collapse-lab/peak_flops.json` (default ~/.cache) under a key of device name, dtype,
torch version, thread count and, on CPU, which MKL kernels are in use (pipeline/orchestration/cpu_startup.py). No vendor table: a throttled laptop, a MIG slice or a CPU without
AVX-512 each get their own honest denominator. If a training run ever goes faster than the cached
peak (MFU > 1: the measurement was slowed by other load), the loop measures again once and the cache
keeps the larger value.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from pipeline.io import write_json_atomic

CPU_SIZES, GPU_SIZES = (512, 1024, 2048), (4096, 8192)
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
    # The CLI's start-up (pipeline/orchestration/cpu_startup.py) sets this when MKL dispatches by CPU features.
    by_features = os.environ.get("COLLAPSE_MKL_BY_FEATURES") == "1"
    return f"{name} x{torch.get_num_threads()} threads" + (" mkl-by-features" if by_features else "")


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    return f"{device_name(device)} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of this device at `dtype`: from the cache, else measured now and cached."""
    device = torch.device(device)
    key = peak_key(device, dtype)
    table = _read(cache_file())
    if key not in table:
        return _store(key, measure_matmul_flops(device, dtype))
    return float(table[key])


def remeasure_peak(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Measure again and keep the larger of the old and new peak: called when a training run went faster
    than the cached 'peak', which can only mean the first measurement was slowed down by other load."""
    device = torch.device(device)
    key = peak_key(device, dtype)
    return _store(key, measure_matmul_flops(device, dtype), keep_larger=True)


def _store(key: str, value: float, keep_larger: bool = False) -> float:
    path = cache_file()
    table = _read(path)  # another process may have written meanwhile
    if keep_larger and key in table:
        value = max(value, float(table[key]))
    table[key] = value
    write_json_atomic(path, table)
    return value


def measure_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s over square matmuls (n = 512, 1024, 2048 on CPU; 4096, 8192 on GPU), ~1.5 s in all.

    Several sizes because the fastest depends on the BLAS and the caches; the best repetition because
    other processes can only slow one down.
    """
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    return max(_best_rate(device, dtype, n, MEASURE_SECONDS / len(sizes)) for n in sizes)


def _best_rate(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for i in range(10_000):
        _sync(device)
        start = time.perf_counter()
        for _ in range(2):
            torch.mm(a, b, out=out)
        _sync(device)
        elapsed = (time.perf_counter() - start) / 2
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


def mfu(tokens_per_second: float, flops_per_token: float, peak_per_process: float, processes: int = 1) -> float:
    """Achieved training FLOP/s over the peak of all processes together."""
    return tokens_per_second * flops_per_token / (peak_per_process * processes)
