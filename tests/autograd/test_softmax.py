"""softmax / log_softmax against scipy.special, boolean keep-masks, fully-masked rows, gradients."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import autograd as ag

from .helpers import assert_close, check_grads, dev, host, tensor


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax_and_log_softmax_match_scipy(rng, axis):
    x = rng.standard_normal((2, 3, 4)) * 3
    assert_close(ag.softmax(dev(x), axis=axis), scipy.special.softmax(x, axis=axis), rtol=1e-13, atol=1e-16)
    assert_close(ag.log_softmax(dev(x), axis=axis), scipy.special.log_softmax(x, axis=axis), rtol=1e-13, atol=1e-14)


@settings(max_examples=20)
@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=5), data=st.data())
def test_softmax_property(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    scale = data.draw(st.sampled_from([1.0, 30.0, 1e3]))
    x = np.random.default_rng(data.draw(st.integers(0, 2**16))).standard_normal(shape) * scale
    y = host(ag.softmax(dev(x), axis=axis))
    np.testing.assert_allclose(y, scipy.special.softmax(x, axis=axis), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-13)
    np.testing.assert_allclose(host(ag.log_softmax(dev(x), axis=axis)), scipy.special.log_softmax(x, axis=axis),
                               rtol=1e-12, atol=1e-12)


def test_softmax_is_stable_for_huge_inputs():
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e300, 0.0, 1e300]])
    with np.errstate(over="raise", invalid="raise"):
        y = host(ag.softmax(dev(x)))
        logy = host(ag.log_softmax(dev(x)))
    np.testing.assert_allclose(y, scipy.special.softmax(x, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(logy[0], scipy.special.log_softmax(x[0]), rtol=1e-14)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_gradcheck(rng, axis):
    x = rng.standard_normal((2, 3, 4))
    check_grads(lambda v: ag.softmax(v, axis=axis), dev(x))
    check_grads(lambda v: ag.log_softmax(v, axis=axis), dev(x))


def test_softmax_vjp_formula(rng):
    x, g = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    y = scipy.special.softmax(x, axis=1)
    _, pullback = ag.vjp(ag.softmax, dev(x))
    assert_close(pullback(dev(g))[0], y * (g - (g * y).sum(axis=1, keepdims=True)), rtol=1e-12, atol=1e-15)
    _, pullback = ag.vjp(ag.log_softmax, dev(x))
    assert_close(pullback(dev(g))[0], g - y * g.sum(axis=1, keepdims=True), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# masks (True = keep)


def _masked_reference(x, keep, axis=-1):
    """Softmax over the kept entries only, computed row by row; fully masked rows are zero."""
    x, keep = np.moveaxis(x, axis, -1), np.moveaxis(np.broadcast_to(keep, x.shape), axis, -1)
    out = np.zeros_like(x)
    for index in np.ndindex(x.shape[:-1]):
        kept = keep[index]
        if kept.any():
            out[index + (kept,)] = scipy.special.softmax(x[index][kept])
    return np.moveaxis(out, -1, axis)


MASK = np.array([[True, False, True, True], [False, False, False, False], [True, True, True, False]])


def test_masked_softmax_matches_softmax_over_kept_entries(rng):
    x = rng.standard_normal((2, 3, 4))
    for mask in (dev(MASK), dev(MASK[None]), tensor(MASK)):
        y = host(ag.softmax(dev(x), mask=mask))
        np.testing.assert_allclose(y, _masked_reference(x, MASK), rtol=1e-13, atol=0)
        assert (y[:, ~MASK] == 0.0).all()  # exactly zero, not just small


def test_fully_masked_rows_are_zero_and_never_nan(rng):
    x = rng.standard_normal((2, 3, 4))
    t = tensor(x, requires_grad=True)
    y = ag.softmax(t, mask=dev(MASK))
    logy = ag.log_softmax(t, mask=dev(MASK))
    assert not np.isnan(host(y)).any() and not np.isnan(host(logy)).any()
    assert (host(y)[:, 1] == 0.0).all()
    assert (host(logy)[:, ~MASK] == -np.inf).all()
    np.testing.assert_allclose(host(logy)[:, MASK], np.log(_masked_reference(x, MASK)[:, MASK]), rtol=1e-13)
    g = rng.standard_normal(x.shape)
    y.backward(dev(g))
    grad = host(t.grad)
    assert not np.isnan(grad).any()
    assert (grad[:, ~MASK] == 0.0).all()


def test_masked_softmax_along_another_axis(rng):
    x = rng.standard_normal((3, 4))
    keep = np.array([[True], [False], [True]])  # broadcasts along axis 1 ... softmax runs along axis 0
    y = host(ag.softmax(dev(x), axis=0, mask=dev(keep)))
    np.testing.assert_allclose(y, _masked_reference(x, keep, axis=0), rtol=1e-13, atol=0)


def test_masked_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4))
    keep = dev(MASK)
    check_grads(lambda v: ag.softmax(v, mask=keep), dev(x))
    # log_softmax is -inf at masked positions (finite differences are undefined there): check the kept part
    check_grads(lambda v: ag.where(keep, ag.log_softmax(v, mask=keep), 0.0), dev(x))


def test_masked_log_softmax_gradient_formula(rng):
    x, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    t = tensor(x, requires_grad=True)
    ag.log_softmax(t, mask=dev(MASK)).backward(dev(np.where(MASK, g, 0.0)))
    y = _masked_reference(x, MASK)
    expected = np.where(MASK, g, 0.0) - y * np.where(MASK, g, 0.0).sum(axis=1, keepdims=True)
    assert_close(t.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_masked_positions_get_zero_gradient_whatever_cotangent_they_receive(rng, name):
    """The documented rule (docs/architecture.md, "Masks"), with a NONZERO cotangent at every masked position
    and in the fully masked row: those positions get exactly 0, and the kept positions get the gradient of
    the kept entries alone -- the masked cotangent must not leak through the row sum."""
    x, g = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)) + 3.0  # nonzero everywhere
    _, pullback = ag.vjp(lambda v: getattr(ag, name)(v, mask=dev(MASK)), dev(x))
    grad = host(pullback(dev(g))[0])
    assert (grad[:, ~MASK] == 0.0).all() and np.isfinite(grad).all()
    y, kept_g = _masked_reference(x, MASK), np.where(MASK, g, 0.0)  # the reference sees the kept entries only
    if name == "softmax":
        expected = y * (kept_g - (kept_g * y).sum(axis=-1, keepdims=True))
    else:
        expected = kept_g - y * kept_g.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_a_nan_among_kept_entries_makes_the_row_nan_but_masked_gradients_stay_zero(rng, name):
    """The row is NaN throughout (as masked_fill + softmax in torch), yet a masked position still does not
    take part: its gradient is exactly 0 (torch's masked_fill blocks it), kept positions get NaN."""
    x, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)) + 3.0
    x[0, 2] = np.nan  # kept in row 0 (MASK[0] keeps 0, 2, 3)
    x[2, 3] = np.nan  # masked in row 2: it does not take part, the row stays finite
    _, pullback = ag.vjp(lambda v: getattr(ag, name)(v, mask=dev(MASK)), dev(x))
    out = host(getattr(ag, name)(dev(x), mask=dev(MASK)))
    grad = host(pullback(dev(g))[0])
    assert np.isnan(out[0]).all() and np.isfinite(out[2][MASK[2]]).all()
    assert (grad[~MASK] == 0.0).all()
    assert np.isnan(grad[0][MASK[0]]).all() and np.isfinite(grad[2]).all()


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_masked_vjp_with_a_masked_cotangent_is_differentiable(rng, name):
    """Second order: the VJP, fed a cotangent that is nonzero at masked positions, is itself a smooth
    function of x whose derivatives match finite differences (and stays exactly 0 at masked positions)."""
    x, g = rng.standard_normal((2, 3, 4)), dev(rng.standard_normal((2, 3, 4)) + 3.0)
    keep = dev(MASK)

    def vjp_of(v):
        return ag.vjp(lambda u: getattr(ag, name)(u, mask=keep), v)[1](g)[0]

    assert (host(vjp_of(dev(x)))[:, ~MASK] == 0.0).all()
    check_grads(vjp_of, dev(x), second_order=False)


@pytest.mark.parametrize("op", [ag.softmax, ag.log_softmax])
def test_softmax_mask_errors_name_the_mask(op):
    x = dev(np.ones((2, 4)))
    with pytest.raises(TypeError, match="mask must be boolean"):
        op(x, mask=dev(np.ones((2, 4))))
    with pytest.raises(TypeError, match="mask must be boolean"):
        op(x, mask=dev(np.ones((2, 4), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast"):
        op(x, mask=dev(np.ones(3, dtype=bool)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_keeps_dtype(rng, dtype):
    x = dev(rng.standard_normal((2, 5)).astype(dtype))
    assert ag.softmax(x).dtype == dtype and ag.log_softmax(x).dtype == dtype
    assert ag.softmax(x, mask=dev(np.ones((2, 5), bool))).dtype == dtype


@pytest.mark.parametrize("threads", [1, 3])
def test_row_blocks_and_threads_do_not_change_the_numbers(monkeypatch, rng, threads):
    """Softmax and its VJP over the last axis run by blocks of rows (several threads on NumPy)."""
    from autograd import _threads

    x = rng.standard_normal((3, 5, 7, 11))
    mask = rng.random((7, 11)) > 0.3
    mask[2] = False  # one fully masked row per block of 7
    g = rng.standard_normal(x.shape)

    def run():
        out, pullback = ag.vjp(lambda a: ag.softmax(a, axis=-1, mask=dev(mask)), dev(x))
        (gx,) = pullback(dev(g))
        return host(out), host(gx)

    monkeypatch.setattr(_threads, "BLOCKED", False)  # one call over the whole array
    whole = run()
    monkeypatch.setattr(_threads, "BLOCKED", True)
    monkeypatch.setattr(_threads, "THREADS", threads)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_threads, "BLOCK_BYTES", 3 * 11 * 8)  # blocks of 3 rows: 105 rows -> 35 blocks
    blocked = run()
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)
    assert np.all(whole[0][:, :, 2] == 0) and np.all(whole[1][:, :, 2] == 0)
