"""Convolution: conv2d / conv1d / conv_transpose2d / unfold / fold against independent references.

Two references, neither sharing code with autograd:
* ``scipy.signal.correlate`` on a dilated kernel, subsampled by the stride, summed over the group's
  input channels (``_scipy_conv2d``);
* the definition as explicit Python loops over output positions (``_loop_conv2d``, ``_loop_unfold``,
  ``_loop_conv_transpose2d``).
"""
import numpy as np
import pytest
import scipy.signal
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import _conv_kernels

from .helpers import assert_close, check_grads, dev

# ---------------------------------------------------------------------------------------------
# references


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding, kernel, dilation):
    """((top, bottom), (left, right)); 'same' puts the odd extra pixel at the end, as PyTorch."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


def _dilate(kernel, dilation):
    kh, kw = kernel.shape
    dh, dw = dilation
    out = np.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1))
    out[::dh, ::dw] = kernel
    return out


def _scipy_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    stride, dilation = _pair(stride), _pair(dilation)
    pads = _pads(padding, w.shape[2:], dilation)
    xp = np.pad(x, ((0, 0), (0, 0)) + pads)
    c_out, c_in_g = w.shape[:2]
    per_group = c_out // groups
    rows = []
    for n in range(x.shape[0]):
        maps = []
        for o in range(c_out):
            g = o // per_group
            acc = sum(
                scipy.signal.correlate(xp[n, g * c_in_g + c], _dilate(w[o, c], dilation), mode="valid")
                for c in range(c_in_g)
            )
            maps.append(acc[:: stride[0], :: stride[1]] + (0.0 if bias is None else bias[o]))
        rows.append(maps)
    return np.array(rows)


def _loop_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    c_out, c_in_g, kh, kw = w.shape
    pads = _pads(padding, (kh, kw), (dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0)) + pads)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], c_out, oh, ow))
    per_group = c_out // groups
    for n in range(x.shape[0]):
        for o in range(c_out):
            g = o // per_group
            for i in range(oh):
                for j in range(ow):
                    total = 0.0 if bias is None else bias[o]
                    for c in range(c_in_g):
                        for p in range(kh):
                            for q in range(kw):
                                total += xp[n, g * c_in_g + c, i * sh + p * dh, j * sw + q * dw] * w[o, c, p, q]
                    out[n, o, i, j] = total
    return out


def _loop_unfold(x, kernel, dilation, padding, stride):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = _pair(kernel), _pair(dilation), _pair(padding), _pair(stride)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    n, c = x.shape[:2]
    cols = np.zeros((n, c * kh * kw, oh * ow))
    for ch in range(c):
        for p in range(kh):
            for q in range(kw):
                for i in range(oh):
                    for j in range(ow):
                        cols[:, ch * kh * kw + p * kw + q, i * ow + j] = xp[:, ch, i * sh + p * dh, j * sw + q * dw]
    return cols


def _loop_fold(cols, size, kernel, dilation, padding, stride):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = _pair(kernel), _pair(dilation), _pair(padding), _pair(stride)
    h, w = size
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    n, c = cols.shape[0], cols.shape[1] // (kh * kw)
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for ch in range(c):
        for p in range(kh):
            for q in range(kw):
                for i in range(oh):
                    for j in range(ow):
                        out[:, ch, i * sh + p * dh, j * sw + q * dw] += cols[:, ch * kh * kw + p * kw + q, i * ow + j]
    return out[:, :, ph : ph + h, pw : pw + w]


def _loop_conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Every input pixel scatters weight * value into the output (the definition of the transpose)."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    n, c_in, h, wd = x.shape
    _, c_out, kh, kw = w.shape
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, c_out, oh + 2 * ph + sh + dh * kh, ow + 2 * pw + sw + dw * kw))
    for i in range(h):
        for j in range(wd):
            for p in range(kh):
                for q in range(kw):
                    full[:, :, i * sh + p * dh, j * sw + q * dw] += np.einsum("nc,co->no", x[:, :, i, j], w[:, :, p, q])
    out = full[:, :, ph : ph + oh, pw : pw + ow]
    return out if bias is None else out + bias[None, :, None, None]


# ---------------------------------------------------------------------------------------------
# conv2d values

CONV_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=(1, 2), padding=(1, 0)),
    dict(padding=2, dilation=2),
    dict(dilation=(2, 1), padding=(2, 1), stride=(2, 1)),
    dict(groups=2),
    dict(groups=4, depthwise=True, padding=1),  # depthwise: one filter per channel
    dict(groups=4, depthwise=True, stride=2, dilation=2, padding=2),
    dict(groups=4, multiplier=2),  # depthwise with channel multiplier 2 (C_out = 2 C_in)
    dict(padding="same"),
    dict(padding="same", kernel=(2, 4), dilation=(1, 2)),  # even kernels: extra pad at the end
    dict(padding="valid", stride=3),
    dict(kernel=(1, 1)),
    dict(kernel=(5, 5), padding=2, bias=False),
]


def _conv_case(rng, case, n=2, c_in=4, size=(6, 7)):
    case = dict(case)
    groups = case.pop("groups", 1)
    kernel = case.pop("kernel", (3, 3))
    bias = case.pop("bias", True)
    if case.pop("depthwise", False):
        c_out = c_in
    else:
        c_out = c_in * case.pop("multiplier", 1) if groups > 1 else 6
    x = rng.standard_normal((n, c_in) + size)
    w = rng.standard_normal((c_out, c_in // groups) + tuple(kernel))
    b = rng.standard_normal(c_out) if bias else None
    return x, w, b, dict(case, groups=groups)


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv2d_matches_scipy_and_loops(rng, case):
    x, w, b, kwargs = _conv_case(rng, case)
    out = ag.conv2d(dev(x), dev(w), None if b is None else dev(b), **kwargs)
    expected = _scipy_conv2d(x, w, b, **kwargs)
    assert_close(out, expected, rtol=1e-11, atol=1e-12)
    assert_close(out, _loop_conv2d(x, w, b, **kwargs), rtol=1e-11, atol=1e-12)
    if kwargs.get("padding") == "same":
        assert out.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv2d_gradcheck(rng, case):
    x, w, b, kwargs = _conv_case(rng, case, n=1, size=(5, 5))
    args = (dev(x), dev(w)) + (() if b is None else (dev(b),))
    check_grads(lambda *a: ag.conv2d(*a, **kwargs), *args, mode="fast", n_directions=2)


@pytest.mark.parametrize("groups, c_out", [(1, 3), (2, 4), (4, 4), (4, 8)])
def test_conv2d_with_a_kernel_the_size_of_the_input(rng, groups, c_out):
    # one output pixel: the _WholeMap kernel (a batched matrix product per group), e.g. GSoP's row conv
    x, w = rng.standard_normal((3, 4, 5, 2)), rng.standard_normal((c_out, 4 // groups, 5, 2))
    b = rng.standard_normal(c_out)
    assert _conv_kernels._kernel_for(_conv_kernels.Geometry((5, 2), (1, 1), (1, 1), ((0, 0), (0, 0)), groups,
                                                            (5, 2), (1, 1)), 4, c_out) is _conv_kernels._WholeMap
    for stride in (1, 3):
        out = ag.conv2d(dev(x), dev(w), dev(b), stride=stride, groups=groups)
        assert_close(out, _loop_conv2d(x, w, b, stride=stride, groups=groups), rtol=1e-12, atol=1e-12)
    check_grads(lambda *a: ag.conv2d(*a, groups=groups), dev(x[:2]), dev(w), dev(b), mode="full")


@pytest.mark.parametrize("kernel, groups, stride, size", [((1, 1), 1, 1, (5, 4)), ((3, 3), 1, 2, (5, 4)),
                                                         ((3, 3), 4, 1, (5, 4)), ((3, 3), 4, 2, (5, 4)),
                                                         ((5, 2), 2, 1, (5, 2))],
                         ids=["pointwise", "gemm", "depthwise", "depthwise-strided", "whole-map"])
def test_conv2d_empty_batch(rng, kernel, groups, stride, size):
    """N = 0 on every kernel path: an empty output, an empty input gradient and a zero weight/bias gradient."""
    x, w, b = rng.standard_normal((0, 4) + size), rng.standard_normal((4, 4 // groups) + kernel), rng.standard_normal(4)
    out = ag.conv2d(dev(x), dev(w), dev(b), stride=stride, groups=groups)
    one = ag.conv2d(dev(np.zeros((1, 4) + size)), dev(w), dev(b), stride=stride, groups=groups)
    assert out.shape == (0,) + one.shape[1:]
    grads = ag.grad(lambda *a: ag.sum(ag.conv2d(*a, stride=stride, groups=groups) ** 2), argnums=(0, 1, 2))(
        dev(x), dev(w), dev(b))
    assert grads[0].shape == x.shape
    assert grads[1].shape == w.shape and not np.any(ag.to_numpy(grads[1]))
    assert grads[2].shape == b.shape and not np.any(ag.to_numpy(grads[2]))


def test_conv2d_full_jacobian_small(rng):
    x, w, b = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2)
    check_grads(lambda *a: ag.conv2d(*a, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
                dev(x), dev(w), dev(b), mode="full")
    check_grads(lambda *a: ag.conv2d(*a, padding=1, groups=2), dev(x), dev(rng.standard_normal((2, 1, 3, 3))),
                mode="full")  # depthwise path


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    c_in_g, c_out_g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.sampled_from(["same", "valid"])))
    if padding == "same":
        sh = sw = 1
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    pads = _pads(padding, (kh, kw), (dh, dw))
    assume(h + sum(pads[0]) >= dh * (kh - 1) + 1 and w + sum(pads[1]) >= dw * (kw - 1) + 1)
    return dict(n=draw(st.integers(1, 2)), groups=groups, c_in=groups * c_in_g, c_out=groups * c_out_g,
                kernel=(kh, kw), stride=(sh, sw), dilation=(dh, dw), padding=padding, size=(h, w),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25)
@given(cfg=conv_configs())
def test_conv2d_property(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], cfg["c_in"]) + cfg["size"])
    w = rng.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["groups"]) + cfg["kernel"])
    b = rng.standard_normal(cfg["c_out"]) if cfg["bias"] else None
    kwargs = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    out = ag.conv2d(dev(x), dev(w), None if b is None else dev(b), **kwargs)
    assert_close(out, _scipy_conv2d(x, w, b, **kwargs), rtol=1e-11, atol=1e-12)
    assert ag.gradcheck(lambda xx, ww: ag.conv2d(xx, ww, **kwargs), dev(x), dev(w), mode="fast", n_directions=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_keeps_dtype(rng, dtype):
    x = rng.standard_normal((1, 2, 5, 5)).astype(dtype)
    for groups, c_out in ((1, 3), (2, 2)):
        w = rng.standard_normal((c_out, 2 // groups, 3, 3)).astype(dtype)
        out = ag.conv2d(dev(x), dev(w), dev(np.zeros(c_out, dtype)), padding=1, groups=groups)
        assert out.dtype == dtype
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert_close(out, _scipy_conv2d(x.astype(np.float64), w.astype(np.float64), padding=1, groups=groups),
                     rtol=tol, atol=tol)


def test_conv2d_weight_gradient_over_batch(rng):
    """The batched weight-gradient GEMM (N > 1, groups = 1) equals the sum of per-sample gradients."""
    x, w = rng.standard_normal((3, 2, 5, 5)), rng.standard_normal((4, 2, 3, 3))
    g = rng.standard_normal((3, 4, 3, 3))
    _, pullback = ag.vjp(lambda ww: ag.conv2d(dev(x), ww), dev(w))
    (total,) = pullback(dev(g))
    per_sample = sum(ag.vjp(lambda ww: ag.conv2d(dev(x[i : i + 1]), ww), dev(w))[1](dev(g[i : i + 1]))[0]
                     for i in range(3))
    assert_close(total, ag.to_numpy(per_sample), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# conv1d


def _loop_conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    k = w.shape[2]
    if padding == "same":
        total = dilation * (k - 1)
        pads = (total // 2, total - total // 2)
    elif padding == "valid":
        pads = (0, 0)
    else:
        pads = (padding, padding)
    xp = np.pad(x, ((0, 0), (0, 0), pads))
    length = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    c_out, c_in_g = w.shape[:2]
    per_group = c_out // groups
    out = np.zeros((x.shape[0], c_out, length))
    for o in range(c_out):
        g = o // per_group
        for i in range(length):
            window = xp[:, g * c_in_g : (g + 1) * c_in_g, i * stride : i * stride + dilation * (k - 1) + 1 : dilation]
            out[:, o, i] = np.sum(window * w[o], axis=(1, 2)) + (0.0 if bias is None else bias[o])
    return out


CONV1D_CASES = [dict(), dict(stride=2, padding=1), dict(dilation=2, padding="same"), dict(groups=2),
                dict(groups=4, padding=2), dict(padding="valid", stride=(3,), dilation=(2,)), dict(padding=(1,))]


@pytest.mark.parametrize("case", CONV1D_CASES, ids=[str(c) for c in CONV1D_CASES])
def test_conv1d(rng, case):
    groups = case.get("groups", 1)
    x = rng.standard_normal((2, 4, 9))
    w = rng.standard_normal((4 if groups > 1 else 3, 4 // groups, 3))
    b = rng.standard_normal(w.shape[0])
    plain = {k: (v[0] if isinstance(v, tuple) else v) for k, v in case.items()}
    out = ag.conv1d(dev(x), dev(w), dev(b), **case)
    assert_close(out, _loop_conv1d(x, w, b, **plain), rtol=1e-12, atol=1e-12)
    # also the single-channel scipy definition for the ungrouped, unstrided case
    if groups == 1 and plain.get("stride", 1) == 1 and plain.get("dilation", 1) == 1 and "padding" not in plain:
        expected = np.array([[sum(scipy.signal.correlate(x[n, c], w[o, c], mode="valid") for c in range(4)) + b[o]
                              for o in range(3)] for n in range(2)])
        assert_close(out, expected, rtol=1e-12, atol=1e-12)
    check_grads(lambda *a: ag.conv1d(*a, **case), dev(x[:1, :, :6]), dev(w), dev(b), mode="fast", n_directions=2)


# ---------------------------------------------------------------------------------------------
# unfold / fold / conv_transpose2d

UNFOLD_CASES = [((2, 2), 1, 0, 1), ((3, 2), (1, 2), (1, 0), (2, 1)), ((2, 3), 2, 1, 2), ((1, 1), 1, 0, 3)]


@pytest.mark.parametrize("kernel, dilation, padding, stride", UNFOLD_CASES)
def test_unfold_and_fold_match_loops_and_are_adjoint(rng, kernel, dilation, padding, stride):
    x = rng.standard_normal((2, 3, 5, 6))
    cols = ag.unfold(dev(x), kernel, dilation, padding, stride)
    expected = _loop_unfold(x, kernel, dilation, padding, stride)
    assert_close(cols, expected, atol=0)
    y = rng.standard_normal(expected.shape)
    folded = ag.fold(dev(y), (5, 6), kernel, dilation, padding, stride)
    assert_close(folded, _loop_fold(y, (5, 6), kernel, dilation, padding, stride), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(np.sum(expected * y), np.sum(ag.to_numpy(folded) * x), rtol=1e-12)
    check_grads(lambda v: ag.unfold(v, kernel, dilation, padding, stride), dev(x[:1, :2]), mode="fast")
    check_grads(lambda v: ag.fold(v, (5, 6), kernel, dilation, padding, stride), dev(y[:1]), mode="fast")


@pytest.mark.parametrize("kernel, dilation, padding, stride", UNFOLD_CASES)
def test_unfold_and_fold_vjps_are_each_others_loops(rng, kernel, dilation, padding, stride):
    """The VJP of unfold is fold and vice versa, to rounding: a 0.1% error in either rule is below
    gradcheck's tolerance, so the VJPs are compared with the loop references directly."""
    x = rng.standard_normal((2, 3, 5, 6))
    g = rng.standard_normal(_loop_unfold(x, kernel, dilation, padding, stride).shape)
    _, pullback = ag.vjp(lambda v: ag.unfold(v, kernel, dilation, padding, stride), dev(x))
    assert_close(pullback(dev(g))[0], _loop_fold(g, (5, 6), kernel, dilation, padding, stride), rtol=1e-13,
                 atol=1e-13)
    _, pullback = ag.vjp(lambda v: ag.fold(v, (5, 6), kernel, dilation, padding, stride), dev(g))
    assert_close(pullback(dev(x))[0], _loop_unfold(x, kernel, dilation, padding, stride), rtol=1e-13, atol=1e-13)


def test_unfold_accepts_asymmetric_padding(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    cols = ag.unfold(dev(x), 2, 1, ((0, 1), (1, 0)), 1)
    shifted = np.pad(x, ((0, 0), (0, 0), (0, 1), (1, 0)))
    assert_close(cols, _loop_unfold(shifted, 2, 1, 0, 1), atol=0)


TRANSPOSE_CASES = [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(dilation=2, padding=1),
                   dict(stride=(2, 1), padding=(0, 1), output_padding=(1, 0))]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=[str(c) for c in TRANSPOSE_CASES])
def test_conv_transpose2d(rng, case):
    x, w, b = rng.standard_normal((2, 3, 4, 3)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(2)
    out = ag.conv_transpose2d(dev(x), dev(w), dev(b), **case)
    assert_close(out, _loop_conv_transpose2d(x, w, b, **case), rtol=1e-12, atol=1e-12)
    check_grads(lambda *a: ag.conv_transpose2d(*a, **case), dev(x[:1]), dev(w), dev(b), mode="fast", n_directions=2)


def test_conv_transpose2d_is_the_input_gradient_of_conv2d(rng):
    x, w = rng.standard_normal((1, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3))
    g = rng.standard_normal((1, 3, 4, 4))
    _, pullback = ag.vjp(lambda v: ag.conv2d(v, dev(w), stride=2, padding=1), dev(x))
    (grad_x,) = pullback(dev(g))
    assert_close(ag.conv_transpose2d(dev(g), dev(w), stride=2, padding=1), ag.to_numpy(grad_x), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# bad inputs

X4 = np.ones((1, 4, 5, 5))
W4 = np.ones((2, 4, 3, 3))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(x=np.ones((5, 5))), ValueError, "input must be 3-D .* or 4-D"),
    (dict(w=np.ones((2, 4, 3))), ValueError, "weight must be 4-D"),
    (dict(w=np.ones((2, 3, 3, 3))), ValueError, "weight expects 3 input channels"),
    (dict(groups=3), ValueError, "groups=3"),
    (dict(groups=0), ValueError, "groups=0"),
    (dict(w=np.ones((3, 2, 3, 3)), groups=2), ValueError, "groups=2"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
    (dict(groups=1.5), TypeError, "groups must be an int"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
    (dict(stride=(1.5, 2)), TypeError, "stride must be an int or a pair"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(padding=(1, -2)), ValueError, "padding must be >= 0"),
    (dict(padding="full"), ValueError, "padding must be an int, a pair, 'same' or 'valid'"),
    (dict(padding="same", stride=2), ValueError, "padding='same'"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(bias=np.ones(3)), ValueError, r"bias must have shape \(2,\)"),
    (dict(bias=np.ones(2, np.float32)), TypeError, "weight float64, bias float32"),
    (dict(w=np.ones((2, 4, 7, 7))), ValueError, "too small"),
    (dict(w=np.ones((2, 4, 3, 3), np.float32)), TypeError, "dtype"),
])
def test_conv2d_rejects_bad_arguments(kwargs, error, pattern):
    kwargs = dict(kwargs)
    x, w = kwargs.pop("x", X4), kwargs.pop("w", W4)
    bias = kwargs.pop("bias", None)
    with pytest.raises(error, match=pattern):
        ag.conv2d(dev(x), dev(w), None if bias is None else dev(bias), **kwargs)


def test_conv1d_unfold_fold_transpose_reject_bad_arguments():
    with pytest.raises(ValueError, match="input must be 2-D .* or 3-D"):
        ag.conv1d(dev(X4), dev(np.ones((2, 4, 3))))
    with pytest.raises(ValueError, match="weight must be 3-D"):
        ag.conv1d(dev(np.ones((1, 4, 5))), dev(W4))
    with pytest.raises(ValueError, match="stride must be an int or a 1-tuple"):
        ag.conv1d(dev(np.ones((1, 4, 5))), dev(np.ones((2, 4, 3))), stride=(1, 1))
    with pytest.raises(ValueError, match="weight expects 4 input channels"):
        ag.conv1d(dev(np.ones((1, 3, 5))), dev(np.ones((2, 4, 3))))
    with pytest.raises(ValueError, match="input must be 4-D"):
        ag.unfold(dev(np.ones((4, 5, 5))), 2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        ag.unfold(dev(X4), 0)
    with pytest.raises(ValueError, match="does not match output_size"):
        ag.fold(dev(np.ones((1, 8, 9))), (5, 5), 2)
    with pytest.raises(ValueError, match="input must be 3-D"):
        ag.fold(dev(X4), (5, 5), 2)
    with pytest.raises(ValueError, match="weight expects 2 input channels"):
        ag.conv_transpose2d(dev(X4), dev(np.ones((2, 3, 3, 3))))
    with pytest.raises(ValueError, match="weight must be 4-D"):
        ag.conv_transpose2d(dev(X4), dev(np.ones((4, 3, 3))))
    with pytest.raises(ValueError, match="output_padding must be >= 0"):
        ag.conv_transpose2d(dev(X4), dev(np.ones((4, 3, 3, 3))), output_padding=-1)
    with pytest.raises(ValueError, match="output_padding .* must be smaller than stride .* or dilation"):
        ag.conv_transpose2d(dev(X4), dev(np.ones((4, 3, 3, 3))), stride=2, output_padding=2)
