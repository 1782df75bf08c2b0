"""The threaded paths of the conv / pooling kernels give bit-identical results for any thread count,
and the whole-batch path of launch-bound backends (CuPy) gives the numbers of the per-sample path.

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
    "depthwise": lambda x, w: ag.conv2d(x, w[:8, :1], padding=1, groups=8),
    "pointwise": lambda x, w: ag.conv2d(x, w[:, :, :1, :1]),
    "pointwise strided grouped": lambda x, w: ag.conv2d(x, w[:, :4, :1, :1], stride=2, groups=2),
    "dense strided dilated": lambda x, w: ag.conv2d(x, w, stride=2, padding=2, dilation=2),
    "max_pool": lambda x, w: ag.max_pool2d(x, 3, 2, 1),
    "max_pool ceil dilated": lambda x, w: ag.max_pool2d(x, 2, 2, 1, dilation=2, ceil_mode=True),
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_batch_path_gives_the_per_sample_numbers(monkeypatch, rng, name):
    """WHOLE_BATCH (on for CuPy and the strict backend) folds samples into channels / one im2col buffer."""
    x = rng.standard_normal((5, 8, 9, 7))
    w = rng.standard_normal((8, 8, 3, 3))
    results = {}
    for whole in (False, True):
        monkeypatch.setattr(_conv_kernels, "WHOLE_BATCH", whole)
        monkeypatch.setattr(_conv_kernels, "CHUNK_BYTES", 1)  # per-sample chunks when not whole
        results[whole] = _values_and_grads(CASES[name], x, w, g_seed=3)
    for per_sample, whole in zip(results[False], results[True]):
        assert whole.shape == per_sample.shape
        # equal up to the order of floating-point sums (GEMM blocking, sum over samples)
        np.testing.assert_allclose(whole, per_sample, rtol=1e-12, atol=1e-12)


def test_whole_batch_is_on_exactly_for_launch_bound_backends():
    assert _conv_kernels.WHOLE_BATCH == (ag.backend.name != "numpy")
