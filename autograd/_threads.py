"""Threads and cache-sized blocks for the NumPy backend's array loops.

NumPy runs each ufunc loop on one core (and releases the GIL while it runs), while BLAS -- and
PyTorch -- use every core.  Work that splits into independent parts (samples, channel blocks, rows,
runs of elements) is shared here among a few threads.  Every part is computed exactly as a serial
loop would compute it, so results do not depend on the thread count or on the block size.

A kernel of several passes over a full-size array (sigmoid: abs, negate, exp, max, add, divide)
streams each pass through memory.  Run block by block instead, a block stays in the core's L2 cache
through all the passes, and the temporaries are block-sized rather than full-size.

On other backends (CuPy, the strict test backend) every call runs whole and serially: on CuPy each
array call is a kernel launch, so blocks would only multiply the launches.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from . import backend
from .backend import xp

#: Threads for the array loops (the cores this process may run on).
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
#: Loops touching fewer elements than this run serially: a thread hand-off costs more.
PARALLEL_MIN_WORK = 1 << 18
#: Blocked kernels (softmax rows, :func:`elementwise`) work on about this many bytes of output per
#: block.  Smaller blocks cost more NumPy calls than they save: on 2 cores (1 MB L2 each) softmax at
#: (2, 8, 1024, 1024) took 22-25 ms (f32) / 50-58 ms (f64) with 256 KB blocks and 14-16 / 25-31 ms
#: with 1 MB blocks (2-4 MB were no faster); sigmoid on (8, 256, 28, 28) float64 4.6 ms unblocked,
#: 5.2 / 3.0 / 2.3 ms with 64 KB / 256 KB / 1 MB blocks.
BLOCK_BYTES = 1 << 20
#: Whether kernels run in blocks on threads at all (NumPy only; see the module docstring).
BLOCKED = backend.name == "numpy"
_pool = None


def parallel_for(fn, n: int, work: int) -> None:
    """Call ``fn(i)`` for i in range(n) -- samples or channel blocks; on NumPy over :data:`THREADS` threads.

    ``work`` (elements touched) below :data:`PARALLEL_MIN_WORK` runs serially.  Each call must
    write only its own part of the result, computed exactly as in a serial loop.
    """
    global _pool
    if not threaded(n, work):
        for i in range(n):
            fn(i)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="autograd")
    for _ in _pool.map(fn, range(n)):  # consuming the results re-raises any error
        pass


def threaded(n: int, work: int) -> bool:
    """Whether :func:`parallel_for` would use the thread pool for this loop."""
    return THREADS > 1 and n > 1 and work >= PARALLEL_MIN_WORK and BLOCKED


def in_blocks(run_block, count: int, per_block: int, work: int) -> None:
    """``run_block(start, stop)`` over consecutive ranges of ``range(count)``, ``per_block`` items each
    (the last may be shorter); each thread takes one contiguous run of ranges."""
    starts = range(0, count, max(1, per_block))
    parts = max(1, min(THREADS, len(starts)))

    def run_part(k):
        for start in starts[k * len(starts) // parts: (k + 1) * len(starts) // parts]:
            run_block(start, min(count, start + per_block))

    parallel_for(run_part, parts, work)


def elementwise(kernel, *arrays):
    """A new array of ``arrays[0]``'s shape and dtype, filled by ``kernel(out, *arrays)``.

    ``kernel`` must compute each output element from the same element of every input (all of one
    shape), writing only into ``out``.  On NumPy, with every input C-contiguous, it is called on runs
    of :data:`BLOCK_BYTES` of output (``kernel(out[a:b], *(x[a:b] for x in arrays))`` on the
    flattened arrays) spread over threads; otherwise once on the whole arrays.
    """
    first = arrays[0]
    out = xp.empty(first.shape, dtype=first.dtype)
    per_block = max(1, BLOCK_BYTES // out.dtype.itemsize)
    if (not BLOCKED or out.size <= per_block
            or not all(a.flags.c_contiguous and a.shape == first.shape for a in arrays)):
        kernel(out, *arrays)
        return out
    flat_out = xp.reshape(out, (-1,))
    flat = [xp.reshape(a, (-1,)) for a in arrays]
    in_blocks(lambda a, b: kernel(flat_out[a:b], *(x[a:b] for x in flat)), out.size, per_block, out.size * len(arrays))
    return out


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child inherits the pool object but not its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
