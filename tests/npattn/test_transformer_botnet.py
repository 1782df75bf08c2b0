"""BoTNet MHSA: an explicit-loop reference of the gist's relative logits (both scalings, H != W), the key - query
offset, flip/transpose symmetries of the relative embeddings, stride, timm's head sizes, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from npattn.transformer import botnet
from tests.conftest import host


def _params(dim, size, heads, seed=0, **kw):
    return botnet.init(np.random.default_rng(seed), dim, size, num_heads=heads, **kw)


def loop_reference(params, x, heads, qk, v, scale_pos_embed=True, offset="key-query", qkv_bias=False):
    p = {k: host(t) for k, t in params.items()}
    x = host(x)
    b_, c, height, width = x.shape
    w = p["qkv.weight"][:, :, 0, 0]
    proj = np.einsum("oc,bchw->bohw", w, x) + (p["qkv.bias"][:, None, None] if qkv_bias else 0)
    q_all, k_all, v_all = proj[:, :heads * qk], proj[:, heads * qk:2 * heads * qk], proj[:, 2 * heads * qk:]
    rel_h, rel_w = p["pos_embed.height_rel"], p["pos_embed.width_rel"]
    s = qk ** -0.5
    out = np.zeros((b_, heads * v, height, width))
    sign = 1 if offset == "key-query" else -1
    for b in range(b_):
        for m in range(heads):
            q, k, val = (t[b, m * n:(m + 1) * n] for t, n in ((q_all, qk), (k_all, qk), (v_all, v)))
            for x0 in range(height):
                for y0 in range(width):
                    logits = np.zeros((height, width))
                    for x1 in range(height):
                        for y1 in range(width):
                            qv = q[:, x0, y0]
                            content = qv @ k[:, x1, y1]
                            rel = qv @ (rel_h[sign * (x1 - x0) + height - 1] + rel_w[sign * (y1 - y0) + width - 1])
                            logits[x1, y1] = s * (content + rel) if scale_pos_embed else s * content + rel
                    a = np.exp(logits - logits.max())
                    a /= a.sum()
                    out[b, m * v:(m + 1) * v, x0, y0] = np.einsum("xy,cxy->c", a, val)
    return out


@pytest.mark.parametrize("scale_pos_embed", [True, False])
@pytest.mark.parametrize("dim,size,heads,kw", [(8, (4, 5), 2, {}), (8, (3, 3), 4, {"dim_head": 3}),
                                               (12, (2, 6), 3, {"dim_out": 6, "qkv_bias": True}),
                                               (4, (1, 3), 1, {})])
def test_matches_the_gist_loop_reference(dim, size, heads, kw, scale_pos_embed):
    params = _params(dim, size, heads, 1, **kw)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((2, dim) + size))
    out = host(botnet.botnet(params, x, num_heads=heads, scale_pos_embed=scale_pos_embed, **kw))
    _, qk, v = botnet.head_dims(dim, heads, kw.get("dim_out"), kw.get("dim_head"))
    ref = loop_reference(params, x, heads, qk, v, scale_pos_embed, qkv_bias=kw.get("qkv_bias", False))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_the_offset_is_key_minus_query_and_the_scalings_differ():
    params = _params(8, (4, 5), 2, 2)
    params["pos_embed.height_rel"] = ag.from_numpy(np.random.default_rng(3).standard_normal((7, 4)))
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((1, 8, 4, 5)))
    out = host(botnet.botnet(params, x, num_heads=2))
    assert np.abs(out - loop_reference(params, x, 2, 4, 4, offset="query-key")).max() > 1e-3
    assert np.abs(out - host(botnet.botnet(params, x, num_heads=2, scale_pos_embed=False))).max() > 1e-3


@given(height=st.integers(1, 4), width=st.integers(1, 4), scaled=st.booleans(), seed=st.integers(0, 30))
def test_flips_and_transposes_carry_over_to_the_embeddings(height, width, scaled, seed):
    params = _params(4, (height, width), 2, seed, dim_head=3)
    x = np.random.default_rng(seed).standard_normal((2, 4, height, width))
    kw = dict(num_heads=2, dim_head=3, scale_pos_embed=scaled)
    out = host(botnet.botnet(params, ag.from_numpy(x), **kw))
    rel_h, rel_w = host(params["pos_embed.height_rel"]), host(params["pos_embed.width_rel"])
    flipped = dict(params, **{"pos_embed.height_rel": ag.from_numpy(rel_h[::-1].copy())})
    np.testing.assert_allclose(host(botnet.botnet(flipped, ag.from_numpy(x[:, :, ::-1].copy()), **kw)),
                               out[:, :, ::-1], rtol=1e-12, atol=1e-12)
    swapped = dict(params, **{"pos_embed.height_rel": ag.from_numpy(rel_w),
                              "pos_embed.width_rel": ag.from_numpy(rel_h)})
    np.testing.assert_allclose(host(botnet.botnet(swapped, ag.from_numpy(x.transpose(0, 1, 3, 2).copy()), **kw)),
                               out.transpose(0, 1, 3, 2), rtol=1e-12, atol=1e-12)


def test_stride_two_is_an_average_pool():
    params = _params(8, (4, 6), 2, 4)
    x = ag.from_numpy(np.random.default_rng(4).standard_normal((2, 8, 4, 6)))
    full = host(botnet.botnet(params, x, num_heads=2))
    strided = host(botnet.botnet(params, x, num_heads=2, stride=2))
    np.testing.assert_allclose(strided, full.reshape(2, 8, 2, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-12, atol=1e-12)


def test_timm_head_sizes():
    # make_divisible(v, 8): v rounded to the nearest multiple of 8, bumped up when that loses more than 10%
    assert [botnet.make_divisible(v) for v in (1, 8, 11, 12, 20, 25, 100, 132)] == [8, 8, 16, 16, 24, 24, 104, 136]
    assert botnet.head_dims(256, 4) == (4, 64, 64)
    assert botnet.head_dims(256, 4, dim_out=512, qk_ratio=0.25) == (4, 32, 128)
    assert botnet.head_dims(48, 4, qk_ratio=0.5) == (4, 6, 12)


def test_gradcheck_full_both_scalings():
    params = _params(4, (2, 3), 2, 5, dim_head=2, qkv_bias=True)
    x = ag.from_numpy(np.random.default_rng(5).standard_normal((2, 4, 2, 3)))
    for scaled in (True, False):
        f = lambda p, t: botnet.botnet(p, t, num_heads=2, dim_head=2, qkv_bias=True,  # noqa: E731
                                       scale_pos_embed=scaled)  # noqa: B023
        assert ag.gradcheck(f, params, x, mode="full")


def test_errors():
    params = _params(8, (4, 5), 2)
    x = ag.from_numpy(np.zeros((1, 8, 4, 5)))
    with pytest.raises(ValueError, match=r"botnet: parameter 'pos_embed.height_rel' must have shape \(9, 4\)"):
        botnet.botnet(params, ag.from_numpy(np.zeros((1, 8, 5, 5))), num_heads=2)
    with pytest.raises(ValueError, match="botnet: stride must be 1 or 2"):
        botnet.botnet(params, x, num_heads=2, stride=3)
    with pytest.raises(ValueError, match="botnet: dim_out=8 must be divisible by num_heads=3"):
        botnet.botnet(params, x, num_heads=3)
    with pytest.raises(ValueError, match="botnet: parameter 'qkv.weight' must have shape"):
        botnet.botnet(params, x, num_heads=2, dim_head=2)
