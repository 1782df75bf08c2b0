"""The transformer family: the sdpa entry and the LLaMA-style grouped-query layer (mha-gqa)."""
import numpy as np
import pytest

import autograd as ag
import npattn
from npattn.attention import alibi_slopes, apply_rope
from npattn.transformer import mha_gqa as gqa
from tests.conftest import dev, host


def _params(**config):
    return gqa.init(np.random.default_rng(0), **{"dim": 16, "n_heads": 4, "n_kv_heads": 2, **config})


def _reference_layer(params, x, n_heads, n_kv_heads, start_pos=0, cache=None, layout="interleaved", qk_norm="none",
                     bias=False, head_dim=None, eps=1e-6, top_left=False):
    """Meta's Attention.forward on the host, step by step: per-head loops, an explicit bottom-right mask."""
    p = {k: host(v) for k, v in params.items()}
    batch, length, dim = x.shape
    hd = head_dim or dim // n_heads

    def proj(name):
        y = x @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if bias else y

    def rms(y, w):
        return y / np.sqrt((y * y).mean(-1, keepdims=True) + eps) * w

    q, k, v = proj("wq"), proj("wk"), proj("wv")
    if qk_norm == "full":
        q, k = rms(q, p["q_norm.weight"]), rms(k, p["k_norm.weight"])
    q = q.reshape(batch, length, n_heads, hd).transpose(0, 2, 1, 3)
    k = k.reshape(batch, length, n_kv_heads, hd).transpose(0, 2, 1, 3)
    v = v.reshape(batch, length, n_kv_heads, hd).transpose(0, 2, 1, 3)
    if qk_norm == "per-head":
        q, k = rms(q, p["q_norm.weight"]), rms(k, p["k_norm.weight"])
    q = host(apply_rope(dev(q), layout=layout, base=500000.0, offset=start_pos))
    k = host(apply_rope(dev(k), layout=layout, base=500000.0, offset=start_pos))
    if cache is not None:
        k, v = np.concatenate([cache[0], k], axis=2), np.concatenate([cache[1], v], axis=2)
    rep = n_heads // n_kv_heads
    k_rep, v_rep = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)         # Meta repeat_kv
    scores = q @ k_rep.transpose(0, 1, 3, 2) / np.sqrt(hd)
    total = k.shape[2]
    mask = np.hstack([np.zeros((length, start_pos)), np.triu(np.full((length, length), -np.inf), 1)])
    if top_left:                               # the bug: the diagonal from the first key, not the last
        mask = np.triu(np.full((length, total), -np.inf), 1)
    assert mask.shape == (length, total)
    scores = scores + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v_rep).transpose(0, 2, 1, 3).reshape(batch, length, n_heads * hd)
    return out @ p["wo.weight"].T, (k, v)


@pytest.mark.parametrize("config", [
    dict(), dict(n_kv_heads=1), dict(n_kv_heads=4), dict(qk_norm="per-head"), dict(qk_norm="full", bias=True),
    dict(head_dim=6, n_kv_heads=1, qk_norm="per-head"),
], ids=["gqa", "mqa", "mha", "qwen3-norm", "olmo2-norm-bias", "head-dim"])
def test_layer_matches_metas_forward(config):
    params = _params(**config)
    x = np.random.default_rng(1).standard_normal((2, 6, 16))
    options = {k: v for k, v in config.items()}
    out = gqa.mha_gqa(params, dev(x), n_heads=4, **{"n_kv_heads": 2, **options})
    expected, _ = _reference_layer(params, x, 4, options.get("n_kv_heads", 2), qk_norm=options.get("qk_norm", "none"),
                                   bias=options.get("bias", False), head_dim=options.get("head_dim"))
    np.testing.assert_allclose(host(out), expected, rtol=1e-12, atol=1e-12)


def test_kv_cache_continues_the_sequence():
    """Prefix of 4 then 3 cached steps == the whole sequence of 7 at once (positions continue from start_pos)."""
    params = _params()
    x = dev(np.random.default_rng(2).standard_normal((2, 7, 16)))
    full = host(gqa.mha_gqa(params, x, n_heads=4, n_kv_heads=2))
    out, cache = gqa.mha_gqa_cached(params, x[:, :4], n_heads=4, n_kv_heads=2)
    pieces = [host(out)]
    for t in range(4, 7):
        out, cache = gqa.mha_gqa_cached(params, x[:, t:t + 1], cache, n_heads=4, n_kv_heads=2)
        pieces.append(host(out))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-12, atol=1e-12)
    assert cache[0].shape == (2, 2, 7, 4)
    # the reference with Meta's mask at start_pos 4, cache of rotated keys
    _, ref_cache = _reference_layer(params, host(x)[:, :4], 4, 2)
    expected, _ = _reference_layer(params, host(x)[:, 4:], 4, 2, start_pos=4, cache=ref_cache)
    step, _ = gqa.mha_gqa_cached(params, x[:, 4:], (dev(ref_cache[0]), dev(ref_cache[1])), n_heads=4, n_kv_heads=2)
    np.testing.assert_allclose(host(step), expected, rtol=1e-12, atol=1e-12)


def test_top_left_causal_with_a_cache_would_be_caught():
    """spec §4 quirk: a top-left mask with a cache is silently wrong (3.6 in the spec's check)."""
    params = _params()
    x = np.random.default_rng(3).standard_normal((1, 6, 16))
    _, cache = _reference_layer(params, x[:, :4], 4, 2)
    right, _ = _reference_layer(params, x[:, 4:], 4, 2, start_pos=4, cache=cache)
    wrong, _ = _reference_layer(params, x[:, 4:], 4, 2, start_pos=4, cache=cache, top_left=True)
    ours, _ = gqa.mha_gqa_cached(params, dev(x[:, 4:]), (dev(cache[0]), dev(cache[1])), n_heads=4, n_kv_heads=2)
    np.testing.assert_allclose(host(ours), right, rtol=1e-12, atol=1e-12)
    assert np.abs(host(ours) - wrong).max() > 1e-3


def test_hf_layout_equals_meta_layout():
    """HF stores wq/wk rows permuted per head for rotate_half: 'half' on them == 'interleaved' on Meta's."""
    params = _params()
    hd, heads, kv_heads, dim = 4, 4, 2, 16

    def permute(w, n):
        return w.reshape(n, hd // 2, 2, dim).transpose(0, 2, 1, 3).reshape(n * hd, dim)

    hf = dict(params)
    hf["wq.weight"] = dev(permute(host(params["wq.weight"]), heads))
    hf["wk.weight"] = dev(permute(host(params["wk.weight"]), kv_heads))
    x = dev(np.random.default_rng(4).standard_normal((2, 5, 16)))
    meta = host(gqa.mha_gqa(params, x, n_heads=4, n_kv_heads=2))
    np.testing.assert_allclose(host(gqa.mha_gqa(hf, x, n_heads=4, n_kv_heads=2, rope_layout="half")), meta,
                               rtol=1e-12, atol=1e-12)
    assert np.abs(host(gqa.mha_gqa(hf, x, n_heads=4, n_kv_heads=2)) - meta).max() > 1e-3


def test_layer_errors_name_the_mechanism():
    params = _params()
    x = dev(np.zeros((1, 3, 16)))
    with pytest.raises(ValueError, match="mha-gqa: n_kv_heads must be a positive divisor"):
        gqa.init(np.random.default_rng(0), 16, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="mha-gqa: qk_norm must be one of"):
        gqa.mha_gqa(params, x, n_heads=4, n_kv_heads=2, qk_norm="layer")
    with pytest.raises(ValueError, match="mha-gqa: cache must be"):
        gqa.mha_gqa_cached(params, x, (dev(np.zeros((1, 2, 3, 5))), dev(np.zeros((1, 2, 3, 5)))), n_heads=4,
                           n_kv_heads=2)
    with pytest.raises(KeyError, match="mha-gqa: parameter 'q_norm.weight' is missing"):
        gqa.mha_gqa(params, x, n_heads=4, n_kv_heads=2, qk_norm="per-head")


def test_sdpa_entry_is_the_core_with_alibi():
    mech = npattn.get("sdpa")
    params = mech.default_params()
    np.testing.assert_array_equal(host(params["alibi_slopes"]), host(alibi_slopes(4)))
    q, k, v = mech.example_input(np.random.default_rng(5))
    expected = ag.scaled_dot_product_attention(q, k, v, is_causal=True, alignment="bottom-right", enable_gqa=True,
                                               alibi_slopes=params["alibi_slopes"])
    np.testing.assert_array_equal(host(mech.apply(params, q, k, v)), host(expected))
    windowed = mech.apply(params, q, k, v, window=(1, 0), softcap=2.0)
    assert not np.allclose(host(windowed), host(expected))
    names = [m.name for m in npattn.mechanisms("transformer")]
    assert {"sdpa", "mha-gqa", "mha-gqa-qk-norm"} <= set(names)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_origins_attention_is_the_materialised_core_bit_for_bit(dropout):
    """Rebuilding ``mha`` / ``transformer`` on the core changes no bit: their attention equals the materialised
    path with attn_mask = their keep mask and dropout_mask = the mask ag.dropout draws from the same rng."""
    from npattn.origins import transformer as tf

    rng = np.random.default_rng(6)
    q, k, v = (dev(rng.standard_normal(shape)) for shape in ((2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4)))
    keep = dev(np.arange(6)[None, None, None, :] < np.array([6, 4])[:, None, None, None])

    def theirs(q, k, v):
        return tf.scaled_dot_product_attention(q, k, v, keep, train=dropout > 0, dropout=dropout,
                                               rng=np.random.default_rng(7))

    def ours(q, k, v):
        drop = {}
        if dropout:
            drop = dict(dropout_p=dropout, dropout_mask=dev(np.random.default_rng(7).random((2, 3, 5, 6)) >= dropout))
        return ag.scaled_dot_product_attention(q, k, v, attn_mask=keep, implementation="materialised", **drop)

    cotangent = dev(rng.standard_normal((2, 3, 5, 4)))
    for f in (theirs, ours):
        f.result = ag.value_and_grad(lambda q, k, v: ag.sum(f(q, k, v) * cotangent), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_array_equal(host(ours(q, k, v)), host(theirs(q, k, v)))
    for a, b in zip(ours.result[1], theirs.result[1]):
        np.testing.assert_array_equal(host(a), host(b))


def _composed_step(query, key, value, scale, bias, mask):
    """The vision entries' attention step before it ran on the core: (q scale) k^T + bias, masked softmax, times v."""
    logits = ag.matmul(query * scale, ag.swapaxes(key, -1, -2))
    logits = logits if bias is None else logits + bias
    return ag.matmul(ag.softmax(logits, axis=-1, mask=mask), value)


@pytest.mark.parametrize("case", ["swin-shifted", "swin-v2-scale", "vit-mask", "three-axes"])
def test_vision_attention_step_on_the_core_is_the_composition_bit_for_bit(case):
    """transformer/_parts.softmax_attention runs on the core's materialised path: the numbers (values and the
    gradients of q, k, v, the bias and a learned scale) are the composed step's exactly, for Swin's 5-D windows
    with a per-window bias folded into the batch axis, Swin v2's per-head tensor scale, ViT's masks with an
    empty row, and fewer leading axes than (batch, heads)."""
    from npattn.transformer import _parts

    rng = np.random.default_rng(12)
    heads, n, d = 2, 6, 4
    lead = {"swin-shifted": (3, 4, heads), "swin-v2-scale": (2, 4, heads), "vit-mask": (2, heads),
            "three-axes": (heads,)}[case]
    q, k, v = (dev(rng.standard_normal(lead + (n, d))) for _ in range(3))
    bias = dev(rng.standard_normal((4, heads, n, n) if case.startswith("swin") else (n, n)))
    scale = dev(np.exp(rng.standard_normal((heads, 1, 1)))) if case == "swin-v2-scale" else d ** -0.5
    mask = None
    if case == "vit-mask":
        mask = dev(rng.random((2, 1, n, n)) < 0.6)
        mask[0, 0, 2] = False
    cotangent = dev(rng.standard_normal(lead + (n, d)))
    results = []
    for step in (_composed_step, lambda q, k, v, s, b, m: _parts.softmax_attention(q, k, v, scale=s, bias=b, mask=m)):
        args = [q, k, v, bias] + ([scale] if case == "swin-v2-scale" else [])

        def f(q, k, v, b, *s, step=step):
            return ag.sum(step(q, k, v, s[0] if s else scale, b, mask) * cotangent)

        value, grads = ag.value_and_grad(f, argnums=tuple(range(len(args))))(*args)
        results.append([host(value)] + [host(g) for g in grads])
    assert np.isfinite(results[0][0]) and np.any(results[0][-1] != 0)
    for ours, composed in zip(results[1], results[0]):
        np.testing.assert_array_equal(ours, composed)


def test_vision_attention_step_keeps_timm_nan_rows_on_the_composed_path():
    """masked_rows='nan' (timm's manual softmax): NaN reaches q and k through an empty row's gradient, which the
    core's 'nan' policy (NaN into v only) would not give; the step stays composed for it."""
    from npattn.transformer import _parts

    rng = np.random.default_rng(13)
    q, k, v = (dev(rng.standard_normal((1, 2, 4, 3))) for _ in range(3))
    mask = dev(np.ones((1, 1, 4, 4), dtype=bool))
    mask[..., 1, :] = False
    grads = ag.grad(lambda q, k, v: ag.sum(_parts.softmax_attention(q, k, v, scale=0.5, mask=mask,
                                                                      masked_rows="nan")), argnums=(0, 1, 2))(q, k, v)
    assert np.all(np.isnan(host(grads[0])[:, :, 1])) and np.all(np.isnan(host(grads[1])))
    core = ag.grad(lambda q: ag.sum(ag.scaled_dot_product_attention(q, k, v, attn_mask=mask, masked_rows="nan")))(q)
    assert not np.any(np.isnan(host(core)))
