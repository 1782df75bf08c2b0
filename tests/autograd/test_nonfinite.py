"""NaN and infinities reach exactly the outputs that read them, whichever path computes the op.

References are the explicit loops of test_pooling / test_resize, evaluated with NumPy's IEEE arithmetic:
a window sum holding NaN is NaN, ``0 * inf`` is NaN (bilinear reads both neighbours even when one weight is
0, as PyTorch).  Their adjoints, written as loops here, are the references for the gradients.  The torch
tier (tests/torch_tier/test_core_semantics.py) checks the same placements against PyTorch itself.
"""
import numpy as np
import pytest
import scipy.special

import autograd as ag
from autograd import _separable

from .helpers import dev, host
from .test_pooling import AVG_CASES, _bins, _loop_adaptive, _loop_avg_pool2d, _pair
from .test_resize import _linear_source, _nearest_source, _reference
from .test_resize_modes import _loop_area, _loop_bicubic, _loop_nearest_exact, _loop_trilinear

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns about the NaNs we ask for


def assert_same_values(actual, expected, rtol=1e-12, atol=1e-12):
    """NaN exactly where expected, the same infinities, finite values close (shapes equal)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN positions differ")
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(np.isinf(actual), infinite, err_msg="infinite positions differ")
    np.testing.assert_array_equal(actual[infinite], expected[infinite], err_msg="infinite signs differ")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol)


def test_assert_same_values_rejects_wrong_placements():
    expected = np.array([1.0, np.nan, np.inf, -np.inf])
    assert_same_values(expected.copy(), expected)
    for wrong in ([np.nan, np.nan, np.inf, -np.inf], [1.0, 0.0, np.inf, -np.inf], [1.0, np.nan, -np.inf, -np.inf],
                  [1.0, np.nan, 5.0, -np.inf], [1.0 + 1e-6, np.nan, np.inf, -np.inf]):
        with pytest.raises(AssertionError):
            assert_same_values(np.array(wrong), expected)


def _inject(rng, array, count=1):
    """``array`` with ``count`` NaN, +inf and -inf each at random positions."""
    array = array.copy()
    flat = array.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.choice(flat.size, size=count, replace=False)] = value
    return array


def _pullback(f, x, g):
    _, pullback = ag.vjp(f, dev(x))
    return host(pullback(dev(g))[0])


# ---------------------------------------------------------------------------------------------
# average pooling: window sums and matrix products


def _loop_avg_pool2d_vjp(g, shape, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                         divisor_override=None):
    """The adjoint of _loop_avg_pool2d: each output's cotangent / divisor added over its window."""
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    sh, sw = _pair(kernel if stride is None else stride)
    h, w = shape[2:]
    dx = np.zeros(shape)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            h0c, w0c, h1c, w1c = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            if divisor_override is not None:
                divisor = divisor_override
            else:
                divisor = (h1 - h0) * (w1 - w0) if count_include_pad else (h1c - h0c) * (w1c - w0c)
            dx[:, :, h0c:h1c, w0c:w1c] += (g[:, :, i, j] / divisor)[:, :, None, None]
    return dx


@pytest.fixture(params=["separable", "window sums"])
def avg_path(request, monkeypatch):
    """Run average pooling through the matrix products or the tap-by-tap window sums."""
    monkeypatch.setattr(ag.pooling, "_separable_avg", lambda kernel, stride: request.param == "separable")
    return request.param


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool2d_nonfinite_reaches_only_its_windows_on_both_paths(rng, case, avg_path):
    """One NaN used to turn a whole plane NaN on the matrix-product path (0 * NaN); now no path smears it."""
    kwargs = {k: v for k, v in case.items() if k != "kernel"}
    for trial in range(4):
        x = _inject(rng, rng.standard_normal((2, 2, 7, 8)), 1 + trial % 2)
        out = host(ag.avg_pool2d(dev(x), case["kernel"], **kwargs))
        expected = _loop_avg_pool2d(x, case["kernel"], **kwargs)
        assert_same_values(out, expected)
        assert np.isfinite(expected).any()  # the check above is not vacuous: most outputs stay finite
        g = _inject(rng, rng.standard_normal(expected.shape)) if trial % 2 else rng.standard_normal(expected.shape)
        assert_same_values(_pullback(lambda v: ag.avg_pool2d(v, case["kernel"], **kwargs), x, g),
                           _loop_avg_pool2d_vjp(g, x.shape, case["kernel"], **kwargs))


def test_one_nan_reaches_one_output_of_a_non_overlapping_average_pool():
    """The issue's example: a 3x3 stride-3 average pool of a map with one NaN has exactly one NaN output."""
    x = np.zeros((1, 1, 6, 6))
    x[0, 0, 2, 2] = np.nan
    out = host(ag.avg_pool2d(dev(x), 3, 3))
    np.testing.assert_array_equal(np.isnan(out), [[[[True, False], [False, False]]]])


# ---------------------------------------------------------------------------------------------
# adaptive average pooling


def _loop_adaptive_avg_vjp(g, shape):
    h, w = shape[2:]
    dx = np.zeros(shape)
    for i, (h0, h1) in enumerate(_bins(h, g.shape[2])):
        for j, (w0, w1) in enumerate(_bins(w, g.shape[3])):
            dx[:, :, h0:h1, w0:w1] += (g[:, :, i, j] / ((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx


@pytest.mark.parametrize("output_size", [(3, 4), (5, 1), (7, 3), (1, 1), (7, 8), (4, 8)])
def test_adaptive_avg_pool2d_nonfinite_reaches_only_its_bins(rng, output_size):
    for trial in range(4):
        x = _inject(rng, rng.standard_normal((2, 2, 7, 8)), 1 + trial % 2)
        out = host(ag.adaptive_avg_pool2d(dev(x), output_size))
        assert_same_values(out, _loop_adaptive(x, output_size, np.mean))
        g = _inject(rng, rng.standard_normal(out.shape)) if trial % 2 else rng.standard_normal(out.shape)
        assert_same_values(_pullback(lambda v: ag.adaptive_avg_pool2d(v, output_size), x, g),
                           _loop_adaptive_avg_vjp(g, x.shape))


# ---------------------------------------------------------------------------------------------
# interpolate


def _reference_vjp(g, shape, mode, align_corners=None, scales=(None, None)):
    """The adjoint of test_resize._reference for ``size`` given: each output's weights times its cotangent
    added at the pixels it reads (zero weights included, as the forward reads them)."""
    h, w = shape[2:]
    oh, ow = g.shape[2:]
    dx = np.zeros(shape)
    for i in range(oh):
        for j in range(ow):
            if mode == "nearest":
                dx[:, :, _nearest_source(i, h, oh, scales[0]), _nearest_source(j, w, ow, scales[1])] += g[:, :, i, j]
                continue
            y0, y1, ly = _linear_source(i, h, oh, scales[0], align_corners)
            x0, x1, lx = _linear_source(j, w, ow, scales[1], align_corners)
            for (r, c), weight in (((y0, x0), (1 - ly) * (1 - lx)), ((y0, x1), (1 - ly) * lx),
                                   ((y1, x0), ly * (1 - lx)), ((y1, x1), ly * lx)):
                dx[:, :, r, c] += weight * g[:, :, i, j]
    return dx


RESIZE = [dict(size=(13, 5), mode="nearest"), dict(size=(14, 16), mode="nearest"),
          dict(size=(13, 5), mode="bilinear"), dict(size=(14, 18), mode="bilinear"),
          dict(size=(7, 20), mode="bilinear"), dict(size=(7, 8), mode="bilinear"),
          dict(size=(13, 17), mode="bilinear", align_corners=True),
          dict(size=(4, 5), mode="bilinear", align_corners=True)]


@pytest.mark.parametrize("case", RESIZE, ids=str)
def test_interpolate_nonfinite_reaches_only_the_outputs_that_read_it(rng, case):
    """Bilinear reads both neighbours (an infinity read through a weight of 0 gives NaN, as 0 * inf in
    PyTorch's kernel); an unchanged bilinear size is t * 1 + t * 0 there too, so it turns inf into NaN."""
    mode, align = case["mode"], case.get("align_corners")
    for trial in range(4):
        x = _inject(rng, rng.standard_normal((2, 2, 7, 8)), 1 + trial % 2)
        out = host(ag.interpolate(dev(x), **case))
        assert_same_values(out, _reference(x, **case))
        g = _inject(rng, rng.standard_normal(out.shape)) if trial % 2 else rng.standard_normal(out.shape)
        assert_same_values(_pullback(lambda v: ag.interpolate(v, **case), x, g),
                           _reference_vjp(g, x.shape, mode, align))


NEW_MODES = {
    "bicubic up": (dict(size=(9, 11), mode="bicubic"), lambda x: _loop_bicubic(x, (9, 11)), (2, 2, 4, 5)),
    "bicubic down": (dict(size=(3, 4), mode="bicubic"), lambda x: _loop_bicubic(x, (3, 4)), (2, 2, 7, 8)),
    "bicubic unchanged": (dict(size=(4, 5), mode="bicubic"), lambda x: _loop_bicubic(x, (4, 5)), (2, 2, 4, 5)),
    "bicubic align_corners": (dict(size=(6, 7), mode="bicubic", align_corners=True),
                              lambda x: _loop_bicubic(x, (6, 7), align_corners=True), (2, 2, 4, 5)),
    "bicubic scale 1.7": (dict(scale_factor=1.7, mode="bicubic"), lambda x: _loop_bicubic(x, (6, 8), 1.7),
                          (2, 2, 4, 5)),
    "nearest-exact": (dict(size=(7, 3), mode="nearest-exact"), lambda x: _loop_nearest_exact(x, dict(size=(7, 3))),
                      (2, 2, 5, 6)),
    "area down": (dict(size=(2, 3), mode="area"), lambda x: _loop_area(x, (2, 3)), (2, 2, 5, 6)),
    "area up": (dict(size=(9, 11), mode="area"), lambda x: _loop_area(x, (9, 11)), (2, 2, 5, 6)),
    "trilinear": (dict(size=(3, 7, 5), mode="trilinear"), lambda x: _loop_trilinear(x, dict(size=(3, 7, 5))),
                  (1, 2, 4, 5, 3)),
    "trilinear (axes unchanged)": (dict(size=(4, 7, 3), mode="trilinear"),
                                   lambda x: _loop_trilinear(x, dict(size=(4, 7, 3))), (1, 2, 4, 5, 3)),
    "trilinear align_corners": (dict(size=(6, 2, 4), mode="trilinear", align_corners=True),
                                lambda x: _loop_trilinear(x, dict(size=(6, 2, 4), align_corners=True)),
                                (1, 2, 4, 5, 3)),
}


@pytest.mark.parametrize("name", sorted(NEW_MODES))
def test_new_resampling_modes_nonfinite_reach_only_the_outputs_that_read_them(rng, name):
    """nearest-exact, bicubic, area and trilinear on the exact maps: a loop over each output's taps (IEEE
    arithmetic: ``0 * inf`` is NaN, bicubic's clamped border taps of both signs give ``-w inf + w' inf``)."""
    kwargs, loop, shape = NEW_MODES[name]
    for trial in range(4):
        x = _inject(rng, rng.standard_normal(shape), 1 + trial % 2)
        assert_same_values(host(ag.interpolate(dev(x), **kwargs)), loop(x))


# ---------------------------------------------------------------------------------------------
# the fast path stays the fast path


FINITE_CALLS = {
    "avg_pool2d 3 s2": lambda v: ag.avg_pool2d(v, 3, 2, 1),
    "adaptive_avg_pool2d": lambda v: ag.adaptive_avg_pool2d(v, (3, 5)),
    "bilinear up": lambda v: ag.interpolate(v, size=(15, 9), mode="bilinear"),
    "bilinear unchanged": lambda v: ag.interpolate(v, size=(7, 8), mode="bilinear"),
    "nearest down": lambda v: ag.interpolate(v, size=(3, 5)),
    "bicubic up": lambda v: ag.interpolate(v, size=(9, 11), mode="bicubic"),
    "bicubic unchanged": lambda v: ag.interpolate(v, size=(7, 8), mode="bicubic"),
    "area": lambda v: ag.interpolate(v, size=(3, 5), mode="area"),
    "nearest-exact": lambda v: ag.interpolate(v, size=(3, 5), mode="nearest-exact"),
    "avg_pool3d": lambda v: ag.avg_pool3d(ag.reshape(v, (2, 3, 7, 2, 4)), 2),
}


@pytest.mark.parametrize("name", sorted(FINITE_CALLS))
def test_finite_data_never_takes_the_exact_path(rng, monkeypatch, name):
    """Forward and backward on finite data run the plain matrix products (the speed of the old code)."""
    def refuse(*args):
        raise AssertionError("the exact path ran on finite data")

    monkeypatch.setattr(_separable, "_exact", refuse)
    x = rng.standard_normal((2, 3, 7, 8))
    out, pullback = ag.vjp(FINITE_CALLS[name], dev(x))
    pullback(dev(np.ones(out.shape)))


@pytest.mark.parametrize("name", sorted(FINITE_CALLS))
def test_nonfinite_data_takes_the_exact_path_forward_and_backward(rng, monkeypatch, name):
    calls = []
    exact = _separable._exact
    monkeypatch.setattr(_separable, "_exact", lambda *a: calls.append(1) or exact(*a))
    x = _inject(rng, rng.standard_normal((2, 3, 7, 8)))
    out, pullback = ag.vjp(FINITE_CALLS[name], dev(x))
    assert calls
    calls.clear()
    pullback(dev(_inject(rng, rng.standard_normal(out.shape))))
    assert calls


def test_an_overflowing_finite_sum_only_costs_the_exact_path(rng):
    """A sum of finite float32 values can overflow to inf: the check then answers 'not finite', and the
    exact path gives the same numbers as the fast one."""
    x = (rng.uniform(1.0, 2.0, (1, 2, 8, 8)) * 3e37).astype(np.float32)
    assert not np.isfinite(x.sum(dtype=np.float32))
    out = host(ag.avg_pool2d(dev(x), 2))
    np.testing.assert_allclose(out, _loop_avg_pool2d(x.astype(np.float64), 2), rtol=1e-6)
    assert np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# softmax rows


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_row_with_nan_is_nan_and_other_rows_are_untouched(rng, name):
    """Before: the max shift was guarded to 0 and a NaN total divided by 1, giving unnormalised finite values."""
    x = rng.standard_normal((4, 5))
    x[1, 2] = np.nan
    out = host(getattr(ag, name)(dev(x), axis=1))
    assert np.isnan(out[1]).all()
    clean = np.delete(x, 1, axis=0)
    np.testing.assert_allclose(np.delete(out, 1, axis=0), getattr(scipy.special, name)(clean, axis=1), rtol=1e-13)
    g = rng.standard_normal(x.shape)
    grad = _pullback(lambda v: getattr(ag, name)(v, axis=1), x, g)
    assert np.isnan(grad[1]).all() and np.isfinite(np.delete(grad, 1, axis=0)).all()


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_unmasked_all_minus_inf_row_is_nan_but_a_fully_masked_row_follows_the_policy(name):
    """The -inf row comes from the values (torch: NaN); the masked row from the mask (policy: 0 / -inf)."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])
    assert np.isnan(host(getattr(ag, name)(dev(x)))[0]).all()
    keep = np.array([[True, True, True], [False, False, False]])
    out = host(getattr(ag, name)(dev(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])), mask=dev(keep)))
    np.testing.assert_array_equal(out[1], [0.0] * 3 if name == "softmax" else [-np.inf] * 3)
