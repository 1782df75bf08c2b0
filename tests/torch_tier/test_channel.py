"""Cross-framework tier for the channel family: SE, Gather-Excite (all variants and extents), the Residual
Attention module, SK, SPA (and its PSPPSE form), ECA.

Each twin is an independent torch.nn module written from the paper / official code, with npattn's parameter
names, so the npattn dict loads with ``load_state_dict(strict=True)``.  BatchNorm parameters and running
statistics are randomised first (the defaults are an identity).  In float64, for one random cotangent, the
output, the gradient of every input, the gradient of every torch parameter and -- in train mode -- every
updated BatchNorm buffer must agree to 1e-10.
"""
import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.channel import eca, gather_excite, residual_attention, se, sk, spa  # noqa: E402
from npattn.testing import assert_close  # noqa: E402
from tests.conftest import dev, host  # noqa: E402
from tests.npattn.test_channel import _randomize_bn  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10


# ---------------------------------------------------------------------------------------------
# twins


class TorchSE(nn.Module):
    """Official SE (Caffe 1x1 convs with bias, as Linear layers)."""

    def __init__(self, channels, reduction, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=bias)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=bias)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))[:, :, None, None]


class TorchECA(nn.Module):
    """Official eca_layer: GAP, Conv1d over the (B, 1, C) descriptor, sigmoid, scale."""

    def __init__(self, k_size):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


class TorchSPA(nn.Module):
    """Official SPPSELayer / PSPPSELayer: pools 1, 2, 4 flattened with .view, bias-free MLP."""

    def __init__(self, in_channels, channels, reduction):
        super().__init__()
        self.fc1 = nn.Linear(21 * in_channels, in_channels // reduction, bias=False)
        self.fc2 = nn.Linear(in_channels // reduction, channels, bias=False)

    def forward(self, x, source=None):
        source = x if source is None else source
        b, c = source.shape[:2]
        pooled = [nn.AdaptiveAvgPool2d(s)(source).view(b, s * s * c) for s in (1, 2, 4)]
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.cat(pooled, 1)))))
        return x * gate.view(b, gate.shape[1], 1, 1).expand_as(x)


class TorchGE(nn.Module):
    """GE: official GEPF/GEP/GEPP layers for global extent, timm's layout for e > 0 (upsample, then gate)."""

    def __init__(self, channels, variant, extent, feat_size=None, reduction=16, gather_relu=True):
        super().__init__()
        self.variant, self.extent, self.gather_relu = variant, extent, gather_relu
        if variant != "theta_minus":
            self.gather = nn.Module()
            if extent == 0:
                self.gather.add_module("conv1", nn.Conv2d(channels, channels, feat_size, groups=channels, bias=False))
                self.gather.add_module("bn1", nn.BatchNorm2d(channels))
                self.stages = 1
            else:
                self.stages = int(math.log2(extent))
                for i in range(1, self.stages + 1):
                    self.gather.add_module(f"conv{i}", nn.Conv2d(channels, channels, 3, stride=2, padding=1,
                                                                 groups=channels, bias=False))
                    self.gather.add_module(f"bn{i}", nn.BatchNorm2d(channels))
        if variant == "theta_plus":
            self.mlp_down = nn.Conv2d(channels, channels // reduction, 1)
            self.mlp_up = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        if self.variant == "theta_minus":
            if self.extent == 0:
                g = x.mean((2, 3), keepdim=True)
            else:
                k = 2 * self.extent - 1
                g = F.avg_pool2d(x, k, stride=self.extent, padding=k // 2, count_include_pad=False)
        else:
            g = x
            for i in range(1, self.stages + 1):
                g = getattr(self.gather, f"bn{i}")(getattr(self.gather, f"conv{i}")(g))
                if i < self.stages:
                    g = F.relu(g)
        if self.variant == "theta_plus":
            if self.gather_relu:
                g = F.relu(g)
            g = self.mlp_up(F.relu(self.mlp_down(g)))
        if g.shape[-2:] != (1, 1):
            g = F.interpolate(g, size=x.shape[-2:], mode="nearest")
        return x * torch.sigmoid(g)


class TorchSK(nn.Module):
    """Official SKNet unit: grouped 3x3 branches with dilation m + 1 (or kernels 3, 5, ...), BN-ReLU,
    GAP -> 1x1 conv (no bias) -> BN -> ReLU -> 1x1 conv to M C (no bias) -> softmax over branches."""

    def __init__(self, channels, branches, groups, hidden, dilated=True, stride=1):
        super().__init__()
        self.branches, self.channels = branches, channels
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        for m in range(branches):
            kernel, dilation = (3, m + 1) if dilated else (3 + 2 * m, 1)
            self.convs.append(nn.Conv2d(channels, channels, kernel, stride=stride, padding=dilation * (kernel // 2),
                                        dilation=dilation, groups=groups, bias=False))
            self.bns.append(nn.BatchNorm2d(channels))
        self.fc = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc_bn = nn.BatchNorm2d(hidden)
        self.fc_select = nn.Conv2d(hidden, branches * channels, 1, bias=False)

    def forward(self, x):
        feats = [F.relu(bn(conv(x))) for conv, bn in zip(self.convs, self.bns)]
        fused = torch.stack(feats, 0).sum(0)
        z = F.relu(self.fc_bn(self.fc(F.adaptive_avg_pool2d(fused, 1))))
        a = torch.softmax(self.fc_select(z).view(x.shape[0], self.branches, self.channels, 1, 1), dim=1)
        return sum(a[:, m] * feats[m] for m in range(self.branches))


class PreActUnit(nn.Module):
    """Pre-activation bottleneck C -> C/4 -> C/4 -> C, no conv bias, identity shortcut."""

    def __init__(self, channels):
        super().__init__()
        mid = channels // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, channels, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return x + self.conv3(F.relu(self.bn3(out)))


def _chain(units, x):
    for unit in units:
        x = unit(x)
    return x


class TorchRAN(nn.Module):
    """Attention module as AttentionA_1 of Attention-56 (Caffe pooling, align_corners Interp)."""

    def __init__(self, channels, n_down, p, t, r):
        super().__init__()

        def units(count):
            return nn.ModuleList(PreActUnit(channels) for _ in range(count))

        self.pre, self.trunk = units(p), units(t)
        self.down = nn.ModuleList(units(2 * r if level == n_down - 1 else r) for level in range(n_down))
        self.skip = nn.ModuleList(PreActUnit(channels) for _ in range(n_down - 1))
        self.up = nn.ModuleList(units(r) for _ in range(n_down - 1))
        self.mask_bn_a, self.mask_conv_a = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 1, bias=False)
        self.mask_bn_b, self.mask_conv_b = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 1, bias=False)
        self.post = units(p)

    def forward(self, x):
        x = _chain(self.pre, x)
        trunk = _chain(self.trunk, x)
        m, skips = x, []
        for level, down in enumerate(self.down):
            m = _chain(down, F.max_pool2d(m, 3, 2, 0, ceil_mode=True))
            if level < len(self.skip):
                skips.append(m)
        for level in reversed(range(len(self.skip))):
            upsampled = F.interpolate(m, size=skips[level].shape[-2:], mode="bilinear", align_corners=True)
            m = _chain(self.up[level], self.skip[level](skips[level]) + upsampled)
        m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=True)
        m = self.mask_conv_a(F.relu(self.mask_bn_a(m)))
        mask = torch.sigmoid(self.mask_conv_b(F.relu(self.mask_bn_b(m))))
        return _chain(self.post, (1 + mask) * trunk)


# ---------------------------------------------------------------------------------------------
# cases: (id, npattn apply, npattn init, init kwargs, apply options, input shapes, twin factory)

#: a twin for every registered channel entry, built for its default config
REGISTRY_TWINS = {
    "se": lambda: TorchSE(32, 4),
    "eca": lambda: TorchECA(3),
    "spa": lambda: TorchSPA(32, 32, 4),
    "sk": lambda: TorchSK(32, 2, 8, 8),
    "ran": lambda: TorchRAN(16, 2, 1, 2, 1),
    "ge-theta-minus": lambda: TorchGE(16, "theta_minus", 4),
    "ge-theta": lambda: TorchGE(16, "theta", 4),
    "ge-theta-plus": lambda: TorchGE(16, "theta_plus", 0, 7, 4),
}


def _registry_case(name):
    mech = npattn.get(name)
    shapes = [tuple(x.shape) for x in mech.example_input(np.random.default_rng(0))]
    return (name, mech.apply_fn, mech.init, mech.config, mech.options, shapes, REGISTRY_TWINS[name])


CASES = [_registry_case(name) for name in REGISTRY_TWINS] + [
    ("se-nobias", se.se, se.init, {"channels": 16, "reduction": 4, "bias": False}, {}, [(2, 16, 4, 3)],
     lambda: TorchSE(16, 4, bias=False)),
    ("eca-c4-k1", eca.eca, eca.init, {"channels": 4}, {}, [(3, 4, 3, 5)], lambda: TorchECA(1)),
    ("eca-k5", eca.eca, eca.init, {"channels": 64, "k_size": 5}, {}, [(2, 64, 3, 3)], lambda: TorchECA(5)),
    ("spa-small-map", spa.spa, spa.init, {"channels": 16, "reduction": 4}, {}, [(2, 16, 3, 5)],
     lambda: TorchSPA(16, 16, 4)),
    ("spa-psppse", spa.spa, spa.init, {"channels": 24, "reduction": 4, "in_channels": 16}, {},
     [(2, 24, 5, 5), (2, 16, 10, 9)], lambda: TorchSPA(16, 24, 4)),
    ("sk-m3-paper-kernels", sk.sk, sk.init,
     {"channels": 16, "branches": 3, "groups": 4, "reduction": 4, "min_hidden": 2, "dilated": False}, {},
     [(3, 16, 7, 6)], lambda: TorchSK(16, 3, 4, 4, dilated=False)),
    ("sk-m3-stride2", sk.sk, sk.init, {"channels": 16, "branches": 3, "groups": 16, "min_hidden": 6},
     {"stride": 2}, [(3, 16, 7, 6)], lambda: TorchSK(16, 3, 16, 6, stride=2)),
    ("ran-n1-r2", residual_attention.ran, residual_attention.init, {"channels": 8, "n_down": 1, "p": 1, "t": 1, "r": 2},
     {}, [(2, 8, 5, 4)], lambda: TorchRAN(8, 1, 1, 1, 2)),
    ("ran-n3-p2", residual_attention.ran, residual_attention.init,
     {"channels": 8, "n_down": 3, "p": 2, "t": 1, "r": 1}, {}, [(2, 8, 13, 12)], lambda: TorchRAN(8, 3, 2, 1, 1)),
    # the smallest inputs whose Caffe poolings are all defined (2 ** n_down): windows longer than the map
    ("ran-n1-2x3-min", residual_attention.ran, residual_attention.init,
     {"channels": 8, "n_down": 1, "p": 1, "t": 1, "r": 1}, {}, [(2, 8, 2, 3)], lambda: TorchRAN(8, 1, 1, 1, 1)),
    ("ran-n2-4x5-min", residual_attention.ran, residual_attention.init,
     {"channels": 8, "n_down": 2, "p": 1, "t": 1, "r": 1}, {}, [(2, 8, 4, 5)], lambda: TorchRAN(8, 2, 1, 1, 1)),
    ("ran-n3-8x9-min", residual_attention.ran, residual_attention.init,
     {"channels": 8, "n_down": 3, "p": 1, "t": 1, "r": 1}, {}, [(2, 8, 8, 9)], lambda: TorchRAN(8, 3, 1, 1, 1)),
]

# channel counts not divisible by the reduction ratio (hidden width 30 // 4 = 7): strict loading into twins
# built with C // r checks every shape, and the numbers must agree as everywhere
CASES += [
    ("se-c30-r4", se.se, se.init, {"channels": 30, "reduction": 4}, {}, [(2, 30, 4, 3)], lambda: TorchSE(30, 4)),
    ("spa-c30-r4", spa.spa, spa.init, {"channels": 30, "reduction": 4}, {}, [(2, 30, 5, 6)],
     lambda: TorchSPA(30, 30, 4)),
    ("spa-psppse-c20-in30-r8", spa.spa, spa.init, {"channels": 20, "reduction": 8, "in_channels": 30}, {},
     [(2, 20, 3, 3), (2, 30, 6, 5)], lambda: TorchSPA(30, 20, 8)),
    ("ge-theta_plus-c30-r4", gather_excite.gather_excite, gather_excite.init,
     {"channels": 30, "variant": "theta_plus", "extent": 2, "reduction": 4}, {}, [(2, 30, 5, 6)],
     lambda: TorchGE(30, "theta_plus", 2, reduction=4)),
    ("sk-c30-r4", sk.sk, sk.init, {"channels": 30, "groups": 6, "reduction": 4, "min_hidden": 2}, {},
     [(2, 30, 5, 6)], lambda: TorchSK(30, 2, 6, 7)),
]

for _variant in ("theta_minus", "theta", "theta_plus"):
    for _extent in (0, 2, 4, 8):
        _kwargs = {"channels": 8, "variant": _variant, "extent": _extent, "feat_size": (7, 6), "reduction": 4}
        CASES.append((f"ge-{_variant}-e{_extent}", gather_excite.gather_excite, gather_excite.init, _kwargs,
                      {}, [(3, 8, 7, 6)],
                      lambda v=_variant, e=_extent: TorchGE(8, v, e, (7, 6), 4)))
CASES.append(("ge-theta_plus-e4-timm", gather_excite.gather_excite, gather_excite.init,
              {"channels": 8, "variant": "theta_plus", "extent": 4, "reduction": 4},
              {"gather_relu": False}, [(3, 8, 9, 7)],
              lambda: TorchGE(8, "theta_plus", 4, reduction=4, gather_relu=False)))


# ---------------------------------------------------------------------------------------------
# the comparison


def _torch_state(params):
    return {k: torch.from_numpy(host(v).copy()) for k, v in params.items()}


def compare_with_twin(apply, params, inputs, module, train, options):
    """Largest |difference| over output, input gradients, parameter gradients and (train) running stats."""
    module = module.double()
    module.load_state_dict(_torch_state(params), strict=True)
    module.train(train)
    torch_inputs = [torch.tensor(host(x), requires_grad=True) for x in inputs]
    out_t = module(*torch_inputs)
    cotangent = np.random.default_rng(99).standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(cotangent))

    floats = {k: v for k, v in params.items() if np.dtype(v.dtype).kind == "f"}
    with npattn.track_running_stats() as new_stats:
        out, pullback = ag.vjp(lambda p, *xs: apply({**params, **p}, *xs, train=train, **options), floats, *inputs)
    grads = pullback(dev(cotangent))

    worst = 0.0

    def check(actual, expected, what):
        nonlocal worst
        actual = host(actual)  # explicit: backend arrays (strict, CuPy) never convert implicitly
        assert_close(actual, expected, rtol=TOL, atol=TOL, name=what)
        worst = max(worst, float(np.max(np.abs(actual - expected.detach().numpy()), initial=0.0)))

    check(out, out_t, "output")
    for i, (g, x_t) in enumerate(zip(grads[1:], torch_inputs)):
        check(g, x_t.grad, f"grad input {i}")
    torch_params = dict(module.named_parameters())
    assert set(torch_params) <= set(floats)
    for name, parameter in torch_params.items():
        expected = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        check(grads[0][name], expected, f"grad {name}")
    buffers = dict(module.named_buffers())
    if train:
        assert set(new_stats) == set(buffers), "every BatchNorm must report its running statistics"
        for name, buffer in buffers.items():
            if name.endswith("num_batches_tracked"):   # 0-d integer counter: exact
                assert int(host(new_stats[name])) == int(buffer), name
                continue
            check(new_stats[name], buffer, f"running stat {name}")
    else:
        assert not new_stats
    return worst


def _structure(apply, init_kwargs):
    """The init keywords that apply takes too (variant, extent, branches, ...): they reach both, as in the registry."""
    accepted = {p.name for p in inspect.signature(apply).parameters.values() if p.kind == p.KEYWORD_ONLY}
    return {k: v for k, v in init_kwargs.items() if k in accepted}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_twin(case, train):
    _, apply, init, kwargs, options, shapes, twin = case
    rng = np.random.default_rng(5)
    params = _randomize_bn(init(rng, **kwargs), rng)
    inputs = [dev(rng.standard_normal(shape)) for shape in shapes]
    worst = compare_with_twin(apply, params, inputs, twin(), train, {**_structure(apply, kwargs), **options})
    print(f"{case[0]} {'train' if train else 'eval'}: max |diff| {worst:.3g}")


def test_every_registered_channel_entry_has_a_twin():
    from tests.torch_tier.test_cnn_beyond import REGISTRY_TWINS as AFTER_SURVEY  # issue 17's entries: twins there
    assert {m.name for m in npattn.mechanisms("channel")} - set(AFTER_SURVEY) == set(REGISTRY_TWINS)


def test_sk_selection_weights_match_twin():
    rng = np.random.default_rng(6)
    params = _randomize_bn(sk.init(rng, 16, branches=3, groups=4, min_hidden=4), rng)
    x = rng.standard_normal((2, 16, 5, 5))
    module = TorchSK(16, 3, 4, 4).double()
    module.load_state_dict(_torch_state(params))
    module.eval()
    with torch.no_grad():
        x_t = torch.from_numpy(x)
        feats = [F.relu(bn(conv(x_t))) for conv, bn in zip(module.convs, module.bns)]
        z = F.relu(module.fc_bn(module.fc(F.adaptive_avg_pool2d(sum(feats), 1))))
        expected = torch.softmax(module.fc_select(z).view(2, 3, 16), dim=1)
    assert_close(host(sk.attention(params, dev(x), branches=3)), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("n_down", [1, 2, 3])
def test_ran_min_input_size_is_where_torch_accepts_the_twin(n_down):
    """The twin (F.max_pool2d(3, 2, 0, ceil_mode=True), Caffe's pooling) runs from min_input_size(n_down) up and
    refuses one less; npattn accepts and refuses the same sizes."""
    smallest = residual_attention.min_input_size(n_down)
    rng = np.random.default_rng(8)
    params = residual_attention.init(rng, 8, n_down=n_down, t=1)
    module = TorchRAN(8, n_down, 1, 1, 1).double().eval()
    module.load_state_dict(_torch_state(params), strict=True)
    with torch.no_grad():
        module(torch.zeros(1, 8, smallest, smallest + 1, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="too small"):
            module(torch.zeros(1, 8, smallest - 1, smallest + 1, dtype=torch.float64))
    residual_attention.ran(params, dev(np.zeros((1, 8, smallest, smallest + 1))), n_down=n_down, t=1)
    with pytest.raises(ValueError, match=f"ran: .*needs at least {smallest}"):
        residual_attention.ran(params, dev(np.zeros((1, 8, smallest - 1, smallest + 1))), n_down=n_down, t=1)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", sorted(REGISTRY_TWINS))
def test_empty_batch_matches_twin(name, train):
    """N = 0, as torch: an empty output, zero parameter gradients, and in training unchanged running
    statistics with num_batches_tracked + 1 (the module counts the call)."""
    case = _registry_case(name)
    _, apply, init, kwargs, options, shapes, twin = case
    rng = np.random.default_rng(5)
    params = _randomize_bn(init(rng, **kwargs), rng)
    inputs = [dev(np.zeros((0,) + shape[1:])) for shape in shapes]
    compare_with_twin(apply, params, inputs, twin(), train, {**_structure(apply, kwargs), **options})
