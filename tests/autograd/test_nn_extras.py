"""instance_norm, lp_pool, var/std with any correction and argmax/argmin with keepdims, against NumPy and loops.

* instance_norm: each (n, c) plane normalised by its mean and biased variance, then w[c] * . + b[c]; the
  running statistics move by ``momentum`` towards the batch mean of the per-plane mean / unbiased variance;
* lp_pool: ``(sum over the window of x^p)^(1/p)``;
* var: ``sum((x - mean)^2) / (n - correction)`` (NumPy's ``ddof``).
"""
import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, check_grads, dev, host, tensor


def test_instance_norm_against_loops(rng):
    x = rng.standard_normal((3, 2, 4, 5))
    weight, bias = rng.standard_normal(2), rng.standard_normal(2)
    mean, var = rng.standard_normal(2), rng.uniform(0.5, 2, 2)
    expected = np.empty_like(x)
    for n in range(3):
        for c in range(2):
            plane = x[n, c]
            expected[n, c] = (plane - plane.mean()) / np.sqrt(plane.var() + 1e-5) * weight[c] + bias[c]
    y, new_mean, new_var = ag.instance_norm(dev(x), dev(mean), dev(var), dev(weight), dev(bias),
                                            momentum=0.2, return_running=True)
    assert_close(y, expected, rtol=1e-12, atol=1e-12)
    plane_means = x.mean(axis=(2, 3))
    plane_vars = x.var(axis=(2, 3), ddof=1)
    assert_close(new_mean, 0.8 * mean + 0.2 * plane_means.mean(axis=0), rtol=1e-13, atol=1e-14)
    assert_close(new_var, 0.8 * var + 0.2 * plane_vars.mean(axis=0), rtol=1e-13, atol=1e-14)
    check_grads(lambda *a: ag.instance_norm(a[0], None, None, a[1], a[2]), dev(x[:2]), dev(weight), dev(bias),
                mode="fast")


def test_instance_norm_with_running_statistics(rng):
    x = rng.standard_normal((2, 3, 5))
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    expected = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
    y, new_mean, new_var = ag.instance_norm(dev(x), dev(mean), dev(var), use_input_stats=False, return_running=True)
    assert_close(y, expected, rtol=1e-13, atol=1e-13)
    assert_close(new_mean, mean, rtol=0, atol=0)
    assert_close(new_var, var, rtol=0, atol=0)
    check_grads(lambda v: ag.instance_norm(v, dev(mean), dev(var), use_input_stats=False), dev(x), mode="fast")


@pytest.mark.parametrize("call, pattern", [
    (lambda: ag.instance_norm(dev(np.ones((2, 3)))), "at least one spatial axis"),
    (lambda: ag.instance_norm(dev(np.ones((2, 3, 1)))), "more than 1 spatial value"),
    (lambda: ag.instance_norm(dev(np.ones((2, 3, 4))), weight=dev(np.ones(2))), r"weight must have shape \(3,\)"),
    (lambda: ag.instance_norm(dev(np.ones((2, 3, 4))), use_input_stats=False), "eval mode needs running_mean"),
])
def test_instance_norm_rejects_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_instance_norm_dtype_rule_names_itself():
    with pytest.raises(TypeError, match="instance_norm: input must be a real floating-point tensor.*int64"):
        ag.instance_norm(dev(np.ones((2, 3, 4), np.int64)))
    with pytest.raises(TypeError, match="instance_norm: .*input float64, weight float32"):
        ag.instance_norm(dev(np.ones((2, 3, 4))), weight=dev(np.ones(3, np.float32)))


def test_instance_norm_on_an_empty_batch(rng):
    """N = 0: an empty output and gradient; the running statistics average over no instance (NaN, as torch)."""
    x = np.zeros((0, 3, 4))
    out, pullback = ag.vjp(lambda v: ag.instance_norm(v, weight=dev(np.ones(3))), dev(x))
    assert out.shape == (0, 3, 4) and host(pullback(dev(x))[0]).shape == (0, 3, 4)
    _, new_mean, new_var = ag.instance_norm(dev(x), dev(np.zeros(3)), dev(np.ones(3)), return_running=True)
    assert np.isnan(host(new_mean)).all() and np.isnan(host(new_var)).all()


@pytest.mark.parametrize("p", [1.0, 2, 3.5])
def test_lp_pool2d_is_the_window_p_norm(rng, p):
    x = rng.uniform(0.1, 2.0, (2, 3, 6, 7))
    expected = np.zeros((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            expected[:, :, i, j] = (x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 3] ** p).sum(axis=(2, 3)) ** (1 / p)
    assert_close(ag.lp_pool2d(dev(x), p, (2, 3), (2, 2)), expected, rtol=1e-12, atol=1e-13)
    check_grads(lambda v: ag.lp_pool2d(v, p, (2, 3), (2, 2)), dev(x[:1]), mode="fast")
    row = x[:, :, 0]
    expected_1d = np.stack([(row[..., 3 * k:3 * k + 3] ** p).sum(-1) ** (1 / p) for k in range(2)], axis=-1)
    assert_close(ag.lp_pool1d(dev(row), p, 3), expected_1d, rtol=1e-12, atol=1e-13)


def test_lp_pool_gradient_is_zero_where_a_window_sums_to_zero(rng):
    x = rng.uniform(0.5, 1.0, (1, 1, 4, 4))
    x[0, 0, :2, :2] = 0.0
    xt = tensor(x, requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ag.lp_pool2d(xt, 2, 2).backward(dev(np.ones((1, 1, 2, 2))))
    grad = host(xt.grad)
    assert np.all(np.isfinite(grad)) and np.all(grad[0, 0, :2, :2] == 0.0)


@pytest.mark.parametrize("correction", [0, 1, 2, 1.3, 0.5, -1, -5])
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, True), ((0, 2), False)])
def test_var_and_std_take_any_correction(rng, correction, axis, keepdims):
    x = rng.standard_normal((4, 5, 3))
    expected = np.var(x, axis=axis, ddof=correction, keepdims=keepdims)
    assert_close(ag.var(dev(x), axis=axis, keepdims=keepdims, correction=correction), expected, rtol=1e-13)
    assert_close(ag.std(dev(x), axis, keepdims, correction=correction), np.sqrt(expected), rtol=1e-13)
    check_grads(lambda v: ag.var(v, axis=axis, correction=correction), dev(x), mode="fast")


def test_var_without_degrees_of_freedom_is_inf_or_nan():
    assert host(ag.var(dev(np.array([1.0, 2.0])), correction=2)) == np.inf
    assert np.isnan(host(ag.var(dev(np.array([1.0])), correction=1)))
    with pytest.raises(ValueError, match="either unbiased or correction"):
        ag.var(dev(np.ones(3)), unbiased=True, correction=1)
    with pytest.raises(TypeError, match="correction must be a real number"):
        ag.var(dev(np.ones(3)), correction="1")


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize("axis, keepdims", [(None, False), (None, True), (0, True), (-1, False), (1, True)])
def test_argmax_argmin_keepdims(rng, fn, axis, keepdims):
    x = rng.standard_normal((3, 4, 2))
    expected = getattr(np, fn)(x, axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(host(getattr(ag, fn)(dev(x), axis=axis, keepdims=keepdims)), expected)


def test_argmax_of_a_scalar_and_of_nothing():
    assert int(host(ag.argmax(dev(np.array(3.0)), axis=0))) == 0
    assert int(host(ag.argmin(dev(np.array(3.0))))) == 0
    with pytest.raises(ValueError, match="argmax: the reduction over an empty axis"):
        ag.argmax(dev(np.ones((0, 2))))
    assert host(ag.argmax(dev(np.ones((0, 2))), axis=1)).shape == (0,)
    with pytest.raises(TypeError, match="axis must be an int"):
        ag.argmax(dev(np.ones(2)), axis=1.0)
