"""VOLO outlook attention: an explicit-loop reference (ceil-mode pooling, windows, summing fold), the uniform
case as a convolution (SciPy), the scale and the sum (not mean) of overlapping windows, geometry errors."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import convolve2d

import autograd as ag
from npattn.transformer import outlook
from tests.conftest import host


def _params(dim, heads, kernel=3, padding=1, stride=1, seed=0, qkv_bias=False):
    return outlook.init(np.random.default_rng(seed), dim, num_heads=heads, kernel_size=kernel, padding=padding,
                        stride=stride, qkv_bias=qkv_bias)


def loop_reference(params, x, heads, kernel, padding, stride, qkv_bias=False, scale=None, fold="sum"):
    p = {k: host(v) for k, v in params.items()}
    x = host(x)
    b_, height, width, dim = x.shape
    d = dim // heads
    scale = d ** -0.5 if scale is None else scale
    v = x @ p["v.weight"].T + (p["v.bias"] if qkv_bias else 0)
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    out = np.zeros_like(x)
    count = np.zeros((height, width))
    for b in range(b_):
        for ci in range(h):
            for cj in range(w):
                rows = range(ci * stride, min(ci * stride + stride, height))      # ceil-mode pooling window
                cols = range(cj * stride, min(cj * stride + stride, width))
                centre = np.mean([x[b, r, c] for r in rows for c in cols], axis=0)
                logits = (centre @ p["attn.weight"].T + p["attn.bias"]).reshape(heads, kernel ** 2, kernel ** 2)
                a = np.exp(scale * logits - (scale * logits).max(-1, keepdims=True))
                a /= a.sum(-1, keepdims=True)
                window = [(ci * stride - padding + u, cj * stride - padding + t)
                          for u in range(kernel) for t in range(kernel)]
                vals = np.array([v[b, r, c] if 0 <= r < height and 0 <= c < width else np.zeros(dim)
                                 for r, c in window])                                  # (k^2, C)
                for m in range(heads):
                    mixed = a[m] @ vals[:, m * d:(m + 1) * d]                         # (k^2, d)
                    for (r, c), row in zip(window, mixed):
                        if 0 <= r < height and 0 <= c < width:
                            out[b, r, c, m * d:(m + 1) * d] += row
                            if b == 0 and m == 0:
                                count[r, c] += 1
    if fold == "mean":
        out = out / np.maximum(count, 1)[None, :, :, None]
    return out @ p["proj.weight"].T + p["proj.bias"]


CASES = [  # dim, heads, kernel, padding, stride, H, W
    (8, 2, 3, 1, 1, 5, 6),
    (8, 2, 3, 1, 2, 5, 6),
    (6, 3, 3, 1, 2, 7, 7),
    (4, 1, 5, 2, 1, 4, 6),
    (8, 4, 3, 1, 3, 7, 5),
    (4, 2, 1, 0, 1, 3, 2),
]


@pytest.mark.parametrize("dim,heads,kernel,padding,stride,height,width", CASES)
def test_matches_the_loop_reference(dim, heads, kernel, padding, stride, height, width):
    params = _params(dim, heads, kernel, padding, stride, 1, qkv_bias=True)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((2, height, width, dim)))
    out = host(outlook.outlook(params, x, num_heads=heads, kernel_size=kernel, padding=padding, stride=stride,
                               qkv_bias=True))
    np.testing.assert_allclose(out, loop_reference(params, x, heads, kernel, padding, stride, qkv_bias=True),
                               rtol=1e-12, atol=1e-12)


def test_overlaps_are_summed_and_the_logits_scaled():
    params = _params(8, 2, 3, 1, 1, 2)
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((1, 5, 5, 8)))
    out = host(outlook.outlook(params, x, num_heads=2))
    assert np.abs(out - loop_reference(params, x, 2, 3, 1, 1, fold="mean")).max() > 1e-2
    assert np.abs(out - loop_reference(params, x, 2, 3, 1, 1, scale=1.0)).max() > 1e-3
    np.testing.assert_allclose(host(outlook.outlook(params, x, num_heads=2, qk_scale=1.0)),
                               loop_reference(params, x, 2, 3, 1, 1, scale=1.0), rtol=1e-12, atol=1e-12)


@given(height=st.integers(1, 7), width=st.integers(1, 7), seed=st.integers(0, 30))
def test_uniform_weights_at_stride_one_are_two_box_filters(height, width, seed):
    """attn = 0: every window averages its k^2 values (zero padding) into each of its positions, and the fold
    sums, over a position, the windows of the centres on the map around it: box(box(v)) / k^2, each box a
    zero-padded 3x3 sum (inside the map: the 5x5 tent [1 2 3 2 1]^2 / 9)."""
    params = _params(4, 2, 3, 1, 1, seed)
    params["attn.weight"] = ag.from_numpy(np.zeros((2 * 81, 4)))
    params["attn.bias"] = ag.from_numpy(np.zeros(2 * 81))
    x = np.random.default_rng(seed).standard_normal((1, height, width, 4))
    out = host(outlook.outlook(params, ag.from_numpy(x), num_heads=2))
    p = {k: host(v) for k, v in params.items()}
    v = x[0] @ p["v.weight"].T
    box = np.ones((3, 3))
    mixed = np.stack([convolve2d(convolve2d(v[..., c], box, mode="same"), box, mode="same") / 9.0
                      for c in range(4)], axis=-1)
    np.testing.assert_allclose(out[0], mixed @ p["proj.weight"].T + p["proj.bias"], rtol=1e-12, atol=1e-12)


def test_gradcheck_full():
    params = _params(4, 2, 3, 1, 2, 3, qkv_bias=True)
    x = ag.from_numpy(np.random.default_rng(3).standard_normal((1, 3, 4, 4)))
    f = lambda p, t: outlook.outlook(p, t, num_heads=2, stride=2, qkv_bias=True)  # noqa: E731
    assert ag.gradcheck(f, params, x, mode="full")


def test_errors():
    params = _params(8, 2)
    x = ag.from_numpy(np.zeros((1, 5, 5, 8)))
    with pytest.raises(ValueError, match=r"outlook: kernel_size=3, padding=0, stride=1 on a \(5, 5\) map give a "
                                         r"\(3, 3\) grid"):
        outlook.outlook(params, x, num_heads=2, padding=0)
    with pytest.raises(ValueError, match="outlook: parameter 'attn.weight' must have shape"):
        outlook.outlook(params, x, num_heads=2, kernel_size=5, padding=2)
    with pytest.raises(ValueError, match="outlook: dim=8 must be divisible by num_heads=3"):
        outlook.outlook(params, x, num_heads=3)
    with pytest.raises(ValueError, match="outlook: padding must be a non-negative integer"):
        outlook.outlook(params, x, num_heads=2, padding=-1)
    with pytest.raises(KeyError, match="outlook.*'v.bias'"):
        outlook.outlook(params, x, num_heads=2, qkv_bias=True)
