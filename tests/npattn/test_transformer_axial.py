"""Axial-DeepLab's position-sensitive axial attention: an explicit-loop reference of the official equations in
eval mode, H/W symmetry, the key - query offset of the key term, stride, the official state_dict, errors."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
import npattn
from npattn.transformer import axial
from tests.conftest import host


def _params(in_planes, out_planes, groups, kernel, seed=0):
    params = axial.init(np.random.default_rng(seed), in_planes, out_planes, groups=groups, kernel_size=kernel)
    rng = np.random.default_rng(seed + 1)
    for key in list(params):                       # BatchNorms away from the identity, so eval mode reads them
        shape = host(params[key]).shape
        if key.endswith(("running_mean", "bias")) and key != "relative":
            params[key] = ag.from_numpy(0.3 * rng.standard_normal(shape))
        elif key.endswith(("running_var", "weight")) and key.startswith("bn"):
            params[key] = ag.from_numpy(rng.uniform(0.5, 1.5, shape))
    return params


def _bn(value, p, prefix, channel, eps=1e-5):
    return ((value - p[f"{prefix}.running_mean"][channel]) / math.sqrt(p[f"{prefix}.running_var"][channel] + eps)
            * p[f"{prefix}.weight"][channel] + p[f"{prefix}.bias"][channel])


def loop_reference(params, x, groups, key_offset="key-query"):
    """Eval-mode AxialAttention along H, loop by loop from the equations of the module docstring."""
    p = {k: host(v) for k, v in params.items()}
    x = host(x)
    b_, c_in, height, width = x.shape
    out_planes = p["qkv_transform.weight"].shape[0] // 2
    gp = out_planes // groups
    half, rel = gp // 2, p["relative"]
    out = np.zeros((b_, out_planes, height, width))
    w_qkv = p["qkv_transform.weight"][:, :, 0]
    for b in range(b_):
        for col in range(width):
            line = x[b, :, :, col]                                                   # (C_in, K)
            qkv = np.stack([_bn(w_qkv[o] @ line, p, "bn_qkv", o) for o in range(2 * out_planes)])
            for g in range(groups):
                base = 2 * gp * g
                q, k, v = qkv[base:base + half], qkv[base + half:base + gp], qkv[base + gp:base + 2 * gp]
                logits = np.zeros((height, height))
                for i in range(height):
                    for j in range(height):
                        kr_offset = (j - i) if key_offset == "key-query" else (i - j)
                        qk = q[:, i] @ k[:, j]
                        qr = q[:, i] @ rel[:half, i - j + height - 1]
                        kr = k[:, j] @ rel[half:gp, kr_offset + height - 1]
                        logits[i, j] = (_bn(qk, p, "bn_similarity", g) + _bn(qr, p, "bn_similarity", groups + g)
                                        + _bn(kr, p, "bn_similarity", 2 * groups + g))
                a = np.exp(logits - logits.max(1, keepdims=True))
                a /= a.sum(1, keepdims=True)
                for c in range(gp):
                    o = g * gp + c
                    for i in range(height):
                        sv = sum(a[i, j] * v[c, j] for j in range(height))
                        sve = sum(a[i, j] * rel[gp + c, i - j + height - 1] for j in range(height))
                        out[b, o, i, col] = _bn(sv, p, "bn_output", 2 * o) + _bn(sve, p, "bn_output", 2 * o + 1)
    return out


@pytest.mark.parametrize("in_planes,out_planes,groups,height,width", [(6, 8, 2, 5, 4), (4, 4, 1, 3, 2),
                                                                       (9, 12, 3, 6, 3)])
def test_matches_the_loop_reference(in_planes, out_planes, groups, height, width):
    params = _params(in_planes, out_planes, groups, height, 1)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((2, in_planes, height, width)))
    out = host(axial.axial(params, x, groups=groups))
    np.testing.assert_allclose(out, loop_reference(params, x, groups), rtol=1e-12, atol=1e-12)


def test_the_key_term_reads_the_key_minus_query_offset():
    params = _params(6, 8, 2, 5, 2)
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((1, 6, 5, 2)))
    out = host(axial.axial(params, x, groups=2))
    assert np.abs(out - loop_reference(params, x, 2, key_offset="query-key")).max() > 1e-3


@given(height=st.integers(2, 6), width=st.integers(1, 5), groups=st.sampled_from([1, 2]), seed=st.integers(0, 30))
def test_attending_along_w_is_attending_along_h_of_the_transpose(height, width, groups, seed):
    params = _params(4, 4 * groups, groups, height, seed)
    x = np.random.default_rng(seed).standard_normal((2, 4, height, width))
    along_h = host(axial.axial(params, ag.from_numpy(x), groups=groups))
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2))
    along_w = host(axial.axial(params, ag.from_numpy(transposed), groups=groups, width=True))
    np.testing.assert_allclose(along_w, along_h.transpose(0, 1, 3, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [False, True])
def test_stride_is_an_average_pool_of_the_stride_one_output(train):
    params = _params(4, 4, 1, 6, 3)
    x = ag.from_numpy(np.random.default_rng(3).standard_normal((2, 4, 6, 5)))
    full = host(axial.axial(params, x, groups=1, train=train))
    strided = host(axial.axial(params, x, groups=1, stride=2, train=train))
    expected = full[:, :, :6, :4].reshape(2, 4, 3, 2, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(strided, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_full_eval_and_train():
    params = _params(4, 4, 1, 3, 4)
    x = ag.from_numpy(np.random.default_rng(4).standard_normal((2, 4, 2, 3)))
    floats = npattn.trainable(params)
    for train in (False, True):
        f = lambda fp, t: axial.axial({**params, **fp}, t, groups=1, width=True, train=train)  # noqa: E731,B023
        assert ag.gradcheck(f, floats, x, mode="full")


def test_official_state_dict_buffer_is_checked_and_dropped():
    params = _params(4, 4, 1, 3)
    index = ag.from_numpy(axial.relative_index(3).reshape(-1).astype(np.int64))
    state = {**params, "flatten_index": index}
    assert set(axial.from_official_state_dict(state)) == set(params)
    with pytest.raises(ValueError, match="axial: 'flatten_index' is not the official"):
        axial.from_official_state_dict({**params, "flatten_index": ag.from_numpy(np.arange(9, dtype=np.int64))})
    with pytest.raises(KeyError, match="flatten_index"):
        axial.from_official_state_dict(params)
    # the official index (key_index - query_index + K - 1 with key rows, query columns) is this table
    kernel = 4
    query_index, key_index = np.arange(kernel)[None, :], np.arange(kernel)[:, None]
    np.testing.assert_array_equal((key_index - query_index + kernel - 1).reshape(-1),
                                  axial.relative_index(kernel).reshape(-1))


def test_errors():
    params = _params(6, 8, 2, 5)
    x = ag.from_numpy(np.zeros((1, 6, 5, 4)))
    with pytest.raises(ValueError, match=r"axial: parameter 'relative' must have shape \(8, 7\) for an attended axis"):
        axial.axial(params, ag.from_numpy(np.zeros((1, 6, 4, 4))), groups=2)
    with pytest.raises(ValueError, match="axial: in_planes=6 and out_planes=8 must be divisible by groups=4"):
        axial.axial(params, x, groups=4)
    with pytest.raises(ValueError, match="axial: parameter 'bn_similarity.weight' must have shape"):
        axial.axial(params, x, groups=1)
    with pytest.raises(ValueError, match="axial: out_planes / groups = 3 must be even"):
        axial.init(np.random.default_rng(0), 6, 6, groups=2, kernel_size=3)
    with pytest.raises(ValueError, match="axial: x must have 6 channels"):
        axial.axial(params, ag.from_numpy(np.zeros((1, 5, 5, 4))), groups=2)
    with pytest.raises(ValueError, match="axial: stride must be a positive integer"):
        axial.axial(params, x, groups=2, stride=0)
