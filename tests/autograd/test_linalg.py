"""Linear algebra: matmul (batched, broadcast, 1-D operands), einsum, outer."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag

from .helpers import assert_close, check_grads, dev, tensor


def _loop_matmul(a, b):
    """Matrix product of two 2-D arrays by the definition."""
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


def test_matmul_2d_against_loops(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    assert_close(ag.matmul(dev(a), dev(b)), _loop_matmul(a, b), rtol=1e-13)


MATMUL_SHAPES = [
    ((3, 4), (4, 2)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (4, 5)),  # broadcast the matrix over the batch
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (1, 3, 4, 2)),  # batch dims broadcast against each other
    ((4,), (4, 3)),  # 1-D operands as in numpy.matmul
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((4,), (4,)),
]


@pytest.mark.parametrize("shape_a, shape_b", MATMUL_SHAPES)
def test_matmul_values_gradients_and_shapes(rng, shape_a, shape_b):
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    expected = np.matmul(a, b)
    out = ag.matmul(dev(a), dev(b))
    assert_close(out, expected, rtol=1e-13, atol=1e-14)
    check_grads(ag.matmul, dev(a), dev(b))


@settings(max_examples=15)
@given(batch=st.lists(st.integers(1, 2), max_size=2), n=st.integers(1, 3), k=st.integers(1, 3), m=st.integers(1, 3),
       broadcast_left=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_batched_broadcast_property(batch, n, k, m, broadcast_left, seed):
    rng = np.random.default_rng(seed)
    shape_a = (tuple(batch) if not broadcast_left else tuple(1 for _ in batch)) + (n, k)
    shape_b = tuple(batch) + (k, m)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = ag.matmul(ta, tb)
    assert_close(out, np.matmul(a, b), rtol=1e-13, atol=1e-14)
    g = rng.standard_normal(out.shape)
    out.backward(dev(g))
    grad_a = np.matmul(g, np.swapaxes(b, -1, -2))
    grad_a = grad_a.sum(axis=tuple(range(grad_a.ndim - len(shape_a)))) if grad_a.ndim > len(shape_a) else grad_a
    grad_a = grad_a.sum(axis=tuple(i for i, s in enumerate(shape_a[:-2]) if s == 1), keepdims=True)
    assert_close(ta.grad, grad_a.reshape(shape_a), rtol=1e-12, atol=1e-13)
    assert_close(tb.grad, np.matmul(np.swapaxes(np.broadcast_to(a, out.shape[:-2] + (n, k)), -1, -2), g),
                 rtol=1e-12, atol=1e-13)


EINSUM = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]),
    ("ij->ji", [(2, 3)]),
    ("ij->", [(2, 3)]),
    ("ij->j", [(2, 3)]),
    ("i,j->ij", [(3,), (2,)]),
    ("ijk,k->ij", [(2, 3, 4), (4,)]),
    ("ij,ij->i", [(2, 3), (2, 3)]),
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)]),
    ("ij,kl->ik", [(2, 3), (2, 2)]),  # j and l summed away by one operand alone
    ("bchw,bkhw->bck", [(1, 2, 2, 3), (1, 3, 2, 3)]),
    ("ij,jk", [(2, 3), (3, 4)]),  # implicit output: indices used once, alphabetically
    ("ba,ca", [(2, 3), (4, 3)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (3, 3, 2)]),  # broadcast leading axes (1 against 3)
    ("...ik,...j->ij", [(2, 2, 3), (3,)], "zik,j->ij"),  # ellipsis left out of the output: summed (torch)
    ("i...->...", [(3, 3)]),
    ("...,...", [(2, 3), (3,)]),
    ("ii->i", [(3, 3)]),  # a repeated index takes the diagonal
    ("iji->j", [(2, 3, 2)]),
    ("ii", [(3, 3)]),  # the trace
    ("bii,bj->bij", [(2, 3, 3), (2, 2)]),
]


@pytest.mark.parametrize("spec, shapes, numpy_spec", [(e[0], e[1], e[-1] if len(e) > 2 else e[0]) for e in EINSUM],
                         ids=[e[0] for e in EINSUM])
def test_einsum_values_and_gradients(rng, spec, shapes, numpy_spec):
    operands = [rng.standard_normal(s) for s in shapes]
    expected = np.einsum(numpy_spec, *operands)  # NumPy cannot sum an ellipsis away: spelled out there
    assert_close(ag.einsum(spec, *[dev(o) for o in operands]), expected, rtol=1e-13, atol=1e-14)
    check_grads(lambda *ops: ag.einsum(spec, *ops), *[dev(o) for o in operands])


@pytest.mark.parametrize("first, second", [((0, 3), (1, 3)), ((1, 3), (0, 3))])
def test_einsum_empty_axis_meets_size_one(rng, first, second):
    """An index of size 0 in one operand and 1 in another broadcasts to 0 (as torch.einsum), in either order:
    an empty batch (N = 0) against a (1, ...) operand gives an empty result, never a size-1 one."""
    a, b = rng.standard_normal(first), rng.standard_normal(second)
    out, pullback = ag.vjp(lambda u, v: ag.einsum("nc,nc->nc", u, v), dev(a), dev(b))
    assert out.shape == (0, 3)
    grads = pullback(dev(np.zeros((0, 3))))
    assert [g.shape for g in grads] == [first, second]
    for grad in grads:  # the size-1 operand's gradient is a sum over no samples
        np.testing.assert_array_equal(ag.to_numpy(grad), np.zeros(grad.shape))


def test_einsum_against_loops(rng):
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 3))
    expected = np.stack([_loop_matmul(a[i], b[i]) for i in range(2)])
    assert_close(ag.einsum("bij,bjk->bik", dev(a), dev(b)), expected, rtol=1e-13)


def test_outer(rng):
    a, b = rng.standard_normal(3), rng.standard_normal(4)
    assert_close(ag.outer(dev(a), dev(b)), np.outer(a, b), rtol=1e-15)
    check_grads(ag.outer, dev(a), dev(b))


def test_linalg_errors_are_clear():
    x = dev(np.ones((2, 2)))
    with pytest.raises(ValueError, match="scalars"):
        ag.matmul(x, 2.0)
    with pytest.raises(ValueError, match="index 'j' has sizes 2 and 3"):
        ag.einsum("ij,jk->ik", x, dev(np.ones((3, 2))))
    with pytest.raises(ValueError, match="malformed ellipsis"):
        ag.einsum("..j,jk->k", x, x)
    with pytest.raises(ValueError, match="repeated index 'i' has different sizes"):
        ag.einsum("ii->i", dev(np.ones((2, 3))))
    with pytest.raises(ValueError, match="repeats an index or names one no operand has"):
        ag.einsum("ij->iz", x)
    with pytest.raises(ValueError, match="indices must be ASCII letters"):
        ag.einsum("i1->i", x)
    with pytest.raises(ValueError, match="got 1 operands for 2"):
        ag.einsum("ij,jk->ik", x)
    with pytest.raises(ValueError, match="subscript 'ijk' does not match an operand with 2 axes"):
        ag.einsum("ijk->i", x)
    with pytest.raises(ValueError, match="more indices than the operand"):
        ag.einsum("ijk...->i", x)
