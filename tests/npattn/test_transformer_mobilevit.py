"""MobileViT-v2 separable self-attention: the equations in NumPy (self and cross), the softmax over patches,
equivariance to permutations of patches and of pixels, the patch unfold/fold helpers against explicit loops."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from npattn.transformer import mobilevit as mv
from tests.conftest import host


def _params(dim, bias=True, seed=0):
    return mv.init(np.random.default_rng(seed), dim, bias=bias)


def reference(params, x, x_prev=None, bias=True, softmax_axis=-1):
    p = {k: host(v) for k, v in params.items()}
    x = host(x)
    dim = x.shape[1]
    w = p["qkv_proj.weight"][:, :, 0, 0]
    b = p["qkv_proj.bias"] if bias else np.zeros(1 + 2 * dim)
    source = x if x_prev is None else host(x_prev)
    qk = np.einsum("oc,bcpn->bopn", w[:1 + dim], source) + b[:1 + dim, None, None]
    value = np.einsum("oc,bcpn->bopn", w[1 + dim:], x) + b[1 + dim:, None, None]
    i, key = qk[:, :1], qk[:, 1:]
    c = np.exp(i - i.max(softmax_axis, keepdims=True))
    c /= c.sum(softmax_axis, keepdims=True)
    cv = (key * c).sum(-1, keepdims=True)
    out = np.maximum(value, 0) * cv
    wo = p["out_proj.weight"][:, :, 0, 0]
    return np.einsum("oc,bcpn->bopn", wo, out) + (p["out_proj.bias"][:, None, None] if bias else 0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (1, 3, 1, 1), (3, 4, 9, 2)])
def test_matches_the_equations(shape, bias):
    params = _params(shape[1], bias, 1)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal(shape))
    np.testing.assert_allclose(host(mv.mobilevit_v2(params, x, bias=bias)), reference(params, x, bias=bias),
                               rtol=1e-12, atol=1e-12)


def test_cross_attention_takes_query_and_keys_from_x_prev():
    params = _params(6, seed=2)
    rng = np.random.default_rng(2)
    x, x_prev = ag.from_numpy(rng.standard_normal((2, 6, 4, 5))), ag.from_numpy(rng.standard_normal((2, 6, 4, 7)))
    out = host(mv.mobilevit_v2(params, x, x_prev=x_prev))
    np.testing.assert_allclose(out, reference(params, x, x_prev), rtol=1e-12, atol=1e-12)
    assert out.shape == (2, 6, 4, 5)
    # with x_prev = x it is self-attention
    np.testing.assert_allclose(host(mv.mobilevit_v2(params, x, x_prev=x)), host(mv.mobilevit_v2(params, x)),
                               rtol=1e-13, atol=1e-13)


def test_the_softmax_runs_over_patches_not_pixels():
    params = _params(6, seed=3)
    x = ag.from_numpy(np.random.default_rng(3).standard_normal((1, 6, 4, 5)))
    assert np.abs(host(mv.mobilevit_v2(params, x)) - reference(params, x, softmax_axis=2)).max() > 1e-2


@given(pixels=st.integers(1, 5), patches=st.integers(1, 6), seed=st.integers(0, 50))
def test_equivariant_to_permutations_of_patches_and_of_pixels(pixels, patches, seed):
    rng = np.random.default_rng(seed)
    params = _params(4, seed=seed)
    x = rng.standard_normal((2, 4, pixels, patches))
    out = host(mv.mobilevit_v2(params, ag.from_numpy(x)))
    pp, pn = rng.permutation(pixels), rng.permutation(patches)
    moved = host(mv.mobilevit_v2(params, ag.from_numpy(np.ascontiguousarray(x[:, :, pp][:, :, :, pn]))))
    np.testing.assert_allclose(moved, out[:, :, pp][:, :, :, pn], rtol=1e-12, atol=1e-12)


@given(ph=st.integers(1, 3), pw=st.integers(1, 3), nh=st.integers(1, 3), nw=st.integers(1, 3))
def test_patch_unfold_is_timm_layout_and_fold_inverts_it(ph, pw, nh, nw):
    x = np.random.default_rng(ph * 10 + pw).standard_normal((2, 3, ph * nh, pw * nw))
    patches = host(mv.unfold_patches(ag.from_numpy(x), (ph, pw)))
    expected = np.zeros((2, 3, ph * pw, nh * nw))
    for a in range(nh):
        for b in range(nw):
            for i in range(ph):
                for j in range(pw):
                    expected[:, :, i * pw + j, a * nw + b] = x[:, :, a * ph + i, b * pw + j]
    np.testing.assert_array_equal(patches, expected)
    back = host(mv.fold_patches(ag.from_numpy(patches), (ph * nh, pw * nw), (ph, pw)))
    np.testing.assert_array_equal(back, x)


def test_gradcheck_full_self_and_cross():
    params = _params(3, seed=4)
    rng = np.random.default_rng(4)
    x, x_prev = ag.from_numpy(rng.standard_normal((2, 3, 2, 3))), ag.from_numpy(rng.standard_normal((2, 3, 2, 4)))
    assert ag.gradcheck(lambda p, t: mv.mobilevit_v2(p, t), params, x, mode="full")
    assert ag.gradcheck(lambda p, t, s: mv.mobilevit_v2(p, t, x_prev=s), params, x, x_prev, mode="full")


def test_errors():
    params = _params(4)
    x = ag.from_numpy(np.zeros((1, 4, 2, 3)))
    with pytest.raises(ValueError, match="mobilevit-v2: x_prev .* must have the batch size and pixels per patch"):
        mv.mobilevit_v2(params, x, x_prev=ag.from_numpy(np.zeros((1, 4, 3, 3))))
    with pytest.raises(ValueError, match="mobilevit-v2: x_prev must have 4 channels"):
        mv.mobilevit_v2(params, x, x_prev=ag.from_numpy(np.zeros((1, 5, 2, 3))))
    with pytest.raises(KeyError, match="mobilevit-v2.*'qkv_proj.bias'"):
        mv.mobilevit_v2(params, x, bias=False)
    with pytest.raises(ValueError, match=r"mobilevit-v2: the map \(3, 4\) must be a multiple of patch_size"):
        mv.unfold_patches(ag.from_numpy(np.zeros((1, 2, 3, 4))), 2)
    with pytest.raises(ValueError, match="mobilevit-v2: parameter 'qkv_proj.weight' must have shape"):
        mv.mobilevit_v2({**params, "qkv_proj.weight": ag.from_numpy(np.zeros((8, 4, 1, 1)))}, x)
