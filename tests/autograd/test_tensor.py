"""The Tensor: construction, array attributes, operators (both sides), the tape and backward()."""
import numpy as np
import pytest

import autograd as ag
from autograd.tensor import record

from .helpers import assert_close, dev, host, tensor


def test_construction_keeps_dtype_and_wraps_backend_arrays(rng):
    values = rng.standard_normal((2, 3))
    t = tensor(values)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2 and t.dtype == np.float64
    assert ag.Tensor(t) .shape == (2, 3)  # a Tensor argument is unwrapped
    assert ag.Tensor(2.5).shape == () and ag.Tensor(2.5).dtype == np.float64
    assert ag.Tensor([[1, 2], [3, 4]]).dtype.kind == "i"
    assert ag.Tensor(np.float32(1.0)).dtype == np.float32
    assert ag.tensor(dev(values), requires_grad=True).requires_grad
    assert "requires_grad=True" in repr(tensor(values, requires_grad=True)) and "(2, 3)" in repr(t)


@pytest.mark.parametrize("values", [np.arange(3), np.array([True, False])])
def test_only_floating_tensors_can_require_grad(values):
    with pytest.raises(TypeError, match="floating-point"):
        tensor(values, requires_grad=True)


def test_scalar_conversions():
    t = tensor(np.array([[2.5]]))
    assert t.item() == 2.5 and float(tensor(np.array(2.5))) == 2.5 and int(tensor(np.array(3))) == 3
    assert bool(tensor(np.array(1.0))) and not bool(tensor(np.array(0.0)))


def test_numpy_returns_host_copy(rng):
    values = rng.standard_normal(4)
    out = tensor(values).numpy()
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, values)


BINARY = [("+", np.add), ("-", np.subtract), ("*", np.multiply), ("/", np.divide), ("**", np.power)]


@pytest.mark.parametrize("symbol, reference", BINARY, ids=[b[0] for b in BINARY])
def test_operators_with_tensors_arrays_and_scalars_on_either_side(rng, symbol, reference):
    a = rng.uniform(0.5, 2.0, (2, 3))
    b = rng.uniform(0.5, 2.0, (3,))
    ta, tb, db = tensor(a), tensor(b), dev(b)
    for left, right, expected in (
        (ta, tb, reference(a, b)),
        (ta, db, reference(a, b)),
        (db, ta, reference(b, a)),  # backend array on the left: must defer to the Tensor
        (ta, 1.5, reference(a, 1.5)),
        (1.5, ta, reference(1.5, a)),
    ):
        out = eval(f"left {symbol} right", {"left": left, "right": right})
        assert isinstance(out, ag.Tensor)
        assert_close(out, expected, rtol=1e-14, atol=0)


def test_matmul_operator_and_unary_operators(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    assert_close(tensor(a) @ tensor(b), a @ b, rtol=1e-13)
    assert_close(dev(a) @ tensor(b), a @ b, rtol=1e-13)
    assert_close(tensor(a) @ dev(b), a @ b, rtol=1e-13)
    assert_close(-tensor(a), -a, atol=0)
    assert_close(+tensor(a), a, atol=0)
    assert_close(abs(tensor(a)), np.abs(a), atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_scalars_never_upcast(dtype):
    t = tensor(np.ones(3, dtype=dtype))
    for out in (t * 2.0, 2.0 * t, t / 3.0, 1.0 - t, t ** 2, 2 ** t, t + 1):
        assert out.dtype == dtype


def test_comparisons_give_boolean_tensors_without_grad(rng):
    a = rng.standard_normal(5)
    t = tensor(a, requires_grad=True)
    for out, expected in ((t < 0.1, a < 0.1), (t <= 0.1, a <= 0.1), (t > 0.1, a > 0.1), (t >= 0.1, a >= 0.1),
                          (t.eq(t), np.ones(5, bool)), (t > tensor(a[::-1]), a > a[::-1])):
        assert isinstance(out, ag.Tensor) and out.dtype == bool and not out.requires_grad
        np.testing.assert_array_equal(host(out), expected)


def test_methods(rng):
    a = rng.uniform(0.5, 2.0, (2, 3, 4))
    t = tensor(a)
    assert_close(t.T, a.T, atol=0)
    assert_close(t.reshape(6, 4), a.reshape(6, 4), atol=0)
    assert_close(t.reshape((4, 6)), a.reshape(4, 6), atol=0)
    assert_close(t.transpose(1, 0, 2), a.transpose(1, 0, 2), atol=0)
    assert_close(t.transpose((2, 1, 0)), a.transpose(2, 1, 0), atol=0)
    assert_close(t.transpose(), a.transpose(), atol=0)
    assert_close(t.sum(), a.sum(), rtol=1e-14)
    assert_close(t.sum(axis=1, keepdims=True), a.sum(axis=1, keepdims=True), rtol=1e-14)
    assert_close(t.mean(axis=(0, 2)), a.mean(axis=(0, 2)), rtol=1e-14)
    assert_close(t.max(axis=2), a.max(axis=2), atol=0)
    assert_close(t.min(), a.min(), atol=0)
    for name in ("exp", "log", "sqrt", "tanh"):
        assert_close(getattr(t, name)(), getattr(np, name)(a), rtol=1e-14)
    assert_close(t.sigmoid(), 1 / (1 + np.exp(-a)), rtol=1e-14)
    assert_close(t.relu(), a, atol=0)
    assert t.astype(np.float32).dtype == np.float32
    assert_close(t[1, :, 2], a[1, :, 2], atol=0)


def test_backward_accumulates_into_leaves(rng):
    a = rng.standard_normal(4)
    x = tensor(a, requires_grad=True)
    (x * x).sum().backward()
    assert_close(x.grad, 2 * a, rtol=1e-15)
    (3.0 * x).sum().backward()
    assert_close(x.grad, 2 * a + 3.0, rtol=1e-15)


def test_backward_through_diamond_and_reuse(rng):
    a = rng.uniform(0.5, 1.5, 3)
    x = tensor(a, requires_grad=True)
    y = x * x
    z = (y + x) * y  # x^4 + x^3
    z.sum().backward()
    assert_close(x.grad, 4 * a**3 + 3 * a**2, rtol=1e-14)


def test_backward_of_broadcast_operands_sums_back(rng):
    a, b = rng.standard_normal((3, 1)), rng.standard_normal((4,))
    x, y = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    (x * y).backward(dev(np.ones((3, 4))))
    assert x.grad.shape == (3, 1) and y.grad.shape == (4,)
    assert_close(x.grad, np.full((3, 1), b.sum()), rtol=1e-14)
    assert_close(y.grad, np.full(4, a.sum()), rtol=1e-14)


def test_backward_needs_cotangent_for_non_scalar_and_checks_its_shape(rng):
    x = tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(ValueError, match="cotangent"):
        y.backward()
    with pytest.raises(ValueError, match=r"cotangent has shape \(3, 2\)"):
        y.backward(dev(np.ones((3, 2))))
    y.backward(dev(np.ones((2, 3))))
    assert_close(x.grad, np.full((2, 3), 2.0), atol=0)


def test_backward_create_graph_gives_differentiable_gradients(rng):
    a = rng.uniform(0.5, 1.5, 3)
    x = tensor(a, requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    first = x.grad
    assert isinstance(first, ag.Tensor) and first.requires_grad
    x.grad = None
    first.sum().backward()
    assert_close(x.grad, 6 * a, rtol=1e-14)


def test_long_chains_do_not_recurse(rng):
    x = tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0001
    y.sum().backward()
    assert_close(x.grad, [1.0001**3000], rtol=1e-10)


def test_detach_and_no_grad_cut_the_tape(rng):
    a = rng.standard_normal(3)
    x = tensor(a, requires_grad=True)
    assert not x.detach().requires_grad and x.is_leaf
    y = (x.detach() * x).sum()
    y.backward()
    assert_close(x.grad, a, rtol=1e-15)
    with ag.no_grad():
        assert not ag.is_grad_enabled()
        z = x * x
        with ag.enable_grad():
            assert ag.is_grad_enabled()
            assert (x * x).requires_grad
    assert ag.is_grad_enabled()
    assert not z.requires_grad and z.is_leaf


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with ag.no_grad():
            raise RuntimeError("boom")
    assert ag.is_grad_enabled()


def test_record_drops_constants_and_respects_no_grad(rng):
    x = tensor(rng.standard_normal(2), requires_grad=True)
    c = tensor(rng.standard_normal(2))
    out = record(x.data + c.data, ((x, lambda g: g), (c, lambda g: g)))
    assert out.requires_grad and len(out._node.parents) == 1 and out._node.parents[0][0] is x._node
    assert not record(c.data, ((c, lambda g: g),)).requires_grad
    with ag.no_grad():
        assert not record(x.data, ((x, lambda g: g),)).requires_grad


def test_backward_of_constant_output_leaves_grads_empty(rng):
    x = tensor(rng.standard_normal(2), requires_grad=True)
    constant = tensor(np.array(1.0))
    constant.backward()
    assert x.grad is None


def test_unused_input_gets_no_grad_and_grad_of_unused_branch_is_skipped(rng):
    x = tensor(rng.standard_normal(2), requires_grad=True)
    w = tensor(rng.standard_normal(2), requires_grad=True)
    _unused = w * 3.0
    (x * 2.0).sum().backward()
    assert w.grad is None
    assert_close(x.grad, [2.0, 2.0], atol=0)


def test_python_float_scalar_with_integer_tensor_is_not_truncated():
    t = ag.Tensor([1, 2, 3])
    out = t * 0.5
    assert out.dtype.kind == "f"
    assert_close(out, [0.5, 1.0, 1.5], atol=0)
    assert (t * 2).dtype == t.dtype and (t + 1).dtype == t.dtype
    assert_close(ag.Tensor([True, False]) + 1, [2, 1], atol=0)


# The tape links nodes, not tensors: an intermediate that no backward rule reads is freed as soon as
# the caller drops it, as PyTorch frees what it does not save.  Each case builds h from a leaf and an
# op on h whose VJP (w.r.t. h) reads shapes or other operands only, so h must not outlive the forward.
_READ_NOTHING_OF_H = {
    "add": lambda h, c: h + c,
    "sub": lambda h, c: c - h,
    "mul by a constant": lambda h, c: h * c,
    "div by a constant": lambda h, c: h / c,
    "sum": lambda h, c: ag.sum(h, axis=1),
    "mean": lambda h, c: ag.mean(h, axis=(0, 1)),
    "reshape": lambda h, c: ag.reshape(h, (-1,)),
    "broadcast_to": lambda h, c: ag.broadcast_to(h, (2,) + h.shape),
    "getitem": lambda h, c: h[1:, ::2],
    "matmul": lambda h, c: h @ ag.transpose(c),
    "einsum": lambda h, c: ag.einsum("ij,kj->ik", h, c),
    "exp (reads its output)": lambda h, c: ag.exp(h),
    "relu (reads a mask)": lambda h, c: ag.relu(h),
    "concatenate": lambda h, c: ag.concatenate([h, c], axis=0),
    "global_avg_pool2d": lambda h, c: ag.global_avg_pool2d(ag.reshape(h, (1, 3, 2, 2))),
}


@pytest.mark.parametrize("case", sorted(_READ_NOTHING_OF_H))
def test_the_tape_frees_intermediates_no_backward_rule_reads(rng, case):
    import gc
    import weakref

    x = tensor(rng.standard_normal((3, 4)), requires_grad=True)
    c = tensor(rng.standard_normal((3, 4)) + 3.0)
    h = x * 2.0
    alive = weakref.ref(h)
    out = ag.sum(_READ_NOTHING_OF_H[case](h, c))
    del h
    gc.collect()
    assert alive() is None, f"{case}: the tape kept an intermediate its backward rule never reads"
    expected = ag.grad(lambda v: ag.sum(_READ_NOTHING_OF_H[case](v * 2.0, c)))(x)
    out.backward()
    np.testing.assert_array_equal(host(x.grad), host(expected))


def test_the_tape_keeps_what_a_backward_rule_reads(rng):
    import gc
    import weakref

    x = tensor(rng.standard_normal((3, 4)) ** 2 + 1.0, requires_grad=True)
    h = x * 2.0
    alive = weakref.ref(h)
    out = ag.sum(ag.log(h))  # d log(h) = g / h reads h
    del h
    gc.collect()
    assert alive() is not None
    out.backward()
    assert_close(x.grad, 1.0 / host(x.data), rtol=1e-12, atol=0)


# Gradients of a tensor used several times are summed in place when no one else can see the first
# one's array (autograd.tensor._accumulate); every other case must take a new array.
def _accumulate():
    import sys

    return sys.modules["autograd.tensor"]._accumulate


@pytest.mark.skipif(ag.backend.name == "strict", reason="the strict wrapper is always summed out of place")
def test_accumulate_adds_in_place_only_into_an_array_nothing_else_holds(rng):
    accumulate = _accumulate()
    values, more = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    fresh = ag.Tensor(dev(values) * 1.0)
    assert accumulate(fresh, tensor(more)) is fresh  # owned by this tensor alone: in place
    assert_close(fresh.data, values + more, rtol=0, atol=0)
    view_of_fresh = ag.Tensor(ag.xp.reshape(dev(values) * 1.0, (4, 3)))
    assert accumulate(view_of_fresh, tensor(more.reshape(4, 3))) is view_of_fresh  # its base is its own

    held = dev(values) * 1.0
    view_of_held = ag.Tensor(ag.xp.reshape(held, (4, 3)))
    broadcast = ag.Tensor(ag.xp.broadcast_to(dev(values[:1] * 1.0), (3, 4)))
    strided_slice = ag.Tensor((dev(values) * 1.0)[:, ::2])
    for shared, name in ((ag.Tensor(held), "array held by the caller"), (view_of_held, "view of a held array"),
                         (broadcast, "broadcast view"), (strided_slice, "strided slice")):
        before = host(shared.data).copy()
        other = tensor(np.ones(shared.shape))
        out = accumulate(shared, other)
        assert out is not shared, name
        np.testing.assert_array_equal(host(shared.data), before, err_msg=name)
        assert_close(out.data, before + 1.0, rtol=0, atol=0)
    np.testing.assert_array_equal(host(held), values)


@pytest.mark.parametrize("fn", [lambda x: x + x + x, lambda x: ag.exp(x) * x + x * 2.0 + ag.sum(x, axis=0),
                                lambda x: ag.reshape(x, (4, 3)) @ x + ag.transpose(x) @ x])
def test_gradients_of_tensors_used_several_times_leave_the_cotangent_alone(rng, fn):
    x_values = rng.standard_normal((3, 4))
    out_shape = fn(tensor(x_values)).shape
    cotangent = dev(rng.standard_normal(out_shape))
    kept = host(cotangent).copy()
    _, pullback = ag.vjp(fn, tensor(x_values))
    (first,) = pullback(cotangent)
    (second,) = pullback(cotangent)  # the tape and the cotangent are unchanged by the first call
    np.testing.assert_array_equal(host(cotangent), kept)
    np.testing.assert_array_equal(host(first), host(second))
    x = tensor(x_values, requires_grad=True)
    fn(x).backward(cotangent)
    np.testing.assert_array_equal(host(x.grad), host(first))
    assert ag.gradcheck(lambda v: ag.sum(fn(v) * tensor(kept)), tensor(x_values))


def test_requires_grad_can_be_switched_on_a_leaf_only(rng):
    x = tensor(rng.standard_normal(3))
    x.requires_grad = True
    y = ag.sum(x * x)
    y.backward()
    assert_close(x.grad, 2 * host(x.data))
    x.requires_grad = False
    assert not x.requires_grad and not ag.sum(x * x).requires_grad
    with pytest.raises(ValueError, match="leaf"):
        y.requires_grad = False
    with pytest.raises(TypeError, match="floating-point"):
        tensor(np.arange(3)).requires_grad = True
