"""Swin v1 / v2 window attention: what the registry matrix cannot see.

Host references written from the spec sheet with explicit loops (every window, every token pair, the
relative offset and the region of every coordinate worked out one by one), the invariants the spec
lists (shift 0 = plain window attention; a window covering the whole map = global attention plus bias),
the window rules, the mask, the v2 clamp and coordinate table, option errors and gradients.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import autograd as ag
import npattn
from npattn.transformer import _windows, swin, swin_v2
from tests.conftest import host

# ---------------------------------------------------------------------------------------------
# host references


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _region(coordinate, padded, window, shift):
    """The region of one coordinate of the shifted padded map (spec: 0 / 1 / 2 on three intervals)."""
    if coordinate < padded - window:
        return 0
    if shift and coordinate >= padded - shift:
        return 2
    return 1


def _heads_v1(p, tokens, heads, scale):
    qkv = tokens @ p["attn.qkv.weight"].T + p.get("attn.qkv.bias", 0)
    c = tokens.shape[-1]
    d = c // heads
    q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(-1, heads, d).transpose(1, 0, 2) for i in range(3))
    return q * scale, k, v, None


def _heads_v2(p, tokens, heads, _scale):
    c = tokens.shape[-1]
    bias = np.concatenate([p["attn.q_bias"], np.zeros(c), p["attn.v_bias"]])
    qkv = tokens @ p["attn.qkv.weight"].T + bias
    d = c // heads
    q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(-1, heads, d).transpose(1, 0, 2) for i in range(3))
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    t = np.exp(np.minimum(p["attn.logit_scale"], math.log(100.0)))          # (heads, 1, 1)
    return q, k, v, t


def _bias_table_v2(p, window, heads, pretrained):
    wh, ww = window
    ph, pw = pretrained if pretrained[0] > 0 else window
    table = np.zeros((2 * wh - 1, 2 * ww - 1, heads))
    for a, b in itertools.product(range(2 * wh - 1), range(2 * ww - 1)):
        c = np.array([(a - wh + 1) / (ph - 1), (b - ww + 1) / (pw - 1)]) * 8
        c = np.sign(c) * np.log2(1 + np.abs(c)) / 3.0
        hidden = np.maximum(p["attn.cpb_mlp.0.weight"] @ c + p["attn.cpb_mlp.0.bias"], 0)
        table[a, b] = 16 / (1 + np.exp(-(p["attn.cpb_mlp.2.weight"] @ hidden)))
    return table


def reference(p, x, heads, window, shift, *, version=1, qk_scale=None, mask_value=-100.0, pretrained=(0, 0)):
    """The attention part of a Swin block by loops: pad, roll, every window, every token pair."""
    p = {k: host(v) for k, v in p.items()}
    x = host(x)
    b, h, w, c = x.shape
    wh, ww = window
    sh, sw = shift
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    padded = np.zeros((b, hp, wp, c))
    padded[:, :h, :w] = x
    rolled = np.roll(padded, (-sh, -sw), axis=(1, 2))
    out = np.zeros_like(rolled)
    scale = qk_scale or (c // heads) ** -0.5
    table_v2 = _bias_table_v2(p, window, heads, pretrained) if version == 2 else None
    for n, top, left in itertools.product(range(b), range(0, hp, wh), range(0, wp, ww)):
        cells = [(top + i, left + j) for i in range(wh) for j in range(ww)]         # row-major tokens
        tokens = np.stack([rolled[n, y, x_] for y, x_ in cells])
        q, k, v, t = (_heads_v1 if version == 1 else _heads_v2)(p, tokens, heads, scale)
        logits = q @ k.transpose(0, 2, 1) * (t if version == 2 else 1)
        for i, j in itertools.product(range(len(cells)), repeat=2):
            (yi, xi), (yj, xj) = cells[i], cells[j]
            dy, dx = yi - yj, xi - xj
            if version == 1:
                logits[:, i, j] += p["attn.relative_position_bias_table"][(dy + wh - 1) * (2 * ww - 1) + dx + ww - 1]
            else:
                logits[:, i, j] += table_v2[dy + wh - 1, dx + ww - 1]
            if sh or sw:
                same = (_region(yi, hp, wh, sh) == _region(yj, hp, wh, sh)
                        and _region(xi, wp, ww, sw) == _region(xj, wp, ww, sw))
                logits[:, i, j] += 0.0 if same else mask_value
        merged = (_softmax(logits) @ v).transpose(1, 0, 2).reshape(len(cells), c)
        projected = merged @ p["attn.proj.weight"].T + p["attn.proj.bias"]
        for (y, x_), value in zip(cells, projected):
            out[n, y, x_] = value
    return np.roll(out, (sh, sw), axis=(1, 2))[:, :h, :w]


def _params(name, seed=0, **config):
    mech = npattn.get(name)
    params = mech.init(np.random.default_rng(seed), **config)
    rng = np.random.default_rng(seed + 100)
    # random values everywhere (the official zero inits would hide the biases' and tables' roles)
    return {k: (ag.from_numpy(rng.standard_normal(v.shape) * 0.5) if v.dtype.kind == "f"
                and "relative_coords" not in k else v) for k, v in params.items()}


def _x(shape, seed=1):
    return ag.from_numpy(np.random.default_rng(seed).standard_normal(shape))


# ---------------------------------------------------------------------------------------------
# v1 against the loops


@pytest.mark.parametrize("h,w,window,shift", [(8, 8, 4, 2), (7, 10, 4, 2), (8, 8, 4, 0), (9, 12, 3, 1), (5, 6, 4, 3)])
def test_swin_matches_the_loop_reference(h, w, window, shift):
    params = _params("swin", dim=8, num_heads=2, window_size=window, shift_size=shift)
    x = _x((2, h, w, 8))
    out = host(swin.swin(params, x, num_heads=2, window_size=window, shift_size=shift))
    np.testing.assert_allclose(out, reference(params, x, 2, (window,) * 2, (shift,) * 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["torchvision", "detection"])
def test_swin_rectangular_windows_match_the_loops(rule):
    params = _params("swin", dim=6, num_heads=3, window_size=(3, 4), shift_size=(1, 2), rule=rule)
    x = _x((1, 7, 9, 6))
    out = host(swin.swin(params, x, num_heads=3, window_size=(3, 4), shift_size=(1, 2), rule=rule))
    np.testing.assert_allclose(out, reference(params, x, 3, (3, 4), (1, 2)), rtol=1e-12, atol=1e-12)


def test_swin_options_match_the_loops():
    params = _params("swin", dim=8, num_heads=2, window_size=3, shift_size=1, qkv_bias=False)
    x = _x((2, 6, 6, 8))
    kw = dict(num_heads=2, window_size=3, shift_size=1, qkv_bias=False)
    for options in (dict(qk_scale=0.25), dict(mask_value=-math.inf), dict(mask_value=-7.5)):
        out = host(swin.swin(params, x, **kw, **options))
        expected = reference(params, x, 2, (3, 3), (1, 1), **options)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_the_reference_sees_the_mask_and_the_bias():
    """The loop reference is not vacuous: dropping the mask or the bias, or indexing the table the wrong way
    round, changes its answer."""
    params = _params("swin", dim=8, num_heads=2, window_size=4, shift_size=2)
    x = _x((1, 8, 8, 8))
    good = reference(params, x, 2, (4, 4), (2, 2))
    assert np.abs(good - reference(params, x, 2, (4, 4), (2, 2), mask_value=0.0)).max() > 1e-3
    flat = dict(params, **{"attn.relative_position_bias_table": params["attn.relative_position_bias_table"][::-1]})
    assert np.abs(good - reference(flat, x, 2, (4, 4), (2, 2))).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# invariants (hypothesis)


def _plain_window_attention(p, x, heads, window):
    """Window attention with no shift and no mask: each window alone (a different, vectorised form)."""
    p = {k: host(v) for k, v in p.items()}
    x = host(x)
    b, h, w, c = x.shape
    wh, ww = window
    blocks = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)
    qkv = blocks @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    d = c // heads
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(len(blocks), wh * ww, heads, d).transpose(0, 2, 1, 3)
               for i in range(3))
    index = _windows.relative_position_index(window)
    bias = p["attn.relative_position_bias_table"][index].transpose(2, 0, 1)
    attention = _softmax(q @ k.transpose(0, 1, 3, 2) * d ** -0.5 + bias)
    y = (attention @ v).transpose(0, 2, 1, 3).reshape(len(blocks), wh * ww, c) @ p["attn.proj.weight"].T
    y = y + p["attn.proj.bias"]
    return y.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


@given(nh=st.integers(1, 3), nw=st.integers(1, 3), window=st.integers(2, 4), heads=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_shift_zero_is_plain_window_attention(nh, nw, window, heads, seed):
    h, w = nh * window, nw * window
    params = _params("swin", seed, dim=4, num_heads=heads, window_size=window, rule="torchvision")
    x = _x((2, h, w, 4), seed)
    for rule in ("torchvision", "detection"):
        out = host(swin.swin(params, x, num_heads=heads, window_size=window, shift_size=0, rule=rule))
        np.testing.assert_allclose(out, _plain_window_attention(params, x, heads, (window, window)), atol=1e-12)


def _global_attention_with_bias(p, x, heads):
    """Full self-attention over all H W tokens plus B[i, j] = table[(dy + H - 1)(2W - 1) + dx + W - 1]."""
    p = {k: host(v) for k, v in p.items()}
    x = host(x)
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    qkv = tokens @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    d = c // heads
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, h * w, heads, d).transpose(0, 2, 1, 3) for i in range(3))
    ys, xs = np.divmod(np.arange(h * w), w)
    offset = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + xs[:, None] - xs[None, :] + w - 1
    bias = p["attn.relative_position_bias_table"][offset].transpose(2, 0, 1)
    y = (_softmax(q @ k.transpose(0, 1, 3, 2) * d ** -0.5 + bias) @ v).transpose(0, 2, 1, 3).reshape(b, h * w, c)
    return (y @ p["attn.proj.weight"].T + p["attn.proj.bias"]).reshape(b, h, w, c)


@given(size=st.integers(1, 5), window=st.integers(1, 8), shift=st.integers(0, 7), seed=st.integers(0, 1000))
def test_a_window_covering_the_map_is_global_attention_plus_bias(size, window, shift, seed):
    """Official rule on a square map with min(H, W) <= w: the window becomes the map and the shift goes."""
    window = max(window, size)
    shift = shift % window
    params = _params("swin", seed, dim=4, num_heads=2, window_size=window, shift_size=shift,
                     input_resolution=(size, size))
    x = _x((1, size, size, 4), seed)
    out = host(swin.swin(params, x, num_heads=2, window_size=window, shift_size=shift))
    np.testing.assert_allclose(out, _global_attention_with_bias(params, x, 2), atol=1e-12)


@given(h=st.integers(1, 9), w=st.integers(1, 9), window=st.integers(1, 5), seed=st.integers(0, 100))
def test_torchvision_rule_is_detection_with_the_dropped_shifts(h, w, window, seed):
    """torchvision = the always-shifting detection code with the shift of a fully covered axis set to 0."""
    shift = window // 2
    params = _params("swin", seed, dim=4, num_heads=1, window_size=window, shift_size=shift, rule="torchvision")
    x = _x((1, h, w, 4), seed)
    padded = [math.ceil(n / window) * window for n in (h, w)]
    dropped = tuple(0 if window >= p else shift for p in padded)
    ours = host(swin.swin(params, x, num_heads=1, window_size=window, shift_size=shift, rule="torchvision"))
    det = host(swin.swin(params, x, num_heads=1, window_size=window, shift_size=dropped, rule="detection"))
    np.testing.assert_allclose(ours, det, atol=1e-12)


def test_rules_differ_on_a_4x9_map():
    """Spec: on 4 x 9 with w = 4, s = 2 torchvision drops the H shift, the detection code does not."""
    params = _params("swin", dim=8, num_heads=2, window_size=4, shift_size=2, rule="detection")
    x = _x((1, 4, 9, 8))
    kw = dict(num_heads=2, window_size=4, shift_size=2)
    tv = host(swin.swin(params, x, rule="torchvision", **kw))
    det = host(swin.swin(params, x, rule="detection", **kw))
    official = host(swin.swin(params, x, rule="official", **kw))   # min(4, 9) <= 4: no shift at all
    assert np.abs(tv - det).max() > 1e-2 and np.abs(tv - official).max() > 1e-2
    np.testing.assert_allclose(official, host(swin.swin(params, x, rule="detection", **dict(kw, shift_size=0))))


# ---------------------------------------------------------------------------------------------
# the window machinery


@pytest.mark.parametrize("window", [(2, 2), (3, 4), (4, 3), (1, 5)])
def test_relative_position_index_by_loops(window):
    wh, ww = window
    cells = [(i, j) for i in range(wh) for j in range(ww)]
    expected = np.array([[(a[0] - b[0] + wh - 1) * (2 * ww - 1) + a[1] - b[1] + ww - 1 for b in cells] for a in cells])
    np.testing.assert_array_equal(_windows.relative_position_index(window), expected)
    assert expected.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def test_shift_mask_by_loops():
    window_plan = _windows.plan("swin", 7, 10, 4, 2, "official")
    assert window_plan.padded == (8, 12) and window_plan.count == 6
    mask = _windows.shift_mask(window_plan, -100.0, np.float64)
    index = 0
    for top, left in itertools.product(range(0, 8, 4), range(0, 12, 4)):
        cells = [(top + i, left + j) for i in range(4) for j in range(4)]
        for (a, ca), (b, cb) in itertools.product(enumerate(cells), repeat=2):
            same = (_region(ca[0], 8, 4, 2) == _region(cb[0], 8, 4, 2)) and (_region(ca[1], 12, 4, 2) ==
                                                                               _region(cb[1], 12, 4, 2))
            assert mask[index, a, b] == (0.0 if same else -100.0)
        index += 1
    assert (mask[0] == 0).all() and (mask[-1] != 0).any()   # the first window is whole, the last mixes regions


@pytest.mark.parametrize("h,w,window,shift,rule,expected", [
    (56, 56, 7, 3, "official", ((7, 7), (3, 3), (56, 56))),
    (5, 9, 7, 3, "official", ((5, 5), (0, 0), (5, 10))),     # the min rule: window min(H, W), no shift
    (7, 7, 7, 3, "official", ((7, 7), (0, 0), (7, 7))),      # min(H, W) <= w (not <): the rule applies
    (5, 9, 7, 3, "detection", ((7, 7), (3, 3), (7, 14))),
    (5, 9, 7, 3, "torchvision", ((7, 7), (0, 3), (7, 14))),  # H fits one window: its shift is dropped
    (4, 9, 4, 2, "torchvision", ((4, 4), (0, 2), (4, 12))),
])
def test_window_plans(h, w, window, shift, rule, expected):
    window_plan = _windows.plan("swin", h, w, window, shift, rule)
    assert (window_plan.window, window_plan.shift, window_plan.padded) == expected


def test_the_min_rule_needs_parameters_for_the_smaller_window():
    params = npattn.get("swin").init(np.random.default_rng(0), 8, num_heads=2, window_size=7, shift_size=3)
    with pytest.raises(ValueError, match=r"swin: parameter 'attn.relative_position_bias_table' must have shape"
                                         r" \(81, 2\), got \(169, 2\)"):
        swin.swin(params, _x((1, 5, 9, 8)), num_heads=2, window_size=7, shift_size=3)
    small = npattn.get("swin").init(np.random.default_rng(0), 8, num_heads=2, window_size=7, shift_size=3,
                                    input_resolution=(5, 9))
    assert small["attn.relative_position_index"].shape == (25, 25)
    assert swin.swin(small, _x((1, 5, 9, 8)), num_heads=2, window_size=7, shift_size=3).shape == (1, 5, 9, 8)


def test_padded_tokens_are_the_projection_bias_not_masked():
    """Zero padding: a padded token's key is the qkv bias (it takes part in the softmax)."""
    params = _params("swin", dim=4, num_heads=1, window_size=4, shift_size=0, rule="detection")
    x = _x((1, 3, 3, 4))
    out = host(swin.swin(params, x, num_heads=1, window_size=4, shift_size=0, rule="detection"))
    moved = dict(params, **{"attn.qkv.bias": params["attn.qkv.bias"] + 1.0})
    changed = host(swin.swin(moved, x, num_heads=1, window_size=4, shift_size=0, rule="detection"))
    np.testing.assert_allclose(out, reference(params, x, 1, (4, 4), (0, 0)), atol=1e-12)
    assert np.abs(out - changed).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rule="timm"), ValueError, "swin: rule must be one of"),
    (dict(shift_size=4), ValueError, "swin: shift_size must satisfy 0 <= shift < window"),
    (dict(shift_size=-1), ValueError, "swin: shift_size must satisfy"),
    (dict(window_size=0), ValueError, "swin: window_size must be positive"),
    (dict(window_size=2.5), TypeError, "swin: window_size must be an int"),
    (dict(window_size=(4, 3)), ValueError, "swin: the official rule takes a square window"),
    (dict(mask_value=0.0), ValueError, "swin: mask_value must be negative"),
    (dict(mask_value=float("nan")), ValueError, "swin: mask_value must be negative"),
    (dict(mask_value="-inf"), TypeError, "swin: mask_value must be a number"),
    (dict(qk_scale=-1.0), ValueError, "swin: qk_scale must be positive"),
    (dict(num_heads=3), ValueError, "swin: dim=8 must be divisible by num_heads=3"),
])
def test_swin_option_errors(kwargs, error, match):
    params = npattn.get("swin").init(np.random.default_rng(0), 8, num_heads=2, window_size=4, shift_size=2)
    options = {"num_heads": 2, "window_size": 4, "shift_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        swin.swin(params, _x((1, 8, 8, 8)), **options)


def test_swin_index_buffer_must_hold_the_index():
    params = npattn.get("swin").init(np.random.default_rng(0), 8, num_heads=2, window_size=4, shift_size=2)
    wrong = dict(params, **{"attn.relative_position_index": params["attn.relative_position_index"][::-1].copy()})
    with pytest.raises(ValueError, match="swin: buffer 'attn.relative_position_index' does not hold"):
        swin.swin(wrong, _x((1, 8, 8, 8)), num_heads=2, window_size=4, shift_size=2)


def test_swin_input_errors():
    params = npattn.get("swin").init(np.random.default_rng(0), 8, num_heads=2, window_size=4, shift_size=2)
    kw = dict(num_heads=2, window_size=4, shift_size=2)
    with pytest.raises(ValueError, match="swin: x must have 8 channels"):
        swin.swin(params, _x((1, 8, 8, 4)), **kw)
    with pytest.raises(ValueError, match="swin: x must have a non-empty map"):
        swin.swin(params, _x((1, 0, 8, 8)), **kw)
    with pytest.raises(TypeError, match="swin: x has dtype float32"):
        swin.swin(params, _x((1, 8, 8, 8)).astype(np.float32), **kw)


# ---------------------------------------------------------------------------------------------
# gradients


def test_swin_gradcheck_full_and_second_order():
    params = _params("swin", dim=4, num_heads=2, window_size=2, shift_size=1)
    x = _x((1, 3, 5, 4))
    kw = dict(num_heads=2, window_size=2, shift_size=1)
    assert ag.gradcheck(lambda p, a: swin.swin({**params, **p}, a, **kw), npattn.trainable(params), x)
    assert ag.gradgradcheck(lambda p, a: swin.swin({**params, **p}, a, **kw), npattn.trainable(params), x,
                            mode="fast")


def test_swin_gradients_of_masked_weights_with_inf_mask_are_finite():
    params = _params("swin", dim=4, num_heads=2, window_size=2, shift_size=1)
    x = _x((2, 4, 4, 4))
    grads = ag.grad(lambda p, a: ag.sum(swin.swin({**params, **p}, a, num_heads=2, window_size=2, shift_size=1,
                                                  mask_value=-math.inf) ** 2), argnums=(0, 1))(
        npattn.trainable(params), x)
    assert all(np.isfinite(host(g)).all() for g in grads[0].values()) and np.isfinite(host(grads[1])).all()


# ---------------------------------------------------------------------------------------------
# Swin v2


@pytest.mark.parametrize("h,w,window,shift,pretrained", [(8, 8, 4, 2, (0, 0)), (7, 10, 4, 2, (0, 0)),
                                                         (6, 6, 3, 1, (8, 8)), (8, 12, 4, 0, (6, 6))])
def test_swin_v2_matches_the_loop_reference(h, w, window, shift, pretrained):
    params = _params("swin-v2", dim=8, num_heads=2, window_size=window, shift_size=shift,
                     pretrained_window_size=pretrained)
    params["attn.logit_scale"] = ag.from_numpy(np.array([5.0, 1.0]).reshape(2, 1, 1))   # one head clamped
    x = _x((2, h, w, 8))
    out = host(swin_v2.swin_v2(params, x, num_heads=2, window_size=window, shift_size=shift,
                               pretrained_window_size=pretrained))
    expected = reference(params, x, 2, (window,) * 2, (shift,) * 2, version=2, pretrained=pretrained)
    np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-11)


def test_swin_v2_coordinate_table_by_the_formula():
    table = host(swin_v2.coordinates_table((3, 4), (0, 0)))
    assert table.shape == (1, 5, 7, 2)
    for a, b in itertools.product(range(5), range(7)):
        for value, (d, n) in zip(table[0, a, b], ((a - 2, 2), (b - 3, 3))):
            c = d / n * 8
            assert value == pytest.approx(math.copysign(math.log2(1 + abs(c)) / 3, c) if c else 0.0, abs=1e-15)
    assert np.abs(table).max() == pytest.approx(math.log2(9) / 3)    # c = +-8 at the corners


def test_swin_v2_logit_scale_clamp_is_a_kink():
    params = _params("swin-v2", dim=8, num_heads=2, window_size=4, shift_size=2)
    params["attn.logit_scale"] = ag.from_numpy(np.array([5.0, 1.0]).reshape(2, 1, 1))
    x = _x((1, 8, 8, 8))
    grad = ag.grad(lambda s: ag.sum(swin_v2.swin_v2({**params, "attn.logit_scale": s}, x, num_heads=2, window_size=4,
                                                    shift_size=2) ** 2))(params["attn.logit_scale"])
    grad = host(grad).ravel()
    assert grad[0] == 0.0 and grad[1] != 0.0
    at_the_cap = dict(params, **{"attn.logit_scale": ag.from_numpy(np.array([math.log(100.0), 7.0]).reshape(2, 1, 1))})
    out_cap = host(swin_v2.swin_v2(at_the_cap, x, num_heads=2, window_size=4, shift_size=2))
    # a head far above the cap gives the same output as a head at the cap
    above = dict(params, **{"attn.logit_scale": ag.from_numpy(np.array([9.0, 7.0]).reshape(2, 1, 1))})
    np.testing.assert_allclose(host(swin_v2.swin_v2(above, x, num_heads=2, window_size=4, shift_size=2)), out_cap,
                               rtol=1e-14, atol=1e-14)


def test_swin_v2_zero_query_of_padded_tokens_has_finite_gradients():
    """Official init (q_bias = 0) on a padded map: q = 0 for padded tokens; normalize gives 0, no NaN."""
    params = npattn.get("swin-v2").init(np.random.default_rng(0), 8, num_heads=2, window_size=4, shift_size=2)
    x = _x((1, 7, 10, 8))
    kw = dict(num_heads=2, window_size=4, shift_size=2)
    out = host(swin_v2.swin_v2(params, x, **kw))
    np.testing.assert_allclose(out, reference(params, x, 2, (4, 4), (2, 2), version=2), rtol=1e-11, atol=1e-11)
    grads = ag.grad(lambda p: ag.sum(swin_v2.swin_v2({**params, **p}, x, **kw) ** 2))(npattn.trainable(params))
    assert all(np.isfinite(host(g)).all() for g in grads.values())


def test_swin_v2_gradcheck():
    params = _params("swin-v2", dim=4, num_heads=2, window_size=2, shift_size=1, pretrained_window_size=4)
    x = _x((1, 4, 4, 4))
    kw = dict(num_heads=2, window_size=2, shift_size=1, pretrained_window_size=4)
    assert ag.gradcheck(lambda p, a: swin_v2.swin_v2({**params, **p}, a, **kw), npattn.trainable(params), x,
                        mode="fast", n_directions=4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pretrained_window_size=8), "swin-v2: buffer 'attn.relative_coords_table' is not the coordinate table"),
    (dict(pretrained_window_size=-1), "swin-v2: pretrained_window_size must be a non-negative int"),
    (dict(rule="x"), "swin-v2: rule must be one of"),
])
def test_swin_v2_option_errors(kwargs, match):
    params = npattn.get("swin-v2").init(np.random.default_rng(0), 8, num_heads=2, window_size=4, shift_size=2)
    with pytest.raises(ValueError, match=match):
        swin_v2.swin_v2(params, _x((1, 8, 8, 8)), **dict(dict(num_heads=2, window_size=4, shift_size=2), **kwargs))


def test_swin_v2_window_of_one_is_refused():
    with pytest.raises(ValueError, match="swin-v2: the coordinate table of a \\(1, 1\\) window divides by"):
        npattn.get("swin-v2").init(np.random.default_rng(0), 4, num_heads=1, window_size=1)
    params = npattn.get("swin-v2").init(np.random.default_rng(0), 4, num_heads=1, window_size=1,
                                        pretrained_window_size=4)
    assert swin_v2.swin_v2(params, _x((1, 2, 2, 4)), num_heads=1, window_size=1, pretrained_window_size=4).shape == (
        1, 2, 2, 4)


def test_swin_attention_weights():
    """The public attention map: rows sum to 1, it is the map the output is made of, and with mask_value=-inf
    the weights between the regions of a shifted window are exactly 0."""
    params = _params("swin", dim=8, num_heads=2, window_size=4, shift_size=2)
    x = _x((2, 7, 10, 8))
    kw = dict(num_heads=2, window_size=4, shift_size=2)
    weights, window_plan = swin.attention_weights(params, x, **kw)
    weights = host(weights)
    assert weights.shape == (2, window_plan.count, 2, 16, 16)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-14)
    exact, _ = swin.attention_weights(params, x, mask_value=-math.inf, **kw)
    masked = np.broadcast_to(_windows.shift_mask(window_plan, -100.0, np.float64)[None, :, None] != 0, weights.shape)
    assert masked.any() and (host(exact)[masked] == 0).all()
    assert (weights[masked] < 1e-40).all() and (weights[masked] > 0).all()     # exp(-100): tiny, not 0
