"""Edge semantics of the core that once crashed or were silently wrong (issues 13 and 14): 0-d tensors,
empty axes and batches, broadcast indices, per-position repeats, clamp with tensor bounds, axis rules and
the one dtype rule.  References are NumPy and explicit loops; gradients are checked by finite differences.
(tests/torch_tier/test_core_semantics.py checks the same points against PyTorch.)
"""
import numpy as np
import pytest

import autograd as ag

from .helpers import away_from, check_grads, dev, host

# ---------------------------------------------------------------------------------------------
# 0-d tensors


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "logsumexp", "var"])
@pytest.mark.parametrize("axis", [0, -1, (0,), None])
def test_reductions_of_a_0d_tensor_accept_axis_0_and_minus_1(name, axis):
    """torch allows dim 0 / -1 on a 0-d tensor (reducing over nothing); NumPy raises AxisError."""
    out, pullback = ag.vjp(lambda v: getattr(ag, name)(v, axis=axis), dev(np.array(1.5)))
    expected = {"sum": 1.5, "mean": 1.5, "max": 1.5, "min": 1.5, "logsumexp": 1.5, "var": 0.0}[name]
    assert out.shape == () and host(out) == expected
    grad = host(pullback(dev(np.array(2.0)))[0])
    assert grad.shape == () and grad == (0.0 if name == "var" else 2.0)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "softmax", "log_softmax", "flatten"])
def test_a_0d_tensor_rejects_axis_1(name):
    with pytest.raises(ValueError, match=f"{name}: .*1 is out of range for a tensor with 0 dimensions"):
        if name == "flatten":
            ag.flatten(dev(np.array(1.5)), 1)
        else:
            getattr(ag, name)(dev(np.array(1.5)), axis=1)


@pytest.mark.parametrize("name, value, slope", [("softmax", 1.0, 0.0), ("log_softmax", 0.0, 0.0)])
def test_softmax_of_a_0d_tensor_is_a_row_of_one(name, value, slope):
    """One entry normalised: softmax 1, log_softmax 0, both constant (gradient 0).  Used to crash (VJP summed
    over axis 0 of a 0-d array)."""
    for axis in (0, -1):
        out, pullback = ag.vjp(lambda v: getattr(ag, name)(v, axis=axis), dev(np.array(3.0)))
        assert out.shape == () and host(out) == value
        assert host(pullback(dev(np.array(5.0)))[0]) == slope


def test_shape_ops_of_a_0d_tensor():
    x = dev(np.array(1.5))
    assert ag.flatten(x).shape == (1,)
    assert ag.squeeze(x, 0).shape == ag.squeeze(x, -1).shape == ()
    assert ag.transpose(x).shape == ag.transpose(x, (0,)).shape == ag.swapaxes(x, 0, -1).shape == ()
    assert ag.expand_dims(x, 0).shape == ag.expand_dims(x, -1).shape == (1,)
    g = ag.grad(lambda v: ag.sum(ag.flatten(ag.swapaxes(v, 0, -1)) * 3.0))(dev(np.array(1.5)))
    assert host(g) == 3.0


def test_where_with_0d_operands_routes_both_branches():
    """The second branch used to crash: ~cond of a 0-d array is a NumPy scalar, not an array to write into."""
    for cond in (True, False):
        ga, gb = ag.grad(lambda a, b: ag.where(dev(np.array(cond)), a, b), argnums=(0, 1))(dev(np.array(2.0)),
                                                                                           dev(np.array(3.0)))
        assert (host(ga), host(gb)) == ((1.0, 0.0) if cond else (0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# empty axes and batches


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_over_an_empty_axis_is_empty(name):
    x = np.zeros((2, 0, 3))
    out, pullback = ag.vjp(lambda v: getattr(ag, name)(v, axis=1), dev(x))
    assert out.shape == (2, 0, 3) and host(pullback(dev(np.zeros((2, 0, 3))))[0]).shape == (2, 0, 3)


def test_logsumexp_of_nothing_is_minus_inf_and_max_of_nothing_raises():
    out = host(ag.logsumexp(dev(np.zeros((2, 0))), axis=1))
    np.testing.assert_array_equal(out, [-np.inf, -np.inf])  # log(0), as torch
    with pytest.raises(ValueError, match="max/min: cannot reduce over axis 1 of size 0"):
        ag.max(dev(np.zeros((2, 0))), axis=1)


def test_group_norm_and_batch_norm_accept_an_empty_batch(rng):
    x, w, b = np.zeros((0, 4, 3, 3)), rng.standard_normal(4), rng.standard_normal(4)
    for norm in (lambda v, w, b: ag.group_norm(v, 2, w, b),
                 lambda v, w, b: ag.batch_norm(v, dev(np.zeros(4)), dev(np.ones(4)), w, b, training=True)):
        out, pullback = ag.vjp(norm, dev(x), dev(w), dev(b))
        assert out.shape == x.shape
        gx, gw, gb = pullback(dev(np.zeros(x.shape)))
        assert host(gx).shape == x.shape
        np.testing.assert_array_equal(host(gw), np.zeros(4))  # sums over no samples
        np.testing.assert_array_equal(host(gb), np.zeros(4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ag.batch_norm(dev(np.zeros((1, 4, 1, 1))), training=True)


# ---------------------------------------------------------------------------------------------
# indices, repeats, clamp


def _loop_take_along_vjp(shape, index, g, axis):
    """Scatter-add of g at the positions take_along_axis read (index broadcast, the input broadcast too)."""
    out = np.zeros(shape)
    index = np.broadcast_to(index, g.shape)
    for pos in np.ndindex(g.shape):
        source = tuple(index[pos] if k == axis else (p if shape[k] == g.shape[k] else 0) for k, p in enumerate(pos))
        out[source] += g[pos]
    return out


@pytest.mark.parametrize("a_shape, index", [
    ((3, 5), np.array([[4, 0, 0]])),         # indices broadcast over a's rows (used to crash in the VJP)
    ((3, 1), np.array([[0], [0], [0], [0]])[:3]),
    ((1, 4), np.array([[1, 1], [3, 0], [2, 2]])),  # a broadcast over the indices' rows
    ((2, 3, 4), np.array([[[0, 3]], [[1, 1]]])),
])
def test_take_along_axis_with_broadcast_indices(rng, a_shape, index):
    a = rng.standard_normal(a_shape)
    axis = a.ndim - 1
    out = host(ag.take_along_axis(dev(a), dev(index), axis))
    np.testing.assert_array_equal(out, np.take_along_axis(a, index, axis))
    g = rng.standard_normal(out.shape)
    _, pullback = ag.vjp(lambda v: ag.take_along_axis(v, dev(index), axis), dev(a))
    np.testing.assert_allclose(host(pullback(dev(g))[0]), _loop_take_along_vjp(a.shape, index, g, axis), rtol=1e-14)
    check_grads(lambda v: ag.take_along_axis(v, dev(index), axis), dev(a))


@pytest.mark.parametrize("repeats", [[2, 0, 3], np.array([1, 1, 4]), (0, 0, 1), 2, [3]])
def test_repeat_with_per_position_counts(rng, repeats):
    a = rng.standard_normal((2, 3))
    out = host(ag.repeat(dev(a), repeats, 1))
    np.testing.assert_array_equal(out, np.repeat(a, np.asarray(repeats) if np.ndim(repeats) else repeats, axis=1))
    check_grads(lambda v: ag.repeat(v, repeats, 1), dev(a))


@pytest.mark.parametrize("repeats, error, pattern", [
    ([1, 2], ValueError, "repeats has 2 entries for an axis of size 3"),
    ([1, -1, 2], ValueError, "repeats must be non-negative"),
    (-1, ValueError, "repeats must be non-negative"),
    ([1.0, 2.0, 1.0], TypeError, "repeats must be an int or a 1-D sequence of ints"),
    (1.5, TypeError, "repeats must be an int"),
])
def test_repeat_rejects_bad_counts_up_front(repeats, error, pattern):
    with pytest.raises(error, match=pattern):
        ag.repeat(dev(np.ones((2, 3))), repeats, 1)


def test_clamp_with_tensor_bounds_matches_numpy_and_finite_differences(rng):
    """Values as numpy.clip (max wins where min > max); gradients reach the bounds (checked away from ties)."""
    x = rng.uniform(-3, 3, (4, 5))
    lo, hi = rng.uniform(-2, 0, (5,)), rng.uniform(0, 2, (4, 1))
    lo = np.where(np.abs(lo[None] - x).min(axis=0) < 0.05, lo - 0.2, lo)
    np.testing.assert_array_equal(host(ag.clip(dev(x), dev(lo), dev(hi))), np.minimum(np.maximum(x, lo), hi))
    check_grads(ag.clip, dev(x), dev(lo), dev(hi), second_order=False)
    check_grads(lambda v, b: ag.clip(v, min=b), dev(x), dev(lo), second_order=False)
    crossed = host(ag.clip(dev(x), dev(np.full(5, 1.0)), dev(np.full((4, 1), -1.0))))
    np.testing.assert_array_equal(crossed, np.full((4, 5), -1.0))
    with pytest.raises(ValueError, match="clip: give at least one of min and max"):
        ag.clip(dev(x))


def test_clip_scalar_bounds_keep_their_gradient_rule(rng):
    x = away_from(rng, (6,), (-0.5, 0.5))
    check_grads(lambda v: ag.clip(v, -0.5, 0.5), dev(x))


# ---------------------------------------------------------------------------------------------
# axes: out of range and duplicates raise, as NumPy and torch


@pytest.mark.parametrize("call, pattern", [
    (lambda x: ag.sum(x, axis=(0, 0)), "sum: axis .* names the same axis more than once"),
    (lambda x: ag.sum(x, axis=(1, -1)), "sum: axis .* names the same axis more than once"),
    (lambda x: ag.mean(x, axis=(0, 2)), "mean: axis 2 is out of range for a tensor with 2 dimensions"),
    (lambda x: ag.max(x, axis=(1, 1)), "max: axis .* more than once"),
    (lambda x: ag.min(x, axis=-3), "max: axis -3 is out of range"),
    (lambda x: ag.var(x, axis=(0, 0)), "var: axis .* more than once"),
    (lambda x: ag.logsumexp(x, axis=(1, 1)), "logsumexp: axis .* more than once"),
    (lambda x: ag.flip(x, axis=(0, -2)), "flip: axis .* more than once"),
    (lambda x: ag.squeeze(x, 5), "squeeze: axis 5 is out of range"),
    (lambda x: ag.softmax(x, axis=2), "softmax: axis 2 is out of range"),
    (lambda x: ag.log_softmax(x, axis=-3), "log_softmax: axis -3 is out of range"),
    (lambda x: ag.transpose(x, (0, 0)), "transpose: axes must name each of the 2 axes once"),
    (lambda x: ag.transpose(x, (0, 2)), "transpose: axes 2 is out of range"),
    (lambda x: ag.transpose(x, (1,)), "transpose: axes must name each of the 2 axes once"),
    (lambda x: ag.swapaxes(x, 0, 2), "swapaxes: axis2 2 is out of range"),
    (lambda x: ag.concatenate([x, x], axis=2), "concatenate: axis 2 is out of range"),
    (lambda x: ag.stack([x, x], axis=3), "stack: axis 3 is out of range"),
    (lambda x: ag.expand_dims(x, (0, 0)), "expand_dims: axis .* more than once"),
    (lambda x: ag.expand_dims(x, 3), "expand_dims: axis 3 is out of range"),
    (lambda x: ag.flatten(x, 1, 0), "flatten: start_axis 1 comes after end_axis 0"),
    (lambda x: ag.split(x, 2, axis=2), "split: axis 2 is out of range"),
    (lambda x: ag.split(x, 0), "split: the number of sections must be >= 1"),
    (lambda x: ag.repeat(x, 2, axis=-3), "repeat: axis -3 is out of range"),
    (lambda x: ag.dctn(x, axes=(0, 0)), "dctn: axes .* more than once"),
    (lambda x: ag.dct(x, axis=2), "dct: axis 2 is out of range"),
    (lambda x: ag.take_along_axis(x, dev(np.zeros((2, 1), np.int64)), 2), "take_along_axis: axis 2 is out of range"),
])
def test_bad_axes_raise_naming_the_op(call, pattern):
    """Out-of-range axes used to wrap (transpose, concatenate: ``axis % ndim``) and duplicates to merge."""
    with pytest.raises(ValueError, match=pattern):
        call(dev(np.ones((2, 4))))


@pytest.mark.parametrize("axis", [1.0, True, "0", None])
def test_non_integer_axes_are_type_errors(axis):
    with pytest.raises(TypeError, match="sum: axis must be an int"):
        ag.sum(dev(np.ones((2, 3))), axis=(0, axis))


# ---------------------------------------------------------------------------------------------
# dtypes: one rule


F32, F64 = ag.Tensor(dev(np.ones((2, 3), np.float32))), ag.Tensor(dev(np.ones((2, 3))))
MIXED = {
    "add": lambda a, b: ag.add(a, b), "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "maximum": ag.maximum, "minimum": ag.minimum,
    "where": lambda a, b: ag.where(dev(np.ones((2, 3), bool)), a, b),
    "clip": lambda a, b: ag.clip(a, min=b), "concatenate": lambda a, b: ag.concatenate([a, b]),
    "stack": lambda a, b: ag.stack([a, b]), "matmul": lambda a, b: ag.matmul(a, ag.transpose(b)),
    "einsum": lambda a, b: ag.einsum("ij,kj->ik", a, b), "sum_product": lambda a, b: ag.sum_product(a, b),
    "linear": lambda a, b: ag.linear(a, b), "layer_norm": lambda a, b: ag.layer_norm(a, (3,), b[0]),
    "group_norm": lambda a, b: ag.group_norm(a, 1, b[:, 0]),
    "batch_norm": lambda a, b: ag.batch_norm(a, b[0, :3], b[1, :3], training=False),
    "conv2d": lambda a, b: ag.conv2d(ag.reshape(a, (1, 1, 2, 3)), ag.reshape(b, (1, 1, 2, 3))),
    "conv_transpose2d": lambda a, b: ag.conv_transpose2d(ag.reshape(a, (1, 1, 2, 3)), ag.reshape(b, (1, 1, 2, 3))),
}


@pytest.mark.parametrize("name", sorted(MIXED))
@pytest.mark.parametrize("order", ["f32-f64", "f64-f32"])
def test_two_float_dtypes_are_a_type_error_naming_both(name, order):
    """docs/architecture.md, "dtypes": the core never promotes one float dtype to another, in any op."""
    a, b = (F32, F64) if order == "f32-f64" else (F64, F32)
    with pytest.raises(TypeError, match=rf"{name}: .*(float32.*float64|float64.*float32)"):
        MIXED[name](a, b)


def test_integer_and_boolean_operands_take_the_float_dtype(rng):
    """torch's category rule: float32 * int64 is float32 (NumPy would give float64)."""
    x = ag.Tensor(dev(rng.standard_normal(3).astype(np.float32)))
    for other in (np.array([1, 2, 3]), np.array([True, False, True]), np.array([1, 2, 3], np.int8)):
        assert (x * dev(other)).dtype == np.float32
        assert ag.where(dev(other > 0), x, dev(other)).dtype == np.float32
    g = ag.grad(lambda v: ag.sum(v * dev(np.array([1, 2, 3]))))(x.data)
    assert host(g).dtype == np.float32


def test_a_cotangent_of_another_float_dtype_is_a_type_error():
    out, pullback = ag.vjp(lambda v: v * 2.0, dev(np.ones(3, np.float32)))
    with pytest.raises(TypeError, match="cotangent has dtype float64 but the output has dtype float32"):
        pullback(dev(np.ones(3)))


def test_float16_gradients_stay_float16_through_concatenate():
    a, b = np.ones(2, np.float16), np.ones(3, np.float16)
    ga, gb = ag.grad(lambda u, v: ag.sum(ag.concatenate([u, v]) * 2.0), argnums=(0, 1))(dev(a), dev(b))
    assert host(ga).dtype == host(gb).dtype == np.float16
    np.testing.assert_array_equal(host(gb), np.full(3, 2.0, np.float16))
