"""Multi-scale deformable attention: what the registry matrix cannot see.

A host reference by explicit loops (every query, head, level and point; the pixel coordinate
loc * W - 0.5 and its four corners worked out one by one), the spec's invariant (zero offsets sample the
reference points), the (W, H) normaliser, boxes, the padding mask, the official init, errors and gradients.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
import npattn
from npattn.transformer import msdeform
from tests.conftest import host


def _bilinear(image, x, y, align_corners=False):
    """image (H, W, D) at normalised (x, y) in [0, 1]: pixel = loc * size - 0.5, corners outside read 0
    (``align_corners=True``, the wrong convention for the non-vacuity test: pixel = loc * (size - 1))."""
    height, width = image.shape[:2]
    if align_corners:
        px, py = x * (width - 1), y * (height - 1)
    else:
        px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = np.zeros(image.shape[-1])
    for row, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for col, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= row < height and 0 <= col < width:
                total += wy * wx * image[row, col]
    return total


def reference(p, query, ref, flat, shapes, mask, heads, points, swap_normaliser=False, align_corners=False):
    p = {k: host(v) for k, v in p.items()}
    n_batch, n_query, channels = query.shape
    levels, depth = len(shapes), channels // heads
    value = flat @ p["value_proj.weight"].T + p["value_proj.bias"]
    if mask is not None:
        value = np.where(mask[..., None], 0.0, value)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((n_batch, n_query, channels))
    for n, q in itertools.product(range(n_batch), range(n_query)):
        offsets = (p["sampling_offsets.weight"] @ query[n, q] + p["sampling_offsets.bias"]).reshape(
            heads, levels, points, 2)
        logits = (p["attention_weights.weight"] @ query[n, q] + p["attention_weights.bias"]).reshape(heads, -1)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights = (weights / weights.sum(-1, keepdims=True)).reshape(heads, levels, points)
        for m, level, point in itertools.product(range(heads), range(levels), range(points)):
            height, width = shapes[level]
            image = value[n, starts[level]:starts[level + 1], m * depth:(m + 1) * depth].reshape(height, width, depth)
            dx, dy = offsets[m, level, point]
            r = ref[n, q, level]
            if len(r) == 2:
                norm_x, norm_y = (height, width) if swap_normaliser else (width, height)
                x, y = r[0] + dx / norm_x, r[1] + dy / norm_y
            else:
                x, y = r[0] + dx / points * r[2] * 0.5, r[1] + dy / points * r[3] * 0.5
            out[n, q, m * depth:(m + 1) * depth] += weights[m, level, point] * _bilinear(image, x, y, align_corners)
    return out @ p["output_proj.weight"].T + p["output_proj.bias"]


def _random_params(d_model, levels, heads, points, seed=0, offset_scale=3.0):
    params = msdeform.init(np.random.default_rng(seed), d_model, n_levels=levels, n_heads=heads, n_points=points)
    rng = np.random.default_rng(seed + 1)
    out = {k: ag.from_numpy(host(v) + rng.standard_normal(v.shape) * 0.3) for k, v in params.items()}
    out["sampling_offsets.weight"] = ag.from_numpy(rng.standard_normal(params["sampling_offsets.weight"].shape)
                                                   * offset_scale)
    return out


def _inputs(rng, batch, queries, channels, shapes, box=False, mask=True):
    total = sum(h * w for h, w in shapes)
    ref = rng.uniform(-0.1, 1.1, (batch, queries, len(shapes), 4 if box else 2))
    if box:
        ref[..., 2:] = rng.uniform(0.1, 0.7, ref[..., 2:].shape)
    padding = (rng.random((batch, total)) < 0.25) if mask else None
    return rng.standard_normal((batch, queries, channels)), ref, rng.standard_normal((batch, total, channels)), padding


def _run(params, query, ref, flat, shapes, padding, heads, points):
    return host(msdeform.msdeform(params, ag.from_numpy(query), ag.from_numpy(ref), ag.from_numpy(flat),
                                  np.array(shapes), None, None if padding is None else ag.from_numpy(padding),
                                  n_levels=len(shapes), n_heads=heads, n_points=points))


# ---------------------------------------------------------------------------------------------
# against the loops


@pytest.mark.parametrize("shapes,heads,points,box,mask", [
    ([(6, 5), (3, 4), (2, 2)], 2, 3, False, True),
    ([(6, 5), (3, 4), (2, 2)], 4, 2, True, True),
    ([(1, 7)], 1, 4, False, False),
    ([(5, 1), (1, 1)], 2, 1, True, False),
])
def test_msdeform_matches_the_loop_reference(shapes, heads, points, box, mask):
    rng = np.random.default_rng(len(shapes) + heads)
    params = _random_params(8, len(shapes), heads, points)
    query, ref, flat, padding = _inputs(rng, 2, 4, 8, shapes, box, mask)
    out = _run(params, query, ref, flat, shapes, padding, heads, points)
    np.testing.assert_allclose(out, reference(params, query, ref, flat, shapes, padding, heads, points),
                               rtol=1e-12, atol=1e-12)


def test_the_reference_sees_the_normaliser_and_the_corner_convention():
    """The loop reference is not vacuous: a swapped (H, W) normaliser or aligned corners change its answer."""
    rng = np.random.default_rng(0)
    params = _random_params(8, 1, 2, 2)
    query, ref, flat, _ = _inputs(rng, 1, 3, 8, [(6, 3)], mask=False)
    good = reference(params, query, ref, flat, [(6, 3)], None, 2, 2)
    np.testing.assert_allclose(_run(params, query, ref, flat, [(6, 3)], None, 2, 2), good, atol=1e-12)
    swapped = reference(params, query, ref, flat, [(6, 3)], None, 2, 2, swap_normaliser=True)
    aligned = reference(params, query, ref, flat, [(6, 3)], None, 2, 2, align_corners=True)
    assert np.abs(swapped - good).max() > 1e-3 and np.abs(aligned - good).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# invariants


def _identity_params(d_model, levels, heads, points):
    """value_proj = output_proj = identity with zero biases; offsets and attention logits zero."""
    params = msdeform.init(np.random.default_rng(0), d_model, n_levels=levels, n_heads=heads, n_points=points)
    eye = ag.from_numpy(np.eye(d_model))
    return {**params, "value_proj.weight": eye, "output_proj.weight": eye,
            "sampling_offsets.bias": ag.from_numpy(np.zeros(params["sampling_offsets.bias"].shape))}


@given(height=st.integers(1, 6), width=st.integers(1, 6), levels=st.integers(1, 3), heads=st.sampled_from([1, 2]),
       points=st.integers(1, 3), box=st.booleans(), seed=st.integers(0, 1000))
def test_zero_offsets_sample_the_reference_points(height, width, levels, heads, points, box, seed):
    """With zero offsets every point of a head samples its reference point; at pixel centres that is the
    pixel itself, so with identity projections the output is the mean over levels of those pixels."""
    rng = np.random.default_rng(seed)
    shapes = [(height, width)] * levels
    params = _identity_params(4, levels, heads, points)
    rows, cols = rng.integers(0, height, (2, 3)), rng.integers(0, width, (2, 3))
    centres = np.stack([(cols + 0.5) / width, (rows + 0.5) / height], axis=-1)          # (N, Lq, 2)
    ref = np.repeat(centres[:, :, None, :], levels, axis=2)
    if box:
        ref = np.concatenate([ref, rng.uniform(0.1, 1.0, ref.shape)], axis=-1)   # the box size is irrelevant here
    flat = rng.standard_normal((2, levels * height * width, 4))
    out = _run(params, rng.standard_normal((2, 3, 4)), ref, flat, shapes, None, heads, points)
    pixels = flat.reshape(2, levels, height, width, 4)
    expected = np.stack([np.stack([pixels[n, :, rows[n, q], cols[n, q]].mean(axis=0) for q in range(3)])
                         for n in range(2)])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_offsets_are_normalised_by_width_and_height():
    """An x offset of 1 moves one pixel column on every level, a y offset of 1 one row: the (W, H) normaliser."""
    shapes = [(3, 6)]
    params = _identity_params(2, 1, 1, 1)
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((1, 18, 2))
    ref = np.array([[[[(2 + 0.5) / 6, (1 + 0.5) / 3]]]])
    pixels = flat.reshape(3, 6, 2)
    for shift, (row, col) in (((1.0, 0.0), (1, 3)), ((0.0, 1.0), (2, 2)), ((-2.0, -1.0), (0, 0))):
        moved = dict(params, **{"sampling_offsets.bias": ag.from_numpy(np.array(shift))})
        out = _run(moved, np.zeros((1, 1, 2)), ref, flat, shapes, None, 1, 1)
        np.testing.assert_allclose(out[0, 0], pixels[row, col], rtol=1e-12, atol=1e-12)


def test_padding_mask_hides_the_padded_values():
    """Masked positions read 0 (masked_fill): whatever they hold, NaN included, the output does not change."""
    rng = np.random.default_rng(1)
    shapes = [(4, 5), (2, 3)]
    params = _random_params(8, 2, 2, 2)
    query, ref, flat, padding = _inputs(rng, 2, 6, 8, shapes, mask=True)
    out = _run(params, query, ref, flat, shapes, padding, 2, 2)
    changed = flat.copy()
    changed[padding] = np.nan
    np.testing.assert_array_equal(_run(params, query, ref, changed, shapes, padding, 2, 2), out)
    zeroed = np.where(padding[..., None], 0.0, flat)
    with_zero_values = dict(params, **{"value_proj.bias": ag.from_numpy(np.zeros(8))})
    np.testing.assert_allclose(_run(with_zero_values, query, ref, flat, shapes, padding, 2, 2),
                               _run(with_zero_values, query, ref, zeroed, shapes, None, 2, 2), atol=1e-12)


def test_sampling_locations_and_the_official_init():
    """At init (zero weights) every query samples ref + (p + 1) g_m / (W, H) with uniform weights 1 / (L P)."""
    params = npattn.get("msdeform").init(np.random.default_rng(0), 16, n_levels=2, n_heads=4, n_points=3)
    ref = np.random.default_rng(1).uniform(0, 1, (1, 2, 2, 2))
    shapes = np.array([(4, 8), (2, 2)])
    locations, weights = msdeform.sampling_locations(params, ag.from_numpy(np.ones((1, 2, 16))), ag.from_numpy(ref),
                                                     shapes, n_levels=2, n_heads=4, n_points=3)
    directions = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float)    # theta = 0, 90, 180, 270 degrees
    expected = (ref[:, :, None, :, None, :] + directions[None, None, :, None, None, :]
                * np.arange(1, 4)[None, None, None, None, :, None] / shapes[:, ::-1][None, None, None, :, None, :])
    np.testing.assert_allclose(host(locations), expected, atol=1e-7)     # float32 cos/sin in the official init
    np.testing.assert_allclose(host(weights), 1 / 6, rtol=1e-15)
    assert host(params["sampling_offsets.bias"]).dtype == np.float64
    # head 1 (theta = pi / 2), point 0, x: cos of float32(pi / 2) is -4.37e-8, not 0 (the official float32 init)
    assert host(params["sampling_offsets.bias"])[2 * 3 * 2] == pytest.approx(-4.371139e-08, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# errors


def _valid():
    mech = npattn.get("msdeform")
    return mech.default_params(), list(mech.example_input(np.random.default_rng(0)))


@pytest.mark.parametrize("position,value,match", [
    (3, np.array([[6, 5], [3, 4]]), "input_spatial_shapes has 2 levels, the parameters are for n_levels=3"),
    (3, np.array([[6, 5], [3, 4], [2, 3]]), "input_flatten must be"),
    (3, np.array([[6.0, 5], [3, 4], [2, 2]]), "input_spatial_shapes must be an \\(L, 2\\) integer array"),
    (3, np.array([[6, 5], [3, 0], [2, 2]]), "every level needs H, W >= 1"),
    (4, np.array([0, 30, 41]), "input_level_start_index must be the levels' start offsets \\[0, 30, 42\\]"),
    (5, np.zeros((2, 46)), "input_padding_mask must be a boolean"),
    (5, np.zeros((2, 45), bool), "input_padding_mask must be a boolean \\(2, 46\\)"),
    (1, np.zeros((2, 5, 3, 3)), "reference_points must be \\(2, 5, 3, 2 or 4\\)"),
    (1, np.zeros((2, 5, 2, 2)), "reference_points must be"),
    (2, np.zeros((1, 46, 16)), "input_flatten must be \\(2, 46, 16\\)"),
    (0, np.zeros((2, 5, 8)), "query must have 16 channels"),
])
def test_msdeform_input_errors(position, value, match):
    params, inputs = _valid()
    inputs[position] = ag.from_numpy(value)
    with pytest.raises(ValueError, match=f"msdeform: {match}"):
        npattn.get("msdeform").apply(params, *inputs)


def test_msdeform_option_and_dtype_errors():
    params, inputs = _valid()
    with pytest.raises(ValueError, match="msdeform: parameter 'sampling_offsets.weight' must have shape"):
        npattn.get("msdeform").apply(params, *inputs, n_points=3)
    with pytest.raises(ValueError, match="msdeform: d_model=16 must be divisible by n_heads=3"):
        npattn.get("msdeform").apply(params, *inputs, n_heads=3)
    with pytest.raises(ValueError, match="msdeform: n_points must be a positive int"):
        npattn.get("msdeform").init(np.random.default_rng(0), 16, n_points=0)
    inputs[1] = inputs[1].astype(np.float32)
    with pytest.raises(TypeError, match="msdeform: reference_points has dtype float32"):
        npattn.get("msdeform").apply(params, *inputs)


# ---------------------------------------------------------------------------------------------
# gradients


def test_msdeform_gradcheck_full():
    """Every parameter and every float input, full Jacobians on a small case (points away from pixel centres)."""
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (2, 2)]
    params = _random_params(4, 2, 2, 2, offset_scale=1.0)
    query, ref, flat, padding = _inputs(rng, 1, 2, 4, shapes, box=True)

    def f(p, q, r, x):
        return msdeform.msdeform(p, q, r, x, np.array(shapes), None, ag.from_numpy(padding), n_levels=2, n_heads=2,
                                 n_points=2)

    assert ag.gradcheck(f, params, ag.from_numpy(query), ag.from_numpy(ref), ag.from_numpy(flat))
    assert ag.gradgradcheck(f, params, ag.from_numpy(query), ag.from_numpy(ref), ag.from_numpy(flat), mode="fast")


# ---------------------------------------------------------------------------------------------
# the fused core against the official per-level grid_sample core


@given(levels=st.integers(1, 3), heads=st.sampled_from([1, 2]), points=st.integers(1, 3), queries=st.integers(1, 4),
       batch=st.integers(0, 2), seed=st.integers(0, 1000))
def test_fused_core_equals_the_official_grid_sample_core(levels, heads, points, queries, batch, seed):
    """One sampling over all levels = one grid_sample per level: outputs and every gradient."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(n) for n in rng.integers(1, 6, 2)) for _ in range(levels)]
    total = sum(h * w for h, w in shapes)
    value = ag.from_numpy(rng.standard_normal((batch, total, heads, 3)))
    locations = ag.from_numpy(rng.uniform(-0.3, 1.3, (batch, queries, heads, levels, points, 2)))
    logits = rng.standard_normal((batch, queries, heads, levels * points))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = ag.from_numpy(weights.reshape(batch, queries, heads, levels, points))
    cotangent = ag.from_numpy(rng.standard_normal((batch, queries, heads * 3)))
    results = []
    for core in (msdeform.deformable_core, msdeform.official_core):
        out, pullback = ag.vjp(lambda v, loc, a, core=core: core(v, shapes, loc, a), value, locations, weights)
        results.append([host(out)] + [host(g) for g in pullback(cotangent)])
    for fused, official in zip(*results):
        np.testing.assert_allclose(fused, official, rtol=1e-12, atol=1e-12)


def test_non_finite_locations_and_weights_give_nan_for_their_query_and_head_only():
    rng = np.random.default_rng(4)
    shapes = [(4, 3), (2, 2)]
    value = ag.from_numpy(rng.standard_normal((1, 16, 2, 3)))
    locations = rng.uniform(0, 1, (1, 3, 2, 2, 2, 2))
    weights = np.full((1, 3, 2, 2, 2), 0.25)
    locations[0, 1, 0, 1, 0, 0] = np.nan            # query 1, head 0
    weights[0, 2, 1, 0, 1] = np.nan                 # query 2, head 1
    for core in (msdeform.deformable_core, msdeform.official_core):
        out = host(core(value, shapes, ag.from_numpy(locations), ag.from_numpy(weights))).reshape(1, 3, 2, 3)
        nan = np.isnan(out).all(axis=-1)[0]
        np.testing.assert_array_equal(nan, [[False, False], [True, False], [False, True]])
        assert np.isfinite(out[0][~nan]).all()
