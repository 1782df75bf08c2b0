"""Self-attention family: what the registry matrix cannot see.

Independent references (dense masked attention for CCNet, explicit adaptive-pool loops for ANN's anchors,
an explicit concatenation for the Non-local pairwise function), the official-code quirks (DANet CAM's
max-minus-energy, the zero inits that make the blocks start as the identity), option errors and
second-order gradients.  References are computed on the host in float64.
"""
import re
import warnings

import numpy as np
import pytest

import autograd as ag
import npattn
from npattn.self_attention import _common, ann, ccnet, danet, gcnet, non_local
from tests.conftest import host


def _x(shape, seed=2):
    return ag.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def _hp(params):
    return {k: host(v) for k, v in params.items()}


def _conv1x1(p, prefix, x):
    """Host 1x1 conv with bias: x (B, C, H, W)."""
    w = p[f"{prefix}.weight"][:, :, 0, 0]
    return np.einsum("oc,bchw->bohw", w, x) + p[f"{prefix}.bias"][None, :, None, None]


def _softmax(e, mask=None):
    if mask is not None:
        e = np.where(mask, e, -np.inf)
    e = np.exp(e - e.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# CCNet


def _dense_criss_cross(p, x):
    """One CCA step as a dense (HW x HW) masked attention: each u attends to its row and column, itself once."""
    b, c, h, w = x.shape
    q = _conv1x1(p, "cca.query_conv", x).reshape(b, -1, h * w)
    k = _conv1x1(p, "cca.key_conv", x).reshape(b, -1, h * w)
    v = _conv1x1(p, "cca.value_conv", x).reshape(b, c, h * w)
    rows, cols = np.divmod(np.arange(h * w), w)
    same_row = rows[:, None] == rows[None, :]
    same_col = cols[:, None] == cols[None, :]
    mask = same_row | same_col                               # self is in both sets: counted once
    assert (mask.sum(axis=1) == h + w - 1).all()
    attention = _softmax(np.einsum("bcu,bcv->buv", q, k), mask)
    out = np.einsum("bcv,buv->bcu", v, attention).reshape(b, c, h, w)
    return p["cca.gamma"] * out + x


@pytest.mark.parametrize("size", [(4, 5), (3, 3), (1, 6), (6, 1)])
@pytest.mark.parametrize("recurrence", [1, 2])
def test_ccnet_matches_dense_masked_attention(size, recurrence):
    params = ccnet.init(np.random.default_rng(0), 16, gamma_init=0.8)
    x = _x((2, 16) + size)
    expected = host(x)
    for _ in range(recurrence):
        expected = _dense_criss_cross(_hp(params), expected)
    out = host(ccnet.ccnet(params, x, recurrence=recurrence))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_ccnet_attention_map_is_criss_cross_only():
    params = ccnet.init(np.random.default_rng(0), 16)
    x = _x((2, 16, 4, 5))
    query = ag.conv2d(x, params["cca.query_conv.weight"], params["cca.query_conv.bias"])
    key = ag.conv2d(x, params["cca.key_conv.weight"], params["cca.key_conv.bias"])
    attention = host(ccnet.criss_cross_attention_map(query, key))
    assert attention.shape == (2, 4, 5, 4 + 5)                     # (B, H, W, H + W), never (HW, HW)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-14)
    for h in range(4):
        assert np.all(attention[:, h, :, h] == 0.0)                # the column's self entry is masked out
        assert np.all(attention[:, h, :, 4:] > 0)                  # the row keeps self


def test_ccnet_gamma_zero_is_identity_and_recurrence_validated():
    params = ccnet.init(np.random.default_rng(0), 16)
    x = _x((2, 16, 4, 4))
    assert np.array_equal(host(ccnet.ccnet(params, x)), host(x))
    with pytest.raises(ValueError, match="ccnet"):
        ccnet.ccnet(params, x, recurrence=0)


# ---------------------------------------------------------------------------------------------
# ANN


def _adaptive_avg_loop(t, s):
    """Explicit PyTorch adaptive average pooling of (B, C, H, W) to (s, s)."""
    b, c, h, w = t.shape
    out = np.zeros((b, c, s, s))
    for i in range(s):
        h0, h1 = (i * h) // s, -(-((i + 1) * h) // s)
        for j in range(s):
            w0, w1 = (j * w) // s, -(-((j + 1) * w) // s)
            out[:, :, i, j] = t[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out.reshape(b, c, s * s)


@pytest.mark.parametrize("size", [(16, 16), (9, 9), (7, 11), (5, 3)])
def test_ann_pyramid_has_110_anchors_matching_adaptive_pooling(size):
    t = _x((2, 3) + size)
    pooled = host(ann.pyramid_pool(t))
    assert pooled.shape == (2, 3, 1 + 9 + 36 + 64) == (2, 3, 110)
    expected = np.concatenate([_adaptive_avg_loop(host(t), s) for s in (1, 3, 6, 8)], axis=2)
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=1e-14)
    matrix = host(ann.pyramid_matrix(*size))
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-14)   # every anchor is an average


def test_ann_attention_is_over_110_anchors():
    mech = npattn.get("ann-apnb")
    attention = host(ann.apnb_attention(mech.default_params(), _x((2, 16, 12, 10))))
    assert attention.shape == (2, 120, 110)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-14)


def test_ann_zero_init_context_is_zero():
    """Official W init is 0: the context branch contributes nothing at the start."""
    params = ann.init_apnb(np.random.default_rng(0), 16, key_channels=8, value_channels=8)
    x = _x((2, 16, 6, 6))
    out = host(ann.ann_apnb(params, x))
    p = _hp(params)
    fused = np.einsum("oc,bchw->bohw", p["conv_bn_dropout.0.weight"][:, 16:, 0, 0], host(x))
    fused = fused + p["conv_bn_dropout.0.bias"][None, :, None, None]
    bn = "conv_bn_dropout.1.0"
    expected = (fused - p[f"{bn}.running_mean"][None, :, None, None]) / np.sqrt(
        p[f"{bn}.running_var"][None, :, None, None] + 1e-5) * p[f"{bn}.weight"][None, :, None, None]
    np.testing.assert_allclose(out, np.maximum(expected + p[f"{bn}.bias"][None, :, None, None], 0), atol=1e-13)


def test_ann_bn_updates_once_or_twice():
    mech = npattn.get("ann-apnb")
    params = mech.default_params()
    x = _x((2, 16, 6, 6))
    key = "stages.0.f_key.1.0"
    with npattn.track_running_stats() as once:
        mech.apply(params, x, train=True)
    with npattn.track_running_stats() as twice:
        mech.apply(params, x, train=True, query_key_bn_updates=2)
    assert int(host(once[f"{key}.num_batches_tracked"])) == 1
    assert int(host(twice[f"{key}.num_batches_tracked"])) == 2
    first = host(once[f"{key}.running_mean"])                   # 0.1 * batch mean (from 0)
    np.testing.assert_allclose(host(twice[f"{key}.running_mean"]), 0.9 * first + first, atol=1e-15)
    assert ann.official_state_dict(params)["stages.0.f_query.0.weight"] is params["stages.0.f_key.0.weight"]


def test_ann_dropout2d_needs_rng_and_drops_channels():
    mech = npattn.get("ann-afnb")
    params = mech.default_params()
    low, high = mech.example_input(np.random.default_rng(1))
    base = host(mech.apply(params, low, high, train=False, dropout=0.5))
    assert np.array_equal(base, host(mech.apply(params, low, high, train=False)))    # eval: identity
    with pytest.raises(ValueError, match="ann.*rng"):
        mech.apply(params, low, high, train=True, dropout=0.5)
    out = host(mech.apply(params, low, high, train=True, dropout=0.5, rng=np.random.default_rng(0)))
    plain = host(mech.apply(params, low, high, train=True))
    dropped = np.all(out == 0, axis=(2, 3))
    assert dropped.any() and not dropped.all()
    kept = ~dropped
    np.testing.assert_allclose(out[kept], 2.0 * plain[kept], atol=1e-14)


def test_ann_afnb_batch_mismatch():
    mech = npattn.get("ann-afnb")
    low, high = mech.example_input(np.random.default_rng(1))
    with pytest.raises(ValueError, match="ann.*batch"):
        mech.apply(mech.default_params(), low[:1], high)
    with pytest.raises(ValueError, match="ann.*high"):
        mech.apply(mech.default_params(), low, high[:, :3])


# ---------------------------------------------------------------------------------------------
# DANet


def test_danet_cam_is_max_minus_energy_and_opposite_to_the_paper():
    x = _x((2, 6, 4, 5))
    flat = host(x).reshape(2, 6, 20)
    energy = np.einsum("bcn,bdn->bcd", flat, flat)
    official = host(danet.channel_attention_map(x))
    literal = _softmax(energy.max(axis=-1, keepdims=True) - energy)
    np.testing.assert_allclose(official, literal, atol=1e-15)
    np.testing.assert_allclose(official, _softmax(-energy), atol=1e-12)     # = softmax(-energy)
    paper = host(danet.channel_attention_map(x, cam_form="paper"))
    np.testing.assert_allclose(paper, _softmax(energy), atol=1e-15)
    # the official form puts the least weight on the most similar channel (itself, the max of each row)
    assert np.all(official.argmin(axis=-1) == np.arange(6)) and np.all(paper.argmax(axis=-1) == np.arange(6))


def test_danet_cam_rowmax_passes_no_gradient():
    """The max term is a per-row shift: the gradient equals that of softmax(-energy)."""
    params = danet.init(np.random.default_rng(0), 6, variant="cam", gamma_init=0.9)
    x = _x((2, 6, 4, 5))
    u = ag.from_numpy(np.random.default_rng(4).standard_normal((2, 6, 4, 5)))
    grad = ag.grad(lambda t: ag.sum(danet.danet(params, t, variant="cam") * u))(x)

    def shifted_free(t):
        flat = ag.reshape(t, (2, 6, 20))
        attention = ag.softmax(-ag.matmul(flat, ag.swapaxes(flat, 1, 2)), axis=-1)
        return params["gamma"] * ag.reshape(ag.matmul(attention, flat), t.shape) + t

    np.testing.assert_allclose(host(grad), host(ag.grad(lambda t: ag.sum(shifted_free(t) * u))(x)), atol=1e-11)


@pytest.mark.parametrize("variant", ["pam", "cam", "pam+cam"])
def test_danet_gamma_zero_is_identity(variant):
    params = danet.init(np.random.default_rng(0), 16, variant=variant)
    x = _x((2, 16, 5, 5))
    assert np.array_equal(host(danet.danet(params, x, variant=variant)), host(x))


def test_danet_variant_and_parameters_must_match():
    params = danet.init(np.random.default_rng(0), 16, variant="cam")
    with pytest.raises(KeyError, match="danet: parameter 'value_conv.weight' is missing"):
        danet.danet(params, _x((2, 16, 4, 4)), variant="pam")
    pam = danet.init(np.random.default_rng(0), 16, variant="pam")
    with pytest.raises(KeyError, match="danet.*does not use: 'query_conv.weight'"):   # never a silent CAM
        danet.danet(pam, _x((2, 16, 4, 4)), variant="cam")
    with pytest.raises(ValueError, match="danet"):
        danet.init(np.random.default_rng(0), 16, variant="head")            # PAM on 16 // 4 = 4 channels


# ---------------------------------------------------------------------------------------------
# Non-local


@pytest.mark.parametrize("mode", non_local.MODES)
@pytest.mark.parametrize("train", [False, True])
def test_nonlocal_official_init_is_identity(mode, train):
    """BN gamma (and beta) start at 0, so z = 0 + x exactly; without BN the W conv starts at 0."""
    x = _x((2, 16, 6, 6))
    for bn_layer in (True, False):
        params = non_local.init(np.random.default_rng(0), 16, mode=mode, bn_layer=bn_layer)
        out = non_local.non_local(params, x, train=train, mode=mode, bn_layer=bn_layer)
        assert np.array_equal(host(out), host(x))


def test_nonlocal_pairwise_forms():
    rng = np.random.default_rng(0)
    x = _x((2, 8, 4, 6))
    hx = host(x)
    for mode in ("embedded_gaussian", "gaussian"):
        params = non_local.init(rng, 8, mode=mode)
        weights = host(non_local.pairwise(params, x, mode=mode))
        assert weights.shape == (2, 24, 6)                                   # M = (4 // 2) * (6 // 2)
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-14)
    # dot product, no sub-sampling: theta^T phi / N
    params = non_local.init(rng, 8, mode="dot_product")
    p = _hp(params)
    theta = _conv1x1(p, "theta", hx).reshape(2, 4, 24)
    phi = _conv1x1(p, "phi", hx).reshape(2, 4, 24)
    weights = host(non_local.pairwise(params, x, mode="dot_product", sub_sample=False))
    np.testing.assert_allclose(weights, np.einsum("bci,bcj->bij", theta, phi) / 24, atol=1e-14)
    # concatenation: the separable form equals ReLU(w^T [theta_i; phi_j]) / M on the explicit pairs
    params = non_local.init(rng, 8, mode="concatenation")
    p = _hp(params)
    theta = _conv1x1(p, "theta", hx).reshape(2, 4, 24)
    phi = _conv1x1(p, "phi", hx).reshape(2, 4, 24)
    w_f = p["concat_project.weight"].reshape(8)
    pairs = np.concatenate([np.repeat(theta[:, :, :, None], 24, 3), np.repeat(phi[:, :, None, :], 24, 2)], axis=1)
    expected = np.maximum(np.einsum("c,bcij->bij", w_f, pairs), 0) / 24
    weights = host(non_local.pairwise(params, x, mode="concatenation", sub_sample=False))
    np.testing.assert_allclose(weights, expected, atol=1e-14)


def test_nonlocal_pool_order_and_scale_matter():
    params = non_local.init(np.random.default_rng(0), 16, zero_init=False)
    x = _x((2, 16, 6, 6))
    official = host(non_local.non_local(params, x))
    assert np.abs(official - host(non_local.non_local(params, x, pool_first=False))).max() > 1e-3
    assert np.abs(official - host(non_local.non_local(params, x, use_scale=False))).max() > 1e-3
    np.testing.assert_allclose(official, host(non_local.non_local(params, x, scale=8 ** -0.5)), atol=1e-15)


def test_nonlocal_option_errors():
    params = non_local.init(np.random.default_rng(0), 16)
    x = _x((2, 16, 6, 6))
    with pytest.raises(ValueError, match="nonlocal.*mode"):
        non_local.non_local(params, x, mode="cosine")
    # the mode is the structure: parameters of another mode are missing or unused keys, never a silent variant
    with pytest.raises(KeyError, match="nonlocal.*does not use: 'theta.weight'"):
        non_local.non_local(params, x, mode="gaussian")
    with pytest.raises(KeyError, match="nonlocal: parameter 'concat_project.weight' is missing"):
        non_local.non_local(params, x, mode="concatenation")
    with pytest.raises(KeyError, match="nonlocal: parameter 'W_bn.weight' is missing"):
        non_local.non_local(non_local.init(np.random.default_rng(0), 16, bn_layer=False), x)
    with pytest.raises(KeyError, match="nonlocal.*does not use: 'W_bn.weight'"):
        non_local.non_local(params, x, bn_layer=False)
    dot = non_local.init(np.random.default_rng(0), 16, mode="dot_product")
    with pytest.raises(ValueError, match="nonlocal.*scale"):
        non_local.non_local(dot, x, mode="dot_product", scale=0.5)
    assert non_local.non_local(params, x[:, :, :1, :1], sub_sample=False).shape == (2, 16, 1, 1)


def test_nonlocal_official_gaussian_fill():
    params = non_local.init(np.random.default_rng(0), 64, conv_std=0.01)
    theta = host(params["theta.weight"])
    assert abs(theta.std() - 0.01) < 1e-3 and not host(params["theta.bias"]).any()
    assert not host(params["W_bn.weight"]).any()


# ---------------------------------------------------------------------------------------------
# GCNet


def test_gcnet_official_init_and_fusion():
    x = _x((2, 32, 5, 6))
    add = gcnet.init(np.random.default_rng(0), 32)
    assert add["channel_add_conv.0.weight"].shape == (2, 32, 1, 1)          # int(32 / 16)
    assert add["channel_add_conv.1.weight"].shape == (2, 1, 1)
    assert np.array_equal(host(gcnet.gcnet(add, x)), host(x))               # last conv at 0: identity
    mul = gcnet.init(np.random.default_rng(0), 32, fusion_types=("channel_mul",))
    np.testing.assert_array_equal(host(gcnet.gcnet(mul, x, fusion_types=("channel_mul",))), host(x) * 0.5)  # sigmoid(0)
    std = host(add["conv_mask.weight"]).std()
    assert 0.15 < std < 0.35                                                 # kaiming fan_in: sqrt(2/32) = 0.25


def test_gcnet_attention_pooling_reference():
    params = gcnet.init(np.random.default_rng(0), 32, ratio=0.25, zero_init=False)
    x = _x((2, 32, 5, 6))
    p, hx = _hp(params), host(x)
    alpha = _softmax(_conv1x1(p, "conv_mask", hx).reshape(2, 30))
    np.testing.assert_allclose(host(gcnet.context(params, x))[:, :, 0, 0],
                               np.einsum("bcn,bn->bc", hx.reshape(2, 32, 30), alpha), atol=1e-14)
    avg = gcnet.init(np.random.default_rng(0), 32, pooling_type="avg")
    assert "conv_mask.weight" not in avg
    np.testing.assert_allclose(host(gcnet.context(avg, x, pooling_type="avg"))[:, :, 0, 0], hx.mean(axis=(2, 3)),
                               atol=1e-15)
    with pytest.raises(ValueError, match="gcnet"):
        gcnet.init(np.random.default_rng(0), 8, ratio=1 / 16)


# ---------------------------------------------------------------------------------------------
# shared pieces and second order


def test_dropout2d_identity_in_eval_and_validated():
    x = _x((2, 4, 3, 3))
    assert _common.dropout2d(ag.Tensor(x), 0.3, False).data is x
    with pytest.raises(ValueError, match="dropout"):
        _common.dropout2d(ag.Tensor(x), 1.0, True, np.random.default_rng(0), "ann")


@pytest.mark.parametrize("name", ["ccnet", "nonlocal-concat", "danet-cam", "gcnet", "ann-afnb"])
def test_second_order(name):
    mech = npattn.get(name)
    params = mech.default_params()
    inputs = mech.example_input(np.random.default_rng(7))
    float_params = {k: v for k, v in params.items() if np.dtype(v.dtype).kind == "f"}
    assert ag.gradgradcheck(lambda *xs: mech.apply(params, *xs), *inputs, n_directions=2)
    assert ag.gradgradcheck(lambda p: mech.apply({**params, **p}, *inputs), float_params, n_directions=1)


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_fused_attention_matches_composed(scale):
    """The in-place primitive equals aggregate(attention_map(.)) in value and in every gradient."""
    q, k, v = _x((2, 3, 7), 1), _x((2, 3, 5), 2), _x((2, 4, 5), 3)
    u = _x((2, 4, 7), 4)

    def loss(fn):
        return lambda *t: ag.sum(fn(*t) * u)

    def composed(a, b, c):
        return _common.aggregate(_common.attention_map(a, b, scale), c)

    def fused(a, b, c):
        return _common.dot_product_attention(a, b, c, scale)

    np.testing.assert_allclose(host(fused(q, k, v)), host(composed(q, k, v)), atol=1e-14)
    for argnums in ((0, 1, 2), (0,), (1,), (2,), (0, 2)):
        expected = ag.grad(loss(composed), argnums=argnums)(q, k, v)
        actual = ag.grad(loss(fused), argnums=argnums)(q, k, v)
        for a, e in zip(actual if isinstance(actual, tuple) else (actual,),
                        expected if isinstance(expected, tuple) else (expected,)):
            np.testing.assert_allclose(host(a), host(e), atol=1e-13)
    assert ag.gradcheck(lambda *t: fused(*t), q, k, v, mode="full")
    assert ag.gradgradcheck(lambda *t: fused(*t), q, k, v, n_directions=3)


# ---------------------------------------------------------------------------------------------
# the parameter contract: errors that name the mechanism, the argument, expected and received


@pytest.mark.parametrize("name,key", [("ccnet", "cca.gamma"), ("danet-pam", "gamma"), ("danet-cam", "gamma"),
                                      ("danet", "sa.gamma"), ("danet", "sc.gamma")])
@pytest.mark.parametrize("shape", [(), (1, 1), (16, 1, 1)], ids=["0-d", "1x1", "per-channel"])
def test_gamma_of_another_shape_is_the_contracts_value_error(name, key, shape):
    """A (16, 1, 1) gamma would broadcast silently into a per-channel scale: the contract refuses it by name."""
    mech = npattn.get(name)
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(7))
    wrong = ag.from_numpy(np.full(shape, 0.5))
    with pytest.raises(ValueError, match=rf"{name.split('-')[0]}: parameter '{key}' must have shape \(1,\), "
                                         rf"got {re.escape(str(shape))}"):
        mech.apply({**params, key: wrong}, x)


def test_ann_pyramid_sizes_and_options_are_validated():
    mech = npattn.get("ann-apnb")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(7))
    with pytest.raises(ValueError, match=r"ann: psp_sizes must name at least one pooled size .*got \(\)"):
        mech.apply(params, x, psp_sizes=())
    with pytest.raises(ValueError, match="ann: psp_sizes must be positive ints, got"):
        mech.apply(params, x, psp_sizes=(1, 0))
    with pytest.raises(ValueError, match="ann: psp_sizes must be positive ints"):
        mech.apply(params, x, psp_sizes=(1, 2.5))
    with pytest.raises(ValueError, match="ann: psp_sizes"):
        ann.apnb_attention(params, x, psp_sizes=[])
    with pytest.raises(ValueError, match="ann: query_key_bn_updates must be 1 or 2, got 3"):
        mech.apply(params, x, query_key_bn_updates=3)
    # a single size is one stage of anchors (AdaptiveAvgPool2d(3): 9 anchors)
    assert ann.apnb_attention(params, x, psp_sizes=3).shape == (2, 81, 9)


@pytest.mark.parametrize("name", ["ann-apnb", "ann-afnb"])
@pytest.mark.parametrize("dropout", [1.0, -0.1, float("nan")])
def test_ann_dropout_is_checked_in_eval_too(name, dropout):
    mech = npattn.get(name)
    inputs = mech.example_input(np.random.default_rng(7))
    with pytest.raises(ValueError, match=r"ann: dropout must be in \[0, 1\)"):
        mech.apply(mech.default_params(), *inputs, dropout=dropout)
    with pytest.raises(TypeError, match="ann: dropout must be a number"):
        mech.apply(mech.default_params(), *inputs, dropout="0.1")


def test_ann_apnb_double_update_reads_through_the_view():
    """The second BN call starts from the first one's statistics (Params.overlay) and every key is still read:
    an unused key is reported, and the caller's dict is not touched."""
    mech = npattn.get("ann-apnb")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(7))
    before = {k: host(v).copy() for k, v in params.items()}
    with npattn.track_running_stats() as stats:
        mech.apply(params, x, train=True, query_key_bn_updates=2)
    assert int(host(stats["stages.0.f_key.1.0.num_batches_tracked"])) == 2
    for key, value in before.items():
        np.testing.assert_array_equal(host(params[key]), value)
    with pytest.raises(KeyError, match="ann: params has 1 key"):
        mech.apply({**params, "stages.0.f_query.0.weight": params["stages.0.f_key.0.weight"]}, x, train=True,
                   query_key_bn_updates=2)


def test_danet_cam_form_is_checked_for_every_variant():
    for name in ("danet", "danet-pam", "danet-cam"):
        mech = npattn.get(name)
        with pytest.raises(ValueError, match="danet: cam_form must be one of"):
            mech.apply(mech.default_params(), *mech.example_input(np.random.default_rng(7)), cam_form="Paper")


def test_nonlocal_pairwise_reads_the_whole_block():
    params = non_local.init(np.random.default_rng(0), 16)
    x = _x((2, 16, 6, 6))
    with pytest.raises(KeyError, match="nonlocal: parameter 'W_bn.running_var' is missing"):
        non_local.pairwise({k: v for k, v in params.items() if k != "W_bn.running_var"}, x)
    with pytest.raises(ValueError, match=r"nonlocal: parameter 'W.weight' must have shape \(16, 8, 1, 1\)"):
        non_local.pairwise({**params, "W.weight": ag.from_numpy(np.zeros((16, 8, 3, 3)))}, x)


def test_gcnet_fusion_types_must_be_a_tuple_of_names():
    x = _x((2, 32, 5, 6))
    with pytest.raises(TypeError, match=r"gcnet: fusion_types must be a tuple or list .*got 'channel_add'"):
        gcnet.init(np.random.default_rng(0), 32, fusion_types="channel_add")
    params = gcnet.init(np.random.default_rng(0), 32)
    with pytest.raises(TypeError, match="gcnet: fusion_types must be a tuple or list"):
        gcnet.gcnet(params, x, fusion_types="channel_add")
    with pytest.raises(ValueError, match="gcnet: fusion_types must be a non-empty subset .* without repeats"):
        gcnet.gcnet(params, x, fusion_types=("channel_add", "channel_add"))
    with pytest.raises(ValueError, match="gcnet: fusion_types"):
        gcnet.init(np.random.default_rng(0), 32, fusion_types=())
    with pytest.raises(ValueError, match="gcnet: pooling_type must be one of"):
        gcnet.gcnet(params, x, pooling_type="max")
    assert gcnet.gcnet(params, x, fusion_types=["channel_add"]).shape == x.shape      # a list is fine


@pytest.mark.parametrize("fusion", ["channel_add", "channel_mul"])
def test_gcnet_single_plane_warns_and_ignores_the_context(fusion):
    """int(C * ratio) == 1: LayerNorm over one value is 0 * weight + bias, so the transform is a constant (as the
    official code); init and apply warn, the output does not depend on the context, its gradients are zero."""
    with pytest.warns(UserWarning, match=r"gcnet: int\(C \* ratio\) = 1"):
        params = gcnet.init(np.random.default_rng(0), 16, ratio=1 / 16, fusion_types=(fusion,), zero_init=False)
    params = {**params, f"{fusion}_conv.1.bias": ag.from_numpy(np.array([[[0.7]]]))}   # a non-zero LN bias
    a, b = _x((2, 16, 4, 5), seed=1), _x((2, 16, 4, 5), seed=2)
    with pytest.warns(UserWarning, match="gcnet: int"):
        out_a, out_b = (host(gcnet.gcnet(params, t, fusion_types=(fusion,))) for t in (a, b))
    # the same constant (added, or as a gate) whatever the input; with LN bias 0.7 it is conv3(relu(0.7))
    p = _hp(params)
    constant = p[f"{fusion}_conv.3.weight"][:, 0, 0, 0] * 0.7 + p[f"{fusion}_conv.3.bias"]
    if fusion == "channel_add":
        expected_a, expected_b = host(a) + constant[:, None, None], host(b) + constant[:, None, None]
    else:
        gate = 1 / (1 + np.exp(-constant))
        expected_a, expected_b = host(a) * gate[:, None, None], host(b) * gate[:, None, None]
    np.testing.assert_allclose(out_a, expected_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out_b, expected_b, rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning):
        grads = ag.grad(lambda q: ag.sum(gcnet.gcnet({**params, **q}, a, fusion_types=(fusion,)) ** 2))(
            {k: params[k] for k in ("conv_mask.weight", f"{fusion}_conv.0.weight", f"{fusion}_conv.3.weight")})
    assert not np.any(host(grads["conv_mask.weight"])) and not np.any(host(grads[f"{fusion}_conv.0.weight"]))
    assert np.any(host(grads[f"{fusion}_conv.3.weight"]))


def test_gcnet_wider_bottleneck_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params = gcnet.init(np.random.default_rng(0), 32)                                # P = 2
        gcnet.gcnet(params, _x((1, 32, 3, 3)))


@pytest.mark.parametrize("name", [m.name for m in npattn.mechanisms("self_attention")])
@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_map_is_refused_by_name(name, size):
    """min_spatial = 1 (2 with the Non-local's sub-sampling): a 0 x W map is a ValueError naming the mechanism
    and the argument, not conv2d's (DANet's CAM alone would otherwise return an empty map)."""
    mech = npattn.get(name)
    inputs = list(mech.example_input(np.random.default_rng(7)))
    for i in range(len(inputs)):                      # AFNB: each of low and high in turn
        cut = list(inputs)
        cut[i] = ag.from_numpy(np.zeros(host(inputs[i]).shape[:2] + size))
        with pytest.raises(ValueError, match=rf"{name.split('-')[0]}: \w+ spatial size .* is too small"):
            mech.apply(mech.default_params(), *cut)
