"""npattn.attention: library conventions as data, ALiBi slopes, 1-D and 2-D rotary embeddings.

References are written here from the spec sheet (shared/specs/attention-core.md §2-§3) and the official code it
cites: the ALiBi ``get_slopes`` recursion, Meta's complex-number RoPE, EVA-02's per-axis bands, rope-vit's mixed
angles -- each as explicit loops or complex arithmetic, sharing no code with npattn/attention/.
"""
import math

import numpy as np
import pytest

import autograd as ag
from npattn.attention import (
    CONVENTIONS,
    XFORMERS_BIASES,
    alibi_slopes,
    apply_rope,
    apply_rope_2d,
    convention,
    init_rope_mixed,
    mixed_from_official,
    rope_2d_angles,
    rope_mixed_angles,
    rotate,
)
from npattn.attention import scaled_dot_product_attention as sdpa
from tests.conftest import dev, host

# ---------------------------------------------------------------------------------------------
# ALiBi


def _official_get_slopes(n):
    """ofirpress/attention_with_linear_biases fairseq/models/transformer.py L742-752, transcribed."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _official_get_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads,exponents", [
    (8, [-1, -2, -3, -4, -5, -6, -7, -8]),
    (12, [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]),
    (6, [-2, -4, -6, -8, -1, -3]),
])
def test_alibi_slopes_follow_the_official_rule(heads, exponents):
    """Exact powers of two; the official start * ratio**i accumulates a few ulp of rounding."""
    slopes = host(alibi_slopes(heads))
    np.testing.assert_allclose(slopes, 2.0 ** np.array(exponents), rtol=1e-15)
    np.testing.assert_allclose(slopes, _official_get_slopes(heads), rtol=4e-15)


def test_naive_slopes_are_wrong_for_twelve_heads():
    naive = 2.0 ** (-8.0 * np.arange(1, 13) / 12)
    assert np.abs(host(alibi_slopes(12)) - naive).max() > 0.3     # up to 0.69 per the spec sheet
    for n in (1, 2, 3, 5, 7, 16, 24, 100):
        np.testing.assert_allclose(host(alibi_slopes(n)), _official_get_slopes(n), rtol=4e-15)
    with pytest.raises(ValueError, match="alibi_slopes: n_heads"):
        alibi_slopes(0)


def test_alibi_forms_agree_on_probabilities_under_a_causal_mask():
    """Symmetric -m|i - j| == the paper's -m(i - j) on the causal region; fairseq's +m*j shifts lse by m*i."""
    rng = np.random.default_rng(0)
    q, k, v = (dev(rng.standard_normal((1, 4, 6, 3))) for _ in range(3))
    slopes = alibi_slopes(4)
    out_s, lse_s = sdpa(q, k, v, is_causal=True, alignment="top-left", alibi_slopes=slopes, return_lse=True)
    out_f, lse_f = sdpa(q, k, v, is_causal=True, alignment="top-left", alibi_slopes=slopes, alibi_form="fairseq",
                        return_lse=True)
    paper = -host(slopes)[:, None, None] * (np.arange(6)[:, None] - np.arange(6)[None, :])
    out_p = sdpa(q, k, v, is_causal=True, alignment="top-left", bias=dev(paper[None]))
    np.testing.assert_allclose(host(out_s), host(out_p), rtol=1e-13)
    np.testing.assert_allclose(host(out_f), host(out_p), rtol=1e-13)
    np.testing.assert_allclose(host(lse_f)[0] - host(lse_s)[0], host(slopes)[:, None] * np.arange(6), rtol=1e-12,
                               atol=1e-12)
    # without a causal mask the official (fairseq) form is not the paper's: 0.81 in the spec's check
    bidirectional = sdpa(q, k, v, alibi_slopes=slopes, alibi_form="fairseq")
    assert np.abs(host(bidirectional) - host(sdpa(q, k, v, alibi_slopes=slopes))).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# 1-D RoPE


def _meta_rope(x, positions, base=10000.0):
    """Meta llama3 apply_rotary_emb: pairs (2i, 2i+1) as complex numbers times exp(i * p * base^(-2i/D))."""
    d = x.shape[-1]
    freqs = base ** (-np.arange(0, d, 2) / d)
    cis = np.exp(1j * np.outer(positions, freqs))
    z = x[..., 0::2] + 1j * x[..., 1::2]
    out = z * cis
    return np.stack([out.real, out.imag], axis=-1).reshape(x.shape)


def _neox_rope(x, positions, rotary_dim, base=10000.0):
    """GPT-NeoX / HF rotate_half on the first rotary_dim channels, transcribed."""
    freqs = base ** (-np.arange(0, rotary_dim, 2) / rotary_dim)
    angle = np.outer(positions, freqs)
    emb = np.concatenate([angle, angle], axis=-1)
    head, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = np.concatenate([-head[..., half:], head[..., :half]], axis=-1)
    return np.concatenate([head * np.cos(emb) + rotated * np.sin(emb), rest], axis=-1)


def test_interleaved_rope_is_metas_complex_rotation():
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 8))
    expected = _meta_rope(x, np.arange(7) + 5.0)
    np.testing.assert_allclose(host(apply_rope(dev(x), layout="interleaved", offset=5)), expected, rtol=1e-13,
                               atol=1e-14)


def test_half_rope_is_neox_with_partial_rotary():
    x = np.random.default_rng(2).standard_normal((2, 7, 12))
    expected = _neox_rope(x, np.arange(7), rotary_dim=4, base=500000.0)
    np.testing.assert_allclose(host(apply_rope(dev(x), layout="half", rotary_dim=4, base=500000.0)), expected,
                               rtol=1e-13, atol=1e-14)


def test_half_on_permuted_weights_equals_interleaved_on_the_originals():
    """HF checkpoints: wq rows permuted per head by view(H, R/2, 2, dim).transpose(1, 2) -> 'half' RoPE."""
    rng = np.random.default_rng(3)
    heads, head_dim, dim, length = 2, 8, 6, 5
    wq, wk, x = rng.standard_normal((heads * head_dim, dim)), rng.standard_normal((heads * head_dim, dim)), \
        rng.standard_normal((length, dim))

    def permute(w):
        return w.reshape(heads, head_dim // 2, 2, dim).transpose(0, 2, 1, 3).reshape(heads * head_dim, dim)

    def scores(w_q, w_k, layout):
        q = (x @ w_q.T).reshape(length, heads, head_dim).transpose(1, 0, 2)
        k = (x @ w_k.T).reshape(length, heads, head_dim).transpose(1, 0, 2)
        q, k = (host(apply_rope(dev(t), layout=layout)) for t in (q, k))
        return q @ k.transpose(0, 2, 1)

    meta = scores(wq, wk, "interleaved")
    np.testing.assert_allclose(scores(permute(wq), permute(wk), "half"), meta, rtol=1e-12, atol=1e-13)
    assert np.abs(scores(wq, wk, "half") - meta).max() > 1e-2     # the unpermuted weights with 'half' differ


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_rope_scores_depend_on_relative_positions_only(layout):
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal(16), rng.standard_normal(16)

    def score(m, n):
        rq = host(apply_rope(dev(q[None]), layout=layout, rotary_dim=12, positions=[m]))[0]
        rk = host(apply_rope(dev(k[None]), layout=layout, rotary_dim=12, positions=[n]))[0]
        return rq @ rk

    for m, n, shift in ((3, 1, 7), (0, 5, 11.5), (10, 10, -4)):
        np.testing.assert_allclose(score(m, n), score(m + shift, n + shift), rtol=1e-10)


def test_a_pairing_mixup_breaks_relativity():
    """The relativity check catches the bug the spec names: 'half' pairs with [f0 f0 f1 f1 ...] angles."""
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal(8), rng.standard_normal(8)

    def wrong(x, p):
        freqs = 10000.0 ** (-np.arange(0, 8, 2) / 8)
        angle = np.repeat(p * freqs, 2)                  # repeat_interleave layout with rotate_half pairs
        rotated = np.concatenate([-x[4:], x[:4]])
        return x * np.cos(angle) + rotated * np.sin(angle)

    assert abs(wrong(q, 3) @ wrong(k, 1) - wrong(q, 10) @ wrong(k, 8)) > 1e-3


def test_rope_offsets_per_batch_row_and_position_ids():
    rng = np.random.default_rng(6)
    x = dev(rng.standard_normal((3, 2, 4, 6)))
    offsets = np.array([0, 5, 2])
    per_row = host(apply_rope(x, layout="interleaved", offset=offsets))
    ids = host(apply_rope(x, layout="interleaved", positions=offsets[:, None] + np.arange(4)))
    np.testing.assert_array_equal(per_row, ids)
    for b in range(3):
        np.testing.assert_allclose(per_row[b], host(apply_rope(x[b], layout="interleaved", offset=int(offsets[b]))),
                                   rtol=1e-14)


def test_rope_errors_and_gradients():
    x = np.random.default_rng(7).standard_normal((2, 5, 6))
    with pytest.raises(ValueError, match="apply_rope: layout must be 'interleaved'"):
        apply_rope(dev(x), layout=None)
    with pytest.raises(ValueError, match="rotary_dim must be <= D"):
        apply_rope(dev(x), layout="half", rotary_dim=8)
    with pytest.raises(ValueError, match="rotary_dim must be an even int"):
        apply_rope(dev(x), layout="half", rotary_dim=3)
    assert ag.gradcheck(lambda t: apply_rope(t, layout="half", rotary_dim=4, offset=3), dev(x), mode="full")
    angles = np.random.default_rng(8).uniform(-3, 3, (5, 2))
    assert ag.gradcheck(lambda t, a: rotate(t, a, layout="interleaved"), dev(x), ag.Tensor(dev(angles)),
                        mode="full")


# ---------------------------------------------------------------------------------------------
# 2-D RoPE


def _eva_angles(rows, cols, head_dim, theta=10000.0, indexing="ij", pt=None):
    """EVA-02 VisionRotaryEmbeddingFast by loops: angle of pair p of token (r, c) (interleaved pairs)."""
    quarter = head_dim // 4
    bands = 1.0 / theta ** (np.arange(0, 2 * quarter, 2)[:quarter] / (2 * quarter))   # EVA's own expression
    out = np.zeros((rows * cols, 2 * quarter))
    for r in range(rows):
        for c in range(cols):
            a0, a1 = (r, c) if indexing == "ij" else (c, r)
            if pt is not None:
                size0, size1 = (rows, cols) if indexing == "ij" else (cols, rows)
                a0, a1 = a0 / size0 * pt[0], a1 / size1 * pt[1]
            for p in range(2 * quarter):
                out[r * cols + c, p] = a0 * bands[p] if p < quarter else a1 * bands[p - quarter]
    return out


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_axial_angles_are_eva02s(indexing):
    np.testing.assert_allclose(host(rope_2d_angles((3, 5), 16, indexing=indexing)),
                               _eva_angles(3, 5, 16, indexing=indexing), rtol=1e-14)
    np.testing.assert_allclose(host(rope_2d_angles((3, 5), 16, indexing=indexing, ref_feat_shape=(16, 16))),
                               _eva_angles(3, 5, 16, indexing=indexing, pt=(16, 16)), rtol=1e-14)


def test_ij_and_xy_differ_and_pixel_bands():
    assert np.abs(host(rope_2d_angles((3, 5), 8)) - host(rope_2d_angles((3, 5), 8, indexing="xy"))).max() > 1
    pixels = host(rope_2d_angles((2, 3), 8, in_pixels=True, max_res=224))
    bands = np.pi * 2.0 ** np.linspace(0, math.log2(224) - 1, 2)
    row = np.linspace(-1, 1, 2)[1]
    col = np.linspace(-1, 1, 3)[2]
    np.testing.assert_allclose(pixels[5], np.concatenate([row * bands, col * bands]), rtol=1e-14)


def test_apply_rope_2d_leaves_the_prefix_tokens_alone():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 1 + 12, 8))
    angles = rope_2d_angles((3, 4), 8)
    out = host(apply_rope_2d(dev(x), angles, num_prefix_tokens=1))
    np.testing.assert_array_equal(out[:, :, 0], x[:, :, 0])
    z = x[:, :, 1:, 0::2] + 1j * x[:, :, 1:, 1::2]
    expected = z * np.exp(1j * host(angles))
    np.testing.assert_allclose(out[:, :, 1:, 0::2], expected.real, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out[:, :, 1:, 1::2], expected.imag, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="1 prefix \\+ 12 patch tokens"):
        apply_rope_2d(dev(x[:, :, 1:]), angles, num_prefix_tokens=1)


def test_rope_mixed_init_angles_and_official_layout():
    rng = np.random.default_rng(10)
    depth, heads, head_dim = 2, 3, 8
    freqs = host(init_rope_mixed(rng, depth, heads, head_dim))
    assert freqs.shape == (2, depth, heads, head_dim // 2)
    magnitude = 10.0 ** (-np.arange(0, head_dim, 4) / head_dim)
    norms = np.hypot(freqs[0], freqs[1])                       # |(F0, F1)| per band = mag
    np.testing.assert_allclose(norms, np.tile(magnitude, 2) * np.ones((depth, heads, 1)), rtol=1e-14)
    block = freqs[:, 1]
    angles = host(rope_mixed_angles(dev(block), (3, 4)))
    for n in range(12):
        t_x, t_y = n % 4, n // 4                               # rope-vit init_t_xy: column, row
        np.testing.assert_allclose(angles[:, n], t_x * block[0] + t_y * block[1], rtol=1e-14, atol=1e-15)
    flat = freqs.reshape(2, depth, heads * head_dim // 2)      # the official parameter, head-major
    np.testing.assert_array_equal(host(mixed_from_official(dev(flat), heads)), freqs)


def test_rope_mixed_is_differentiable_in_its_frequencies():
    rng = np.random.default_rng(11)
    freqs = init_rope_mixed(rng, 1, 2, 8)[:, 0]
    x = dev(rng.standard_normal((1, 2, 1 + 6, 8)))

    def f(freqs, x):
        return apply_rope_2d(x, rope_mixed_angles(freqs, (2, 3)), num_prefix_tokens=1)

    assert ag.gradcheck(f, freqs, x, mode="full")


# ---------------------------------------------------------------------------------------------
# conventions


def _qkv(query_length=6, key_length=3, heads=2, seed=12):
    rng = np.random.default_rng(seed)
    return [dev(rng.standard_normal((1, heads, n, 4))) for n in (query_length, key_length, key_length)]


def test_every_preset_names_its_library_and_sources():
    assert set(CONVENTIONS) == {"torch", "flash", "xformers", "jax", "onnx"}
    for name, preset in CONVENTIONS.items():
        assert preset.library and preset.sources and preset.notes, name
        assert convention(name) == preset.options and convention(name) is not preset.options


def test_presets_give_each_librarys_answer_on_one_case():
    """Lq = 6 > Lk = 3, causal: the first rows are empty bottom-right, never top-left."""
    q, k, v = _qkv()
    results = {name: host(sdpa(q, k, v, is_causal=True, **convention(name))) for name in
               ("torch", "flash", "jax", "onnx")}
    torch_like = results["torch"]
    assert np.all(np.isfinite(torch_like)) and np.abs(torch_like[:, :, :2]).min() > 0       # top-left: no empty
    np.testing.assert_array_equal(results["onnx"], torch_like)
    np.testing.assert_array_equal(results["jax"], torch_like)
    assert np.all(results["flash"][:, :, :3] == 0.0)                                        # bottom-right, zero
    xformers = host(sdpa(q, k, v, **convention("xformers", attn_bias="LowerTriangularFromBottomRightMask")))
    assert np.all(np.isnan(xformers[:, :, :3])) and np.all(np.isfinite(xformers[:, :, 3:]))
    jax_rows = host(sdpa(q, k, v, **convention("jax"), attn_mask=dev(np.zeros((6, 3), bool))))
    np.testing.assert_allclose(jax_rows, np.broadcast_to(host(v).mean(axis=2, keepdims=True), jax_rows.shape),
                               rtol=1e-14)


def test_library_arguments_translate_to_options():
    assert convention("jax", local_window_size=2)["window"] == (2, 2)
    assert convention("onnx", past_length=7)["alignment"] == 7
    assert convention("xformers", attn_bias="BlockDiagonalCausalLocalAttentionMask", window_size=3) == {
        "masked_rows": "nan", "is_causal": True, "alignment": "top-left", "window": (2, 0)}
    assert convention("xformers", attn_bias="LocalAttentionFromBottomRightMask", window_left=1, window_right=2)[
        "window"] == (1, 2)
    assert "LowerTriangularMask" in XFORMERS_BIASES
    with pytest.raises(ValueError, match="convention: name must be one of"):
        convention("tensorflow")
    with pytest.raises(ValueError, match="do not apply to 'torch'"):
        convention("torch", past_length=3)
    with pytest.raises(ValueError, match="needs window_size"):
        convention("xformers", attn_bias="LowerTriangularFromBottomRightLocalAttentionMask")


def test_xformers_local_window_counts_the_diagonal():
    """LowerTriangularFromBottomRightLocalAttentionMask(W): tril(shift) then triu(shift - W + 1), materialised."""
    q, k, v = _qkv(query_length=5, key_length=7)
    window = 3
    i, j = np.arange(5)[:, None], np.arange(7)[None, :]
    shift = 7 - 5
    allowed = (j <= i + shift) & (j >= i + shift - window + 1)
    expected = host(sdpa(q, k, v, attn_mask=dev(allowed)))
    got = host(sdpa(q, k, v, **convention("xformers", attn_bias="LowerTriangularFromBottomRightLocalAttentionMask",
                                           window_size=window)))
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_the_docs_page_lists_every_preset_with_its_library():
    import os

    page = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "attention_conventions.md")
    with open(page) as handle:
        text = handle.read()
    for name, preset in CONVENTIONS.items():
        assert f"| `{name}` | {preset.library} |" in text, name
    for name in XFORMERS_BIASES:
        assert f"`{name}" in text, name
