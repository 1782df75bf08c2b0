"""Normalisation (batch/layer/group norm), linear, dropout and the explicit-generator samplers."""
import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, check_grads, dev, host, tensor

# ---------------------------------------------------------------------------------------------
# batch_norm


def _bn_reference(x, mean, var, weight, bias, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _batch_stats(x):
    """Per-channel mean, biased variance and unbiased variance by the definition."""
    c = x.shape[1]
    values = np.moveaxis(x, 1, 0).reshape(c, -1)
    n = values.shape[1]
    mean = values.sum(axis=1) / n
    squares = ((values - mean[:, None]) ** 2).sum(axis=1)
    return mean, squares / n, squares / (n - 1)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 2)])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batch_norm_training_normalises_with_batch_stats_and_updates_running_stats(rng, shape, momentum):
    x = rng.standard_normal(shape) * 2 + 1
    c = shape[1]
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rm_dev, rv_dev = dev(running_mean), dev(running_var)
    y, new_mean, new_var = ag.batch_norm(dev(x), rm_dev, rv_dev, dev(weight), dev(bias), training=True,
                                         momentum=momentum, eps=1e-5, return_running=True)
    mean, biased, unbiased = _batch_stats(x)
    assert_close(y, _bn_reference(x, mean, biased, weight, bias, 1e-5), rtol=1e-12, atol=1e-13)
    assert_close(new_mean, (1 - momentum) * running_mean + momentum * mean, rtol=1e-13, atol=1e-15)
    assert_close(new_var, (1 - momentum) * running_var + momentum * unbiased, rtol=1e-13, atol=1e-15)
    # never in place
    np.testing.assert_array_equal(host(rm_dev), running_mean)
    np.testing.assert_array_equal(host(rv_dev), running_var)


def test_batch_norm_defaults_are_pytorch_defaults(rng):
    x = rng.standard_normal((3, 2, 2))
    _, new_mean, new_var = ag.batch_norm(dev(x), dev(np.zeros(2)), dev(np.ones(2)), training=True,
                                         return_running=True)
    mean, biased, unbiased = _batch_stats(x)
    assert_close(new_mean, 0.1 * mean, rtol=1e-13)
    assert_close(new_var, 0.9 + 0.1 * unbiased, rtol=1e-13)
    assert_close(ag.batch_norm(dev(x), training=True), _bn_reference(x, mean, biased, None, None, 1e-5), rtol=1e-12)


def test_batch_norm_eval_uses_running_stats_and_returns_them_unchanged(rng):
    x = rng.standard_normal((2, 3, 4))
    rm, rv, w, b = rng.standard_normal(3), rng.uniform(0.5, 2, 3), rng.standard_normal(3), rng.standard_normal(3)
    y, new_mean, new_var = ag.batch_norm(dev(x), dev(rm), dev(rv), dev(w), dev(b), training=False, eps=1e-3,
                                         return_running=True)
    assert_close(y, _bn_reference(x, rm, rv, w, b, 1e-3), rtol=1e-12, atol=1e-14)
    assert_close(new_mean, rm, atol=0)
    assert_close(new_var, rv, atol=0)


def test_batch_norm_training_without_running_stats(rng):
    y, new_mean, new_var = ag.batch_norm(dev(rng.standard_normal((4, 2))), training=True, return_running=True)
    assert new_mean is None and new_var is None and y.shape == (4, 2)


def test_batch_norm_gradcheck(rng):
    x = rng.standard_normal((3, 2, 2, 2))
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    rm, rv = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)
    check_grads(lambda *a: ag.batch_norm(a[0], None, None, a[1], a[2], training=True), dev(x), dev(w), dev(b))
    check_grads(lambda *a: ag.batch_norm(*a, training=False), dev(x), dev(rm), dev(rv), dev(w), dev(b))


@pytest.mark.parametrize("call, pattern", [
    (lambda: ag.batch_norm(dev(np.ones(3)), training=True), r"input must be \(N, C, ...\)"),
    (lambda: ag.batch_norm(dev(np.ones((2, 3))), dev(np.zeros(2)), dev(np.ones(3))), r"running_mean must have shape"),
    (lambda: ag.batch_norm(dev(np.ones((2, 3))), dev(np.zeros(3)), dev(np.ones(4))), r"running_var must have shape"),
    (lambda: ag.batch_norm(dev(np.ones((2, 3))), training=True, weight=dev(np.ones(2))), "weight must have shape"),
    (lambda: ag.batch_norm(dev(np.ones((2, 3))), training=True, bias=dev(np.ones((3, 1)))), "bias must have shape"),
    (lambda: ag.batch_norm(dev(np.ones((1, 3))), training=True), "more than 1 value per channel"),
    (lambda: ag.batch_norm(dev(np.ones((2, 3))), training=False), "running_mean and running_var"),
])
def test_batch_norm_rejects_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 3), (2, 3, 0, 4)])
def test_batch_norm_training_on_an_empty_batch(shape):
    """As torch: an empty output, the running statistics unchanged, zero weight/bias gradients (no NaN)."""
    rm, rv = dev(np.full(3, 0.5)), dev(np.full(3, 2.0))
    y, new_mean, new_var = ag.batch_norm(dev(np.zeros(shape)), rm, rv, training=True, return_running=True)
    assert y.shape == shape
    assert_close(new_mean, np.full(3, 0.5), atol=0)
    assert_close(new_var, np.full(3, 2.0), atol=0)
    out, pullback = ag.vjp(lambda x, w, b: ag.batch_norm(x, rm, rv, w, b, training=True), dev(np.zeros(shape)),
                           dev(np.ones(3)), dev(np.zeros(3)))
    gx, gw, gb = pullback(dev(np.zeros(shape)))
    assert gx.shape == shape
    assert_close(gw, np.zeros(3), atol=0)
    assert_close(gb, np.zeros(3), atol=0)


# ---------------------------------------------------------------------------------------------
# layer_norm / group_norm


@pytest.mark.parametrize("normalized_shape", [4, (4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm(rng, normalized_shape, affine):
    x = rng.standard_normal((2, 3, 4)) * 3 + 2
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    w = rng.standard_normal(shape) if affine else None
    b = rng.standard_normal(shape) if affine else None
    axes = tuple(range(3 - len(shape), 3))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5)
    if affine:
        expected = expected * w + b
    out = ag.layer_norm(dev(x), normalized_shape, None if w is None else dev(w), None if b is None else dev(b))
    assert_close(out, expected, rtol=1e-12, atol=1e-13)
    args = (dev(x),) + ((dev(w), dev(b)) if affine else ())
    check_grads(lambda v, *p: ag.layer_norm(v, normalized_shape, *p), *args)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 4, 2, 3)])
def test_group_norm(rng, groups, shape):
    x = rng.standard_normal(shape) * 2 - 1
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    expected = np.empty_like(x)
    per = 4 // groups
    for n in range(shape[0]):
        for g in range(groups):
            block = x[n, g * per : (g + 1) * per]
            expected[n, g * per : (g + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + 1e-5)
    expected = expected * w.reshape((1, 4) + (1,) * (len(shape) - 2)) + b.reshape((1, 4) + (1,) * (len(shape) - 2))
    assert_close(ag.group_norm(dev(x), groups, dev(w), dev(b)), expected, rtol=1e-12, atol=1e-13)
    check_grads(lambda *a: ag.group_norm(a[0], groups, a[1], a[2]), dev(x[:1]), dev(w), dev(b))



def test_group_norm_empty_batch():
    """N = 0: an empty output and zero gradients for the affine parameters (as torch)."""
    w, b = dev(np.ones(4)), dev(np.ones(4))
    out, pullback = ag.vjp(lambda ww, bb: ag.group_norm(dev(np.zeros((0, 4, 3, 2))), 2, ww, bb), w, b)
    assert out.shape == (0, 4, 3, 2)
    gw, gb = pullback(ag.xp.zeros((0, 4, 3, 2)))
    assert not np.any(ag.to_numpy(gw)) and not np.any(ag.to_numpy(gb))


@pytest.mark.parametrize("call, pattern", [
    (lambda: ag.layer_norm(dev(np.ones((2, 3))), 4), "does not end with normalized_shape"),
    (lambda: ag.layer_norm(dev(np.ones((2, 3))), (2, 2, 3)), "does not end with normalized_shape"),
    (lambda: ag.layer_norm(dev(np.ones((2, 3))), 3, weight=dev(np.ones(2))), r"weight must have shape \(3,\)"),
    (lambda: ag.layer_norm(dev(np.ones((2, 3))), 3, bias=dev(np.ones((1, 3)))), r"bias must have shape \(3,\)"),
    (lambda: ag.group_norm(dev(np.ones((2, 6, 3))), 4), "not divisible by num_groups=4"),
    (lambda: ag.group_norm(dev(np.ones((2, 6, 3))), 0), "num_groups=0"),
    (lambda: ag.group_norm(dev(np.ones(6)), 2), r"input must be \(N, C, ...\)"),
    (lambda: ag.group_norm(dev(np.ones((2, 6))), 2, weight=dev(np.ones(3))), r"weight must have shape \(6,\)"),
])
def test_norm_rejects_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# linear


@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5), (2, 1, 3, 5), (0, 3, 5)])
def test_linear(rng, x_shape):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal((4, 5)), rng.standard_normal(4)
    expected = np.einsum("...i,oi->...o", x, w) + b
    assert_close(ag.linear(dev(x), dev(w), dev(b)), expected, rtol=1e-13, atol=1e-14)
    assert_close(ag.linear(dev(x), dev(w)), expected - b, rtol=1e-13, atol=1e-14)
    check_grads(ag.linear, dev(x), dev(w), dev(b))


def test_linear_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ag.linear(dev(np.ones((2, 3))), dev(np.ones(3)))
    with pytest.raises(ValueError, match="input has 3 features"):
        ag.linear(dev(np.ones((2, 3))), dev(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        ag.linear(dev(np.ones((2, 5))), dev(np.ones((4, 5))), dev(np.ones(5)))
    with pytest.raises(ValueError, match="at least one axis"):
        ag.linear(dev(np.array(1.0)), dev(np.ones((4, 5))))


# ---------------------------------------------------------------------------------------------
# dropout


def test_dropout_is_identity_in_eval_and_for_p_zero(rng):
    x = rng.standard_normal((3, 4))
    assert_close(ag.dropout(dev(x), 0.5, training=False), x, atol=0)
    assert_close(ag.dropout(dev(x), 0.0, training=True, rng=np.random.default_rng(0)), x, atol=0)
    assert_close(ag.dropout(dev(x), 1.0, training=True, rng=np.random.default_rng(0)), np.zeros_like(x), atol=0)


def test_dropout_training_zeroes_and_rescales(rng):
    x = rng.uniform(1.0, 2.0, (100, 100))
    out = host(ag.dropout(dev(x), 0.3, training=True, rng=np.random.default_rng(5)))
    dropped = out == 0.0
    np.testing.assert_allclose(out[~dropped], x[~dropped] / 0.7, rtol=1e-15)
    # 10000 Bernoulli(0.3) draws: the fraction is within 4 standard deviations (0.0183) of 0.3
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 10000)
    again = host(ag.dropout(dev(x), 0.3, training=True, rng=np.random.default_rng(5)))
    np.testing.assert_array_equal(out, again)  # same seed, same mask


def test_dropout_gradient_is_the_scaled_mask(rng):
    x = rng.uniform(1.0, 2.0, (4, 5))
    t = tensor(x, requires_grad=True)
    out = ag.dropout(t, 0.5, training=True, rng=np.random.default_rng(1))
    out.sum().backward()
    assert_close(t.grad, np.where(host(out) == 0.0, 0.0, 2.0), atol=0)
    check_grads(lambda v: ag.dropout(v, 0.5, training=True, rng=np.random.default_rng(1)), dev(x))


def test_dropout_rejects_bad_arguments():
    x = dev(np.ones(3))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="p must be a number in"):
            ag.dropout(x, p, training=True, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="explicit rng"):
        ag.dropout(x, 0.5, training=True)


# ---------------------------------------------------------------------------------------------
# sampling with an explicit generator


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_and_uniform(dtype):
    a = ag.normal(np.random.default_rng(3), (200, 50), mean=2.0, std=0.5, dtype=dtype)
    assert ag.backend.is_array(a) and a.shape == (200, 50) and a.dtype == dtype
    values = host(a)
    assert abs(values.mean() - 2.0) < 4 * 0.5 / 100 and abs(values.std() - 0.5) < 0.02
    np.testing.assert_array_equal(values, host(ag.normal(np.random.default_rng(3), (200, 50), 2.0, 0.5, dtype)))
    u = host(ag.uniform(np.random.default_rng(3), (1000,), -1.0, 3.0, dtype))
    assert u.dtype == dtype and u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.15


def test_categorical():
    probs = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    draws = np.stack([host(ag.categorical(np.random.default_rng(s), dev(probs))) for s in range(200)])
    assert draws.shape == (200, 3) and draws.dtype.kind == "i"
    assert (draws[:, 0] == 1).all() and (draws[:, 2] == 0).all()
    assert set(np.unique(draws[:, 1])) == {0, 2}  # a zero-probability class is never drawn
    many = host(ag.categorical(np.random.default_rng(0), dev(np.tile([[0.2, 0.8]], (5000, 1)))))
    assert abs((many == 1).mean() - 0.8) < 4 * np.sqrt(0.16 / 5000)
    unnormalised = host(ag.categorical(np.random.default_rng(0), tensor(np.tile([[2.0, 8.0]], (5000, 1)))))
    np.testing.assert_array_equal(unnormalised, many)  # only the ratios matter
