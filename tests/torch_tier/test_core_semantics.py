"""The core's edge semantics against PyTorch 2.13 (float64): non-finite values, gradient conventions at NaN,
0 and kinks, 0-d and empty tensors, and nearest resizing's index rule over a sweep of sizes.

Every expectation here is torch's own output; docs/architecture.md states each rule in words.
"""
import numpy as np
import pytest

import autograd as ag

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch


def host(x):
    return ag.to_numpy(x)


def dev(x):
    return ag.from_numpy(np.asarray(x))


def assert_same_values(actual, expected, rtol=1e-10, atol=1e-12):
    """Equal shapes and dtypes, NaN exactly where expected, the same infinities, finite values close."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan, err_msg="NaN positions differ")
    np.testing.assert_array_equal(actual[~nan & np.isinf(expected)], expected[~nan & np.isinf(expected)])
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected), err_msg="infinite positions differ")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol)


@pytest.mark.parametrize("wrong, expected", [
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),          # a NaN too many
    ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0]),          # a NaN missing
    ([1.0, 2.0, np.inf], [1.0, 2.0, 3.0]),          # an infinity for a finite value
    ([1.0, 2.0, -np.inf], [1.0, 2.0, np.inf]),      # the wrong infinity
    ([1.0, 2.0 + 1e-6, np.inf], [1.0, 2.0, np.inf]),
    ([1.0, 2.0], [1.0, 2.0, 3.0]),
])
def test_assert_same_values_rejects_a_wrong_answer(wrong, expected):
    assert_same_values(np.array(expected), np.array(expected))
    with pytest.raises(AssertionError):
        assert_same_values(np.array(wrong), np.array(expected))
    with pytest.raises(AssertionError):
        assert_same_values(np.array(expected, np.float32), np.array(expected))  # the dtype counts too


def _inject(rng, array, count):
    """``array`` with ``count`` NaNs, +infs and -infs each at random positions (some may overwrite others)."""
    array = array.copy()
    flat = array.reshape(-1)
    for value in (np.nan, np.inf, -np.inf):
        flat[rng.choice(flat.size, size=count, replace=False)] = value
    return array


def _compare_with_torch(ours, theirs, x, rng, nonfinite_cotangent):
    """Output and input gradient (random cotangent, optionally with non-finite entries) of both libraries."""
    tx = torch.tensor(x, requires_grad=True)
    expected = theirs(tx)
    out, pullback = ag.vjp(ours, dev(x))
    assert_same_values(host(out), expected.detach().numpy())
    g = rng.standard_normal(tuple(expected.shape))
    if nonfinite_cotangent:
        g = _inject(rng, g, 1)
    expected.backward(torch.tensor(g))
    (dx,) = pullback(dev(g))
    assert_same_values(host(dx), tx.grad.numpy())


# ---------------------------------------------------------------------------------------------
# non-finite values reach exactly the outputs that read them


LINEAR_MAPS = {
    "avg_pool 3 s3": (lambda m: lambda t: m.avg_pool2d(t, 3, 3)),
    "avg_pool 3 s2 p1": (lambda m: lambda t: m.avg_pool2d(t, 3, 2, 1)),
    "avg_pool 3 s1 p1": (lambda m: lambda t: m.avg_pool2d(t, 3, 1, 1)),
    "avg_pool 2 ceil no-pad-count": (lambda m: lambda t: m.avg_pool2d(t, 2, 2, 0, True, False)),
    "avg_pool 4 divisor 3": (lambda m: lambda t: m.avg_pool2d(t, 4, 4, divisor_override=3)),
    "avg_pool 5x5 s1 (16+ taps)": (lambda m: lambda t: m.avg_pool2d(t, 5, 1, 2)),
    "adaptive_avg 3x4": (lambda m: lambda t: m.adaptive_avg_pool2d(t, (3, 4))),
    "adaptive_avg 5x1": (lambda m: lambda t: m.adaptive_avg_pool2d(t, (5, 1))),
    "adaptive_avg 1x1": (lambda m: lambda t: m.adaptive_avg_pool2d(t, 1)),
    "adaptive_avg unchanged": (lambda m: lambda t: m.adaptive_avg_pool2d(t, (7, 9))),
    "nearest 13x5": (lambda m: lambda t: m.interpolate(t, size=(13, 5))),
    "nearest x2": (lambda m: lambda t: m.interpolate(t, scale_factor=2)),
    "bilinear 13x5": (lambda m: lambda t: m.interpolate(t, size=(13, 5), mode="bilinear")),
    "bilinear 14x18": (lambda m: lambda t: m.interpolate(t, size=(14, 18), mode="bilinear")),
    "bilinear unchanged": (lambda m: lambda t: m.interpolate(t, size=(7, 9), mode="bilinear")),
    "bilinear 7x20 (one axis unchanged)": (lambda m: lambda t: m.interpolate(t, size=(7, 20), mode="bilinear")),
    "bilinear align_corners 13x17": (
        lambda m: lambda t: m.interpolate(t, size=(13, 17), mode="bilinear", align_corners=True)),
    "bilinear align_corners 4x5": (
        lambda m: lambda t: m.interpolate(t, size=(4, 5), mode="bilinear", align_corners=True)),
    "bilinear scale 1.5": (lambda m: lambda t: m.interpolate(t, scale_factor=1.5, mode="bilinear")),
    "linear 1-D": (lambda m: lambda t: m.interpolate(m_flat(m, t), size=20, mode="linear")),
    # the modes of issue 14 section 3: the same exact semantics on their maps
    "nearest-exact 13x5": (lambda m: lambda t: m.interpolate(t, size=(13, 5), mode="nearest-exact")),
    "nearest-exact scale 0.6": (lambda m: lambda t: m.interpolate(t, scale_factor=0.6, mode="nearest-exact")),
    "bicubic 13x17": (lambda m: lambda t: m.interpolate(t, size=(13, 17), mode="bicubic")),
    "bicubic 4x5 (down)": (lambda m: lambda t: m.interpolate(t, size=(4, 5), mode="bicubic")),
    "bicubic unchanged": (lambda m: lambda t: m.interpolate(t, size=(7, 9), mode="bicubic")),
    "bicubic align_corners 10x12": (
        lambda m: lambda t: m.interpolate(t, size=(10, 12), mode="bicubic", align_corners=True)),
    "bicubic scale 1.5": (lambda m: lambda t: m.interpolate(t, scale_factor=1.5, mode="bicubic")),
    "area 3x4": (lambda m: lambda t: m.interpolate(t, size=(3, 4), mode="area")),
    "area 10x14 (overlapping bins)": (lambda m: lambda t: m.interpolate(t, size=(10, 14), mode="area")),
    "nearest-exact 1-D": (lambda m: lambda t: m.interpolate(m_flat(m, t), size=40, mode="nearest-exact")),
    "area 1-D": (lambda m: lambda t: m.interpolate(m_flat(m, t), size=25, mode="area")),
    "linear 1-D unchanged": (lambda m: lambda t: m.interpolate(m_flat(m, t), size=63, mode="linear")),
    "avg_pool1d 3 s2 p1": (lambda m: lambda t: m.avg_pool1d(m_flat(m, t), 3, 2, 1)),
    "adaptive_avg_pool1d 10": (lambda m: lambda t: m.adaptive_avg_pool1d(m_flat(m, t), 10)),
    "lp_pool2d p=2 k3 s2": (lambda m: lambda t: m.lp_pool2d(t, 2.0, 3, 2)),
    "lp_pool1d p=3 k2": (lambda m: lambda t: m.lp_pool1d(m_flat(m, t), 3.0, 2)),
}


def m_flat(m, t):
    """(N, C, H, W) -> (N, C, H*W) in either library (1-D resizing)."""
    return m.reshape(t, (t.shape[0], t.shape[1], -1)) if m is ag else t.reshape(t.shape[0], t.shape[1], -1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(LINEAR_MAPS))
def test_nonfinite_input_of_pooling_and_resizing_reaches_only_its_windows(rng, name):
    """One NaN used to turn a whole plane NaN (0 * NaN in the matrix products); torch reads windows."""
    make = LINEAR_MAPS[name]
    for trial in range(8):
        x = _inject(rng, rng.standard_normal((2, 3, 7, 9)), 1 + trial % 3)
        _compare_with_torch(make(ag), make(F), x, rng, nonfinite_cotangent=bool(trial % 2))


def m_volume(m, t):
    """(N, C, H, W) = (2, 3, 7, 9) -> (N, C, D, H, W) = (2, 3, 7, 3, 3) in either library (3-D ops)."""
    return m.reshape(t, (2, 3, 7, 3, 3)) if m is ag else t.reshape(2, 3, 7, 3, 3)


VOLUME_MAPS = {
    "trilinear 9x5x4": (lambda m: lambda t: m.interpolate(m_volume(m, t), size=(9, 5, 4), mode="trilinear")),
    "trilinear align_corners 4x6x2": (lambda m: lambda t: m.interpolate(
        m_volume(m, t), size=(4, 6, 2), mode="trilinear", align_corners=True)),
    "trilinear 7x3x5 (two axes unchanged)": (
        lambda m: lambda t: m.interpolate(m_volume(m, t), size=(7, 3, 5), mode="trilinear")),
    "nearest 5-D": (lambda m: lambda t: m.interpolate(m_volume(m, t), size=(11, 2, 5))),
    "nearest-exact 5-D": (lambda m: lambda t: m.interpolate(m_volume(m, t), size=(4, 5, 2), mode="nearest-exact")),
    "area 5-D": (lambda m: lambda t: m.interpolate(m_volume(m, t), size=(3, 2, 2), mode="area")),
    "avg_pool3d 3 s2 p1": (lambda m: lambda t: m.avg_pool3d(m_volume(m, t), 3, 2, 1)),
    "avg_pool3d 2 ceil no-pad-count": (lambda m: lambda t: m.avg_pool3d(m_volume(m, t), 2, 2, 0, True, False)),
    "avg_pool3d 2 divisor 3": (lambda m: lambda t: m.avg_pool3d(m_volume(m, t), 2, 1, divisor_override=3)),
    "adaptive_avg_pool3d 3x2x2": (lambda m: lambda t: m.adaptive_avg_pool3d(m_volume(m, t), (3, 2, 2))),
    "lp_pool3d p=2 k2": (lambda m: lambda t: m.lp_pool3d(m_volume(m, t), 2.0, 2)),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(VOLUME_MAPS))
def test_nonfinite_input_of_volume_pooling_and_resizing_reaches_only_its_windows(rng, name):
    """The 3-D modes and pools compose per-axis maps (D through a reshape): the same placement as torch."""
    make = VOLUME_MAPS[name]
    for trial in range(8):
        x = _inject(rng, rng.standard_normal((2, 3, 7, 9)), 1 + trial % 3)
        _compare_with_torch(make(ag), make(F), x, rng, nonfinite_cotangent=bool(trial % 2))


NONLINEAR = {
    "max_pool 3 s2 p1": (lambda m: lambda t: m.max_pool2d(t, 3, 2, 1)),
    "max_pool 2": (lambda m: lambda t: m.max_pool2d(t, 2)),
    "max_pool 3 d2": (lambda m: lambda t: m.max_pool2d(t, 3, 1, 1, 2)),
    "adaptive_max 3x4": (lambda m: lambda t: m.adaptive_max_pool2d(t, (3, 4))),
    "adaptive_max 1": (lambda m: lambda t: m.adaptive_max_pool2d(t, 1)),
    "adaptive_max 7x3 (divisible bins)": (lambda m: lambda t: m.adaptive_max_pool2d(t, (7, 3))),
    "max_pool1d 3 s2 p1": (lambda m: lambda t: m.max_pool1d(m_flat(m, t), 3, 2, 1)),
    "adaptive_max_pool1d 10": (lambda m: lambda t: m.adaptive_max_pool1d(m_flat(m, t), 10)),
    "max_pool3d 3 s2 p1": (lambda m: lambda t: m.max_pool3d(m_volume(m, t), 3, 2, 1)),
    "max_pool3d 2 d2 ceil": (lambda m: lambda t: m.max_pool3d(m_volume(m, t), 2, 2, 0, 2, True)),
    "adaptive_max_pool3d 3x2x2": (lambda m: lambda t: m.adaptive_max_pool3d(m_volume(m, t), (3, 2, 2))),
    "softmax last axis": (lambda m: lambda t: m.softmax(t, -1)),
    "log_softmax axis 1": (lambda m: lambda t: m.log_softmax(t, 1)),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(NONLINEAR))
def test_nonfinite_input_of_max_pooling_and_softmax_matches_torch(rng, name):
    """Max pooling routes a NaN window's gradient to its last NaN, as torch; softmax rows with NaN are NaN."""
    make = NONLINEAR[name]
    for trial in range(8):
        x = _inject(rng, rng.standard_normal((2, 3, 7, 9)), 1 + trial % 3)
        _compare_with_torch(make(ag), make(F), x, rng, nonfinite_cotangent=False)


WITH_INDICES = {
    "max_pool1d 3 s2 p1": (lambda m: lambda t: m.max_pool1d(m_flat(m, t), 3, 2, 1, return_indices=True)),
    "max_pool2d 3 s2 p1": (lambda m: lambda t: m.max_pool2d(t, 3, 2, 1, return_indices=True)),
    "max_pool2d 2 d2 p1 ceil": (lambda m: lambda t: m.max_pool2d(t, 2, 2, 1, 2, True, return_indices=True)),
    "max_pool3d 3 s2 p1": (lambda m: lambda t: m.max_pool3d(m_volume(m, t), 3, 2, 1, return_indices=True)),
    "adaptive_max_pool1d 10": (lambda m: lambda t: m.adaptive_max_pool1d(m_flat(m, t), 10, return_indices=True)),
    "adaptive_max_pool2d 3x4": (lambda m: lambda t: m.adaptive_max_pool2d(t, (3, 4), return_indices=True)),
    "adaptive_max_pool2d 7x3": (lambda m: lambda t: m.adaptive_max_pool2d(t, (7, 3), return_indices=True)),
    "adaptive_max_pool2d 1": (lambda m: lambda t: m.adaptive_max_pool2d(t, 1, return_indices=True)),
    "adaptive_max_pool3d 3x2x2": (
        lambda m: lambda t: m.adaptive_max_pool3d(m_volume(m, t), (3, 2, 2), return_indices=True)),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(WITH_INDICES))
def test_max_pool_indices_at_nan_and_minus_inf_match_torch(rng, name):
    """return_indices names the element the gradient reaches: a NaN window's last NaN, and for a window of
    -inf only its first element inside the input (never padding), as torch's kernels."""
    make = WITH_INDICES[name]
    inputs = [_inject(rng, rng.standard_normal((2, 3, 7, 9)), 1 + trial % 3) for trial in range(6)]
    inputs.append(np.full((2, 3, 7, 9), -np.inf))
    half = rng.standard_normal((2, 3, 7, 9))
    half[:, :, :4] = -np.inf
    inputs.append(half)
    for x in inputs:
        tx = torch.tensor(x, requires_grad=True)
        values, indices = make(F)(tx)
        ours, pullback = ag.vjp(lambda v: make(ag)(v)[0], dev(x))
        assert_same_values(host(ours), values.detach().numpy())
        np.testing.assert_array_equal(host(make(ag)(dev(x))[1]), indices.numpy())
        g = rng.standard_normal(tuple(values.shape))
        values.backward(torch.tensor(g))
        assert_same_values(host(pullback(dev(g))[0]), tx.grad.numpy())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("op", ["conv2d", "conv2d groups=3 stride 2", "linear", "matmul"])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_nonfinite_conv_linear_matmul_match_torch(rng, op, where):
    shapes = {"conv2d": (4, 3, 3, 3), "conv2d groups=3 stride 2": (6, 1, 3, 3), "linear": (5, 9), "matmul": (9, 4)}
    calls = {
        "conv2d": lambda m: lambda x, w: m.conv2d(x, w, padding=1),
        "conv2d groups=3 stride 2": lambda m: lambda x, w: m.conv2d(x, w, stride=2, groups=3),
        "linear": lambda m: lambda x, w: m.linear(x, w),
        "matmul": lambda m: lambda x, w: m.matmul(x, w),
    }
    for trial in range(4):
        x, w = rng.standard_normal((2, 3, 7, 9)), rng.standard_normal(shapes[op])
        if where == "input":
            x = _inject(rng, x, 1 + trial % 2)
        else:
            w = _inject(rng, w, 1)
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        expected = calls[op](torch if op == "matmul" else F)(tx, tw)
        out, pullback = ag.vjp(calls[op](ag), dev(x), dev(w))
        assert_same_values(host(out), expected.detach().numpy())
        g = rng.standard_normal(tuple(expected.shape))
        expected.backward(torch.tensor(g))
        dx, dw = pullback(dev(g))
        assert_same_values(host(dx), tx.grad.numpy())
        assert_same_values(host(dw), tw.grad.numpy())


ROWS = [[1.0, np.nan, 2.0], [1.0, np.inf, 2.0], [1.0, -np.inf, 2.0], [-np.inf, -np.inf, -np.inf],
        [np.inf, np.inf, 0.0], [np.inf, -np.inf, 0.0], [3.0, 1.0, 2.0], [-np.inf, 5.0, -np.inf]]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_rows_with_nan_and_infinities_match_torch(rng, name):
    """NaN rows, +inf rows and all--inf rows are NaN in torch (not unnormalised, not zeros); -inf among
    finite values gets weight 0.  Gradients likewise."""
    x = np.array(ROWS)
    _compare_with_torch(lambda v: getattr(ag, name)(v, axis=-1), lambda t: getattr(F, name)(t, dim=-1), x, rng,
                        nonfinite_cotangent=False)
    _compare_with_torch(lambda v: getattr(ag, name)(v, axis=0), lambda t: getattr(F, name)(t, dim=0), x.T.copy(),
                        rng, nonfinite_cotangent=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_masked_softmax_matches_torch_masked_fill_on_rows_with_a_kept_entry(rng, name):
    """A boolean keep-mask is torch's ``masked_fill(~mask, -inf)`` followed by the softmax -- values and
    gradients, NaN rows included -- on every row that keeps something (fully masked rows follow npattn's
    policy instead: zeros / -inf, where torch gives NaN)."""
    x = rng.standard_normal((5, 4))
    x[1, 0], x[3, 3] = np.nan, np.inf  # kept: the row is NaN
    x[4, 1] = np.nan  # masked: does not take part
    keep = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 1]], bool)
    tx = torch.tensor(x, requires_grad=True)
    expected = getattr(F, name)(tx.masked_fill(torch.tensor(~keep), float("-inf")), dim=-1)
    g = rng.standard_normal(x.shape)
    g[~keep] = 0.0  # torch's masked_fill + log_softmax gives -inf there; a zero cotangent keeps 0 * -inf away
    expected.backward(torch.tensor(g))
    out, pullback = ag.vjp(lambda v: getattr(ag, name)(v, axis=-1, mask=dev(keep)), dev(x))
    assert_same_values(host(out), expected.detach().numpy())
    assert_same_values(host(pullback(dev(g))[0]), tx.grad.numpy())


# ---------------------------------------------------------------------------------------------
# gradient conventions at NaN, +-0 and kinks


def _grads(ours, theirs, *arrays, cotangent=None):
    """Outputs and gradients of both libraries for float64 inputs (cotangent: ones by default)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = theirs(*tensors)
    g = np.ones(tuple(expected.shape)) if cotangent is None else cotangent
    expected.backward(torch.tensor(g))
    out, pullback = ag.vjp(ours, *[dev(a) for a in arrays])
    return host(out), expected.detach().numpy(), [host(v) for v in pullback(dev(g))], [t.grad.numpy() for t in tensors]


SPECIAL = np.array([np.nan, 0.0, -0.0, 1.5, -2.0, np.inf, -np.inf])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["relu", "abs", "sign", "sigmoid", "tanh", "exp", "sqrt"])
def test_unary_gradient_conventions_match_torch(name):
    """relu passes g at NaN and stops it at +-0; abs's gradient is 0 at 0 and NaN; sign(NaN) = 0 with a
    zero gradient."""
    out, expected, grads, expected_grads = _grads(getattr(ag, name), getattr(torch, name), SPECIAL)
    assert_same_values(out, expected)
    assert_same_values(grads[0], expected_grads[0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_with_nan_and_ties_match_torch(name):
    """Where either operand is NaN each receives the whole cotangent; exact ties split it."""
    a = np.array([np.nan, 1.0, 2.0, np.nan, 3.0, -1.0, np.inf])
    b = np.array([1.0, np.nan, 2.0, np.nan, -3.0, 4.0, np.inf])
    out, expected, grads, expected_grads = _grads(getattr(ag, name), getattr(torch, name), a, b)
    assert_same_values(out, expected)
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_pow_gradients_at_base_zero_match_torch():
    """d/db 0**b is 0 for b >= 0 (not 0 * -inf), d/da is 0 where b == 0; negative bases give NaN for d/db."""
    base = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -1.0, -0.0, 3.0])
    exponent = np.array([2.0, 0.0, -1.0, 0.5, 1.0, 0.0, 2.0, 2.0, -0.5])
    out, expected, grads, expected_grads = _grads(ag.pow, torch.pow, base, exponent)
    assert_same_values(out, expected)
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)
    # a Python exponent (x ** 0 has gradient 0 at x = 0).  Not at -0.0: torch evaluates x ** -0.5 as rsqrt,
    # whose sign at -0.0 differs from pow's (-inf against +inf), a detail of its kernels
    signed_base = base[np.signbit(base) == (base < 0)]
    for scalar in (0.0, 0.5, 2.0, -1.0):
        out, expected, grads, expected_grads = _grads(lambda v: v ** scalar, lambda t: t ** scalar, signed_base)
        assert_same_values(grads[0], expected_grads[0])
    for scalar in (0.0, 2.0):  # a Python base: 0 ** b at b >= 0 has gradient 0
        out, expected, grads, expected_grads = _grads(lambda v: scalar ** v, lambda t: scalar ** t, exponent)
        assert_same_values(grads[0], expected_grads[0])


def test_concatenate_keeps_each_gradient_in_its_operand_dtype():
    """float16 operands get float16 gradients; mixing float dtypes is the core's TypeError (torch promotes)."""
    a, b = np.array([1.0, 2.0], np.float16), np.array([3.0], np.float16)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.cat([ta, tb]).backward(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16))
    out, pullback = ag.vjp(lambda u, v: ag.concatenate([u, v]), dev(a), dev(b))
    ga, gb = pullback(dev(np.array([1.0, 2.0, 3.0], np.float16)))
    for mine, theirs in ((ga, ta.grad), (gb, tb.grad)):
        assert host(mine).dtype == np.float16 and theirs.dtype == torch.float16
        np.testing.assert_array_equal(host(mine), theirs.numpy())
    with pytest.raises(TypeError, match="concatenate.*float16.*float64"):
        ag.concatenate([dev(a), dev(np.ones(2))])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_clamp_with_tensor_bounds_matches_torch():
    """Gradients reach the bounds: min where a < min < max, max where a > max or max < min (torch's rule)."""
    x = np.array([-2.0, 0.0, 1.0, 3.0, 5.0, np.nan, 1.0, 0.5, -1.0])
    lo = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, np.nan, 1.0])
    hi = np.array([4.0, 4.0, 4.0, 3.0, 4.0, 4.0, 1.0, 2.0, 1.0])
    out, expected, grads, expected_grads = _grads(ag.clip, torch.clamp, x, lo, hi)
    assert_same_values(out, expected)
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)
    # one-sided, and broadcast bounds (a row of bounds for a matrix)
    out, expected, grads, expected_grads = _grads(lambda a, b: ag.clip(a, min=b), lambda a, b: torch.clamp(a, min=b),
                                                  x, lo)
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)
    m, row = np.arange(12.0).reshape(3, 4) - 5, np.array([-1.0, 0.0, 2.0, 10.0])
    out, expected, grads, expected_grads = _grads(lambda a, b: ag.clip(a, max=b), lambda a, b: torch.clamp(a, max=b),
                                                  m, row)
    assert_same_values(out, expected)
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)


# ---------------------------------------------------------------------------------------------
# 0-d and empty tensors, broadcast indices, per-position repeats


@pytest.mark.parametrize("name, theirs", [
    ("sum", lambda t, d: t.sum(d)), ("mean", lambda t, d: t.mean(d)), ("max", lambda t, d: t.amax(d)),
    ("min", lambda t, d: t.amin(d)), ("logsumexp", lambda t, d: t.logsumexp(d)),
    ("softmax", lambda t, d: F.softmax(t, d)), ("log_softmax", lambda t, d: F.log_softmax(t, d)),
])
@pytest.mark.parametrize("axis", [0, -1])
def test_reductions_and_softmax_of_a_0d_tensor_match_torch(name, theirs, axis):
    x = np.array(1.5)
    out, expected, grads, expected_grads = _grads(lambda v: getattr(ag, name)(v, axis=axis),
                                                  lambda t: theirs(t, axis), x, cotangent=np.array(2.0))
    assert_same_values(out, expected)
    assert_same_values(grads[0], expected_grads[0])


def test_shape_ops_of_a_0d_tensor_match_torch():
    x = np.array(1.5)
    t = torch.tensor(x)
    assert ag.flatten(dev(x)).shape == tuple(torch.flatten(t).shape) == (1,)
    assert ag.squeeze(dev(x), 0).shape == tuple(t.squeeze(0).shape) == ()
    assert ag.swapaxes(dev(x), 0, -1).shape == tuple(t.transpose(0, -1).shape) == ()
    assert ag.transpose(dev(x), (0,)).shape == ()
    assert ag.max(dev(x), axis=0).shape == tuple(t.max(0)[0].shape)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_over_an_empty_axis_matches_torch(name):
    x = np.zeros((2, 0, 3))
    out, expected, grads, expected_grads = _grads(lambda v: getattr(ag, name)(v, axis=1),
                                                  lambda t: getattr(F, name)(t, dim=1), x)
    assert out.shape == expected.shape == (2, 0, 3)
    assert grads[0].shape == expected_grads[0].shape == (2, 0, 3)


def test_group_norm_and_batch_norm_on_an_empty_batch_match_torch(rng):
    x, w, b = np.zeros((0, 4, 3, 3)), rng.standard_normal(4), rng.standard_normal(4)
    out, expected, grads, expected_grads = _grads(lambda *a: ag.group_norm(a[0], 2, a[1], a[2]),
                                                  lambda *t: F.group_norm(t[0], 2, t[1], t[2]), x, w, b)
    assert out.shape == expected.shape
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)
    running_mean, running_var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    tm, tv = torch.tensor(running_mean), torch.tensor(running_var)
    out, expected, grads, expected_grads = _grads(
        lambda *a: ag.batch_norm(a[0], dev(running_mean), dev(running_var), a[1], a[2], training=True),
        lambda *t: F.batch_norm(t[0], tm, tv, t[1], t[2], training=True), x, w, b)
    assert out.shape == expected.shape
    for mine, theirs in zip(grads, expected_grads):
        assert_same_values(mine, theirs)
    _, new_mean, new_var = ag.batch_norm(dev(x), dev(running_mean), dev(running_var), training=True,
                                         return_running=True)
    np.testing.assert_array_equal(host(new_mean), tm.numpy())  # torch leaves them alone on an empty batch
    np.testing.assert_array_equal(host(new_var), tv.numpy())


W3 = np.ones((2, 3, 3, 3))


@pytest.mark.parametrize("op", [
    lambda m: lambda t: m.conv2d(t, dev(W3) if m is ag else torch.tensor(W3)),
    lambda m: lambda t: m.max_pool2d(t, 2), lambda m: lambda t: m.avg_pool2d(t, 2),
    lambda m: lambda t: m.adaptive_avg_pool2d(t, 3), lambda m: lambda t: m.adaptive_max_pool2d(t, 3),
    lambda m: lambda t: m.interpolate(t, size=7, mode="bilinear"), lambda m: lambda t: m.layer_norm(t, (5, 5)),
])
def test_empty_batch_shapes_match_torch(op):
    x = np.zeros((0, 3, 5, 5))
    out, expected, grads, expected_grads = _grads(op(ag), op(F), x)
    assert out.shape == expected.shape
    assert grads[0].shape == expected_grads[0].shape == x.shape


def test_take_along_axis_with_broadcast_indices_matches_torch(rng):
    a = rng.standard_normal((3, 5))
    index = np.array([[4, 0, 0]])  # (1, 3): broadcast over a's 3 rows
    out, expected, grads, expected_grads = _grads(lambda v: ag.take_along_axis(v, dev(index), 1),
                                                  lambda t: torch.take_along_dim(t, torch.tensor(index), 1), a,
                                                  cotangent=rng.standard_normal((3, 3)))
    assert_same_values(out, expected)
    assert_same_values(grads[0], expected_grads[0])
    column = rng.standard_normal((3, 1))  # the input broadcast along axis 0 of the indices
    index = np.array([[0], [0], [0], [0]])
    out, expected, grads, expected_grads = _grads(lambda v: ag.take_along_axis(v, dev(index[:3]), 1),
                                                  lambda t: torch.take_along_dim(t, torch.tensor(index[:3]), 1),
                                                  column, cotangent=rng.standard_normal((3, 1)))
    assert_same_values(grads[0], expected_grads[0])


def test_repeat_with_per_position_counts_matches_repeat_interleave(rng):
    a, counts = rng.standard_normal((2, 3)), np.array([2, 0, 3])
    out, expected, grads, expected_grads = _grads(lambda v: ag.repeat(v, counts, 1),
                                                  lambda t: torch.repeat_interleave(t, torch.tensor(counts), 1), a,
                                                  cotangent=rng.standard_normal((2, 5)))
    assert_same_values(out, expected)
    assert_same_values(grads[0], expected_grads[0])


# ---------------------------------------------------------------------------------------------
# nearest resizing: PyTorch's index rule over a sweep of sizes


def _torch_nearest_1d(n_in, n_out, dtype, scale_factor=None, mode="nearest"):
    x = torch.arange(n_in, dtype=dtype).reshape(1, 1, n_in)
    kwargs = dict(scale_factor=scale_factor) if scale_factor else dict(size=n_out)
    return F.interpolate(x, mode=mode, **kwargs).numpy().ravel().astype(np.int64)


def _ours_nearest_1d(n_in, n_out, dtype, scale_factor=None, mode="nearest"):
    x = dev(np.arange(n_in, dtype=dtype).reshape(1, 1, n_in))
    kwargs = dict(scale_factor=scale_factor) if scale_factor else dict(size=n_out)
    return host(ag.interpolate(x, mode=mode, **kwargs)).ravel().astype(np.int64)


SWEEP = range(1, 97)
NEAREST_MODES = ["nearest", "nearest-exact"]


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nearest_1d_index_rule_matches_torch_over_a_size_sweep(dtype, mode):
    """1-D resizing runs torch's generic kernel: no shortcuts, and for float64 ``dst * scale`` in double
    rounded to float by floorf -- e.g. 2 -> 82 picks input 1 at output 41, the single-precision rule 0.
    nearest-exact there: ``floorf(max(scale * (dst + 0.5) - 0.5, 0) + 0.5)`` in the input's precision."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    mismatches = [(i, o) for i in SWEEP for o in SWEEP
                  if not np.array_equal(_ours_nearest_1d(i, o, dtype, mode=mode),
                                        _torch_nearest_1d(i, o, tdtype, mode=mode))]
    assert mismatches == []


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize("scale_factor", [0.3, 0.7, 1.05, 1.3, 2.05, 2.5, 3.7])
def test_nearest_1d_scale_factor_rule_matches_torch(scale_factor, mode):
    for n_in in SWEEP:
        for dtype, tdtype in ((np.float64, torch.float64), (np.float32, torch.float32)):
            if int(np.floor(n_in * scale_factor)) < 1:
                continue
            expected = _torch_nearest_1d(n_in, None, tdtype, scale_factor, mode)
            np.testing.assert_array_equal(_ours_nearest_1d(n_in, None, dtype, scale_factor, mode), expected,
                                          err_msg=f"{n_in} pixels, scale_factor {scale_factor}, {dtype.__name__}")


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize("other_out", [4, 40])  # out_H + out_W <= 128 (vectorised kernel) for small H only
def test_nearest_2d_index_rule_matches_torch_on_both_kernels(other_out, mode):
    """2-D: torch's vectorised kernel (single precision, shortcuts) when out_H + out_W <= 128, the generic
    one above -- both are hit by this sweep of output heights up to 120."""
    mismatches = []
    for n_in in range(1, 61):
        x = np.arange(n_in, dtype=np.float64).reshape(1, 1, n_in, 1) * np.ones((1, 1, 1, 3))
        for n_out in range(1, 121, 1 if n_in < 4 else 3):
            expected = F.interpolate(torch.tensor(x), size=(n_out, other_out), mode=mode).numpy()
            ours = host(ag.interpolate(dev(x), size=(n_out, other_out), mode=mode))
            if not np.array_equal(ours, expected):
                mismatches.append((n_in, n_out))
    assert mismatches == []


@pytest.mark.parametrize("mode", NEAREST_MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nearest_3d_index_rule_matches_torch_over_a_size_sweep(dtype, mode):
    """3-D (volumes) runs torch's generic kernel, as 1-D: the depth axis is swept here (H, W fixed)."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    mismatches = []
    for n_in in range(1, 49):
        x = np.arange(n_in, dtype=dtype).reshape(1, 1, n_in, 1, 1) * np.ones((1, 1, 1, 2, 2), dtype)
        for n_out in range(1, 97, 1 if n_in < 4 else 2):
            expected = F.interpolate(torch.tensor(x, dtype=tdtype), size=(n_out, 3, 2), mode=mode).numpy()
            if not np.array_equal(host(ag.interpolate(dev(x), size=(n_out, 3, 2), mode=mode)), expected):
                mismatches.append((n_in, n_out))
    assert mismatches == []


def test_nearest_rules_differ_where_the_sweeps_need_them():
    """The sweeps above would pass vacuously if the two rules agreed on every pair they visit."""
    single = ag.resize.nearest_indices(2, 82, precision="single", shortcuts=True)
    double = ag.resize.nearest_indices(2, 82, precision="double", shortcuts=False)
    assert single[41] == 0 and double[41] == 1
    assert (ag.resize.nearest_indices(5, 5, 1 / 1.05, shortcuts=False) != np.arange(5)).any()
    exact = ag.resize.nearest_exact_indices  # nearest-exact's two kernels differ too (2 -> 41 at output 20)
    assert exact(2, 41, precision="double", shortcuts=False)[20] == 1 and exact(2, 41, shortcuts=True)[20] == 0
    assert exact(2, 41, precision="single", shortcuts=False)[20] == 1


def test_torch_nearest_backward_is_not_the_adjoint_of_its_forward_where_the_kernels_differ(rng):
    """A documented torch quirk (docs/architecture.md): its nearest backward always uses the single-precision
    rule.  npattn's gradient is the adjoint of the forward it shares with torch, so there they differ."""
    x = rng.standard_normal((1, 1, 2))
    tx = torch.tensor(x, requires_grad=True)
    expected = F.interpolate(tx, size=82, mode="nearest")
    out, pullback = ag.vjp(lambda v: ag.interpolate(v, size=82, mode="nearest"), dev(x))
    np.testing.assert_array_equal(host(out), expected.detach().numpy())  # same forward
    g = rng.standard_normal((1, 1, 82))
    expected.backward(torch.tensor(g))
    (dx,) = pullback(dev(g))
    picked = ag.resize.nearest_indices(2, 82, precision="double", shortcuts=False)
    adjoint = np.bincount(picked, weights=g.ravel(), minlength=2)
    np.testing.assert_allclose(host(dx).ravel(), adjoint, rtol=1e-14)
    assert not np.allclose(tx.grad.numpy().ravel(), adjoint)  # if torch fixes this, revisit the docs
