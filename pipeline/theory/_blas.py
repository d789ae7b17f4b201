"""Best-effort control of numpy's OpenBLAS thread count, without extra dependencies.

Why: the simulations solve thousands of systems of a few hundred unknowns. At that size BLAS threads gain
little, and on a shared 2-core machine OpenBLAS's spinning worker threads made the same simulation ~6x slower
(measured: 13.7 s vs 2.1 s). `single_blas_thread()` sets one thread for a block and restores the previous
count. If the library cannot be found (other BLAS builds), it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os

import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def _find_openblas():
    """(setter, getter) from the OpenBLAS shipped with numpy, or (None, None)."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs_dir, "*openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, name) for name in _SETTERS if hasattr(lib, name)), None)
        getter = next((getattr(lib, name) for name in _GETTERS if hasattr(lib, name)), None)
        if setter is not None and getter is not None:
            setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
            return setter, getter
    return None, None


_SET_THREADS, _GET_THREADS = _find_openblas()


@contextlib.contextmanager
def single_blas_thread():
    """Run the block with one OpenBLAS thread (no-op when numpy's OpenBLAS is not found)."""
    if _SET_THREADS is None:
        yield
        return
    previous = _GET_THREADS()
    _SET_THREADS(1)
    try:
        yield
    finally:
        _SET_THREADS(previous)
