"""DCT-II / DCT-III against scipy.fft (every norm, any axis, n-D), basis matrices, gradients."""
import numpy as np
import pytest
import scipy.fft
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import autograd as ag

from .helpers import assert_close, check_grads, dev

TYPES = [2, 3]
NORMS = [None, "backward", "ortho", "forward"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_dct_and_idct_match_scipy(rng, type_, norm, axis):
    x = rng.standard_normal((3, 5, 4))
    assert_close(ag.dct(dev(x), type=type_, norm=norm, axis=axis), scipy.fft.dct(x, type=type_, norm=norm, axis=axis),
                 rtol=1e-12, atol=1e-12)
    assert_close(ag.idct(dev(x), type=type_, norm=norm, axis=axis),
                 scipy.fft.idct(x, type=type_, norm=norm, axis=axis), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_basis_matrices_are_scipy_applied_to_the_identity(type_, norm, n):
    eye = np.eye(n)
    np.testing.assert_allclose(ag.to_numpy(ag.dct_matrix(n, type_, norm)), scipy.fft.dct(eye, type_, norm=norm, axis=0),
                               rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ag.to_numpy(ag.idct_matrix(n, type_, norm)),
                               scipy.fft.idct(eye, type_, norm=norm, axis=0), rtol=1e-13, atol=1e-14)
    product = ag.to_numpy(ag.idct_matrix(n, type_, norm)) @ ag.to_numpy(ag.dct_matrix(n, type_, norm))
    np.testing.assert_allclose(product, eye, atol=1e-13)


def test_orthonormal_dct_is_orthogonal_and_dct3_is_its_transpose():
    m2 = ag.to_numpy(ag.dct_matrix(6, 2, "ortho"))
    np.testing.assert_allclose(m2 @ m2.T, np.eye(6), atol=1e-14)
    np.testing.assert_allclose(ag.to_numpy(ag.dct_matrix(6, 3, "ortho")), m2.T, atol=1e-15)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("axes", [(-2, -1), (0, 2), (1,)])
def test_dctn_idctn_match_scipy(rng, type_, norm, axes):
    x = rng.standard_normal((3, 4, 5))
    assert_close(ag.dctn(dev(x), type_, norm, axes), scipy.fft.dctn(x, type_, axes=axes, norm=norm), rtol=1e-12,
                 atol=1e-12)
    assert_close(ag.idctn(dev(x), type_, norm, axes), scipy.fft.idctn(x, type_, axes=axes, norm=norm), rtol=1e-12,
                 atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_dct2_idct2_round_trip(rng, norm):
    x = rng.standard_normal((2, 3, 4, 5))
    y = ag.dct2(dev(x), norm=norm)
    assert_close(y, scipy.fft.dctn(x, 2, axes=(-2, -1), norm=norm), rtol=1e-12, atol=1e-12)
    assert_close(ag.idct2(y, norm=norm), x, rtol=1e-12, atol=1e-12)
    assert_close(ag.idct2(ag.dct2(dev(x), 3, norm), 3, norm), x, rtol=1e-12, atol=1e-12)


@settings(max_examples=20)
@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=6), type_=st.sampled_from(TYPES),
       norm=st.sampled_from(NORMS), data=st.data())
def test_dct_property(shape, type_, norm, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(data.draw(st.integers(0, 2**16))).standard_normal(shape)
    assert_close(ag.dct(dev(x), type_, norm, axis), scipy.fft.dct(x, type_, axis=axis, norm=norm), rtol=1e-11,
                 atol=1e-11)
    assert_close(ag.idct(ag.dct(dev(x), type_, norm, axis), type_, norm, axis), x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("type_", TYPES)
def test_dct_gradcheck(rng, type_, norm):
    x = rng.standard_normal((2, 4))
    check_grads(lambda v: ag.dct(v, type_, norm, axis=0), dev(x))
    check_grads(lambda v: ag.idct(v, type_, norm), dev(x))
    check_grads(lambda v: ag.dct2(v, type_, norm), dev(x))


def test_dct_gradient_is_the_transposed_basis(rng):
    x, g = rng.standard_normal(5), rng.standard_normal(5)
    _, pullback = ag.vjp(lambda v: ag.dct(v, norm="ortho"), dev(x))
    (grad,) = pullback(dev(g))
    assert_close(grad, scipy.fft.dct(np.eye(5), norm="ortho", axis=0).T @ g, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dct_keeps_dtype(rng, dtype):
    x = rng.standard_normal((3, 4)).astype(dtype)
    out = ag.dct(dev(x), norm="ortho")
    assert out.dtype == dtype
    assert ag.dct_matrix(4, dtype=dtype).dtype == dtype


@pytest.mark.parametrize("call, pattern", [
    (lambda: ag.dct(dev(np.ones(4)), type=1), "type"),
    (lambda: ag.idct(dev(np.ones(4)), type=4), "type"),
    (lambda: ag.dct(dev(np.ones(4)), norm="unitary"), "norm"),
    (lambda: ag.dct_matrix(4, 2, "bogus"), "norm"),
    (lambda: ag.dctn(dev(np.ones((2, 2))), type=5), "type"),
])
def test_dct_rejects_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
