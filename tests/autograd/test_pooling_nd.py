"""3-D pools, return_indices and unbatched inputs, against explicit N-d loops written from PyTorch's rules.

* a window of output position o covers input positions ``o*s - p + t*d`` for taps t (row-major over axes);
  padding never wins a max; the chosen element is found as PyTorch's kernels scan: start at the window's
  first element inside the input and move on ``val > best or isnan(val)`` -- the first maximum in row-major
  order, or the window's last NaN -- and its index is its flat position in the (D, H, W) / (H, W) / (L)
  volume of its plane;
* the average's divisor is the product over axes of ``min(start + k, size + p) - start`` (with padding) or
  of the in-bounds count; ``divisor_override`` replaces it;
* adaptive bins ``[floor(i L / o), ceil((i + 1) L / o))`` per axis.
"""
import itertools
import math

import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, check_grads, dev, distinct, host, tensor


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _out_len(size, k, s, p, d, ceil_mode):
    numerator = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(numerator / s) if ceil_mode else numerator // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _loop_max_pool(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(values, flat indices) of max pooling over the trailing len(kernel) axes of (N, C, *S)."""
    dims = len(kernel)
    stride = kernel if stride is None else _tuple(stride, dims)
    padding, dilation = _tuple(padding, dims), _tuple(dilation, dims)
    sizes = x.shape[2:]
    outs = [_out_len(*a, ceil_mode) for a in zip(sizes, kernel, stride, padding, dilation)]
    values = np.zeros(x.shape[:2] + tuple(outs))
    indices = np.zeros(values.shape, dtype=np.int64)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for o in itertools.product(*[range(n) for n in outs]):
            taps = [tuple(oi * s - p + ti * d for oi, s, p, ti, d in zip(o, stride, padding, t, dilation))
                    for t in itertools.product(*[range(k) for k in kernel])]
            inside = [pos for pos in taps if all(0 <= q < n for q, n in zip(pos, sizes))]
            values[(b, c) + o], where = _scan(x[b, c], inside)
            indices[(b, c) + o] = np.ravel_multi_index(where, sizes)
    return values, indices


def _scan(plane, positions):
    """(value, position) chosen as PyTorch's max-pool kernels scan: from the first position, move on
    ``val > best or isnan(val)``."""
    where = positions[0]
    best = plane[where]
    for pos in positions[1:]:
        if plane[pos] > best or np.isnan(plane[pos]):
            best, where = plane[pos], pos
    return best, where


def _loop_avg_pool3d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    sizes = x.shape[2:]
    outs = [_out_len(*a, 1, ceil_mode) for a in zip(sizes, kernel, stride, padding)]
    out = np.zeros(x.shape[:2] + tuple(outs))
    for o in itertools.product(*[range(n) for n in outs]):
        starts = [oi * s - p for oi, s, p in zip(o, stride, padding)]
        ends = [min(a + k, n + p) for a, k, n, p in zip(starts, kernel, sizes, padding)]
        lo, hi = [max(a, 0) for a in starts], [min(e, n) for e, n in zip(ends, sizes)]
        total = x[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))].sum(axis=(2, 3, 4))
        if divisor_override is not None:
            divisor = divisor_override
        elif count_include_pad:
            divisor = np.prod([e - a for a, e in zip(starts, ends)])
        else:
            divisor = np.prod([b - a for a, b in zip(lo, hi)])
        out[(slice(None), slice(None)) + o] = total / divisor
    return out


def _bins(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def _loop_adaptive_max(x, output_size):
    sizes = x.shape[2:]
    values = np.zeros(x.shape[:2] + tuple(output_size))
    indices = np.zeros(values.shape, dtype=np.int64)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for o in itertools.product(*[range(n) for n in output_size]):
            bins = [_bins(n, on)[oi] for n, on, oi in zip(sizes, output_size, o)]
            values[(b, c) + o], where = _scan(x[b, c], list(itertools.product(*[range(a, e) for a, e in bins])))
            indices[(b, c) + o] = np.ravel_multi_index(where, sizes)
    return values, indices


def _first_max_gradient(x_shape, indices, cotangent):
    """The max-pool gradient: each output's cotangent added at its chosen flat position."""
    n, c = x_shape[:2]
    grad = np.zeros((n, c, int(np.prod(x_shape[2:]))))
    for b, ch in itertools.product(range(n), range(c)):
        np.add.at(grad[b, ch], indices[b, ch].ravel(), cotangent[b, ch].ravel())
    return grad.reshape(x_shape)


MAX3D_CASES = [
    dict(kernel=(2, 2, 2)),
    dict(kernel=(3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1), dilation=(1, 2, 1)),
    dict(kernel=(3, 3, 3), stride=2, padding=1, ceil_mode=True),
    dict(kernel=(1, 3, 2), stride=(1, 2, 1), dilation=(1, 1, 2), ceil_mode=True),
]


@pytest.mark.parametrize("case", MAX3D_CASES, ids=[str(c) for c in MAX3D_CASES])
def test_max_pool3d_values_indices_and_gradient(rng, case):
    x = distinct(rng, (2, 2, 5, 6, 5))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    expected, expected_index = _loop_max_pool(x, case["kernel"], **kwargs)
    values, index = ag.max_pool3d(tensor(x), case["kernel"], return_indices=True, **kwargs)
    assert_close(values, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(host(index), expected_index)
    assert host(index).dtype == np.int64
    g = rng.standard_normal(expected.shape)
    xt = tensor(x, requires_grad=True)
    ag.max_pool3d(xt, case["kernel"], **kwargs).backward(dev(g))
    assert_close(xt.grad, _first_max_gradient(x.shape, expected_index, g), rtol=0, atol=1e-15)
    check_grads(lambda v: ag.max_pool3d(v, case["kernel"], **kwargs), dev(x), mode="fast")


def test_max_pool3d_gradient_goes_to_the_first_maximum_on_ties():
    x = np.zeros((1, 1, 2, 2, 2))  # all tied: the first element of each window in (d, h, w) order wins
    xt = tensor(x, requires_grad=True)
    values, index = ag.max_pool3d(xt, 2, return_indices=True)
    assert int(host(index)[0, 0, 0, 0, 0]) == 0
    values.backward(dev(np.ones((1, 1, 1, 1, 1))))
    expected = np.zeros(x.shape)
    expected[0, 0, 0, 0, 0] = 1.0
    assert_close(xt.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("case", [
    dict(kernel=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0), ceil_mode=False, count_include_pad=True),
    dict(kernel=(3, 2, 3), stride=(2, 1, 2), padding=(1, 1, 0), ceil_mode=True, count_include_pad=True),
    dict(kernel=(3, 3, 2), stride=(2, 2, 1), padding=(1, 1, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=False, count_include_pad=True,
         divisor_override=5),
])
def test_avg_pool3d(rng, case):
    x = rng.standard_normal((2, 2, 5, 6, 5))
    expected = _loop_avg_pool3d(x, **case)
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    assert_close(ag.avg_pool3d(tensor(x), case["kernel"], **kwargs), expected)
    check_grads(lambda v: ag.avg_pool3d(v, case["kernel"], **kwargs), dev(x), mode="fast")


def test_avg_pool3d_rejects_a_zero_divisor():
    with pytest.raises(ValueError, match="avg_pool3d: divisor_override"):
        ag.avg_pool3d(tensor(np.ones((1, 1, 2, 2, 2))), 2, divisor_override=0)


@pytest.mark.parametrize("output_size", [(1, 1, 1), (2, 3, 2), (3, 4, 5), (5, 6, 4)])
def test_adaptive_pool3d(rng, output_size):
    x = distinct(rng, (2, 2, 3, 4, 5))
    expected, expected_index = _loop_adaptive_max(x, output_size)
    values, index = ag.adaptive_max_pool3d(tensor(x), output_size, return_indices=True)
    assert_close(values, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(host(index), expected_index)
    check_grads(lambda v: ag.adaptive_max_pool3d(v, output_size), dev(x), mode="fast")
    average = np.zeros(x.shape[:2] + output_size)
    for o in itertools.product(*[range(n) for n in output_size]):
        bins = [_bins(n, on)[oi] for n, on, oi in zip(x.shape[2:], output_size, o)]
        average[(slice(None), slice(None)) + o] = x[(slice(None), slice(None)) + tuple(
            slice(a, e) for a, e in bins)].mean(axis=(2, 3, 4))
    assert_close(ag.adaptive_avg_pool3d(tensor(x), output_size), average)
    check_grads(lambda v: ag.adaptive_avg_pool3d(v, output_size), dev(x), mode="fast")


# ---------------------------------------------------------------------------------------------
# return_indices in 1-D and 2-D


@pytest.mark.parametrize("case", [
    dict(kernel=(2, 2)),
    dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), ceil_mode=True),
    dict(kernel=(3, 3), stride=2, padding=1, ceil_mode=True),
])
def test_max_pool2d_indices(rng, case):
    x = distinct(rng, (2, 3, 6, 7))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    expected, expected_index = _loop_max_pool(x, case["kernel"], **kwargs)
    values, index = ag.max_pool2d(tensor(x), case["kernel"], return_indices=True, **kwargs)
    assert_close(values, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(host(index), expected_index)


def test_max_pool1d_indices(rng):
    x = distinct(rng, (2, 3, 9))
    expected, expected_index = _loop_max_pool(x, (3,), stride=2, padding=1, dilation=2, ceil_mode=True)
    values, index = ag.max_pool1d(tensor(x), 3, 2, 1, 2, True, return_indices=True)
    assert_close(values, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(host(index), expected_index)


@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (3, 5), (4, 7)])
def test_adaptive_max_pool2d_indices(rng, output_size):
    x = distinct(rng, (2, 2, 4, 7))
    expected, expected_index = _loop_adaptive_max(x, output_size)
    values, index = ag.adaptive_max_pool2d(tensor(x), output_size, return_indices=True)
    assert_close(values, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(host(index), expected_index)
    values, index = ag.adaptive_max_pool1d(tensor(x[:, :, 0]), output_size[1], return_indices=True)
    expected, expected_index = _loop_adaptive_max(x[:, :, 0], output_size[1:])
    np.testing.assert_array_equal(host(index), expected_index)


# ---------------------------------------------------------------------------------------------
# NaN and -inf: values, indices and gradients follow the scan of PyTorch's kernels


def _nonfinite(rng, shape):
    """Inputs holding NaN, +inf and -inf, one of -inf only, and one whose first rows are -inf."""
    inputs = []
    for count in (1, 2, 4):
        x = distinct(rng, shape)
        flat = x.reshape(-1)
        for value in (np.nan, np.inf, -np.inf):
            flat[rng.choice(flat.size, size=count, replace=False)] = value
        inputs.append(x)
    half = distinct(rng, shape)
    half[:, :, :2] = -np.inf
    return inputs + [np.full(shape, -np.inf), half]


NONFINITE_POOLS = [
    ("max_pool1d k3 s2 p1", lambda v: ag.max_pool1d(v, 3, 2, 1, return_indices=True),
     lambda x: _loop_max_pool(x, (3,), 2, 1), (2, 3, 9)),
    ("max_pool2d k3 s2 p1 ceil", lambda v: ag.max_pool2d(v, 3, 2, 1, ceil_mode=True, return_indices=True),
     lambda x: _loop_max_pool(x, (3, 3), 2, 1, ceil_mode=True), (2, 2, 6, 7)),
    ("max_pool2d k2 d2 p1", lambda v: ag.max_pool2d(v, 2, 1, 1, 2, return_indices=True),
     lambda x: _loop_max_pool(x, (2, 2), 1, 1, 2), (2, 2, 5, 6)),
    ("max_pool3d k3 s2 p1", lambda v: ag.max_pool3d(v, 3, 2, 1, return_indices=True),
     lambda x: _loop_max_pool(x, (3, 3, 3), 2, 1), (1, 2, 4, 5, 5)),
    ("adaptive_max_pool2d 3x5", lambda v: ag.adaptive_max_pool2d(v, (3, 5), return_indices=True),
     lambda x: _loop_adaptive_max(x, (3, 5)), (2, 2, 4, 7)),
    ("adaptive_max_pool2d 2x7 (equal bins)", lambda v: ag.adaptive_max_pool2d(v, (2, 7), return_indices=True),
     lambda x: _loop_adaptive_max(x, (2, 7)), (2, 2, 4, 7)),
    ("adaptive_max_pool3d 2x3x2", lambda v: ag.adaptive_max_pool3d(v, (2, 3, 2), return_indices=True),
     lambda x: _loop_adaptive_max(x, (2, 3, 2)), (1, 2, 3, 4, 5)),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name, pool, loop, shape", NONFINITE_POOLS, ids=[c[0] for c in NONFINITE_POOLS])
def test_max_pools_at_nan_and_minus_inf_follow_torchs_scan(rng, name, pool, loop, shape):
    """A window holding NaN is NaN and chooses its last NaN; a window of -inf chooses its first element
    inside the input (never a padding tap); the gradient reaches the chosen element, as the index says."""
    for x in _nonfinite(rng, shape):
        expected, expected_index = loop(x)
        values, index = pool(dev(x))
        np.testing.assert_array_equal(host(values), expected)
        np.testing.assert_array_equal(host(index), expected_index)
        g = rng.standard_normal(expected.shape)
        _, pullback = ag.vjp(lambda v: pool(v)[0], dev(x))
        np.testing.assert_allclose(host(pullback(dev(g))[0]), _first_max_gradient(x.shape, expected_index, g),
                                   rtol=1e-15, atol=1e-15)  # (sums of overlapping windows, in another order)


def test_max_pool_scan_reference_catches_first_nan_routing():
    """The loop reference would pass vacuously if first- and last-NaN routing chose alike on these inputs."""
    x = np.array([[[1.0, np.nan, 2.0, np.nan]]])
    assert _loop_max_pool(x, (4,))[1][0, 0, 0] == 3
    assert int(host(ag.max_pool1d(dev(x), 4, return_indices=True)[1])[0, 0, 0]) == 3


# ---------------------------------------------------------------------------------------------
# unbatched inputs: (C, *S) is the batch of one, squeezed


UNBATCHED = [
    (ag.max_pool1d, 1, dict(kernel_size=2, return_indices=True)),
    (ag.avg_pool1d, 1, dict(kernel_size=3, stride=2, padding=1)),
    (ag.adaptive_avg_pool1d, 1, dict(output_size=3)),
    (ag.adaptive_max_pool1d, 1, dict(output_size=3, return_indices=True)),
    (ag.max_pool2d, 2, dict(kernel_size=2, return_indices=True)),
    (ag.avg_pool2d, 2, dict(kernel_size=2)),
    (ag.adaptive_avg_pool2d, 2, dict(output_size=(2, 3))),
    (ag.adaptive_max_pool2d, 2, dict(output_size=(2, 3), return_indices=True)),
    (ag.max_pool3d, 3, dict(kernel_size=2, return_indices=True)),
    (ag.avg_pool3d, 3, dict(kernel_size=2)),
    (ag.adaptive_avg_pool3d, 3, dict(output_size=2)),
    (ag.adaptive_max_pool3d, 3, dict(output_size=2, return_indices=True)),
]


@pytest.mark.parametrize("pool, dims, kwargs", UNBATCHED, ids=[p.__name__ for p, _, _ in UNBATCHED])
def test_unbatched_input_is_a_batch_of_one(rng, pool, dims, kwargs):
    x = distinct(rng, (3,) + (5,) * dims)
    unbatched, batched = pool(tensor(x), **kwargs), pool(tensor(x[None]), **kwargs)
    if isinstance(batched, tuple):
        np.testing.assert_array_equal(host(unbatched[1]), host(batched[1])[0])
        unbatched, batched = unbatched[0], batched[0]
    assert_close(unbatched, host(batched)[0], rtol=0, atol=0)
    f = (lambda v: pool(v, **kwargs)[0]) if kwargs.get("return_indices") else (lambda v: pool(v, **kwargs))
    check_grads(f, dev(x), mode="fast", second_order=False)


@pytest.mark.parametrize("call, pattern", [
    (lambda: ag.max_pool3d(tensor(np.ones((2, 5, 5))), 2), "max_pool3d: input must be 4-D .* or 5-D"),
    (lambda: ag.avg_pool3d(tensor(np.ones((1, 1, 0, 5, 5))), 2), "avg_pool3d: every non-batch axis"),
    (lambda: ag.max_pool3d(tensor(np.ones((1, 1, 4, 5, 5))), 3, padding=2), "at most half of kernel_size"),
    (lambda: ag.max_pool3d(tensor(np.ones((1, 1, 2, 5, 5))), 3), "max_pool3d: kernel_size 3"),
    (lambda: ag.adaptive_max_pool3d(tensor(np.ones((1, 1, 2, 5, 5))), (2, 2)), "output_size must be an int or 3"),
])
def test_3d_pools_reject_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
