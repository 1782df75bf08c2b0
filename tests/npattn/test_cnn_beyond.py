"""What the registry matrix cannot check for the CNN attention modules after the survey (issue 17): each
mechanism's equations against an independent NumPy reference written from the paper / official code, its
width rules and options, odd and tiny maps, and its errors.  (The PyTorch twins are in
tests/torch_tier/test_cnn_beyond.py.)"""
import numpy as np
import pytest
import scipy.signal

import autograd as ag
import npattn
from npattn.channel import coord, gct, sge, split_attention, srm
from npattn.hybrid import psa, shuffle_attention, simam, triplet
from npattn.self_attention import cot, external
from tests.conftest import dev, host
from tests.npattn.test_channel import _randomize_bn


def _normal(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _host_params(params):
    return {k: host(v) for k, v in params.items()}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _bn_eval(p, prefix, z, eps=1e-5):
    """BatchNorm in eval mode over axis 1 of z, NumPy."""
    shape = (1, -1) + (1,) * (z.ndim - 2)
    mean, var = p[f"{prefix}.running_mean"].reshape(shape), p[f"{prefix}.running_var"].reshape(shape)
    return (z - mean) / np.sqrt(var + eps) * p[f"{prefix}.weight"].reshape(shape) + p[f"{prefix}.bias"].reshape(shape)


def _gradcheck_both_modes(fn, params, x, train_modes=(False, True)):
    for train in train_modes:
        assert ag.gradcheck(lambda p, v: fn(p, v, train=train), params, dev(x), mode="fast", n_directions=3)


# ---------------------------------------------------------------------------------------------
# Coordinate Attention


def test_coord_width_rule_is_official():
    """mip = max(8, C // 32): 16 for C = 512, 8 for C = 100 (3 by the ratio), 40 for C = 1280."""
    for channels, mip in ((512, 16), (100, 8), (1280, 40), (8, 8)):
        params = coord.init(np.random.default_rng(0), channels)
        assert params["conv1.weight"].shape == (mip, channels, 1, 1)
        assert params["conv_h.weight"].shape == params["conv_w.weight"].shape == (channels, mip, 1, 1)
    assert coord.init(np.random.default_rng(0), 64, reduction=4, min_mip=2)["conv1.weight"].shape[0] == 16


def _coord_reference(p, x):
    """Coordinate Attention in eval mode, NumPy, from the paper's equations with the official layers."""
    h = x.shape[2]
    z = np.concatenate([x.mean(axis=3), x.mean(axis=2)], axis=2)               # [z^h; z^w]  (N, C, H + W)
    f = np.einsum("mc,ncl->nml", p["conv1.weight"][:, :, 0, 0], z) + p["conv1.bias"][None, :, None]
    f = _bn_eval(p, "bn1", f)
    f = f * np.clip(f + 3, 0, 6) / 6                                            # h_swish

    def gate(prefix, strip):
        logits = np.einsum("cm,nml->ncl", p[f"{prefix}.weight"][:, :, 0, 0], strip)
        return _sigmoid(logits + p[f"{prefix}.bias"][:, None])

    g_h, g_w = gate("conv_h", f[:, :, :h]), gate("conv_w", f[:, :, h:])
    return x * g_h[:, :, :, None] * g_w[:, :, None, :]


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 1, 1), (3, 16, 1, 6), (2, 16, 4, 1)])
def test_coord_matches_numpy_reference(shape):
    rng = np.random.default_rng(3)
    params = _randomize_bn(coord.init(rng, 16, reduction=4, min_mip=2), rng)
    x = _normal(shape, seed=4)
    expected = _coord_reference(_host_params(params), x)
    np.testing.assert_allclose(host(coord.coord(params, dev(x))), expected, rtol=1e-12, atol=1e-12)
    a_h, a_w = coord.attention_maps(params, dev(x))
    assert a_h.shape == shape[:3] + (1,) and a_w.shape == shape[:2] + (1, shape[3])
    np.testing.assert_allclose(host(a_h) * host(a_w) * x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 8, 1, 1), (1, 8, 3, 1), (2, 8, 2, 5)])
def test_coord_gradcheck_tiny_maps(shape):
    rng = np.random.default_rng(5)
    params = _randomize_bn(coord.init(rng, 8, reduction=2, min_mip=2, bias=False), rng)
    _gradcheck_both_modes(lambda p, v, train: coord.coord(p, v, train=train, bias=False), params, _normal(shape, 6))


def test_coord_options_and_structure_errors():
    params = coord.init(np.random.default_rng(0), 8, bias=False)
    x = dev(_normal((1, 8, 3, 3)))
    with pytest.raises(ValueError, match="coord.*act.*'relu'"):
        coord.coord(params, x, bias=False, act="relu")
    with pytest.raises(KeyError, match="coord.*'conv1.bias'"):
        coord.coord(params, x)                         # parameters without biases, bias=True asked for
    np.testing.assert_array_equal(host(coord.coord(params, x, bias=False, act="hardswish")),
                                  host(coord.coord(params, x, bias=False)))
    with pytest.raises(ValueError, match="coord.*positive"):
        coord.init(np.random.default_rng(0), 8, reduction=0)


# ---------------------------------------------------------------------------------------------
# SimAM


def test_simam_hand_case():
    """Map [0, 2]: mu = 1, d = [1, 1], n = 1, sigma^2 = 2 -> [0, 2 sigmoid(1 / (4 (2 + lambda)) + 0.5)]."""
    x = np.array([0.0, 2.0]).reshape(1, 1, 1, 2)
    expected = [0.0, 2.0 * _sigmoid(1.0 / (4.0 * (2.0 + 1e-4)) + 0.5)]
    np.testing.assert_allclose(host(simam.simam({}, dev(x))).ravel(), expected, rtol=1e-15, atol=0)


def _simam_reference(x, e_lambda=1e-4, unbiased=True):
    """The paper's minimal energy, map by map in a loop: e* = 4(s2 + l) / ((t - mu)^2 + 2 s2 + 2 l)."""
    out = np.empty_like(x)
    for n_, c_ in np.ndindex(*x.shape[:2]):
        t = x[n_, c_]
        mu = t.mean()
        s2 = ((t - mu) ** 2).sum() / (t.size - (1 if unbiased else 0))
        energy = 4 * (s2 + e_lambda) / ((t - mu) ** 2 + 2 * s2 + 2 * e_lambda)
        out[n_, c_] = t * _sigmoid(1.0 / energy)
    return out


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 2), (2, 2, 3, 1), (1, 4, 9, 9)])
def test_simam_matches_the_paper_energy(shape, unbiased):
    x = _normal(shape, seed=2, scale=3.0)
    np.testing.assert_allclose(host(simam.simam({}, dev(x), unbiased=unbiased)), _simam_reference(x, unbiased=unbiased),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(simam.attention_maps({}, dev(x), unbiased=unbiased)) * x,
                               _simam_reference(x, unbiased=unbiased), rtol=1e-12, atol=1e-12)


def test_simam_denominator_matters_and_1x1_is_nan():
    x = _normal((1, 2, 5, 4), seed=3)
    official, biased = host(simam.simam({}, dev(x))), host(simam.simam({}, dev(x), unbiased=False))
    assert 1e-3 < np.abs(official - biased).max() < 0.1
    one = dev(_normal((2, 3, 1, 1), seed=4))
    assert np.isnan(host(simam.simam({}, one))).all()            # official: 0 / 0
    np.testing.assert_allclose(host(simam.simam({}, one, unbiased=False)), host(one) * _sigmoid(0.5), rtol=1e-15)


@pytest.mark.parametrize("shape", [(2, 2, 1, 2), (1, 3, 3, 1), (2, 2, 3, 4)])
def test_simam_gradcheck_small_maps(shape):
    x = dev(_normal(shape, seed=5))
    for unbiased in (True, False):
        assert ag.gradcheck(lambda v: simam.simam({}, v, unbiased=unbiased), x, mode="full")


def test_simam_rejects_parameters_and_bad_lambda():
    x = dev(_normal((1, 2, 3, 3)))
    with pytest.raises(KeyError, match="simam.*'weight'"):
        simam.simam({"weight": x}, x)
    with pytest.raises(ValueError, match="simam.*e_lambda"):
        simam.simam({}, x, e_lambda=-1.0)
    assert simam.init(np.random.default_rng(0), 16) == {}
    assert simam.simam({}, dev(_normal((1, 2, 3, 3)), dtype=np.float32)).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# SGE


def _sge_params(channels, groups, seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": dev(rng.standard_normal((1, groups, 1, 1))), "bias": dev(rng.standard_normal((1, groups, 1, 1)))}


def _sge_reference(p, x, unbiased=True):
    """SGE with explicit loops over samples, groups and positions (contiguous groups)."""
    n, c, h, w = x.shape
    groups = p["weight"].shape[1]
    size = c // groups
    out = np.empty_like(x)
    for n_, g in np.ndindex(n, groups):
        block = x[n_, g * size:(g + 1) * size]                                  # (C/G, H, W)
        mean_vector = block.mean(axis=(1, 2))
        similarity = np.array([[block[:, i, j] @ mean_vector for j in range(w)] for i in range(h)])
        centred = similarity - similarity.mean()
        std = np.sqrt((centred ** 2).sum() / (h * w - (1 if unbiased else 0)))
        gate = _sigmoid(p["weight"][0, g, 0, 0] * centred / (std + 1e-5) + p["bias"][0, g, 0, 0])
        out[n_, g * size:(g + 1) * size] = block * gate
    return out


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("shape, groups", [((2, 12, 5, 6), 3), ((1, 4, 1, 2), 4), ((3, 6, 3, 1), 1)])
def test_sge_matches_loop_reference(shape, groups, unbiased):
    params = _sge_params(shape[1], groups)
    x = _normal(shape, seed=1)
    expected = _sge_reference(_host_params(params), x, unbiased)
    np.testing.assert_allclose(host(sge.sge(params, dev(x), unbiased=unbiased)), expected, rtol=1e-12, atol=1e-12)
    gate = host(sge.attention_maps(params, dev(x), unbiased=unbiased))
    assert gate.shape == (shape[0], groups) + shape[2:]


def test_sge_official_init_and_1x1_maps():
    params = sge.init(np.random.default_rng(0), 8, groups=2)
    assert np.all(host(params["weight"]) == 0) and np.all(host(params["bias"]) == 1)
    x = _normal((2, 8, 4, 5), seed=2)
    np.testing.assert_allclose(host(sge.sge(params, dev(x))), x * _sigmoid(1.0), rtol=1e-15)
    one = dev(_normal((2, 8, 1, 1), seed=3))
    assert np.isnan(host(sge.sge(_sge_params(8, 2), one))).all()              # unbiased std of one value
    np.testing.assert_allclose(host(sge.sge(params, one, unbiased=False)), host(one) * _sigmoid(1.0), rtol=1e-15)


def test_sge_std_divisor_matters():
    params, x = _sge_params(8, 2, seed=4), dev(_normal((1, 8, 5, 6), seed=5))
    assert 1e-4 < np.abs(host(sge.sge(params, x)) - host(sge.sge(params, x, unbiased=False))).max() < 0.1


@pytest.mark.parametrize("shape", [(2, 6, 1, 2), (1, 6, 3, 3)])
def test_sge_gradcheck_small_maps(shape):
    params = _sge_params(6, 3, seed=6)
    for unbiased in (True, False):
        assert ag.gradcheck(lambda p, v: sge.sge(p, v, unbiased=unbiased), params, dev(_normal(shape, 7)), mode="full")


def test_sge_groups_must_divide_channels():
    with pytest.raises(ValueError, match="sge.*10 channels.*groups=4"):
        sge.init(np.random.default_rng(0), 10, groups=4)
    with pytest.raises(ValueError, match="sge.*10 channels.*groups=4"):
        sge.sge(_sge_params(8, 4), dev(_normal((1, 10, 3, 3))))


# ---------------------------------------------------------------------------------------------
# Triplet Attention


def _plane_gate(p, branch, u):
    """sigmoid(BN(conv_k([max; mean] over axis 1))) of u (N, D, P, Q) -> (N, P, Q); scipy conv, zero padding."""
    z = np.stack([u.max(axis=1), u.mean(axis=1)], axis=1)
    weight = p[f"{branch}.conv.conv.weight"][0]
    logits = np.stack([sum(scipy.signal.correlate2d(z[n, i], weight[i], mode="same") for i in range(2))
                       for n in range(u.shape[0])])[:, None]
    return _sigmoid(_bn_eval(p, f"{branch}.conv.bn", logits))[:, 0]


def _triplet_reference(p, x, no_spatial=False):
    """The official permute - gate - permute-back form, in NumPy."""
    gate_cw = _plane_gate(p, "cw", x.transpose(0, 2, 1, 3))                     # (N, C, W)
    gate_hc = _plane_gate(p, "hc", x.transpose(0, 3, 2, 1))                     # (N, H, C)
    out_cw = x * gate_cw[:, :, None, :]
    out_hc = x * gate_hc.transpose(0, 2, 1)[:, :, :, None]
    if no_spatial:
        return (out_cw + out_hc) / 2
    return (x * _plane_gate(p, "hw", x)[:, None] + out_cw + out_hc) / 3


@pytest.mark.parametrize("no_spatial", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 1, 1, 1), (2, 9, 2, 1), (1, 3, 8, 8)])
def test_triplet_matches_numpy_reference(shape, no_spatial):
    rng = np.random.default_rng(8)
    params = _randomize_bn(triplet.init(rng, no_spatial=no_spatial), rng)
    x = _normal(shape, seed=9)
    expected = _triplet_reference(_host_params(params), x, no_spatial)
    np.testing.assert_allclose(host(triplet.triplet(params, dev(x), no_spatial=no_spatial)), expected,
                               rtol=1e-12, atol=1e-12)
    gates = triplet.attention_maps(params, dev(x), no_spatial=no_spatial)
    n, c, h, w = shape
    assert gates["cw"].shape == (n, c, 1, w) and gates["hc"].shape == (n, c, h, 1)
    assert ("hw" in gates) != no_spatial


def test_triplet_gradcheck_both_modes():
    rng = np.random.default_rng(10)
    params = _randomize_bn(triplet.init(rng, kernel_size=3), rng)
    _gradcheck_both_modes(triplet.triplet, params, _normal((2, 4, 3, 5), seed=11))


def test_triplet_structure_and_kernel_errors():
    x = dev(_normal((1, 4, 5, 5)))
    with pytest.raises(ValueError, match="triplet.*odd"):
        triplet.init(np.random.default_rng(0), kernel_size=4)
    params = triplet.init(np.random.default_rng(0), no_spatial=True)
    with pytest.raises(KeyError, match="triplet.*'hw.conv.conv.weight'"):
        triplet.triplet(params, x)
    with pytest.raises(KeyError, match="triplet.*hw"):
        triplet.triplet(triplet.init(np.random.default_rng(0)), x, no_spatial=True)
    even = dict(params, **{"cw.conv.conv.weight": dev(np.ones((1, 2, 4, 4)))})
    with pytest.raises(ValueError, match="triplet.*odd size"):
        triplet.triplet(even, x, no_spatial=True)
    assert set(triplet.models_key_map().values()) == set(triplet.init(np.random.default_rng(0)))


# ---------------------------------------------------------------------------------------------
# Polarized Self-Attention


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(z, weight, bias, eps=1e-5):
    """LayerNorm over every axis but the first (NumPy)."""
    axes = tuple(range(1, z.ndim))
    mean, var = z.mean(axis=axes, keepdims=True), z.var(axis=axes, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * weight + bias


def _psa_reference(p, x, layout, form, qkv_bias):
    """PSA in NumPy with einsum, branch by branch as the module docstring's equations."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)

    def conv(prefix, inp):       # 1x1 conv on (B, C, N)
        out = np.einsum("oc,bcn->bon", p[f"{prefix}.weight"][:, :, 0, 0], inp)
        return out + p[f"{prefix}.bias"][None, :, None] if f"{prefix}.bias" in p else out

    def channel_gate(inp):
        z = np.einsum("bin,bn->bi", conv("conv_v_right", inp), _softmax(conv("conv_q_right", inp)[:, 0], axis=1))
        if form == "paper":
            z = _layer_norm(conv("conv_up.0", z[:, :, None])[:, :, :, None], p["conv_up.1.weight"], p["conv_up.1.bias"])
        elif layout == "parallel":
            z = conv("conv_up", z[:, :, None])
        else:
            hidden = _layer_norm(conv("conv_up.0", z[:, :, None])[:, :, :, None], p["conv_up.1.weight"],
                                 p["conv_up.1.bias"])
            z = conv("conv_up.3", np.maximum(hidden[:, :, :, 0], 0))
        return _sigmoid(z.reshape(b, c, 1))

    def spatial_gate(inp):
        g, t = conv("conv_q_left", inp).mean(axis=2), conv("conv_v_left", inp)            # (B, IC), (B, IC, N)
        if form == "paper":
            logits = np.einsum("bi,bin->bn", _softmax(g, axis=1), t)
        elif layout == "parallel":
            logits = _softmax(np.einsum("bi,bin->bn", g, t), axis=1)
        else:
            logits = np.einsum("bi,bin->bn", g, _softmax(t, axis=2))
        return _sigmoid(logits)[:, None, :]

    if layout == "parallel":
        out = flat * channel_gate(flat) + flat * spatial_gate(flat)
    else:
        refined = flat * channel_gate(flat)
        out = refined * spatial_gate(refined)
    return out.reshape(x.shape)


PSA_STRUCTURES = [dict(layout=lay, form=f, qkv_bias=bias) for lay in ("parallel", "sequential")
                  for f in ("official", "paper") for bias in (False, True)]


@pytest.mark.parametrize("structure", PSA_STRUCTURES, ids=lambda s: "-".join(map(str, s.values())))
def test_psa_matches_numpy_reference(structure):
    rng = np.random.default_rng(12)
    params = {k: dev(rng.standard_normal(v.shape)) for k, v in psa.init(rng, 16, **structure).items()}
    x = _normal((2, 16, 5, 6), seed=13)
    expected = _psa_reference(_host_params(params), x, **structure)
    np.testing.assert_allclose(host(psa.psa(params, dev(x), **structure)), expected, rtol=1e-11, atol=1e-11)


def test_psa_official_parallel_spatial_gate_range():
    """softmax over positions inside the sigmoid: the PSA_p gate lies in (0.5, 0.731), near 0.5 for many positions."""
    rng = np.random.default_rng(14)
    params = psa.init(rng, 8)
    _, small = psa.attention_maps(params, dev(_normal((2, 8, 2, 3), seed=15)))
    _, large = psa.attention_maps(params, dev(_normal((2, 8, 32, 32), seed=15)))
    small = host(small)
    assert 0.5 < small.min() and small.max() < _sigmoid(1.0)
    np.testing.assert_allclose(np.log(small / (1 - small)).sum(axis=(1, 2, 3)), 1.0, rtol=1e-12)  # softmax inside
    assert np.abs(host(large) - 0.5).max() < 0.05
    channel_gate, _ = psa.attention_maps(params, dev(_normal((2, 8, 2, 2))))
    assert channel_gate.shape == (2, 8, 1, 1)


def test_psa_forms_differ_and_gradcheck():
    rng = np.random.default_rng(16)
    x = _normal((1, 8, 3, 4), seed=17)
    outputs = {}
    for structure in PSA_STRUCTURES:
        params = {k: dev(rng.standard_normal(v.shape) * 0.5) for k, v in psa.init(rng, 8, **structure).items()}
        assert ag.gradcheck(lambda p, v, s=structure: psa.psa(p, v, **s), params, dev(x), mode="fast", n_directions=3)
        outputs[tuple(structure.values())] = host(psa.psa(params, dev(x), **structure))
    assert len({round(float(o.sum()), 6) for o in outputs.values()}) == len(outputs)


def test_psa_structure_errors():
    with pytest.raises(ValueError, match="psa.*channels=6.*sequential"):
        psa.init(np.random.default_rng(0), 6, layout="sequential")
    assert "conv_up.1.weight" in psa.init(np.random.default_rng(0), 6, layout="sequential", form="paper")
    with pytest.raises(ValueError, match="psa.*layout.*'serial'"):
        psa.init(np.random.default_rng(0), 8, layout="serial")
    params = psa.init(np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="psa.*form.*'code'"):
        psa.psa(params, dev(_normal((1, 8, 2, 2))), form="code")
    with pytest.raises(KeyError, match="psa.*conv_up.0.weight"):
        psa.psa(params, dev(_normal((1, 8, 2, 2))), form="paper")


# ---------------------------------------------------------------------------------------------
# External Attention


def _external_reference(p, x, bare=False, eps=1e-9):
    """External attention as the paper's equations, NumPy (BN in eval mode)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    if not bare:
        flat = np.einsum("oc,bcn->bon", p["conv1.weight"][:, :, 0, 0], flat) + p["conv1.bias"][:, None]
    features = flat
    attention = _softmax(np.einsum("sc,bcn->bsn", p["linear_0.weight"][:, :, 0], features), axis=2)
    attention = attention / (eps + attention.sum(axis=1, keepdims=True))
    out = np.einsum("cs,bsn->bcn", p["linear_1.weight"][:, :, 0], attention)
    if bare:
        return out.reshape(x.shape)
    out = np.einsum("oc,bcn->bon", p["conv2.0.weight"][:, :, 0, 0], out).reshape(x.shape)
    return np.maximum(_bn_eval(p, "conv2.1", out) + x, 0)


@pytest.mark.parametrize("bare", [False, True])
@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (1, 8, 1, 1), (3, 8, 1, 6)])
def test_external_matches_numpy_reference(shape, bare):
    rng = np.random.default_rng(18)
    params = _randomize_bn(external.init(rng, 8, k=6, bare=bare), rng)
    x = _normal(shape, seed=19)
    expected = _external_reference(_host_params(params), x, bare)
    np.testing.assert_allclose(host(external.external(params, dev(x), bare=bare)), expected, rtol=1e-12, atol=1e-12)
    attention = host(external.attention_maps(params, dev(x), bare=bare))
    assert attention.shape == (shape[0], 6, shape[2] * shape[3])
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-6)          # l1 over the units (up to eps)


def test_external_official_init_ties_the_memories():
    params = external.init(np.random.default_rng(0), 32)
    assert params["linear_0.weight"].shape == (64, 32, 1)                      # k = 64
    np.testing.assert_array_equal(host(params["linear_1.weight"]), host(params["linear_0.weight"]).transpose(1, 0, 2))
    assert abs(host(params["linear_0.weight"]).std() - np.sqrt(2 / 64)) < 0.02  # N(0, 2 / (k * 1))
    assert set(external.init(np.random.default_rng(0), 8, bare=True)) == {"linear_0.weight", "linear_1.weight"}


def test_external_normalisation_axes_matter_and_gradcheck():
    rng = np.random.default_rng(20)
    params = _randomize_bn(external.init(rng, 6, k=4), rng)
    x = _normal((2, 6, 3, 4), seed=21)
    p = _host_params(params)
    swapped = np.einsum("sc,bcn->bsn", p["linear_0.weight"][:, :, 0],
                        np.einsum("oc,bcn->bon", p["conv1.weight"][:, :, 0, 0], x.reshape(2, 6, 12))
                        + p["conv1.bias"][:, None])
    swapped = _softmax(swapped, axis=1)
    swapped = swapped / swapped.sum(axis=2, keepdims=True)
    assert np.abs(host(external.attention_maps(params, dev(x))) - swapped).max() > 1e-2
    _gradcheck_both_modes(external.external, params, x)


def test_external_errors():
    params = external.init(np.random.default_rng(0), 4, k=3)
    x = dev(_normal((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="external.*eps"):
        external.external(params, x, eps=-1.0)
    with pytest.raises(KeyError, match="external.*conv1"):
        external.external(params, x, bare=True)
    with pytest.raises(ValueError, match="external.*positive"):
        external.init(np.random.default_rng(0), 4, k=0)


# ---------------------------------------------------------------------------------------------
# CoTNet's CotLayer


def _aggregation_loops(values, weights, k):
    """The official aggregation_zeropad kernel's definition as loops: weight group c mod C/8, zero padding."""
    share, p = weights.shape[1], (k - 1) // 2
    padded = np.pad(values, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros_like(values)
    for n_, ch, h, w in np.ndindex(*values.shape):
        for kh, kw in np.ndindex(k, k):
            out[n_, ch, h, w] += weights[n_, ch % share, kh * k + kw, h, w] * padded[n_, ch, h + kh, w + kw]
    return out


@pytest.mark.parametrize("k, channels, share, size", [(3, 8, 2, (4, 5)), (5, 6, 3, (3, 2)), (1, 4, 1, (2, 2))])
def test_cot_local_aggregation_matches_kernel_loops(k, channels, share, size):
    values = _normal((2, channels) + size, seed=22)
    weights = _normal((2, share, k * k) + size, seed=23)
    got = host(cot.local_aggregation(dev(values), dev(weights), k))
    np.testing.assert_allclose(got, _aggregation_loops(values, weights, k), rtol=1e-12, atol=1e-12)
    if share > 1:   # reading the sharing as contiguous blocks (group c // (C / share)) is another map
        blocks = np.repeat(weights, channels // share, axis=1)          # channel c -> group c // (C / share)
        contiguous = _aggregation_loops(values, blocks, k)               # loops with C groups: group c for channel c
        assert np.abs(got - contiguous).max() > 1e-2


def _cot_reference(p, x):
    """CotLayer in eval mode, NumPy (scipy for the grouped k x k conv)."""
    b, c, h, w = x.shape
    k = p["key_embed.0.weight"].shape[-1]

    def conv1x1(prefix, z, bias=True):
        out = np.einsum("oi,bihw->bohw", p[f"{prefix}.weight"][:, :, 0, 0], z)
        return out + p[f"{prefix}.bias"][None, :, None, None] if bias else out

    per_group = c // 4
    static = np.zeros_like(x)
    for n_, o in np.ndindex(b, c):
        g = o // per_group
        static[n_, o] = sum(scipy.signal.correlate2d(x[n_, g * per_group + i], p["key_embed.0.weight"][o, i],
                                                     mode="same") for i in range(per_group))
    static = np.maximum(_bn_eval(p, "key_embed.1", static), 0)
    hidden = np.maximum(_bn_eval(p, "embed.1", conv1x1("embed.0", np.concatenate([x, static], axis=1), False)), 0)
    logits = conv1x1("embed.3", hidden).reshape(b, c // 8, k * k * h * w)
    logits = (logits - logits.mean(axis=2, keepdims=True)) / np.sqrt(logits.var(axis=2, keepdims=True) + 1e-5)
    logits = logits.reshape(b, -1, h, w) * p["embed.4.weight"][:, None, None] + p["embed.4.bias"][:, None, None]
    values = _bn_eval(p, "conv1x1.1", conv1x1("conv1x1.0", x, False))
    aggregated = _bn_eval(p, "bn", _aggregation_loops(values, logits.reshape(b, c // 8, k * k, h, w), k))
    dynamic = aggregated * _sigmoid(aggregated)
    pooled = (dynamic + static).mean(axis=(2, 3), keepdims=True)
    radix = conv1x1("se.3", np.maximum(_bn_eval(p, "se.1", conv1x1("se.0", pooled)), 0)).reshape(b, c, 2)
    radix = _softmax(radix, axis=2)
    return dynamic * radix[:, :, 0, None, None] + static * radix[:, :, 1, None, None]


@pytest.mark.parametrize("k, shape", [(3, (2, 16, 5, 6)), (5, (1, 8, 3, 4)), (3, (2, 8, 1, 1))])
def test_cot_matches_numpy_reference(k, shape):
    rng = np.random.default_rng(24)
    params = _randomize_bn(cot.init(rng, shape[1], kernel_size=k), rng)
    params["embed.4.weight"] = dev(rng.uniform(0.5, 1.5, params["embed.4.weight"].shape))
    x = _normal(shape, seed=25)
    expected = _cot_reference(_host_params(params), x)
    np.testing.assert_allclose(host(cot.cot(params, dev(x))), expected, rtol=1e-11, atol=1e-11)
    maps = cot.attention_maps(params, dev(x))
    np.testing.assert_allclose(host(maps["radix"]).sum(axis=2), 1.0, rtol=1e-14)
    assert maps["static"].shape == maps["dynamic"].shape == shape


def test_cot_widths_and_errors():
    params = cot.init(np.random.default_rng(0), 64)
    assert params["se.0.weight"].shape == (32, 64, 1, 1) and params["se.3.weight"].shape == (128, 32, 1, 1)
    assert cot.init(np.random.default_rng(0), 128)["se.0.weight"].shape[0] == 64       # max(2C // 4, 32)
    assert params["embed.3.weight"].shape == (9 * 64 // 8, 32, 1, 1)
    with pytest.raises(ValueError, match="cot.*12 channels.*multiple of 8"):
        cot.init(np.random.default_rng(0), 12)
    with pytest.raises(ValueError, match="cot.*odd"):
        cot.init(np.random.default_rng(0), 8, kernel_size=2)
    small = cot.init(np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="cot.*'se.1'.*more than one value"):
        cot.cot(small, dev(_normal((1, 8, 3, 3))), train=True)                       # B = 1 in training, as torch


def test_cot_gradcheck_both_modes():
    rng = np.random.default_rng(26)
    params = _randomize_bn(cot.init(rng, 8), rng)
    _gradcheck_both_modes(cot.cot, params, _normal((2, 8, 3, 4), seed=27))


# ---------------------------------------------------------------------------------------------
# GCT


def _gct_params(channels, seed):
    rng = np.random.default_rng(seed)
    return {k: dev(rng.standard_normal((1, channels, 1, 1))) for k in ("alpha", "gamma", "beta")}


def test_gct_hand_case():
    """l2, eps = 0, alpha = gamma = 1, beta = 0, x = [3, 4] on 1x1 maps: n = 1 / sqrt(12.5)."""
    ones = np.ones((1, 2, 1, 1))
    params = {"alpha": dev(ones), "gamma": dev(ones), "beta": dev(0 * ones)}
    x = np.array([3.0, 4.0]).reshape(1, 2, 1, 1)
    expected = [3 * (1 + np.tanh(3 / np.sqrt(12.5))), 4 * (1 + np.tanh(4 / np.sqrt(12.5)))]
    np.testing.assert_allclose(host(gct.gct(params, dev(x), epsilon=0.0)).ravel(), expected, rtol=1e-15)


def _gct_reference(p, x, mode, after_relu, eps):
    """The official forward with the paper's notation, NumPy, channel by channel."""
    alpha, gamma, beta = (p[k][0, :, 0, 0] for k in ("alpha", "gamma", "beta"))
    out = np.empty_like(x)
    for n_ in range(x.shape[0]):
        if mode == "l2":
            s = alpha * np.sqrt((x[n_] ** 2).sum(axis=(1, 2)) + eps)
            s_hat = s * gamma / np.sqrt((s ** 2).mean() + eps)
        else:
            s = alpha * (x[n_] if after_relu else np.abs(x[n_])).sum(axis=(1, 2))
            s_hat = s * gamma / (np.abs(s).mean() + eps)
        out[n_] = x[n_] * (1 + np.tanh(s_hat + beta))[:, None, None]
    return out


@pytest.mark.parametrize("mode, after_relu", [("l2", False), ("l1", False), ("l1", True)])
@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (1, 1, 1, 1), (3, 4, 1, 3)])
def test_gct_matches_reference(shape, mode, after_relu):
    params = _gct_params(shape[1], seed=28)
    x = _normal(shape, seed=29)
    if after_relu:
        x = np.maximum(x, 0)
    for eps in (1e-5, 0.3):
        expected = _gct_reference(_host_params(params), x, mode, after_relu, eps)
        got = gct.gct(params, dev(x), mode=mode, after_relu=after_relu, epsilon=eps)
        np.testing.assert_allclose(host(got), expected, rtol=1e-12, atol=1e-12)


def test_gct_identity_at_init_and_mean_over_channels():
    x = _normal((2, 8, 3, 3), seed=30)
    np.testing.assert_array_equal(host(gct.gct(gct.init(np.random.default_rng(0), 8), dev(x))), x)
    params = _gct_params(8, seed=31)
    p = _host_params(params)
    s = p["alpha"] * np.sqrt((x ** 2).sum(axis=(2, 3), keepdims=True))                    # (N, C, 1, 1)
    summed = x * (1 + np.tanh(s * p["gamma"] / np.sqrt((s ** 2).sum(axis=1, keepdims=True)) + p["beta"]))
    assert np.abs(host(gct.gct(params, dev(x), epsilon=0.0)) - summed).max() > 1e-2   # mean, not sum, over C


def test_gct_gradcheck_and_errors():
    params, x = _gct_params(5, seed=32), dev(_normal((2, 5, 2, 3), seed=33))
    for mode in ("l2", "l1"):
        assert ag.gradcheck(lambda p, v, m=mode: gct.gct(p, v, mode=m), params, x, mode="full")
    with pytest.raises(ValueError, match="gct.*mode.*'l3'"):
        gct.gct(params, x, mode="l3")
    with pytest.raises(ValueError, match="gct.*epsilon"):
        gct.gct(params, x, epsilon=-1)
    with pytest.raises(ValueError, match="gct.*'gamma'.*shape"):
        gct.gct(dict(params, gamma=dev(np.ones((1, 4, 1, 1)))), x)


# ---------------------------------------------------------------------------------------------
# SRM


def test_srm_hand_case():
    """C = 1, map [1, 3], cfc = [0.5, -1], BN identity: z = 1 - sqrt(2 + 1e-5), g = sigmoid(z / sqrt(1 + 1e-5))."""
    params = srm.init(np.random.default_rng(0), 1)
    params["cfc"] = dev(np.array([[0.5, -1.0]]))
    x = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    gate = _sigmoid((1 - np.sqrt(2 + 1e-5)) / np.sqrt(1 + 1e-5))
    np.testing.assert_allclose(host(srm.srm(params, dev(x))).ravel(), [gate, 3 * gate], rtol=1e-14)


def _srm_reference(p, x, std_mode="var_eps"):
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    var = flat.var(axis=2, ddof=1)
    std = np.sqrt(var + 1e-5) if std_mode == "var_eps" else np.sqrt(var)
    z = p["cfc"][:, 0] * flat.mean(axis=2) + p["cfc"][:, 1] * std
    return x * _sigmoid(_bn_eval(p, "bn", z[:, :, None, None]))


@pytest.mark.parametrize("std_mode", ["var_eps", "std"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (1, 3, 1, 2), (3, 2, 6, 1)])
def test_srm_matches_reference(shape, std_mode):
    rng = np.random.default_rng(34)
    params = _randomize_bn(srm.init(rng, shape[1], official_init=False), rng)
    x = _normal(shape, seed=35)
    expected = _srm_reference(_host_params(params), x, std_mode)
    np.testing.assert_allclose(host(srm.srm(params, dev(x), std_mode=std_mode)), expected, rtol=1e-12, atol=1e-12)


def test_srm_variance_details():
    rng = np.random.default_rng(36)
    params = _randomize_bn(srm.init(rng, 4, official_init=False), rng)
    assert np.all(host(srm.init(rng, 4)["cfc"]) == 0)                                   # official init
    x = _normal((2, 4, 5, 6), seed=37)
    p = _host_params(params)
    flat = x.reshape(2, 4, -1)
    biased = x * _sigmoid(_bn_eval(p, "bn", (p["cfc"][:, 0] * flat.mean(2) + p["cfc"][:, 1]
                                             * np.sqrt(flat.var(2) + 1e-5))[:, :, None, None]))
    assert np.abs(host(srm.srm(params, dev(x))) - biased).max() > 1e-4                 # unbiased, not biased
    assert np.isnan(host(srm.srm(params, dev(_normal((2, 4, 1, 1)))))).all()           # one value per map
    constant = dev(np.ones((2, 4, 3, 3)))                                               # var = 0: only eps keeps
    grads = ag.grad(lambda v: ag.sum(srm.srm(params, v)))(constant)                     # sqrt differentiable
    assert np.all(np.isfinite(host(grads)))
    with np.errstate(divide="ignore", invalid="ignore"):                               # the pre-fix std: 0 / 0
        prefix = host(ag.grad(lambda v: ag.sum(srm.srm(params, v, std_mode="std")))(constant))
    assert not np.all(np.isfinite(prefix))


def test_srm_gradcheck_and_errors():
    rng = np.random.default_rng(38)
    params = _randomize_bn(srm.init(rng, 3, official_init=False), rng)
    _gradcheck_both_modes(lambda p, v, train: srm.srm(p, v, train=train), params, _normal((2, 3, 2, 3), seed=39))
    with pytest.raises(ValueError, match="srm.*std_mode.*'biased'"):
        srm.srm(params, dev(_normal((2, 3, 2, 2))), std_mode="biased")
    with pytest.raises(ValueError, match="srm.*'bn'.*more than one value"):
        srm.srm(params, dev(_normal((1, 3, 2, 2))), train=True)
    with pytest.raises(ValueError, match="srm.*'cfc' must have shape \\(3, 2\\)"):
        srm.srm(dict(params, cfc=dev(np.zeros((4, 2)))), dev(_normal((2, 3, 2, 2))))


# ---------------------------------------------------------------------------------------------
# Split-Attention (ResNeSt)


def _grouped_conv(x, weight, bias, groups, padding):
    """Grouped 2-D conv by scipy correlate, stride 1."""
    n, c_in, h, w = x.shape
    c_out, per_in, kh, kw = weight.shape
    per_out = c_out // groups
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, c_out, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1))
    for n_, o in np.ndindex(n, c_out):
        g = o // per_out
        out[n_, o] = sum(scipy.signal.correlate2d(padded[n_, g * per_in + i], weight[o, i], mode="valid")
                         for i in range(per_in))
    return out + (0 if bias is None else bias[None, :, None, None])


def _split_reference(p, x, radix, cardinality, cardinal_major=True):
    """SplAtConv2d in eval mode with explicit index arithmetic for the logits (3x3, padding 1)."""
    u = np.maximum(_bn_eval(p, "bn0", _grouped_conv(x, p["conv.weight"], None, cardinality * radix, 1)), 0)
    b, rc = u.shape[:2]
    c = rc // radix
    pooled = sum(u[:, r * c:(r + 1) * c] for r in range(radix)).mean(axis=(2, 3))[:, :, None, None]
    hidden = np.maximum(_bn_eval(p, "bn1", _grouped_conv(pooled, p["fc1.weight"], p["fc1.bias"], cardinality, 0)), 0)
    logits = _grouped_conv(hidden, p["fc2.weight"], p["fc2.bias"], cardinality, 0)[:, :, 0, 0]
    per = c // cardinality
    out = np.zeros((b, c) + u.shape[2:])
    for ch in range(c):
        k, j = divmod(ch, per)
        index = [k * radix * per + r * per + j if cardinal_major else r * c + ch for r in range(radix)]
        weights = _softmax(logits[:, index], axis=1) if radix > 1 else _sigmoid(logits[:, index])
        for r in range(radix):
            out[:, ch] += weights[:, r, None, None] * u[:, r * c + ch]
    return out


@pytest.mark.parametrize("radix, cardinality", [(2, 2), (1, 2), (4, 1), (3, 2)])
def test_split_attention_matches_index_reference(radix, cardinality):
    rng = np.random.default_rng(40)
    params = _randomize_bn(split_attention.init(rng, 12, 12, radix=radix, cardinality=cardinality), rng)
    x = _normal((2, 12, 4, 5), seed=41)
    structure = {"radix": radix, "cardinality": cardinality}
    expected = _split_reference(_host_params(params), x, radix, cardinality)
    np.testing.assert_allclose(host(split_attention.split_attention(params, dev(x), **structure)), expected,
                               rtol=1e-12, atol=1e-12)
    weights = host(split_attention.attention_maps(params, dev(x), **structure))
    assert weights.shape == (2, radix, 12)
    if radix > 1:
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-14)
    if radix > 1 and cardinality > 1:   # reading fc2 radix-major is another map
        other = _split_reference(_host_params(params), x, radix, cardinality, cardinal_major=False)
        assert np.abs(other - expected).max() > 1e-3


def test_split_attention_widths_and_errors():
    assert split_attention.init(np.random.default_rng(0), 100, 64)["fc1.weight"].shape == (50, 64, 1, 1)
    assert split_attention.init(np.random.default_rng(0), 16, 16)["fc1.weight"].shape == (32, 16, 1, 1)
    params = split_attention.init(np.random.default_rng(0), 16, 16)
    assert params["conv.weight"].shape == (32, 8, 3, 3) and "conv.bias" not in params       # ResNeSt call: no bias
    with pytest.raises(ValueError, match="split-attention.*in_channels=10.*cardinality"):
        split_attention.init(np.random.default_rng(0), 10, 8, radix=2, cardinality=2)
    with pytest.raises(ValueError, match="split-attention.*channels=6.*cardinality=4"):
        split_attention.init(np.random.default_rng(0), 16, 6, radix=1, cardinality=4)
    x = dev(_normal((2, 16, 3, 3)))
    with pytest.raises(ValueError, match="split-attention"):
        split_attention.split_attention(params, x, radix=4)                  # parameters made for radix 2
    with pytest.raises(ValueError, match="split-attention.*'bn1'.*more than one value"):
        split_attention.split_attention(params, x[:1], train=True)


def test_split_attention_gradcheck_both_modes():
    rng = np.random.default_rng(42)
    params = _randomize_bn(split_attention.init(rng, 8, 8, radix=2, cardinality=2), rng)
    _gradcheck_both_modes(lambda p, v, train: split_attention.split_attention(p, v, train=train, cardinality=2),
                          params, _normal((2, 8, 3, 4), seed=43))


# ---------------------------------------------------------------------------------------------
# Shuffle Attention (SA-Net)


def _shuffle_reference(p, x, groups):
    """sa_layer with explicit channel bookkeeping: which input channel lands where, and which gate it gets."""
    b, c, h, w = x.shape
    half = c // (2 * groups)
    gated = np.empty_like(x)                                   # before the shuffle, in the grouped order
    for g in range(groups):
        for i in range(half):
            src = x[:, g * 2 * half + i]                                           # x0: channel half
            gate = _sigmoid(p["cweight"][0, i, 0, 0] * src.mean(axis=(1, 2))[:, None, None] + p["cbias"][0, i, 0, 0])
            gated[:, g * 2 * half + i] = src * gate
            src = x[:, g * 2 * half + half + i]                                    # x1: spatial half, instance norm
            normed = (src - src.mean(axis=(1, 2), keepdims=True)) / np.sqrt(src.var(axis=(1, 2), keepdims=True) + 1e-5)
            logits = p["sweight"][0, i, 0, 0] * (normed * p["gn.weight"][i] + p["gn.bias"][i]) + p["sbias"][0, i, 0, 0]
            gated[:, g * 2 * half + half + i] = src * _sigmoid(logits)
    out = np.empty_like(x)
    for m in range(c // 2):                                     # channel_shuffle(2): out 2m + i <- in i·C/2 + m
        for i in range(2):
            out[:, 2 * m + i] = gated[:, i * c // 2 + m]
    return out


@pytest.mark.parametrize("channels, groups, size", [(16, 2, (5, 6)), (12, 3, (1, 1)), (8, 1, (3, 1))])
def test_shuffle_attention_matches_reference(channels, groups, size):
    rng = np.random.default_rng(44)
    params = shuffle_attention.init(rng, channels, groups=groups, official_init=False)
    params["gn.weight"], params["gn.bias"] = dev(rng.uniform(0.5, 1.5, channels // (2 * groups))), dev(
        rng.standard_normal(channels // (2 * groups)))
    x = _normal((2, channels) + size, seed=45)
    expected = _shuffle_reference(_host_params(params), x, groups)
    np.testing.assert_allclose(host(shuffle_attention.shuffle_attention(params, dev(x), groups=groups)), expected,
                               rtol=1e-12, atol=1e-12)


def test_shuffle_attention_init_shuffle_and_errors():
    params = shuffle_attention.init(np.random.default_rng(0), 256)                       # G = 64 -> Cg = 2
    assert params["cweight"].shape == (1, 2, 1, 1) and params["gn.weight"].shape == (2,)
    x = _normal((1, 256, 2, 3), seed=46)
    half = _sigmoid(1.0)                                                                 # official init: both gates
    np.testing.assert_allclose(host(shuffle_attention.shuffle_attention(params, dev(x))),
                               host(shuffle_attention.channel_shuffle(dev(x), 2)) * half, rtol=1e-15)
    order = host(shuffle_attention.channel_shuffle(dev(np.arange(8.0).reshape(1, 8, 1, 1)), 2)).ravel()
    np.testing.assert_array_equal(order, [0, 4, 1, 5, 2, 6, 3, 7])
    with pytest.raises(ValueError, match="shuffle-attention.*30 channels.*2·groups = 4"):
        shuffle_attention.init(np.random.default_rng(0), 30, groups=2)
    small = shuffle_attention.init(np.random.default_rng(0), 8, groups=2)
    with pytest.raises(ValueError, match="shuffle-attention.*8 channels"):
        shuffle_attention.shuffle_attention(small, dev(_normal((1, 12, 2, 2))), groups=2)


def test_shuffle_attention_gradcheck():
    rng = np.random.default_rng(47)
    params = shuffle_attention.init(rng, 8, groups=2, official_init=False)
    assert ag.gradcheck(lambda p, v: shuffle_attention.shuffle_attention(p, v, groups=2), params,
                        dev(_normal((2, 8, 3, 2), seed=48)), mode="full")


# ---------------------------------------------------------------------------------------------
# every entry of the issue: an empty map is rejected; min_spatial = 1 is accepted


ENTRIES = ("coord", "simam", "sge", "triplet", "psa-p", "psa-s", "external", "cot", "gct", "srm", "split-attention",
           "shuffle-attention")


@pytest.mark.parametrize("name", ENTRIES)
def test_empty_maps_are_rejected_and_1x1_accepted(name):
    mech = npattn.get(name)
    assert mech.min_spatial == 1
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(0))
    for empty in (x[:, :, :0], x[:, :, :, :0]):
        with pytest.raises(ValueError, match=f"{name.split('-')[0]}.*spatial size"):
            mech.apply(params, empty)
    assert mech.apply(params, x[:, :, :1, :1]).shape[2:] == (1, 1)


def test_shuffle_attention_maps_are_the_gates_before_the_shuffle():
    rng = np.random.default_rng(49)
    params = shuffle_attention.init(rng, 12, groups=3, official_init=False)
    x = dev(_normal((2, 12, 4, 3), seed=50))
    gates = shuffle_attention.attention_maps(params, x, groups=3)
    assert gates.shape == (2, 12, 4, 3)
    expected = host(shuffle_attention.channel_shuffle(ag.Tensor(x) * gates, 2))
    np.testing.assert_allclose(host(shuffle_attention.shuffle_attention(params, x, groups=3)), expected, rtol=1e-15)
    channel_half = host(gates).reshape(2, 3, 2, 2, 12)[:, :, 0]          # the channel gate: constant over the map
    np.testing.assert_allclose(channel_half, channel_half[..., :1].repeat(12, axis=-1), rtol=1e-15)
