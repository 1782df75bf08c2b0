"""ViT attention (timm ``Attention``): an explicit NumPy transcription of timm's manual path, the norm-then-scale
order, masks (boolean = additive -inf, causal, fully masked rows), token permutation equivariance, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from npattn.transformer import vit
from tests.conftest import host


def _params(dim, heads, seed=0, **kw):
    params = vit.init(np.random.default_rng(seed), dim, num_heads=heads, **kw)
    rng = np.random.default_rng(seed + 100)
    for key in params:                                  # norms away from (1, 0) so they matter
        if "norm" in key:
            params[key] = ag.from_numpy(rng.uniform(0.5, 1.5, host(params[key]).shape) if key.endswith("weight")
                                        else 0.3 * rng.standard_normal(host(params[key]).shape))
    return params


def _layer_norm(t, weight, bias, eps):
    mean = t.mean(-1, keepdims=True)
    var = ((t - mean) ** 2).mean(-1, keepdims=True)
    return (t - mean) / np.sqrt(var + eps) * weight + bias


def timm_manual(params, x, heads, head_dim=None, qk_norm=False, scale_norm=False, qkv_bias=False, proj_bias=True,
                eps=1e-6, additive=None, scale_before_norm=False):
    """timm's non-fused path, line by line, on host arrays."""
    p = {k: host(v) for k, v in params.items()}
    x = host(x)
    b, n, c = x.shape
    head_dim = head_dim or c // heads
    qkv = x @ p["qkv.weight"].T + (p["qkv.bias"] if qkv_bias else 0)
    qkv = qkv.reshape(b, n, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = head_dim ** -0.5
    if scale_before_norm:
        q = q * scale
    if qk_norm:
        q = _layer_norm(q, p["q_norm.weight"], p["q_norm.bias"], eps)
        k = _layer_norm(k, p["k_norm.weight"], p["k_norm.bias"], eps)
    if not scale_before_norm:
        q = q * scale
    attn = q @ k.transpose(0, 1, 3, 2)
    if additive is not None:
        attn = attn + additive
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, heads * head_dim)
    if scale_norm:
        out = _layer_norm(out, p["norm.weight"], p["norm.bias"], eps)
    return out @ p["proj.weight"].T + (p["proj.bias"] if proj_bias else 0)


STRUCTURES = [
    dict(),
    dict(qkv_bias=True),
    dict(qkv_bias=True, qk_norm=True),
    dict(qk_norm=True, scale_norm=True, proj_bias=False),
    dict(attn_head_dim=3, dim_out=5, qk_norm=True),
]


@pytest.mark.parametrize("structure", STRUCTURES, ids=lambda s: ",".join(s) or "default")
def test_matches_timm_manual_path(structure):
    params = _params(8, 2, 1, **structure)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((3, 6, 8)))
    out = host(vit.vit_attention(params, x, num_heads=2, **structure))
    kw = {k: v for k, v in structure.items() if k != "dim_out"}
    head_dim = kw.pop("attn_head_dim", None)
    np.testing.assert_allclose(out, timm_manual(params, x, 2, head_dim, **kw), rtol=1e-12, atol=1e-12)


def test_scale_after_the_norm_is_what_is_checked():
    params = _params(8, 2, 2, qk_norm=True)
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((1, 5, 8)))
    out = host(vit.vit_attention(params, x, num_heads=2, qk_norm=True))
    wrong = timm_manual(params, x, 2, qk_norm=True, scale_before_norm=True)
    assert np.abs(out - wrong).max() > 1e-3


def test_boolean_mask_equals_additive_minus_inf_and_a_causal_mask():
    params = _params(8, 2, 3, qkv_bias=True)
    x = ag.from_numpy(np.random.default_rng(3).standard_normal((2, 5, 8)))
    keep = np.random.default_rng(4).random((2, 1, 5, 5)) < 0.6
    keep[..., 0] = True                                          # no empty row here
    additive = np.where(keep, 0.0, -np.inf)
    kw = dict(num_heads=2, qkv_bias=True)
    by_bool = host(vit.vit_attention(params, x, attn_mask=ag.from_numpy(keep), **kw))
    by_float = host(vit.vit_attention(params, x, attn_mask=ag.from_numpy(additive), **kw))
    np.testing.assert_array_equal(by_bool, by_float)
    np.testing.assert_allclose(by_bool, timm_manual(params, x, 2, qkv_bias=True, additive=additive), rtol=1e-12,
                               atol=1e-12)
    causal = host(vit.vit_attention(params, x, is_causal=True, **kw))
    tril = host(vit.vit_attention(params, x, attn_mask=ag.from_numpy(np.tril(np.ones((5, 5), bool))), **kw))
    np.testing.assert_array_equal(causal, tril)
    # a finite float mask is a bias
    bias = np.random.default_rng(5).standard_normal((5, 5))
    np.testing.assert_allclose(host(vit.vit_attention(params, x, attn_mask=ag.from_numpy(bias), **kw)),
                               timm_manual(params, x, 2, qkv_bias=True, additive=bias), rtol=1e-12, atol=1e-12)


def test_fully_masked_rows_give_zero_context_or_nan():
    params = _params(8, 2, 6, proj_bias=False)
    x = ag.from_numpy(np.random.default_rng(6).standard_normal((1, 4, 8)))
    keep = np.ones((4, 4), bool)
    keep[2] = False
    out, pullback = ag.vjp(lambda t: vit.vit_attention(params, t, num_heads=2, proj_bias=False,
                                                       attn_mask=ag.from_numpy(keep)), x)
    out = host(out)
    np.testing.assert_array_equal(out[0, 2], 0.0)                    # proj without bias: the context is 0
    assert np.all(np.isfinite(out))
    (grad,) = pullback(ag.from_numpy(np.ones((1, 4, 8))))
    assert np.all(np.isfinite(host(grad)))
    nan = host(vit.vit_attention(params, x, num_heads=2, proj_bias=False, attn_mask=ag.from_numpy(keep),
                                 masked_rows="nan"))
    assert np.isnan(nan[0, 2]).all() and np.isfinite(np.delete(nan[0], 2, axis=0)).all()
    np.testing.assert_array_equal(np.delete(nan[0], 2, axis=0), np.delete(out[0], 2, axis=0))


@given(n=st.integers(1, 7), heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 50))
def test_permuting_tokens_permutes_the_output(n, heads, seed):
    params = _params(8, heads, seed, qkv_bias=True, qk_norm=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n, 8))
    perm = rng.permutation(n)
    out = host(vit.vit_attention(params, ag.from_numpy(x), num_heads=heads, qkv_bias=True, qk_norm=True))
    permuted = host(vit.vit_attention(params, ag.from_numpy(x[:, perm]), num_heads=heads, qkv_bias=True,
                                      qk_norm=True))
    np.testing.assert_allclose(permuted, out[:, perm], rtol=1e-12, atol=1e-12)


def test_gradcheck_full_with_norms_and_mask():
    params = _params(6, 2, 7, qkv_bias=True, qk_norm=True, scale_norm=True, attn_head_dim=2)
    x = ag.from_numpy(np.random.default_rng(7).standard_normal((2, 4, 6)))
    bias = ag.from_numpy(np.random.default_rng(8).standard_normal((4, 4)))
    f = lambda p, t: vit.vit_attention(p, t, num_heads=2, qkv_bias=True, qk_norm=True,  # noqa: E731
                                       scale_norm=True, attn_head_dim=2, attn_mask=bias)
    assert ag.gradcheck(f, params, x, mode="full")


def test_errors():
    params = _params(8, 2)
    x = ag.from_numpy(np.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="vit-attention: pass attn_mask or is_causal"):
        vit.vit_attention(params, x, num_heads=2, is_causal=True, attn_mask=ag.from_numpy(np.ones((3, 3), bool)))
    with pytest.raises(ValueError, match=r"vit-attention: attn_mask must be an array broadcastable to \(B, heads, 3"):
        vit.vit_attention(params, x, num_heads=2, attn_mask=ag.from_numpy(np.ones((4, 4), bool)))
    with pytest.raises(TypeError, match="vit-attention: attn_mask must be boolean or of the parameters' dtype"):
        vit.vit_attention(params, x, num_heads=2, attn_mask=ag.from_numpy(np.ones((3, 3), np.float32)))
    with pytest.raises(ValueError, match="vit-attention: masked_rows must be one of"):
        vit.vit_attention(params, x, num_heads=2, masked_rows="inf")
    with pytest.raises(ValueError, match="vit-attention: dim=8 must be divisible by num_heads=3"):
        vit.vit_attention(params, x, num_heads=3)
    with pytest.raises(ValueError, match="vit-attention: parameter 'qkv.weight' must have shape"):
        vit.vit_attention(params, x, num_heads=2, attn_head_dim=2)
    with pytest.raises(KeyError, match="vit-attention.*'q_norm.weight'"):
        vit.vit_attention(params, x, num_heads=2, qk_norm=True)
    with pytest.raises(ValueError, match=r"vit-attention: x must be 3-D \(B, N, C\)"):
        vit.vit_attention(params, ag.from_numpy(np.zeros((1, 2, 3, 8))), num_heads=2)


@pytest.mark.parametrize("masked_rows", ["zero", "nan"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_no_tokens_give_the_empty_result(masked_rows, is_causal):
    """0 tokens (timm's Attention runs on them: torch's softmax of an empty axis is empty): an empty output and
    zero parameter gradients on both softmax paths (the manual 'nan' path took a max over the empty axis)."""
    params = _params(8, 2)
    x = ag.from_numpy(np.zeros((2, 0, 8)))

    def loss(p, x):
        return ag.sum(vit.vit_attention(p, x, num_heads=2, is_causal=is_causal, masked_rows=masked_rows))

    out = vit.vit_attention(params, x, num_heads=2, is_causal=is_causal, masked_rows=masked_rows)
    grads, dx = ag.grad(loss, argnums=(0, 1))(params, x)
    assert out.shape == (2, 0, 8) and host(dx).shape == (2, 0, 8)
    assert all(not np.any(host(g)) for g in grads.values())
