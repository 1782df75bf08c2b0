"""scaled_dot_product_attention against an explicit-loop reference written from the spec sheet
(shared/specs/attention-core.md §1), gradients by finite differences, properties, and the chunked path.

The reference below computes every logit with a Python loop over (b, h, i, j) and decides each mask entry
from the spec's inequalities, so it shares no code (and no vectorised trick) with autograd/attention.py.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autograd as ag
from autograd import _flash
from autograd.attention import scaled_dot_product_attention as sdpa

from .helpers import check_grads, dev, host

IMPLEMENTATIONS = ("materialised", "chunked")


# ---------------------------------------------------------------------------------------------
# the reference


def _flash_rewrite(window, key_length, causal):
    """flash_api.cpp (mha_fwd + set_params_fprop), transcribed: returns (left, right, causal_kernel)."""
    left, right = window if window is not None else (-1, -1)
    if left >= key_length:
        left = -1
    if right >= key_length:
        right = -1
    if causal:
        right = 0
    causal_kernel = left < 0 and right == 0
    if left < 0 and right >= 0:
        left = key_length
    if left >= 0 and right < 0:
        right = key_length
    return left, right, causal_kernel


def reference(q, k, v, *, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, alignment=None, window=None,
              window_unbounded="infinite", softcap=0.0, bias=None, alibi_slopes=None, alibi_form="symmetric",
              key_padding_mask=None, dropout_mask=None, masked_rows="zero", seqlen_k=None):
    """(O, lse) by loops, host float64.  ``alignment=None`` means bottom-right (only used where both agree)."""
    batch, heads, query_length, dim = q.shape
    kv_heads, key_length = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    full = (batch, heads, query_length, key_length)
    bool_mask = float_mask = None
    if attn_mask is not None:
        if attn_mask.dtype == bool:
            bool_mask = np.broadcast_to(attn_mask, full)
        else:
            float_mask = np.broadcast_to(attn_mask, full)
    bias = None if bias is None else np.broadcast_to(bias, full)
    drop = None if dropout_mask is None else np.broadcast_to(dropout_mask, full)
    left, right, causal_kernel = _flash_rewrite(window, key_length if seqlen_k is None else seqlen_k, is_causal)
    if window_unbounded == "infinite":
        left, right = window if window is not None else (-1, -1)
    form = alibi_form if alibi_form != "flash" else ("fairseq" if causal_kernel else "symmetric")
    out = np.zeros((batch, heads, query_length, v.shape[-1]))
    lse = np.zeros((batch, heads, query_length))
    for b in range(batch):
        valid = key_length - (int(key_padding_mask[b].sum()) if key_padding_mask is not None else 0)
        off = {"top-left": 0, "bottom-right": valid - query_length, None: valid - query_length}.get(alignment,
                                                                                                  alignment)
        for h in range(heads):
            kv = h // group                                   # interleaved GQA: query head h reads kv head h // G
            for i in range(query_length):
                logits, kept = [], []
                for j in range(key_length):
                    s = scale * float(np.dot(q[b, h, i], k[b, kv, j]))
                    if softcap:
                        s = softcap * math.tanh(s / softcap)
                    if float_mask is not None:
                        s += float_mask[b, h, i, j]
                    if bias is not None:
                        s += bias[b, h, i, j]
                    if alibi_slopes is not None:
                        m = alibi_slopes[h] if alibi_slopes.ndim == 1 else alibi_slopes[b, h]
                        s += m * j if form == "fairseq" else -m * abs(i + off - j)
                    keep = True
                    if bool_mask is not None and not bool_mask[b, h, i, j]:
                        keep = False
                    if key_padding_mask is not None and key_padding_mask[b, j]:
                        keep = False
                    if is_causal and j > i + off:
                        keep = False
                    if left >= 0 and j < i + off - left:
                        keep = False
                    if right >= 0 and j > i + off + right:
                        keep = False
                    logits.append(s)
                    kept.append(keep and s != -np.inf)
                logits, kept = np.array(logits), np.array(kept, dtype=bool)
                if kept.any():
                    top = logits[kept].max()
                    weights = np.where(kept, np.exp(np.where(kept, logits, top) - top), 0.0)
                    lse[b, h, i] = top + math.log(weights.sum())
                    weights = weights / weights.sum()
                else:
                    lse[b, h, i] = np.inf
                    fill = {"zero": 0.0, "nan": np.nan, "uniform": 1.0 / max(key_length, 1)}[masked_rows]
                    weights = np.full(key_length, fill)
                if drop is not None:
                    weights = weights * drop[b, h, i] / (1.0 - dropout_p)
                if key_length:
                    out[b, h, i] = weights @ v[b, kv]
                else:                                         # no keys at all: the empty sum, NaN under 'nan'
                    out[b, h, i] = np.nan if masked_rows == "nan" else 0.0
    return out, lse


def _inputs(rng, batch=2, heads=4, kv_heads=2, query_length=5, key_length=7, dim=3, value_dim=4):
    return (rng.standard_normal((batch, heads, query_length, dim)),
            rng.standard_normal((batch, kv_heads, key_length, dim)),
            rng.standard_normal((batch, kv_heads, key_length, value_dim)))


def _run(q, k, v, implementation, chunk_size=(2, 3), **options):
    device = {name: (dev(value) if isinstance(value, np.ndarray) else value) for name, value in options.items()}
    out, lse = sdpa(dev(q), dev(k), dev(v), enable_gqa=True, return_lse=True, implementation=implementation,
                    chunk_size=chunk_size if implementation == "chunked" else None, **device)
    return host(out), host(lse)


def _assert_matches(actual, expected, tol=1e-12):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(e))
        finite = np.isfinite(e)
        np.testing.assert_allclose(a[finite], e[finite], rtol=tol, atol=tol)


def _cases(rng):
    """(name, shapes, options) covering every option, Lq < Lk, Lq > Lk, empty rows, GQA 4:2 and MQA 4:1."""
    long_q = dict(query_length=9, key_length=4)
    drop = rng.random((2, 4, 9, 4)) > 0.3
    return [
        ("plain", {}, {}),
        ("mqa", dict(kv_heads=1), {}),
        ("scale", {}, dict(scale=0.37)),
        ("dv-ne-d", dict(dim=5, value_dim=2), {}),
        ("bool-mask", {}, dict(attn_mask=rng.random((5, 7)) > 0.4)),
        ("float-mask", {}, dict(attn_mask=rng.standard_normal((1, 4, 5, 7)))),
        ("float-mask-inf-row", {}, dict(attn_mask=np.where(np.arange(5)[:, None] == 2, -np.inf, 0.0) + np.zeros(7))),
        ("causal-tl", {}, dict(is_causal=True, alignment="top-left")),
        ("causal-br", {}, dict(is_causal=True, alignment="bottom-right")),
        ("causal-tl-long-q", long_q, dict(is_causal=True, alignment="top-left")),
        ("causal-br-long-q", long_q, dict(is_causal=True, alignment="bottom-right")),
        ("causal-int-offset", {}, dict(is_causal=True, alignment=-1)),
        ("window", {}, dict(window=(1, 2))),
        ("window-left-only", {}, dict(window=(2, -1), alignment="top-left")),
        ("window-empties-rows", long_q, dict(window=(0, 0))),
        ("window-seqlen_k", long_q, dict(window=(2, -1), window_unbounded="seqlen_k")),
        ("window-seqlen_k-causal", long_q, dict(window=(1, 5), is_causal=True, alignment="bottom-right",
                                                window_unbounded="seqlen_k")),
        ("softcap", {}, dict(softcap=0.8)),
        ("bias", {}, dict(bias=rng.standard_normal((2, 1, 5, 7)))),
        ("alibi", {}, dict(alibi_slopes=rng.uniform(0.1, 1.0, 4))),
        ("alibi-batch", {}, dict(alibi_slopes=rng.uniform(0.1, 1.0, (2, 4)), alignment="top-left")),
        ("alibi-fairseq", {}, dict(alibi_slopes=rng.uniform(0.1, 1.0, 4), alibi_form="fairseq", is_causal=True,
                                   alignment="bottom-right")),
        ("alibi-flash-causal", {}, dict(alibi_slopes=rng.uniform(0.1, 1.0, 4), alibi_form="flash", is_causal=True,
                                        alignment="bottom-right")),
        ("alibi-flash-window", {}, dict(alibi_slopes=rng.uniform(0.1, 1.0, 4), alibi_form="flash",
                                        window=(2, 0))),
        ("everything", {}, dict(softcap=1.3, bias=rng.standard_normal((1, 1, 5, 7)),
                                attn_mask=rng.standard_normal((2, 4, 5, 7)), alibi_slopes=rng.uniform(0.1, 1, 4),
                                is_causal=True, alignment="bottom-right", window=(3, -1))),
        ("padding", {}, dict(key_padding_mask=np.arange(7)[None, :] >= np.array([[7], [4]]))),
        ("padding-br-causal", {}, dict(key_padding_mask=np.arange(7)[None, :] >= np.array([[6], [3]]),
                                       is_causal=True, alignment="bottom-right")),
        ("padding-everything", {}, dict(key_padding_mask=np.ones((2, 7), bool))),
        ("dropout", long_q, dict(dropout_p=0.3, dropout_mask=drop)),
        ("nan-rows", long_q, dict(is_causal=True, alignment="bottom-right", masked_rows="nan")),
        ("uniform-rows", long_q, dict(is_causal=True, alignment="bottom-right", masked_rows="uniform")),
        ("uniform-rows-dropout", long_q, dict(is_causal=True, alignment="bottom-right", masked_rows="uniform",
                                              dropout_p=0.3, dropout_mask=drop)),
        ("no-keys", dict(key_length=0), dict(masked_rows="uniform")),
        ("no-keys-nan", dict(key_length=0), dict(masked_rows="nan")),
        ("no-queries", dict(query_length=0), {}),
        ("empty-batch", dict(batch=0), dict(is_causal=True, alignment="top-left")),
    ]


CASES = _cases(np.random.default_rng(0))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,shapes,options", CASES, ids=[c[0] for c in CASES])
def test_matches_the_loop_reference(name, shapes, options, implementation):
    q, k, v = _inputs(np.random.default_rng(1), **shapes)
    expected = reference(q, k, v, **options)
    _assert_matches(_run(q, k, v, implementation, **options), expected)


@pytest.mark.parametrize("name,shapes,options", CASES, ids=[c[0] for c in CASES])
def test_output_without_lse_is_the_output_with_it(name, shapes, options):
    """return_lse=False skips the lse (and, under masked_rows='zero', the empty-row) passes of the materialised
    path: the output and its gradients stay those of the full path bit for bit (which the loop reference checks)."""
    q, k, v = (dev(a) for a in _inputs(np.random.default_rng(1), **shapes))
    device = {name: (dev(value) if isinstance(value, np.ndarray) else value) for name, value in options.items()}
    cotangent = dev(np.random.default_rng(2).standard_normal((q.shape[0], q.shape[1], q.shape[2], v.shape[-1])))
    results = []
    for return_lse in (True, False):
        def f(q, k, v):
            out = sdpa(q, k, v, enable_gqa=True, return_lse=return_lse, implementation="materialised", **device)
            return ag.sum((out[0] if return_lse else out) * cotangent)
        value, grads = ag.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)
        results.append([host(value)] + [host(g) for g in grads])
    for with_lse, without in zip(*results):
        np.testing.assert_array_equal(without, with_lse)


def test_reference_tells_the_conventions_apart():
    """The reference (and so the test above) is sensitive to each convention an implementation can get wrong."""
    q, k, v = _inputs(np.random.default_rng(2), query_length=6, key_length=4)
    pairs = [
        (dict(is_causal=True, alignment="top-left"), dict(is_causal=True, alignment="bottom-right")),
        (dict(window=(1, -1)), dict(window=(1, -1), window_unbounded="seqlen_k")),
        (dict(alibi_slopes=np.ones(4), is_causal=True, alignment="top-left"),
         dict(alibi_slopes=np.ones(4), alibi_form="fairseq", is_causal=True, alignment="top-left")),
        (dict(softcap=0.5, bias=np.full((6, 4), 3.0) * np.arange(4)),
         dict(bias=np.full((6, 4), 3.0) * np.arange(4))),
        (dict(is_causal=True, alignment="bottom-right"),
         dict(is_causal=True, alignment="bottom-right", masked_rows="uniform")),
    ]
    for a, b in pairs:
        out_a, lse_a = reference(q, k, v, **a)
        out_b, lse_b = reference(q, k, v, **b)
        assert not np.allclose(np.nan_to_num(out_a), np.nan_to_num(out_b)) or not np.allclose(lse_a, lse_b), (a, b)
    # alibi 'fairseq' vs 'symmetric' under a causal mask: same probabilities, lse shifted by m * (i + off)
    out_s, lse_s = reference(q, k, v, alibi_slopes=np.ones(4) * 0.5, is_causal=True, alignment="top-left")
    out_f, lse_f = reference(q, k, v, alibi_slopes=np.ones(4) * 0.5, alibi_form="fairseq", is_causal=True,
                             alignment="top-left")
    np.testing.assert_allclose(out_s, out_f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse_f - lse_s, 0.5 * np.arange(6) * np.ones((2, 4, 1)), rtol=1e-12, atol=1e-12)


def test_tiled_gqa_would_be_caught():
    """Query head h reads kv head h // G; the tiled mapping h % Hkv gives another answer."""
    q, k, v = _inputs(np.random.default_rng(3))
    out, _ = _run(q, k, v, "materialised")
    tiled = np.concatenate([k, k], axis=1), np.concatenate([v, v], axis=1)
    wrong, _ = reference(q, *tiled)
    right, _ = reference(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1))
    np.testing.assert_allclose(out, right, rtol=1e-12, atol=1e-12)
    assert np.abs(out - wrong).max() > 1e-2


def test_flash_seqlen_k_rewrite_drops_the_last_keys_of_early_rows():
    """spec §1 quirk: with Lq > Lk + 1, a window (l, -1) under flash's rewrite cuts keys of rows i < Lq - Lk - 1."""
    q, k, v = _inputs(np.random.default_rng(4), query_length=9, key_length=4)
    lse_inf = _run(q, k, v, "materialised", window=(3, -1))[1]
    lse_flash = _run(q, k, v, "materialised", window=(3, -1), window_unbounded="seqlen_k")[1]
    # off = Lk - Lq = -5; the rewrite turns right = -1 into Lk = 4, so row i keeps j <= i - 1
    assert np.all(np.isinf(lse_flash[..., 0])) and np.all(np.isfinite(lse_inf[..., 0]))
    for row in (1, 2, 3):                                  # rows i < Lq - Lk - 1 = 4 lose their last keys
        assert np.all(lse_flash[..., row] < lse_inf[..., row])
    np.testing.assert_allclose(lse_inf[..., 4:], lse_flash[..., 4:], rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# gradients


GRAD_CASES = [
    ("plain", {}, {}),
    ("gqa-causal-br-long-q", dict(query_length=5, key_length=3), dict(is_causal=True, alignment="bottom-right")),
    ("causal-tl-long-k", dict(query_length=3, key_length=5), dict(is_causal=True, alignment="top-left")),
    ("window-empties-rows", dict(query_length=5, key_length=3), dict(window=(0, 0))),
    ("padding-all", {}, dict(key_padding_mask=np.array([[False, True, False, True], [True] * 4]),
                             alignment="top-left")),
    ("softcap-bias-alibi", {}, dict(softcap=0.9, window=(1, 1))),
    ("uniform-rows", dict(query_length=5, key_length=3), dict(is_causal=True, alignment="bottom-right",
                                                            masked_rows="uniform")),
    ("dropout", {}, dict(dropout_p=0.25, dropout_mask=np.random.default_rng(5).random((1, 4, 3, 4)) > 0.25)),
]


def _differentiable(rng, shapes, options, with_terms):
    q, k, v = _inputs(rng, batch=2, heads=4, kv_heads=2, dim=2, value_dim=3,
                      **{"query_length": 3, "key_length": 4, **shapes})
    terms = {}
    if with_terms:
        lq, lk = q.shape[2], k.shape[2]
        terms = {"attn_mask": rng.standard_normal((1, 4, lq, lk)), "bias": rng.standard_normal((2, 1, lq, lk)),
                 "alibi_slopes": rng.uniform(0.2, 0.8, 4)}
    return (dev(q), dev(k), dev(v)), {name: dev(value) for name, value in terms.items()}, {
        name: (dev(value) if isinstance(value, np.ndarray) else value) for name, value in options.items()}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,shapes,options", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradcheck(name, shapes, options, implementation):
    """Full finite-difference Jacobians w.r.t. q, k, v, the float mask, the bias and the ALiBi slopes, of out
    and of lse (empty rows' lse is +inf and excluded)."""
    (q, k, v), terms, options = _differentiable(np.random.default_rng(6), shapes, options, with_terms=True)

    def f(q, k, v, terms):
        out, lse = sdpa(q, k, v, enable_gqa=True, return_lse=True, implementation=implementation, chunk_size=(2, 3),
                        **terms, **options)
        finite_lse = ag.where(ag.xp.isfinite(lse.data), lse, 0.0)
        return ag.concatenate([ag.reshape(out, (-1,)), ag.reshape(finite_lse, (-1,))])

    assert ag.gradcheck(f, q, k, v, terms, mode="full")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradgradcheck(implementation):
    """Second order: the composed form directly, and through the chunked primitive's fallback."""
    (q, k, v), terms, options = _differentiable(np.random.default_rng(7), {}, dict(softcap=1.1, is_causal=True,
                                                                                  alignment="top-left"), True)

    def f(q, k, v, terms):
        return sdpa(q, k, v, enable_gqa=True, implementation=implementation, chunk_size=(2, 2), **terms, **options)

    check_grads(f, q, k, v, terms, mode="fast")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fully_masked_rows_pass_exactly_zero_gradient(implementation):
    """'zero': an empty row's output is 0 and no gradient flows from it (torch's _safe_softmax)."""
    rng = np.random.default_rng(8)
    q, k, v = _inputs(rng, query_length=6, key_length=3)
    mask = rng.random((2, 4, 6, 3)) > 0.3
    mask[:, :, 1] = False

    def loss(q, k, v):
        out = sdpa(q, k, v, attn_mask=dev(mask), enable_gqa=True, implementation=implementation, chunk_size=(2, 2))
        return ag.sum(out[:, :, 1] * 3.0)

    dq, dk, dv = ag.grad(loss, argnums=(0, 1, 2))(dev(q), dev(k), dev(v))
    for g in (dq, dk, dv):
        assert np.all(host(g) == 0.0)
    out = sdpa(dev(q), dev(k), dev(v), attn_mask=dev(mask), enable_gqa=True, implementation=implementation)
    assert np.all(host(out)[:, :, 1] == 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_policy_gradients_are_nan_on_v_only(implementation):
    q, k, v = _inputs(np.random.default_rng(9), query_length=5, key_length=3)

    def loss(q, k, v):
        out = sdpa(q, k, v, is_causal=True, alignment="bottom-right", masked_rows="nan", enable_gqa=True,
                   implementation=implementation, chunk_size=(2, 2))
        return ag.sum(ag.where(ag.xp.isnan(out.data), 0.0, out))

    dq, dk, dv = ag.grad(loss, argnums=(0, 1, 2))(dev(q), dev(k), dev(v))
    assert np.all(np.isfinite(host(dq))) and np.all(np.isfinite(host(dk)))
    assert np.all(np.isnan(host(dv)))      # P is NaN on a whole row: every value of the row's kv head reads it


# ---------------------------------------------------------------------------------------------
# properties


@settings(max_examples=25)
@given(data=st.data())
def test_masking_a_key_equals_removing_it(data):
    """A key hidden by the boolean mask (or the padding mask) contributes exactly nothing."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    key_length = data.draw(st.integers(2, 6))
    q, k, v = _inputs(rng, batch=1, heads=2, kv_heads=data.draw(st.sampled_from([1, 2])),
                      query_length=data.draw(st.integers(1, 4)), key_length=key_length)
    hidden = data.draw(st.integers(0, key_length - 1))
    softcap = data.draw(st.sampled_from([0.0, 0.7]))
    implementation = data.draw(st.sampled_from(IMPLEMENTATIONS))
    mask = np.ones(key_length, bool)
    mask[hidden] = False
    kept = np.arange(key_length) != hidden
    out_masked = _run(q, k, v, implementation, attn_mask=mask, softcap=softcap)
    out_padded = _run(q, k, v, implementation, key_padding_mask=~mask[None], softcap=softcap, alignment="top-left")
    out_removed = _run(q, k[:, :, kept], v[:, :, kept], implementation, softcap=softcap)
    _assert_matches(out_masked, out_removed, tol=1e-13)
    _assert_matches(out_padded, out_removed, tol=1e-13)


@settings(max_examples=25)
@given(data=st.data())
def test_causal_alignments_agree_when_lengths_match(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    length = data.draw(st.integers(1, 7))
    q, k, v = _inputs(rng, batch=1, heads=2, kv_heads=2, query_length=length, key_length=length)
    implementation = data.draw(st.sampled_from(IMPLEMENTATIONS))
    top_left = _run(q, k, v, implementation, is_causal=True, alignment="top-left")
    bottom_right = _run(q, k, v, implementation, is_causal=True, alignment="bottom-right")
    unnamed = _run(q, k, v, implementation, is_causal=True)
    for a, b in zip(top_left, bottom_right):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(top_left, unnamed):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=30)
@given(data=st.data())
def test_chunked_equals_materialised(data):
    """Random shapes, options and chunk sizes: outputs, lse and every gradient agree to 1e-12 (float64)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    kv_heads = data.draw(st.sampled_from([1, 2]))
    lq, lk = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    q, k, v = _inputs(rng, batch=data.draw(st.integers(1, 2)), heads=2 * kv_heads if data.draw(st.booleans())
                      else kv_heads, kv_heads=kv_heads, query_length=lq, key_length=lk)
    options = {}
    if data.draw(st.booleans()):
        options.update(is_causal=True, alignment=data.draw(st.sampled_from(["top-left", "bottom-right", -2, 3])))
    if data.draw(st.booleans()):
        options["window"] = (data.draw(st.integers(-1, 4)), data.draw(st.integers(-1, 4)))
    if data.draw(st.booleans()):
        options["softcap"] = data.draw(st.sampled_from([0.5, 2.0]))
    if data.draw(st.booleans()):
        options["bias"] = dev(rng.standard_normal((1, 1, lq, lk)))
    if data.draw(st.booleans()):
        options["alibi_slopes"] = dev(rng.uniform(0.1, 1.0, q.shape[1]))
        options["alibi_form"] = data.draw(st.sampled_from(["symmetric", "fairseq", "flash"]))
    options["masked_rows"] = data.draw(st.sampled_from(["zero", "uniform"]))
    if data.draw(st.booleans()):
        options.update(dropout_p=0.25, dropout_mask=dev(rng.random((1, q.shape[1], lq, lk)) > 0.25))
    chunk = (data.draw(st.integers(1, 10)), data.draw(st.integers(1, 10)))
    cotangent = dev(rng.standard_normal(q.shape[:3] + (v.shape[-1],)))
    lse_cotangent = dev(rng.standard_normal(q.shape[:3]))

    def run(implementation):
        def loss(q, k, v):
            out, lse = sdpa(q, k, v, enable_gqa=True, return_lse=True, implementation=implementation,
                            chunk_size=chunk, **options)
            return ag.sum(out * cotangent) + ag.sum(ag.where(ag.xp.isfinite(lse.data), lse, 0.0) * lse_cotangent), \
                (out, lse)

        (_, (out, lse)), grads = ag.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(dev(q), dev(k), dev(v))
        return [host(out), host(lse)] + [host(g) for g in grads]

    _assert_matches(run("chunked"), run("materialised"), tol=1e-12)


@pytest.mark.parametrize("logits", ["ordinary", "huge", "tiny", "mixed"])
def test_unshifted_forward_falls_back_where_its_sums_leave_the_safe_range(monkeypatch, logits):
    """The chunked forward takes P = exp(S) without a running max only for row blocks whose sums stay in range;
    rows of logits ~ +800 (exp overflows) or ~ -720 (exp gives subnormals: digits lost) send their row block
    to the max-shifted online softmax, and the results still agree with the materialised path to 1e-12."""
    rng = np.random.default_rng(31)
    q, k, v = _inputs(rng, batch=2, heads=2, kv_heads=2, query_length=12, key_length=9)
    bias = np.zeros((2, 1, 12, 1))
    if logits in ("huge", "mixed"):
        bias[0, :, :4] = 800.0                     # batch 0, first row block: every logit ~ +800
    if logits in ("tiny", "mixed"):
        bias[1, :, 4:] = -720.0                    # batch 1, the last two row blocks: every logit ~ -720
    calls = {"unshifted": 0, "online": 0}
    for name, method in (("unshifted", "unshifted_rows"), ("online", "online_rows")):
        def spy(self, pieces, whole, original=getattr(_flash._Kernel, method), name=name):
            calls[name] += 1
            return original(self, pieces, whole)
        monkeypatch.setattr(_flash._Kernel, method, spy)
    options = dict(bias=bias, chunk_size=(4, 3))
    _assert_matches(_run(q, k, v, "chunked", **options), _run(q, k, v, "materialised", **options))
    expected_online = {"ordinary": 0, "huge": 1, "tiny": 2, "mixed": 3}[logits]
    # the small (batch, head) units share each block, so there are three row blocks of 4 rows
    assert calls == {"unshifted": 3, "online": expected_online}, calls


def test_unshifted_forward_keeps_float32_in_range():
    """float32: logits ~ 70 overflow exp in the unshifted form (e^88 is float32's limit): the fallback gives
    the float64 answer to float32 rounding."""
    rng = np.random.default_rng(32)
    q, k, v = _inputs(rng, batch=1, heads=2, kv_heads=2, query_length=6, key_length=5)
    bias = np.full((1, 1, 6, 1), 70.0)
    expected = reference(q, k, v, bias=bias)
    out = sdpa(*(dev(a, np.float32) for a in (q, k, v)), bias=dev(bias, np.float32), implementation="chunked",
               chunk_size=(3, 2))
    np.testing.assert_allclose(host(out), expected[0], rtol=1e-5, atol=1e-5)


def test_chunked_never_forms_the_score_matrix():
    """Peak traced allocation of a chunked forward + backward stays far below one L x L matrix."""
    import tracemalloc

    if ag.backend.name != "numpy":
        pytest.skip("tracemalloc sees NumPy's allocations only")
    length = 2048
    q, k, v = (dev(np.random.default_rng(10).standard_normal((1, 1, length, 8))) for _ in range(3))
    tracemalloc.start()
    try:
        grads = ag.grad(lambda q: ag.sum(sdpa(q, k, v, is_causal=True, implementation="chunked",
                                              chunk_size=(128, 256))))(q)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grads.shape == q.shape
    assert peak < length * length * 8 / 16, f"peak {peak / 2**20:.1f} MiB: a block, not the 32 MiB score matrix"


def test_default_blocks_respect_the_budget(monkeypatch):
    monkeypatch.setattr(_flash, "BLOCK_ELEMENTS", 1 << 12)
    seen = []
    original = _flash._Kernel.scores

    def spy(self, block, q_scaled, keep_tanh=False):
        s, t = original(self, block, q_scaled, keep_tanh)
        seen.append(s.size)
        return s, t

    monkeypatch.setattr(_flash._Kernel, "scores", spy)
    q, k, v = _inputs(np.random.default_rng(11), batch=3, heads=4, kv_heads=2, query_length=40, key_length=70)
    expected = reference(q, k, v)
    _assert_matches(_run(q, k, v, "chunked", chunk_size=None), expected)
    assert seen and max(seen) <= 1 << 12


# ---------------------------------------------------------------------------------------------
# varlen


def _packed(rng, query_lengths, key_lengths, heads=4, kv_heads=2):
    cu_q = np.concatenate([[0], np.cumsum(query_lengths)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(key_lengths)]).astype(np.int32)
    q = rng.standard_normal((heads, cu_q[-1], 3))
    k = rng.standard_normal((kv_heads, cu_k[-1], 3))
    v = rng.standard_normal((kv_heads, cu_k[-1], 2))
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("options", [{}, dict(is_causal=True, alignment="bottom-right"),
                                     dict(is_causal=True, alignment="top-left"), dict(window=(1, 0)),
                                     dict(window=(1, -1), window_unbounded="seqlen_k")],
                         ids=["full", "causal-br", "causal-tl", "window", "window-seqlen_k"])
def test_varlen_equals_each_sequence_alone(options, implementation):
    rng = np.random.default_rng(12)
    lq, lk = [3, 0, 5, 2, 4], [4, 2, 3, 0, 6]
    q, k, v, cu_q, cu_k = _packed(rng, lq, lk)
    out, lse = sdpa(dev(q), dev(k), dev(v), enable_gqa=True, cu_seqlens_q=dev(cu_q), cu_seqlens_k=dev(cu_k),
                    return_lse=True, implementation=implementation, chunk_size=(2, 2), **options)
    out, lse = host(out), host(lse)
    assert out.shape == (4, cu_q[-1], 2) and lse.shape == (4, cu_q[-1])
    for n in range(len(lq)):
        rows, cols = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        expected = reference(q[None, :, rows], k[None, :, cols], v[None, :, cols], seqlen_k=max(lk), **options)
        _assert_matches((out[None, :, rows], lse[None, :, rows]), expected)


def test_varlen_equals_a_block_diagonal_mask():
    """xFormers BlockDiagonalMask / BlockDiagonalCausalFromBottomRightMask on a batch-1 packed tensor."""
    rng = np.random.default_rng(13)
    lq, lk = [2, 4, 3], [3, 4, 5]
    q, k, v, cu_q, cu_k = _packed(rng, lq, lk, heads=2, kv_heads=2)
    for causal in (False, True):
        mask = np.zeros((cu_q[-1], cu_k[-1]), bool)
        for n in range(3):
            i = np.arange(lq[n])[:, None]
            j = np.arange(lk[n])[None, :]
            block = j <= i + lk[n] - lq[n] if causal else np.ones((lq[n], lk[n]), bool)
            mask[cu_q[n]:cu_q[n + 1], cu_k[n]:cu_k[n + 1]] = block
        dense = reference(q[None], k[None], v[None], attn_mask=mask)[0][0]
        packed = sdpa(dev(q), dev(k), dev(v), cu_seqlens_q=dev(cu_q), cu_seqlens_k=dev(cu_k), is_causal=causal,
                      alignment="bottom-right")
        np.testing.assert_allclose(host(packed), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_varlen_cuts_packed_masks_per_sequence(implementation):
    """attn_mask / bias / dropout_mask broadcastable to (Hq, total_q, total_k): each sequence reads its block."""
    rng = np.random.default_rng(15)
    lq, lk = [3, 4], [5, 2]
    q, k, v, cu_q, cu_k = _packed(rng, lq, lk, heads=2, kv_heads=1)
    bias = rng.standard_normal((2, 7, 7))
    mask = rng.random((7, 7)) > 0.3
    drop = rng.random((1, 7, 7)) > 0.2
    out = host(sdpa(dev(q), dev(k), dev(v), enable_gqa=True, cu_seqlens_q=dev(cu_q), cu_seqlens_k=dev(cu_k),
                    bias=dev(bias), attn_mask=dev(mask), dropout_p=0.2, dropout_mask=dev(drop),
                    implementation=implementation, chunk_size=(2, 2)))
    for n in range(2):
        rows, cols = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        expected = reference(q[None, :, rows], k[None, :, cols], v[None, :, cols], bias=bias[:, rows, cols],
                             attn_mask=mask[rows, cols], dropout_p=0.2, dropout_mask=drop[:, rows, cols])[0]
        np.testing.assert_allclose(out[:, rows], expected[0], rtol=1e-12, atol=1e-12)


def test_varlen_gradcheck():
    rng = np.random.default_rng(14)
    q, k, v, cu_q, cu_k = _packed(rng, [2, 3], [3, 2], heads=2, kv_heads=1)
    slopes = dev(rng.uniform(0.2, 0.6, (2, 2)))

    def f(q, k, v, slopes):
        return sdpa(q, k, v, enable_gqa=True, cu_seqlens_q=dev(cu_q), cu_seqlens_k=dev(cu_k), is_causal=True,
                    alignment="bottom-right", alibi_slopes=slopes)

    assert ag.gradcheck(f, dev(q), dev(k), dev(v), slopes, mode="full")


# ---------------------------------------------------------------------------------------------
# float32, determinism, caller arrays, errors


def test_float32_agrees_with_float64():
    q, k, v = _inputs(np.random.default_rng(15), query_length=33, key_length=20)
    options = dict(is_causal=True, alignment="bottom-right", softcap=2.0)
    expected = reference(q, k, v, **options)[0]
    for implementation in IMPLEMENTATIONS:
        out = sdpa(*(dev(a, np.float32) for a in (q, k, v)), enable_gqa=True, implementation=implementation,
                   **options)
        assert out.dtype == np.float32
        np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-5)


def test_inputs_are_not_modified_and_results_are_deterministic():
    rng = np.random.default_rng(16)
    q, k, v = _inputs(rng)
    bias = rng.standard_normal((5, 7))
    copies = [a.copy() for a in (q, k, v, bias)]
    results = []
    for implementation in IMPLEMENTATIONS * 2:
        args = [dev(a) for a in (q, k, v)]
        grads = ag.grad(lambda q, k, v, b: ag.sum(sdpa(q, k, v, bias=b, enable_gqa=True, softcap=1.0,
                                                       implementation=implementation) ** 2),
                        argnums=(0, 1, 2, 3))(*args, dev(bias))
        results.append([host(g) for g in grads])
    for a, c in zip((q, k, v, bias), copies):
        np.testing.assert_array_equal(a, c)
    for a, b in zip(results[0], results[2]):
        np.testing.assert_array_equal(a, b)


def test_nan_input_reaches_only_its_rows():
    q, k, v = _inputs(np.random.default_rng(17), batch=1, heads=2, kv_heads=2)
    q[0, 0, 2, 1] = np.nan
    for implementation in IMPLEMENTATIONS:
        out = host(sdpa(dev(q), dev(k), dev(v), implementation=implementation, chunk_size=(2, 3)))
        assert np.all(np.isnan(out[0, 0, 2]))
        out[0, 0, 2] = 0.0
        assert np.all(np.isfinite(out))


B = dev  # masks in the error cases below are host arrays moved to the backend


@pytest.mark.parametrize("call,error,match", [
    (lambda q, k, v: sdpa(q[0], k, v), ValueError, "query must be 4-D"),
    (lambda q, k, v: sdpa(q, k, v), ValueError, "enable_gqa=True"),
    (lambda q, k, v: sdpa(q, k[:, :, :, :2], v, enable_gqa=True), ValueError, "key must be of the query's head dim"),
    (lambda q, k, v: sdpa(q, k, v[:, :, :3], enable_gqa=True), ValueError, "value must be"),
    (lambda q, k, v: sdpa(q.astype(np.float32), k, v, enable_gqa=True), TypeError, "key has dtype float64"),
    (lambda q, k, v: sdpa(q.astype(np.int64), k, v, enable_gqa=True), TypeError, "query must have a floating"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, is_causal=True), ValueError, "needs alignment="),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, dropout_p=0.2), ValueError, "needs dropout_mask"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, dropout_p=1.0), ValueError,
     r"dropout_p must be a float in \[0, 1\)"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, window=3), ValueError, "window must be None or a pair"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, window=(2, -2)), ValueError, "ints >= -1"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, alignment="lower-right"), ValueError, "alignment must be"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, masked_rows="ignore"), ValueError, "masked_rows must be"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, softcap=-1.0), ValueError, "softcap must be"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, attn_mask=B(np.ones((5, 6), bool))), ValueError,
     r"attn_mask must be broadcastable to \(B, Hq, Lq, Lk\)"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, attn_mask=B(np.ones((5, 7), np.float32))), TypeError,
     "attn_mask .* has dtype float32"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, alibi_slopes=B(np.ones(2))), ValueError, "alibi_slopes must be"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, key_padding_mask=B(np.ones((2, 7)))), TypeError,
     "key_padding_mask must be a boolean"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, window=(1, 1),
                          key_padding_mask=B(np.array([[True] + [False] * 6] * 2))), ValueError,
     "pads keys that are not at the end"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, dropout_mask=B(np.ones((5, 7), bool))), ValueError,
     "dropout_p must be > 0"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, implementation="flash"), ValueError, "implementation must be"),
    (lambda q, k, v: sdpa(q, k, v, enable_gqa=True, chunk_size=(0, 4)), ValueError, "chunk_size must be"),
    (lambda q, k, v: sdpa(q[0], k[0], v[0], enable_gqa=True, cu_seqlens_q=B(np.array([0, 2, 5])),
                          cu_seqlens_k=B(np.array([0, 7]))), ValueError, "same number of sequences"),
    (lambda q, k, v: sdpa(q[0], k[0], v[0], enable_gqa=True, cu_seqlens_q=B(np.array([0, 2, 4])),
                          cu_seqlens_k=B(np.array([0, 3, 7]))), ValueError, "from 0 to the packed length 5"),
])
def test_bad_arguments_name_the_function_and_argument(call, error, match):
    q, k, v = (dev(a) for a in _inputs(np.random.default_rng(18)))
    with pytest.raises(error, match=f"scaled_dot_product_attention: .*{match}"):
        call(q, k, v)


@pytest.mark.parametrize("head_dims", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("options", [{}, {"is_causal": True, "alignment": "bottom-right"}, {"bias": "bias"}])
def test_chunked_takes_zero_head_dims_as_materialised(head_dims, options):
    """D = 0 (every logit is the bias alone) or Dv = 0 (an empty output): the chunked path's reshapes must not
    guess an axis from an empty array; its values and gradients equal the materialised path's (found by the
    sdpa entry's configuration space)."""
    d, dv = head_dims
    rng = np.random.default_rng(5)
    q, k = dev(rng.standard_normal((2, 2, 3, d))), dev(rng.standard_normal((2, 2, 4, d)))
    v, g = dev(rng.standard_normal((2, 2, 4, dv))), dev(rng.standard_normal((2, 2, 3, dv)))
    if options.get("bias") == "bias":
        options = {"bias": dev(rng.standard_normal((2, 2, 3, 4)))}
    results = []
    for implementation in ("materialised", "chunked"):
        out, vjp = ag.vjp(lambda q, k, v: sdpa(q, k, v, scale=1.0, implementation=implementation, **options), q, k, v)
        results.append([host(out)] + [host(t) for t in vjp(g)])
    for chunked, materialised in zip(results[1], results[0]):
        assert chunked.shape == materialised.shape
        np.testing.assert_allclose(chunked, materialised, rtol=1e-12, atol=1e-14)
