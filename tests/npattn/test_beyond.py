"""What the registry matrix cannot check for OCR, IAUnet, FcaNet, RGA and GSoP: each mechanism's pieces
against independent references (SciPy, NumPy loops, the official constructions), options, and errors."""
import re

import numpy as np
import pytest
import scipy.fft

import autograd as ag
import npattn
from npattn.category import ocr as ocr_mod
from npattn.frequency import fca as fca_mod
from npattn.global_ import rga as rga_mod
from npattn.higher_order import gsop as gsop_mod
from npattn.temporal import iau as iau_mod
from tests.conftest import dev, host

NAMES = ("ocr", "iau", "fca", "rga", "rga-s", "rga-c", "gsop")


def _normal(shape, seed=0, scale=1.0):
    return dev(np.random.default_rng(seed).standard_normal(shape) * scale)


# ---------------------------------------------------------------------------------------------
# every parameter matters in the registry configs (so the matrix's gradchecks are not trivial)


def _float_param_grads(mech, train):
    params = mech.default_params()
    inputs = mech.example_input(np.random.default_rng(7))
    weights = {k: v for k, v in params.items() if np.dtype(v.dtype).kind == "f" and ".running_" not in k}
    rest = {k: v for k, v in params.items() if k not in weights}
    cotangent = _normal(tuple(mech.apply(params, *inputs).shape), seed=3)

    def loss(w):
        return ag.sum(mech.apply({**rest, **w}, *inputs, train=train) * cotangent)

    with npattn.track_running_stats():
        return ag.grad(loss)(weights)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", NAMES)
def test_every_weight_gets_a_gradient(name, train):
    grads = _float_param_grads(npattn.get(name), train)
    zero = [k for k, g in grads.items() if not np.any(host(g))]
    if name == "fca":  # the DCT filter buffer is a constant of the method, but still differentiable
        assert "dct_layer.weight" in grads
    assert not zero, f"{name}: parameters with an all-zero gradient: {zero}"


def test_iau_official_zero_init_starts_as_identity_with_dead_gradients():
    """Why the registry config uses zero_init=False: the official init zeroes W1/W2's BN, so the block is the
    identity and nothing before those BNs gets a gradient."""
    mech = npattn.get("iau")
    params = mech.init(np.random.default_rng(0), 16)                           # official zero_init=True
    (clip,) = mech.example_input(np.random.default_rng(1))
    np.testing.assert_array_equal(host(mech.apply(params, clip)), host(clip))
    weights = {k: v for k, v in params.items() if k.endswith(("weight", "bias")) and "running" not in k}
    rest = {k: v for k, v in params.items() if k not in weights}
    grads = ag.grad(lambda w: ag.sum(mech.apply({**rest, **w}, clip) ** 2))(weights)
    assert not np.any(host(grads["W1.0.weight"])) and not np.any(host(grads["g.weight"]))
    assert np.any(host(grads["W1.1.weight"])) and np.any(host(grads["W2.1.weight"]))


# ---------------------------------------------------------------------------------------------
# FcaNet


def test_fca_lowest_frequency_is_global_average_pooling_up_to_a_constant():
    """B_00 = 1/sqrt(h w) everywhere, so Freq_c = sqrt(h w) * GAP(x)_c."""
    for dct_h, dct_w in ((7, 7), (14, 14), (5, 9)):
        params = fca_mod.init(np.random.default_rng(0), 16, dct_h, dct_w, reduction=4, freq_sel_method="low1")
        x = _normal((2, 16, dct_h, dct_w))
        descriptor = host(fca_mod.multi_spectral_descriptor(params, ag.Tensor(x)))
        gap = host(ag.global_avg_pool2d(x, keepdims=False))
        np.testing.assert_allclose(descriptor, np.sqrt(dct_h * dct_w) * gap, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("method", ["top16", "low8", "bot32", "top2"])
def test_fca_descriptor_is_the_orthonormal_2d_dct_coefficient(method):
    channels, dct = 32, 14
    params = fca_mod.init(np.random.default_rng(0), channels, dct, dct, reduction=4, freq_sel_method=method)
    x = np.random.default_rng(1).standard_normal((2, channels, dct, dct))
    descriptor = host(fca_mod.multi_spectral_descriptor(params, ag.Tensor(dev(x))))
    us, vs = fca_mod.scaled_frequencies(method, dct, dct)
    group = channels // len(us)
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(2, 3))
    expected = np.stack([coefficients[:, c, us[c // group], vs[c // group]] for c in range(channels)], axis=1)
    np.testing.assert_allclose(descriptor, expected, rtol=1e-12, atol=1e-13)


def test_fca_frequency_scaling_is_integer_division():
    assert fca_mod.scaled_frequencies("top4", 14, 28) == ([0, 0, 12, 0], [0, 4, 0, 20])
    # below 7 every frequency collapses to DC, as the official code does
    assert fca_mod.scaled_frequencies("bot16", 6, 6) == ([0] * 16, [0] * 16)
    filters = host(fca_mod.dct_filters(16, 6, 6, "bot16"))
    np.testing.assert_allclose(filters, np.full_like(filters, 1 / 6), rtol=1e-14)
    assert fca_mod.frequency_indices("low4") == ([0, 0, 1, 1], [0, 1, 0, 1])


def test_fca_pools_only_when_the_size_differs():
    params = fca_mod.init(np.random.default_rng(0), 16, 7, 7, reduction=4, freq_sel_method="top8")
    x = _normal((2, 16, 7, 7))
    direct = np.einsum("nchw,chw->nc", host(x), host(params["dct_layer.weight"]))
    np.testing.assert_allclose(host(fca_mod.multi_spectral_descriptor(params, ag.Tensor(x))), direct, rtol=1e-13)
    big = _normal((2, 16, 15, 10))
    pooled = ag.adaptive_avg_pool2d(big, (7, 7))
    np.testing.assert_allclose(host(fca_mod.multi_spectral_descriptor(params, ag.Tensor(big))),
                               np.einsum("nchw,chw->nc", host(pooled), host(params["dct_layer.weight"])), rtol=1e-13)
    assert host(fca_mod.attention(params, big)).shape == (2, 16)


def test_fca_bad_configs():
    with pytest.raises(ValueError, match="fca.*divisible"):
        fca_mod.init(np.random.default_rng(0), 24, freq_sel_method="top16")
    with pytest.raises(ValueError, match="fca.*freq_sel_method"):
        fca_mod.init(np.random.default_rng(0), 32, freq_sel_method="top3")
    with pytest.raises(ValueError, match="fca.*freq_sel_method"):
        fca_mod.init(np.random.default_rng(0), 32, freq_sel_method="mid16")


# ---------------------------------------------------------------------------------------------
# GSoP


def test_gsop_covariance_pool_is_the_biased_covariance():
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 6))
    pooled = host(gsop_mod.covariance_pool(dev(x)))
    for n in range(3):
        np.testing.assert_allclose(pooled[n], np.cov(x[n].reshape(5, -1), bias=True), rtol=1e-12, atol=1e-14)


def test_gsop_covariance_gradient_is_the_official_backward():
    """MPNCOV.Covpool's hand-written backward: (G + G^T) X I~, with I~ = (I - 11^T/M)/M."""
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5))
    cotangent = np.random.default_rng(1).standard_normal((2, 4, 4))
    grad = host(ag.grad(lambda t: ag.sum(gsop_mod.covariance_pool(t) * dev(cotangent)))(dev(x)))
    m = 15
    i_hat = (np.eye(m) - np.ones((m, m)) / m) / m
    expected = (cotangent + cotangent.transpose(0, 2, 1)) @ x.reshape(2, 4, m) @ i_hat
    np.testing.assert_allclose(grad, expected.reshape(x.shape), rtol=1e-12, atol=1e-14)


def test_gsop_stride_and_attention_shape():
    params = gsop_mod.init(np.random.default_rng(0), 16, att_dim=4)
    x = _normal((2, 16, 7, 5))
    att = host(gsop_mod.attention(params, x, stride=2))
    assert att.shape == (2, 16, 1, 1) and np.all((att > 0) & (att < 1))
    out = npattn.get("gsop").apply(params, x, stride=2)
    np.testing.assert_allclose(host(out), host(x) * att, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# OCR


def _ocr_setup(seed=0):
    params = ocr_mod.init(np.random.default_rng(seed), 8, 4, 6)
    return params, _normal((2, 8, 5, 4), seed=1), _normal((2, 3, 5, 4), seed=2)


def test_ocr_regions_and_representations_match_explicit_sums():
    _, feats, coarse = _ocr_setup()
    regions = host(ocr_mod.soft_object_regions(coarse, scale=2.0))                   # (N, K, HW)
    logits = 2.0 * host(coarse).reshape(2, 3, -1)
    expected = np.exp(logits - logits.max(2, keepdims=True))
    np.testing.assert_allclose(regions, expected / expected.sum(2, keepdims=True), rtol=1e-13)
    proxy = host(ocr_mod.object_region_representations(feats, coarse, scale=2.0))    # (N, C, K, 1)
    pixels = host(feats).reshape(2, 8, -1)
    for n in range(2):
        for k in range(3):
            np.testing.assert_allclose(proxy[n, :, k, 0], (pixels[n] * regions[n, k]).sum(1), rtol=1e-12)


def test_ocr_relation_is_a_distribution_over_regions():
    params, feats, coarse = _ocr_setup()
    relation = host(ocr_mod.pixel_region_relation(params, feats, coarse))
    assert relation.shape == (2, 20, 3)
    np.testing.assert_allclose(relation.sum(-1), 1.0, rtol=1e-13)
    pooled = host(ocr_mod.pixel_region_relation(params, feats, coarse, pool_scale=2))
    assert pooled.shape == (2, 2 * 2, 3)                                               # floor-mode 2x2 pooling


def test_ocr_dropout2d_zeroes_whole_channels_in_training_only():
    params, feats, coarse = _ocr_setup()
    plain = host(ocr_mod.ocr(params, feats, coarse, train=True, dropout=0.0))
    dropped = host(ocr_mod.ocr(params, feats, coarse, train=True, dropout=0.5, rng=np.random.default_rng(4)))
    again = host(ocr_mod.ocr(params, feats, coarse, train=True, dropout=0.5, rng=np.random.default_rng(4)))
    np.testing.assert_array_equal(dropped, again)                                      # seeded: reproducible
    ratio = np.divide(dropped, plain, out=np.full_like(plain, np.nan), where=plain != 0)
    for n in range(2):
        for c in range(6):
            values = ratio[n, c][~np.isnan(ratio[n, c])]
            assert np.allclose(values, 0.0) or np.allclose(values, 2.0), "Dropout2d keeps or drops a whole channel"
    assert np.any(dropped == 0) and np.any(dropped != plain)
    eval_out = host(ocr_mod.ocr(params, feats, coarse, dropout=0.5))
    np.testing.assert_array_equal(eval_out, host(ocr_mod.ocr(params, feats, coarse, dropout=0.0)))
    with pytest.raises(ValueError, match="ocr.*rng"):
        ocr_mod.ocr(params, feats, coarse, train=True, dropout=0.1)


def test_ocr_bad_inputs_name_the_argument():
    params, feats, coarse = _ocr_setup()
    with pytest.raises(ValueError, match="ocr.*coarse"):
        ocr_mod.ocr(params, feats, coarse[:, :, :4])
    with pytest.raises(ValueError, match="ocr.*coarse"):
        ocr_mod.ocr(params, feats, coarse[None])
    with pytest.raises(TypeError, match="ocr.*coarse"):
        ocr_mod.ocr(params, feats, coarse.astype(np.float32))
    with pytest.raises(ValueError, match="ocr.*feats"):
        ocr_mod.ocr(params, feats, coarse, pool_scale=6)


# ---------------------------------------------------------------------------------------------
# RGA


def test_rga_gates_shapes_and_orders():
    params = rga_mod.init(np.random.default_rng(0), 64, 64)
    x = _normal((2, 64, 4, 16))
    spatial = host(rga_mod.spatial_attention(params, ag.Tensor(x)))
    channel = host(rga_mod.channel_attention(params, ag.Tensor(x)))
    assert spatial.shape == (2, 1, 4, 16) and channel.shape == (2, 64, 1, 1)
    sc = host(rga_mod.rga(params, x, order="sc"))
    cs = host(rga_mod.rga(params, x, order="cs"))
    s_then_c = host(x) * spatial
    np.testing.assert_allclose(sc, s_then_c * host(rga_mod.channel_attention(params, ag.Tensor(dev(s_then_c)))),
                               rtol=1e-13)
    assert not np.allclose(sc, cs)


def test_rga_relation_feature_stacks_incoming_then_outgoing_relations():
    """With gg_spatial's weight on the outgoing half zeroed, the embedding sees only G^T (and vice versa)."""
    params = rga_mod.init(np.random.default_rng(0), 64, 16, use_channel=False, spa_ratio=2, down_ratio=2)
    x = _normal((1, 64, 4, 4))
    n = 16
    weight = host(params["gg_spatial.0.weight"])
    incoming_only = {**params, "gg_spatial.0.weight": dev(np.concatenate([weight[:, :n], 0 * weight[:, n:]], 1))}
    theta = host(npattn.layers.conv_bn(params, "theta_spatial.0", "theta_spatial.1", x, False)).reshape(8, n)
    phi = host(npattn.layers.conv_bn(params, "phi_spatial.0", "phi_spatial.1", x, False)).reshape(8, n)
    affinity = theta.T @ phi                                                            # G[p, q]
    relations_in = affinity.T.reshape(1, n, 4, 4)                                      # channel j at p: G[p, j]
    captured = {}
    original = rga_mod.conv_bn

    def spy(p, conv_prefix, bn_prefix, inp, train, **kw):
        if conv_prefix == "gg_spatial.0":
            captured["relations"] = host(inp)
        return original(p, conv_prefix, bn_prefix, inp, train, **kw)

    rga_mod.conv_bn = spy
    try:
        rga_mod.rga(incoming_only, x, use_channel=False)
    finally:
        rga_mod.conv_bn = original
    np.testing.assert_allclose(captured["relations"][:, :n], relations_in, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(captured["relations"][:, n:], affinity.reshape(1, n, 4, 4), rtol=1e-12, atol=1e-12)


def test_rga_errors():
    params = rga_mod.init(np.random.default_rng(0), 64, 64)
    with pytest.raises(ValueError, match="rga.*in_spatial"):
        rga_mod.rga(params, _normal((2, 64, 8, 9)))
    with pytest.raises(ValueError, match="rga.*order"):
        rga_mod.rga(params, _normal((2, 64, 8, 8)), order="ss")
    with pytest.raises(ValueError, match="rga.*down_ratio"):
        rga_mod.init(np.random.default_rng(0), 32, 64)                                 # (1 + 4) // 8 == 0
    with pytest.raises(ValueError, match="rga"):
        rga_mod.init(np.random.default_rng(0), 64, 64, use_spatial=False, use_channel=False)


# ---------------------------------------------------------------------------------------------
# IAUnet


def test_iau_graph_mask_is_the_complement_of_the_official_w_init():
    for frames, parts in ((1, 4), (3, 4), (4, 2)):
        eye = np.eye(parts)
        w_init = np.tile(1 - eye, (frames, frames))
        for t in range(frames):
            w_init[t * parts:(t + 1) * parts, t * parts:(t + 1) * parts] = eye
        np.testing.assert_array_equal(iau_mod.graph_mask(frames, parts), w_init == 0)


def test_iau_layouts_agree_and_part_maps():
    mech = npattn.get("iau")
    params = mech.default_params()
    (clip,) = mech.example_input(np.random.default_rng(2))                              # (B, T, C, H, W)
    official = dev(np.ascontiguousarray(host(clip).transpose(0, 2, 1, 3, 4)))
    np.testing.assert_allclose(host(iau_mod.iau(params, clip)).transpose(0, 2, 1, 3, 4),
                               host(iau_mod.iau(params, official, layout="bcthw")), rtol=1e-13, atol=1e-14)
    maps = host(iau_mod.part_attention(params, clip))
    assert maps.shape == (2 * 3, 4, 4, 4) and np.all((maps > 0) & (maps < 1))
    with pytest.raises(ValueError, match="iau.*axis 1"):
        iau_mod.iau(params, clip, layout="bcthw")
    with pytest.raises(ValueError, match="iau.*layout"):
        iau_mod.iau(params, clip, layout="tbchw")


# ---------------------------------------------------------------------------------------------
# the parameter contract and the structure options


@pytest.mark.parametrize("shape", [(32, 49, 1), (32, 1, 49), (32, 7, 7, 1)])
def test_fca_rejects_a_reshaped_filter_bank(shape):
    """The DCT size is an option (7 x 7 here), never read from the buffer: a reshaped bank names the key."""
    mech = npattn.get("fca")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(7))
    reshaped = ag.from_numpy(host(params["dct_layer.weight"]).reshape(shape))
    with pytest.raises(ValueError, match=rf"fca: parameter 'dct_layer.weight' must have shape \(32, 7, 7\) .*got "
                                         rf"{re.escape(str(shape))}"):
        mech.apply({**params, "dct_layer.weight": reshaped}, x)
    with pytest.raises(ValueError, match=r"fca: parameter 'dct_layer.weight' must have shape \(32, 7, 7\)"):
        fca_mod.attention({**params, "dct_layer.weight": reshaped}, x)


def test_fca_dct_size_comes_from_the_options():
    params = fca_mod.init(np.random.default_rng(0), 16, 14, 14, reduction=4, freq_sel_method="top4")
    x = _normal((2, 16, 20, 17))
    with pytest.raises(ValueError, match=r"fca: parameter 'dct_layer.weight' must have shape \(16, 7, 7\).*"
                                         r"got \(16, 14, 14\); pass fca the dct_h, dct_w given to init"):
        fca_mod.fca(params, x)
    out = host(fca_mod.fca(params, x, dct_h=14, dct_w=14))
    att = host(fca_mod.attention(params, x, dct_h=14, dct_w=14))
    np.testing.assert_allclose(out, host(x) * att[:, :, None, None], rtol=1e-14)
    with pytest.raises(ValueError, match="fca: dct_h must be a positive int"):
        fca_mod.fca(params, x, dct_h=0, dct_w=14)


def test_rga_min_spatial_is_the_smallest_square_it_accepts():
    for name in ("rga", "rga-s", "rga-c"):
        mech = npattn.get(name)
        params = mech.default_params()
        assert mech.min_spatial == 8
        assert mech.apply(params, _normal((1, 64, 8, 8))).shape == (1, 64, 8, 8)
        assert mech.apply(params, _normal((1, 64, 4, 16))).shape == (1, 64, 4, 16)       # H*W = 64, not square
        for side in (7, 9, 1):
            with pytest.raises(ValueError, match=rf"rga: x has H\*W = {side * side} positions"):
                mech.apply(params, _normal((1, 64, side, side)))


def test_rga_branches_come_from_the_options_not_the_keys():
    x = _normal((2, 64, 8, 8))
    spatial_only = npattn.get("rga-s").default_params()
    with pytest.raises(KeyError, match="rga: parameter 'theta_channel.0.weight' is missing"):
        rga_mod.rga(spatial_only, x)                                                     # default: both branches
    both = npattn.get("rga").default_params()
    with pytest.raises(KeyError, match="rga: params has 36 key.*'theta_channel.0.weight'"):
        rga_mod.rga(both, x, use_channel=False)
    gate = host(rga_mod.spatial_attention(spatial_only, x, use_channel=False))           # (B, 1, H, W)
    np.testing.assert_allclose(host(rga_mod.rga(spatial_only, x, use_channel=False)), gate * host(x), rtol=1e-14)
    with pytest.raises(ValueError, match="rga: channel_attention needs the channel branch"):
        rga_mod.channel_attention(spatial_only, x, use_channel=False)
    with pytest.raises(ValueError, match="rga: at least one of use_spatial / use_channel"):
        rga_mod.rga(both, x, use_spatial=False, use_channel=False)


def test_iau_one_frame_one_part_attends_to_itself_as_the_official_fill():
    """T = P = 1: the only node has no allowed neighbour; the official ``-1e8 * W_init`` shifts its whole row,
    so its softmax weight on itself is 1 and the graph step sees [p; p] (a boolean mask would give [p; 0])."""
    params = iau_mod.init(np.random.default_rng(0), 8, num_parts=1, zero_init=False)
    nodes = _normal((3, 1, 1, 4), seed=1)                                               # (B, T, P, C/2)
    context = _normal((3, 4), seed=2)
    view = npattn.params.Params("iau", params)
    updated = host(iau_mod._graph_update(view, ag.Tensor(nodes), ag.Tensor(context), False))
    stacked = np.concatenate([host(nodes), host(nodes)], axis=3).reshape(3, 8, 1, 1)   # [p; W p] with W = [[1]]
    expected = npattn.layers.conv_bn(params, *iau_mod.GCONV, ag.from_numpy(stacked), False, bias=True)
    np.testing.assert_allclose(updated.reshape(3, 4), host(expected).reshape(3, 4), rtol=1e-13, atol=1e-14)
    # more than one node: masked weights are exactly 0 and each row sums to 1
    mask = iau_mod.graph_mask(2, 3)
    assert mask.sum(axis=1).min() >= 1 and not mask.diagonal().any()


def test_iau_odd_channels_and_structure_errors():
    mech = npattn.get("iau")
    params = mech.default_params()
    (clip,) = mech.example_input(np.random.default_rng(1))
    odd = {k: ag.from_numpy(np.zeros(host(v).shape[:1] + (15,) + host(v).shape[2:])) if k == "W1.0.weight" else v
           for k, v in params.items()}
    with pytest.raises(ValueError, match=r"iau: parameter 'W1.0.weight' must have shape \(C, C, 1, 1, 1\) with C even"):
        mech.apply(odd, clip)
    with pytest.raises(ValueError, match=r"iau: parameter 'g.weight' must have shape \(8, 16, 1, 1\)"):
        iau_mod.part_attention({**params, "g.weight": params["g.weight"][:, :, :1, :1].reshape(8, 16)}, clip)


def test_ocr_options_are_checked_in_eval_too():
    params, feats, coarse = _ocr_setup()
    for dropout in (1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"ocr: dropout must be in \[0, 1\)"):
            ocr_mod.ocr(params, feats, coarse, dropout=dropout)
    for pool_scale in (0, 1.5, True):
        with pytest.raises(ValueError, match="ocr: pool_scale must be a positive integer"):
            ocr_mod.ocr(params, feats, coarse, pool_scale=pool_scale)
    with pytest.raises(KeyError, match="ocr: params has 1 key"):
        ocr_mod.pixel_region_relation({**params, "extra.weight": params["conv_bn_dropout.0.weight"]}, feats, coarse)


def test_gsop_stride_is_checked():
    params = gsop_mod.init(np.random.default_rng(0), 16, att_dim=4)
    for stride in (0, 1.5, True):
        with pytest.raises(ValueError, match="gsop: stride must be a positive int"):
            gsop_mod.gsop(params, _normal((2, 16, 5, 5)), stride=stride)


@pytest.mark.parametrize("name", ["ocr", "fca", "rga", "rga-s", "rga-c", "gsop"])
@pytest.mark.parametrize("size", [(0, 0), (0, 8), (8, 0)])
def test_an_empty_map_is_refused_by_name(name, size):
    mech = npattn.get(name)
    inputs = [dev(np.zeros(host(x).shape[:2] + size)) for x in mech.example_input(np.random.default_rng(7))]
    with pytest.raises(ValueError, match=rf"{name.split('-')[0]}: (feats|x) (spatial size|has H\*W = 0)"):
        mech.apply(mech.default_params(), *inputs)


@pytest.mark.parametrize("layout,shape", [("btchw", (2, 0, 16, 4, 4)), ("btchw", (2, 3, 16, 0, 4)),
                                          ("bcthw", (2, 16, 0, 4, 4)), ("bcthw", (2, 16, 3, 4, 0))])
def test_iau_refuses_an_empty_clip_by_name(layout, shape):
    with pytest.raises(ValueError, match="iau: x must have at least one frame and a non-empty H x W"):
        npattn.get("iau").apply(npattn.get("iau").default_params(), dev(np.zeros(shape)), layout=layout)
