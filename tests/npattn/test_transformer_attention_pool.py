"""CLIP attention pooling: an explicit NumPy transcription, invariants (a permutation of positions together
with their embeddings, uniform attention when q_proj is zero), the mean-before-P order, the fixed grid."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
from npattn.transformer import attention_pool as ap
from tests.conftest import host


def _params(side, dim, heads, out=None, seed=0):
    return ap.init(np.random.default_rng(seed), side, dim, num_heads=heads, output_dim=out)


def clip_reference(params, x, heads, mean_after_pos=False):
    p = {k: host(v) for k, v in params.items()}
    x = host(x)
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).transpose(0, 2, 1)
    if mean_after_pos:
        with_pos = tokens + p["positional_embedding"][1:]
        tokens = np.concatenate([with_pos.mean(1, keepdims=True) + p["positional_embedding"][:1], with_pos], 1)
    else:
        tokens = np.concatenate([tokens.mean(1, keepdims=True), tokens], 1) + p["positional_embedding"]
    d = c // heads
    out = []
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        q = tokens[:, 0] @ p["q_proj.weight"][cols].T + p["q_proj.bias"][cols]          # (B, d)
        k = tokens @ p["k_proj.weight"][cols].T + p["k_proj.bias"][cols]                # (B, HW+1, d)
        v = tokens @ p["v_proj.weight"][cols].T + p["v_proj.bias"][cols]
        logits = np.einsum("bd,bnd->bn", q, k) / np.sqrt(d)
        a = np.exp(logits - logits.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        out.append(np.einsum("bn,bnd->bd", a, v))
    return np.concatenate(out, 1) @ p["c_proj.weight"].T + p["c_proj.bias"]


@pytest.mark.parametrize("side,dim,heads,out", [(1, 4, 1, None), (3, 16, 4, 12), (4, 12, 3, 5), (2, 8, 8, None)])
def test_matches_clip_reference(side, dim, heads, out):
    params = _params(side, dim, heads, out, 1)
    x = ag.from_numpy(np.random.default_rng(1).standard_normal((3, dim, side, side)))
    y = host(ap.attention_pool(params, x, num_heads=heads, output_dim=out))
    assert y.shape == (3, out or dim)
    np.testing.assert_allclose(y, clip_reference(params, x, heads), rtol=1e-12, atol=1e-12)


def test_the_mean_is_taken_before_the_positional_embedding():
    params = _params(3, 16, 4, seed=2)
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((2, 16, 3, 3)))
    y = host(ap.attention_pool(params, x, num_heads=4))
    assert np.abs(y - clip_reference(params, x, 4, mean_after_pos=True)).max() > 1e-3


@given(side=st.integers(1, 4), heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 50))
def test_permuting_positions_with_their_embeddings_changes_nothing(side, heads, seed):
    rng = np.random.default_rng(seed)
    params = _params(side, 8, heads, seed=seed)
    x = rng.standard_normal((2, 8, side, side))
    perm = rng.permutation(side * side)
    xp_ = x.reshape(2, 8, -1)[:, :, perm].reshape(x.shape)
    pos = host(params["positional_embedding"])
    moved = dict(params, positional_embedding=ag.from_numpy(np.concatenate([pos[:1], pos[1:][perm]])))
    np.testing.assert_allclose(host(ap.attention_pool(moved, ag.from_numpy(xp_), num_heads=heads)),
                               host(ap.attention_pool(params, ag.from_numpy(x), num_heads=heads)),
                               rtol=1e-12, atol=1e-12)


@given(side=st.integers(1, 4), seed=st.integers(0, 50))
def test_a_zero_query_projection_is_uniform_attention(side, seed):
    rng = np.random.default_rng(seed)
    params = _params(side, 8, 2, 6, seed)
    params["q_proj.weight"] = ag.from_numpy(np.zeros((8, 8)))
    params["q_proj.bias"] = ag.from_numpy(np.zeros(8))
    x = rng.standard_normal((2, 8, side, side))
    p = {k: host(v) for k, v in params.items()}
    tokens = x.reshape(2, 8, -1).transpose(0, 2, 1)
    tokens = np.concatenate([tokens.mean(1, keepdims=True), tokens], 1) + p["positional_embedding"]
    mean_value = (tokens @ p["v_proj.weight"].T + p["v_proj.bias"]).mean(1)
    expected = mean_value @ p["c_proj.weight"].T + p["c_proj.bias"]
    np.testing.assert_allclose(host(ap.attention_pool(params, ag.from_numpy(x), num_heads=2, output_dim=6)),
                               expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_full():
    params = _params(2, 4, 2, 3, 4)
    x = ag.from_numpy(np.random.default_rng(4).standard_normal((2, 4, 2, 2)))
    assert ag.gradcheck(lambda p, t: ap.attention_pool(p, t, num_heads=2, output_dim=3), params, x, mode="full")


def test_the_grid_is_fixed():
    params = _params(3, 8, 2)
    with pytest.raises(ValueError, match=r"attention-pool: parameter 'positional_embedding' must have shape \(17, 8\)"):
        ap.attention_pool(params, ag.from_numpy(np.zeros((1, 8, 4, 4))), num_heads=2)
    with pytest.raises(ValueError, match="attention-pool: x must be a square s x s map"):
        ap.attention_pool(params, ag.from_numpy(np.zeros((1, 8, 1, 9))), num_heads=2)
    with pytest.raises(ValueError, match="attention-pool: embed_dim=8 must be divisible by num_heads=3"):
        ap.attention_pool(params, ag.from_numpy(np.zeros((1, 8, 3, 3))), num_heads=3)
    with pytest.raises(ValueError, match="attention-pool: parameter 'c_proj.weight' must have shape"):
        ap.attention_pool(params, ag.from_numpy(np.zeros((1, 8, 3, 3))), num_heads=2, output_dim=5)
