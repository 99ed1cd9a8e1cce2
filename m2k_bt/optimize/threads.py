"""One BLAS thread where a study runs its trials.

A kernel trial takes about a millisecond, and its few small matrix products (the returns'
statistics) are far too small to share between threads: on a busy 2-core machine numpy's
threaded OpenBLAS took 343 us for a product that one thread does in 3 us (issue 23), and a
study's worker processes already keep every core busy. :func:`one_blas_thread` limits the
BLAS to one thread for the duration of a study's trial loop (with ``threadpoolctl`` when it
is installed, else through OpenBLAS's own ``set_num_threads`` in the library numpy loaded) and
restores it afterwards; :data:`ONE_THREAD_ENV` is what a worker process gets in its
environment, so that its BLAS starts with one thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

__all__ = ["ONE_THREAD_ENV", "blas_threads", "one_blas_thread", "one_thread_children"]

#: The environment of a process that should run its BLAS (and OpenMP) on one thread; read
#: when numpy is first imported.
ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: OpenBLAS's thread-count functions, by the names its builds export (numpy's wheels bundle
#: ``scipy_openblas64_``).
_OPENBLAS_NAMES = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                   "openblas_{}_num_threads64_", "openblas_{}_num_threads")


def _openblas() -> list[tuple]:
    """``(get, set)`` of each OpenBLAS loaded in this process (none found: ``[]``)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh
                            if "openblas" in line.lower() and ".so" in line})
    except OSError:  # not Linux: threadpoolctl or the environment does it
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_NAMES:
            get = getattr(lib, name.format("get"), None)
            put = getattr(lib, name.format("set"), None)
            if get is not None and put is not None:
                found.append((get, put))
                break
    return found


def blas_threads() -> list[int]:
    """The thread count of each OpenBLAS loaded in this process (``[]``: none found)."""
    return [int(get()) for get, _ in _openblas()]


@contextlib.contextmanager
def one_blas_thread():
    """Within the block numpy's BLAS runs on one thread; the previous count after it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    libs = _openblas()
    before = [get() for get, _ in libs]
    for _, put in libs:
        put(1)
    try:
        yield
    finally:
        for (_, put), n in zip(libs, before):
            put(n)


@contextlib.contextmanager
def one_thread_children():
    """Within the block, processes started get :data:`ONE_THREAD_ENV` in their environment
    (their BLAS starts with one thread); this process's environment is restored after."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    os.environ.update(ONE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
