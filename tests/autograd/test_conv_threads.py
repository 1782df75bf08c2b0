"""The threaded paths of the conv / pooling kernels give bit-identical results for any thread count.

Small test inputs stay below ``PARALLEL_MIN_WORK`` and run serially everywhere else in the suite, so
here the threshold is lowered to zero to force the thread pool (on the NumPy backend; other backends
always run serially, and then this test checks the serial path against itself).
"""
import numpy as np
import pytest

import autograd as ag
from autograd import _conv_kernels

from .helpers import dev, host

CASES = {
    "dense": lambda x, w: ag.conv2d(x, w, padding=1),
    "dense strided": lambda x, w: ag.conv2d(x, w, stride=2, padding=1),
    "grouped strided": lambda x, w: ag.conv2d(x, w[:, :2], stride=2, groups=4),
    "depthwise strided": lambda x, w: ag.conv2d(x, w[:8, :1], stride=2, padding=1, groups=8),
    "max_pool": lambda x, w: ag.max_pool2d(x, 3, 2, 1),
    "avg_pool": lambda x, w: ag.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
}


def _values_and_grads(f, x, w, g_seed):
    out, pullback = ag.vjp(f, dev(x), dev(w))
    g = np.random.default_rng(g_seed).standard_normal(out.shape)
    return [host(out)] + [host(v) for v in pullback(dev(g))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_thread_count_does_not_change_the_numbers(monkeypatch, rng, name):
    x = rng.standard_normal((5, 8, 9, 7))
    w = rng.standard_normal((8, 8, 3, 3))
    monkeypatch.setattr(_conv_kernels, "PARALLEL_MIN_WORK", 0)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_conv_kernels, "THREADS", threads)
        results.append(_values_and_grads(CASES[name], x, w, g_seed=7))
    for other in results[1:]:
        for serial, threaded in zip(results[0], other):
            np.testing.assert_array_equal(threaded, serial)
