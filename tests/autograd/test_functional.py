"""grad / value_and_grad / vjp over pytrees, argnums, has_aux, higher order, and their errors."""
import numpy as np
import pytest

import autograd as ag

from .helpers import assert_close, dev, host


def _quadratic_loss(params, x):
    """sum((W x + b)^2) / 2 + c * sum(x): gradients are easy to write by hand."""
    hidden = ag.add(ag.matmul(params["W"], x), params["b"])
    return ag.add(ag.mul(ag.sum(ag.mul(hidden, hidden)), 0.5), ag.mul(params["c"], ag.sum(x)))


@pytest.fixture
def problem(rng):
    W, b, x = rng.standard_normal((3, 4)), rng.standard_normal(3), rng.standard_normal(4)
    params = {"W": dev(W), "b": dev(b), "c": dev(np.array(1.5))}
    hidden = W @ x + b
    expected = {"W": np.outer(hidden, x), "b": hidden, "c": np.array(x.sum()), "x": W.T @ hidden + 1.5}
    return params, dev(x), expected


def test_grad_returns_a_dict_shaped_like_params(problem):
    params, x, expected = problem
    grads = ag.grad(_quadratic_loss)(params, x)
    assert isinstance(grads, dict) and list(grads) == ["W", "b", "c"]
    for key in grads:
        assert ag.backend.is_array(grads[key]) and grads[key].shape == params[key].shape
        assert_close(grads[key], expected[key], rtol=1e-13, atol=1e-14)


def test_argnums_select_and_order_the_gradients(problem):
    params, x, expected = problem
    grads_x = ag.grad(_quadratic_loss, argnums=1)(params, x)
    assert_close(grads_x, expected["x"], rtol=1e-13)
    both = ag.grad(_quadratic_loss, argnums=(1, 0))(params, x)
    assert isinstance(both, tuple) and len(both) == 2
    assert_close(both[0], expected["x"], rtol=1e-13)
    assert_close(both[1]["W"], expected["W"], rtol=1e-13)
    assert_close(ag.grad(_quadratic_loss, argnums=-1)(params, x), expected["x"], rtol=1e-13)


def test_value_and_grad(problem):
    params, x, expected = problem
    value, grads = ag.value_and_grad(_quadratic_loss)(params, x)
    W, b, xh = host(params["W"]), host(params["b"]), host(x)
    assert_close(value, 0.5 * np.sum((W @ xh + b) ** 2) + 1.5 * xh.sum(), rtol=1e-13)
    assert_close(grads["b"], expected["b"], rtol=1e-13)


def test_has_aux(problem):
    params, x, expected = problem

    def loss_with_aux(p, v):
        loss = _quadratic_loss(p, v)
        return loss, {"loss": loss, "note": "kept as is"}

    grads, aux = ag.grad(loss_with_aux, has_aux=True)(params, x)
    assert aux["note"] == "kept as is" and isinstance(aux["loss"], ag.Tensor)
    assert_close(grads["W"], expected["W"], rtol=1e-13)
    (value, aux2), grads2 = ag.value_and_grad(loss_with_aux, has_aux=True)(params, x)
    assert_close(value, host(aux["loss"]), atol=0)
    assert_close(grads2["c"], expected["c"], rtol=1e-13)


def test_nested_pytrees_keep_their_structure(rng):
    tree = {"layers": [dev(rng.standard_normal(2)), (dev(rng.standard_normal(3)), dev(np.array(2.0)))],
            "scale": dev(np.array(0.5))}

    def f(t):
        a, (b, c) = t["layers"]
        return ag.sum(a * a) * t["scale"] + ag.sum(b) * c

    grads = ag.grad(f)(tree)
    assert isinstance(grads["layers"], list) and isinstance(grads["layers"][1], tuple)
    a, b, c, scale = host(tree["layers"][0]), host(tree["layers"][1][0]), 2.0, 0.5
    assert_close(grads["layers"][0], 2 * a * scale, rtol=1e-14)
    assert_close(grads["layers"][1][0], np.full(3, c), atol=0)
    assert_close(grads["layers"][1][1], b.sum(), rtol=1e-14)
    assert_close(grads["scale"], np.sum(a * a), rtol=1e-14)


def test_python_scalars_tensors_and_unused_inputs(rng):
    x = dev(rng.standard_normal(3))
    grads = ag.grad(lambda s, v, unused: s * ag.sum(v), argnums=(0, 1, 2))(2.0, ag.Tensor(x), dev(np.ones(2)))
    assert_close(grads[0], host(x).sum(), rtol=1e-14)
    assert_close(grads[1], np.full(3, 2.0), atol=0)
    assert_close(grads[2], np.zeros(2), atol=0)  # zeros, not None, for an input the output ignores


def test_grad_does_not_touch_the_callers_arrays(problem):
    params, x, _ = problem
    before = {k: host(v).copy() for k, v in params.items()}
    ag.grad(_quadratic_loss)(params, x)
    for k in params:
        np.testing.assert_array_equal(host(params[k]), before[k])


def test_kwargs_are_passed_through(rng):
    x = dev(rng.standard_normal(3))
    g = ag.grad(lambda v, power=2.0: ag.sum(v**power))(x, power=3.0)
    assert_close(g, 3 * host(x) ** 2, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# vjp


def test_vjp_with_pytrees_and_non_scalar_output(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(3)
    out, pullback = ag.vjp(lambda d, s: d["a"] * d["b"] * s, {"a": dev(a), "b": dev(b)}, 2.0)
    assert_close(out, a * b * 2.0, rtol=1e-15)
    g = rng.standard_normal((2, 3))
    grads = pullback(dev(g))
    assert isinstance(grads, tuple) and len(grads) == 2 and set(grads[0]) == {"a", "b"}
    assert_close(grads[0]["a"], g * b * 2.0, rtol=1e-14)
    assert_close(grads[0]["b"], (g * a * 2.0).sum(axis=0), rtol=1e-14)
    assert_close(grads[1], np.sum(g * a * b), rtol=1e-13)
    grads_again = pullback(dev(2 * g))  # the pullback can be called more than once
    assert_close(grads_again[0]["a"], 2 * g * b * 2.0, rtol=1e-14)


def test_vjp_has_aux(rng):
    x = dev(rng.standard_normal(3))
    out, pullback, aux = ag.vjp(lambda v: (ag.exp(v), "aux"), x, has_aux=True)
    assert aux == "aux"
    assert_close(pullback(dev(np.ones(3)))[0], np.exp(host(x)), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# higher order


def test_grad_of_grad_and_third_order(rng):
    x = dev(np.array(1.3))
    f = lambda v: v**4  # noqa: E731
    assert_close(ag.grad(f)(x), 4 * 1.3**3, rtol=1e-14)
    assert_close(ag.grad(ag.grad(f))(x), 12 * 1.3**2, rtol=1e-14)
    assert_close(ag.grad(ag.grad(ag.grad(f)))(x), 24 * 1.3, rtol=1e-14)


def test_grad_of_grad_through_elementwise_and_reductions(rng):
    v = rng.uniform(0.5, 1.5, 4)

    def f(x):
        return ag.sum(ag.tanh(x) * ag.exp(x))

    def df(x):
        return ag.sum(ag.grad(f)(x))  # sum_i (tanh' e + tanh e)

    expected = (1 - np.tanh(v) ** 2) * np.exp(v) * 2 + np.tanh(v) * np.exp(v) - 2 * np.tanh(v) * (
        1 - np.tanh(v) ** 2) * np.exp(v)
    assert_close(ag.grad(df)(dev(v)), expected, rtol=1e-12)


def test_hessian_vector_product_matches_finite_differences(rng):
    W = dev(rng.standard_normal((3, 4)))
    x0, v = rng.standard_normal(4), rng.standard_normal(4)

    def f(x):
        hidden = ag.tanh(ag.matmul(W, x))
        return ag.sum(ag.softmax(hidden) * hidden) + ag.sum(x**4) / 4

    def hvp(x, direction):
        return ag.grad(lambda y: ag.sum(ag.grad(f)(y) * direction))(x)

    exact = host(hvp(dev(x0), dev(v)))
    eps = 1e-5
    numeric = (host(ag.grad(f)(dev(x0 + eps * v))) - host(ag.grad(f)(dev(x0 - eps * v)))) / (2 * eps)
    np.testing.assert_allclose(exact, numeric, rtol=1e-6, atol=1e-8)
    # and the Hessian of the quartic part alone is diagonal 3 x^2
    quartic = host(ag.grad(lambda y: ag.sum(ag.grad(lambda z: ag.sum(z**4) / 4)(y) * dev(v)))(dev(x0)))
    np.testing.assert_allclose(quartic, 3 * x0**2 * v, rtol=1e-13)


def test_vjp_inside_grad(rng):
    a = rng.uniform(0.5, 1.5, 3)

    def outer(x):
        _, pullback = ag.vjp(ag.exp, x)
        (g,) = pullback(dev(np.ones(3)))
        return ag.sum(g * g)  # sum(exp(2x)) -> gradient 2 exp(2x)

    assert_close(ag.grad(outer)(dev(a)), 2 * np.exp(2 * a), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# errors


def test_non_scalar_output_needs_a_cotangent(rng):
    with pytest.raises(ValueError, match="must return a scalar"):
        ag.grad(lambda v: v * 2.0)(dev(rng.standard_normal(3)))


def test_wrong_cotangent_shape_is_reported(rng):
    _, pullback = ag.vjp(lambda v: v * 2.0, dev(rng.standard_normal((2, 3))))
    with pytest.raises(ValueError, match=r"cotangent has shape \(3, 2\) but the output has shape \(2, 3\)"):
        pullback(dev(np.ones((3, 2))))
    with pytest.raises(ValueError, match="cotangent"):
        pullback(None)  # a non-scalar output needs one


@pytest.mark.parametrize("leaf", [np.arange(3), np.array([True, False])])
def test_integer_inputs_cannot_be_differentiated(leaf):
    with pytest.raises(TypeError, match=r"argument0.*floating-point"):
        ag.grad(lambda w: ag.sum(w * 1.0))(dev(leaf))
    with pytest.raises(TypeError, match="floating-point"):
        ag.vjp(lambda v: v, dev(leaf))


@pytest.mark.parametrize("leaf", [np.arange(3), np.array([True, False]), np.zeros((), np.int64)])
def test_integer_leaves_of_a_pytree_are_constants_with_gradient_none(rng, leaf):
    """A parameter dict with BatchNorm's integer ``num_batches_tracked``: its gradient entry is None."""
    w = dev(rng.standard_normal(3))
    grads = ag.grad(lambda p: ag.sum(p["w"] * p["w"]) + ag.sum(p["count"] * 0.0))({"w": w, "count": dev(leaf)})
    assert list(grads) == ["w", "count"] and grads["count"] is None
    assert_close(grads["w"], 2 * host(w))
    out, pullback = ag.vjp(lambda p: p[0] * 2.0, [w, dev(leaf)])
    (g,) = pullback(dev(np.ones(3)))
    assert g[1] is None
    assert_close(g[0], [2.0, 2.0, 2.0])


def test_integer_inputs_not_asked_for_are_fine(rng):
    index = dev(np.array([0, 2]))
    g = ag.grad(lambda x, i: ag.sum(x[i]))(dev(rng.standard_normal(3)), index)
    assert_close(g, [1.0, 0.0, 1.0], atol=0)


def test_argnums_out_of_range():
    with pytest.raises(ValueError, match="argnums 2 is out of range"):
        ag.grad(lambda x: ag.sum(x), argnums=2)(dev(np.ones(2)))


# ---------------------------------------------------------------------------------------------
# pytree utilities


def test_tree_flatten_unflatten_round_trip():
    tree = {"a": [1, (2, 3)], "b": {"c": 4}, "d": ()}
    leaves, paths, treedef = ag.tree_flatten(tree)
    assert leaves == [1, 2, 3, 4]
    assert paths == ["['a'][0]", "['a'][1][0]", "['a'][1][1]", "['b']['c']"]
    assert ag.tree_unflatten(treedef, leaves) == tree
    assert ag.tree_map(lambda v: v * 10, tree) == {"a": [10, (20, 30)], "b": {"c": 40}, "d": ()}
