"""Cross-framework tier for the hybrid family: CBAM, BAM, scSE (all four entries), A²-Nets.

Each twin is an independent torch.nn module written from the paper/official code, with npattn's
parameter names (so the npattn dict loads with ``load_state_dict(strict=True)``). Outputs, the input
gradient, every parameter gradient and (train mode) the updated BatchNorm running statistics must agree
to 1e-10 in float64.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.hybrid import cbam  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10


# ---------------------------------------------------------------------------------------------
# twins


class TorchCBAM(nn.Module):
    """Official CBAM: shared biased MLP over pooled descriptors, ChannelPool [max; mean], 7x7 conv, BN(0.01)."""

    def __init__(self, channels, reduction, pool_types=("avg", "max"), spatial=True, spatial_bn=True,
                 spatial_bias=False, order="max-mean"):
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.pool_types, self.order, self.spatial = pool_types, order, spatial
        if spatial:
            self.spatial_conv = nn.Conv2d(2, 1, 7, padding=3, bias=spatial_bias)
            self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01) if spatial_bn else None

    @staticmethod
    def descriptor(x, pool_type):
        h, w = x.shape[2:]
        if pool_type == "avg":
            return F.avg_pool2d(x, (h, w), stride=(h, w)).flatten(1)
        if pool_type == "max":
            return F.max_pool2d(x, (h, w), stride=(h, w)).flatten(1)
        if pool_type == "lp":
            return F.lp_pool2d(x, 2, (h, w), stride=(h, w)).flatten(1)
        return torch.logsumexp(x.flatten(2), dim=2)

    def forward(self, x):
        raw = sum(self.mlp(self.descriptor(x, p)) for p in self.pool_types)
        x = x * torch.sigmoid(raw)[:, :, None, None]
        if not self.spatial:
            return x
        channel_max, channel_mean = torch.max(x, 1)[0][:, None], torch.mean(x, 1)[:, None]
        pooled = torch.cat((channel_max, channel_mean) if self.order == "max-mean" else (channel_mean, channel_max), 1)
        logits = self.spatial_conv(pooled)
        if self.spatial_bn is not None:
            logits = self.spatial_bn(logits)
        return x * torch.sigmoid(logits)


class TorchBAM(nn.Module):
    """Official BAM layers (names as npattn), true global mean, product or sum combination."""

    def __init__(self, channels, reduction, combine="product", dilation=4):
        super().__init__()
        hidden = channels // reduction
        self.combine, self.dilation = combine, dilation
        self.ch_fc0 = nn.Linear(channels, hidden)
        self.ch_bn0 = nn.BatchNorm1d(hidden)
        self.ch_fc_final = nn.Linear(hidden, channels)
        self.sp_reduce = nn.Conv2d(channels, hidden, 1)
        self.sp_bn_reduce = nn.BatchNorm2d(hidden)
        for i in range(2):
            setattr(self, f"sp_di{i}", nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation))
            setattr(self, f"sp_bn_di{i}", nn.BatchNorm2d(hidden))
        self.sp_final = nn.Conv2d(hidden, 1, 1)

    def forward(self, x):
        channel = self.ch_fc_final(F.relu(self.ch_bn0(self.ch_fc0(x.mean((2, 3))))))[:, :, None, None]
        spatial = F.relu(self.sp_bn_reduce(self.sp_reduce(x)))
        for i in range(2):
            spatial = F.relu(getattr(self, f"sp_bn_di{i}")(getattr(self, f"sp_di{i}")(spatial)))
        spatial = self.sp_final(spatial)
        joint = channel * spatial if self.combine == "product" else channel + spatial
        return (1 + torch.sigmoid(joint)) * x


class TorchCSE(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))[:, :, None, None]


class TorchSSE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class TorchSCSE(nn.Module):
    """ai-med ChannelSpatialSELayer (combine="max", torch.max) or the MICCAI/smp sum."""

    def __init__(self, channels, reduction, branches=("cse", "sse"), combine="add"):
        super().__init__()
        self.combine = combine
        self.cse = TorchCSE(channels, reduction) if "cse" in branches else None
        self.sse = TorchSSE(channels) if "sse" in branches else None

    def forward(self, x):
        if self.sse is None:
            return self.cse(x)
        if self.cse is None:
            return self.sse(x)
        if self.combine == "add":
            return self.cse(x) + self.sse(x)
        return torch.max(self.cse(x), self.sse(x))


class TorchA2(nn.Module):
    """Double attention: gather with softmax over positions, distribute with softmax over descriptors."""

    def __init__(self, channels, c_m, c_n, residual=False):
        super().__init__()
        self.residual = residual
        self.convA = nn.Conv2d(channels, c_m, 1)
        self.convB = nn.Conv2d(channels, c_n, 1)
        self.convV = nn.Conv2d(channels, c_n, 1)
        self.conv_reconstruct = nn.Conv2d(c_m, channels, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        features = self.convA(x).flatten(2)
        attention_maps = F.softmax(self.convB(x).flatten(2), dim=-1)
        attention_vectors = F.softmax(self.convV(x).flatten(2), dim=1)
        descriptors = torch.bmm(features, attention_maps.transpose(1, 2))
        out = torch.bmm(descriptors, attention_vectors).view(n, features.shape[1], h, w)
        out = self.conv_reconstruct(out)
        return x + out if self.residual else out


# ---------------------------------------------------------------------------------------------
# comparison


def _torch(array):
    return torch.from_numpy(host(array).copy())


def _assert_close(what, actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert err <= TOL, f"{what}: max abs error {err:.3e} > {TOL}"


def check_twin(module, name, params, x, train, **options):
    """Outputs, input and parameter gradients, and (train) running statistics of npattn vs the twin."""
    mech = npattn.get(name)
    module = module.double()
    module.load_state_dict({k: _torch(v) for k, v in params.items()}, strict=True)
    module.train(train)
    cotangent = np.random.default_rng(11).standard_normal(host(x).shape)

    x_t = _torch(x).requires_grad_(True)
    out_t = module(x_t)
    out_t.backward(torch.from_numpy(cotangent))

    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, inp):
        return mech.apply({**params, **float_params}, inp, train=train, **options)

    with npattn.track_running_stats() as new_stats:
        out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, x)
    grad_params, grad_x = pullback(ag.from_numpy(cotangent))

    _assert_close(f"{name} output", host(out), out_t.detach().numpy())
    _assert_close(f"{name} grad x", host(grad_x), x_t.grad.numpy())
    torch_params = dict(module.named_parameters())
    assert set(torch_params) <= set(float_keys)
    for key, param in torch_params.items():
        _assert_close(f"{name} grad {key}", host(grad_params[key]), param.grad.numpy())
    buffers = dict(module.named_buffers())
    if train:
        assert set(new_stats) == set(buffers), f"{name}: reported {sorted(new_stats)}, torch has {sorted(buffers)}"
        for key, buffer in buffers.items():
            _assert_close(f"{name} buffer {key}", host(new_stats[key]), buffer.numpy())
    else:
        assert not new_stats


def _setup(name, seed=0, **config):
    mech = npattn.get(name)
    params = mech.init(np.random.default_rng(seed), **{**mech.config, **config})
    if any(k.endswith("running_mean") for k in params):
        params = _perturb_bn(params, np.random.default_rng(seed + 1))
    (x,) = mech.example_input(np.random.default_rng(seed + 2))
    return mech, params, x


def _perturb_bn(params, rng):
    """Non-trivial BN affine parameters and running statistics, so eval mode really uses them."""
    out = dict(params)
    for key, value in params.items():
        shape = host(value).shape
        prefix, leaf = key.rsplit(".", 1)
        is_bn = f"{prefix}.running_mean" in params
        if is_bn and leaf in ("running_mean", "bias"):
            out[key] = ag.from_numpy(0.3 * rng.standard_normal(shape))
        elif is_bn and leaf in ("running_var", "weight"):
            out[key] = ag.from_numpy(rng.uniform(0.5, 1.5, shape))
        elif leaf == "num_batches_tracked":
            out[key] = ag.from_numpy(np.array(3, dtype=np.int64))
    return out


MODES = pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])


# ---------------------------------------------------------------------------------------------
# CBAM


@MODES
def test_cbam(train):
    mech, params, x = _setup("cbam")
    check_twin(TorchCBAM(32, mech.config["reduction"]), "cbam", params, x, train)


@MODES
def test_cbam_channel(train):
    mech, params, x = _setup("cbam-channel")
    check_twin(TorchCBAM(32, mech.config["reduction"], spatial=False), "cbam-channel", params, x, train)


@MODES
@pytest.mark.parametrize("pool_types", [("avg", "max", "lp", "lse"), ("lse",), ("lp", "avg")], ids="+".join)
def test_cbam_pool_types(train, pool_types):
    mech, params, x = _setup("cbam")
    check_twin(TorchCBAM(32, mech.config["reduction"], pool_types=pool_types), "cbam", params, x, train,
               pool_types=pool_types)


def test_lp_pool2d_gradient_at_an_all_zero_window_is_zero_in_torch_and_npattn():
    """The reference itself: F.lp_pool2d(p=2) over a window of zeros has value 0 and gradient 0 (its ReLU's
    backward zeroes the inf of pow(0, 0.5)); npattn's CBAM descriptor gives the same, and x / ||x|| elsewhere."""
    x = np.zeros((1, 2, 3, 4))
    x[0, 1] = np.random.default_rng(0).standard_normal((3, 4))
    x_t = torch.tensor(x, requires_grad=True)
    F.lp_pool2d(x_t, 2, (3, 4), stride=(3, 4)).sum().backward()
    assert np.array_equal(x_t.grad.numpy()[0, 0], np.zeros((3, 4)))
    grad = host(ag.grad(lambda v: ag.sum(cbam._channel_descriptor(v, "lp")))(ag.from_numpy(x)))
    _assert_close("lp descriptor grad", grad, x_t.grad.numpy())
    np.testing.assert_allclose(grad[0, 1], x[0, 1] / np.linalg.norm(x[0, 1]), rtol=1e-14)


@MODES
@pytest.mark.parametrize("pool_types", [("lp",), ("lp", "avg", "max")], ids="+".join)
def test_cbam_lp_with_an_all_zero_channel(train, pool_types):
    """A zero channel (e.g. after a ReLU): output, input gradient (finite) and parameter gradients as torch."""
    mech, params, x = _setup("cbam")
    x = host(x).copy()
    x[0, 3] = 0.0
    x[1, 7] = 0.0
    check_twin(TorchCBAM(32, mech.config["reduction"], pool_types=pool_types), "cbam", params, ag.from_numpy(x),
               train, pool_types=pool_types)


@MODES
def test_cbam_paper_form(train):
    """[avg; max] order and no BN in the spatial gate (the paper's equation)."""
    mech, params, x = _setup("cbam", spatial_bn=False)
    assert not any(k.startswith("spatial_bn") for k in params)
    twin = TorchCBAM(32, mech.config["reduction"], spatial_bn=False, order="mean-max")
    check_twin(twin, "cbam", params, x, train, spatial_order="mean-max", spatial_bn=False)


def test_cbam_spatial_bias_mean_max_with_bn():
    """timm's ordering with BN, and a biased spatial conv."""
    mech, params, x = _setup("cbam", spatial_bias=True)
    twin = TorchCBAM(32, mech.config["reduction"], spatial_bias=True, order="mean-max")
    check_twin(twin, "cbam", params, x, True, spatial_order="mean-max", spatial_bias=True)


# ---------------------------------------------------------------------------------------------
# BAM


@MODES
@pytest.mark.parametrize("combine", ["product", "sum"])
def test_bam(train, combine):
    mech, params, x = _setup("bam")
    check_twin(TorchBAM(32, mech.config["reduction"], combine=combine), "bam", params, x, train, combine=combine)


def test_bam_other_dilation():
    mech, params, x = _setup("bam")
    check_twin(TorchBAM(32, mech.config["reduction"], dilation=2), "bam", params, x, True, dilation=2)


# ---------------------------------------------------------------------------------------------
# scSE


@MODES
@pytest.mark.parametrize("name", ["scse", "scse-max", "cse", "sse"])
def test_scse_entries(train, name):
    mech, params, x = _setup(name)
    branches = mech.config.get("branches", ("cse", "sse"))
    combine = mech.options.get("combine", "add")
    twin = TorchSCSE(32, mech.config.get("reduction", 16), branches=branches, combine=combine)
    check_twin(twin, name, params, x, train)


def test_scse_max_ties_split_like_torch():
    """Exact ties between cSE(x) and sSE(x): both split the gradient 0.5 / 0.5."""
    mech, params, x = _setup("scse-max")
    params = dict(params)
    for key in ("cse.fc2.weight", "sse.conv.weight"):
        params[key] = ag.from_numpy(np.zeros(host(params[key]).shape))
    params["cse.fc2.bias"] = ag.from_numpy(np.full(32, 0.25))
    params["sse.conv.bias"] = ag.from_numpy(np.full(1, 0.25))
    check_twin(TorchSCSE(32, 2, combine="max"), "scse-max", params, x, False)


# ---------------------------------------------------------------------------------------------
# A²-Nets


@MODES
@pytest.mark.parametrize("residual", [False, True], ids=["block", "residual"])
def test_a2(train, residual):
    mech, params, x = _setup("a2")
    twin = TorchA2(32, mech.config["c_m"], mech.config["c_n"], residual=residual)
    check_twin(twin, "a2", params, x, train, residual=residual)


# ---------------------------------------------------------------------------------------------
# channel counts not divisible by the reduction ratio (30 // 4 = 7): strict loading checks every shape

INDIVISIBLE = {
    "cbam": lambda: TorchCBAM(30, 4),
    "cbam-channel": lambda: TorchCBAM(30, 4, spatial=False),
    "bam": lambda: TorchBAM(30, 4),
    "scse": lambda: TorchSCSE(30, 4),
    "scse-max": lambda: TorchSCSE(30, 4, combine="max"),
    "cse": lambda: TorchSCSE(30, 4, branches=("cse",)),
}


@MODES
@pytest.mark.parametrize("name", sorted(INDIVISIBLE))
def test_channel_counts_not_divisible_by_the_reduction(train, name):
    mech = npattn.get(name)
    params = mech.init(np.random.default_rng(0), **{**mech.config, "channels": 30, "reduction": 4})
    if any(k.endswith("running_mean") for k in params):
        params = _perturb_bn(params, np.random.default_rng(1))
    x = ag.from_numpy(np.random.default_rng(2).standard_normal((4, 30, 5, 6)))
    check_twin(INDIVISIBLE[name](), name, params, x, train, **mech.options)


# ---------------------------------------------------------------------------------------------
# empty batches: as torch, an empty output, zero gradients, unchanged running statistics (counter + 1)

EMPTY = {
    "cbam": lambda: TorchCBAM(32, 8),
    "cbam-channel": lambda: TorchCBAM(32, 8, spatial=False),
    "bam": lambda: TorchBAM(32, 4),
    "scse": lambda: TorchSCSE(32, 16),
    "scse-max": lambda: TorchSCSE(32, 2, combine="max"),
    "cse": lambda: TorchSCSE(32, 16, branches=("cse",)),
    "sse": lambda: TorchSCSE(32, 16, branches=("sse",)),
    "a2": lambda: TorchA2(32, 12, 8),
}


def test_every_hybrid_entry_has_an_empty_batch_twin():
    from tests.torch_tier.test_cnn_beyond import REGISTRY_TWINS as AFTER_SURVEY  # issue 17's entries: twins there
    assert set(EMPTY) == {m.name for m in npattn.mechanisms("hybrid")} - set(AFTER_SURVEY)


@MODES
@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_batch(train, name):
    mech, params, x = _setup(name)
    check_twin(EMPTY[name](), name, params, ag.from_numpy(np.zeros((0,) + tuple(x.shape[1:]))), train)
