"""interpolate's nearest-exact, bicubic, area and trilinear / 5-D modes against per-sample loops written from
PyTorch's rules (torch itself is compared in tests/torch_tier/test_opinfo.py and test_nn_functional.py).

* nearest-exact: ``src = min(floor(float32((dst + 0.5) * scale)), in - 1)``;
* bicubic: ``src = (dst + 0.5) * scale - 0.5`` (not clamped; ``dst * (in-1)/(out-1)`` with align_corners),
  ``i = floor(src)``, ``t = src - i``; value = sum over taps k = -1..2 of ``W(k - t) x[clamp(i + k)]`` with
  Keys' kernel W(s) = (a+2)|s|^3 - (a+3)|s|^2 + 1 for |s| <= 1, a|s|^3 - 5a|s|^2 + 8a|s| - 4a for 1 < |s| < 2,
  a = -0.75;
* area: the mean over bin ``[floor(i in / out), ceil((i + 1) in / out))``;
* trilinear: the 8 corners of the source cell weighted by products of (1 - t, t) per axis.
"""
import itertools
import math

import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, check_grads, dev


def _keys(s, a=-0.75):
    s = abs(s)
    if s <= 1:
        return (a + 2) * s**3 - (a + 3) * s**2 + 1
    if s < 2:
        return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return 0.0


def _scale(n_in, n_out, scale_factor, align_corners):
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return n_in / n_out if scale_factor is None else 1.0 / scale_factor


def _loop_bicubic(x, out, scale_factor=None, align_corners=False):
    h, w = x.shape[2:]
    sh, sw = (_scale(n, o, scale_factor, align_corners) for n, o in zip((h, w), out))
    result = np.zeros(x.shape[:2] + tuple(out))
    for p, q in itertools.product(range(out[0]), range(out[1])):
        if align_corners:
            src = (p * sh, q * sw)
        else:
            src = ((p + 0.5) * sh - 0.5, (q + 0.5) * sw - 0.5)
        base = [math.floor(v) for v in src]
        for ki, kj in itertools.product(range(-1, 3), range(-1, 3)):
            weight = _keys(ki - (src[0] - base[0])) * _keys(kj - (src[1] - base[1]))
            r, c = min(max(base[0] + ki, 0), h - 1), min(max(base[1] + kj, 0), w - 1)
            result[:, :, p, q] += weight * x[:, :, r, c]
    return result


@pytest.mark.parametrize("case", [
    dict(size=(7, 9)), dict(size=(3, 2)), dict(size=(7, 9), align_corners=True), dict(scale_factor=1.7),
    dict(scale_factor=0.6), dict(size=(1, 1), align_corners=True), dict(scale_factor=1.05),
])
def test_bicubic(rng, case):
    x = rng.standard_normal((2, 3, 4, 5))
    out = case.get("size") or tuple(int(math.floor(n * case["scale_factor"])) for n in x.shape[2:])
    expected = _loop_bicubic(x, out, case.get("scale_factor"), case.get("align_corners", False))
    assert_close(ag.interpolate(dev(x), mode="bicubic", **case), expected, rtol=1e-13, atol=1e-13)
    check_grads(lambda v: ag.interpolate(v, mode="bicubic", **case), dev(x[:1, :1]))


def test_bicubic_recompute_scale_factor_indexes_with_in_over_out(rng):
    x = rng.standard_normal((1, 2, 4, 5))
    recomputed = ag.interpolate(dev(x), scale_factor=1.7, mode="bicubic", recompute_scale_factor=True)
    assert_close(recomputed, _loop_bicubic(x, (6, 8)), rtol=1e-13, atol=1e-13)
    direct = ag.interpolate(dev(x), scale_factor=1.7, mode="bicubic")
    assert np.abs(ag.to_numpy(direct.data) - ag.to_numpy(recomputed.data)).max() > 1e-3  # 1/1.7 != 4/6


def _loop_nearest_exact(x, case):
    """nearest-exact of (N, C, H, W) by PyTorch's vectorised rule (small 2-D outputs)."""
    sizes = case.get("size") or tuple(int(math.floor(n * f)) for n, f in zip(x.shape[2:], _pair(case["scale_factor"])))
    sources = []
    for n_in, n_out, f in zip(x.shape[2:], sizes, _pair(case.get("scale_factor"))):
        step = np.float32(n_in / n_out if f is None else 1.0 / f)
        sources.append([min(int(np.floor(np.float32((d + 0.5) * float(step)))), n_in - 1) for d in range(n_out)])
    return x[:, :, sources[0]][:, :, :, sources[1]]


@pytest.mark.parametrize("case", [dict(size=(7, 3)), dict(scale_factor=(2.3, 0.77)), dict(scale_factor=1.05)])
def test_nearest_exact(rng, case):
    x = rng.standard_normal((2, 2, 5, 6))
    expected = _loop_nearest_exact(x, case)
    assert_close(ag.interpolate(dev(x), mode="nearest-exact", **case), expected, rtol=0, atol=0)
    check_grads(lambda v: ag.interpolate(v, mode="nearest-exact", **case), dev(x[:1, :1]))


def _pair(v):
    return (v, v) if not isinstance(v, tuple) else v


def _loop_area(x, size):
    """area resizing of (N, C, H, W): the mean over each adaptive bin."""
    h, w = x.shape[2:]
    expected = np.zeros(x.shape[:2] + size)
    for p, q in itertools.product(range(size[0]), range(size[1])):
        r0, r1 = math.floor(p * h / size[0]), math.ceil((p + 1) * h / size[0])
        c0, c1 = math.floor(q * w / size[1]), math.ceil((q + 1) * w / size[1])
        expected[:, :, p, q] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return expected


@pytest.mark.parametrize("size", [(2, 3), (5, 4), (9, 11), (1, 1)])
def test_area_is_the_adaptive_bin_mean(rng, size):
    x = rng.standard_normal((2, 2, 5, 6))
    expected = _loop_area(x, size)
    assert_close(ag.interpolate(dev(x), size=size, mode="area"), expected, rtol=1e-13, atol=1e-14)
    check_grads(lambda v: ag.interpolate(v, size=size, mode="area"), dev(x[:1, :1]))
    row = np.stack([x[:, :, 0, math.floor(q * 6 / size[1]):math.ceil((q + 1) * 6 / size[1])].mean(axis=-1)
                    for q in range(size[1])], axis=-1)
    assert_close(ag.interpolate(dev(x[:, :, 0]), size=size[1], mode="area"), row, rtol=1e-13, atol=1e-14)


def _linear_taps(n_in, n_out, align_corners, scale_factor):
    """Per output position: (i0, i1, t) of the linear rule."""
    if n_in == n_out:
        return [(d, d, 0.0) for d in range(n_out)]
    step = _scale(n_in, n_out, scale_factor, align_corners)
    taps = []
    for d in range(n_out):
        src = d * step if align_corners else max((d + 0.5) * step - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        taps.append((i0, min(i0 + 1, n_in - 1), min(max(src - i0, 0.0), 1.0)))
    return taps


def _loop_trilinear(x, case):
    """Trilinear resizing of (N, C, D, H, W) by the 8 corners of each source cell (``case``: interpolate's
    keyword arguments); an unchanged axis reads its sample twice, through weights 1 and 0, as PyTorch."""
    factors = _pair3(case.get("scale_factor"))
    sizes = case.get("size") or tuple(int(math.floor(n * f)) for n, f in zip(x.shape[2:], factors))
    index_factors = (None,) * 3 if case.get("recompute_scale_factor") else factors
    taps = [_linear_taps(n, o, case.get("align_corners", False), f)
            for n, o, f in zip(x.shape[2:], sizes, index_factors)]
    expected = np.zeros(x.shape[:2] + sizes)
    for pos in itertools.product(*[range(n) for n in sizes]):
        for corner in itertools.product((0, 1), repeat=3):
            weight, src = 1.0, []
            for axis, side in enumerate(corner):
                i0, i1, t = taps[axis][pos[axis]]
                weight *= t if side else 1.0 - t
                src.append(i1 if side else i0)
            expected[(slice(None), slice(None)) + pos] += weight * x[(slice(None), slice(None)) + tuple(src)]
    return expected


@pytest.mark.parametrize("case", [dict(size=(3, 7, 5)), dict(size=(6, 2, 9), align_corners=True),
                                  dict(scale_factor=(1.3, 0.6, 2.2)),
                                  dict(scale_factor=1.5, recompute_scale_factor=True)])
def test_trilinear(rng, case):
    x = rng.standard_normal((2, 2, 4, 5, 3))
    expected = _loop_trilinear(x, case)
    assert_close(ag.interpolate(dev(x), mode="trilinear", **case), expected, rtol=1e-13, atol=1e-14)
    check_grads(lambda v: ag.interpolate(v, mode="trilinear", **case), dev(x[:1, :1]), mode="fast")


def _pair3(v):
    return (v,) * 3 if not isinstance(v, tuple) else v


def test_nearest_and_area_on_volumes(rng):
    x = rng.standard_normal((1, 2, 4, 5, 3))
    out = ag.interpolate(dev(x), size=(8, 2, 3), mode="nearest")
    d, h = [int(np.floor(np.float32(i) * np.float32(4 / 8))) for i in range(8)], [0, 2]  # 5 -> 2: floor(i * 2.5)
    assert_close(out, x[:, :, d][:, :, :, h], rtol=0, atol=0)
    area = ag.interpolate(dev(x), size=(2, 1, 3), mode="area")
    assert_close(area, ag.to_numpy(ag.adaptive_avg_pool3d(dev(x), (2, 1, 3)).data), rtol=0, atol=0)
