"""Unit tests of the sequence models of the origins family: Transformer / MHA, Bahdanau, Show-Attend-Tell.

The registry matrix (test_mechanisms.py) covers shapes, dtypes, determinism and gradchecks of the default
entries; here: mask semantics (exact zeros, no NaN, zero gradients), causality, the positional encoding
against its formula, recurrences against explicit host loops, and the hard-attention estimator against
the official known_grads formula.
"""
import math

import numpy as np
import pytest

import autograd as ag
import npattn
from npattn.origins import bahdanau as bah
from npattn.origins import show_attend_tell as sat
from npattn.origins import transformer as tf
from tests.conftest import dev, host

D_MODEL, HEADS = 8, 2


def _mha_params(seed=0, bias=False):
    return tf.init_mha(np.random.default_rng(seed), D_MODEL, attn_bias=bias)


def _x(rng, shape):
    return dev(rng.standard_normal(shape))


def _padding(lengths, length):
    return dev(np.arange(length)[None, :] >= np.asarray(lengths)[:, None])


# ---------------------------------------------------------------------------------------------
# scaled dot-product / multi-head attention


def _reference_mha(params, query, key, value, keep, heads):
    """Explicit per-batch, per-head loop on the host: softmax over the kept keys only."""
    p = {k: host(v) for k, v in params.items()}
    q, k, v = (a @ p[f"{n}.weight"].T for a, n in ((query, "w_q"), (key, "w_k"), (value, "w_v")))
    d_k = q.shape[-1] // heads
    out = np.zeros(q.shape)
    for b in range(q.shape[0]):
        for h in range(heads):
            cols = slice(h * d_k, (h + 1) * d_k)
            for i in range(q.shape[1]):
                kept = [j for j in range(k.shape[1]) if keep[b, i, j]]
                if not kept:
                    continue
                scores = np.array([q[b, i, cols] @ k[b, j, cols] / math.sqrt(d_k) for j in kept])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, i, cols] = sum(w * v[b, j, cols] for w, j in zip(weights, kept))
    return out @ p["w_o.weight"].T


@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_explicit_loop(rng, causal):
    params = _mha_params()
    length = 5
    query, key, value = (rng.standard_normal((2, length, D_MODEL)) for _ in range(3))
    pad = np.arange(length)[None, :] >= np.array([[5], [3]])
    keep = np.broadcast_to(~pad[:, None, :], (2, length, length)).copy()
    if causal:
        keep &= np.tril(np.ones((length, length), bool))
    out = tf.mha(params, dev(query), dev(key), dev(value), dev(pad), heads=HEADS, causal=causal)
    np.testing.assert_allclose(host(out), _reference_mha(params, query, key, value, keep, HEADS), rtol=0, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("self_attention", [False, True])
def test_mha_in_batch_blocks_gives_the_same_numbers(rng, monkeypatch, causal, self_attention):
    """Large batches run a few items at a time (BLOCK_BYTES); outputs and gradients must not change."""
    params = _mha_params()
    key = _x(rng, (3, 6, D_MODEL))
    query = key if self_attention else _x(rng, (3, 5, D_MODEL))
    pad = _padding([6, 4, 2], 6)
    cotangent = _x(rng, query.shape)

    def run():
        if self_attention:                                      # key=None: the very same tensor, sliced once
            out, pullback = ag.vjp(lambda p, q: tf.mha(p, q, None, None, pad, heads=HEADS, causal=causal),
                                   params, query)
        else:
            out, pullback = ag.vjp(lambda p, q, k: tf.mha(p, q, k, None, pad, heads=HEADS, causal=causal),
                                   params, query, key)
        return [out] + ag.tree_flatten(pullback(cotangent))[0]

    whole = run()
    monkeypatch.setattr(tf, "BLOCK_BYTES", 1)                   # one batch item per block
    assert len(tf._batch_blocks(3, HEADS, query.shape[1], 6, 8)) == 3
    for blocked, reference in zip(run(), whole):
        np.testing.assert_allclose(host(blocked), host(reference), rtol=0, atol=1e-13)


def test_transformer_in_batch_blocks_gives_the_same_numbers(rng, monkeypatch):
    params = _transformer()
    src, tgt = _x(rng, (3, 6, D_MODEL)), _x(rng, (3, 5, D_MODEL))
    pads = (_padding([6, 4, 3], 6), _padding([5, 5, 2], 5))
    whole = host(tf.transformer(params, src, tgt, *pads, heads=HEADS, num_layers=2))
    monkeypatch.setattr(tf, "BLOCK_BYTES", 1)
    blocked = host(tf.transformer(params, src, tgt, *pads, heads=HEADS, num_layers=2))
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-13)
    assert ag.gradcheck(lambda p, s: tf.transformer(p, s, tgt, *pads, heads=HEADS, num_layers=2), params, src,
                        mode="fast", n_directions=2)


def test_mha_masked_weights_are_exact_zeros(rng):
    params = _mha_params()
    x = _x(rng, (2, 6, D_MODEL))
    pad = _padding([6, 4], 6)
    weights = host(tf.mha_weights(params, x, key_padding_mask=pad, heads=HEADS, causal=True))
    assert weights.shape == (2, HEADS, 6, 6)
    assert np.all(weights[:, :, np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0.0)
    assert np.all(weights[1, :, :, 4:] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-14)


def test_fully_masked_rows_give_zeros_without_nan_and_zero_gradients(rng):
    params = _mha_params()
    query, key, value = _x(rng, (2, 3, D_MODEL)), _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 4, D_MODEL))
    pad = _padding([4, 0], 4)                                   # every key of batch item 1 is padding

    def f(params, query, key, value):
        return tf.mha(params, query, key, value, pad, heads=HEADS)

    out = host(f(params, query, key, value))
    assert np.all(np.isfinite(out))
    assert np.all(out[1] == 0.0)                                # zero context, no bias
    weights = host(tf.mha_weights(params, query, key, key_padding_mask=pad, heads=HEADS))
    assert np.all(weights[1] == 0.0) and not np.isnan(weights).any()
    grads = ag.grad(lambda *a: ag.sum(f(*a) ** 2), argnums=(1, 2, 3))(params, query, key, value)
    for g in grads:
        g = host(g)
        assert np.all(np.isfinite(g)) and np.all(g[1] == 0.0)
    # padded keys of a partly padded row receive exactly zero gradient too
    pad = _padding([4, 2], 4)
    g_key, g_value = ag.grad(lambda k, v: ag.sum(tf.mha(params, query, k, v, pad, heads=HEADS) ** 2),
                             argnums=(0, 1))(key, value)
    assert np.all(host(g_key)[1, 2:] == 0.0) and np.all(host(g_value)[1, 2:] == 0.0)
    assert np.abs(host(g_key)[1, :2]).max() > 0


def test_causal_mask_hides_the_future(rng):
    params = _mha_params()
    x = rng.standard_normal((2, 6, D_MODEL))
    changed = x.copy()
    changed[:, 4:] += rng.standard_normal((2, 2, D_MODEL))
    before = host(tf.mha(params, dev(x), heads=HEADS, causal=True))
    after = host(tf.mha(params, dev(changed), heads=HEADS, causal=True))
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert not np.allclose(before[:, 4:], after[:, 4:])


def test_attention_dropout_uses_the_explicit_rng(rng):
    params = _mha_params()
    x = _x(rng, (2, 5, D_MODEL))
    eval_out = host(tf.mha(params, x, heads=HEADS, dropout=0.5))
    a = host(tf.mha(params, x, heads=HEADS, dropout=0.5, train=True, rng=np.random.default_rng(3)))
    b = host(tf.mha(params, x, heads=HEADS, dropout=0.5, train=True, rng=np.random.default_rng(3)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, eval_out)
    np.testing.assert_array_equal(host(tf.mha(params, x, heads=HEADS, train=True)), eval_out)


def _composed_attention(query, key, value, keep, *, train, dropout, rng):
    """The attention of mha / transformer before they ran on the core: softmax, dropout, matmul."""
    weights = ag.dropout(tf.attention_weights(query, key, keep), dropout, train, rng)
    return ag.matmul(weights, value)


@pytest.mark.parametrize("dropout", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("shapes", [((2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 2), (2, 1, 5, 6)),
                                    ((5, 4), (1, 6, 4), (3, 1, 6, 2), (5, 6))], ids=["4-D", "broadcast"])
def test_attention_on_the_core_is_the_old_composition_bit_for_bit(shapes, dropout):
    """The core's materialised path gives the composition's numbers exactly (values and gradients), with the
    dropout keep mask drawn from the same rng and dropout = 1 drawing nothing.  With broadcast leading axes
    the gradients of the broadcast inputs sum their copies in another order (rounding only)."""
    rng = np.random.default_rng(21)
    q, k, v = (dev(rng.standard_normal(shape)) for shape in shapes[:3])
    keep = dev(rng.random(shapes[3]) < 0.7)
    keep[..., 0, :] = False                                      # an empty row: zero context, zero gradient
    cotangent = dev(rng.standard_normal(np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2], shapes[2][:-2],
                                                            shapes[3][:-2]) + (5, 2)))
    results = []
    for attention in (tf.scaled_dot_product_attention, _composed_attention):
        generator = np.random.default_rng(8)

        def f(q, k, v, attention=attention, generator=generator):
            return ag.sum(attention(q, k, v, keep, train=True, dropout=dropout, rng=generator) * cotangent)

        value, grads = ag.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)
        results.append([host(value)] + [host(g) for g in grads] + [generator.random()])   # the rng state after
    assert np.isfinite(results[0][0])
    for i, (ours, theirs) in enumerate(zip(*results)):
        if shapes[0][:-2] != shapes[1][:-2] and i in (1, 2, 3):
            np.testing.assert_allclose(ours, theirs, rtol=1e-14, atol=1e-15)
        else:
            np.testing.assert_array_equal(ours, theirs)


def test_mha_bad_arguments(rng):
    params = _mha_params()
    x = _x(rng, (2, 5, D_MODEL))
    with pytest.raises(ValueError, match="mha.*heads"):
        tf.mha(params, x, heads=3)
    with pytest.raises(ValueError, match="mha.*features"):
        tf.mha(params, _x(rng, (2, 5, D_MODEL + 1)), heads=HEADS)
    with pytest.raises(TypeError, match="mha.*key_padding_mask"):
        tf.mha(params, x, key_padding_mask=dev(np.zeros((2, 5))), heads=HEADS)
    with pytest.raises(ValueError, match="mha.*key_padding_mask"):
        tf.mha(params, x, key_padding_mask=_padding([5, 5, 5], 5), heads=HEADS)


def test_mha_gradgradcheck(rng):
    params = _mha_params()
    x = _x(rng, (1, 3, D_MODEL))
    pad = _padding([2], 3)
    assert ag.gradgradcheck(lambda p, x: tf.mha(p, x, key_padding_mask=pad, heads=HEADS, causal=True), params, x)


# ---------------------------------------------------------------------------------------------
# positional encoding


@pytest.mark.parametrize("d_model", [8, 7])
def test_positional_encoding_interleave_matches_the_paper(d_model):
    table = host(tf.positional_encoding(11, d_model, "interleave"))
    for pos in range(11):
        for i in range(d_model):
            angle = pos / 10000 ** ((i - i % 2) / d_model)      # 2i / d for both columns 2i and 2i+1
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert table[pos, i] == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("d_model", [8, 7, 2])
def test_positional_encoding_concat_matches_t2t(d_model):
    table = host(tf.positional_encoding(9, d_model, "concat"))
    half = d_model // 2
    increment = math.log(10000.0) / max(half - 1, 1)
    for pos in range(9):
        for i in range(half):
            inv = math.exp(-i * increment)
            assert table[pos, i] == pytest.approx(math.sin(pos * inv), abs=1e-15)
            assert table[pos, half + i] == pytest.approx(math.cos(pos * inv), abs=1e-15)
    if d_model % 2:
        assert np.all(table[:, -1] == 0.0)


def test_positional_encoding_rejects_unknown_layout():
    with pytest.raises(ValueError, match="pe_layout"):
        tf.positional_encoding(4, 8, "rotary")


# ---------------------------------------------------------------------------------------------
# transformer


def _transformer(seed=0, layers=2):
    return tf.init(np.random.default_rng(seed), D_MODEL, d_ff=16, num_layers=layers)


def test_transformer_decoder_is_causal_and_ignores_padding(rng):
    params = _transformer()
    src, tgt = rng.standard_normal((2, 6, D_MODEL)), rng.standard_normal((2, 5, D_MODEL))
    src_pad, tgt_pad = np.zeros((2, 6), bool), np.zeros((2, 5), bool)
    src_pad[1, 4:] = True

    def run(src, tgt):
        return host(tf.transformer(params, dev(src), dev(tgt), dev(src_pad), dev(tgt_pad), heads=HEADS, num_layers=2))

    base = run(src, tgt)
    future = tgt.copy()
    future[:, 3:] += 1.0
    np.testing.assert_allclose(run(src, future)[:, :3], base[:, :3], rtol=0, atol=1e-14)
    padded = src.copy()
    padded[1, 4:] += 5.0                                       # padded source words are never attended to
    changed = run(padded, tgt)
    np.testing.assert_allclose(changed[1], base[1], rtol=0, atol=1e-14)
    padded[1, 3] += 1.0                                        # a real word does matter
    assert not np.allclose(run(padded, tgt)[1], base[1])


def test_transformer_embedding_scale_and_layer_count(rng):
    params = _transformer(layers=1)
    src, tgt = _x(rng, (1, 4, D_MODEL)), _x(rng, (1, 3, D_MODEL))
    # by hand: memory = encoder_layer(sqrt(d) src + PE), out = decoder_layer(sqrt(d) tgt + PE, memory)
    scale = math.sqrt(D_MODEL)
    memory = tf.encoder_layer(params, ag.as_tensor(src) * scale + tf.positional_encoding(4, D_MODEL),
                              prefix="encoder.layers.0", heads=HEADS)
    expected = tf.decoder_layer(params, ag.as_tensor(tgt) * scale + tf.positional_encoding(3, D_MODEL), memory,
                                prefix="decoder.layers.0", heads=HEADS)
    out = tf.transformer(params, src, tgt, heads=HEADS, num_layers=1)
    np.testing.assert_array_equal(host(out), host(expected))


def test_cross_attention_weights_match_a_host_reference(rng):
    """Layer 0's encoder-decoder maps, rebuilt from public pieces and an explicit host softmax loop."""
    params = _transformer(layers=2)
    src, tgt = rng.standard_normal((2, 6, D_MODEL)), rng.standard_normal((2, 4, D_MODEL))
    src_pad = np.arange(6)[None, :] >= np.array([[6], [4]])
    maps = tf.cross_attention_weights(params, dev(src), dev(tgt), dev(src_pad), heads=HEADS, num_layers=2)
    assert [tuple(m.shape) for m in maps] == [(2, HEADS, 4, 6)] * 2

    scale = math.sqrt(D_MODEL)
    memory = tf.encoder_layer(params, dev(src) * scale + tf.positional_encoding(6, D_MODEL), dev(src_pad),
                              prefix="encoder.layers.0", heads=HEADS)
    memory = tf.encoder_layer(params, memory, dev(src_pad), prefix="encoder.layers.1", heads=HEADS)
    x = ag.as_tensor(dev(tgt)) * scale + tf.positional_encoding(4, D_MODEL)
    self_attn = {k[len("decoder.layers.0.self_attn."):]: v for k, v in params.items()
                 if k.startswith("decoder.layers.0.self_attn.")}
    x = ag.layer_norm(x + tf.mha(self_attn, x, heads=HEADS, causal=True), (D_MODEL,),
                      params["decoder.layers.0.norm1.weight"], params["decoder.layers.0.norm1.bias"], eps=1e-6)
    p = {k: host(v) for k, v in params.items()}
    q = host(x) @ p["decoder.layers.0.multihead_attn.w_q.weight"].T
    k = host(memory) @ p["decoder.layers.0.multihead_attn.w_k.weight"].T
    d_k = D_MODEL // HEADS
    expected = np.zeros((2, HEADS, 4, 6))
    for b in range(2):
        kept = np.flatnonzero(~src_pad[b])
        for h in range(HEADS):
            cols = slice(h * d_k, (h + 1) * d_k)
            for i in range(4):
                scores = k[b][kept][:, cols] @ q[b, i, cols] / math.sqrt(d_k)
                weights = np.exp(scores - scores.max())
                expected[b, h, i, kept] = weights / weights.sum()
    np.testing.assert_allclose(host(maps[0]), expected, rtol=1e-12, atol=1e-14)
    assert np.all(host(maps[1])[1, :, :, 4:] == 0)                     # padded source words: exactly 0
    np.testing.assert_allclose(host(maps[1]).sum(-1), 1.0, rtol=1e-13)


def test_transformer_dropout_train_vs_eval(rng):
    params = _transformer(layers=1)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    eval_out = host(tf.transformer(params, src, tgt, heads=HEADS, num_layers=1))
    with pytest.raises(ValueError, match="transformer.*rng"):
        tf.transformer(params, src, tgt, heads=HEADS, num_layers=1, train=True)
    a = host(tf.transformer(params, src, tgt, heads=HEADS, num_layers=1, train=True, rng=np.random.default_rng(5)))
    b = host(tf.transformer(params, src, tgt, heads=HEADS, num_layers=1, train=True, rng=np.random.default_rng(5)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, eval_out)
    no_drop = tf.transformer(params, src, tgt, heads=HEADS, num_layers=1, train=True, dropout=0.0)
    np.testing.assert_array_equal(host(no_drop), eval_out)


def test_transformer_gradcheck_with_all_dropouts_in_train_mode(rng):
    """With a fixed rng the dropout masks are constants, so train mode is differentiable as well."""
    params = _transformer(layers=1)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    pads = (_padding([4, 2], 4), _padding([3, 2], 3))

    def f(params, src, tgt):
        return tf.transformer(params, src, tgt, *pads, heads=HEADS, num_layers=1, train=True,
                              rng=np.random.default_rng(9), attention_dropout=0.2, relu_dropout=0.2, pe_layout="concat")

    assert ag.gradcheck(f, params, src, tgt, mode="fast", n_directions=2)


# ---------------------------------------------------------------------------------------------
# the parameter contract: structure comes from options, never from which keys exist


def test_transformer_layer_count_is_an_option_not_a_count_of_keys(rng):
    params = _transformer(layers=2)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    # dropping one decoder norm is a KeyError naming it -- not a one-layer (or zero-layer) decoder
    for key in ("decoder.layers.1.norm3.weight", "decoder.layers.0.norm1.weight", "encoder.layers.1.norm2.bias"):
        partial = {k: v for k, v in params.items() if k != key}
        with pytest.raises(KeyError, match=f"transformer: parameter '{key}' is missing"):
            tf.transformer(partial, src, tgt, heads=HEADS, num_layers=2)
    with pytest.raises(KeyError, match="transformer: params has .* not use: 'encoder.layers.1."):
        tf.transformer(params, src, tgt, heads=HEADS, num_layers=1)
    with pytest.raises(KeyError, match="'encoder.layers.2.self_attn.w_q.weight' is missing"):
        tf.transformer(params, src, tgt, heads=HEADS, num_layers=3)
    with pytest.raises(KeyError, match="'encoder.layers.2"):
        tf.transformer(params, src, tgt, heads=HEADS)               # the default is the paper's 6
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="transformer: num_layers must be a positive integer"):
            tf.transformer(params, src, tgt, heads=HEADS, num_layers=bad)
    with pytest.raises(KeyError, match="transformer: parameter 'encoder.layers.0.self_attn.w_q.weight' is missing"):
        tf.cross_attention_weights({}, src, tgt, heads=HEADS, num_layers=1)


def test_attention_bias_is_an_option_not_the_presence_of_keys(rng):
    x = _x(rng, (2, 5, D_MODEL))
    with pytest.raises(KeyError, match="mha: params has 4 key.*'w_q.bias'"):
        tf.mha(_mha_params(bias=True), x, heads=HEADS)
    with pytest.raises(KeyError, match="mha: parameter 'w_q.bias' is missing"):
        tf.mha(_mha_params(bias=False), x, heads=HEADS, attn_bias=True)
    with pytest.raises(KeyError, match="mha: params has 4 key"):
        tf.mha_weights(_mha_params(bias=True), x, heads=HEADS)
    biased = tf.init(np.random.default_rng(0), D_MODEL, d_ff=16, num_layers=1, attn_bias=True)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    with pytest.raises(KeyError, match="transformer: params has 12 key"):             # 4 biases x 3 attentions
        tf.transformer(biased, src, tgt, heads=HEADS, num_layers=1)
    out = tf.transformer(biased, src, tgt, heads=HEADS, num_layers=1, attn_bias=True)
    zeroed = {k: (v * 0 if k.endswith(("w_q.bias", "w_k.bias", "w_v.bias", "w_o.bias")) else v)
              for k, v in biased.items()}
    unbiased = {k: v for k, v in biased.items() if not k.endswith(("w_q.bias", "w_k.bias", "w_v.bias", "w_o.bias"))}
    np.testing.assert_allclose(host(tf.transformer(zeroed, src, tgt, heads=HEADS, num_layers=1, attn_bias=True)),
                               host(tf.transformer(unbiased, src, tgt, heads=HEADS, num_layers=1)), rtol=0, atol=1e-14)
    assert not np.allclose(host(out), host(tf.transformer(unbiased, src, tgt, heads=HEADS, num_layers=1)))
    with pytest.raises(TypeError, match="transformer: attn_bias must be True or False"):
        tf.transformer(biased, src, tgt, heads=HEADS, num_layers=1, attn_bias="yes")


def test_every_projection_and_feed_forward_shape_is_checked(rng):
    params = _transformer(layers=1)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    wider = {**params, "encoder.layers.0.linear1.weight": dev(np.zeros((17, D_MODEL)))}   # d_ff is 16
    with pytest.raises(ValueError, match=r"transformer: parameter 'encoder.layers.0.linear1.weight' must have "
                                         r"shape \(16, 8\), got \(17, 8\)"):
        tf.transformer(wider, src, tgt, heads=HEADS, num_layers=1)
    mha_params = _mha_params()
    for key, shape in (("w_v.weight", (D_MODEL, D_MODEL + 1)), ("w_o.weight", (D_MODEL + 1, D_MODEL))):
        with pytest.raises(ValueError, match=f"mha: parameter '{key}' must have shape"):
            tf.mha_weights({**mha_params, key: dev(np.zeros(shape))}, _x(rng, (2, 5, D_MODEL)), heads=HEADS)
    with pytest.raises(KeyError, match="mha: parameter 'w_o.weight' is missing"):
        tf.mha_weights({k: v for k, v in mha_params.items() if k != "w_o.weight"}, _x(rng, (2, 5, D_MODEL)),
                       heads=HEADS)


@pytest.mark.parametrize("name, value, error", [
    ("dropout", 1.5, ValueError), ("dropout", -0.1, ValueError), ("dropout", np.nan, ValueError),
    ("dropout", "0.1", TypeError), ("attention_dropout", 2.0, ValueError), ("relu_dropout", np.nan, ValueError),
    ("eps", -1.0, ValueError), ("eps", np.nan, ValueError),
])
def test_rates_and_eps_are_checked_in_eval_mode_too(rng, name, value, error):
    params = _transformer(layers=1)
    src, tgt = _x(rng, (2, 4, D_MODEL)), _x(rng, (2, 3, D_MODEL))
    with pytest.raises(error, match=f"transformer: {name}"):
        tf.transformer(params, src, tgt, heads=HEADS, num_layers=1, **{name: value})       # train=False
    if name == "dropout":
        with pytest.raises(error, match="mha: dropout"):
            tf.mha(_mha_params(), src, heads=HEADS, dropout=value)


def test_dropout_probability_one_is_accepted_as_in_torch(rng):
    x = _x(rng, (2, 5, D_MODEL))
    out = tf.mha(_mha_params(), x, heads=HEADS, dropout=1.0, train=True, rng=np.random.default_rng(0))
    assert np.all(host(out) == 0.0)                  # every attention weight dropped: a zero context
    with pytest.raises(ValueError, match="mha: train=True with dropout needs an explicit rng"):
        tf.mha(_mha_params(), x, heads=HEADS, dropout=0.5, train=True)


def test_layer_functions_read_exactly_the_keys_under_their_prefix(rng):
    params = _transformer(layers=1)
    x = _x(rng, (2, 4, D_MODEL))
    tf.encoder_layer(params, x, prefix="encoder.layers.0", heads=HEADS)          # other stacks' keys are not its own
    stray = {**params, "encoder.layers.0.extra.weight": params["encoder.layers.0.norm1.weight"]}
    with pytest.raises(KeyError, match="transformer: params has 1 key.*'encoder.layers.0.extra.weight'"):
        tf.encoder_layer(stray, x, prefix="encoder.layers.0", heads=HEADS)
    biased: dict = {}
    tf.init_decoder_layer(np.random.default_rng(0), biased, "", D_MODEL, 16, attn_bias=True)
    with pytest.raises(KeyError, match="transformer: params has 8 key"):
        tf.decoder_layer(biased, x, x, heads=HEADS)
    tf.decoder_layer(biased, x, x, heads=HEADS, attn_bias=True)
    with pytest.raises(KeyError, match="transformer: parameter 'decoder.layers.0.norm3.weight' is missing"):
        tf.decoder_layer({k: v for k, v in params.items() if k != "decoder.layers.0.norm3.weight"}, x, x,
                         prefix="decoder.layers.0", heads=HEADS)


# ---------------------------------------------------------------------------------------------
# Bahdanau


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _host_params(params):
    return {k: host(v) for k, v in params.items()}


def _reference_gru(p, prefix, x, keep, reverse=False, contexts=None):
    """The paper's GRU step by step on the host, for one sequence x (T, m)."""
    def lin(name, v, bias=True):
        out = p[f"{prefix}.{name}.weight"] @ v
        return out + p[f"{prefix}.{name}.bias"] if bias and f"{prefix}.{name}.bias" in p else out

    h = np.zeros(p[f"{prefix}.U.weight"].shape[0])
    states = np.zeros((len(x), len(h)))
    for t in (range(len(x))[::-1] if reverse else range(len(x))):
        z = _sigmoid(lin("W_z", x[t]) + lin("U_z", h))
        r = _sigmoid(lin("W_r", x[t]) + lin("U_r", h))
        candidate = np.tanh(lin("W", x[t]) + lin("U", r * h))
        if keep[t]:
            h = (1 - z) * h + z * candidate
        states[t] = h
    return states


def _reference_bahdanau(p, source, target, length, readout_state):
    """RNNsearch for one sentence pair on the host (appendix A, written out)."""
    keep = np.arange(len(source)) < length
    annotations = np.concatenate([_reference_gru(p, "encoder.forward", source, keep),
                                  _reference_gru(p, "encoder.backward", source, keep, reverse=True)], axis=1)
    hidden = p["decoder.init.weight"].shape[1]
    s = np.tanh(p["decoder.init.weight"] @ annotations[0, hidden:] + p["decoder.init.bias"])     # <-h_1
    g = "decoder.gru"
    log_probs, alignments = [], []
    previous = np.zeros(source.shape[1])
    for word in target:
        energy = np.array([p["attention.v_a.weight"][0] @ np.tanh(p["attention.W_a.weight"] @ s
                                                                  + p["attention.U_a.weight"] @ h_j)
                           for h_j in annotations])
        alpha = np.where(keep, np.exp(energy - energy[keep].max()), 0.0)
        alpha /= alpha.sum()
        c = alpha @ annotations
        z = _sigmoid(p[f"{g}.W_z.weight"] @ previous + p[f"{g}.W_z.bias"] + p[f"{g}.U_z.weight"] @ s
                     + p[f"{g}.C_z.weight"] @ c)
        r = _sigmoid(p[f"{g}.W_r.weight"] @ previous + p[f"{g}.W_r.bias"] + p[f"{g}.U_r.weight"] @ s
                     + p[f"{g}.C_r.weight"] @ c)
        candidate = np.tanh(p[f"{g}.W.weight"] @ previous + p[f"{g}.W.bias"] + p[f"{g}.U.weight"] @ (r * s)
                            + p[f"{g}.C.weight"] @ c)
        new_s = (1 - z) * s + z * candidate
        read = s if readout_state == "prev" else new_s
        t_tilde = (p["readout.U_o.weight"] @ read + p["readout.U_o.bias"] + p["readout.V_o.weight"] @ previous
                   + p["readout.C_o.weight"] @ c)
        t = t_tilde.reshape(-1, 2).max(axis=1)
        logits = p["output.W_o.weight"] @ t + p["output.W_o.bias"]
        log_probs.append(logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
        alignments.append(alpha)
        s, previous = new_s, word
    return np.array(log_probs), np.array(alignments)


@pytest.mark.parametrize("readout_state", ["prev", "new"])
def test_bahdanau_matches_host_reference(rng, readout_state):
    mech = npattn.get("bahdanau")
    params = mech.default_params()
    source, target, padding = mech.example_input(rng)
    out = host(bah.bahdanau(params, source, target, padding, readout_state=readout_state))
    align = host(bah.alignment(params, source, target, padding, readout_state=readout_state))
    lengths = (~host(padding)).sum(1)
    p = _host_params(params)
    for b in range(2):
        ref_out, ref_align = _reference_bahdanau(p, host(source)[b], host(target)[b], lengths[b], readout_state)
        np.testing.assert_allclose(out[b], ref_out, rtol=0, atol=1e-13)
        np.testing.assert_allclose(align[b], ref_align, rtol=0, atol=1e-14)


def test_bahdanau_alignment_masks_padding_and_matches_the_unpadded_sentence(rng):
    mech = npattn.get("bahdanau")
    params = mech.default_params()
    source, target, padding = mech.example_input(rng)
    align = host(bah.alignment(params, source, target, padding))
    assert align.shape == (2, 5, 6)
    assert np.all(align[1, :, 4:] == 0.0)
    np.testing.assert_allclose(align.sum(-1), 1.0, atol=1e-14)
    # the padded sentence gives what the 4-word sentence gives alone
    short = bah.bahdanau(params, source[1:, :4], target[1:])
    full = bah.bahdanau(params, source, target, padding)
    np.testing.assert_allclose(host(full)[1], host(short)[0], rtol=0, atol=1e-14)


def test_bahdanau_fully_padded_source_gives_no_nan(rng):
    mech = npattn.get("bahdanau")
    params = mech.default_params()
    source, target, _ = mech.example_input(rng)
    padding = _padding([6, 0], 6)
    out = host(bah.bahdanau(params, source, target, padding))
    assert np.all(np.isfinite(out))
    assert np.all(host(bah.alignment(params, source, target, padding))[1] == 0.0)
    grad = ag.grad(lambda s: ag.sum(bah.bahdanau(params, s, target, padding)))(source)
    assert np.all(np.isfinite(host(grad))) and np.all(host(grad)[1] == 0.0)


def test_bahdanau_paper_gru_is_not_torch_gru_shaped():
    """The reset gate sits before U: h~ = tanh(W x + U (r o h)); zero reset kills the recurrent term."""
    rng = np.random.default_rng(0)
    params: dict = {}
    bah.init_paper_gru(rng, params, "g", 3, 4)
    x = dev(rng.standard_normal((1, 2, 3)))
    states = host(bah.paper_gru(params, "g", x))
    ref = _reference_gru(_host_params(params), "g", host(x)[0], np.ones(2, bool))
    np.testing.assert_allclose(states[0], ref, rtol=0, atol=1e-15)


def test_bahdanau_readout_state_option(rng):
    mech = npattn.get("bahdanau")
    params = mech.default_params()
    inputs = mech.example_input(rng)
    assert not np.allclose(host(bah.bahdanau(params, *inputs)), host(bah.bahdanau(params, *inputs,
                                                                                    readout_state="new")))
    assert ag.gradcheck(lambda p, s, t: bah.bahdanau(p, s, t, inputs[2], readout_state="new"), params,
                        *inputs[:2], mode="fast", n_directions=2)
    with pytest.raises(ValueError, match="bahdanau.*readout_state"):
        bah.bahdanau(params, *inputs, readout_state="old")


def test_bahdanau_parameters_and_sequences_are_checked(rng):
    mech = npattn.get("bahdanau")
    params = mech.default_params()
    source, target, padding = mech.example_input(rng)
    with pytest.raises(ValueError, match="bahdanau: source must have at least one time step"):
        bah.bahdanau(params, source[:, :0], target)
    with pytest.raises(ValueError, match="bahdanau: target must have at least one time step"):
        bah.bahdanau(params, source, target[:, :0], padding)
    wide = {**params, "readout.V_o.weight": dev(np.zeros((9, 6)))}                 # 2l = 8
    with pytest.raises(ValueError, match=r"bahdanau: parameter 'readout.V_o.weight' must have shape \(8, 6\)"):
        bah.bahdanau(wide, source, target, padding)
    # no bias on a recurrent map: one there is an unused key, never silently added
    with pytest.raises(KeyError, match="bahdanau: params has 1 key.*'decoder.gru.U.bias'"):
        bah.bahdanau({**params, "decoder.gru.U.bias": dev(np.zeros(5))}, source, target, padding)
    gru: dict = {}
    bah.init_paper_gru(np.random.default_rng(0), gru, "g", 3, 4)
    x = dev(rng.standard_normal((2, 3, 3)))
    with pytest.raises(KeyError, match="bahdanau: params has 1 key.*'g.U_z.bias'"):
        bah.paper_gru({**gru, "g.U_z.bias": dev(np.zeros(4))}, "g", x)
    assert bah.paper_gru({**gru, "other.weight": dev(np.zeros(4))}, "g", x).shape == (2, 3, 4)   # not under "g"


def test_bahdanau_docstring_says_where_groundhog_learns_the_gate_biases():
    doc = bah.__doc__
    assert "learn_bias=False" in doc and "input_embdr" in doc and "W_z, W_r" in doc


# ---------------------------------------------------------------------------------------------
# Show, Attend and Tell


def _sat(seed=0, **kw):
    return sat.init(np.random.default_rng(seed), **{**sat.CONFIG, **kw})


def _sat_inputs(rng):
    return npattn.get("show-attend-tell").example_input(rng)


def test_sat_attention_maps_are_distributions_and_padding_keeps_the_state(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    maps = host(sat.attention_maps(params, features, captions, padding))
    assert maps.shape == (2, 5, 3, 3)
    np.testing.assert_allclose(maps.sum((2, 3)), 1.0, atol=1e-14)
    # caption 1 has 3 words: its state is frozen after step 2, so alpha_3 == alpha_4 (computed from h_2 = h_3)
    np.testing.assert_array_equal(maps[1, 3], maps[1, 4])
    # the padded words never change the real steps' outputs
    changed = host(captions).copy()
    changed[1, 3:] = (changed[1, 3:] + 1) % sat.CONFIG["vocab"]
    a = host(sat.show_attend_tell(params, features, captions, padding))
    b = host(sat.show_attend_tell(params, features, dev(changed), padding))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    betas = host(sat.selector_gates(params, features, captions, padding))
    assert betas.shape == (2, 5) and np.all((betas > 0) & (betas < 1))


def test_sat_hard_with_alpha_as_samples_equals_soft(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    maps = sat.attention_maps(params, features, captions, padding)
    soft = host(sat.show_attend_tell(params, features, captions, padding))
    hard = host(sat.show_attend_tell(params, features, captions, padding, maps, attention="hard"))
    np.testing.assert_allclose(hard, soft, rtol=0, atol=1e-15)


def test_sat_masked_cost_and_regularisers_match_formulas(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    log_probs_dev = sat.show_attend_tell(params, features, captions, padding)
    log_probs = host(log_probs_dev)
    alphas = host(sat.attention_maps(params, features, captions, padding)).reshape(2, 5, 9)
    ids, pad = host(captions), host(padding)
    p = np.exp(np.take_along_axis(log_probs, ids[..., None], -1)[..., 0])
    cost = np.where(pad, 0.0, -np.log(p + 1e-8))
    np.testing.assert_allclose(host(sat.masked_cost(log_probs_dev, captions, padding)), cost, rtol=1e-15)
    deficit = (1 - alphas.sum(1)) ** 2                                   # (B, L)
    official = deficit.sum(0).mean()                                   # Theano: (T,B,L).sum(0) -> .sum(0) -> .mean()
    paper = deficit.sum(1).mean()
    np.testing.assert_allclose(host(sat.doubly_stochastic(dev(alphas))), official, rtol=1e-14)
    np.testing.assert_allclose(host(sat.doubly_stochastic(dev(alphas), regulariser="paper")), paper, rtol=1e-14)
    expected = cost.sum(1).mean() + 0.7 * official
    np.testing.assert_allclose(host(sat.loss(params, features, captions, padding, alpha_c=0.7)), expected, rtol=1e-13)


def test_sat_loss_gradcheck(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    assert ag.gradcheck(lambda p, f: sat.loss(p, f, captions, padding, regulariser="paper"), params, features,
                        mode="fast", n_directions=3)


@pytest.mark.parametrize("flags", [dict(selector=False), dict(ctx2out=False), dict(selector=False, ctx2out=False)])
def test_sat_variants(rng, flags):
    params = _sat(**flags)
    features, captions, padding = _sat_inputs(rng)
    assert ("decoder.W_sel.weight" in params) == flags.get("selector", True)
    assert ag.gradcheck(lambda p, f: sat.show_attend_tell(p, f, captions, padding, prev2out=False, **flags), params,
                        features, mode="fast", n_directions=2)


def test_sat_sampling_is_seeded_one_hot_and_inside_the_support(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    a = host(sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(4)))
    b = host(sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(4)))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1.0} and np.all(a.sum((2, 3)) == 1.0)
    maps = host(sat.attention_maps(params, features, captions, padding, dev(a), attention="hard"))
    assert np.all(maps[a == 1.0] > 0)


def _known_grads(alphas, samples, cost, baseline, entropy_c=0.002):
    """The official Theano known_grads on alphas (RL_sumCost=True), in (B, T, L) layout."""
    return (baseline - cost)[:, None, None] / 10.0 * (-samples / alphas) + entropy_c * (np.log(alphas) + 1)


def test_reinforce_term_gradient_is_the_official_known_grads(rng):
    alphas = rng.dirichlet(np.ones(9), size=(2, 5))
    samples = np.eye(9)[rng.integers(0, 9, size=(2, 5))]
    cost, baseline = np.array([2.5, 1.25]), 1.7
    grad = ag.grad(lambda a: sat.reinforce_term(a, dev(samples), dev(cost), baseline))(dev(alphas))
    np.testing.assert_allclose(host(grad), _known_grads(alphas, samples, cost, baseline), rtol=1e-13, atol=1e-15)


def test_hard_surrogate_gradient_is_nll_plus_known_grads_through_alpha(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    samples = sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(2))
    cost, baseline = dev(np.array([3.0, 2.0])), 2.2
    g_surrogate = ag.grad(lambda p: sat.hard_surrogate(p, features, captions, padding, samples, cost, baseline))(params)

    def nll(p):
        log_probs = sat.show_attend_tell(p, features, captions, padding, samples, attention="hard")
        return ag.mean(ag.sum(sat.masked_cost(log_probs, captions, padding), axis=1))

    g_nll = ag.grad(nll)(params)
    alphas, pullback = ag.vjp(
        lambda p: ag.reshape(sat.attention_maps(p, features, captions, padding, samples, attention="hard"),
                             (2, 5, 9)), params)
    known = _known_grads(host(alphas), host(samples).reshape(2, 5, 9), host(cost), baseline)
    (g_alpha,) = pullback(dev(known))
    for k in params:
        np.testing.assert_allclose(host(g_surrogate[k]), host(g_nll[k]) + host(g_alpha[k]), rtol=1e-10, atol=1e-13)
    # with cost and baseline held constant the surrogate is an ordinary differentiable function
    assert ag.gradcheck(lambda p, f: sat.hard_surrogate(p, f, captions, padding, samples, cost, baseline), params,
                        features, mode="fast", n_directions=3)


def test_hard_surrogate_default_cost_and_baseline_update(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    samples = sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(2))
    log_probs = sat.show_attend_tell(params, features, captions, padding, samples, attention="hard")
    word_cost = sat.masked_cost(log_probs, captions, padding)
    explicit = sat.hard_surrogate(params, features, captions, padding, samples, ag.mean(word_cost, axis=1), 0.5)
    default = sat.hard_surrogate(params, features, captions, padding, samples, baseline=0.5)
    np.testing.assert_array_equal(host(explicit), host(default))
    assert sat.update_baseline(0.5, word_cost) == pytest.approx(0.45 + 0.1 * host(word_cost).mean())


def test_sat_bad_arguments(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    with pytest.raises(ValueError, match="show-attend-tell.*samples"):
        sat.show_attend_tell(params, features, captions, padding, attention="hard")
    with pytest.raises(ValueError, match="show-attend-tell.*temperature"):
        sat.show_attend_tell(params, features, captions, temperature=0.5)
    with pytest.raises(TypeError, match="show-attend-tell.*captions"):
        sat.show_attend_tell(params, features, dev(host(captions).astype(np.float64)))
    with pytest.raises(ValueError, match="show-attend-tell.*captions"):
        sat.show_attend_tell(params, features, dev(host(captions) + 10))
    with pytest.raises(ValueError, match="show-attend-tell.*samples"):
        sat.show_attend_tell(params, features, captions, None, features[:, :4], attention="hard")


@pytest.mark.parametrize("flag, key", [("selector", "decoder.W_sel.weight"), ("ctx2out", "ff_logit_ctx.weight")])
def test_sat_structure_is_an_option_not_the_presence_of_keys(rng, flag, key):
    features, captions, padding = _sat_inputs(rng)
    without = _sat(**{flag: False})
    with pytest.raises(KeyError, match=f"show-attend-tell: parameter '{key}' is missing"):
        sat.show_attend_tell(without, features, captions, padding)                  # default: the paper's model
    sat.show_attend_tell(without, features, captions, padding, **{flag: False})
    with pytest.raises(KeyError, match=f"show-attend-tell: params has 2 key.*'{key}'"):
        sat.show_attend_tell(_sat(), features, captions, padding, **{flag: False})
    with pytest.raises(TypeError, match=f"show-attend-tell: {flag} must be True or False"):
        sat.show_attend_tell(_sat(), features, captions, padding, **{flag: 1})


def test_sat_selector_gates_need_the_selector(rng):
    features, captions, padding = _sat_inputs(rng)
    with pytest.raises(ValueError, match="show-attend-tell: selector=False builds no gating scalar"):
        sat.selector_gates(_sat(selector=False), features, captions, padding, selector=False)


def test_sat_temperature_is_an_inverse_temperature(rng):
    """With the samples fixed the scores do not depend on alpha, so alpha_T = alpha_1^T / sum(alpha_1^T)."""
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    samples = sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(2))
    base = host(sat.attention_maps(params, features, captions, padding, samples, attention="hard"))
    for temperature in (2.0, 0.5):
        sharp = host(sat.attention_maps(params, features, captions, padding, samples, attention="hard",
                                        temperature=temperature))
        powered = base ** temperature
        np.testing.assert_allclose(sharp, powered / powered.sum(axis=(2, 3), keepdims=True), rtol=1e-12)
    assert host(sat.attention_maps(params, features, captions, padding, samples, attention="hard",
                                   temperature=4.0)).max() > base.max()      # larger is sharper
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="show-attend-tell: temperature .*inverse temperature"):
            sat.show_attend_tell(params, features, captions, padding, samples, attention="hard", temperature=bad)
        with pytest.raises(ValueError, match="show-attend-tell: temperature"):
            sat.sample_attention(params, features, captions, padding, rng=np.random.default_rng(0), temperature=bad)
    assert "*inverse* temperature" in sat.show_attend_tell.__doc__


def test_sat_loss_options_and_captions_are_checked(rng):
    params = _sat()
    features, captions, padding = _sat_inputs(rng)
    with pytest.raises(ValueError, match="show-attend-tell: regulariser"):
        sat.loss(params, features, captions, padding, alpha_c=0.0, regulariser="papr")
    with pytest.raises(ValueError, match="show-attend-tell: alpha_c"):
        sat.loss(params, features, captions, padding, alpha_c=np.nan)
    with pytest.raises(ValueError, match="show-attend-tell: features must have at least one location"):
        sat.show_attend_tell(params, features[:, :, :0], captions, padding)
    with pytest.raises(ValueError, match="show-attend-tell: captions must have at least one word"):
        sat.show_attend_tell(params, features, captions[:, :0])
    wrong = {**params, "decoder.U.weight": dev(np.zeros((25, 6)))}                 # 4n = 24
    with pytest.raises(ValueError, match=r"show-attend-tell: parameter 'decoder.U.weight' must have shape \(24, 6\)"):
        sat.show_attend_tell(wrong, features, captions, padding)
