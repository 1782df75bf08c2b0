"""Pooling against explicit loops written from PyTorch's documented rules.

* output length: ``floor_or_ceil((L + 2p - d(k-1) - 1) / s) + 1``, minus one in ceil mode when the last
  window would start in the right padding;
* average pooling: window ``[i s - p, min(i s - p + k, L + p))`` counts padding (``count_include_pad``)
  but not the ceil-mode overhang; otherwise only the in-bounds elements;
* max pooling: padding never wins; the gradient goes to the first maximum in row-major order;
* adaptive pooling bins ``[floor(i L / o), ceil((i + 1) L / o))``.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autograd as ag

from .helpers import assert_close, check_grads, dev, distinct, host, tensor


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_len(size, k, s, p, d, ceil_mode):
    span = d * (k - 1) + 1
    numerator = size + 2 * p - span
    out = (math.ceil(numerator / s) if ceil_mode else numerator // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _loop_max_pool2d(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Returns (values, argmax mask of the selected input elements per output)."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    sh, sw = _pair(kernel if stride is None else stride)
    n, c, h, w = x.shape
    oh, ow = _out_len(h, kh, sh, ph, dh, ceil_mode), _out_len(w, kw, sw, pw, dw, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    chosen = np.zeros((n, c, oh, ow, h, w))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = -np.inf, None
                    for p in range(kh):
                        for q in range(kw):
                            r, s = i * sh - ph + p * dh, j * sw - pw + q * dw
                            if 0 <= r < h and 0 <= s < w and x[b, ch, r, s] > best:
                                best, where = x[b, ch, r, s], (r, s)
                    out[b, ch, i, j] = best  # -inf when the window lies in the padding only
                    if where is not None:
                        chosen[(b, ch, i, j) + where] = 1.0
    return out, chosen


def _loop_avg_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    sh, sw = _pair(kernel if stride is None else stride)
    n, c, h, w = x.shape
    oh, ow = _out_len(h, kh, sh, ph, 1, ceil_mode), _out_len(w, kw, sw, pw, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            padded_count = (h1 - h0) * (w1 - w0)
            h0c, w0c, h1c, w1c = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            total = x[:, :, h0c:h1c, w0c:w1c].sum(axis=(2, 3))
            if divisor_override is not None:
                divisor = divisor_override
            else:
                divisor = padded_count if count_include_pad else (h1c - h0c) * (w1c - w0c)
            out[:, :, i, j] = total / divisor
    return out


def _bins(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def _loop_adaptive(x, output_size, reduce):
    oh, ow = _pair(output_size)
    h, w = x.shape[2:]
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i, (h0, h1) in enumerate(_bins(h, oh)):
        for j, (w0, w1) in enumerate(_bins(w, ow)):
            out[:, :, i, j] = reduce(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return out


# ---------------------------------------------------------------------------------------------
# max / avg pooling, fixed cases

MAX_CASES = [
    dict(kernel=2),
    dict(kernel=3, stride=1, padding=1),
    dict(kernel=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel=2, stride=2, ceil_mode=True),  # 5 -> 3 with a partial last window
    dict(kernel=3, stride=3, padding=1, ceil_mode=True),
    dict(kernel=1, stride=2),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=[str(c) for c in MAX_CASES])
def test_max_pool2d_values_and_gradient_routing(rng, case):
    x = distinct(rng, (2, 2, 5, 7))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    expected, chosen = _loop_max_pool2d(x, case["kernel"], **kwargs)
    t = tensor(x, requires_grad=True)
    out = ag.max_pool2d(t, case["kernel"], **kwargs)
    assert_close(out, expected, atol=0)
    g = rng.standard_normal(expected.shape)
    out.backward(dev(g))
    assert_close(t.grad, np.einsum("ncij,ncijhw->nchw", g, chosen), rtol=1e-14, atol=1e-15)
    check_grads(lambda v: ag.max_pool2d(v, case["kernel"], **kwargs), dev(x[:1, :1]))


AVG_CASES = [
    dict(kernel=2),
    dict(kernel=3, stride=1, padding=1),
    dict(kernel=3, stride=1, padding=1, count_include_pad=False),
    dict(kernel=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel=2, stride=2, ceil_mode=True),
    dict(kernel=(2, 3), stride=(2, 1), padding=(1, 1), divisor_override=5),
    dict(kernel=(3, 2), stride=(3, 3), padding=(1, 0), ceil_mode=True),
]


# Strided or large windows are two matrix products (_separable.separable), the others tap-by-tap window
# sums (pooling._separable_avg decides): every case runs both ways.
@pytest.fixture(params=["window sums", "separable"])
def avg_path(request, monkeypatch):
    monkeypatch.setattr(ag.pooling, "_separable_avg", lambda kernel, stride: request.param == "separable")
    return request.param


BIG_AVG_CASES = [
    dict(kernel=7, stride=4, padding=3, count_include_pad=False),   # GE-theta-minus, extent 4
    dict(kernel=5, stride=2, padding=2, ceil_mode=True),
    dict(kernel=(4, 5), stride=(3, 1), padding=(2, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel=(5, 4), stride=2, divisor_override=7),
]


@pytest.mark.parametrize("case", AVG_CASES + BIG_AVG_CASES, ids=[str(c) for c in AVG_CASES + BIG_AVG_CASES])
def test_avg_pool2d(rng, case, avg_path):
    x = rng.standard_normal((2, 2, 5, 7))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    assert_close(ag.avg_pool2d(dev(x), case["kernel"], **kwargs), _loop_avg_pool2d(x, case["kernel"], **kwargs),
                 rtol=1e-13, atol=1e-15)
    check_grads(lambda v: ag.avg_pool2d(v, case["kernel"], **kwargs), dev(x[:1, :1]))


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return dict(kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation, size=(h, w),
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25)
@given(cfg=pool_configs())
def test_max_pool2d_property(cfg):
    k, d, p = cfg["kernel"], cfg["dilation"], cfg["padding"]
    assume(all(n + 2 * pp >= dd * (kk - 1) + 1 for n, kk, dd, pp in zip(cfg["size"], k, d, p)))
    x = distinct(np.random.default_rng(cfg["seed"]), (1, 2) + cfg["size"])
    kwargs = dict(stride=cfg["stride"], padding=p, dilation=d, ceil_mode=cfg["ceil_mode"])
    expected, chosen = _loop_max_pool2d(x, k, **kwargs)
    t = tensor(x, requires_grad=True)
    out = ag.max_pool2d(t, k, **kwargs)
    assert_close(out, expected, atol=0)
    out.sum().backward()
    assert_close(t.grad, chosen.sum(axis=(2, 3)), atol=0)


@settings(max_examples=25)
@given(cfg=pool_configs(), separable=st.booleans())
def test_avg_pool2d_property(cfg, separable):
    k, p = cfg["kernel"], cfg["padding"]
    assume(all(n + 2 * pp >= kk for n, kk, pp in zip(cfg["size"], k, p)))
    x = np.random.default_rng(cfg["seed"]).standard_normal((1, 2) + cfg["size"])
    kwargs = dict(stride=cfg["stride"], padding=p, ceil_mode=cfg["ceil_mode"],
                  count_include_pad=cfg["count_include_pad"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ag.pooling, "_separable_avg", lambda kernel, stride: separable)
        assert_close(ag.avg_pool2d(dev(x), k, **kwargs), _loop_avg_pool2d(x, k, **kwargs), rtol=1e-13, atol=1e-15)
        assert ag.gradcheck(lambda v: ag.avg_pool2d(v, k, **kwargs), dev(x), mode="fast", n_directions=1)


def test_max_pool2d_gradient_goes_to_the_first_maximum_on_ties():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 0.0, 3.0]]]])
    t = tensor(x, requires_grad=True)
    ag.max_pool2d(t, 2).sum().backward()
    assert_close(t.grad, [[[[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], atol=0)  # row-major first
    t.grad = None
    ag.take_max(t, axis=3).sum().backward()
    assert_close(t.grad, [[[[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]]], atol=0)


def test_max_pool2d_ignores_padding_for_negative_inputs(rng):
    x = -1.0 - rng.random((1, 1, 3, 3))
    out = host(ag.max_pool2d(dev(x), 3, stride=1, padding=1))
    assert (out < -1.0).all()  # a zero from the padding never wins


# ---------------------------------------------------------------------------------------------
# 1-D pooling


@pytest.mark.parametrize("case", [dict(kernel=2), dict(kernel=3, stride=2, padding=1, ceil_mode=True),
                                  dict(kernel=3, stride=1, padding=1, dilation=2), dict(kernel=(2,), stride=(3,))])
def test_max_pool1d(rng, case):
    x = distinct(rng, (2, 3, 9))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    k = case["kernel"][0] if isinstance(case["kernel"], tuple) else case["kernel"]
    flat = {key: (v[0] if isinstance(v, tuple) else v) for key, v in kwargs.items()}
    stride = flat.pop("stride", k)
    expected, _ = _loop_max_pool2d(x[:, :, None], (1, k), stride=(1, stride), padding=(0, flat.get("padding", 0)),
                                   dilation=(1, flat.get("dilation", 1)), ceil_mode=flat.get("ceil_mode", False))
    assert_close(ag.max_pool1d(dev(x), case["kernel"], **kwargs), expected[:, :, 0], atol=0)
    check_grads(lambda v: ag.max_pool1d(v, case["kernel"], **kwargs), dev(x[:1, :2]))


@pytest.mark.parametrize("case", [dict(kernel=2), dict(kernel=3, stride=2, padding=1, ceil_mode=True),
                                  dict(kernel=3, stride=2, padding=1, count_include_pad=False)])
def test_avg_pool1d(rng, case):
    x = rng.standard_normal((2, 3, 8))
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    k = case["kernel"]
    expected = _loop_avg_pool2d(x[:, :, None], (1, k), stride=(1, kwargs.get("stride", k)),
                                padding=(0, kwargs.get("padding", 0)), ceil_mode=kwargs.get("ceil_mode", False),
                                count_include_pad=kwargs.get("count_include_pad", True))
    assert_close(ag.avg_pool1d(dev(x), k, **kwargs), expected[:, :, 0], rtol=1e-14, atol=1e-15)
    check_grads(lambda v: ag.avg_pool1d(v, k, **kwargs), dev(x[:1, :2]))


# ---------------------------------------------------------------------------------------------
# adaptive and global pooling


@pytest.mark.parametrize("size, out", [(7, 3), (5, 5), (4, 8), (10, 4), (6, 1), (1, 3), (7, 7), (13, 5)])
def test_adaptive_bins_follow_pytorch(size, out):
    assert ag.adaptive_bins(size, out) == _bins(size, out)
    matrix = host(ag.adaptive_avg_matrix(size, out))
    expected = np.zeros((out, size))
    for i, (a, b) in enumerate(_bins(size, out)):
        expected[i, a:b] = 1.0 / (b - a)
    np.testing.assert_array_equal(matrix, expected)


ADAPTIVE_SIZES = [(1, 1), (2, 3), (3, 2), (5, 7), (7, 4), (4, 9), ((None, 3)), ((2, None))]


@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES, ids=str)
def test_adaptive_avg_pool2d(rng, output_size):
    x = rng.standard_normal((2, 3, 5, 7))
    resolved = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(_pair(output_size)))
    assert_close(ag.adaptive_avg_pool2d(dev(x), output_size), _loop_adaptive(x, resolved, np.mean),
                 rtol=1e-13, atol=1e-15)
    check_grads(lambda v: ag.adaptive_avg_pool2d(v, output_size), dev(x[:1, :1]))


@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES, ids=str)
def test_adaptive_max_pool2d(rng, output_size):
    x = distinct(rng, (2, 3, 5, 7))
    resolved = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(_pair(output_size)))
    assert_close(ag.adaptive_max_pool2d(dev(x), output_size), _loop_adaptive(x, resolved, np.max), atol=0)
    check_grads(lambda v: ag.adaptive_max_pool2d(v, output_size), dev(x[:1, :1]))


def test_adaptive_max_pool2d_overlapping_bins_accumulate_gradient():
    x = np.array([[[[0.0, 5.0, 1.0]]]])  # 3 -> 2 bins [0, 2) and [1, 3) share the maximum
    t = tensor(x, requires_grad=True)
    out = ag.adaptive_max_pool2d(t, (1, 2))
    assert_close(out, [[[[5.0, 5.0]]]], atol=0)
    out.sum().backward()
    assert_close(t.grad, [[[[0.0, 2.0, 0.0]]]], atol=0)


@settings(max_examples=20)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 9), ow=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_adaptive_pool2d_property(h, w, oh, ow, seed):
    x = distinct(np.random.default_rng(seed), (1, 2, h, w))
    assert_close(ag.adaptive_avg_pool2d(dev(x), (oh, ow)), _loop_adaptive(x, (oh, ow), np.mean), rtol=1e-13,
                 atol=1e-15)
    assert_close(ag.adaptive_max_pool2d(dev(x), (oh, ow)), _loop_adaptive(x, (oh, ow), np.max), atol=0)


@pytest.mark.parametrize("out", [1, 3, 4, 9])
def test_adaptive_pool1d(rng, out):
    x = distinct(rng, (2, 3, 7))
    assert_close(ag.adaptive_avg_pool1d(dev(x), out), _loop_adaptive(x[:, :, None], (1, out), np.mean)[:, :, 0],
                 rtol=1e-13, atol=1e-15)
    assert_close(ag.adaptive_max_pool1d(dev(x), out), _loop_adaptive(x[:, :, None], (1, out), np.max)[:, :, 0],
                 atol=0)
    check_grads(lambda v: ag.adaptive_avg_pool1d(v, out), dev(x[:1, :2]))
    check_grads(lambda v: ag.adaptive_max_pool1d(v, out), dev(x[:1, :2]))


def test_global_pooling(rng):
    x = distinct(rng, (2, 3, 4, 5))
    assert_close(ag.global_avg_pool2d(dev(x)), x.mean(axis=(2, 3), keepdims=True), rtol=1e-14)
    assert_close(ag.global_avg_pool2d(dev(x), keepdims=False), x.mean(axis=(2, 3)), rtol=1e-14)
    assert_close(ag.global_max_pool2d(dev(x)), x.max(axis=(2, 3), keepdims=True), atol=0)
    assert_close(ag.global_max_pool2d(dev(x), keepdims=False), x.max(axis=(2, 3)), atol=0)
    check_grads(ag.global_avg_pool2d, dev(x[:1, :2]))
    check_grads(ag.global_max_pool2d, dev(x[:1, :2]))


def test_take_max_values_and_gradcheck(rng):
    x = distinct(rng, (2, 3, 4))
    for axis in (0, 1, -1):
        assert_close(ag.take_max(dev(x), axis), x.max(axis=axis), atol=0)
        check_grads(lambda v: ag.take_max(v, axis), dev(x))


# ---------------------------------------------------------------------------------------------
# bad inputs

X4 = np.ones((1, 2, 5, 5))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: ag.max_pool2d(dev(np.ones((5, 5))), 2), ValueError, "input must be 3-D .* or 4-D"),
    (lambda: ag.avg_pool2d(dev(np.ones((1, 1, 2, 5, 5))), 2), ValueError, "input must be 3-D .* or 4-D"),
    (lambda: ag.max_pool2d(dev(np.ones((2, 0, 5))), 2), ValueError, "non-empty"),
    (lambda: ag.max_pool2d(dev(X4), 0), ValueError, "kernel_size must be >= 1"),
    (lambda: ag.max_pool2d(dev(X4), 2, stride=0), ValueError, "stride must be >= 1"),
    (lambda: ag.avg_pool2d(dev(X4), 2, stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
    (lambda: ag.max_pool2d(dev(X4), 2, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: ag.max_pool2d(dev(X4), 3, padding=2), ValueError, "padding .* at most half of kernel_size"),
    (lambda: ag.avg_pool2d(dev(X4), 2, padding=(0, 2)), ValueError, "padding .* at most half of kernel_size"),
    (lambda: ag.max_pool2d(dev(X4), 2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: ag.max_pool2d(dev(X4), 6), ValueError, "kernel_size"),
    (lambda: ag.avg_pool2d(dev(X4), (2, 7)), ValueError, "kernel_size"),
    (lambda: ag.max_pool1d(dev(X4), 2), ValueError, "input must be 2-D .* or 3-D"),
    (lambda: ag.avg_pool1d(dev(np.ones(5)), 2), ValueError, "input must be 2-D .* or 3-D"),
    (lambda: ag.max_pool1d(dev(np.ones((1, 2, 5))), (2, 2)), ValueError, "kernel_size"),
    (lambda: ag.adaptive_avg_pool2d(dev(np.ones((5, 5))), 2), ValueError, "input must be 3-D .* or 4-D"),
    (lambda: ag.adaptive_max_pool2d(dev(X4), ()), ValueError, "output_size must be an int or 2 ints"),
    (lambda: ag.adaptive_max_pool2d(dev(X4), 1.5), TypeError, "output_size must hold ints"),
    (lambda: ag.adaptive_max_pool2d(dev(X4), True), TypeError, "output_size must hold ints"),
    (lambda: ag.adaptive_max_pool2d(dev(X4), -1), ValueError, "output_size must be >= 0"),
    (lambda: ag.adaptive_avg_pool2d(dev(X4), (2, -1)), ValueError, "output_size must be >= 0"),
    (lambda: ag.adaptive_avg_pool1d(dev(X4), 2), ValueError, "input must be 2-D .* or 3-D"),
    (lambda: ag.adaptive_max_pool1d(dev(np.ones((1, 2, 5))), -2), ValueError, "output_size must be >= 0"),
    (lambda: ag.global_avg_pool2d(dev(np.ones((2, 5)))), ValueError, "input must be 4-D"),
    (lambda: ag.global_max_pool2d(dev(np.ones((2, 5, 5)))), ValueError, "input must be 4-D"),
])
def test_pooling_rejects_bad_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("size", [1, 2])
def test_ceil_mode_window_longer_than_the_input(rng, size):
    """Ceil mode keeps the one window that starts inside an input shorter than the kernel (PyTorch, Caffe):
    max_pool2d(3, 2, ceil_mode=True) of a 2 x 2 map is its maximum; of a 1 x 1 map (numerator -2 <= -stride)
    and without ceil mode it is an error naming the op."""
    x = distinct(rng, (2, 3, size + 1, size + 1))[:, :, :size, :size]
    if size == 1:
        for op in (ag.max_pool2d, ag.avg_pool2d):
            with pytest.raises(ValueError, match=f"{op.__name__}: kernel_size 3"):
                op(dev(x), 3, 2, 0, ceil_mode=True)
        return
    expected, chosen = _loop_max_pool2d(x, 3, stride=2, ceil_mode=True)
    assert expected.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(expected[..., 0, 0], x.max(axis=(2, 3)))
    t = tensor(x, requires_grad=True)
    out = ag.max_pool2d(t, 3, stride=2, ceil_mode=True)
    assert_close(out, expected, atol=0)
    out.sum().backward()
    assert_close(t.grad, chosen.sum(axis=(2, 3)), atol=0)
    # the average's divisor counts the in-bounds window, never the ceil overhang
    assert_close(ag.avg_pool2d(dev(x), 3, 2, 0, ceil_mode=True), _loop_avg_pool2d(x, 3, 2, 0, ceil_mode=True),
                 rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(_loop_avg_pool2d(x, 3, 2, 0, ceil_mode=True)[..., 0, 0], x.mean(axis=(2, 3)),
                               rtol=1e-14)
    with pytest.raises(ValueError, match="max_pool2d: kernel_size 3.*ceil_mode=False"):
        ag.max_pool2d(dev(x), 3, 2, 0)


def test_zero_spatial_size_is_refused():
    with pytest.raises(ValueError, match="max_pool2d: every non-batch axis of the input must be non-empty"):
        ag.max_pool2d(dev(np.zeros((1, 1, 0, 4))), 2, 1, 1)
    with pytest.raises(ValueError, match="avg_pool2d: every non-batch axis of the input must be non-empty"):
        ag.avg_pool2d(dev(np.zeros((1, 1, 4, 0))), 3, 2, 1, ceil_mode=True)
