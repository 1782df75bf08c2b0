"""torch.nn.functional features without an OpInfo (or whose OpInfo skips a part): lp_pool1d/2d/3d, instance_norm's
running statistics, and max-pool indices on ties; outputs and gradients against torch in float64."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import autograd as ag  # noqa: E402

pytestmark = pytest.mark.torch


def _grads(fn_core, fn_torch, x, g):
    xt = torch.tensor(x, requires_grad=True)
    out_t = fn_torch(xt)
    out_t.backward(torch.from_numpy(g))
    xc = ag.Tensor(ag.from_numpy(x), requires_grad=True)
    out_c = fn_core(xc)
    out_c.backward(ag.from_numpy(g))
    return out_c.numpy(), out_t.detach().numpy(), ag.to_numpy(xc.grad), xt.grad.numpy()


LP_CASES = [
    ("lp_pool1d", 2, (1, 2, 7), 3, None, False),
    ("lp_pool1d", 3.0, (2, 3, 8), 2, 3, True),
    ("lp_pool1d", 2, (3, 8), 3, 2, False),  # unbatched
    ("lp_pool2d", 2, (1, 2, 6, 7), (2, 3), None, False),
    ("lp_pool2d", 1.5, (2, 2, 7, 5), 3, (2, 1), True),
    ("lp_pool2d", 2, (2, 5, 7), 3, 2, True),  # unbatched
    ("lp_pool3d", 2, (1, 2, 4, 5, 4), 2, None, True),
]


@pytest.mark.parametrize("name, p, shape, kernel, stride, ceil_mode", LP_CASES)
def test_lp_pool_matches_torch(rng, name, p, shape, kernel, stride, ceil_mode):
    x = np.abs(rng.standard_normal(shape)) + 0.1  # fractional powers of negatives are NaN in both
    core, reference = getattr(ag, name), getattr(F, name)
    shape_out = tuple(reference(torch.tensor(x), p, kernel, stride, ceil_mode).shape)
    g = rng.standard_normal(shape_out)
    out_c, out_t, grad_c, grad_t = _grads(lambda v: core(v, p, kernel, stride, ceil_mode),
                                          lambda v: reference(v, p, kernel, stride, ceil_mode), x, g)
    np.testing.assert_allclose(out_c, out_t, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad_c, grad_t, rtol=1e-12, atol=1e-13)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0 ** -0.5 = inf inside the backward pass, as in torch
def test_lp_pool_gradient_is_zero_on_an_all_zero_window(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    x[0, 0, :2, :2] = 0.0
    g = np.ones((1, 2, 2, 2))
    out_c, out_t, grad_c, grad_t = _grads(lambda v: ag.lp_pool2d(v, 2, 2), lambda v: F.lp_pool2d(v, 2, 2), x, g)
    np.testing.assert_allclose(out_c, out_t, rtol=1e-12)
    assert np.all(np.isfinite(grad_t)) and np.all(grad_t[0, 0, :2, :2] == 0)
    np.testing.assert_array_equal(grad_c[0, 0, :2, :2], 0.0)
    np.testing.assert_allclose(grad_c, grad_t, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_running_statistics_match_torch(rng, use_input_stats):
    x = rng.standard_normal((3, 4, 5, 6))
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    weight, bias = rng.standard_normal(4), rng.standard_normal(4)
    running_t = (torch.tensor(mean), torch.tensor(var))
    y_t = F.instance_norm(torch.tensor(x), *running_t, torch.tensor(weight), torch.tensor(bias),
                          use_input_stats=use_input_stats, momentum=0.3, eps=1e-4)
    y_c, new_mean, new_var = ag.instance_norm(ag.from_numpy(x), ag.from_numpy(mean), ag.from_numpy(var),
                                              ag.from_numpy(weight), ag.from_numpy(bias),
                                              use_input_stats=use_input_stats, momentum=0.3, eps=1e-4,
                                              return_running=True)
    np.testing.assert_allclose(y_c.numpy(), y_t.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ag.to_numpy(new_mean), running_t[0].numpy(), rtol=1e-13)  # torch updated in place
    np.testing.assert_allclose(ag.to_numpy(new_var), running_t[1].numpy(), rtol=1e-13)


@pytest.mark.parametrize("pool, kwargs, shape", [
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 9)),
    ("max_pool2d", dict(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), (2, 3, 7, 8)),
    ("max_pool3d", dict(kernel_size=2, stride=(1, 2, 2), padding=1, ceil_mode=True), (1, 2, 4, 5, 5)),
    ("adaptive_max_pool2d", dict(output_size=(3, 5)), (2, 2, 7, 9)),
    ("adaptive_max_pool3d", dict(output_size=(2, 3, 2)), (1, 2, 5, 7, 3)),
])
def test_max_pool_indices_match_torch_on_integer_valued_inputs(rng, pool, kwargs, shape):
    # few distinct values: many ties, where the chosen element (first maximum in row-major order) matters
    x = rng.integers(0, 3, shape).astype(np.float64)
    values_t, index_t = getattr(F, pool)(torch.tensor(x), return_indices=True, **kwargs)
    values_c, index_c = getattr(ag, pool)(ag.from_numpy(x), return_indices=True, **kwargs)
    np.testing.assert_array_equal(values_c.numpy(), values_t.numpy())
    np.testing.assert_array_equal(ag.to_numpy(index_c), index_t.numpy())
