"""gradcheck / gradgradcheck as a product feature: they pass correct rules and catch wrong ones, loudly."""
import re

import numpy as np
import pytest

import autograd as ag
from autograd import ops
from autograd.tensor import Tensor, record

from .helpers import dev

BAD_INDEX = (1, 2)


def square_with_wrong_entry(x):
    """x**2 whose backward rule is off by 0.5 * g at one element (BAD_INDEX) -- a deliberate bug."""
    x = ops._lift(x)
    mask = np.zeros(x.shape)
    mask[BAD_INDEX] = 0.5
    error = Tensor(ag.from_numpy(mask))
    return record(x.data * x.data, ((x, lambda g: g * x * 2.0 + g * error),))


def square_with_constant_vjp(x):
    """x**2 whose VJP treats 2x as a constant: right to first order, wrong to second order."""
    x = ops._lift(x)
    slope = Tensor(2.0 * x.data)
    return record(x.data * x.data, ((x, lambda g: g * slope),))


@pytest.fixture
def x(rng):
    return dev(rng.uniform(0.5, 1.5, (2, 3)))


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_correct_rules_pass_and_return_true(x, mode):
    assert ag.gradcheck(lambda v: ag.sum(ag.exp(v) * v, axis=1), x, mode=mode) is True
    assert ag.gradgradcheck(lambda v: ag.sum(ag.exp(v) * v, axis=1), x, mode=mode) is True


def test_wrong_backward_rule_is_caught_in_full_mode_with_a_precise_report(x):
    with pytest.raises(ag.GradcheckError) as info:
        ag.gradcheck(square_with_wrong_entry, x, mode="full")
    message = str(info.value)
    assert "args[0]" in message
    assert "tolerance |analytic - numeric| <= 1e-05 + 0.001 * |numeric|" in message
    assert "1 of 36 entries out of tolerance" in message  # one Jacobian entry of the 6 x 6
    worst = message.splitlines()[2]
    # Jacobian index = (output index, input index) = ((1, 2), (1, 2)); analytic 2x + 0.5 vs numeric 2x
    value = float(ag.to_numpy(x)[BAD_INDEX])
    match = re.search(r"index \(1, 2, 1, 2\): analytic ([-\d.e+]+), numeric ([-\d.e+]+), \|diff\| ([-\d.e+]+)", worst)
    assert match, worst
    analytic, numeric, diff = (float(g) for g in match.groups())
    assert analytic == pytest.approx(2 * value + 0.5, rel=1e-9)
    assert numeric == pytest.approx(2 * value, rel=1e-6)
    assert diff == pytest.approx(0.5, rel=1e-5)


def test_wrong_backward_rule_is_caught_in_fast_mode(x):
    with pytest.raises(ag.GradcheckError, match=r"args\[0\] \(random direction 0: u\^T J v\)"):
        ag.gradcheck(square_with_wrong_entry, x, mode="fast")


def test_report_names_the_pytree_path_of_the_faulty_argument(rng):
    params = {"good": dev(rng.uniform(0.5, 1.5, 3)), "bad": [dev(np.ones(1)), dev(rng.uniform(0.5, 1.5, (2, 3)))]}

    def f(p, scale):
        return ag.sum(p["good"] ** 2) * scale + ag.sum(square_with_wrong_entry(p["bad"][1])) + ag.sum(p["bad"][0])

    for mode in ("full", "fast"):
        with pytest.raises(ag.GradcheckError) as info:
            ag.gradcheck(f, params, dev(np.array(2.0)), mode=mode)
        message = str(info.value)
        assert "args[0]['bad'][1]" in message
        assert "['good']" not in message and "args[1]" not in message and "['bad'][0]" not in message


def test_custom_tolerances_are_used_and_reported(x):
    with pytest.raises(ag.GradcheckError, match=r"<= 0\.01 \+ 0\.2 \* \|numeric\|"):
        ag.gradcheck(square_with_wrong_entry, x, atol=0.01, rtol=0.2, eps=1e-5)
    # a tolerance above the injected error lets it through: the check really compares against it
    assert ag.gradcheck(square_with_wrong_entry, x, atol=0.6, rtol=0.0)


def test_wrong_second_order_is_caught_by_gradgradcheck_only(x):
    assert ag.gradcheck(square_with_constant_vjp, x, mode="full")
    for mode in ("full", "fast"):
        with pytest.raises(ag.GradcheckError, match=r"args\[0\]"):
            ag.gradgradcheck(square_with_constant_vjp, x, mode=mode)


def test_argnums_limits_the_check(rng, x):
    y = dev(rng.uniform(0.5, 1.5, (2, 3)))

    def f(a, b):
        return ag.sum(a * a) + ag.sum(square_with_wrong_entry(b))

    assert ag.gradcheck(f, x, y, argnums=0)
    with pytest.raises(ag.GradcheckError, match=r"args\[1\]"):
        ag.gradcheck(f, x, y, argnums=1)


def test_integer_leaves_pass_through_unchecked(rng, x):
    index = dev(np.array([2, 0, 2]))
    assert ag.gradcheck(lambda v, i: ag.sum(v[:, i] ** 2), x, index)
    assert ag.gradcheck(lambda d: ag.sum(d["x"][:, d["i"]] ** 3), {"x": x, "i": index}, mode="fast")


def test_tensor_arguments_are_accepted(x):
    assert ag.gradcheck(lambda v: v * v, ag.Tensor(x))


def test_gradcheck_argument_errors(x):
    with pytest.raises(TypeError, match=r"args?.*0.*float32.*float64"):
        ag.gradcheck(lambda v: v * 2.0, dev(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="no floating-point argument"):
        ag.gradcheck(lambda i: ag.Tensor(i) * 1.0, dev(np.arange(3)))
    with pytest.raises(ValueError, match="mode must be 'full' or 'fast'"):
        ag.gradcheck(lambda v: v, x, mode="exact")


def test_fast_mode_scales_to_larger_inputs(rng):
    big = dev(rng.standard_normal((4, 8, 16, 16)))
    weight = dev(rng.standard_normal((8, 8, 3, 3)))
    assert ag.gradcheck(lambda a, w: ag.conv2d(a, w, padding=1), big, weight, mode="fast", n_directions=2)


def test_gradgradcheck_report_names_the_original_pytree_path(rng, x):
    params = {"fine": dev(rng.uniform(0.5, 1.5, 2)), "faulty": x}

    def f(p):
        return ag.sum(p["fine"] ** 3) + ag.sum(square_with_constant_vjp(p["faulty"]))

    with pytest.raises(ag.GradcheckError, match=r"args\[0\]\['faulty'\] \(second order") as info:
        ag.gradgradcheck(f, params)
    assert "['fine']" not in str(info.value)


def square_with_error_at(error: float, index: tuple):
    """x**2 whose backward rule adds ``error * g`` at one element -- a small deliberate bug."""
    def f(x):
        x = ops._lift(x)
        mask = np.zeros(x.shape)
        mask[index] = error
        wrong = Tensor(ag.from_numpy(mask))
        return record(x.data * x.data, ((x, lambda g: g * x * 2.0 + g * wrong),))

    return f


def test_fast_mode_catches_a_small_error_in_a_large_input(rng):
    """A 0.5% error in one Jacobian entry of a 16k-element input: a projection u^T J v dilutes it below its
    tolerance (9 seeds in 10), so fast mode also compares J v output by output, which does not."""
    x = dev(rng.uniform(0.5, 1.5, (16, 32, 32)))
    buggy = square_with_error_at(0.01, (8, 16, 16))  # the entry is 2x ~ 2
    for seed in range(4):
        with pytest.raises(ag.GradcheckError, match=r"args\[0\] \(random direction 0: J v per output") as info:
            ag.gradcheck(buggy, x, mode="fast", seed=seed)
        assert "index (8, 16, 16)" in str(info.value)  # the report points at the faulty output
    assert ag.gradcheck(buggy, x, mode="fast", per_output=False)  # why the per-output comparison exists
    assert ag.gradcheck(lambda v: ag.exp(v) * v, x, mode="fast")  # and a right rule passes it


def test_fast_mode_projection_alone_catches_a_25_percent_error_in_a_large_input(rng):
    """The projection's absolute tolerance grows with sqrt(size) (the scale of u^T J v), not faster: a 0.5
    error on a Jacobian entry of ~2 in a 16k-element input is still caught by u^T J v alone."""
    x = dev(rng.uniform(0.5, 1.5, (16, 32, 32)))
    for seed in range(3):
        with pytest.raises(ag.GradcheckError, match="u\\^T J v"):
            ag.gradcheck(square_with_error_at(0.5, (8, 16, 16)), x, mode="fast", per_output=False, seed=seed)
