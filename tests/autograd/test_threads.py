"""The threaded and blocked paths (autograd._threads) give bit-identical results for any thread count
and block size -- conv and pooling kernels, and the blocked elementwise primitives -- and the
whole-batch path of launch-bound backends (CuPy) gives the numbers of the per-sample path.

Small test inputs stay below ``PARALLEL_MIN_WORK`` / ``BLOCK_BYTES`` and run serially and unblocked
everywhere else in the suite, so here the thresholds are lowered to force the thread pool and the
blocks (``BLOCKED`` is forced on as well, so the strict backend runs the blocked path here too).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import _conv_kernels, _threads

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


def _values_and_grads(f, *args, g_seed):
    out, pullback = ag.vjp(f, *(dev(a) for a in args))
    g = np.random.default_rng(g_seed).standard_normal(out.shape).astype(out.dtype)  # the output's dtype
    return [host(out)] + [host(v) for v in pullback(dev(g))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_thread_count_does_not_change_the_numbers(monkeypatch, rng, name):
    x = rng.standard_normal((5, 8, 9, 7))
    w = rng.standard_normal((8, 8, 3, 3))
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_threads, "THREADS", threads)
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


SHIFTED_CASES = {
    "3x3 pad 1": dict(padding=1),
    "3x3 no pad": dict(),
    "3x3 dilation 2 pad 2": dict(padding=2, dilation=2),
    "3x3 same": dict(padding="same"),
    "2x3 same (asymmetric padding)": dict(padding="same", kernel=(2, 3)),
    "1x3 pad (0, 1)": dict(padding=(0, 1), kernel=(1, 3)),
    "5x5 pad 2": dict(padding=2, kernel=(5, 5)),
    "3x3 groups 2 dilation 2": dict(padding=2, dilation=2, groups=2),
    "3x3 groups 3 same": dict(padding="same", groups=3),
}


@pytest.mark.parametrize("name", sorted(SHIFTED_CASES))
def test_shifted_kernel_gives_the_im2col_numbers(monkeypatch, rng, name):
    """_Shifted (stride-1 ungrouped convs with deep inputs) = _Gemm's im2col path, values and gradients."""
    case = dict(SHIFTED_CASES[name])
    kh, kw = case.pop("kernel", (3, 3))
    groups = case.get("groups", 1)
    x = rng.standard_normal((3, 6, 11, 12))
    w = rng.standard_normal((6 if groups > 1 else 5, 6 // groups, kh, kw))
    monkeypatch.setattr(_conv_kernels, "SHIFTED_MAX_WIDENING", 10.0)
    results = {}
    for threshold in (10**9, 1):  # im2col, then shifted
        monkeypatch.setattr(_conv_kernels, "SHIFTED_MIN_CHANNELS", threshold)
        monkeypatch.setattr(_conv_kernels, "SHIFTED_MIN_GROUP_CHANNELS", threshold)
        results[threshold] = _values_and_grads(lambda x, w: ag.conv2d(x, w, **case), x, w, g_seed=5)
    geo_kernel = _conv_kernels._kernel_for(
        _conv_kernels.Geometry((kh, kw), (1, 1), (1, 1), ((1, 1), (1, 1)), groups, (11, 12), (11, 12)), 6, 6)
    assert geo_kernel is (_conv_kernels._Shifted if not _conv_kernels.WHOLE_BATCH else _conv_kernels._Gemm)
    for im2col, shifted in zip(results[10**9], results[1]):
        np.testing.assert_allclose(shifted, im2col, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 3])
def test_shifted_kernel_gradgradcheck(monkeypatch, rng, groups):
    monkeypatch.setattr(_conv_kernels, "SHIFTED_MIN_CHANNELS", 1)
    monkeypatch.setattr(_conv_kernels, "SHIFTED_MIN_GROUP_CHANNELS", 1)
    monkeypatch.setattr(_conv_kernels, "SHIFTED_MAX_WIDENING", 10.0)
    x, w = dev(rng.standard_normal((2, 3, 5, 6))), dev(rng.standard_normal((3, 3 // groups, 3, 3)))
    f = lambda x, w: ag.conv2d(x, w, padding=1, dilation=(1, 2), groups=groups)  # noqa: E731
    assert ag.gradcheck(f, x, w)
    assert ag.gradgradcheck(f, x, w, mode="fast")


# ---------------------------------------------------------------------------------------------
# blocks: in_blocks and the elementwise primitives


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 60), per_block=st.integers(1, 70), threads=st.integers(1, 4))
def test_in_blocks_visits_every_index_once_in_ranges_of_per_block(count, per_block, threads):
    seen = []
    saved = _threads.THREADS, _threads.PARALLEL_MIN_WORK
    _threads.THREADS, _threads.PARALLEL_MIN_WORK = threads, 0
    try:
        _threads.in_blocks(lambda a, b: seen.append((a, b)), count, per_block, work=count)
    finally:
        _threads.THREADS, _threads.PARALLEL_MIN_WORK = saved
    assert sorted(i for a, b in seen for i in range(a, b)) == list(range(count))
    assert all(b - a == per_block or b == count for a, b in seen)


ELEMENTWISE = {
    "sigmoid": ag.sigmoid,
    "tanh": ag.tanh,
    "sigmoid (float32)": lambda x: ag.sigmoid(ag.astype(x, np.float32)),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_blocked_elementwise_gives_the_numbers_of_one_call(monkeypatch, rng, name, threads):
    """Values and gradients bit for bit, whole vs blocks of 7 elements (the last one shorter)."""
    x = rng.standard_normal((3, 4, 5, 6)) * 8
    x[0, 0, 0, :3] = [0.0, -0.0, 800.0]
    f = ELEMENTWISE[name]
    monkeypatch.setattr(_threads, "BLOCKED", False)
    whole = _values_and_grads(lambda x: f(x), x, g_seed=11)
    monkeypatch.setattr(_threads, "BLOCKED", True)
    monkeypatch.setattr(_threads, "THREADS", threads)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_threads, "BLOCK_BYTES", 7 * 8)
    blocked = _values_and_grads(lambda x: f(x), x, g_seed=11)
    for a, b in zip(whole, blocked):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(b, a)


def test_elementwise_calls_the_kernel_once_on_non_contiguous_or_small_inputs(monkeypatch, rng):
    monkeypatch.setattr(_threads, "BLOCKED", True)
    monkeypatch.setattr(_threads, "BLOCK_BYTES", 8 * 8)
    calls = []

    def kernel(out, x):
        calls.append(x.shape)
        out[...] = x * 2

    x = rng.standard_normal((6, 5))
    out = _threads.elementwise(kernel, dev(x.T))  # not C-contiguous: one call on the whole array
    assert calls == [(5, 6)] and np.array_equal(host(out), x.T * 2)
    calls.clear()
    _threads.elementwise(kernel, dev(x[:2, :4]))  # 8 elements: one block's worth
    assert calls == [(2, 4)]
    calls.clear()
    out = _threads.elementwise(kernel, dev(x))  # 30 elements: blocks of 8
    assert calls == [(8,), (8,), (8,), (6,)] and np.array_equal(host(out), x * 2)
