"""Elementwise operations: values against NumPy/SciPy formulas, broadcasting, gradients (1st and 2nd order)."""
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import autograd as ag

from .helpers import assert_close, away_from, check_grads, dev, distinct, host, tensor


def _softplus_reference(x, beta=1.0, threshold=20.0):
    """torch.nn.functional.softplus: log(1 + exp(beta x)) / beta, and x itself where beta x > threshold."""
    return np.where(beta * x > threshold, x, np.log1p(np.exp(np.minimum(beta * x, threshold))) / beta)


def _uniform(low, high):
    return lambda rng, shape: rng.uniform(low, high, shape)


def _kinks(*points, margin=0.1):
    return lambda rng, shape: away_from(rng, shape, points, margin)


# name -> (autograd op, host reference, derivative reference, input sampler away from kinks)
UNARY = {
    "neg": (ag.neg, np.negative, lambda x: -np.ones_like(x), _uniform(-2, 2)),
    "exp": (ag.exp, np.exp, np.exp, _uniform(-2, 2)),
    "log": (ag.log, np.log, lambda x: 1 / x, _uniform(0.3, 3)),
    "sqrt": (ag.sqrt, np.sqrt, lambda x: 0.5 / np.sqrt(x), _uniform(0.3, 3)),
    "abs": (ag.abs, np.abs, np.sign, _kinks(0.0)),
    "tanh": (ag.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2, _uniform(-2, 2)),
    "sigmoid": (ag.sigmoid, scipy.special.expit,
                lambda x: scipy.special.expit(x) * (1 - scipy.special.expit(x)), _uniform(-4, 4)),
    "relu": (ag.relu, lambda x: np.where(x > 0, x, 0.0), lambda x: (x > 0).astype(float), _kinks(0.0)),
    "leaky_relu": (lambda x: ag.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
                   lambda x: np.where(x > 0, 1.0, 0.1), _kinks(0.0)),
    "softplus": (ag.softplus, _softplus_reference, scipy.special.expit, _uniform(-3, 3)),
    "softplus_beta2_threshold1": (lambda x: ag.softplus(x, beta=2.0, threshold=1.0),
                                  lambda x: _softplus_reference(x, 2.0, 1.0),
                                  lambda x: np.where(2 * x > 1, 1.0, scipy.special.expit(2 * x)), _kinks(0.5)),
    "square_via_pow": (lambda x: ag.pow(x, 2.0), np.square, lambda x: 2 * x, _uniform(-2, 2)),
    "pow_fractional": (lambda x: x ** 1.5, lambda x: x**1.5, lambda x: 1.5 * np.sqrt(x), _uniform(0.3, 2)),
    "clip": (lambda x: ag.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7),
             lambda x: ((x >= -0.5) & (x <= 0.7)).astype(float), _kinks(-0.5, 0.7)),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_values_and_derivatives(rng, name):
    op, reference, derivative, sample = UNARY[name]
    x = sample(rng, (3, 4))
    t = tensor(x, requires_grad=True)
    out = op(t)
    assert isinstance(out, ag.Tensor) and out.dtype == np.float64
    assert_close(out, reference(x), rtol=1e-13, atol=1e-15)
    out.sum().backward()
    assert_close(t.grad, derivative(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_gradcheck_first_and_second_order(rng, name):
    op, _, _, sample = UNARY[name]
    check_grads(op, dev(sample(rng, (2, 3))))


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_float32_stays_float32(rng, name):
    op, reference, _, sample = UNARY[name]
    x = sample(rng, (5,)).astype(np.float32)
    out = op(dev(x))
    assert out.dtype == np.float32
    assert_close(out, reference(x.astype(np.float64)), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_on_a_zero_dimensional_input(rng, name):
    """A 0-d input (where NumPy ufuncs return scalars, not arrays) gives the value and gradient of the 1-d case."""
    op, reference, derivative, sample = UNARY[name]
    x = sample(rng, (1,))
    t = tensor(x[0], requires_grad=True)
    out = op(t)
    assert out.shape == () and out.dtype == np.float64
    assert_close(out, reference(x)[0], rtol=1e-13, atol=1e-15)
    out.backward()
    assert t.grad.shape == ()
    assert_close(t.grad, derivative(x)[0], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# binary operations with broadcasting

BINARY = {
    "add": (ag.add, np.add, lambda a, b: (np.ones_like(a * b), np.ones_like(a * b))),
    "sub": (ag.sub, np.subtract, lambda a, b: (np.ones_like(a * b), -np.ones_like(a * b))),
    "mul": (ag.mul, np.multiply, lambda a, b: (b + 0 * a, a + 0 * b)),
    "div": (ag.div, np.divide, lambda a, b: (1 / b + 0 * a, -a / b**2)),
    "pow": (ag.pow, np.power, lambda a, b: (b * a ** (b - 1), a**b * np.log(a))),
    "maximum": (ag.maximum, np.maximum, lambda a, b: ((a > b) + 0.0 * b, (b > a) + 0.0 * a)),
    "minimum": (ag.minimum, np.minimum, lambda a, b: ((a < b) + 0.0 * b, (b < a) + 0.0 * a)),
}


def _binary_inputs(rng, name, shape_a, shape_b):
    if name in ("maximum", "minimum"):  # no ties between the operands: the derivative jumps there
        both = distinct(rng, (int(np.prod(shape_a)) + int(np.prod(shape_b)),))
        return both[: int(np.prod(shape_a))].reshape(shape_a), both[int(np.prod(shape_a)):].reshape(shape_b)
    low = 0.5 if name in ("pow", "div") else -2.0
    return rng.uniform(low, 2.0, shape_a), rng.uniform(low, 2.0, shape_b)


def _sum_to(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


@settings(max_examples=10)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       name=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_binary_broadcasting_values_and_gradients(shapes, name, seed):
    rng = np.random.default_rng(seed)
    op, reference, partials = BINARY[name]
    a, b = _binary_inputs(rng, name, *shapes.input_shapes)
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = op(ta, tb)
    expected = reference(a, b)
    assert_close(out, expected, rtol=1e-13, atol=1e-15)
    cotangent = rng.standard_normal(expected.shape)
    out.backward(dev(cotangent))
    da, db = partials(a, b)
    assert_close(ta.grad, _sum_to(cotangent * da, a.shape), rtol=1e-12, atol=1e-14)
    assert_close(tb.grad, _sum_to(cotangent * db, b.shape), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((), (2,))])
def test_binary_gradcheck(rng, name, shapes):
    a, b = _binary_inputs(rng, name, *shapes)
    check_grads(BINARY[name][0], dev(a), dev(b))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_with_scalar_operand(rng, name):
    op, reference, _ = BINARY[name]
    a = rng.uniform(0.5, 2.0, (2, 2))
    assert_close(op(dev(a), 1.25), reference(a, 1.25), rtol=1e-15, atol=0)
    assert_close(op(1.25, dev(a)), reference(1.25, a), rtol=1e-15, atol=0)


def test_a_tensor_times_itself_and_minus_a_broadcast(rng):
    """x * x has the one VJP 2 g x (as g x + g x); a - b with b broadcast reduces before it negates."""
    x, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    (grad,) = ag.vjp(lambda v: v * v, tensor(x))[1](dev(g))
    assert_close(grad, 2 * g * x, rtol=1e-15, atol=1e-15)
    check_grads(lambda v: v * v, tensor(x))
    check_grads(lambda v: ag.tanh(v) * ag.tanh(v), tensor(x))
    b = rng.standard_normal((3, 1))
    gb = ag.vjp(lambda u, w: u - w, tensor(x), tensor(b))[1](dev(g))[1]
    assert_close(gb, -g.sum(axis=1, keepdims=True), rtol=0, atol=0)
    check_grads(lambda u, w: u - w, tensor(x), tensor(b))
    check_grads(lambda u, w: u / w, tensor(x), tensor(b + 3.0))


def test_maximum_and_minimum_split_ties_evenly():
    a = tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = tensor(np.array([1.0, 0.0, 3.0]), requires_grad=True)
    ag.maximum(a, b).sum().backward()
    assert_close(a.grad, [0.5, 1.0, 0.5], atol=0)
    assert_close(b.grad, [0.5, 0.0, 0.5], atol=0)
    a.grad = b.grad = None
    ag.minimum(a, b).sum().backward()
    assert_close(a.grad, [0.5, 0.0, 0.5], atol=0)
    assert_close(b.grad, [0.5, 1.0, 0.5], atol=0)


def test_subgradients_at_kinks_follow_pytorch():
    x = tensor(np.array([0.0, 0.0, -0.5, 0.7]), requires_grad=True)
    (ag.relu(x) + ag.abs(x) + ag.leaky_relu(x, 0.2)).sum().backward()
    # relu'(0) = 0, |x|'(0) = 0, leaky_relu'(0) = slope (PyTorch's choices)
    assert_close(x.grad[:2], [0.2, 0.2], atol=0)
    x.grad = None
    ag.clip(x, -0.5, 0.7).sum().backward()
    assert_close(x.grad, [1.0, 1.0, 1.0, 1.0], atol=0)  # closed interval, as torch.clamp


def test_pow_with_tensor_exponent(rng):
    a, b = rng.uniform(0.5, 2.0, 3), rng.uniform(-1.0, 2.0, 3)
    check_grads(lambda base, exponent: base ** exponent, dev(a), dev(b))
    assert_close(2.0 ** tensor(b), 2.0**b, rtol=1e-15)


def test_sigmoid_and_softplus_do_not_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = host(ag.sigmoid(dev(x)))
        p = host(ag.softplus(dev(x)))
    np.testing.assert_allclose(s, scipy.special.expit(x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(p, np.logaddexp(0.0, x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(host(ag.sigmoid(dev(x.astype(np.float32)))), scipy.special.expit(x), rtol=1e-6)


def test_sigmoid_and_tanh_of_integers_give_numpys_float_dtype():
    """Integer and boolean inputs are promoted as NumPy's own exp/tanh promote them."""
    ints = np.array([-3, 0, 2])
    s = host(ag.sigmoid(dev(ints)))
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, scipy.special.expit(ints), rtol=1e-15, atol=0)
    for values in (ints.astype(np.int8), np.array([True, False])):
        t = host(ag.tanh(dev(values)))
        assert t.dtype == np.tanh(values).dtype
        np.testing.assert_array_equal(t, np.tanh(values))


def test_sign_has_zero_gradient_and_maps_nan_to_zero():
    x = tensor(np.array([-2.0, 0.0, 3.0, np.nan, -0.0]), requires_grad=True)
    s = ag.sign(x)
    assert_close(s, [-1.0, 0.0, 1.0, 0.0, 0.0], atol=0)  # torch.sign(nan) is 0 (NumPy's is nan)
    s.backward(dev(np.ones(5)))  # recorded, as in torch: a loss through sign has a gradient of zeros
    np.testing.assert_array_equal(host(x.grad), np.zeros(5))


def test_where_routes_gradients_and_broadcasts(rng):
    cond = rng.random((2, 3)) > 0.5
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3,))
    ta, tb = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = ag.where(dev(cond), ta, tb)
    assert_close(out, np.where(cond, a, b), atol=0)
    out.sum().backward()
    assert_close(ta.grad, cond.astype(float), atol=0)
    assert_close(tb.grad, (~cond).sum(axis=0).astype(float), atol=0)
    assert_close(ag.where(tensor(cond), 1.0, tb), np.where(cond, 1.0, b), atol=0)
    check_grads(lambda p, q: ag.where(dev(cond), p, q), dev(a), dev(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zero_side", ["b", "a"])
def test_where_values_or_zero_is_bit_exact(rng, dtype, zero_side):
    """where(mask, v, 0) and where(mask, 0, v) -- the ReLU VJP's form, which NumPy runs on a bit path -- give
    xp.where's bits: NaN, +-inf and -0.0 kept where selected, +0.0 elsewhere, any memory layout."""
    values = rng.standard_normal((6, 10)).astype(dtype)
    values[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    for v in (values, values[::2, 1::3], values.T):
        mask = rng.random(v.shape) > 0.5
        mask.flat[:4] = True
        zero = np.zeros((), dtype)
        args = (dev(v), dev(zero)) if zero_side == "b" else (dev(zero), dev(v))
        got = host(ag.where(dev(mask), *args))
        want = np.where(mask, v, zero) if zero_side == "b" else np.where(mask, zero, v)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_relu_keeps_nan_and_masks_its_gradient():
    x = tensor(np.array([np.nan, -1.0, 0.0, 2.0, -0.0]), requires_grad=True)
    y = ag.relu(x)
    np.testing.assert_array_equal(host(y), [np.nan, 0.0, 0.0, 2.0, 0.0])  # torch.relu(nan) is nan
    y.sum().backward()
    # torch's rule is ``result <= 0 ? 0 : g``: the cotangent passes at NaN, stops at 0 and -0
    assert_close(x.grad, [1.0, 0.0, 0.0, 1.0, 0.0], atol=0)


def test_clip_one_sided(rng):
    x = away_from(rng, (6,), (0.0,))
    assert_close(ag.clip(dev(x), min=0.0), np.maximum(x, 0.0), atol=0)
    assert_close(ag.clip(dev(x), max=0.0), np.minimum(x, 0.0), atol=0)
    check_grads(lambda v: ag.clip(v, max=0.0), dev(x))


def test_astype_casts_value_and_gradient(rng):
    x = rng.standard_normal(4)
    t = tensor(x, requires_grad=True)
    y = ag.astype(t, np.float32)
    assert y.dtype == np.float32 and ag.astype(t, np.float64) is t
    ag.sum(ag.mul(y, 2.0)).backward()
    assert t.grad.dtype == np.float64
    assert_close(t.grad, np.full(4, 2.0), atol=0)
    check_grads(lambda v: ag.astype(ag.astype(v, np.float32), np.float64) * 0 + v * v, dev(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_vjps_are_the_composed_rules_bit_for_bit(rng, dtype):
    # the fused VJPs (one output array) must give exactly g * (y * (1 - y)) and g * (1 - y * y)
    x, g = rng.standard_normal((3, 5)).astype(dtype) * 3, rng.standard_normal((3, 5)).astype(dtype)
    for op, rule in ((ag.sigmoid, lambda y: g * (y * (1 - y))), (ag.tanh, lambda y: g * (1 - y * y))):
        y = host(op(dev(x)).data)
        _, pullback = ag.vjp(op, dev(x))
        (got,) = pullback(dev(g))
        np.testing.assert_array_equal(host(got), rule(y).astype(dtype))
        assert host(got).dtype == dtype
