"""Shape and indexing operations: values against NumPy, adjoints, gradcheck, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, basic_indices

import autograd as ag

from .helpers import assert_close, check_grads, dev, host, tensor

X = np.arange(24.0).reshape(2, 3, 4) / 7.0 - 1.0

# name -> (autograd op on x, NumPy reference on x)
CASES = {
    "reshape": (lambda x: ag.reshape(x, (4, 6)), lambda x: x.reshape(4, 6)),
    "reshape_minus_one": (lambda x: ag.reshape(x, (-1, 3)), lambda x: x.reshape(-1, 3)),
    "reshape_int": (lambda x: ag.reshape(x, 24), lambda x: x.reshape(24)),
    "transpose_default": (ag.transpose, np.transpose),
    "permute": (lambda x: ag.permute(x, (1, 2, 0)), lambda x: x.transpose(1, 2, 0)),
    "permute_negative": (lambda x: ag.permute(x, (-1, 0, -2)), lambda x: x.transpose(2, 0, 1)),
    "swapaxes": (lambda x: ag.swapaxes(x, 0, 2), lambda x: x.swapaxes(0, 2)),
    "broadcast_to": (lambda x: ag.broadcast_to(x[:, :1], (3, 2, 3, 4)),
                     lambda x: np.broadcast_to(x[:, :1], (3, 2, 3, 4))),
    "expand_dims": (lambda x: ag.expand_dims(x, 1), lambda x: x[:, None]),
    "unsqueeze_last": (lambda x: ag.unsqueeze(x, -1), lambda x: x[..., None]),
    "squeeze_all": (lambda x: ag.squeeze(x[:, :1, None]), lambda x: np.squeeze(x[:, :1, None])),
    "squeeze_axis": (lambda x: ag.squeeze(x[:1, :1], axis=1), lambda x: x[:1, :1].squeeze(1)),
    "flatten": (ag.flatten, lambda x: x.reshape(-1)),
    "flatten_range": (lambda x: ag.flatten(x, 1), lambda x: x.reshape(2, 12)),
    "flatten_middle": (lambda x: ag.flatten(x, 0, 1), lambda x: x.reshape(6, 4)),
    "concatenate": (lambda x: ag.concatenate([x, x[:, :1] * 2.0], axis=1),
                    lambda x: np.concatenate([x, x[:, :1] * 2.0], axis=1)),
    "cat_negative_axis": (lambda x: ag.cat([x, -x], axis=-1), lambda x: np.concatenate([x, -x], axis=-1)),
    "stack": (lambda x: ag.stack([x, 2.0 * x, x * x], axis=1), lambda x: np.stack([x, 2 * x, x * x], axis=1)),
    "stack_last": (lambda x: ag.stack([x, -x], axis=-1), lambda x: np.stack([x, -x], axis=-1)),
    "split_sections": (lambda x: ag.split(x, 2, axis=2)[1], lambda x: np.split(x, 2, axis=2)[1]),
    "split_points": (lambda x: ag.split(x, [1, 3], axis=-1)[1], lambda x: np.split(x, [1, 3], axis=-1)[1]),
    "pad": (lambda x: ag.pad(x, ((0, 0), (1, 2), (0, 1))), lambda x: np.pad(x, ((0, 0), (1, 2), (0, 1)))),
    "pad_value": (lambda x: ag.pad(x, ((1, 0), (0, 0), (2, 2)), value=-3.5),
                  lambda x: np.pad(x, ((1, 0), (0, 0), (2, 2)), constant_values=-3.5)),
    "flip_all": (ag.flip, lambda x: x[::-1, ::-1, ::-1]),
    "flip_axes": (lambda x: ag.flip(x, (0, 2)), lambda x: x[::-1, :, ::-1]),
    "repeat": (lambda x: ag.repeat(x, 3, axis=1), lambda x: np.repeat(x, 3, axis=1)),
    "repeat_negative_axis": (lambda x: ag.repeat(x, 2, axis=-1), lambda x: np.repeat(x, 2, axis=-1)),
    "tile": (lambda x: ag.tile(x, (2, 1, 3)), lambda x: np.tile(x, (2, 1, 3))),
    "tile_short_reps": (lambda x: ag.tile(x, 2), lambda x: np.tile(x, 2)),
    "tile_more_reps": (lambda x: ag.tile(x[0], (2, 1, 2)), lambda x: np.tile(x[0], (2, 1, 2))),
    "getitem_basic": (lambda x: x[1, ::2, 1:3], lambda x: x[1, ::2, 1:3]),
    "getitem_ellipsis_none": (lambda x: x[..., None, -1], lambda x: x[..., None, -1]),
    "getitem_negative_step": (lambda x: x[:, ::-2], lambda x: x[:, ::-2]),
    "getitem_int_array_with_repeats": (lambda x: x[:, dev(np.array([2, 0, 2, 2]))],
                                       lambda x: x[:, np.array([2, 0, 2, 2])]),
    "getitem_two_int_arrays": (lambda x: x[dev(np.array([0, 1, 1])), :, dev(np.array([3, 3, 0]))],
                               lambda x: x[np.array([0, 1, 1]), :, np.array([3, 3, 0])]),
    "getitem_bool_mask": (lambda x: x[dev(X > 0)], lambda x: x[X > 0]),
    "getitem_tensor_index": (lambda x: ag.getitem(x, (0, tensor(np.array([1, 1, 0])))),
                             lambda x: x[0, np.array([1, 1, 0])]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_numpy(name):
    op, reference = CASES[name]
    assert_close(op(tensor(X)), reference(X.copy()), atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck(name, rng):
    op, _ = CASES[name]
    check_grads(op, dev(X[:, :3, :4] + 0.01 * rng.standard_normal((2, 3, 4))))


@pytest.mark.parametrize("name", sorted(set(CASES) - {"pad_value", "stack"}))  # linear maps only
def test_vjp_is_the_adjoint(name, rng):
    """<J v, u> == <v, J^T u> for the linear shape maps -- checked with the NumPy reference as J."""
    op, reference = CASES[name]
    v = rng.standard_normal(X.shape)
    out, pullback = ag.vjp(op, dev(v))
    u = rng.standard_normal(out.shape)
    (jt_u,) = pullback(dev(u))
    np.testing.assert_allclose(np.sum(reference(v) * u), np.sum(host(jt_u) * v), rtol=1e-12)


def test_take_along_axis(rng):
    x = rng.standard_normal((2, 3, 4))
    index = np.array([[[0, 2, 2, 1]], [[1, 1, 0, 0]]])
    out = ag.take_along_axis(dev(x), dev(index), axis=1)
    assert_close(out, np.take_along_axis(x, index, axis=1), atol=0)
    t = tensor(x, requires_grad=True)
    ag.take_along_axis(t, dev(index), axis=-2).sum().backward()
    expected = np.zeros_like(x)
    for b in range(2):
        for k in range(4):
            expected[b, index[b, 0, k], k] += 1.0  # repeated indices accumulate
    assert_close(t.grad, expected, atol=0)
    check_grads(lambda v: ag.take_along_axis(v, dev(index), axis=1), dev(x))


def test_getitem_scatter_adds_repeated_indices():
    t = tensor(np.arange(5.0), requires_grad=True)
    index = dev(np.array([1, 1, 4, 1]))
    (t[index] * tensor(np.array([1.0, 2.0, 3.0, 4.0]))).sum().backward()
    assert_close(t.grad, [0.0, 7.0, 0.0, 0.0, 3.0], atol=0)


def test_index_add_is_the_adjoint_of_getitem(rng):
    values = rng.standard_normal((3, 2))
    index = (dev(np.array([0, 2, 0])), slice(None))
    out = ag.index_add((4, 2), index, dev(values))
    expected = np.zeros((4, 2))
    np.add.at(expected, (np.array([0, 2, 0]), slice(None)), values)
    assert_close(out, expected, atol=0)
    assert_close(ag.index_add((3, 4), (slice(1, 3), 2), dev(values[:2, 0])),
                 np.pad(values[:2, :1], ((1, 0), (2, 1))), atol=0)
    check_grads(lambda v: ag.index_add((4, 2), index, v), dev(values))


@settings(max_examples=20)
@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data())
def test_basic_indexing_matches_numpy(shape, data):
    index = data.draw(basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = np.arange(float(np.prod(shape))).reshape(shape)
    t = tensor(x, requires_grad=True)
    out = t[index]
    expected = x[index]
    assert_close(out, expected, atol=0)
    if out.size:
        out.backward(dev(np.ones(out.shape)))
        grad = np.zeros_like(x)
        grad[index] += 1.0
        assert_close(t.grad, grad, atol=0)


@settings(max_examples=15)
@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=3), data=st.data())
def test_transpose_concatenate_pad_roundtrips(shape, data):
    x = np.arange(float(np.prod(shape))).reshape(shape)
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    assert_close(ag.transpose(dev(x), axes), x.transpose(axes), atol=0)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    assert_close(ag.concatenate([dev(x), dev(-x), dev(x)], axis=axis), np.concatenate([x, -x, x], axis=axis), atol=0)
    widths = tuple(tuple(data.draw(st.integers(0, 2)) for _ in range(2)) for _ in shape)
    assert_close(ag.pad(dev(x), widths, value=1.5), np.pad(x, widths, constant_values=1.5), atol=0)


def test_sum_to_is_the_adjoint_of_broadcasting(rng):
    g = rng.standard_normal((2, 3, 4))
    assert_close(ag.sum_to(dev(g), (3, 1)), g.sum(axis=(0, 2), keepdims=False)[:, None], rtol=1e-14)
    assert_close(ag.sum_to(dev(g), (2, 3, 4)), g, atol=0)
    assert_close(ag.sum_to(dev(g), ()), g.sum(), rtol=1e-14)


def test_split_returns_all_pieces_and_their_gradients_combine(rng):
    x = rng.standard_normal((6, 2))
    t = tensor(x, requires_grad=True)
    pieces = ag.split(t, [1, 4])
    assert [p.shape for p in pieces] == [(1, 2), (3, 2), (2, 2)]
    (pieces[0].sum() * 1.0 + pieces[1].sum() * 2.0 + pieces[2].sum() * 3.0).backward()
    assert_close(t.grad, np.repeat([[1.0], [2.0], [2.0], [2.0], [3.0], [3.0]], 2, axis=1), atol=0)


def test_shape_errors_are_clear():
    x = dev(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot squeeze axis 1 of size 3"):
        ag.squeeze(x, axis=1)
    with pytest.raises(ValueError, match="cannot be split into 2"):
        ag.split(x, 2, axis=1)
    with pytest.raises(ValueError, match="at least one"):
        ag.concatenate([])
    with pytest.raises(ValueError, match="pad_width has 1 entries"):
        ag.pad(x, ((1, 1),))
    with pytest.raises(ValueError, match="negative size"):  # negative widths crop (as torch), up to the size
        ag.pad(x, ((1, 1), (-2, -2)))


@pytest.mark.parametrize("shape, error, pattern", [
    ((4, 2), ValueError, r"cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into \(4, 2\)"),
    ((5, -1, -1), ValueError, "may hold one -1"),
    ((-2, -3), ValueError, "may hold one -1 and otherwise sizes >= 0"),
    ((4, -1), ValueError, r"into \(4, -1\)"),
    ((0, -1), ValueError, "the -1 could be any size"),
    ((2, True), TypeError, "shape must be an int or a sequence of ints"),
    ((2.0, 3), TypeError, "shape must be an int or a sequence of ints"),
])
def test_reshape_checks_the_target_shape(shape, error, pattern):
    """A wrong target is an error naming reshape and both shapes (it used to come from inside NumPy)."""
    with pytest.raises(error, match=pattern):
        ag.reshape(dev(np.ones((2, 3))), shape)


def test_reshape_infers_one_axis_and_keeps_empty_tensors(rng):
    x = rng.standard_normal((2, 3, 4))
    assert_close(ag.reshape(dev(x), (-1, 4)), x.reshape(-1, 4), atol=0)
    assert_close(ag.reshape(dev(x), np.array([4, 6])), x.reshape(4, 6), atol=0)
    assert ag.reshape(dev(np.zeros((0, 5))), (5, 0, 1)).shape == (5, 0, 1)
    assert ag.reshape(dev(np.zeros((0, 5))), (-1, 5)).shape == (0, 5)


def test_cat_skips_an_empty_1d_tensor_among_nd_ones(rng):
    """torch's legacy rule: a (0,) tensor among tensors of more axes is skipped, with an empty gradient."""
    x = rng.standard_normal((2, 3))
    out, pullback = ag.vjp(lambda e, a: ag.concatenate([e, a, e], axis=1), dev(np.zeros(0)), dev(x))
    assert_close(out, x, atol=0)
    grad_e, grad_x = pullback(dev(np.ones((2, 3))))
    assert grad_e.shape == (0,)
    assert_close(grad_x, np.ones((2, 3)), atol=0)
    assert ag.concatenate([dev(np.zeros(0)), dev(np.zeros(0))]).shape == (0,)  # all 1-D: an ordinary cat
    with pytest.raises(ValueError, match="concatenate: tensors"):
        ag.concatenate([dev(np.zeros(1)), dev(x)])  # only an *empty* 1-D tensor is skipped
