"""grid_sample against torch.nn.functional.grid_sample: outputs, input and grid gradients.

Every mode x padding_mode x align_corners, batch 0 and 1, one-pixel axes, grids far outside [-1, 1],
float64 and float32, and the non-finite cases where PyTorch's CPU kernel does not crash.
"""
import itertools

import numpy as np
import pytest

import autograd as ag

from .helpers import dev, host
from .test_gridsample import COMBO_IDS, COMBOS, smooth_grid

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch


def _both(x, grid, cotangent, mode, padding, align_corners, dtype=np.float64):
    ours, pullback = ag.vjp(lambda a, g: ag.grid_sample(a, g, mode, padding, align_corners),
                            dev(x, dtype), dev(grid, dtype))
    grad_x, grad_grid = pullback(dev(cotangent, dtype))
    xt = torch.tensor(x.astype(dtype), requires_grad=True)
    gt = torch.tensor(grid.astype(dtype), requires_grad=True)
    theirs = F.grid_sample(xt, gt, mode=mode, padding_mode=padding, align_corners=align_corners)
    theirs.backward(torch.tensor(cotangent.astype(dtype)))
    return (host(ours), host(grad_x), host(grad_grid)), (theirs.detach().numpy(), xt.grad.numpy(), gt.grad.numpy())


SHAPES = [(2, 3, 5, 7, 4, 6), (1, 2, 1, 4, 3, 3), (1, 1, 6, 1, 2, 5), (1, 1, 1, 1, 2, 2), (0, 2, 3, 3, 2, 2),
          (3, 4, 8, 8, 5, 5)]


@pytest.mark.parametrize("mode,padding,align_corners", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["5x7", "1x4", "6x1", "1x1", "batch0", "8x8"])
def test_against_torch(rng, mode, padding, align_corners, shape):
    n, c, h, w, out_h, out_w = shape
    x = rng.standard_normal((n, c, h, w))
    grid = rng.uniform(-3.0, 3.0, (n, out_h, out_w, 2))
    cotangent = rng.standard_normal((n, c, out_h, out_w))
    ours, theirs = _both(x, grid, cotangent, mode, padding, align_corners)
    for name, a, b in zip(("output", "grad input", "grad grid"), ours, theirs):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("mode,padding,align_corners", COMBOS, ids=COMBO_IDS)
def test_against_torch_float32(rng, mode, padding, align_corners):
    x = rng.standard_normal((2, 3, 6, 5))
    grid = smooth_grid(rng, 2, 4, 3, 6, 5, align_corners)   # away from the jumps float32 rounding could cross
    cotangent = rng.standard_normal((2, 3, 4, 3))
    ours, theirs = _both(x, grid, cotangent, mode, padding, align_corners, np.float32)
    for name, a, b in zip(("output", "grad input", "grad grid"), ours, theirs):
        assert a.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_exact_grid_points_against_torch(rng):
    """Points exactly on pixel centres, edges and the reflection turning points (the kinks)."""
    x = rng.standard_normal((1, 2, 4, 5))
    values = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, -1.5, 2.0])
    grid = np.stack(np.meshgrid(values, values), axis=-1)[None]
    cotangent = rng.standard_normal((1, 2, len(values), len(values)))
    for mode, padding, align_corners in COMBOS:
        ours, theirs = _both(x, grid, cotangent, mode, padding, align_corners)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_grid_where_torch_is_defined(rng, mode, value):
    """zeros padding (torch's CPU kernel crashes on a NaN in bilinear border/reflection sampling)."""
    x = rng.standard_normal((1, 2, 3, 4))
    grid = rng.uniform(-0.9, 0.9, (1, 2, 2, 2))
    grid[0, 0, 1, 0] = value
    cotangent = rng.standard_normal((1, 2, 2, 2))
    ours, theirs = _both(x, grid, cotangent, mode, "zeros", False)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-12)   # input gradients agree
    finite = np.ones(ours[0].shape, bool)
    finite[0, :, 0, 1] = False
    np.testing.assert_allclose(ours[0][finite], theirs[0][finite], rtol=1e-12, atol=1e-12)
    assert np.isnan(ours[0][~finite]).all()   # our policy: NaN; torch agrees for bilinear, gives 0 for nearest
    if mode == "bilinear":
        assert np.isnan(theirs[0][~finite]).all()
    else:
        assert (theirs[0][~finite] == 0).all()


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_infinite_grid_with_border_padding(rng, mode):
    x = rng.standard_normal((1, 2, 3, 4))
    grid = np.array([[[[np.inf, 0.3], [-np.inf, -0.2], [0.1, np.inf]]]])
    cotangent = rng.standard_normal((1, 2, 1, 3))
    ours, theirs = _both(x, grid, cotangent, mode, "border", False)
    for a, b in zip(ours[:2], theirs[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_all_combinations_listed():
    assert len(COMBOS) == 12 and set(itertools.product(("bilinear", "nearest"), ("zeros", "border", "reflection"),
                                                       (False, True))) == set(COMBOS)
