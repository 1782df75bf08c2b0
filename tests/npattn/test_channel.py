"""Channel-attention mechanisms: checks the generic registry matrix cannot make.

Every expected value here comes from an independent host computation (explicit loops / NumPy over the
definitions in the papers and official code), never from npattn itself.
"""
import math

import numpy as np
import pytest

import autograd as ag
import npattn
from npattn.channel import eca, gather_excite, residual_attention, sk, spa
from tests.conftest import dev, host


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _x(rng, shape):
    return dev(rng.standard_normal(shape))


def _randomize_bn(params, rng):
    """Random BN affine parameters and running statistics (default ones are the identity, bias 0).

    A zero BN bias puts ReLU exactly on its kink wherever a conv window sees only zeros (padding plus
    ReLU-zeroed inputs), which finite differences cannot handle; random values also test the statistics.
    """
    out = dict(params)
    for key in params:
        if key.endswith(".running_mean"):
            prefix = key[: -len(".running_mean")]
            size = params[key].shape[0]
            out[f"{prefix}.weight"] = dev(rng.uniform(0.5, 1.5, size))
            out[f"{prefix}.bias"] = dev(rng.uniform(-0.5, 0.5, size))
            out[f"{prefix}.running_mean"] = dev(rng.uniform(-0.5, 0.5, size))
            out[f"{prefix}.running_var"] = dev(rng.uniform(0.5, 2.0, size))
    return out


def _adaptive_bins(size, out):
    """PyTorch's adaptive-pool bins, written out: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


# ---------------------------------------------------------------------------------------------
# caller arrays (the matrix's version of this check cannot differentiate int BN counters, see report)

CHANNEL = ["eca", "ge-theta", "ge-theta-minus", "ge-theta-plus", "ran", "sk", "spa"]


@pytest.mark.parametrize("name", CHANNEL)
def test_caller_arrays_untouched_float_params(name):
    mech = npattn.get(name)
    params = mech.default_params()
    inputs = mech.example_input(np.random.default_rng(7))
    before_p = {k: host(v).copy() for k, v in params.items()}
    before_x = [host(x).copy() for x in inputs]
    floats = {k: v for k, v in params.items() if np.dtype(v.dtype).kind == "f"}
    for train in (False, True):
        with npattn.track_running_stats():
            ag.grad(lambda p, *xs: ag.sum(mech.apply({**params, **p}, *xs, train=train)),
                    argnums=tuple(range(len(inputs) + 1)))(floats, *inputs)
    for k in params:
        assert np.array_equal(host(params[k]), before_p[k]), k
    for x, b in zip(inputs, before_x):
        assert np.array_equal(host(x), b)


# ---------------------------------------------------------------------------------------------
# ECA


def test_eca_kernel_size_table():
    # the spec's verified table for gamma = 2, b = 1 (code form t = int(|(log2 C + 1) / 2|), odd upwards)
    table = {4: 1, 16: 3, 64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}
    for channels, k in table.items():
        assert eca.kernel_size(channels) == k, channels
        assert npattn.get("eca").init(np.random.default_rng(0), channels)["conv.weight"].shape == (1, 1, k)


def test_eca_kernel_size_is_nearest_odd_away_from_ties():
    for channels in range(2, 5000):
        t = (math.log2(channels) + 1) / 2
        if abs(t - round(t)) < 1e-12 and round(t) % 2 == 0:
            assert eca.kernel_size(channels) == round(t) + 1      # the paper's tie, code takes t + 1
            continue
        nearest_odd = min(range(1, 20, 2), key=lambda k: abs(k - t))
        assert eca.kernel_size(channels) == nearest_odd, channels


def test_eca_explicit_k_and_even_k_rejected():
    assert eca.init(np.random.default_rng(0), 64, k_size=7)["conv.weight"].shape == (1, 1, 7)
    with pytest.raises(ValueError, match="eca"):
        eca.init(np.random.default_rng(0), 64, k_size=4)


@pytest.mark.parametrize("channels,k_size", [(16, None), (12, 5), (9, 1), (5, 7)])
def test_eca_equals_banded_channel_matrix(channels, k_size):
    rng = np.random.default_rng(3)
    params = eca.init(rng, channels, k_size=k_size)
    x = rng.standard_normal((3, channels, 4, 5))
    weight = host(params["conv.weight"])[0, 0]
    k = weight.size
    band = np.zeros((channels, channels))
    for c in range(channels):
        for j in range(k):
            src = c + j - (k - 1) // 2
            if 0 <= src < channels:
                band[c, src] = weight[j]
    gate = _sigmoid(x.mean(axis=(2, 3)) @ band.T)
    np.testing.assert_allclose(host(eca.eca(params, dev(x))), x * gate[:, :, None, None], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(host(eca.channel_weights(params, dev(x))), gate, rtol=1e-13, atol=1e-14)


def test_eca_any_channel_count_with_the_same_kernel():
    params = npattn.get("eca").default_params()
    x = np.random.default_rng(0).standard_normal((1, 7, 3, 3))
    assert eca.eca(params, dev(x)).shape == (1, 7, 3, 3)


# ---------------------------------------------------------------------------------------------
# SPA


def _pyramid_reference(x):
    n, c, h, w = x.shape
    parts = []
    for s in (1, 2, 4):
        pooled = np.empty((n, c, s, s))
        for i, (h0, h1) in enumerate(_adaptive_bins(h, s)):
            for j, (w0, w1) in enumerate(_adaptive_bins(w, s)):
                pooled[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        parts.append(pooled.reshape(n, c * s * s))    # channel-major, as .view(b, s*s*c)
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 6, 7), (1, 2, 3, 5), (1, 2, 1, 2), (2, 4, 9, 13)])
def test_spa_descriptor_is_block_means_channel_major(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    expected = _pyramid_reference(x)
    np.testing.assert_allclose(host(spa.pyramid_descriptor(dev(x))), expected, rtol=1e-13, atol=1e-14)
    # spot-check the layout by hand: entry C + 4c + 2i + j is the (i, j) cell of APool_2 for channel c
    c = shape[1]
    (h0, h1), (w0, w1) = _adaptive_bins(shape[2], 2)[1], _adaptive_bins(shape[3], 2)[0]
    assert np.isclose(expected[0, c + 4 * (c - 1) + 2], x[0, c - 1, h0:h1, w0:w1].mean())


def test_spa_output_matches_reference_mlp():
    rng = np.random.default_rng(2)
    params = spa.init(rng, 32, reduction=4)
    x = rng.standard_normal((2, 32, 6, 7))
    w1, w2 = host(params["fc1.weight"]), host(params["fc2.weight"])
    gate = _sigmoid(np.maximum(_pyramid_reference(x) @ w1.T, 0) @ w2.T)
    np.testing.assert_allclose(host(spa.spa(params, dev(x))), x * gate[:, :, None, None], rtol=1e-13, atol=1e-14)


def test_spa_psppse_gate_from_the_block_input():
    rng = np.random.default_rng(4)
    params = spa.init(rng, 24, reduction=4, in_channels=16)
    assert params["fc1.weight"].shape == (4, 21 * 16) and params["fc2.weight"].shape == (24, 4)
    source = rng.standard_normal((2, 16, 10, 9))       # block input (before a stride-2 block)
    x = rng.standard_normal((2, 24, 5, 5))             # block output, the tensor being scaled
    w1, w2 = host(params["fc1.weight"]), host(params["fc2.weight"])
    gate = _sigmoid(np.maximum(_pyramid_reference(source) @ w1.T, 0) @ w2.T)
    out = spa.spa(params, dev(x), dev(source))
    np.testing.assert_allclose(host(out), x * gate[:, :, None, None], rtol=1e-13, atol=1e-14)
    assert ag.gradcheck(lambda p, a, b: spa.spa(p, a, b), params, dev(x), dev(source), mode="fast")
    with pytest.raises(ValueError, match="spa.*source"):
        spa.spa(params, dev(x))
    with pytest.raises(ValueError, match="spa.*source"):
        spa.spa(params, dev(x), dev(source[:, :15]))


def test_spa_parameter_shapes_against_the_inputs():
    rng = np.random.default_rng(4)
    params = spa.init(rng, 24, reduction=4, in_channels=16)
    source, x = _x(rng, (2, 16, 6, 6)), _x(rng, (2, 24, 3, 3))
    with pytest.raises(ValueError, match=r"spa: parameter 'fc1\.weight' must have shape \(C_in // r, 21 \* C_in\).*"
                                         r"got \(4, 337\)"):
        spa.spa({**params, "fc1.weight": dev(rng.standard_normal((4, 337)))}, x, source)
    with pytest.raises(ValueError, match=r"spa: without `source`.*16 channels.*PSPPSE form"):
        spa.spa(params, x)
    with pytest.raises(ValueError, match=r"spa: x must have 24 channels"):
        spa.spa(params, x[:, :20], source)
    with pytest.raises(ValueError, match=r"spa: parameter 'fc2\.weight' must have shape \(24, 4\), got \(24, 5\)"):
        spa.spa({**params, "fc2.weight": dev(rng.standard_normal((24, 5)))}, x, source)


# ---------------------------------------------------------------------------------------------
# Gather-Excite


def _average_gather_reference(x, extent):
    """avg_pool2d(2e-1, stride e, padding e-1, count_include_pad=False) by explicit windows."""
    n, c, h, w = x.shape
    oh, ow = -(-h // extent), -(-w // extent)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = max(i * extent - (extent - 1), 0), min(i * extent + extent, h)
        for j in range(ow):
            c0, c1 = max(j * extent - (extent - 1), 0), min(j * extent + extent, w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def _nearest_reference(g, size):
    h, w = size
    rows = [min(math.floor(i * g.shape[2] / h), g.shape[2] - 1) for i in range(h)]
    cols = [min(math.floor(j * g.shape[3] / w), g.shape[3] - 1) for j in range(w)]
    return g[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("extent", [2, 4, 8])
@pytest.mark.parametrize("size", [(9, 7), (8, 8), (3, 17), (16, 5)])
def test_ge_theta_minus_is_avg_pool_then_nearest(extent, size):
    x = np.random.default_rng(5).standard_normal((2, 3) + size)
    gathered = _average_gather_reference(x, extent)
    expected = x * _sigmoid(_nearest_reference(gathered, size))
    params = gather_excite.init(np.random.default_rng(0), 3, variant="theta_minus", extent=extent)
    assert params == {}
    out = gather_excite.gather_excite(params, dev(x), variant="theta_minus", extent=extent)
    np.testing.assert_allclose(host(out), expected, rtol=1e-13, atol=1e-14)


def test_ge_theta_minus_global_is_sigmoid_of_the_mean():
    x = np.random.default_rng(6).standard_normal((2, 5, 4, 6))
    out = gather_excite.gather_excite({}, dev(x), variant="theta_minus", extent=0)
    np.testing.assert_allclose(host(out), x * _sigmoid(x.mean(axis=(2, 3), keepdims=True)), rtol=1e-13)


@pytest.mark.parametrize("extent,stages,cells", [(2, 1, (5, 4)), (4, 2, (3, 2)), (8, 3, (2, 1))])
def test_ge_theta_stages_and_gathered_size(extent, stages, cells):
    rng = np.random.default_rng(7)
    params = gather_excite.init(rng, 8, variant="theta", extent=extent)
    assert sorted(k for k in params if k.endswith("weight") and "conv" in k) == [
        f"gather.conv{i}.weight" for i in range(1, stages + 1)]
    x = _x(rng, (2, 8, 9, 7))
    assert gather_excite.gather(params, x, extent=extent).shape == (2, 8) + cells
    assert gather_excite.gather_excite(params, x, extent=extent).shape == (2, 8, 9, 7)


def test_ge_theta_first_stage_by_hand():
    """One e = 2 stage: depth-wise 3x3, stride 2, padding 1, no bias, then eval BN, sigmoid, nearest up."""
    rng = np.random.default_rng(8)
    params = gather_excite.init(rng, 2, variant="theta", extent=2)
    params["gather.bn1.running_mean"] = dev(rng.standard_normal(2))
    params["gather.bn1.running_var"] = dev(rng.uniform(0.5, 2.0, 2))
    x = rng.standard_normal((1, 2, 5, 6))
    weight = host(params["gather.conv1.weight"])
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.empty((1, 2, 3, 3))
    for c in range(2):
        for i in range(3):
            for j in range(3):
                conv[0, c, i, j] = (padded[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * weight[c, 0]).sum()
    mean, var = host(params["gather.bn1.running_mean"]), host(params["gather.bn1.running_var"])
    bn = (conv - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    expected = x * _nearest_reference(_sigmoid(bn), (5, 6))
    np.testing.assert_allclose(host(gather_excite.gather_excite(params, dev(x), extent=2)), expected, rtol=1e-12)


def test_ge_theta_global_needs_feat_size_and_exact_input():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="ge-theta.*feat_size"):
        gather_excite.init(rng, 4, variant="theta", extent=0)
    params = gather_excite.init(rng, 4, variant="theta", extent=0, feat_size=(5, 6))
    assert params["gather.conv1.weight"].shape == (4, 1, 5, 6)
    assert gather_excite.gather(params, _x(rng, (2, 4, 5, 6)), extent=0).shape == (2, 4, 1, 1)
    with pytest.raises(ValueError, match="ge-theta: global extent.*x must be \\(5, 6\\)"):
        gather_excite.gather_excite(params, _x(rng, (2, 4, 6, 6)), extent=0)


def test_ge_stage_count_comes_from_the_extent_never_from_the_keys():
    """Parameters of another extent are a KeyError naming the missing (or unused) stage, not another gather."""
    rng = np.random.default_rng(9)
    params = gather_excite.init(rng, 4, variant="theta", extent=4)          # two stages
    x = _x(rng, (2, 4, 8, 8))
    with pytest.raises(KeyError, match="ge-theta: parameter 'gather.conv3.weight' is missing"):
        gather_excite.gather_excite(params, x, extent=8)
    with pytest.raises(KeyError, match="ge-theta: params has 6 key.*'gather.conv2.weight'"):
        gather_excite.gather_excite(params, x, extent=2)
    plus = gather_excite.init(rng, 4, variant="theta_plus", extent=4, reduction=2)
    with pytest.raises(KeyError, match="ge-theta: params has 4 key.*'mlp_down.weight'"):
        gather_excite.gather_excite(plus, x, extent=4)                     # variant theta: the MLP is unused
    with pytest.raises(KeyError, match="ge-theta-plus: parameter 'mlp_down.weight' is missing"):
        gather_excite.gather_excite(params, x, variant="theta_plus", extent=4)
    with pytest.raises(ValueError, match="ge: variant must be one of"):
        gather_excite.gather_excite(params, x, variant="theta-plus", extent=4)
    with pytest.raises(KeyError, match="ge-theta-minus: params has 12 key"):
        gather_excite.gather_excite(params, x, variant="theta_minus", extent=4)
    # a 3x3 stage kernel is checked: a global-extent kernel of another size is a shape error
    wrong = {**params, "gather.conv2.weight": params["gather.conv2.weight"][:, :, :2]}
    with pytest.raises(ValueError, match="ge-theta: parameter 'gather.conv2.weight' must have shape \\(4, 1, 3, 3\\)"):
        gather_excite.gather_excite(wrong, x, extent=4)


@pytest.mark.parametrize("variant", ["theta", "theta_plus"])
def test_ge_global_gather_trained_on_a_batch_of_one_names_the_layer(variant):
    """One value per channel reaches BatchNorm 'gather.bn1' (a whole-map kernel, N = 1): torch refuses to train it."""
    rng = np.random.default_rng(12)
    params = gather_excite.init(rng, 8, variant=variant, extent=0, feat_size=5, reduction=4)
    x = _x(rng, (1, 8, 5, 5))
    name = gather_excite.NAMES[variant]
    with pytest.raises(ValueError, match=f"^{name}: BatchNorm 'gather.bn1' in training needs more than one value "
                                         "per channel, got input shape \\(1, 8, 1, 1\\)"):
        gather_excite.gather_excite(params, x, variant=variant, extent=0, train=True)
    assert gather_excite.gather_excite(params, x, variant=variant, extent=0).shape == (1, 8, 5, 5)   # eval is fine
    assert gather_excite.gather_excite(params, _x(rng, (2, 8, 5, 5)), variant=variant, extent=0,
                                       train=True).shape == (2, 8, 5, 5)


def test_ge_theta_plus_gather_relu_option():
    rng = np.random.default_rng(10)
    params = gather_excite.init(rng, 16, variant="theta_plus", extent=2, reduction=4)
    assert params["mlp_down.weight"].shape == (4, 16, 1, 1) and params["mlp_up.bias"].shape == (16,)
    x = _x(rng, (2, 16, 6, 6))
    official = host(gather_excite.gather_excite(params, x, variant="theta_plus", extent=2))
    timm_form = host(gather_excite.gather_excite(params, x, variant="theta_plus", extent=2, gather_relu=False))
    assert not np.allclose(official, timm_form)
    # timm's form by hand from the theta gather: MLP straight on the BN output
    theta = {k: v for k, v in params.items() if k.startswith("gather.")}
    g = host(gather_excite.gather(theta, x, extent=2))
    down, up = host(params["mlp_down.weight"])[:, :, 0, 0], host(params["mlp_up.weight"])[:, :, 0, 0]
    hidden = np.maximum(np.einsum("dc,nchw->ndhw", down, g) + host(params["mlp_down.bias"])[None, :, None, None], 0)
    logits = np.einsum("cd,ndhw->nchw", up, hidden) + host(params["mlp_up.bias"])[None, :, None, None]
    np.testing.assert_allclose(timm_form, host(x) * _nearest_reference(_sigmoid(logits), (6, 6)), rtol=1e-12)


@pytest.mark.parametrize("variant", ["theta", "theta_plus"])
@pytest.mark.parametrize("extent", [0, 2, 8])
def test_ge_gradcheck_all_extents(variant, extent):
    rng = np.random.default_rng(11)
    params = _randomize_bn(gather_excite.init(rng, 8, variant=variant, extent=extent, feat_size=(6, 5), reduction=4),
                           rng)
    x = _x(rng, (3, 8, 6, 5))
    for train in (False, True):
        assert ag.gradcheck(lambda p, v: gather_excite.gather_excite(p, v, variant=variant, extent=extent,
                                                                     train=train), params, x,
                            mode="fast", n_directions=3)


def test_ge_bad_extent():
    with pytest.raises(ValueError, match="ge.*extent"):
        gather_excite.init(np.random.default_rng(0), 4, variant="theta", extent=3)
    with pytest.raises(ValueError, match="ge.*extent"):
        gather_excite.gather_excite({}, _x(np.random.default_rng(0), (1, 2, 4, 4)), extent=16)


# ---------------------------------------------------------------------------------------------
# SK


def test_sk_selection_sums_to_one_over_branches():
    mech = npattn.get("sk")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(1))
    for train in (False, True):
        weights = host(sk.attention(params, x, train=train))
        assert weights.shape == (2, 2, 32)
        assert np.all(weights > 0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_sk_paper_two_matrix_select_form():
    """a_m = exp(A_m z) / sum_m' exp(A_m' z) with A_m the m-th (C, d) block of fc_select."""
    rng = np.random.default_rng(2)
    params = sk.init(rng, 16, branches=3, groups=4, reduction=4, min_hidden=6)
    assert params["fc.weight"].shape == (6, 16, 1, 1) and params["fc_select.weight"].shape == (48, 6, 1, 1)
    x = _x(rng, (2, 16, 5, 5))
    features = sk.split(params, ag.Tensor(x), train=False, branches=3)
    fused = sum(host(u) for u in features)
    s = fused.mean(axis=(2, 3))
    fc = host(params["fc.weight"])[:, :, 0, 0]
    z = np.maximum(s @ fc.T / np.sqrt(1 + 1e-5), 0)     # eval BN with default stats: weight 1, bias 0, mean 0, var 1
    blocks = np.split(host(params["fc_select.weight"])[:, :, 0, 0], 3, axis=0)
    logits = np.stack([z @ a.T for a in blocks], axis=1)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(host(sk.attention(params, x, branches=3)), expected, rtol=1e-12)
    out = sum(expected[:, m, :, None, None] * host(features[m]) for m in range(3))
    np.testing.assert_allclose(host(sk.sk(params, x, branches=3)), out, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dilated,kernels", [(True, [3, 3, 3]), (False, [3, 5, 7])])
def test_sk_branch_forms_and_stride(dilated, kernels):
    rng = np.random.default_rng(3)
    params = sk.init(rng, 8, branches=3, groups=2, min_hidden=4, dilated=dilated)
    assert [params[f"convs.{m}.weight"].shape[-1] for m in range(3)] == kernels
    assert params["convs.0.weight"].shape == (8, 4, kernels[0], kernels[0])
    x = _x(rng, (2, 8, 7, 6))
    structure = {"branches": 3, "dilated": dilated}
    assert sk.sk(params, x, **structure).shape == (2, 8, 7, 6)
    assert sk.sk(params, x, stride=2, **structure).shape == (2, 8, 4, 3)
    # the form is the option's, never guessed from the kernels: the other form's kernels are a shape error
    other = {"branches": 3, "dilated": not dilated}
    with pytest.raises(ValueError, match=r"sk: parameter 'convs\.1\.weight' must have shape \(8, \*, [35], [35]\)"):
        sk.sk(params, x, **other)


def test_sk_branch_count_comes_from_the_option():
    rng = np.random.default_rng(3)
    params = sk.init(rng, 8, branches=3, groups=2, min_hidden=4)
    x = _x(rng, (2, 8, 5, 5))
    with pytest.raises(KeyError, match=r"sk: params has 6 key.*'convs\.2\.weight'"):
        sk.sk(params, x, branches=2)         # named before fc_select's shape (3C rows for 2C), the consequence
    with pytest.raises(KeyError, match=r"sk: parameter 'convs\.3\.weight' is missing"):
        sk.sk(params, x, branches=4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"sk: branches must be an integer >= 1, got {bad!r}"):
            sk.sk(params, x, branches=bad)
    with pytest.raises(ValueError, match="sk: stride must be a positive integer, got 0"):
        sk.sk(params, x, branches=3, stride=0)
    with pytest.raises(ValueError, match=r"sk: parameter 'convs\.1\.weight' must have shape \(8, C/G, k, k\) "
                                         r"with one C/G"):
        sk.sk({**params, "convs.1.weight": dev(rng.standard_normal((8, 8, 3, 3)))}, x, branches=3)


def test_sk_training_on_a_batch_of_one_names_the_fuse_batchnorm():
    """The fuse FC's BatchNorm sees one value per channel per sample: torch refuses to train it at N = 1."""
    mech = npattn.get("sk")
    params = mech.default_params()
    (x,) = mech.example_input(np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"^sk: BatchNorm 'fc_bn' in training needs more than one value per "
                                         r"channel, got input shape \(1, 8, 1, 1\)"):
        mech.apply(params, x[:1], train=True)
    assert mech.apply(params, x[:1]).shape == (1,) + tuple(x.shape[1:])        # eval mode is fine
    assert mech.apply(params, x[:2], train=True).shape == (2,) + tuple(x.shape[1:])


def test_sk_dilated_branch_equals_explicit_dilated_conv():
    """Branch m of the official form is a 3x3 conv with dilation m + 1 and padding m + 1 (depth-wise here)."""
    rng = np.random.default_rng(4)
    params = sk.init(rng, 2, branches=2, groups=2, min_hidden=2)
    x = rng.standard_normal((1, 2, 6, 6))
    weight = host(params["convs.1.weight"])
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    conv = np.zeros((1, 2, 6, 6))
    for c in range(2):
        for i in range(3):
            for j in range(3):
                conv[0, c] += weight[c, 0, i, j] * padded[0, c, 2 * i:2 * i + 6, 2 * j:2 * j + 6]
    branch = host(sk.split(params, ag.Tensor(dev(x)), train=False, branches=2)[1])
    np.testing.assert_allclose(branch, np.maximum(conv / np.sqrt(1 + 1e-5), 0), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# RAN


def test_ran_caffe_pooled_sizes():
    for size in range(2, 40):
        caffe = int(math.ceil((size - 3) / 2)) + 1          # Caffe: ceil((H + 2 pad - k) / s) + 1, pad 0
        assert residual_attention.pooled_size(size) == caffe >= 1
        pooled = ag.max_pool2d(dev(np.zeros((1, 1, size, size))), 3, stride=2, padding=0, ceil_mode=True)
        assert pooled.shape[2:] == (caffe, caffe)
    assert residual_attention.pooled_size(1) == 0           # Caffe's formula gives an empty map: undefined
    with pytest.raises(ValueError, match="max_pool2d"):
        ag.max_pool2d(dev(np.zeros((1, 1, 1, 1))), 3, stride=2, padding=0, ceil_mode=True)


@pytest.mark.parametrize("n_down", [1, 2, 3, 4])
def test_ran_min_input_size_is_where_every_caffe_pooling_is_defined(n_down):
    """The smallest size whose n_down successive ceil-mode poolings all give a non-empty map (Caffe's formula,
    pooling defined from 2 x 2 up): 2 ** n_down, so 4 x 4 and 5 x 5 are accepted with n_down = 2."""
    def defined(size):
        for _ in range(n_down):
            size = int(math.ceil((size - 3) / 2)) + 1
            if size < 1:
                return False
        return True

    smallest = next(size for size in range(1, 64) if defined(size))
    assert residual_attention.min_input_size(n_down) == smallest == 2 ** n_down
    assert not defined(smallest - 1)


def test_ran_caffe_max_pool_windows():
    """Ceil-mode windows run past the edge and are clipped (Caffe's hend = min(hstart + k, H))."""
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 7))
    oh, ow = residual_attention.pooled_size(8), residual_attention.pooled_size(7)
    expected = np.empty((2, 3, oh, ow))
    for i in range(oh):
        for j in range(ow):
            expected[:, :, i, j] = x[:, :, 2 * i:min(2 * i + 3, 8), 2 * j:min(2 * j + 3, 7)].max(axis=(2, 3))
    np.testing.assert_array_equal(host(ag.max_pool2d(dev(x), 3, stride=2, padding=0, ceil_mode=True)), expected)


def test_ran_caffe_interp_is_align_corners():
    g = np.random.default_rng(6).standard_normal((1, 2, 3, 2))
    out_h, out_w = 7, 5
    expected = np.empty((1, 2, out_h, out_w))
    for i in range(out_h):
        y = i * (3 - 1) / (out_h - 1)                       # Caffe Interp: rheight = (H1 - 1) / (H2 - 1)
        y0 = min(int(y), 1)
        for j in range(out_w):
            xx = j * (2 - 1) / (out_w - 1)
            x0 = min(int(xx), 0)
            dy, dx = y - y0, xx - x0
            expected[:, :, i, j] = ((1 - dy) * (1 - dx) * g[:, :, y0, x0] + (1 - dy) * dx * g[:, :, y0, x0 + 1]
                                    + dy * (1 - dx) * g[:, :, y0 + 1, x0] + dy * dx * g[:, :, y0 + 1, x0 + 1])
    resized = residual_attention._resize(ag.Tensor(dev(g)), (out_h, out_w))
    np.testing.assert_allclose(host(resized), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("n_down,size", [(1, (2, 3)), (1, (3, 4)), (2, (4, 4)), (2, (5, 5)), (2, (6, 9)),
                                         (3, (8, 9)), (3, (12, 13)), (3, (16, 16))])
def test_ran_output_and_mask_sizes(n_down, size):
    rng = np.random.default_rng(7)
    params = residual_attention.init(rng, 8, n_down=n_down)
    x = _x(rng, (2, 8) + size)
    for train in (False, True):
        assert residual_attention.ran(params, x, n_down=n_down, train=train).shape == (2, 8) + size
    mask = host(residual_attention.soft_mask(params, x, n_down=n_down))
    assert mask.shape == (2, 8) + size and np.all((mask > 0) & (mask < 1))
    small = x[..., : residual_attention.min_input_size(n_down) - 1, :]
    with pytest.raises(ValueError, match=f"ran: x spatial size .* too small; this configuration needs at least "
                                         f"{2 ** n_down}"):
        residual_attention.ran(params, small, n_down=n_down)


def test_ran_structure_comes_from_the_options_never_from_the_keys():
    rng = np.random.default_rng(7)
    params = residual_attention.init(rng, 8, n_down=3)
    x = _x(rng, (2, 8, 8, 8))
    # n_down = 2 wants 2r = 2 units at level 1 (the bottom), the n_down = 3 parameters have r = 1 there
    with pytest.raises(KeyError, match=r"ran: parameter 'down\.1\.1\.bn1\.weight' is missing \(params has "
                                       r"'down\.2\.1\.bn1\.weight'"):
        residual_attention.ran(params, x, n_down=2)
    with pytest.raises(KeyError, match=r"ran: parameter 'pre\.1\.bn1\.weight' is missing"):
        residual_attention.ran(params, x, n_down=3, p=2)
    # fewer units than the parameters hold: the unused ones are named before anything is computed
    with pytest.raises(KeyError, match=r"ran: params has 36 key\(s\) this configuration does not use: "
                                       r"'pre\.0\.bn1\.weight'"):
        residual_attention.ran(params, x, n_down=3, p=0)
    # a dropped unit is named, never a shallower mask branch; a misspelt key is pointed at
    dropped = {k: v for k, v in params.items() if not k.startswith("up.0.0.")}
    with pytest.raises(KeyError, match=r"ran: parameter 'up\.0\.0\.bn1\.weight' is missing"):
        residual_attention.ran(dropped, x, n_down=3)
    typo = {("down.1.0.conv2.wieght" if k == "down.1.0.conv2.weight" else k): v for k, v in params.items()}
    with pytest.raises(KeyError, match=r"'down\.1\.0\.conv2\.weight' is missing \(params has "
                                       r"'down\.1\.0\.conv2\.wieght'"):
        residual_attention.ran(typo, x, n_down=3)
    for option, value in (("n_down", 0), ("r", 0), ("p", -1), ("t", 1.5), ("n_down", True)):
        with pytest.raises(ValueError, match=f"ran: {option} must be an integer >= [01], got {value!r}"):
            residual_attention.ran(params, x, **{"n_down": 3, option: value})


def test_ran_every_shape_is_checked_before_computing():
    """A bottleneck conv of the wrong kernel, or a unit of another width, names its key (not a broadcast error)."""
    rng = np.random.default_rng(7)
    params = residual_attention.init(rng, 8, n_down=2)
    x = _x(rng, (2, 8, 6, 6))
    wrong = {**params, "trunk.1.conv2.weight": dev(rng.standard_normal((2, 2, 1, 1)))}
    with pytest.raises(ValueError, match=r"ran: parameter 'trunk\.1\.conv2\.weight' must have shape \(2, 2, 3, 3\)"):
        residual_attention.ran(wrong, x)
    wrong = {**params, "post.0.conv1.weight": dev(rng.standard_normal((3, 8, 1, 1)))}
    with pytest.raises(ValueError, match=r"ran: parameter 'post\.0\.conv1\.weight' must have shape \(2, 8, 1, 1\)"):
        residual_attention.soft_mask(wrong, x)       # soft_mask checks the units it does not compute too


def test_ran_training_a_1x1_bottom_level_on_one_sample_names_the_layer():
    """4 x 4 with n_down = 2: the bottom level is 1 x 1, one value per channel with N = 1 -- torch refuses to
    train its BatchNorm, and so does npattn, naming the layer; eval mode and N = 2 are fine."""
    rng = np.random.default_rng(7)
    params = residual_attention.init(rng, 8, n_down=2)
    x = _x(rng, (1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"^ran: BatchNorm 'down\.1\.0\.bn1' in training needs more than one value "
                                         r"per channel, got input shape \(1, 8, 1, 1\)"):
        residual_attention.ran(params, x, train=True)
    assert residual_attention.ran(params, x).shape == (1, 8, 4, 4)
    assert residual_attention.ran(params, _x(rng, (2, 8, 4, 4)), train=True).shape == (2, 8, 4, 4)


def test_ran_unit_counts_follow_p_t_r():
    params = residual_attention.init(np.random.default_rng(0), 8, n_down=3, p=2, t=1, r=2)

    def units(prefix):
        return sorted({k.rsplit(".", 2)[0] for k in params if k.startswith(prefix) and k.endswith("conv1.weight")})

    assert units("pre.") == ["pre.0", "pre.1"] and units("post.") == ["post.0", "post.1"]
    assert units("trunk.") == ["trunk.0"]
    assert units("down.0.") == ["down.0.0", "down.0.1"] and units("down.1.") == ["down.1.0", "down.1.1"]
    assert units("down.2.") == ["down.2.0", "down.2.1", "down.2.2", "down.2.3"]    # 2r at the bottom
    assert units("skip.") == ["skip.0", "skip.1"]
    assert units("up.") == ["up.0.0", "up.0.1", "up.1.0", "up.1.1"]
    assert params["pre.0.conv1.weight"].shape == (2, 8, 1, 1) and params["pre.0.conv2.weight"].shape == (2, 2, 3, 3)
    assert params["mask_conv_a.weight"].shape == (8, 8, 1, 1) and "mask_conv_a.bias" not in params
    assert not any(k.endswith("conv1.bias") for k in params)


def test_ran_mask_branch_starts_from_the_pre_unit():
    """Trunk parameters change the output but never the mask (the mask pools from pre(x), as trunk/res1)."""
    rng = np.random.default_rng(8)
    params = residual_attention.init(rng, 8, n_down=2)
    x = _x(rng, (2, 8, 8, 8))
    changed = {k: (v * 1.5 if k.startswith("trunk.") and "conv" in k else v) for k, v in params.items()}
    np.testing.assert_array_equal(host(residual_attention.soft_mask(params, x)),
                                  host(residual_attention.soft_mask(changed, x)))
    assert not np.allclose(host(residual_attention.ran(params, x)), host(residual_attention.ran(changed, x)))


def test_ran_fusion_is_one_plus_mask_times_trunk():
    rng = np.random.default_rng(9)
    structure = {"n_down": 1, "p": 1, "t": 1}
    params = residual_attention.init(rng, 8, **structure)
    x = _x(rng, (2, 8, 5, 5))
    h = residual_attention.unit(params, "pre.0", ag.Tensor(x), train=False)
    trunk = host(residual_attention.unit(params, "trunk.0", h, train=False))
    mask = host(residual_attention.soft_mask(params, x, **structure))
    fused = residual_attention.unit(params, "post.0", ag.Tensor(dev((1 + mask) * trunk)), train=False)
    np.testing.assert_allclose(host(residual_attention.ran(params, x, **structure)), host(fused), rtol=1e-13,
                               atol=1e-14)


@pytest.mark.parametrize("size, gate_size",
                         [((28, 28), (7, 7)), ((12, 9), (4, 3)), ((27, 14), (7, 4)), ((8, 8), (1, 1))])
def test_ge_block_product_equals_upsample_then_multiply(size, gate_size):
    """scale_by_gate's block-view product (when nearest upsampling repeats blocks) = interpolate, then multiply."""
    rng = np.random.default_rng(8)
    x, gate = rng.standard_normal((2, 3) + size), rng.random((2, 3) + gate_size)
    cotangent = dev(rng.standard_normal((2, 3) + size))

    def upsampled(x, gate):
        return x * ag.interpolate(gate, size=size, mode="nearest")

    out, pullback = ag.vjp(gather_excite.scale_by_gate, dev(x), dev(gate))
    ref, ref_pullback = ag.vjp(upsampled, dev(x), dev(gate))
    np.testing.assert_array_equal(host(out), host(ref))
    for g, r in zip(pullback(cotangent), ref_pullback(cotangent)):
        np.testing.assert_allclose(host(g), host(r), rtol=1e-13, atol=1e-14)


def test_ge_block_path_is_taken_only_where_nearest_repeats_blocks():
    assert gather_excite._repeats_blocks(7, 28) and gather_excite._repeats_blocks(3, 9)
    assert not gather_excite._repeats_blocks(7, 27) and not gather_excite._repeats_blocks(4, 6)


# ---------------------------------------------------------------------------------------------
# channel counts not divisible by the reduction ratio: hidden widths are C // r (floor), as the official code


#: name -> (init config at C = 30, r = 4, the shapes it must give: hidden width 30 // 4 = 7)
INDIVISIBLE = {
    "se": ({"reduction": 4}, {"fc1.weight": (7, 30), "fc1.bias": (7,), "fc2.weight": (30, 7), "fc2.bias": (30,)}),
    "spa": ({"reduction": 4}, {"fc1.weight": (7, 21 * 30), "fc2.weight": (30, 7)}),
    "ge-theta-plus": ({"reduction": 4, "extent": 2, "feat_size": None},
                      {"mlp_down.weight": (7, 30, 1, 1), "mlp_down.bias": (7,), "mlp_up.weight": (30, 7, 1, 1),
                       "gather.conv1.weight": (30, 1, 3, 3)}),
    "sk": ({"reduction": 4, "groups": 6, "min_hidden": 2},
           {"convs.0.weight": (30, 5, 3, 3), "fc.weight": (7, 30, 1, 1), "fc_bn.running_var": (7,),
            "fc_select.weight": (60, 7, 1, 1)}),
}


@pytest.mark.parametrize("name", sorted(INDIVISIBLE))
def test_channel_counts_not_divisible_by_the_reduction(name):
    mech = npattn.get(name)
    overrides, expected = INDIVISIBLE[name]
    config = {**mech.config, "channels": 30, **overrides}
    params = mech.init(np.random.default_rng(0), **config)
    for key, shape in expected.items():
        assert tuple(params[key].shape) == shape, key
    structure = {k: v for k, v in config.items() if k in {"variant", "extent", "branches", "dilated"}}
    x = _x(np.random.default_rng(1), (2, 30, 5, 6))
    assert mech.apply_fn(params, x, **structure).shape == (2, 30, 5, 6)
    assert ag.gradcheck(lambda p, v: mech.apply_fn(p, v, **structure), params, x, mode="fast", n_directions=2)


# ---------------------------------------------------------------------------------------------
# min_spatial is the smallest accepted size; 0 x W and H x 0 maps are refused by name


def _spatial_input(mech, size, other):
    (x,) = mech.example_input(np.random.default_rng(0))
    return dev(np.random.default_rng(1).standard_normal(tuple(x.shape[:2]) + (size, other)))


@pytest.mark.parametrize("mech", npattn.mechanisms("channel"), ids=lambda m: m.name)
def test_min_spatial_is_the_smallest_accepted_size(mech):
    params = mech.default_params()
    smallest = mech.min_spatial
    exact = mech.name == "ge-theta-plus"          # the global gather's kernel is the whole (7, 7) map
    assert mech.apply(params, _spatial_input(mech, smallest, smallest if exact else smallest + 1)).shape[2:] == (
        smallest, smallest if exact else smallest + 1)
    for size, other in ((smallest - 1, smallest), (0, 3), (3, 0)):
        if size == other == smallest:
            continue
        with pytest.raises(ValueError, match=f"^{mech.name}: x spatial size|^{mech.name}: global extent"):
            mech.apply(params, _spatial_input(mech, size, other))
