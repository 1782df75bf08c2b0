"""Cross-framework tier for OCR, IAUnet, FcaNet, RGA and GSoP: independent PyTorch twins.

Each twin is built from torch.nn modules with the official module structure (so its state_dict keys are
npattn's parameter names), loaded with npattn's parameters, and compared in float64 through
:func:`npattn.interop.torch.compare`: the output, the input gradients and every parameter gradient for one
random cotangent, at rtol 1e-10 / atol 1e-12 -- in eval mode and in train mode, where the running
statistics that torch's BatchNorms update in place must equal those npattn reports.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.interop.torch import compare  # noqa: E402
from npattn.testing import to_host  # noqa: E402

pytestmark = pytest.mark.torch
nn = torch.nn
F = torch.nn.functional


# ---------------------------------------------------------------------------------------------
# harness


def _randomised(params, seed=5):
    """npattn params with random BN affine parameters and running statistics, so eval mode is not trivial."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for key, value in params.items():
        host = to_host(value)
        if key.endswith(".running_var"):
            out[key] = ag.from_numpy(rng.uniform(0.5, 2.0, host.shape))
        elif key.endswith(".running_mean") or (key.endswith(".bias") and _is_bn(params, key)):
            out[key] = ag.from_numpy(rng.normal(0.0, 0.3, host.shape))
        elif key.endswith(".weight") and _is_bn(params, key):
            out[key] = ag.from_numpy(rng.uniform(0.5, 1.5, host.shape))
    return out


def _is_bn(params, key):
    return key.rsplit(".", 1)[0] + ".running_mean" in params


def _load(module, params):
    """Load npattn's float64 parameters into the twin (converted to float64 first: no float32 rounding)."""
    module.double()
    state = {k: torch.from_numpy(to_host(v).copy()) for k, v in params.items()}
    module.load_state_dict(state, strict=True)
    for key, value in module.state_dict().items():  # the twin holds exactly npattn's numbers
        np.testing.assert_array_equal(value.numpy(), to_host(params[key]), err_msg=key)
    return module


def _check(module, name, params, inputs, train, config, **options):
    """compare() of the twin built with ``config`` in the given mode; in train mode compare() also checks
    the updated running statistics of every BatchNorm (a ``running`` row each)."""
    _load(module, params)
    report = compare(module, name, *inputs, train=train, config=config, **options)
    assert report.ok, str(report)
    bn_keys = [k for k in params if k.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]
    prefix = "running" if train else "buffer"
    assert all(any(row.startswith(f"{prefix} {key}") for row in report.compared) for key in bn_keys), str(report)
    assert not train or bn_keys, "these twins have BatchNorms: train mode must compare their statistics"
    return report


def _inputs(*shapes, seed=11, scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) * scale for shape in shapes]


MODES = [pytest.param(False, id="eval"), pytest.param(True, id="train")]


def _bn_relu(channels):
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


# ---------------------------------------------------------------------------------------------
# OCR


class TorchObjectAttention(nn.Module):
    def __init__(self, channels, key_channels, pool_scale):
        super().__init__()
        self.key_channels, self.pool_scale = key_channels, pool_scale

        def conv(i, o):
            return nn.Conv2d(i, o, 1, bias=False)

        self.f_pixel = nn.Sequential(conv(channels, key_channels), _bn_relu(key_channels),
                                     conv(key_channels, key_channels), _bn_relu(key_channels))
        self.f_object = nn.Sequential(conv(channels, key_channels), _bn_relu(key_channels),
                                      conv(key_channels, key_channels), _bn_relu(key_channels))
        self.f_down = nn.Sequential(conv(channels, key_channels), _bn_relu(key_channels))
        self.f_up = nn.Sequential(conv(key_channels, channels), _bn_relu(channels))

    def forward(self, x, proxy):
        size = x.shape[2:]
        if self.pool_scale > 1:
            x = F.max_pool2d(x, self.pool_scale)
        q = self.f_pixel(x).flatten(2).transpose(1, 2)             # (B, hw, Ck)
        k = self.f_object(proxy).flatten(2)                         # (B, Ck, K)
        v = self.f_down(proxy).flatten(2).transpose(1, 2)           # (B, K, Ck)
        sim = torch.softmax(torch.bmm(q, k) / math.sqrt(self.key_channels), dim=-1)
        ctx = torch.bmm(sim, v).transpose(1, 2).reshape(x.shape[0], self.key_channels, *x.shape[2:])
        ctx = self.f_up(ctx)
        if self.pool_scale > 1:
            ctx = F.interpolate(ctx, size=size, mode="bilinear", align_corners=True)
        return ctx


class TorchOCR(nn.Module):
    def __init__(self, channels, key_channels, out_channels, gather_scale=1.0, pool_scale=1):
        super().__init__()
        self.gather_scale = gather_scale
        self.object_context_block = TorchObjectAttention(channels, key_channels, pool_scale)
        self.conv_bn_dropout = nn.Sequential(nn.Conv2d(2 * channels, out_channels, 1, bias=False),
                                             _bn_relu(out_channels), nn.Dropout2d(0.0))

    def forward(self, feats, coarse):
        regions = torch.softmax(self.gather_scale * coarse.flatten(2), dim=2)         # (B, K, HW)
        proxy = torch.bmm(regions, feats.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(3)  # (B, C, K, 1)
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("gather_scale,pool_scale", [(1.0, 1), (2.0, 2)])
def test_ocr(train, gather_scale, pool_scale):
    config = {"in_channels": 12, "key_channels": 6, "out_channels": 10}
    params = _randomised(npattn.get("ocr").init(np.random.default_rng(0), **config))
    feats, coarse = _inputs((2, 12, 7, 6), (2, 4, 7, 6))
    _check(TorchOCR(12, 6, 10, gather_scale, pool_scale), "ocr", params, (feats, coarse), train, config,
           gather_scale=gather_scale, pool_scale=pool_scale)


# ---------------------------------------------------------------------------------------------
# IAUnet


class TorchConvBN3d(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv, self.bn = nn.Conv3d(i, o, 1), nn.BatchNorm3d(o)

    def forward(self, x):
        return self.bn(self.conv(x))


class TorchSA(nn.Module):
    def __init__(self, channels, parts):
        super().__init__()
        self.conv = TorchConvBN3d(channels, parts)


class TorchWcompute(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.relation = nn.Sequential(nn.Conv2d(2 * c, 1, 1), nn.BatchNorm2d(1))

    def forward(self, nodes, context, blocked):
        b, n, c = nodes.shape
        diff = (nodes[:, :, None, :] - nodes[:, None, :, :]).abs().permute(0, 3, 1, 2)     # (B, c, i, j)
        edges = torch.cat([diff, context.view(b, c, 1, 1).expand(b, c, n, n)], 1)
        logits = self.relation(edges)[:, 0] - blocked * 1e8                                   # official masking
        return torch.softmax(logits, dim=2)


class TorchGconv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fsm = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, adjacency, nodes):
        b, n, c = nodes.shape
        stacked = torch.cat([nodes, torch.bmm(adjacency, nodes)], 2).reshape(b * n, 2 * c, 1, 1)
        return self.fsm(stacked).view(b, n, c)


class TorchSTIAU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.module_w, self.module_l = TorchWcompute(c), TorchGconv(c)

    def forward(self, parts, context):
        b, t, p, c = parts.shape
        eye = torch.eye(p, dtype=parts.dtype)
        blocked = (1 - eye).repeat(t, t)
        for i in range(t):
            blocked[i * p:(i + 1) * p, i * p:(i + 1) * p] = eye
        nodes = parts.reshape(b, t * p, c)
        return self.module_l(self.module_w(nodes, context, blocked), nodes).view(b, t, p, c)


class TorchIAU(nn.Module):
    """IAUBlock3D on (B, C, T, H, W), or on a (B, T, C, H, W) clip with ``clip_first=True``."""

    def __init__(self, channels, parts=4, clip_first=True):
        super().__init__()
        self.clip_first = clip_first
        self.W1 = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.BatchNorm3d(channels))
        self.SA = TorchSA(channels, parts)
        self.g = nn.Conv2d(channels, channels // 2, 1)
        self.STIAU = TorchSTIAU(channels // 2)
        self.W2 = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.BatchNorm3d(channels))

    def forward(self, x):
        if self.clip_first:
            x = x.transpose(1, 2)
        b, c, t, h, w = x.shape
        nodes = x.reshape(b, c * t, h * w)
        y = torch.bmm(torch.softmax(torch.bmm(nodes, nodes.transpose(1, 2)), -1), nodes).view_as(x)
        z = x + self.W1(y)
        u = z.flatten(2).mean(2)                                                         # (B, C)
        a = torch.sigmoid(self.SA.conv(z)).transpose(1, 2).reshape(b * t, -1, h * w)   # (BT, P, HW)
        parts = torch.bmm(a, z.transpose(1, 2).reshape(b * t, c, h * w).transpose(1, 2)).view(b, t, -1, c)
        p = parts.shape[2]
        reduced = self.g(torch.cat([parts.reshape(-1, c), u], 0)[:, :, None, None]).flatten(1)
        parts, u = reduced[: b * t * p].view(b, t, p, -1), reduced[b * t * p:]
        s = self.STIAU(parts, u).mean(2)                                                 # (B, T, C/2)
        v = torch.cat([s, u[:, None, :].expand_as(s)], 2).transpose(1, 2)[..., None, None]
        out = self.W2(v) + z
        return out.transpose(1, 2) if self.clip_first else out


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("layout", ["btchw", "bcthw"])
def test_iau(train, layout):
    config = {"in_channels": 12, "zero_init": False}
    params = _randomised(npattn.get("iau").init(np.random.default_rng(0), **config))
    (clip,) = _inputs((2, 3, 12, 4, 5), scale=0.5)
    if layout == "bcthw":
        clip = clip.transpose(0, 2, 1, 3, 4).copy()
    _check(TorchIAU(12, clip_first=layout == "btchw"), "iau", params, (clip,), train, config, layout=layout)


def test_iau_zero_init_is_identity_and_single_frame_works():
    params = npattn.get("iau").init(np.random.default_rng(0), 8)              # official zero-init
    (clip,) = _inputs((2, 3, 8, 3, 3))
    np.testing.assert_array_equal(npattn.get("iau").apply(params, ag.from_numpy(clip)).numpy(), clip)
    config = {"in_channels": 8, "zero_init": False}
    params = _randomised(npattn.get("iau").init(np.random.default_rng(1), **config))
    (single,) = _inputs((3, 1, 8, 3, 3), scale=0.5)                             # T = 1: parts see their own frame only
    _check(TorchIAU(8), "iau", params, (single,), False, config)


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("frames,parts", [(1, 1), (2, 1), (1, 2)])
def test_iau_few_nodes_match_the_official_fill(frames, parts, train):
    """T = P = 1 leaves the single node no allowed neighbour: the official -1e8 fill gives it its own weight 1,
    and npattn agrees with the twin's literal ``logits - W_init * 1e8`` (a zero-weight mask would not)."""
    config = {"in_channels": 8, "num_parts": parts, "zero_init": False}
    params = _randomised(npattn.get("iau").init(np.random.default_rng(1), **config))
    (clip,) = _inputs((3, frames, 8, 3, 3), scale=0.5)
    _check(TorchIAU(8, parts=parts), "iau", params, (clip,), train, config)


# ---------------------------------------------------------------------------------------------
# FcaNet


def _official_dct_filters(channels, dct_h, dct_w, us, vs):
    """The official filter construction (explicit cosines), in float64."""
    def b(pos, freq, length):
        value = math.cos(math.pi * freq * (pos + 0.5) / length) / math.sqrt(length)
        return value * (math.sqrt(2) if freq else 1.0)

    filters = torch.zeros(channels, dct_h, dct_w, dtype=torch.float64)
    part = channels // len(us)
    for k, (u, v) in enumerate(zip(us, vs)):
        for i in range(dct_h):
            for j in range(dct_w):
                filters[k * part:(k + 1) * part, i, j] = b(i, u, dct_h) * b(j, v, dct_w)
    return filters


class TorchDCTLayer(nn.Module):
    def __init__(self, filters):
        super().__init__()
        self.register_buffer("weight", filters)


class TorchFca(nn.Module):
    def __init__(self, channels, dct_h, dct_w, reduction, us, vs):
        super().__init__()
        self.dct_size = (dct_h, dct_w)
        self.dct_layer = TorchDCTLayer(_official_dct_filters(channels, dct_h, dct_w, us, vs))
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        pooled = x if tuple(x.shape[2:]) == self.dct_size else F.adaptive_avg_pool2d(x, self.dct_size)
        spectrum = (pooled * self.dct_layer.weight).sum((2, 3))
        return x * self.fc(spectrum)[:, :, None, None]


@pytest.mark.parametrize("method,dct,size", [("top16", 7, (9, 9)), ("low16", 7, (7, 7)), ("bot16", 14, (20, 17)),
                                             ("top32", 14, (14, 14)), ("low4", 5, (6, 6))])
def test_fca(method, dct, size):
    from npattn.frequency.fca import scaled_frequencies

    config = {"channels": 32, "dct_h": dct, "dct_w": dct, "reduction": 4, "freq_sel_method": method}
    params = npattn.get("fca").init(np.random.default_rng(0), **config)
    us, vs = scaled_frequencies(method, dct, dct)
    twin = TorchFca(32, dct, dct, 4, us, vs)
    # the filters from the core's DCT basis equal the official explicit-cosine construction
    np.testing.assert_allclose(to_host(params["dct_layer.weight"]), twin.dct_layer.weight.numpy(), rtol=0, atol=1e-15)
    (x,) = _inputs((2, 32) + size)
    _check(twin, "fca", params, (x,), False, config)


# ---------------------------------------------------------------------------------------------
# RGA


def _conv_bn_relu(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def _gate_net(descriptor, down):
    hidden = descriptor // down
    return nn.Sequential(nn.Conv2d(descriptor, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1))


class TorchRGA(nn.Module):
    def __init__(self, channels, spatial, use_spatial, use_channel, ratio=8, down=8, order="sc"):
        super().__init__()
        self.order = order
        ci, ni = channels // ratio, spatial // ratio
        self.use_spatial, self.use_channel = use_spatial, use_channel
        if use_spatial:
            self.theta_spatial, self.phi_spatial = _conv_bn_relu(channels, ci), _conv_bn_relu(channels, ci)
            self.gx_spatial, self.gg_spatial = _conv_bn_relu(channels, ci), _conv_bn_relu(2 * spatial, ni)
            self.W_spatial = _gate_net(1 + ni, down)
        if use_channel:
            self.theta_channel, self.phi_channel = _conv_bn_relu(spatial, ni), _conv_bn_relu(spatial, ni)
            self.gx_channel, self.gg_channel = _conv_bn_relu(spatial, ni), _conv_bn_relu(2 * channels, ci)
            self.W_channel = _gate_net(1 + ci, down)

    def _spatial(self, x):
        b, c, h, w = x.shape
        theta = self.theta_spatial(x).flatten(2)
        phi = self.phi_spatial(x).flatten(2)
        g = torch.einsum("bkp,bkq->bpq", theta, phi)
        joint = torch.cat([g.transpose(1, 2).reshape(b, h * w, h, w), g.reshape(b, h * w, h, w)], 1)
        ys = torch.cat([self.gx_spatial(x).mean(1, keepdim=True), self.gg_spatial(joint)], 1)
        return torch.sigmoid(self.W_spatial(ys)) * x

    def _channel(self, x):
        b, c, h, w = x.shape
        xc = x.flatten(2).transpose(1, 2).unsqueeze(-1)                  # (B, N, C, 1)
        theta = self.theta_channel(xc)[..., 0]                            # (B, Ni, C)
        phi = self.phi_channel(xc)[..., 0]
        g = torch.einsum("bkp,bkq->bpq", theta, phi)                      # (B, C, C)
        joint = torch.cat([g.transpose(1, 2), g], 1).unsqueeze(-1)
        yc = torch.cat([self.gx_channel(xc).mean(1, keepdim=True), self.gg_channel(joint)], 1)
        return torch.sigmoid(self.W_channel(yc).transpose(1, 2)) * x

    def forward(self, x):
        for branch in self.order:
            if branch == "s" and self.use_spatial:
                x = self._spatial(x)
            if branch == "c" and self.use_channel:
                x = self._channel(x)
        return x


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("name,spatial,channel,order", [("rga", True, True, "sc"), ("rga", True, True, "cs"),
                                                         ("rga-s", True, False, "sc"), ("rga-c", False, True, "sc")])
def test_rga(train, name, spatial, channel, order):
    config = {"in_channel": 64, "in_spatial": 72, "use_spatial": spatial, "use_channel": channel}
    params = _randomised(npattn.get(name).init(np.random.default_rng(0), **config))
    (x,) = _inputs((2, 64, 8, 9))
    _check(TorchRGA(64, 72, spatial, channel, order=order), name, params, (x,), train, config, order=order)


# ---------------------------------------------------------------------------------------------
# GSoP


class TorchGSoP(nn.Module):
    """GSoP-Net1 channel attention; ``covpool="official"`` forms MPNCOV's X I_hat X^T with an M x M I_hat,
    ``"centred"`` the same covariance from centred features (no M x M matrix; used for timing)."""

    def __init__(self, channels, att_dim, stride=1, covpool="official"):
        super().__init__()
        self.covpool = covpool
        self.conv_for_DR = nn.Conv2d(channels, att_dim, 1, stride=stride, bias=True)
        self.bn_for_DR = nn.BatchNorm2d(att_dim)
        self.row_bn = nn.BatchNorm2d(att_dim)
        self.row_conv_group = nn.Conv2d(att_dim, 4 * att_dim, (att_dim, 1), groups=att_dim, bias=True)
        self.fc_adapt_channels = nn.Conv2d(4 * att_dim, channels, 1, bias=True)

    def forward(self, x):
        t = torch.relu(self.bn_for_DR(self.conv_for_DR(torch.relu(x))))
        b, d, h, w = t.shape
        m = h * w
        features = t.reshape(b, d, m)
        if self.covpool == "official":
            i_hat = (torch.eye(m, dtype=t.dtype) - torch.full((m, m), 1.0 / m, dtype=t.dtype)) / m
            cov = features @ i_hat @ features.transpose(1, 2)
        else:
            centred = features - features.mean(2, keepdim=True)
            cov = centred @ centred.transpose(1, 2) / m
        att = torch.sigmoid(self.fc_adapt_channels(self.row_conv_group(self.row_bn(cov.unsqueeze(-1)))))
        return x * att


@pytest.mark.parametrize("train", MODES)
@pytest.mark.parametrize("stride,covpool", [(1, "official"), (2, "official"), (1, "centred")])
def test_gsop(train, stride, covpool):
    config = {"channels": 24, "att_dim": 6}
    params = _randomised(npattn.get("gsop").init(np.random.default_rng(0), **config))
    (x,) = _inputs((3, 24, 7, 6))
    _check(TorchGSoP(24, 6, stride, covpool), "gsop", params, (x,), train, config, stride=stride)
