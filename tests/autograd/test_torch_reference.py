"""Cross-check of the primitives against torch.nn.functional (float64): outputs and input/parameter gradients.

Skipped when PyTorch is absent; the references of the other test files do not depend on it.
"""
import numpy as np
import pytest

import autograd as ag

from .helpers import dev, distinct, host

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch


def _compare(ours, theirs, arrays, rng, tol=1e-12):
    """Run both on the same float64 inputs; compare outputs and the VJPs of a random cotangent."""
    out, pullback = ag.vjp(ours, *[dev(a) for a in arrays])
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = theirs(*tensors)
    np.testing.assert_allclose(host(out), expected.detach().numpy(), rtol=tol, atol=tol)
    cotangent = rng.standard_normal(tuple(expected.shape))
    grads = pullback(dev(cotangent))
    expected.backward(torch.tensor(cotangent))
    for mine, t in zip(grads, tensors):
        np.testing.assert_allclose(host(mine), t.grad.numpy(), rtol=tol, atol=tol)


CONV = [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2), dict(stride=(2, 1), padding=(0, 2)),
        dict(groups=2, padding=1), dict(groups=4, padding=1, stride=2), dict(padding="valid", dilation=(1, 2))]


@pytest.mark.parametrize("case", CONV, ids=str)
def test_conv2d(rng, case):
    groups = case.get("groups", 1)
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((4, 4 // groups, 3, 3)), rng.standard_normal(4)
    _compare(lambda *a: ag.conv2d(*a, **case), lambda *a: F.conv2d(*a, **case), [x, w, b], rng)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d_even_kernel_same(rng):
    x, w = rng.standard_normal((1, 2, 6, 5)), rng.standard_normal((3, 2, 2, 4))
    _compare(lambda *a: ag.conv2d(*a, padding="same"), lambda *a: F.conv2d(*a, padding="same"), [x, w], rng)


@pytest.mark.parametrize("case", [dict(), dict(stride=2, padding=1, dilation=2), dict(groups=2, padding="same")],
                         ids=str)
def test_conv1d(rng, case):
    x, w = rng.standard_normal((2, 4, 9)), rng.standard_normal((4, 4 // case.get("groups", 1), 3))
    _compare(lambda *a: ag.conv1d(*a, **case), lambda *a: F.conv1d(*a, **case), [x, w], rng)


@pytest.mark.parametrize("case", [dict(), dict(stride=2, padding=1, output_padding=1), dict(dilation=2, stride=3)],
                         ids=str)
def test_conv_transpose2d(rng, case):
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(2)
    _compare(lambda *a: ag.conv_transpose2d(*a, **case), lambda *a: F.conv_transpose2d(*a, **case), [x, w, b], rng)


POOL = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
        dict(kernel_size=3, stride=1, padding=1)]


@pytest.mark.parametrize("case", POOL + [dict(kernel_size=(2, 3), dilation=(2, 1), padding=(1, 1))], ids=str)
def test_max_pool2d(rng, case):
    x = distinct(rng, (2, 2, 7, 8))
    _compare(lambda a: ag.max_pool2d(a, **case), lambda a: F.max_pool2d(a, **case), [x], rng)


def test_max_pool2d_window_in_padding_only():
    x = np.array([[[[0.5]]]])
    kwargs = dict(kernel_size=(1, 2), padding=(0, 1), dilation=(1, 2))
    np.testing.assert_array_equal(host(ag.max_pool2d(dev(x), **kwargs)),
                                  F.max_pool2d(torch.tensor(x), **kwargs).numpy())


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL, ids=str)
def test_avg_pool2d(rng, case, count_include_pad):
    x = rng.standard_normal((2, 2, 7, 8))
    _compare(lambda a: ag.avg_pool2d(a, count_include_pad=count_include_pad, **case),
             lambda a: F.avg_pool2d(a, count_include_pad=count_include_pad, **case), [x], rng)


@pytest.mark.parametrize("output_size", [1, 3, (5, 2), (4, 7), (None, 3)], ids=str)
def test_adaptive_pools(rng, output_size):
    x = distinct(rng, (2, 3, 5, 6))
    pairs = ((ag.adaptive_avg_pool2d, F.adaptive_avg_pool2d), (ag.adaptive_max_pool2d, F.adaptive_max_pool2d))
    for ours, theirs in pairs:
        _compare(lambda a: ours(a, output_size), lambda a: theirs(a, output_size), [x], rng)


def test_pool1d(rng):
    x = distinct(rng, (2, 3, 11))
    _compare(lambda a: ag.max_pool1d(a, 3, 2, 1, ceil_mode=True), lambda a: F.max_pool1d(a, 3, 2, 1, ceil_mode=True),
             [x], rng)
    _compare(lambda a: ag.avg_pool1d(a, 4, 3, 2, ceil_mode=True, count_include_pad=False),
             lambda a: F.avg_pool1d(a, 4, 3, 2, ceil_mode=True, count_include_pad=False), [x], rng)
    _compare(lambda a: ag.adaptive_avg_pool1d(a, 4), lambda a: F.adaptive_avg_pool1d(a, 4), [x], rng)
    _compare(lambda a: ag.adaptive_max_pool1d(a, 4), lambda a: F.adaptive_max_pool1d(a, 4), [x], rng)


INTERPOLATE = [dict(size=(9, 4), mode="nearest"), dict(scale_factor=2.05, mode="nearest"),
               dict(scale_factor=(0.6, 1.7), mode="nearest"), dict(size=(9, 4), mode="bilinear", align_corners=False),
               dict(size=(9, 4), mode="bilinear", align_corners=True), dict(scale_factor=1.05, mode="bilinear"),
               dict(scale_factor=(1.7, 0.45), mode="bilinear", align_corners=False),
               dict(scale_factor=2.5, mode="bilinear", align_corners=True)]


@pytest.mark.parametrize("case", INTERPOLATE, ids=str)
def test_interpolate(rng, case):
    x = rng.standard_normal((2, 3, 5, 7))
    _compare(lambda a: ag.interpolate(a, **case), lambda a: F.interpolate(a, **case), [x], rng)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(rng, axis):
    x = rng.standard_normal((2, 3, 4)) * 4
    _compare(lambda a: ag.softmax(a, axis=axis), lambda a: F.softmax(a, dim=axis), [x], rng)
    _compare(lambda a: ag.log_softmax(a, axis=axis), lambda a: F.log_softmax(a, dim=axis), [x], rng)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 4)])
def test_batch_norm(rng, shape):
    x, w, b = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    _compare(lambda *a: ag.batch_norm(a[0], None, None, a[1], a[2], training=True),
             lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], training=True), [x, w, b], rng)
    _compare(lambda *a: ag.batch_norm(a[0], dev(rm), dev(rv), a[1], a[2], training=False),
             lambda *a: F.batch_norm(a[0], torch.tensor(rm), torch.tensor(rv), a[1], a[2], training=False),
             [x, w, b], rng)
    torch_rm, torch_rv = torch.tensor(rm), torch.tensor(rv)
    F.batch_norm(torch.tensor(x), torch_rm, torch_rv, training=True, momentum=0.1)  # updates in place
    _, new_mean, new_var = ag.batch_norm(dev(x), dev(rm), dev(rv), training=True, return_running=True)
    np.testing.assert_allclose(host(new_mean), torch_rm.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(host(new_var), torch_rv.numpy(), rtol=1e-13, atol=1e-15)


def test_layer_and_group_norm(rng):
    x = rng.standard_normal((2, 4, 3, 5))
    w, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    _compare(lambda *a: ag.layer_norm(a[0], (3, 5), a[1], a[2]), lambda *a: F.layer_norm(a[0], (3, 5), a[1], a[2]),
             [x, w, b], rng)
    wg, bg = rng.standard_normal(4), rng.standard_normal(4)
    _compare(lambda *a: ag.group_norm(a[0], 2, a[1], a[2]), lambda *a: F.group_norm(a[0], 2, a[1], a[2]),
             [x, wg, bg], rng)


def test_elementwise_activations(rng):
    x = rng.standard_normal((3, 4)) * 3
    for ours, theirs in ((ag.sigmoid, torch.sigmoid), (ag.tanh, torch.tanh), (ag.softplus, F.softplus),
                         (lambda a: ag.softplus(a, 2.0, 1.0), lambda a: F.softplus(a, 2.0, 1.0)),
                         (lambda a: ag.leaky_relu(a, 0.2), lambda a: F.leaky_relu(a, 0.2)), (ag.relu, F.relu)):
        _compare(ours, theirs, [x], rng)


def test_pool_output_sizes_and_refusals_match_torch():
    """Every (size, kernel, stride, padding, ceil_mode) with size 0..5: accepted exactly where torch accepts it,
    with torch's output size and values (ceil-mode windows longer than the input included)."""
    import itertools

    rng = np.random.default_rng(0)
    for size, k, s, p, ceil in itertools.product(range(6), range(1, 5), range(1, 4), range(3), (False, True)):
        if 2 * p > k:
            continue
        x = rng.standard_normal((1, 2, size, size + 1))
        for ours, theirs in ((ag.max_pool2d, F.max_pool2d), (ag.avg_pool2d, F.avg_pool2d)):
            try:
                expected = theirs(torch.tensor(x), k, s, p, ceil_mode=ceil).numpy()
            except RuntimeError:
                with pytest.raises(ValueError, match=ours.__name__):
                    ours(dev(x), k, s, p, ceil_mode=ceil)
                continue
            np.testing.assert_allclose(host(ours(dev(x), k, s, p, ceil_mode=ceil)), expected, rtol=1e-13, atol=1e-15,
                                       err_msg=f"{ours.__name__} size={size} k={k} s={s} p={p} ceil={ceil}")


def test_batch_norm_training_on_an_empty_batch_matches_torch():
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    x = np.zeros((0, 3, 2, 2))
    expected = F.batch_norm(torch.tensor(x), rm_t, rv_t, training=True)
    y, new_mean, new_var = ag.batch_norm(dev(x), dev(rm), dev(rv), training=True, return_running=True)
    assert tuple(y.shape) == tuple(expected.shape)
    np.testing.assert_array_equal(host(new_mean), rm_t.numpy())       # torch left them unchanged too
    np.testing.assert_array_equal(host(new_var), rv_t.numpy())
