"""grid_sample, roll and the window helpers against explicit per-pixel loops, and finite differences.

The loop reference is written from PyTorch's scalar rules (``aten/src/ATen/native/GridSampler.h``), not
from the vectorised formulas ``autograd.gridsample`` uses:

* unnormalise: ``((x + 1) / 2) * (size - 1)`` with aligned corners, else ``((x + 1) * size - 1) / 2``;
* border: clip to [0, size - 1];  reflection: reflect about [0, size - 1] (aligned) or [-0.5, size - 0.5]
  with ``fmod`` and a flip count, then clip;
* bilinear: the four corners around (ix, iy), weight = product of (1 - distance) per axis, a corner
  outside [0, size) reads 0;  nearest: ``nearbyint`` (round half to even), 0 outside.

Its input gradient is the same loop scattering the weights back (the adjoint); the grid gradient is
checked by finite differences at points away from the integer (and half-integer) source coordinates
where it jumps.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from autograd import gridsample

from .helpers import assert_close, check_grads, dev, host

MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border", "reflection")
COMBOS = list(itertools.product(MODES, PADDINGS, (False, True)))
COMBO_IDS = [f"{m}-{p}-{'ac' if a else 'noac'}" for m, p, a in COMBOS]

# ---------------------------------------------------------------------------------------------
# the loop reference


def _unnormalize(coord, size, align_corners):
    if align_corners:
        return ((coord + 1) / 2) * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(value, twice_low, twice_high):
    if twice_low == twice_high:
        return 0.0
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    value = abs(value - low)
    extra = math.fmod(value, span)
    flips = math.floor(value / span)
    return extra + low if flips % 2 == 0 else span - extra + low


def _source(coord, size, padding, align_corners):
    value = _unnormalize(coord, size, align_corners)
    if padding == "reflection":
        value = _reflect(value, 0, 2 * (size - 1)) if align_corners else _reflect(value, -1, 2 * size - 1)
    if padding in ("border", "reflection"):
        value = min(size - 1.0, max(value, 0.0))
    return value


def _taps(ix, iy, height, width, mode):
    """[(row, col, weight)] of the in-bounds pixels one output reads."""
    if mode == "nearest":
        row, col = int(np.rint(iy)), int(np.rint(ix))
        return [(row, col, 1.0)] if 0 <= row < height and 0 <= col < width else []
    x0, y0 = math.floor(ix), math.floor(iy)
    taps = []
    for row, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
        for col, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= row < height and 0 <= col < width:
                taps.append((row, col, wy * wx))
    return taps


def reference(x, grid, mode="bilinear", padding="zeros", align_corners=False, cotangent=None):
    """(output, input gradient for ``cotangent``) by explicit loops over every output pixel and tap."""
    n, c, h, w = x.shape
    out_h, out_w = grid.shape[1:3]
    out = np.zeros((n, c, out_h, out_w))
    grad = np.zeros_like(x)
    for b, i, j in itertools.product(range(n), range(out_h), range(out_w)):
        ix = _source(grid[b, i, j, 0], w, padding, align_corners)
        iy = _source(grid[b, i, j, 1], h, padding, align_corners)
        for row, col, weight in _taps(ix, iy, h, w, mode):
            out[b, :, i, j] += weight * x[b, :, row, col]
            if cotangent is not None:
                grad[b, :, row, col] += weight * cotangent[b, :, i, j]
    return out, grad


def _pixel_to_grid(pixel, size, align_corners):
    """The grid coordinate whose unnormalised source coordinate is ``pixel``."""
    if align_corners:
        return pixel * 2 / (size - 1) - 1 if size > 1 else np.zeros_like(pixel)
    return (2 * pixel + 1) / size - 1


def smooth_grid(rng, n, out_h, out_w, height, width, align_corners, reach=1.6):
    """A grid whose source coordinates keep >= 0.05 away from integers and half-integers (the kinks).

    Points spread over [-reach, reach] times the image in pixel units, so many fall outside it.
    """
    def axis(size):
        whole = rng.integers(-int(reach * size) - 1, int(reach * size) + 1, (n, out_h, out_w))
        frac = rng.uniform(0.05, 0.45, (n, out_h, out_w)) + rng.integers(0, 2, (n, out_h, out_w)) * 0.5
        return _pixel_to_grid(whole + frac, size, align_corners)

    return np.stack([axis(width), axis(height)], axis=-1)


def _run(x, grid, mode, padding, align_corners, cotangent):
    out, pullback = ag.vjp(lambda a, g: ag.grid_sample(a, g, mode, padding, align_corners), dev(x), dev(grid))
    grad_x, grad_grid = pullback(dev(cotangent))
    return host(out), host(grad_x), host(grad_grid)


# ---------------------------------------------------------------------------------------------
# values and input gradients against the loops


@pytest.mark.parametrize("mode,padding,align_corners", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4, 6), (1, 2, 1, 4, 3, 3), (1, 1, 6, 1, 2, 5), (1, 1, 1, 1, 2, 2)],
                         ids=["5x7", "1x4", "6x1", "1x1"])
def test_matches_the_loop_reference(rng, mode, padding, align_corners, shape):
    n, c, h, w, out_h, out_w = shape
    x = rng.standard_normal((n, c, h, w))
    grid = rng.uniform(-2.5, 2.5, (n, out_h, out_w, 2))     # many points outside [-1, 1]
    cotangent = rng.standard_normal((n, c, out_h, out_w))
    expected, expected_grad = reference(x, grid, mode, padding, align_corners, cotangent)
    out, grad_x, grad_grid = _run(x, grid, mode, padding, align_corners, cotangent)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, expected_grad, rtol=1e-12, atol=1e-12)
    if mode == "nearest":
        assert np.all(grad_grid == 0), "nearest sampling has a zero grid gradient"


@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       out_h=st.integers(1, 4), out_w=st.integers(1, 4), combo=st.sampled_from(COMBOS),
       reach=st.sampled_from([0.9, 1.0, 3.0]), seed=st.integers(0, 2**16))
def test_hypothesis_against_the_loops(n, c, h, w, out_h, out_w, combo, reach, seed):
    mode, padding, align_corners = combo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    grid = rng.uniform(-reach, reach, (n, out_h, out_w, 2))
    cotangent = rng.standard_normal((n, c, out_h, out_w))
    expected, expected_grad = reference(x, grid, mode, padding, align_corners, cotangent)
    out, grad_x, grad_grid = _run(x, grid, mode, padding, align_corners, cotangent)
    assert out.shape == (n, c, out_h, out_w) and grad_grid.shape == grid.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, expected_grad, rtol=1e-12, atol=1e-12)


def test_exact_pixel_centres_reproduce_the_image(rng):
    """A grid at the pixel centres samples the image itself, in every mode (an identity warp)."""
    x = rng.standard_normal((2, 3, 4, 5))
    for align_corners in (False, True):
        rows = _pixel_to_grid(np.arange(4.0), 4, align_corners)
        cols = _pixel_to_grid(np.arange(5.0), 5, align_corners)
        grid = np.stack(np.meshgrid(cols, rows), axis=-1)[None].repeat(2, axis=0)
        for mode, padding in itertools.product(MODES, PADDINGS):
            assert_close(ag.grid_sample(dev(x), dev(grid), mode, padding, align_corners), x, rtol=1e-12, atol=1e-12)


def test_the_reference_tells_the_conventions_apart(rng):
    """The loop reference is not vacuous: align_corners, padding and mode each change its answer."""
    x = rng.standard_normal((1, 2, 4, 5))
    grid = rng.uniform(-1.5, 1.5, (1, 3, 3, 2))
    base = reference(x, grid, "bilinear", "zeros", False)[0]
    for other in (("bilinear", "zeros", True), ("bilinear", "border", False), ("nearest", "zeros", False)):
        assert np.abs(reference(x, grid, *other)[0] - base).max() > 1e-3, other
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(host(ag.grid_sample(dev(x), dev(grid), align_corners=True)), base, atol=1e-6)


def test_out_of_image_points_read_zero_or_the_border(rng):
    x = rng.standard_normal((1, 1, 3, 4))
    far = np.array([[[[5.0, 0.2], [-7.0, -3.0]]]])
    assert np.all(host(ag.grid_sample(dev(x), dev(far))) == 0)
    border = host(ag.grid_sample(dev(x), dev(far), padding_mode="border", align_corners=True))
    # x = 5 clips to the last column; y = 0.2 lies between rows 1 and 2 (aligned: iy = 1.2)
    np.testing.assert_allclose(border[0, 0, 0, 0], 0.8 * x[0, 0, 1, 3] + 0.2 * x[0, 0, 2, 3], rtol=1e-14)
    np.testing.assert_allclose(border[0, 0, 0, 1], x[0, 0, 0, 0], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# gradients by finite differences (away from the kinks)


@pytest.mark.parametrize("padding,align_corners", list(itertools.product(PADDINGS, (False, True))),
                         ids=[f"{p}-{a}" for p, a in itertools.product(PADDINGS, (False, True))])
def test_gradcheck_bilinear(rng, padding, align_corners):
    x = rng.standard_normal((2, 2, 4, 5))
    grid = smooth_grid(rng, 2, 3, 2, 4, 5, align_corners)
    check_grads(lambda a, g: ag.grid_sample(a, g, "bilinear", padding, align_corners), dev(x), dev(grid))


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradcheck_nearest(rng, padding):
    x = rng.standard_normal((1, 2, 4, 3))
    grid = smooth_grid(rng, 1, 3, 3, 4, 3, False)
    check_grads(lambda a, g: ag.grid_sample(a, g, "nearest", padding), dev(x), dev(grid))


def test_grid_gradient_jumps_at_integer_source_coordinates():
    """The documented kink: the grid gradient changes between the two sides of a pixel centre."""
    x = dev(np.array([[[[0.0, 1.0, 5.0]]]]))
    def slope(pixel):
        grid = dev(np.array([[[[_pixel_to_grid(pixel, 3, False), 0.0]]]]))
        return host(ag.grad(lambda g: ag.sum(ag.grid_sample(x, g)))(grid))[0, 0, 0, 0]
    assert slope(0.9) * 2 / 3 == pytest.approx(1.0) and slope(1.1) * 2 / 3 == pytest.approx(4.0)


def test_gradcheck_catches_a_wrong_grid_gradient(rng, monkeypatch):
    """The finite-difference check really covers the grid path: a wrong weights-VJP fails it."""
    x = dev(rng.standard_normal((1, 1, 3, 3)))
    grid = dev(smooth_grid(rng, 1, 2, 2, 3, 3, False, reach=0.4))
    assert ag.gradcheck(lambda g: ag.grid_sample(x, g), grid)
    right = gridsample.tap_products
    monkeypatch.setattr(gridsample, "tap_products", lambda *args: ag.mul(right(*args), 1.5))
    with pytest.raises(ag.GradcheckError):
        ag.gradcheck(lambda g: ag.grid_sample(x, g), grid)


# ---------------------------------------------------------------------------------------------
# shapes, errors, non-finite values, backends


def test_batch_zero_and_one(rng):
    x = rng.standard_normal((3, 2, 4, 4))
    grid = rng.uniform(-1.2, 1.2, (3, 2, 5, 2))
    full = host(ag.grid_sample(dev(x), dev(grid)))
    np.testing.assert_allclose(host(ag.grid_sample(dev(x[:1]), dev(grid[:1]))), full[:1], rtol=0, atol=0)
    empty_x, empty_grid = dev(x[:0]), dev(grid[:0])
    out, pullback = ag.vjp(lambda a, g: ag.grid_sample(a, g), empty_x, empty_grid)
    assert out.shape == (0, 2, 2, 5)
    gx, gg = pullback(dev(np.zeros((0, 2, 2, 5))))
    assert gx.shape == (0, 2, 4, 4) and gg.shape == (0, 2, 5, 2)


def test_empty_output_grid_and_no_channels(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    assert ag.grid_sample(dev(x), dev(np.zeros((2, 0, 3, 2)))).shape == (2, 3, 0, 3)
    assert ag.grid_sample(dev(x[:, :0]), dev(np.zeros((2, 2, 3, 2)))).shape == (2, 0, 2, 3)
    g = ag.grad(lambda a: ag.sum(ag.grid_sample(a, dev(np.zeros((2, 0, 3, 2))))))(dev(x))
    assert np.all(host(g) == 0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(mode="bicubic"), ValueError, "mode"),
    (dict(padding_mode="wrap"), ValueError, "padding_mode"),
    (dict(align_corners=None), TypeError, "align_corners"),
])
def test_bad_options(rng, kwargs, error, match):
    with pytest.raises(error, match=f"grid_sample.*{match}"):
        ag.grid_sample(dev(rng.standard_normal((1, 1, 2, 2))), dev(np.zeros((1, 1, 1, 2))), **kwargs)


@pytest.mark.parametrize("x_shape,grid_shape,match", [
    ((1, 2, 3), (1, 1, 1, 2), "input must be 4-D"),
    ((1, 1, 2, 2), (1, 1, 2), "grid must be"),
    ((1, 1, 2, 2), (1, 1, 1, 3), "grid must be"),
    ((2, 1, 2, 2), (1, 1, 1, 2), "grid and input must have the same batch size"),
    ((1, 1, 0, 2), (1, 1, 1, 2), "input must have non-empty spatial"),
])
def test_bad_shapes(x_shape, grid_shape, match):
    with pytest.raises(ValueError, match=f"grid_sample: {match}"):
        ag.grid_sample(dev(np.zeros(x_shape)), dev(np.zeros(grid_shape)))


def test_bad_dtypes():
    with pytest.raises(TypeError, match="grid_sample: input .*float32.*grid .*float64"):
        ag.grid_sample(dev(np.zeros((1, 1, 2, 2), np.float32)), dev(np.zeros((1, 1, 1, 2))))
    with pytest.raises(TypeError, match="grid_sample: grid must be floating"):
        ag.grid_sample(dev(np.zeros((1, 1, 2, 2))), dev(np.zeros((1, 1, 1, 2), np.int64)))


def test_float32(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    grid = rng.uniform(-1.3, 1.3, (2, 3, 3, 2))
    for mode, padding, align_corners in COMBOS:
        out = ag.grid_sample(dev(x, np.float32), dev(grid, np.float32), mode, padding, align_corners)
        assert out.dtype == np.float32
        np.testing.assert_allclose(host(out), reference(x, grid, mode, padding, align_corners)[0], atol=2e-5)


@pytest.mark.parametrize("mode,padding,align_corners", COMBOS, ids=COMBO_IDS)
def test_nan_grid_gives_nan_pixels_only(rng, mode, padding, align_corners):
    x = rng.standard_normal((1, 2, 3, 4))
    grid = rng.uniform(-0.9, 0.9, (1, 2, 3, 2))
    grid[0, 1, 2, 0] = np.nan
    out, grad_x, grad_grid = _run(x, grid, mode, padding, align_corners, np.ones((1, 2, 2, 3)))
    assert np.all(np.isnan(out[0, :, 1, 2]))
    finite = np.ones(out.shape, bool)
    finite[0, :, 1, 2] = False
    assert np.all(np.isfinite(out[finite])) and np.all(np.isfinite(grad_x))
    assert np.isnan(grad_grid[0, 1, 2]).all() and np.isfinite(np.delete(grad_grid.reshape(-1, 2), 5, axis=0)).all()
    clean = grid.copy()
    clean[0, 1, 2] = 0.0
    np.testing.assert_allclose(out[finite], reference(x, clean, mode, padding, align_corners)[0][finite], atol=1e-12)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "generic"])
@pytest.mark.parametrize("mode", MODES)
def test_nan_pixel_reaches_only_the_outputs_that_read_it(rng, monkeypatch, mode, sparse):
    """A NaN in the image reaches the outputs whose in-bounds taps read it, and no other: out-of-image taps
    are never read (their weight is 0, and 0 * NaN would be NaN), in the output and in both gradients."""
    monkeypatch.setattr(gridsample, "_sparse_path", lambda *a: sparse and ag.backend.name == "numpy")
    x = rng.standard_normal((1, 2, 3, 4))
    x[0, :, 0, 0] = np.nan
    # pixel (0, 0); far outside (its clamped index would be 0); inside away from (0, 0); the corner edge
    pixels = np.array([[0.0, 0.0], [-5.0, -3.0], [2.2, 1.6], [-0.7, -0.7]])
    grid = np.stack([_pixel_to_grid(pixels[:, 0], 4, False), _pixel_to_grid(pixels[:, 1], 3, False)], -1)
    out, grad_x, grad_grid = _run(x, grid[None, None], mode, "zeros", False, np.ones((1, 2, 1, 4)))
    reads_nan = [True, False, False, mode == "bilinear"]   # (-0.7, -0.7): its se corner is pixel (0, 0)
    assert (np.isnan(out[0, :, 0]).all(axis=0) == reads_nan).all()
    assert np.isfinite(grad_x).all()
    assert np.isfinite(grad_grid[0, 0, 1]).all() and np.isfinite(grad_grid[0, 0, 2]).all()


@pytest.mark.parametrize("padding,nan_expected", [("zeros", True), ("border", False), ("reflection", True)])
def test_infinite_grid(rng, padding, nan_expected):
    x = rng.standard_normal((1, 1, 3, 4))
    grid = np.array([[[[np.inf, 0.1], [-np.inf, 0.1]]]])
    out = host(ag.grid_sample(dev(x), dev(grid), padding_mode=padding))
    assert np.isnan(out).all() == nan_expected
    if not nan_expected:   # clipped to the right and left columns
        np.testing.assert_allclose(out[0, 0, 0], reference(x, np.array([[[[9.0, 0.1], [-9.0, 0.1]]]]), "bilinear",
                                                           "border")[0][0, 0, 0], rtol=1e-14)


def test_generic_path_equals_the_sparse_path(rng, monkeypatch):
    """The gather/add.at kernels (CuPy, strict) give the numbers of the SciPy-sparse kernels (NumPy)."""
    x = rng.standard_normal((2, 3, 5, 4))
    grid = rng.uniform(-1.4, 1.4, (2, 3, 6, 2))
    cotangent = rng.standard_normal((2, 3, 3, 6))
    results = {}
    for sparse in (True, False):
        monkeypatch.setattr(gridsample, "_sparse_path", lambda *a, s=sparse: s and ag.backend.name == "numpy")
        results[sparse] = _run(x, grid, "bilinear", "zeros", False, cotangent)
        second = ag.grad(lambda a: ag.sum(ag.grad(lambda g: ag.sum(ag.grid_sample(a, g) ** 2))(dev(grid)) ** 2))
        results[sparse] += (host(second(dev(x))),)
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_caller_arrays_untouched(rng):
    x, grid = rng.standard_normal((1, 2, 3, 3)), rng.uniform(-2, 2, (1, 2, 2, 2))
    x_dev, grid_dev = dev(x), dev(grid)
    ag.grad(lambda a, g: ag.sum(ag.grid_sample(a, g, padding_mode="reflection")), argnums=(0, 1))(x_dev, grid_dev)
    np.testing.assert_array_equal(host(x_dev), x)
    np.testing.assert_array_equal(host(grid_dev), grid)


# ---------------------------------------------------------------------------------------------
# roll, window_partition, window_reverse


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), shift=st.integers(-7, 7), seed=st.integers(0, 99))
def test_roll_matches_numpy(shape, shift, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    axis = seed % len(shape)
    assert_close(ag.roll(dev(x), shift, axis), np.roll(x, shift, axis), rtol=0, atol=0)
    assert_close(ag.roll(dev(x), shift), np.roll(x, shift), rtol=0, atol=0)
    shifts, axes = (shift, 1 - shift), (0, len(shape) - 1)
    assert_close(ag.roll(dev(x), shifts, axes), np.roll(x, shifts, axes), rtol=0, atol=0)


def test_roll_vjp_is_the_inverse_shift(rng):
    x, g = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    _, pullback = ag.vjp(lambda a: ag.roll(a, (-2, 3), (1, 2)), dev(x))
    assert_close(pullback(dev(g))[0], np.roll(g, (2, -3), (1, 2)), rtol=0, atol=0)
    check_grads(lambda a: ag.roll(a, (-2, 3), (1, 2)), dev(x))


def test_roll_bad_arguments():
    with pytest.raises(ValueError, match="roll"):
        ag.roll(dev(np.zeros((2, 2))), (1, 2), 0)
    with pytest.raises(ValueError, match="roll"):
        ag.roll(dev(np.zeros((2, 2))), (1, 2))
    with pytest.raises(ValueError, match="roll: axis 2 is out of range"):
        ag.roll(dev(np.zeros(5)), 1, 2)
    with pytest.raises(ValueError, match="roll: a 0-d tensor has no axis 0"):
        ag.roll(dev(np.array(1.0)), 1, 0)
    for bad in (True, 1.5):
        with pytest.raises(TypeError, match="roll: shifts must be an int"):
            ag.roll(dev(np.zeros(5)), bad, 0)
    assert_close(ag.roll(dev(np.array(1.0)), 3), np.array(1.0), rtol=0, atol=0)  # axis=None: one element


def _windows_by_loops(x, wh, ww):
    b, h, w, c = x.shape
    return np.stack([x[i, r:r + wh, s:s + ww] for i in range(b) for r in range(0, h, wh) for s in range(0, w, ww)])


@given(b=st.integers(0, 2), nh=st.integers(1, 3), nw=st.integers(1, 3), wh=st.integers(1, 3), ww=st.integers(1, 3),
       c=st.integers(1, 2))
def test_window_partition_and_reverse(b, nh, nw, wh, ww, c):
    x = np.random.default_rng(b + 10 * nh).standard_normal((b, nh * wh, nw * ww, c))
    windows = ag.window_partition(dev(x), (wh, ww))
    expected = _windows_by_loops(x, wh, ww) if b else np.zeros((0, wh, ww, c))
    assert_close(windows, expected, rtol=0, atol=0)
    assert_close(ag.window_reverse(windows, (wh, ww), nh * wh, nw * ww), x, rtol=0, atol=0)


def test_window_helpers_gradients_and_errors(rng):
    x = rng.standard_normal((2, 4, 6, 3))
    check_grads(lambda a: ag.window_partition(a, (2, 3)), dev(x))
    check_grads(lambda a: ag.window_reverse(a, 2, 4, 6), dev(rng.standard_normal((12, 2, 2, 3))))
    with pytest.raises(ValueError, match="window_partition: window .* must divide"):
        ag.window_partition(dev(x), 4)
    with pytest.raises(ValueError, match="window_partition: window_size"):
        ag.window_partition(dev(x), 0)
    with pytest.raises(ValueError, match="window_reverse: windows must be"):
        ag.window_reverse(dev(rng.standard_normal((5, 2, 2, 3))), 2, 4, 6)
