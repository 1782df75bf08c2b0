"""Hybrid family: what the registry matrix cannot check.

CBAM's channel-pool order and pool types, BAM's product vs sum and its global mean, A²-Nets against
explicit loops, scSE's combinations (the max tie split included), parameter names, option errors.
References are computed on the host with NumPy from the same parameters.
"""
import numpy as np
import pytest
from scipy.signal import correlate

import autograd as ag
import npattn
from npattn.hybrid import a2, bam, cbam, scse
from tests.conftest import dev, host


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _setup(name, seed=0, **config):
    mech = npattn.get(name)
    params = mech.init(np.random.default_rng(seed), **{**mech.config, **config})
    (x,) = mech.example_input(np.random.default_rng(seed + 1))
    return mech, params, x


def _hp(params):
    return {k: host(v) for k, v in params.items()}


def _mlp(p, prefix_in, prefix_out, z):
    hidden = np.maximum(z @ p[f"{prefix_in}.weight"].T + p[f"{prefix_in}.bias"], 0.0)
    return hidden @ p[f"{prefix_out}.weight"].T + p[f"{prefix_out}.bias"]


# ---------------------------------------------------------------------------------------------
# parameter names (the spec sheet's state_dict layout)


def test_parameter_names_and_shapes():
    shapes = {k: host(v).shape for k, v in npattn.get("cbam").default_params().items()}
    assert shapes["mlp.0.weight"] == (4, 32) and shapes["mlp.2.weight"] == (32, 4) and "mlp.0.bias" in shapes
    assert shapes["spatial_conv.weight"] == (1, 2, 7, 7) and "spatial_conv.bias" not in shapes
    assert shapes["spatial_bn.running_var"] == (1,)
    assert set(npattn.get("cbam-channel").default_params()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                                "mlp.2.bias"}
    shapes = {k: host(v).shape for k, v in npattn.get("bam").default_params().items()}
    expected = {"ch_fc0.weight": (8, 32), "ch_bn0.running_mean": (8,), "ch_fc_final.weight": (32, 8),
                "sp_reduce.weight": (8, 32, 1, 1), "sp_bn_reduce.weight": (8,), "sp_di0.weight": (8, 8, 3, 3),
                "sp_di1.bias": (8,), "sp_bn_di1.running_var": (8,), "sp_final.weight": (1, 8, 1, 1),
                "sp_final.bias": (1,)}
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert set(npattn.get("scse").default_params()) == {"cse.fc1.weight", "cse.fc1.bias", "cse.fc2.weight",
                                                        "cse.fc2.bias", "sse.conv.weight", "sse.conv.bias"}
    assert host(npattn.get("scse").default_params()["cse.fc1.weight"]).shape == (2, 32)      # r = 16
    assert host(npattn.get("scse-max").default_params()["cse.fc1.weight"]).shape == (16, 32)  # r = 2
    assert set(npattn.get("sse").default_params()) == {"sse.conv.weight", "sse.conv.bias"}
    shapes = {k: host(v).shape for k, v in npattn.get("a2").default_params().items()}
    assert shapes == {"convA.weight": (12, 32, 1, 1), "convA.bias": (12,), "convB.weight": (8, 32, 1, 1),
                      "convB.bias": (8,), "convV.weight": (8, 32, 1, 1), "convV.bias": (8,),
                      "conv_reconstruct.weight": (32, 12, 1, 1), "conv_reconstruct.bias": (32,)}


# ---------------------------------------------------------------------------------------------
# CBAM


@pytest.mark.parametrize("pool_types", [("avg", "max"), ("avg", "max", "lp", "lse"), ("lse",), ("lp",)])
def test_cbam_channel_gate_matches_numpy(pool_types):
    _, params, x = _setup("cbam-channel")
    p, xh = _hp(params), host(x)
    flat = xh.reshape(2, 32, -1)
    pools = {"avg": flat.mean(2), "max": flat.max(2), "lp": np.sqrt((flat ** 2).sum(2)),
             "lse": np.log(np.exp(flat).sum(2))}
    raw = sum(_mlp(p, "mlp.0", "mlp.2", pools[t]) for t in pool_types)   # summed *before* the sigmoid
    expected = xh * _sigmoid(raw)[:, :, None, None]
    got = host(cbam.cbam(params, x, pool_types=pool_types, no_spatial=True))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool_types", [("lp",), ("lp", "avg")])
def test_cbam_lp_gradient_on_an_all_zero_channel_is_finite(pool_types):
    """||x|| has no derivative at 0, and sqrt'(0) * 0 gave NaN; F.lp_pool2d's gradient there is 0 (the
    subgradient central differences also see).  So the input gradient of a zero channel is the gate alone:
    d/dx [x * Mc(x)] = Mc + x * dMc/dx, and x = 0."""
    _, params, x = _setup("cbam-channel")
    x = host(x).copy()
    x[0, 3] = 0.0
    cotangent = np.random.default_rng(5).standard_normal(x.shape)
    grad = host(ag.grad(lambda v: ag.sum(cbam.cbam(params, v, pool_types=pool_types, no_spatial=True)
                                         * dev(cotangent)))(dev(x)))
    assert np.all(np.isfinite(grad))
    gate = host(cbam.attention_maps(params, dev(x), pool_types=pool_types, no_spatial=True)[0])
    if pool_types == ("lp",):
        np.testing.assert_allclose(grad[0, 3], cotangent[0, 3] * gate[0, 3], rtol=1e-14, atol=1e-15)
    # away from that channel the gradient is the ordinary x / ||x||: central differences agree everywhere
    small = dev(x[:, :, :3, :3])
    assert ag.gradcheck(lambda v: cbam.cbam(params, v, pool_types=pool_types, no_spatial=True), small, mode="full")
    # a NaN still reaches the output through the L2 descriptor
    x[1, 5, 0, 0] = np.nan
    out = host(cbam.cbam(params, dev(x), pool_types=("lp",), no_spatial=True))
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


@pytest.mark.parametrize("order", ["max-mean", "mean-max"])
def test_cbam_channel_pool_order(order):
    """A kernel that reads only input channel 0 (centre tap) sees the channel max (official) or the mean."""
    _, params, x = _setup("cbam")
    kernel = np.zeros((1, 2, 7, 7))
    kernel[0, 0, 3, 3] = 1.0
    params = {**params, "spatial_conv.weight": dev(kernel)}
    channel_gate, spatial_gate = cbam.attention_maps(params, x, spatial_order=order)
    refined = host(x) * host(channel_gate)[:, :, None, None]
    pooled = refined.max(axis=1) if order == "max-mean" else refined.mean(axis=1)
    expected = _sigmoid(pooled / np.sqrt(1.0 + 1e-5))[:, None]   # eval BN with running stats (0, 1)
    np.testing.assert_allclose(host(spatial_gate), expected, rtol=1e-12, atol=1e-13)


def test_cbam_orders_are_a_channel_swap_of_the_kernel():
    _, params, x = _setup("cbam")
    swapped = {**params, "spatial_conv.weight": dev(host(params["spatial_conv.weight"])[:, ::-1].copy())}
    official = host(cbam.cbam(params, x, spatial_order="max-mean"))
    paper = host(cbam.cbam(swapped, x, spatial_order="mean-max"))
    np.testing.assert_allclose(paper, official, rtol=1e-13, atol=1e-14)
    assert not np.allclose(host(cbam.cbam(params, x, spatial_order="mean-max")), official)


def test_cbam_paper_form_without_bn():
    _, params, x = _setup("cbam", spatial_bn=False)
    assert not any(k.startswith("spatial_bn") for k in params)
    train, eval_ = (host(cbam.cbam(params, x, train=t, spatial_order="mean-max", spatial_bn=False))
                    for t in (True, False))
    np.testing.assert_array_equal(train, eval_)   # nothing depends on the mode without BN


def test_cbam_output_is_product_of_gates():
    _, params, x = _setup("cbam")
    channel_gate, spatial_gate = cbam.attention_maps(params, x)
    expected = host(x) * host(channel_gate)[:, :, None, None] * host(spatial_gate)
    np.testing.assert_allclose(host(cbam.cbam(params, x)), expected, rtol=1e-13, atol=1e-14)
    _, channel_params, _ = _setup("cbam-channel")
    assert cbam.attention_maps(channel_params, x, no_spatial=True)[1] is None


def test_cbam_spatial_bn_momentum_is_0_01():
    _, params, x = _setup("cbam")
    with npattn.track_running_stats() as stats:
        cbam.cbam(params, x, train=True)
    channel_gate, _ = cbam.attention_maps(params, x)
    refined = host(x) * host(channel_gate)[:, :, None, None]
    p = _hp(params)
    pooled = np.stack([refined.max(1), refined.mean(1)], axis=1)
    logits = np.stack([sum(correlate(np.pad(pooled[n, c], 3), p["spatial_conv.weight"][0, c], mode="valid")
                           for c in range(2)) for n in range(2)])
    expected_mean = 0.99 * 0.0 + 0.01 * logits.mean()
    expected_var = 0.99 * 1.0 + 0.01 * logits.var(ddof=1)
    np.testing.assert_allclose(host(stats["spatial_bn.running_mean"]), [expected_mean], rtol=1e-12)
    np.testing.assert_allclose(host(stats["spatial_bn.running_var"]), [expected_var], rtol=1e-12)


def test_cbam_bad_options():
    _, params, x = _setup("cbam")
    with pytest.raises(ValueError, match="cbam.*pool_types"):
        cbam.cbam(params, x, pool_types=("avg", "median"))
    with pytest.raises(ValueError, match="cbam.*spatial_order"):
        cbam.cbam(params, x, spatial_order="avg-max")
    with pytest.raises(ValueError, match="cbam"):
        cbam.init(np.random.default_rng(0), 8, reduction=16)


# ---------------------------------------------------------------------------------------------
# BAM


def test_bam_channel_branch_is_a_true_global_mean_on_non_square_maps():
    _, params, x = _setup("bam")
    assert host(x).shape[2] != host(x).shape[3]
    p = _hp(params)
    z = host(x).mean(axis=(2, 3))
    hidden = z @ p["ch_fc0.weight"].T + p["ch_fc0.bias"]
    hidden = (hidden - p["ch_bn0.running_mean"]) / np.sqrt(p["ch_bn0.running_var"] + 1e-5)
    hidden = hidden * p["ch_bn0.weight"] + p["ch_bn0.bias"]
    expected = np.maximum(hidden, 0) @ p["ch_fc_final.weight"].T + p["ch_fc_final.bias"]
    channel, spatial = bam.attention_maps(params, x)
    np.testing.assert_allclose(host(channel)[:, :, 0, 0], expected, rtol=1e-12, atol=1e-13)
    assert host(spatial).shape == (host(x).shape[0], 1) + host(x).shape[2:]


@pytest.mark.parametrize("train", [False, True])
def test_bam_product_vs_sum(train):
    _, params, x = _setup("bam")
    channel, spatial = (host(m) for m in bam.attention_maps(params, x, train=train))
    xh = host(x)
    product = host(bam.bam(params, x, train=train))
    total = host(bam.bam(params, x, train=train, combine="sum"))
    np.testing.assert_allclose(product, (1 + _sigmoid(channel * spatial)) * xh, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(total, xh + xh * _sigmoid(channel + spatial), rtol=1e-12, atol=1e-13)
    assert np.max(np.abs(product - total)) > 1e-3


def test_bam_extra_layers_and_dilation():
    params = bam.init(np.random.default_rng(0), 16, reduction=4, num_layers=2, dilation_conv_num=3)
    assert host(params["ch_fc1.weight"]).shape == (4, 4) and "ch_bn1.running_mean" in params
    assert "sp_di2.weight" in params and "sp_di3.weight" not in params
    x = dev(np.random.default_rng(1).standard_normal((2, 16, 3, 5)))
    structure = {"num_layers": 2, "dilation_conv_num": 3}
    for dilation in (1, 4):
        assert bam.bam(params, x, train=True, dilation=dilation, **structure).shape == (2, 16, 3, 5)
    with npattn.track_running_stats() as stats:
        bam.bam(params, x, train=True, **structure)
    assert {k.rsplit(".", 1)[0] for k in stats} == {"ch_bn0", "ch_bn1", "sp_bn_reduce", "sp_bn_di0",
                                                    "sp_bn_di1", "sp_bn_di2"}


def test_bam_errors():
    _, params, x = _setup("bam")
    # BatchNorm1d over the (N, C/r) channel descriptor has one value per channel when N == 1 (torch refuses)
    with pytest.raises(ValueError, match=r"^bam: BatchNorm 'ch_bn0' in training needs more than one value per "
                                         r"channel, got input shape \(1, 8\)"):
        bam.bam(params, x[:1], train=True)
    assert bam.bam(params, x[:1]).shape == (1,) + tuple(x.shape[1:])   # eval mode is fine with N = 1
    with pytest.raises(ValueError, match="bam.*combine"):
        bam.bam(params, x, combine="max")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"bam: dilation must be a positive integer, got {bad!r}"):
            bam.bam(params, x, dilation=bad)
    with pytest.raises(ValueError, match="bam: num_layers must be an integer >= 1, got 0"):
        bam.bam(params, x, num_layers=0)
    with pytest.raises(ValueError, match="bam: dilation_conv_num must be an integer >= 0, got -1"):
        bam.bam(params, x, dilation_conv_num=-1)


def test_bam_layer_counts_come_from_the_options_never_from_the_keys():
    params = bam.init(np.random.default_rng(0), 16, reduction=4, num_layers=2, dilation_conv_num=1)
    x = dev(np.random.default_rng(1).standard_normal((2, 16, 3, 5)))
    with pytest.raises(KeyError, match=r"bam: params has 7 key.*'ch_fc1\.weight'"):
        bam.bam(params, x, dilation_conv_num=1)                      # num_layers=1: the second FC-BN is unused
    with pytest.raises(KeyError, match=r"bam: parameter 'sp_di1\.weight' is missing"):
        bam.bam(params, x, num_layers=2)                             # dilation_conv_num=2: one conv-BN short
    with pytest.raises(KeyError, match=r"bam: params has 7 key.*'sp_di0\.weight'"):
        bam.attention_maps(params, x, num_layers=2, dilation_conv_num=0)
    bam.attention_maps(params, x, num_layers=2, dilation_conv_num=1)
    # a hidden FC of the wrong width names its key
    wrong = {**params, "ch_fc1.weight": dev(np.zeros((4, 5)))}
    with pytest.raises(ValueError, match=r"bam: parameter 'ch_fc1\.weight' must have shape \(4, 4\), got \(4, 5\)"):
        bam.bam(wrong, x, num_layers=2, dilation_conv_num=1)


# ---------------------------------------------------------------------------------------------
# A²-Nets


def _a2_loops(p, x, residual):
    """Explicit loops over every index of the paper's gather and distribute equations."""
    n_batch, channels, height, width = x.shape
    positions = height * width
    flat = x.reshape(n_batch, channels, positions)

    def conv1x1(prefix, inp):
        return np.einsum("oc,ncl->nol", p[f"{prefix}.weight"][:, :, 0, 0], inp) + p[f"{prefix}.bias"][None, :, None]

    A, B, V = conv1x1("convA", flat), conv1x1("convB", flat), conv1x1("convV", flat)
    c_m, c_n = A.shape[1], B.shape[1]
    Z = np.zeros((n_batch, c_m, positions))
    for n in range(n_batch):
        G = np.zeros((c_m, c_n))
        for i in range(c_n):
            weights = [np.exp(B[n, i, j]) for j in range(positions)]
            norm = sum(weights)
            for m in range(c_m):
                G[m, i] = sum(A[n, m, j] * weights[j] / norm for j in range(positions))
        for j in range(positions):
            weights = [np.exp(V[n, i, j]) for i in range(c_n)]
            norm = sum(weights)
            for m in range(c_m):
                Z[n, m, j] = sum(G[m, i] * weights[i] / norm for i in range(c_n))
    out = conv1x1("conv_reconstruct", Z).reshape(n_batch, channels, height, width)
    return x + out if residual else out


@pytest.mark.parametrize("residual", [False, True])
def test_a2_matches_explicit_loops(residual):
    params = a2.init(np.random.default_rng(3), 6, c_m=4, c_n=3)
    x = np.random.default_rng(4).standard_normal((2, 6, 3, 4))
    got = host(a2.double_attention(params, dev(x), residual=residual))
    np.testing.assert_allclose(got, _a2_loops(_hp(params), x, residual), rtol=1e-12, atol=1e-13)


def test_a2_attention_maps_normalise_over_the_right_axes():
    _, params, x = _setup("a2")
    gather, distribute = (host(m) for m in a2.attention_maps(params, x))
    assert gather.shape == distribute.shape == (2, 8) + host(x).shape[2:]
    np.testing.assert_allclose(gather.sum(axis=(2, 3)), 1.0, rtol=1e-13)   # over positions
    np.testing.assert_allclose(distribute.sum(axis=1), 1.0, rtol=1e-13)    # over the c_n descriptors


def test_a2_each_sample_independent_of_the_batch():
    """The circulating fightingcv copy softmaxes over the batch axis; ours must not mix samples."""
    _, params, x = _setup("a2")
    both = host(a2.double_attention(params, x))
    alone = host(a2.double_attention(params, x[1:]))
    np.testing.assert_allclose(alone[0], both[1], rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# scSE


def _cse_sse(params, x):
    p, xh = _hp(params), host(x)
    cse = xh * _sigmoid(_mlp(p, "cse.fc1", "cse.fc2", xh.mean(axis=(2, 3))))[:, :, None, None]
    logits = np.einsum("c,nchw->nhw", p["sse.conv.weight"][0, :, 0, 0], xh) + p["sse.conv.bias"][0]
    return cse, xh * _sigmoid(logits)[:, None]


@pytest.mark.parametrize("name", ["scse", "scse-max", "cse", "sse"])
def test_scse_entries_match_numpy(name):
    mech, params, x = _setup(name)
    full = scse.init(np.random.default_rng(0), 32, reduction=mech.config.get("reduction", 16))
    params_full = {**full, **params}
    cse_out, sse_out = _cse_sse(params_full, x)
    expected = {"scse": cse_out + sse_out, "scse-max": np.maximum(cse_out, sse_out), "cse": cse_out,
                "sse": sse_out}[name]
    np.testing.assert_allclose(host(mech.apply(params, x)), expected, rtol=1e-12, atol=1e-13)


def test_scse_max_tie_splits_the_gradient():
    """With cSE(x) == sSE(x) exactly, each branch gets half of the gradient (torch.max semantics)."""
    _, params, x = _setup("scse-max")
    params = {**params, "cse.fc2.weight": dev(np.zeros((32, 16))), "cse.fc2.bias": dev(np.full(32, 0.25)),
              "sse.conv.weight": dev(np.zeros((1, 32, 1, 1))), "sse.conv.bias": dev(np.full(1, 0.25))}
    def branch(b):
        return {k: v for k, v in params.items() if k.startswith(b)}

    cse_out, sse_out = (host(scse.scse(branch(b), x, branches=(b,))) for b in ("cse", "sse"))
    np.testing.assert_array_equal(cse_out, sse_out)   # an exact tie everywhere

    def loss(p, combine="max"):
        return ag.sum(scse.scse(p, x, combine=combine) * x)

    def branch_loss(b):
        return lambda p: ag.sum(scse.scse(p, x, branches=(b,)) * x)

    grads = ag.grad(loss)(params)
    cse_only = ag.grad(branch_loss("cse"))(branch("cse"))
    sse_only = ag.grad(branch_loss("sse"))(branch("sse"))
    for key in ("cse.fc2.bias", "cse.fc2.weight", "cse.fc1.weight"):
        np.testing.assert_allclose(host(grads[key]), 0.5 * host(cse_only[key]), rtol=1e-13, atol=1e-15)
    for key in ("sse.conv.bias", "sse.conv.weight"):
        np.testing.assert_allclose(host(grads[key]), 0.5 * host(sse_only[key]), rtol=1e-13, atol=1e-15)
    assert np.abs(host(grads["sse.conv.bias"])).max() > 1e-3


def test_scse_errors_name_the_entry():
    for name in ("scse", "cse", "sse"):
        mech, params, x = _setup(name)
        with pytest.raises(ValueError, match=f"^{name}:"):
            mech.apply(params, x[:, :31])
        with pytest.raises(TypeError, match=f"^{name}:"):
            mech.apply(params, x.astype(np.float32))
    _, params, x = _setup("scse")
    with pytest.raises(ValueError, match="scse.*combine"):
        scse.scse(params, x, combine="mul")
    with pytest.raises(ValueError, match="scse.*branches"):
        scse.init(np.random.default_rng(0), 32, branches=("cse", "ese"))
    with pytest.raises(ValueError, match="scse.*branches"):
        scse.scse(params, x, branches=())


def test_scse_branches_come_from_the_option_never_from_the_keys():
    """Dropping the sSE weights is a KeyError, never a silent cSE; the single-branch entries name themselves."""
    _, params, x = _setup("scse")
    cse_only = {k: v for k, v in params.items() if k.startswith("cse.")}
    with pytest.raises(KeyError, match="^scse: parameter 'sse.conv.weight' is missing"):
        scse.scse(cse_only, x)
    with pytest.raises(KeyError, match=r"^cse: params has 2 key.*'sse\.conv\.weight'"):
        scse.scse(params, x, branches="cse")
    with pytest.raises(KeyError, match=r"^sse: params has 4 key.*'cse\.fc1\.weight'"):
        scse.scse(params, x, branches=("sse",))
    # branch order does not matter; the result is the entry's
    np.testing.assert_array_equal(host(scse.scse(params, x, branches=("sse", "cse"))), host(scse.scse(params, x)))
    with pytest.raises(ValueError, match=r"^sse: parameter 'sse\.conv\.weight' must have shape \(1, 32, 1, 1\), "
                                         r"got \(1, 32, 3, 3\)"):
        scse.scse({"sse.conv.weight": dev(np.zeros((1, 32, 3, 3))), "sse.conv.bias": params["sse.conv.bias"]}, x,
                  branches="sse")


# ---------------------------------------------------------------------------------------------
# channel counts not divisible by the reduction ratio: hidden widths are C // r (floor), as the official code


INDIVISIBLE = {
    "cbam": {"mlp.0.weight": (7, 30), "mlp.0.bias": (7,), "mlp.2.weight": (30, 7), "spatial_conv.weight": (1, 2, 7, 7)},
    "cbam-channel": {"mlp.0.weight": (7, 30), "mlp.2.weight": (30, 7), "mlp.2.bias": (30,)},
    "bam": {"ch_fc0.weight": (7, 30), "ch_bn0.running_mean": (7,), "ch_fc_final.weight": (30, 7),
            "sp_reduce.weight": (7, 30, 1, 1), "sp_di1.weight": (7, 7, 3, 3), "sp_final.weight": (1, 7, 1, 1)},
    "scse": {"cse.fc1.weight": (7, 30), "cse.fc2.weight": (30, 7), "sse.conv.weight": (1, 30, 1, 1)},
    "cse": {"cse.fc1.weight": (7, 30), "cse.fc1.bias": (7,), "cse.fc2.weight": (30, 7)},
}


@pytest.mark.parametrize("name", sorted(INDIVISIBLE))
def test_channel_counts_not_divisible_by_the_reduction(name):
    mech = npattn.get(name)
    params = mech.init(np.random.default_rng(0), **{**mech.config, "channels": 30, "reduction": 4})
    for key, shape in INDIVISIBLE[name].items():
        assert tuple(params[key].shape) == shape, key
    x = dev(np.random.default_rng(1).standard_normal((3, 30, 5, 6)))
    assert mech.apply(params, x).shape == (3, 30, 5, 6)
    assert ag.gradcheck(lambda p, v: mech.apply(p, v), params, x, mode="fast", n_directions=2)


# ---------------------------------------------------------------------------------------------
# min_spatial (1 for every hybrid entry) is the smallest accepted size; 0 x W and H x 0 maps are refused by name


#: entries whose official code gives NaN on a 1x1 map (accepted, as official): {entry: why}
NAN_ON_ONE_PIXEL = {"simam": "the official variance divisor H*W - 1 is 0 (0/0; test_cnn_beyond.py)"}


@pytest.mark.parametrize("mech", npattn.mechanisms("hybrid"), ids=lambda m: m.name)
def test_min_spatial_is_the_smallest_accepted_size(mech):
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(0))
    assert mech.min_spatial == 1
    one = dev(np.random.default_rng(1).standard_normal(tuple(x.shape[:2]) + (1, 1)))
    out = mech.apply(params, one)
    expected = np.isnan if mech.name in NAN_ON_ONE_PIXEL else np.isfinite
    assert out.shape == tuple(x.shape[:2]) + (1, 1) and np.all(expected(host(out)))
    for size in ((0, 3), (3, 0), (0, 0)):
        empty = dev(np.zeros(tuple(x.shape[:2]) + size))
        with pytest.raises(ValueError, match=f"^({mech.name}|{mech.name.split('-')[0]}): x spatial size"):
            mech.apply(params, empty)
