"""Reductions: sum, mean, var, std, max, min, logsumexp, argmax, argmin."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import autograd as ag

from .helpers import assert_close, check_grads, dev, distinct, host, tensor


@st.composite
def shape_and_axis(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    ndim = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        axis = tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))
        if draw(st.booleans()):
            axis = tuple(a - ndim for a in axis)  # negative spelling
    return shape, axis, draw(st.booleans())


REDUCTIONS = {
    "sum": (ag.sum, lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims)),
    "mean": (ag.mean, lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims)),
    "var": (ag.var, lambda x, axis, keepdims: np.var(x, axis=axis, keepdims=keepdims)),
    "var_unbiased": (lambda x, axis=None, keepdims=False: ag.var(x, axis, keepdims, unbiased=True),
                     lambda x, axis, keepdims: np.var(x, axis=axis, keepdims=keepdims, ddof=1)),
    "std": (ag.std, lambda x, axis, keepdims: np.std(x, axis=axis, keepdims=keepdims)),
    "std_unbiased": (lambda x, axis=None, keepdims=False: ag.std(x, axis, keepdims, unbiased=True),
                     lambda x, axis, keepdims: np.std(x, axis=axis, keepdims=keepdims, ddof=1)),
    "max": (ag.max, lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims)),
    "min": (ag.min, lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims)),
    "logsumexp": (ag.logsumexp, lambda x, axis, keepdims: scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)),
}


def _count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, int) else axis
    return int(np.prod([shape[a] for a in axes]))


@settings(max_examples=15)
@given(case=shape_and_axis(), name=st.sampled_from(sorted(REDUCTIONS)), seed=st.integers(0, 2**16))
def test_reduction_values(case, name, seed):
    shape, axis, keepdims = case
    if name.endswith("unbiased") and _count(shape, axis) < 2:
        return  # n - 1 = 0: undefined
    x = distinct(np.random.default_rng(seed), shape)
    op, reference = REDUCTIONS[name]
    out = op(dev(x), axis=axis, keepdims=keepdims)
    expected = np.asarray(reference(x, axis, keepdims))
    assert_close(out, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, True), ((0, 2), False), (-1, False)])
def test_reduction_gradcheck(rng, name, axis, keepdims):
    x = distinct(rng, (2, 3, 2))
    op = REDUCTIONS[name][0]
    check_grads(lambda v: op(v, axis=axis, keepdims=keepdims), dev(x))


def test_max_and_min_share_the_gradient_between_ties():
    x = tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    ag.max(x, axis=1).sum().backward()
    assert_close(x.grad, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], atol=1e-16)
    x.grad = None
    ag.min(x).backward()
    assert_close(x.grad, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=0)


def test_mean_and_sum_gradients_are_uniform(rng):
    x = tensor(rng.standard_normal((2, 5)), requires_grad=True)
    ag.mean(x, axis=1).sum().backward()
    assert_close(x.grad, np.full((2, 5), 0.2), atol=1e-16)


def test_logsumexp_is_stable_and_handles_minus_infinity():
    x = np.array([[1000.0, 1000.0, -1000.0], [-np.inf, 0.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    with np.errstate(divide="ignore"):
        out = host(ag.logsumexp(dev(x), axis=1))
        expected = scipy.special.logsumexp(x, axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    assert out[2] == -np.inf
    t = tensor(x[:2], requires_grad=True)
    ag.logsumexp(t, axis=1).sum().backward()
    assert_close(t.grad, scipy.special.softmax(x[:2], axis=1), atol=1e-15)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_argmax_argmin_pick_the_first_extremum(axis):
    x = np.array([[1.0, 5.0, 5.0], [7.0, -1.0, 7.0]])
    for op, reference in ((ag.argmax, np.argmax), (ag.argmin, np.argmin)):
        out = op(tensor(x), axis=axis)
        assert not isinstance(out, ag.Tensor)  # a plain backend integer array: no gradient
        np.testing.assert_array_equal(host(out), reference(x, axis=axis))
        assert host(out).dtype.kind == "i"


@pytest.mark.parametrize("op", [ag.sum, ag.mean, ag.var, ag.max, ag.logsumexp])
def test_axis_out_of_range_is_a_clear_error(op):
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        op(dev(np.ones((2, 2))), axis=2)


def test_reductions_of_float32_stay_float32(rng):
    x = dev(rng.standard_normal((3, 4)).astype(np.float32))
    for op in (ag.sum, ag.mean, ag.var, ag.std, ag.max, ag.min, ag.logsumexp):
        assert op(x, axis=1).dtype == np.float32


# --- reductions through BLAS (autograd.ops._blas_layout) -------------------------------------------
# Large sums over leading and/or trailing axes of a contiguous float array are GEMVs with a vector of
# ones, and sum_product's trailing sums are batched dot products.  The tests lower the size threshold
# so that small, gradcheckable arrays take that path too.

@pytest.fixture
def blas_reductions(monkeypatch):
    monkeypatch.setattr(ag.ops, "BLAS_REDUCE_MIN", 1)
    monkeypatch.setattr(ag.ops, "BLAS_REDUCE_MAX_TERMS", 12)  # so that the fallbacks are exercised too


BLAS_AXES = [((2, 3), True), ((0, 2, 3), False), ((0,), True), ((3,), False), (None, False), ((1,), False),
             ((0, 1), True), ((1, 3), False)]


def _takes_blas_path(shape, axes) -> bool:
    data = dev(np.zeros(shape))
    return ag.ops._blas_layout(data, ag.ops._normalize_axis(axes, len(shape))) is not None


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("axes, keepdims", BLAS_AXES)
def test_sum_and_sum_product_match_numpy_on_the_blas_path(rng, blas_reductions, dtype, rtol, axes, keepdims):
    shape = (3, 4, 2, 5)
    a, b = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    for got, want in ((ag.sum(dev(a), axis=axes, keepdims=keepdims), np.sum(a, axis=axes, keepdims=keepdims)),
                      (ag.sum_product(dev(a), dev(b), axis=axes, keepdims=keepdims),
                       np.sum(a * b, axis=axes, keepdims=keepdims))):
        assert got.dtype == dtype and got.shape == np.shape(want)
        scale = np.sum(np.abs(a) * (1 + np.abs(b)), axis=axes, keepdims=keepdims)
        np.testing.assert_array_less(np.abs(host(got.data) - want), rtol * scale + 1e-300)


def test_a_leading_block_longer_than_the_blas_limit_is_summed_by_numpy(rng, blas_reductions):
    a = rng.standard_normal((13, 6))  # 13 leading terms > 12: the second step is NumPy's pairwise sum
    assert_close(ag.sum(dev(a), axis=0), np.sum(a, axis=0), rtol=1e-13, atol=1e-13)
    assert_close(ag.sum_product(dev(a), dev(a), axis=0), np.sum(a * a, axis=0), rtol=1e-13, atol=1e-13)


@pytest.mark.skipif(ag.backend.name != "numpy", reason="the BLAS reductions are a NumPy path")
def test_the_blas_path_is_taken_where_the_layout_allows(blas_reductions):
    shape = (3, 4, 2, 5)
    # kept axes in one block: GEMV; a trailing block longer than BLAS_REDUCE_MAX_TERMS (12): NumPy
    assert _takes_blas_path(shape, (2, 3)) and _takes_blas_path(shape, (0, 2, 3)) and _takes_blas_path(shape, 0)
    assert not _takes_blas_path(shape, (1, 3))               # kept axes 0 and 2 are not one block
    assert not _takes_blas_path(shape, (1, 2, 3))            # 40 trailing terms > 12
    assert not _takes_blas_path((6, 13), 1) and _takes_blas_path((13, 6), 1)
    transposed = ag.xp.transpose(dev(np.zeros(shape)))
    assert ag.ops._blas_layout(transposed, (0,)) is None     # not C-contiguous


@pytest.mark.parametrize("axes, keepdims", BLAS_AXES)
def test_sum_product_gradients(rng, blas_reductions, axes, keepdims):
    a, b = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2))
    check_grads(lambda u, v: ag.sum_product(u, v, axis=axes, keepdims=keepdims), tensor(a), tensor(b))
    check_grads(lambda u: ag.sum(u * u * 0.5, axis=axes, keepdims=keepdims), tensor(a))



@pytest.mark.parametrize("axes, keepdims", BLAS_AXES)
def test_sum_product_of_a_tensor_with_itself(rng, blas_reductions, axes, keepdims):
    """sum_product(a, a): one VJP 2 g a (the same values as the two-operand form), second order too."""
    a = rng.standard_normal((2, 3, 2, 2))
    g = rng.standard_normal(np.sum(a, axis=axes, keepdims=keepdims).shape)
    (grad,) = ag.vjp(lambda u: ag.sum_product(u, u, axis=axes, keepdims=keepdims), tensor(a))[1](dev(g))
    spread = g if keepdims or axes is None else np.expand_dims(g, axes)
    assert_close(grad, 2 * spread * a, rtol=1e-15, atol=1e-15)
    check_grads(lambda u: ag.sum_product(u, u, axis=axes, keepdims=keepdims) * 0.5, tensor(a))


def test_a_broadcast_factor_gets_the_fused_gradient(rng, blas_reductions):
    x, s = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 1, 1))
    gx, gs = ag.grad(lambda x, s: ag.sum(ag.exp(x) * s), argnums=(0, 1))(tensor(x), tensor(s))
    assert_close(gs, np.sum(np.exp(x), axis=(2, 3), keepdims=True))
    assert_close(gx, np.exp(x) * s)
    check_grads(lambda x, s: ag.tanh(x) * s, tensor(x), tensor(s))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
@pytest.mark.parametrize("axes", [2, 1, (1, 3), (0, 2)])
def test_sum_product_over_middle_axes(rng, dtype, rtol, axes):
    """Kept axes on both sides of the summed ones (a (N, C, 1, W) gate's gradient): einsum, no full product."""
    a, b = (rng.standard_normal((3, 5, 28, 7)).astype(dtype) for _ in range(2))
    for keepdims in (False, True):
        got = ag.sum_product(dev(a), dev(b), axis=axes, keepdims=keepdims)
        assert got.dtype == dtype
        assert_close(got, np.sum(a.astype(np.float64) * b, axis=axes, keepdims=keepdims), rtol=rtol, atol=rtol)
    check_grads(lambda u, v: ag.sum_product(u, v, axis=axes), tensor(a[:1, :2, :3].astype(np.float64)),
                tensor(b[:1, :2, :3].astype(np.float64)))


def test_sum_product_needs_one_shape():
    with pytest.raises(ValueError, match="one shape"):
        ag.sum_product(dev(np.ones((2, 3))), dev(np.ones((3,))))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, bool])
def test_mean_and_neg_refuse_what_torch_refuses(dtype):
    """torch has no dtype to compute the mean of integers in (the core used to return a float mean), and no
    negation of booleans (NumPy raised from inside)."""
    x = dev(np.ones((2, 3), dtype=dtype))
    with pytest.raises(TypeError, match=f"mean: input must be a floating-point or complex tensor, got dtype "
                                        f"{np.dtype(dtype)}"):
        ag.mean(x)
    if dtype is bool:
        with pytest.raises(TypeError, match="neg: a boolean tensor cannot be negated"):
            ag.neg(x)
    else:
        np.testing.assert_array_equal(host(ag.neg(x)), -np.ones((2, 3), dtype=dtype))  # integers negate
