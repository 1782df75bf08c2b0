"""conv3d, transposed convolutions with groups (1-D, 2-D, 3-D), unbatched inputs, and the pad modes,
against explicit loops and NumPy's own np.pad.

* convolution: ``y[n, o, p] = b[o] + sum_{c in group(o), t} w[o, c - c0(o), t] x_pad[n, c, p*s + t*d]``;
* transposed convolution: every input element scatters ``x * w`` to ``p*s + t*d - padding`` (the definition);
  output size ``(in - 1) s - 2 p + d (k - 1) + output_padding + 1``.
"""
import itertools

import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, check_grads, dev, host, tensor


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _loop_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """N-d cross-correlation over the trailing axes of x (N, C, *S)."""
    dims = x.ndim - 2
    stride, padding, dilation = _tuple(stride, dims), _tuple(padding, dims), _tuple(dilation, dims)
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple((p, p) for p in padding))
    kernel = w.shape[2:]
    outs = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(x.shape[2:], padding, dilation, kernel, stride)]
    c_out, c_in_g = w.shape[:2]
    out = np.zeros((x.shape[0], c_out) + tuple(outs))
    for o in range(c_out):
        c0 = (o // (c_out // groups)) * c_in_g
        for pos in itertools.product(*[range(n) for n in outs]):
            for t in itertools.product(*[range(k) for k in kernel]):
                src = tuple(p * s + ti * d for p, s, ti, d in zip(pos, stride, t, dilation))
                window = xp[(slice(None), slice(c0, c0 + c_in_g)) + src]
                out[(slice(None), o) + pos] += window @ w[(o, slice(None)) + t]
        if b is not None:
            out[:, o] += b[o]
    return out


def _loop_conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    dims = x.ndim - 2
    stride, padding = _tuple(stride, dims), _tuple(padding, dims)
    extra, dilation = _tuple(output_padding, dims), _tuple(dilation, dims)
    kernel = w.shape[2:]
    c_in, c_out_g = w.shape[:2]
    sizes = [(n - 1) * s - 2 * p + d * (k - 1) + e + 1
             for n, s, p, d, k, e in zip(x.shape[2:], stride, padding, dilation, kernel, extra)]
    out = np.zeros((x.shape[0], c_out_g * groups) + tuple(sizes))
    for c in range(c_in):
        o0 = (c // (c_in // groups)) * c_out_g
        for pos in itertools.product(*[range(n) for n in x.shape[2:]]):
            for t in itertools.product(*[range(k) for k in kernel]):
                dst = tuple(p * s + ti * d - pad for p, s, ti, d, pad in zip(pos, stride, t, dilation, padding))
                if all(0 <= q < n for q, n in zip(dst, sizes)):
                    out[(slice(None), slice(o0, o0 + c_out_g)) + dst] += np.outer(
                        x[(slice(None), c) + pos], w[(c, slice(None)) + t])
    if b is not None:
        out += b.reshape((1, -1) + (1,) * dims)
    return out


CONV3D_CASES = [
    dict(),
    dict(stride=(2, 1, 2), padding=(1, 0, 1)),
    dict(dilation=(2, 1, 2), padding=2, groups=2),
    dict(padding="same", dilation=(1, 2, 1)),
    dict(padding="valid", stride=2, groups=4),
]


@pytest.mark.parametrize("case", CONV3D_CASES, ids=[str(c) for c in CONV3D_CASES])
def test_conv3d(rng, case):
    groups = case.get("groups", 1)
    x = rng.standard_normal((2, 4, 5, 6, 5))
    w = rng.standard_normal((4, 4 // groups, 2, 3, 2))
    b = rng.standard_normal(4)
    kwargs = {k: v for k, v in case.items()}
    if case.get("padding") == "same":  # the loop takes explicit pads: (d (k - 1)) // 2 before, the rest after
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip((2, 3, 2), (1, 2, 1))]
        xp = np.pad(x, ((0, 0), (0, 0)) + tuple(pads))
        expected = _loop_conv(xp, w, b, dilation=(1, 2, 1))
    else:
        loop_kwargs = dict(kwargs, padding=0) if case.get("padding") == "valid" else kwargs
        expected = _loop_conv(x, w, b, **loop_kwargs)
    assert_close(ag.conv3d(dev(x), dev(w), dev(b), **kwargs), expected)
    check_grads(lambda *a: ag.conv3d(*a, **kwargs), dev(x[:1]), dev(w), dev(b), mode="fast", n_directions=2)


TRANSPOSE_CASES = [
    dict(),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(1, 2), output_padding=(2, 3), groups=2, dilation=(4, 4)),  # output_padding < dilation
    dict(groups=4),
    dict(stride=2, dilation=(2, 3), padding=1, output_padding=1),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=[str(c) for c in TRANSPOSE_CASES])
def test_conv_transpose2d_groups_and_output_padding(rng, case):
    groups = case.get("groups", 1)
    x = rng.standard_normal((2, 4, 4, 5))
    w = rng.standard_normal((4, 6 // (2 if groups == 2 else 1) if groups < 4 else 1, 3, 2))
    b = rng.standard_normal(w.shape[1] * groups)
    expected = _loop_conv_transpose(x, w, b, **case)
    assert_close(ag.conv_transpose2d(dev(x), dev(w), dev(b), **case), expected)
    check_grads(lambda *a: ag.conv_transpose2d(*a, **case), dev(x[:1]), dev(w), dev(b), mode="fast",
                n_directions=2)


@pytest.mark.parametrize("case", [dict(), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)])
def test_conv_transpose1d(rng, case):
    x = rng.standard_normal((2, 4, 6))
    w = rng.standard_normal((4, 3, 3))
    b = rng.standard_normal(3 * case.get("groups", 1))
    assert_close(ag.conv_transpose1d(dev(x), dev(w), dev(b), **case), _loop_conv_transpose(x, w, b, **case))
    check_grads(lambda *a: ag.conv_transpose1d(*a, **case), dev(x), dev(w), dev(b), mode="fast", n_directions=2)


@pytest.mark.parametrize("case", [
    dict(),
    dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 1)),
    dict(stride=2, padding=(2, 1, 0), dilation=(3, 1, 2), output_padding=(2, 1, 1), groups=2),
])
def test_conv_transpose3d(rng, case):
    x = rng.standard_normal((2, 4, 3, 4, 3))
    w = rng.standard_normal((4, 3, 2, 3, 2))
    b = rng.standard_normal(3 * case.get("groups", 1))
    assert_close(ag.conv_transpose3d(dev(x), dev(w), dev(b), **case), _loop_conv_transpose(x, w, b, **case))
    check_grads(lambda *a: ag.conv_transpose3d(*a, **case), dev(x[:1]), dev(w), dev(b), mode="fast",
                n_directions=2)


def test_conv_transpose3d_is_the_input_gradient_of_conv3d(rng):
    w = rng.standard_normal((3, 2, 2, 3, 2))
    x = rng.standard_normal((1, 2, 5, 6, 5))
    y = ag.conv3d(dev(x), dev(w), stride=2, padding=1, dilation=(1, 2, 1))
    g = rng.standard_normal(y.shape)
    grad_x = ag.vjp(lambda v: ag.conv3d(v, dev(w), stride=2, padding=1, dilation=(1, 2, 1)), dev(x))[1](dev(g))[0]
    assert_close(ag.conv_transpose3d(dev(g), dev(w), stride=2, padding=1, dilation=(1, 2, 1), output_padding=1),
                 host(grad_x))


UNBATCHED_CONVS = [
    (ag.conv1d, (3, 7), (4, 3, 3), dict(padding=1)),
    (ag.conv2d, (3, 6, 5), (4, 3, 3, 2), dict(stride=2)),
    (ag.conv3d, (3, 4, 5, 4), (4, 3, 2, 2, 2), dict(padding=1)),
    (ag.conv_transpose1d, (3, 5), (3, 4, 3), dict(stride=2)),
    (ag.conv_transpose2d, (3, 4, 5), (3, 4, 3, 2), dict(stride=2, output_padding=1)),
    (ag.conv_transpose3d, (3, 3, 4, 3), (3, 4, 2, 2, 2), dict(stride=2)),
]


@pytest.mark.parametrize("conv, x_shape, w_shape, kwargs", UNBATCHED_CONVS,
                         ids=[c.__name__ for c, *_ in UNBATCHED_CONVS])
def test_unbatched_convolution_is_a_batch_of_one(rng, conv, x_shape, w_shape, kwargs):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    assert_close(conv(dev(x), dev(w), **kwargs), host(conv(dev(x[None]), dev(w), **kwargs))[0], rtol=0, atol=0)
    check_grads(lambda *a: conv(*a, **kwargs), dev(x), dev(w), mode="fast", second_order=False)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: ag.conv3d(tensor(np.ones((1, 2, 4, 4, 4))), tensor(np.ones((2, 2, 2, 2)))), ValueError,
     "conv3d: weight must be 5-D"),
    (lambda: ag.conv3d(tensor(np.ones((1, 2, 4, 4, 4))), tensor(np.ones((2, 2, 2, 2, 2))), padding="same",
                       stride=2), ValueError, "padding='same'"),
    (lambda: ag.conv3d(tensor(np.ones((1, 2, 4, 4, 4))), tensor(np.ones((2, 1, 2, 2, 2))), groups=3), ValueError,
     "groups=3"),
    (lambda: ag.conv3d(tensor(np.ones((1, 2, 1, 4, 4))), tensor(np.ones((2, 2, 2, 2, 2)))), ValueError,
     "too small"),
    (lambda: ag.conv_transpose3d(tensor(np.ones((1, 2, 2, 2, 2))), tensor(np.ones((2, 2, 2, 2, 2))), stride=2,
                                 output_padding=2), ValueError, "output_padding .* smaller than stride"),
    (lambda: ag.conv_transpose1d(tensor(np.ones((1, 2, 4))), tensor(np.ones((3, 2, 2)))), ValueError,
     "weight expects 3 input channels"),
    (lambda: ag.conv_transpose2d(tensor(np.ones((1, 2, 4, 4))), tensor(np.ones((2, 2, 2, 2))), groups=0),
     ValueError, "groups=0"),
])
def test_new_convolutions_reject_bad_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# pad modes against np.pad (reflect = 'reflect', replicate = 'edge', circular = 'wrap')

NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", sorted(NUMPY_MODES))
@pytest.mark.parametrize("widths", [((0, 0), (1, 2), (2, 0)), ((1, 1), (0, 3), (3, 3)), ((2, 0), (0, 0), (1, 2))])
def test_pad_modes_match_numpy(rng, mode, widths):
    x = rng.standard_normal((3, 4, 4))
    assert_close(ag.pad(dev(x), widths, mode=mode), np.pad(x, widths, mode=NUMPY_MODES[mode]), rtol=0, atol=0)
    check_grads(lambda v: ag.pad(v, widths, mode=mode), dev(x), mode="fast")


def test_pad_vjp_is_a_scatter_add(rng):
    x = rng.standard_normal((1, 5))
    g = rng.standard_normal((1, 9))
    xt = tensor(x, requires_grad=True)
    ag.pad(xt, ((0, 0), (2, 2)), mode="reflect").backward(dev(g))
    # output 0..8 reads input 2 1 0 1 2 3 4 3 2
    expected = np.zeros(5)
    np.add.at(expected, [2, 1, 0, 1, 2, 3, 4, 3, 2], g[0])
    assert_close(xt.grad, expected[None], rtol=0, atol=1e-15)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_negative_widths_crop(rng, mode):
    x = rng.standard_normal((2, 6, 5))
    out = ag.pad(dev(x), ((0, 0), (-1, -2), (-2, 0)), mode=mode)
    assert_close(out, x[:, 1:4, 2:], rtol=0, atol=0)
    check_grads(lambda v: ag.pad(v, ((0, 0), (-1, 2), (1, -2)), mode=mode), dev(x), mode="fast")


def test_mixed_widths_follow_torch():
    x = np.arange(5.0)[None]
    # reflect and replicate read the original axis; circular wraps what is left after cropping (torch)
    assert_close(ag.pad(dev(x), ((0, 0), (-1, 2)), mode="reflect"), np.array([[1, 2, 3, 4, 3, 2.0]]), atol=0)
    assert_close(ag.pad(dev(x), ((0, 0), (-1, 2)), mode="replicate"), np.array([[1, 2, 3, 4, 4, 4.0]]), atol=0)
    assert_close(ag.pad(dev(x), ((0, 0), (-1, 2)), mode="circular"), np.array([[1, 2, 3, 4, 1, 2.0]]), atol=0)
    assert_close(ag.pad(dev(x), ((0, 0), (2, -3)), mode="circular"), np.array([[0, 1, 0, 1.0]]), atol=0)
    assert_close(ag.pad(dev(x), ((0, 0), (-2, 1)), value=7.0), np.array([[2, 3, 4, 7.0]]), atol=0)


@pytest.mark.parametrize("widths, mode, pattern", [
    (((0, 0), (5, 0)), "reflect", "smaller than the axis"),
    (((0, 0), (6, 0)), "circular", "at most the .*axis"),
    (((0, 0), (-3, 3)), "circular", "at most the .*axis"),
    (((0, 0), (-3, -3)), "constant", "negative size"),
    (((0, 0), (1, 1)), "symmetric", "mode must be one of"),
])
def test_pad_rejects_bad_widths_and_modes(widths, mode, pattern):
    with pytest.raises(ValueError, match=pattern):
        ag.pad(dev(np.ones((1, 5))), widths, mode=mode)
