"""interpolate against per-pixel loops written from PyTorch's index rules.

PyTorch (``torch.nn.functional.interpolate``, default ``recompute_scale_factor=None``):
* the output size is ``floor(in * scale_factor)`` or ``size``; the scale used for the source index is
  ``1 / scale_factor`` when a scale factor is given, else ``in / out``;
* an unchanged size is a plain copy (both modes); nearest with a doubled size uses ``dst // 2``;
* nearest: ``src = min(floor(dst * scale), in - 1)`` evaluated in single precision;
* bilinear, align_corners=False: ``src = max(scale (dst + 0.5) - 0.5, 0)``; align_corners=True:
  ``src = dst (in - 1) / (out - 1)`` (0 for a single output);
  ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, weights ``1 - (src - i0)`` and ``src - i0``.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag

from .helpers import assert_close, check_grads, dev


def _nearest_source(dst, n_in, n_out, scale):
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst // 2
    step = np.float32(n_in / n_out if scale is None else scale)
    return min(int(np.floor(np.float32(dst) * step)), n_in - 1)


def _linear_source(dst, n_in, n_out, scale, align_corners):
    """(i0, i1, weight of i1) for one output index."""
    if n_out == n_in:
        return dst, dst, 0.0
    if align_corners:
        src = dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        src = max((n_in / n_out if scale is None else scale) * (dst + 0.5) - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _reference(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    h, w = x.shape[2:]
    if size is not None:
        oh, ow = (size, size) if isinstance(size, int) else size
        scales = (None, None)
    else:
        sh, sw = (scale_factor, scale_factor) if np.isscalar(scale_factor) else scale_factor
        oh, ow = math.floor(h * sh), math.floor(w * sw)
        scales = (1.0 / sh, 1.0 / sw)
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            if mode == "nearest":
                out[:, :, i, j] = x[:, :, _nearest_source(i, h, oh, scales[0]), _nearest_source(j, w, ow, scales[1])]
            else:
                y0, y1, ly = _linear_source(i, h, oh, scales[0], align_corners)
                x0, x1, lx = _linear_source(j, w, ow, scales[1], align_corners)
                out[:, :, i, j] = ((1 - ly) * (1 - lx) * x[:, :, y0, x0] + (1 - ly) * lx * x[:, :, y0, x1]
                                   + ly * (1 - lx) * x[:, :, y1, x0] + ly * lx * x[:, :, y1, x1])
    return out


CASES = [
    dict(size=(8, 10), mode="nearest"),
    dict(size=(3, 2), mode="nearest"),
    dict(size=(7, 11), mode="nearest"),
    dict(size=4, mode="nearest"),
    dict(scale_factor=2, mode="nearest"),
    dict(scale_factor=(1.5, 0.6), mode="nearest"),
    dict(scale_factor=2.05, mode="nearest"),  # doubled size: PyTorch's dst // 2 shortcut, not 1/2.05
    dict(scale_factor=1.05, mode="nearest"),  # unchanged size: a copy, not 1/1.05
    dict(size=(8, 10), mode="bilinear"),
    dict(size=(8, 10), mode="bilinear", align_corners=True),
    dict(size=(3, 2), mode="bilinear"),
    dict(size=(3, 2), mode="bilinear", align_corners=True),
    dict(size=(1, 1), mode="bilinear", align_corners=True),
    dict(size=(7, 3), mode="bilinear", align_corners=False),
    dict(scale_factor=2, mode="bilinear"),
    dict(scale_factor=(1.7, 0.45), mode="bilinear"),  # 1/scale_factor differs from in/out here
    dict(scale_factor=(2.5, 1.3), mode="bilinear", align_corners=True),
    dict(scale_factor=1.05, mode="bilinear"),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_interpolate_matches_loops(rng, case):
    x = rng.standard_normal((2, 3, 4, 5))
    assert_close(ag.interpolate(dev(x), **case), _reference(x, **case), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_interpolate_gradcheck(rng, case):
    x = rng.standard_normal((1, 1, 4, 5))
    check_grads(lambda v: ag.interpolate(v, **case), dev(x))


@st.composite
def resize_configs(draw):
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    align = draw(st.sampled_from([None, False, True])) if mode == "bilinear" else None
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):
        target = dict(size=(draw(st.integers(1, 9)), draw(st.integers(1, 9))))
    else:
        factors = st.sampled_from([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 1 / 3])
        sh, sw = draw(factors), draw(factors)
        if math.floor(h * sh) < 1 or math.floor(w * sw) < 1:
            sh = sw = 2.0
        target = dict(scale_factor=(sh, sw))
    return (h, w), dict(target, mode=mode, align_corners=align), draw(st.integers(0, 2**16))


@settings(max_examples=30)
@given(cfg=resize_configs())
def test_interpolate_property(cfg):
    (h, w), kwargs, seed = cfg
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    reference_kwargs = dict(kwargs, align_corners=bool(kwargs["align_corners"]))
    assert_close(ag.interpolate(dev(x), **kwargs), _reference(x, **reference_kwargs), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", [dict(size=9, mode="linear"), dict(size=(9,), mode="linear", align_corners=True),
                                  dict(scale_factor=2.5, mode="nearest"), dict(size=3, mode="bilinear")])
def test_interpolate_1d(rng, case):
    x = rng.standard_normal((2, 3, 5))
    size = case.get("size")
    reference_case = dict(case, mode="bilinear" if case["mode"] in ("linear", "bilinear") else "nearest")
    if size is not None:
        reference_case["size"] = (1, size[0] if isinstance(size, tuple) else size)
    else:
        reference_case["scale_factor"] = (1.0, case["scale_factor"])
    expected = _reference(x[:, :, None], **reference_case)[:, :, 0]
    assert_close(ag.interpolate(dev(x), **case), expected, rtol=1e-13, atol=1e-14)
    check_grads(lambda v: ag.interpolate(v, **case), dev(x[:1, :1]))


def test_resize_matrix_rows_sum_to_one():
    for n_in, n_out in ((4, 9), (9, 4), (5, 5), (1, 3), (3, 1)):
        for mode, align in (("nearest", None), ("bilinear", False), ("bilinear", True)):
            matrix = ag.to_numpy(ag.resize_matrix(n_in, n_out, mode, align))
            assert matrix.shape == (n_out, n_in)
            np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interpolate_keeps_dtype(rng, dtype):
    x = rng.standard_normal((1, 2, 3, 4)).astype(dtype)
    for mode in ("nearest", "bilinear"):
        out = ag.interpolate(dev(x), size=(5, 6), mode=mode)
        assert out.dtype == dtype
        tol = 1e-6 if dtype == np.float32 else 1e-13
        assert_close(out, _reference(x.astype(np.float64), size=(5, 6), mode=mode), rtol=tol, atol=tol)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(), "exactly one of size and scale_factor"),
    (dict(size=4, scale_factor=2), "exactly one of size and scale_factor"),
    (dict(size=4, mode="lanczos"), "mode must be one of"),
    (dict(size=4, mode="trilinear"), "mode 'trilinear' needs a 5-D input"),
    (dict(size=4, mode="area", align_corners=False), "align_corners only applies"),
    (dict(size=4, recompute_scale_factor=True), "recompute_scale_factor is not meaningful"),
    (dict(size=(4, 4, 4)), "size must be one value or 2"),
    (dict(scale_factor=float("nan")), "scale_factor must be positive and finite"),
    (dict(size=4, mode="nearest", align_corners=True), "align_corners only applies"),
    (dict(scale_factor=0.0), "scale_factor must be positive"),
    (dict(scale_factor=(2.0, -1.0)), "scale_factor must be positive"),
    (dict(scale_factor=0.1), "output size must be positive"),
    (dict(size=(0, 3)), "output size must be positive"),
])
def test_interpolate_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ag.interpolate(dev(np.ones((1, 1, 4, 4))), **kwargs)


def test_interpolate_rejects_bad_input_rank():
    with pytest.raises(ValueError, match="mode 'bilinear' needs a 3-D or 4-D input"):
        ag.interpolate(dev(np.ones((1, 1, 2, 4, 4))), size=2, mode="bilinear")
    with pytest.raises(ValueError, match="mode 'nearest' needs a 3-D or 4-D or 5-D input"):
        ag.interpolate(dev(np.ones((4, 4))), size=2)
