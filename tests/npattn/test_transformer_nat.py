"""Neighborhood attention (NAT) and dilated NA (DiNAT): window and bias indices against NATTEN's integer
formulas, the invariants of the spec sheet (a neighbourhood as large as the map is global attention plus
bias; DiNAT is NA on each dilation sub-grid), the gather/scatter pair, padding, errors and non-finite values.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
import npattn
from npattn.transformer import nat
from tests.conftest import host

# ---------------------------------------------------------------------------------------------
# NATTEN 0.17's naive CPU kernels (csrc/include/natten/cpu/naive/natten_cpu_commons.h), transcribed as
# integer formulas: the window start and the bias start of one query along one axis.


def natten_window_start(index, length, kernel, radius, dilation):
    if dilation <= 1:
        return max(index - radius, 0) + (index + radius >= length) * (length - index - radius - 1)
    ni = index - radius * dilation
    if ni < 0:
        return index % dilation
    if index + radius * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * radius * dilation
        return a + imodd - kernel * dilation
    return ni


def natten_pb_start(index, length, kernel, radius, dilation):
    if dilation <= 1:
        return radius + (index < radius) * (radius - index) + (index + radius >= length) * (length - index - 1 - radius)
    if index - radius * dilation < 0:
        return kernel - 1 - (index // dilation)
    if index + radius * dilation >= length:
        return (length - index - 1) // dilation
    return radius


def natten_tables(length, kernel, dilation):
    keys = np.zeros((length, kernel), dtype=int)
    bias = np.zeros((length, kernel), dtype=int)
    for i in range(length):
        start = natten_window_start(i, length, kernel, kernel // 2, dilation)
        pb = natten_pb_start(i, length, kernel, kernel // 2, dilation)
        for t in range(kernel):
            keys[i, t] = start + t * dilation
            bias[i, t] = pb + t
    return keys, bias


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_window_table_matches_natten_formulas(kernel, dilation):
    for length in range(kernel * dilation, 16):
        keys, bias = nat.window_table(length, kernel, dilation)
        ref_keys, ref_bias = natten_tables(length, kernel, dilation)
        np.testing.assert_array_equal(keys, ref_keys, err_msg=f"keys L={length} K={kernel} d={dilation}")
        np.testing.assert_array_equal(bias, ref_bias, err_msg=f"bias L={length} K={kernel} d={dilation}")


def test_the_reference_formulas_catch_a_centred_window():
    """The comparison above is not vacuous: a centred (zero-padded) window's bias index differs at borders."""
    keys, bias = natten_tables(7, 3, 1)
    centred_bias = np.tile(np.arange(1, 4), (7, 1))                    # r + t: the bias of an unclamped window
    assert not np.array_equal(bias, centred_bias)
    assert keys[0].tolist() == [0, 1, 2] and bias[0].tolist() == [2, 3, 4]   # clamped: keys right of the query


@given(length=st.integers(3, 30), kernel=st.sampled_from([3, 5, 7, 9]), dilation=st.integers(1, 5))
def test_window_properties(length, kernel, dilation):
    if kernel * dilation > length:
        return
    keys, bias = nat.window_table(length, kernel, dilation)
    index = np.arange(length)
    assert keys.min() >= 0 and keys.max() < length
    assert np.all(keys % dilation == (index % dilation)[:, None])           # same sub-grid as the query
    assert np.all(np.diff(keys, axis=1) == dilation)                        # K consecutive sub-grid tokens
    assert np.all((keys == index[:, None]).sum(axis=1) == 1)                # the query is its own neighbour
    # bias = key offset from the query in sub-grid steps, + K - 1
    np.testing.assert_array_equal(bias, (keys - index[:, None]) // dilation + kernel - 1)
    assert bias.min() >= 0 and bias.max() <= 2 * kernel - 2
    # away from the borders the window is centred
    radius = kernel // 2
    inner = (index - radius * dilation >= 0) & (index + radius * dilation < length)
    np.testing.assert_array_equal(keys[inner], index[inner, None] + (np.arange(kernel) - radius) * dilation)


# ---------------------------------------------------------------------------------------------
# the gather / scatter primitives


@given(length=st.integers(3, 13), kernel=st.sampled_from([3, 5]), dilation=st.integers(1, 3),
       axis=st.integers(0, 2), seed=st.integers(0, 10))
def test_neighbors_is_an_indexed_take_and_scatter_is_its_adjoint(length, kernel, dilation, axis, seed):
    if kernel * dilation > length:
        return
    rng = np.random.default_rng(seed)
    shape = [2, 3, 4]
    shape[axis] = length
    x = rng.standard_normal(shape)
    keys, _ = nat.window_table(length, kernel, dilation)
    gathered = host(nat.neighbors(ag.from_numpy(x), axis, kernel, dilation))
    np.testing.assert_array_equal(gathered, np.take(x, keys, axis=axis))
    # <gather(x), y> = <x, scatter(y)> with the scatter computed by np.add.at
    y = rng.standard_normal(gathered.shape)
    _, pullback = ag.vjp(lambda t: nat.neighbors(t, axis, kernel, dilation), ag.from_numpy(x))
    (scattered,) = pullback(ag.from_numpy(y))
    scattered = host(scattered)
    expected = np.zeros(shape)
    moved = np.moveaxis(y, (axis, axis + 1), (0, 1))                     # (L, K, ...)
    target = np.moveaxis(expected, axis, 0)
    np.add.at(target, keys.reshape(-1), moved.reshape((-1,) + moved.shape[2:]))
    np.testing.assert_allclose(scattered, expected, rtol=1e-13, atol=1e-13)


def test_neighbors_gradgradcheck():
    x = ag.from_numpy(np.random.default_rng(0).standard_normal((2, 7, 3)))
    f = lambda t: nat.neighbors(t, 1, 3, 2) ** 2  # noqa: E731
    assert ag.gradcheck(f, x, mode="full")
    assert ag.gradgradcheck(f, x)


# ---------------------------------------------------------------------------------------------
# invariants of the mechanism


def _params(dim, heads, kernel, seed=0, **kw):
    params = nat.init(np.random.default_rng(seed), dim, num_heads=heads, kernel_size=kernel, **kw)
    if kw.get("rel_pos_bias", True):        # a bias large enough to matter (init's std is 0.02)
        params["rpb"] = ag.from_numpy(np.random.default_rng(seed + 1).standard_normal(host(params["rpb"]).shape))
    return params


def _dense_reference(params, x, heads, qkv_bias=True):
    """Global attention with the relative bias rpb[h, yj - yi + K0 - 1, xj - xi + K1 - 1], explicitly."""
    x = host(x)
    b, height, width, dim = x.shape
    p = {k: host(v) for k, v in params.items()}
    qkv = x @ p["qkv.weight"].T + (p["qkv.bias"] if qkv_bias else 0)
    d = dim // heads
    q, k, v = (qkv[..., i * dim:(i + 1) * dim].reshape(b, height * width, heads, d).transpose(0, 2, 1, 3)
               for i in range(3))
    rows, cols = np.divmod(np.arange(height * width), width)
    rpb = p["rpb"]
    bias = rpb[:, rows[None, :] - rows[:, None] + height - 1, cols[None, :] - cols[:, None] + width - 1]
    logits = (q * d ** -0.5) @ k.transpose(0, 1, 3, 2) + bias
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, height, width, dim)
    return out @ p["proj.weight"].T + p["proj.bias"]


@given(height=st.sampled_from([1, 3, 5]), width=st.sampled_from([1, 3, 5, 7]), heads=st.sampled_from([1, 2]),
       seed=st.integers(0, 20))
def test_a_neighborhood_as_large_as_the_map_is_global_attention_plus_bias(height, width, heads, seed):
    if height == 1 or width == 1:       # NATTEN kernels are > 1; keep the axes odd and >= 3
        return
    params = _params(4, heads, (height, width), seed)
    x = ag.from_numpy(np.random.default_rng(seed).standard_normal((2, height, width, 4)))
    out = host(nat.nat(params, x, num_heads=heads, kernel_size=(height, width)))
    np.testing.assert_allclose(out, _dense_reference(params, x, heads), rtol=1e-12, atol=1e-12)


def test_the_dense_reference_sees_a_wrong_bias():
    params = _params(4, 2, (3, 5), 1)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 5, 4)))
    out = host(nat.nat(params, x, num_heads=2, kernel_size=(3, 5)))
    flipped = dict(params, rpb=ag.from_numpy(host(params["rpb"])[:, ::-1, ::-1].copy()))
    assert not np.allclose(out, _dense_reference(flipped, x, 2), atol=1e-3)


@given(height=st.integers(6, 11), width=st.integers(6, 11), d0=st.integers(1, 3), d1=st.integers(1, 3),
       seed=st.integers(0, 20))
def test_dilated_na_is_na_on_each_sub_grid(height, width, d0, d1, seed):
    kernel = 3
    if kernel * d0 > height or kernel * d1 > width:
        return
    params = _params(4, 2, kernel, seed)
    x = np.random.default_rng(seed).standard_normal((2, height, width, 4))
    out = host(nat.dinat(params, ag.from_numpy(x), num_heads=2, kernel_size=kernel, dilation=(d0, d1)))
    for g0 in range(d0):
        for g1 in range(d1):
            sub = np.ascontiguousarray(x[:, g0::d0, g1::d1])
            expected = host(nat.nat(params, ag.from_numpy(sub), num_heads=2, kernel_size=kernel))
            np.testing.assert_allclose(out[:, g0::d0, g1::d1], expected, rtol=1e-12, atol=1e-12)


def test_attention_maps_rows_sum_to_one_and_match_the_output():
    params = _params(6, 3, (3, 5), 2)
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((2, 5, 7, 6)))
    weights, keys = nat.attention_maps(params, x, num_heads=3, kernel_size=(3, 5))
    weights = host(weights)
    assert weights.shape == (2, 3, 5, 7, 15) and keys.shape == (5, 7, 15)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-13)
    # output = proj(sum_n w_n v[keys_n]) rebuilt from the maps
    p = {k: host(v) for k, v in params.items()}
    xs = host(x).reshape(2, 35, 6)
    v = (xs @ p["qkv.weight"][12:].T + p["qkv.bias"][12:]).reshape(2, 35, 3, 2)
    context = np.einsum("bhijn,bijnhe->bijhe", weights, v[:, keys]).reshape(2, 5, 7, 6)
    expected = context @ p["proj.weight"].T + p["proj.bias"]
    out = host(nat.nat(params, x, num_heads=3, kernel_size=(3, 5)))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_pad_small_is_zero_padding_before_qkv_and_a_crop_before_proj():
    params = _params(4, 2, 5, 3)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4))
    out = host(nat.nat(params, ag.from_numpy(x), num_heads=2, kernel_size=5, pad_small=True))
    padded = np.pad(x, ((0, 0), (0, 2), (0, 1), (0, 0)))
    expected = host(nat.nat(params, ag.from_numpy(padded), num_heads=2, kernel_size=5))[:, :3, :4]
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)
    # a large enough map is left alone
    big = np.random.default_rng(4).standard_normal((1, 6, 5, 4))
    np.testing.assert_array_equal(
        host(nat.nat(params, ag.from_numpy(big), num_heads=2, kernel_size=5, pad_small=True)),
        host(nat.nat(params, ag.from_numpy(big), num_heads=2, kernel_size=5)))


def test_without_rel_pos_bias_and_qkv_bias():
    params = nat.init(np.random.default_rng(0), 4, num_heads=2, kernel_size=3, qkv_bias=False, rel_pos_bias=False)
    assert set(params) == {"qkv.weight", "proj.weight", "proj.bias"}
    x = ag.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 3, 4)))
    out = host(nat.nat(params, x, num_heads=2, kernel_size=3, qkv_bias=False, rel_pos_bias=False))
    full = dict(params, rpb=ag.from_numpy(np.zeros((2, 5, 5))))
    ref = _dense_reference({**full, "qkv.bias": ag.from_numpy(np.zeros(12))}, x, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(KeyError, match="nat.*'rpb'"):
        nat.nat(params, x, num_heads=2, kernel_size=3, qkv_bias=False)


def test_gradcheck_full_on_borders_and_bias():
    """Every parameter and input, full Jacobian, on a map where most queries sit at a clamped border."""
    params = _params(4, 2, (3, 5), 5)
    x = ag.from_numpy(np.random.default_rng(5).standard_normal((1, 4, 6, 4)))
    f = lambda p, t: nat.dinat(p, t, num_heads=2, kernel_size=(3, 5), dilation=(1, 1))  # noqa: E731
    assert ag.gradcheck(f, params, x, mode="full")
    g = lambda p, t: nat.dinat(p, t, num_heads=2, kernel_size=3, dilation=(2, 2))  # noqa: E731
    assert ag.gradcheck(g, _params(4, 2, 3, 6), ag.from_numpy(np.random.default_rng(6).standard_normal((1, 7, 6, 4))),
                        mode="full")


def test_a_nan_reaches_exactly_the_queries_that_read_it():
    params = _params(4, 2, 3, 7)
    x = np.random.default_rng(7).standard_normal((1, 7, 8, 4))
    x[0, 0, 5] = np.nan
    out = host(nat.dinat(params, ag.from_numpy(x), num_heads=2, kernel_size=3, dilation=2))
    rows, _ = nat.window_table(7, 3, 2)
    cols, _ = nat.window_table(8, 3, 2)
    reads = (rows == 0).any(1)[:, None] & (cols == 5).any(1)[None, :]        # (H, W): 0 and 5 in the window
    np.testing.assert_array_equal(np.isnan(out[0]).any(-1), reads)
    assert reads.sum() < reads.size


def test_errors_name_the_mechanism_and_argument():
    params = _params(4, 2, 3)
    x = ag.from_numpy(np.zeros((1, 5, 5, 4)))
    with pytest.raises(ValueError, match=r"dinat: x spatial size \(5, 5\) is smaller than kernel_size \* dilation"):
        npattn.get("dinat").apply(params, x)
    with pytest.raises(ValueError, match="nat: kernel_size must be odd"):
        nat.nat(params, x, num_heads=2, kernel_size=4)
    with pytest.raises(ValueError, match="nat: dilation must be a positive integer"):
        nat.nat(params, x, num_heads=2, kernel_size=3, dilation=0)
    with pytest.raises(ValueError, match="nat: the width C=4 of qkv.weight must be divisible by num_heads=3"):
        nat.nat(params, x, num_heads=3, kernel_size=3)
    with pytest.raises(ValueError, match="nat: qk_scale must be positive"):
        nat.nat(params, x, num_heads=2, kernel_size=3, qk_scale=-1.0)
    with pytest.raises(ValueError, match="nat: parameter 'rpb' must have shape"):
        nat.nat(params, x, num_heads=2, kernel_size=5)
    with pytest.raises(ValueError, match="nat: x must have 4 channels"):
        nat.nat(params, ag.from_numpy(np.zeros((1, 5, 5, 3))), num_heads=2, kernel_size=3)
    with pytest.raises(ValueError, match="nat: kernel_size must be odd"):
        nat.init(np.random.default_rng(0), 4, num_heads=2, kernel_size=(3, 2))
