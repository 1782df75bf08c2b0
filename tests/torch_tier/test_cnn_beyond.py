"""Cross-framework tier for the CNN attention modules after the survey (issue 17): Coordinate Attention, SimAM,
SGE, Triplet Attention, Polarized Self-Attention, External Attention, CoTNet's CotLayer, GCT, SRM, ResNeSt
Split-Attention, SA-Net Shuffle Attention.

Each twin is an independent torch.nn module written from the authors' official code (the file named in its
docstring), with the official submodule and parameter names, so npattn's parameters load with
``load_state_dict(strict=True)`` and the twin's ``state_dict`` loads into npattn with
``npattn.interop.torch.from_torch_state_dict`` (a key map only where npattn's names differ).  BatchNorm
parameters and running statistics are randomised first.  In float64, for one random cotangent, the output, the
gradient of every input and of every torch parameter and -- in train mode -- every updated BatchNorm buffer must
agree to 1e-10 (``tests/torch_tier/test_channel.py: compare_with_twin``).  Where the official code views with
``-1``, the twins give the size explicitly (the same numbers; an empty batch cannot infer it, and the empty-batch
twin tests need N = 0 to run).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.channel import coord, gct, sge, split_attention, srm  # noqa: E402
from npattn.hybrid import psa, shuffle_attention, simam, triplet  # noqa: E402
from npattn.interop.torch import from_torch_state_dict  # noqa: E402
from npattn.self_attention import cot, external  # noqa: E402
from npattn.testing import assert_close  # noqa: E402
from tests.conftest import dev, host  # noqa: E402
from tests.npattn.test_channel import _randomize_bn  # noqa: E402
from tests.torch_tier.test_channel import compare_with_twin  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10


# ---------------------------------------------------------------------------------------------
# twins, from the official code


class TorchHSwish(nn.Module):
    """houqb/CoordAttention h_swish: x * ReLU6(x + 3) / 6."""

    def forward(self, x):
        return x * (F.relu6(x + 3) / 6)


class TorchCoordAtt(nn.Module):
    """houqb/CoordAttention coordatt.py CoordAtt(inp, oup, reduction): pools, shared conv1-bn1-h_swish, two gates."""

    def __init__(self, inp, reduction=32, min_mip=8, bias=True, act="h_swish"):
        super().__init__()
        mip = max(min_mip, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = TorchHSwish() if act == "h_swish" else nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, inp, 1, bias=bias)
        self.conv_w = nn.Conv2d(mip, inp, 1, bias=bias)

    def forward(self, x):
        h, w = x.shape[2:]
        x_h = F.adaptive_avg_pool2d(x, (None, 1))
        x_w = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_w * a_h


class TorchSimAM(nn.Module):
    """ZjjConan/SimAM simam_module: n = H*W - 1, lambda = 1e-4 (``unbiased=False``: n = H*W)."""

    def __init__(self, e_lambda=1e-4, unbiased=True):
        super().__init__()
        self.e_lambda, self.unbiased = e_lambda, unbiased

    def forward(self, x):
        n = x.shape[2] * x.shape[3] - (1 if self.unbiased else 0)
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = x_minus_mu_square / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda)) + 0.5
        return x * torch.sigmoid(y)


class TorchSGE(nn.Module):
    """implus/PytorchInsight resnet_sge.py SpatialGroupEnhance(groups): unbiased std + 1e-5 (``unbiased=False``:
    the biased std)."""

    def __init__(self, groups=64, unbiased=True):
        super().__init__()
        self.groups, self.unbiased = groups, unbiased
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x):
        b, c, h, w = x.size()
        x = x.view(b * self.groups, c // self.groups, h, w)
        xn = (x * F.adaptive_avg_pool2d(x, 1)).sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, h * w)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True, unbiased=self.unbiased) + 1e-5)
        t = t.view(b, self.groups, h, w) * self.weight + self.bias
        return (x * torch.sigmoid(t.view(b * self.groups, 1, h, w))).view(b, c, h, w)


class TorchBasicConv(nn.Module):
    """landskape-ai/triplet-attention BasicConv(2, 1, 7, padding=3, relu=False): conv without bias, BN momentum 0.01."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class TorchAttentionGate(nn.Module):
    """AttentionGate: ZPool [max; mean] over dim 1, BasicConv, sigmoid, scale."""

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = TorchBasicConv(kernel_size)

    def forward(self, x):
        z = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.conv(z))


class TorchTriplet(nn.Module):
    """triplet_attention.py (root) TripletAttention(no_spatial): cw on x.permute(0, 2, 1, 3), hc on
    x.permute(0, 3, 2, 1), hw on x; 1/3 (hw + cw + hc)."""

    def __init__(self, no_spatial=False, kernel_size=7):
        super().__init__()
        self.cw, self.hc = TorchAttentionGate(kernel_size), TorchAttentionGate(kernel_size)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.hw = TorchAttentionGate(kernel_size)

    def forward(self, x):
        out_cw = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        out_hc = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        if self.no_spatial:
            return 1 / 2 * (out_cw + out_hc)
        return 1 / 3 * (self.hw(x) + out_cw + out_hc)


class TorchModelsSpatialGate(nn.Module):
    """MODELS/triplet_attention.py SpatialGate: the same gate, its BasicConv named ``spatial``."""

    def __init__(self):
        super().__init__()
        self.spatial = TorchBasicConv()

    def forward(self, x):
        z = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.spatial(z))


class TorchTripletModels(nn.Module):
    """MODELS/triplet_attention.py TripletAttention: ChannelGateH, ChannelGateW, SpatialGate."""

    def __init__(self):
        super().__init__()
        self.ChannelGateH, self.ChannelGateW, self.SpatialGate = (TorchModelsSpatialGate(), TorchModelsSpatialGate(),
                                                                  TorchModelsSpatialGate())

    def forward(self, x):
        out_h = self.ChannelGateH(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        out_w = self.ChannelGateW(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        return (1 / 3) * (self.SpatialGate(x) + out_h + out_w)


class TorchPSA(nn.Module):
    """DeLightCMU/PSA network/PSA.py PSA_p / PSA_s (planes = inplanes), with the method names swapped as in the
    official file: ``spatial_pool`` is the channel-only branch, ``channel_pool`` the spatial-only one.

    ``form="paper"``: conv_up = Conv(IC -> C) + LayerNorm([C, 1, 1]); the pooled query softmaxed over IC before the
    product.  ``qkv_bias``: a bias on every 1x1 conv.
    """

    def __init__(self, planes, layout="parallel", form="official", qkv_bias=False):
        super().__init__()
        self.layout, self.form = layout, form
        self.inter_planes = planes // 2
        self.conv_q_right = nn.Conv2d(planes, 1, 1, bias=qkv_bias)
        self.conv_v_right = nn.Conv2d(planes, self.inter_planes, 1, bias=qkv_bias)
        if form == "paper":
            self.conv_up = nn.Sequential(nn.Conv2d(self.inter_planes, planes, 1, bias=qkv_bias),
                                         nn.LayerNorm([planes, 1, 1]))
        elif layout == "parallel":
            self.conv_up = nn.Conv2d(self.inter_planes, planes, 1, bias=qkv_bias)
        else:
            self.conv_up = nn.Sequential(nn.Conv2d(self.inter_planes, self.inter_planes // 4, 1),
                                         nn.LayerNorm([self.inter_planes // 4, 1, 1]), nn.ReLU(inplace=True),
                                         nn.Conv2d(self.inter_planes // 4, planes, 1))
        self.conv_q_left = nn.Conv2d(planes, self.inter_planes, 1, bias=qkv_bias)
        self.conv_v_left = nn.Conv2d(planes, self.inter_planes, 1, bias=qkv_bias)

    def spatial_pool(self, x):
        input_x = self.conv_v_right(x)
        batch, channel, height, width = input_x.size()
        input_x = input_x.view(batch, channel, height * width)
        context_mask = F.softmax(self.conv_q_right(x).view(batch, 1, height * width), dim=2)
        context = torch.matmul(input_x, context_mask.transpose(1, 2)).unsqueeze(-1)
        return x * torch.sigmoid(self.conv_up(context))

    def channel_pool(self, x):
        g_x = self.conv_q_left(x)
        batch, channel, height, width = g_x.size()
        avg_x = F.adaptive_avg_pool2d(g_x, 1).view(batch, channel, 1).permute(0, 2, 1)
        theta_x = self.conv_v_left(x).view(batch, self.inter_planes, height * width)
        if self.form == "paper":
            context = torch.matmul(F.softmax(avg_x, dim=2), theta_x)
        elif self.layout == "parallel":
            context = F.softmax(torch.matmul(avg_x, theta_x), dim=2)
        else:
            context = torch.matmul(avg_x, F.softmax(theta_x, dim=2))
        return x * torch.sigmoid(context.view(batch, 1, height, width))

    def forward(self, x):
        if self.layout == "parallel":
            return self.channel_pool(x) + self.spatial_pool(x)
        return self.channel_pool(self.spatial_pool(x))


class TorchExternal(nn.Module):
    """MenghaoGuo/EANet model_torch.py External_attention(c) with k memory units (nn.BatchNorm2d for the
    synchronized BN); ``bare``: linear_0, the double normalisation and linear_1 only."""

    def __init__(self, c, k=64, bare=False, eps=1e-9):
        super().__init__()
        self.bare, self.eps = bare, eps
        if not bare:
            self.conv1 = nn.Conv2d(c, c, 1)
        self.linear_0 = nn.Conv1d(c, k, 1, bias=False)
        self.linear_1 = nn.Conv1d(k, c, 1, bias=False)
        if not bare:
            self.conv2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        idn = x
        if not self.bare:
            x = self.conv1(x)
        b, c, h, w = x.size()
        attn = F.softmax(self.linear_0(x.view(b, c, h * w)), dim=-1)
        attn = attn / (self.eps + attn.sum(dim=1, keepdim=True))
        x = self.linear_1(attn).view(b, c, h, w)
        if self.bare:
            return x
        return F.relu(self.conv2(x) + idn)


def torch_aggregation_zeropad(x, w, kernel_size):
    """JDAI-CV/CoTNet cupy_layers/aggregation_zeropad.py, as its own test_aggregation_zeropad computes it
    with unfold (asserted there to equal the CUDA kernel to 1e-9): x (n, c_x, H, W), w (n, heads, c_w, k², H, W)."""
    n, c_x, height, width = x.shape
    _, heads, c_w = w.shape[:3]
    unfold_j = nn.Unfold(kernel_size=kernel_size, dilation=1, padding=(kernel_size - 1) // 2, stride=1)
    x2 = unfold_j(x).view(n, c_x // c_w, c_w, kernel_size * kernel_size, height, width)
    return (w.unsqueeze(2) * x2.unsqueeze(1)).sum(-3).view(n, heads * c_x, height, width)


class TorchCotLayer(nn.Module):
    """JDAI-CV/CoTNet models/cotnet.py CotLayer(dim, kernel_size), LocalConvolution as its unfold expression."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, stride=1, padding=kernel_size // 2, groups=4, bias=False),
            nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        share_planes, factor = 8, 2
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, dim // factor, 1, bias=False), nn.BatchNorm2d(dim // factor), nn.ReLU(inplace=True),
            nn.Conv2d(dim // factor, pow(kernel_size, 2) * dim // share_planes, kernel_size=1),
            nn.GroupNorm(num_groups=dim // share_planes, num_channels=pow(kernel_size, 2) * dim // share_planes))
        self.conv1x1 = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.SiLU(inplace=True)
        self.radix = 2
        attn_chs = max(dim * self.radix // 4, 32)
        self.se = nn.Sequential(nn.Conv2d(dim, attn_chs, 1), nn.BatchNorm2d(attn_chs), nn.ReLU(inplace=True),
                                nn.Conv2d(attn_chs, self.radix * dim, 1))

    def forward(self, x):
        k = self.key_embed(x)
        qk = torch.cat([x, k], dim=1)
        b, c, qk_hh, qk_ww = qk.size()
        w = self.embed(qk).view(b, 1, self.dim // 8, self.kernel_size * self.kernel_size, qk_hh, qk_ww)
        x = self.act(self.bn(torch_aggregation_zeropad(self.conv1x1(x), w, self.kernel_size)))
        B, C, H, W = x.shape
        x = torch.cat([x.view(B, C, 1, H, W), k.view(B, C, 1, H, W)], dim=2)
        x_attn = self.se(x.sum(dim=2).mean((2, 3), keepdim=True)).view(B, C, self.radix)
        x_attn = F.softmax(x_attn, dim=2)
        return (x * x_attn.reshape((B, C, self.radix, 1, 1))).sum(dim=2)


class TorchGCT(nn.Module):
    """z-x-yang/GCT PyTorch/GCT.py GCT(num_channels, epsilon, mode, after_relu)."""

    def __init__(self, num_channels, epsilon=1e-5, mode="l2", after_relu=False):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.epsilon, self.mode, self.after_relu = epsilon, mode, after_relu

    def forward(self, x):
        if self.mode == "l2":
            embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        else:
            _x = x if self.after_relu else torch.abs(x)
            embedding = _x.sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (torch.abs(embedding).mean(dim=1, keepdim=True) + self.epsilon)
        gate = 1.0 + torch.tanh(embedding * norm + self.beta)
        return x * gate


class TorchSRM(nn.Module):
    """hyunjaelee410/style-based-recalibration-module models/recalibration_modules.py SRMLayer(channel) at f6221c7
    (unbiased var + 1e-5, then sqrt); ``std_mode="std"``: the initial commit's ``std(dim=2)``."""

    def __init__(self, channel, std_mode="var_eps"):
        super().__init__()
        self.cfc = nn.Parameter(torch.zeros(channel, 2))
        self.bn = nn.BatchNorm2d(channel)
        self.std_mode = std_mode

    def _style_pooling(self, x, eps=1e-5):
        n, c = x.shape[:2]
        flat = x.view(n, c, x.shape[2] * x.shape[3])
        channel_mean = flat.mean(dim=2, keepdim=True)
        if self.std_mode == "std":
            channel_std = flat.std(dim=2).view(n, c, 1)
        else:
            channel_std = (flat.var(dim=2, keepdim=True) + eps).sqrt()
        return torch.cat((channel_mean, channel_std), dim=2)

    def forward(self, x):
        z = torch.sum(self._style_pooling(x) * self.cfc[None, :, :], dim=2)[:, :, None, None]
        return x * torch.sigmoid(self.bn(z))


class TorchRSoftMax(nn.Module):
    """ResNeSt splat.py rSoftMax(radix, cardinality)."""

    def __init__(self, radix, cardinality):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x):
        batch = x.size(0)
        if self.radix > 1:
            x = x.view(batch, self.cardinality, self.radix, x.shape[1] // (self.cardinality * self.radix))
            return F.softmax(x.transpose(1, 2), dim=1).reshape(batch, x.shape[1] * x.shape[2] * x.shape[3])
        return torch.sigmoid(x)


class TorchSplAtConv2d(nn.Module):
    """zhanghang1989/ResNeSt resnest/torch/models/splat.py SplAtConv2d (no rectify, no DropBlock)."""

    def __init__(self, in_channels, channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=False,
                 radix=2, reduction_factor=4, norm=True):
        super().__init__()
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        self.radix, self.cardinality, self.channels = radix, groups, channels
        self.conv = nn.Conv2d(in_channels, channels * radix, kernel_size, stride, padding, dilation,
                              groups=groups * radix, bias=bias)
        self.use_bn = norm
        if norm:
            self.bn0 = nn.BatchNorm2d(channels * radix)
        self.fc1 = nn.Conv2d(channels, inter_channels, 1, groups=self.cardinality)
        if norm:
            self.bn1 = nn.BatchNorm2d(inter_channels)
        self.fc2 = nn.Conv2d(inter_channels, channels * radix, 1, groups=self.cardinality)
        self.rsoftmax = TorchRSoftMax(radix, groups)

    def forward(self, x):
        x = self.conv(x)
        if self.use_bn:
            x = self.bn0(x)
        x = F.relu(x)
        batch, rchannel = x.shape[:2]
        if self.radix > 1:
            splited = torch.split(x, rchannel // self.radix, dim=1)
            gap = sum(splited)
        else:
            gap = x
        gap = self.fc1(F.adaptive_avg_pool2d(gap, 1))
        if self.use_bn:
            gap = self.bn1(gap)
        atten = self.fc2(F.relu(gap))
        atten = self.rsoftmax(atten).view(batch, rchannel, 1, 1)
        if self.radix > 1:
            attens = torch.split(atten, rchannel // self.radix, dim=1)
            return sum([att * split for (att, split) in zip(attens, splited)]).contiguous()
        return (atten * x).contiguous()


class TorchShuffleAttention(nn.Module):
    """wofmanaf/SA-Net models/sa_resnet.py sa_layer(channel, groups)."""

    def __init__(self, channel, groups=64):
        super().__init__()
        self.groups = groups
        half = channel // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    @staticmethod
    def channel_shuffle(x, groups):
        b, c, h, w = x.shape
        return x.reshape(b, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        xn = x_0 * torch.sigmoid(self.cweight * F.adaptive_avg_pool2d(x_0, 1) + self.cbias)
        xs = x_1 * torch.sigmoid(self.sweight * self.gn(x_1) + self.sbias)
        out = torch.cat([xn, xs], dim=1).reshape(b, c, h, w)
        return self.channel_shuffle(out, 2)


# ---------------------------------------------------------------------------------------------
# cases: (id, npattn apply, npattn init, init kwargs, apply options, input shapes, twin factory)

#: a twin for every registry entry of this issue, built for its default config
REGISTRY_TWINS = {
    "coord": lambda: TorchCoordAtt(16, reduction=4, min_mip=2),
    "simam": lambda: TorchSimAM(),
    "sge": lambda: TorchSGE(4),
    "triplet": lambda: TorchTriplet(),
    "psa-p": lambda: TorchPSA(16, "parallel"),
    "psa-s": lambda: TorchPSA(16, "sequential"),
    "external": lambda: TorchExternal(16, 8),
    "cot": lambda: TorchCotLayer(16),
    "gct": lambda: TorchGCT(16),
    "srm": lambda: TorchSRM(16),
    "split-attention": lambda: TorchSplAtConv2d(16, 16, groups=2),
    "shuffle-attention": lambda: TorchShuffleAttention(16, 2),
}


def _registry_case(name):
    mech = npattn.get(name)
    shapes = [tuple(x.shape) for x in mech.example_input(np.random.default_rng(0))]
    options = {**mech.structure, **mech.options}
    return (name, mech.apply_fn, mech.init, mech.config, options, shapes, REGISTRY_TWINS[name])


def _random_affine(init):
    """``init`` with every parameter redrawn from N(0, 1): the official zero/one inits hide parts of the map."""

    def random_init(rng, **kwargs):
        return {k: dev(rng.standard_normal(v.shape)) for k, v in init(rng, **kwargs).items()}

    return random_init


CASES = [_registry_case(name) for name in REGISTRY_TWINS] + [
    ("coord-official-c64", coord.coord, coord.init, {"channels": 64}, {}, [(3, 64, 6, 5)],
     lambda: TorchCoordAtt(64)),
    ("coord-nobias-hardswish", coord.coord, coord.init, {"channels": 16, "reduction": 4, "bias": False},
     {"bias": False, "act": "hardswish"}, [(2, 16, 4, 3)], lambda: TorchCoordAtt(16, 4, bias=False, act="hardswish")),
    ("coord-1x1-map", coord.coord, coord.init, {"channels": 8}, {}, [(3, 8, 1, 1)], lambda: TorchCoordAtt(8)),
    ("coord-1x9-map", coord.coord, coord.init, {"channels": 8}, {}, [(2, 8, 1, 9)], lambda: TorchCoordAtt(8)),
]
CASES += [
    ("simam-biased-lambda", simam.simam, simam.init, {}, {"unbiased": False, "e_lambda": 0.3}, [(2, 3, 4, 5)],
     lambda: TorchSimAM(0.3, unbiased=False)),
    ("simam-1x2-map", simam.simam, simam.init, {}, {}, [(3, 2, 1, 2)], TorchSimAM),
    ("simam-3x1-map", simam.simam, simam.init, {}, {}, [(1, 2, 3, 1)], TorchSimAM),
]
CASES += [
    ("sge-random-affine", sge.sge, _random_affine(sge.init), {"channels": 24, "groups": 3}, {}, [(2, 24, 5, 6)],
     lambda: TorchSGE(3)),
    ("sge-biased-std", sge.sge, _random_affine(sge.init), {"channels": 8, "groups": 8}, {"unbiased": False},
     [(3, 8, 4, 3)], lambda: TorchSGE(8, unbiased=False)),
    ("sge-one-group-1x2-map", sge.sge, _random_affine(sge.init), {"channels": 5, "groups": 1}, {}, [(2, 5, 1, 2)],
     lambda: TorchSGE(1)),
]
CASES += [
    ("triplet-no-spatial", triplet.triplet, triplet.init, {"no_spatial": True}, {"no_spatial": True},
     [(3, 5, 4, 6)], lambda: TorchTriplet(no_spatial=True)),
    ("triplet-c1-h1", triplet.triplet, triplet.init, {}, {}, [(2, 1, 1, 5)], TorchTriplet),
    ("triplet-k3-wide", triplet.triplet, triplet.init, {"kernel_size": 3}, {}, [(2, 9, 3, 11)],
     lambda: TorchTriplet(kernel_size=3)),
]
for _layout in ("parallel", "sequential"):
    for _form, _bias in (("official", True), ("paper", False), ("paper", True)):
        _structure = {"layout": _layout, "form": _form, "qkv_bias": _bias}
        CASES.append((f"psa-{_layout}-{_form}{'-bias' if _bias else ''}", psa.psa, _random_affine(psa.init),
                      {"channels": 12, **_structure}, _structure, [(2, 12, 5, 6)],
                      lambda lay=_layout, f=_form, b=_bias: TorchPSA(12, lay, f, b)))
CASES += [
    ("shuffle-g64-c256", shuffle_attention.shuffle_attention, _random_affine(shuffle_attention.init),
     {"channels": 256}, {}, [(2, 256, 3, 4)], lambda: TorchShuffleAttention(256)),
    ("shuffle-g1-1x1", shuffle_attention.shuffle_attention, _random_affine(shuffle_attention.init),
     {"channels": 6, "groups": 1}, {"groups": 1}, [(3, 6, 1, 1)], lambda: TorchShuffleAttention(6, 1)),
    ("shuffle-g3-odd", shuffle_attention.shuffle_attention, _random_affine(shuffle_attention.init),
     {"channels": 18, "groups": 3}, {"groups": 3}, [(2, 18, 5, 3)], lambda: TorchShuffleAttention(18, 3)),
    ("split-r2-k2-d50", split_attention.split_attention, split_attention.init,
     {"in_channels": 100, "channels": 64, "radix": 2, "cardinality": 2}, {"radix": 2, "cardinality": 2},
     [(2, 100, 4, 3)], lambda: TorchSplAtConv2d(100, 64, groups=2)),
    ("split-r1-k2-bias-stride2", split_attention.split_attention, split_attention.init,
     {"in_channels": 8, "channels": 8, "radix": 1, "cardinality": 2, "bias": True},
     {"radix": 1, "cardinality": 2, "bias": True, "stride": 2}, [(2, 8, 5, 6)],
     lambda: TorchSplAtConv2d(8, 8, stride=2, groups=2, bias=True, radix=1)),
    ("split-r4-k1-nonorm-dilated", split_attention.split_attention, split_attention.init,
     {"in_channels": 8, "channels": 12, "radix": 4, "norm": False}, {"radix": 4, "norm": False, "padding": 2,
                                                                     "dilation": 2},
     [(3, 8, 5, 5)], lambda: TorchSplAtConv2d(8, 12, padding=2, dilation=2, radix=4, norm=False)),
    ("split-r3-k1-1x1-map", split_attention.split_attention, split_attention.init,
     {"in_channels": 6, "channels": 4, "radix": 3, "kernel_size": 1}, {"radix": 3, "padding": 0}, [(2, 6, 1, 1)],
     lambda: TorchSplAtConv2d(6, 4, kernel_size=1, padding=0, radix=3)),
    ("srm-std-prefix", srm.srm, srm.init, {"channels": 6, "official_init": False}, {"std_mode": "std"},
     [(3, 6, 4, 3)], lambda: TorchSRM(6, "std")),
    ("srm-1x2-map", srm.srm, srm.init, {"channels": 4, "official_init": False}, {}, [(2, 4, 1, 2)],
     lambda: TorchSRM(4)),
    ("gct-l2", gct.gct, _random_affine(gct.init), {"channels": 12}, {}, [(2, 12, 4, 5)], lambda: TorchGCT(12)),
    ("gct-l2-eps0.1-1x1", gct.gct, _random_affine(gct.init), {"channels": 3}, {"epsilon": 0.1}, [(2, 3, 1, 1)],
     lambda: TorchGCT(3, epsilon=0.1)),
    ("gct-l1", gct.gct, _random_affine(gct.init), {"channels": 6}, {"mode": "l1"}, [(3, 6, 3, 2)],
     lambda: TorchGCT(6, mode="l1")),
    ("gct-l1-after-relu", gct.gct, _random_affine(gct.init), {"channels": 6}, {"mode": "l1", "after_relu": True},
     [(2, 6, 2, 3)], lambda: TorchGCT(6, mode="l1", after_relu=True)),
    ("cot-k5", cot.cot, cot.init, {"channels": 16, "kernel_size": 5}, {}, [(2, 16, 6, 5)],
     lambda: TorchCotLayer(16, 5)),
    ("cot-c72-wide-se", cot.cot, cot.init, {"channels": 72}, {}, [(2, 72, 4, 3)], lambda: TorchCotLayer(72)),
    ("cot-1x1-map", cot.cot, cot.init, {"channels": 8}, {}, [(3, 8, 1, 1)], lambda: TorchCotLayer(8)),
    ("cot-k1", cot.cot, cot.init, {"channels": 8, "kernel_size": 1}, {}, [(2, 8, 3, 2)], lambda: TorchCotLayer(8, 1)),
    ("external-k64", external.external, external.init, {"channels": 8}, {}, [(2, 8, 4, 5)], lambda: TorchExternal(8)),
    ("external-bare", external.external, external.init, {"channels": 8, "k": 5, "bare": True}, {"bare": True},
     [(2, 8, 3, 7)], lambda: TorchExternal(8, 5, bare=True)),
    ("external-bare-eps0-1x1", external.external, external.init, {"channels": 4, "k": 3, "bare": True},
     {"bare": True, "eps": 0.0}, [(3, 4, 1, 1)], lambda: TorchExternal(4, 3, bare=True, eps=0.0)),
    ("psa-p-odd-c-1x1", psa.psa, psa.init, {"channels": 7}, {}, [(3, 7, 1, 1)], lambda: TorchPSA(7)),
    ("psa-s-c8-1x3", psa.psa, psa.init, {"channels": 8, "layout": "sequential"}, {"layout": "sequential"},
     [(2, 8, 1, 3)], lambda: TorchPSA(8, "sequential")),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_twin(case, train):
    _, apply, init, kwargs, options, shapes, twin = case
    rng = np.random.default_rng(5)
    params = _randomize_bn(init(rng, **kwargs), rng)
    inputs = [dev(rng.standard_normal(shape)) for shape in shapes]
    worst = compare_with_twin(apply, params, inputs, twin(), train, options)
    print(f"{case[0]} {'train' if train else 'eval'}: max |diff| {worst:.3g}")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", sorted(REGISTRY_TWINS))
def test_empty_batch_matches_twin(name, train):
    """N = 0, as torch: an empty output, zero parameter gradients, and in training unchanged running statistics
    with num_batches_tracked + 1."""
    _, apply, init, kwargs, options, shapes, twin = _registry_case(name)
    rng = np.random.default_rng(5)
    params = _randomize_bn(init(rng, **kwargs), rng)
    inputs = [dev(np.zeros((0,) + shape[1:])) for shape in shapes]
    compare_with_twin(apply, params, inputs, twin(), train, options)


NEW_ENTRIES = ("coord", "simam", "sge", "triplet", "psa-p", "psa-s", "external", "cot", "gct", "srm",
               "split-attention", "shuffle-attention")


def test_every_entry_of_the_issue_has_a_twin():
    assert set(REGISTRY_TWINS) == set(NEW_ENTRIES)
    assert all(name in npattn.names() for name in NEW_ENTRIES)


@pytest.mark.parametrize("name", NEW_ENTRIES)
def test_official_state_dict_loads(name):
    """The twin's own (official-named) state_dict loads into npattn and gives the twin's output."""
    module = REGISTRY_TWINS[name]().double().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.uniform_(0.5, 1.5)   # positive: running_var stays valid
    mech = npattn.get(name)
    params = from_torch_state_dict(name, module.state_dict(), key_map=OFFICIAL_KEY_MAPS.get(name))
    x = mech.example_input(np.random.default_rng(1))
    expected = module(*[torch.from_numpy(host(v)) for v in x])
    assert_close(host(mech.apply(params, *x)), expected, rtol=TOL, atol=TOL)


#: official state_dict key -> npattn key, where the official module nests its names differently
OFFICIAL_KEY_MAPS: dict = {}


# ---------------------------------------------------------------------------------------------
# pieces and kinks


def test_coord_h_swish_kinks_match_torch():
    """h_swish's gradient at t = -3 is 0 and at t = +3 is 1, in npattn, the official form and nn.Hardswish."""
    t = np.array([-4.0, -3.0, -1.0, 0.0, 3.0, 5.0])
    grad = host(ag.grad(lambda v: ag.sum(coord.h_swish(v)))(dev(t)))
    for form in (TorchHSwish(), nn.Hardswish()):
        t_torch = torch.tensor(t, requires_grad=True)
        form(t_torch).sum().backward()
        assert_close(grad, t_torch.grad, rtol=1e-15, atol=1e-15)
        assert t_torch.grad[1] == 0.0 and t_torch.grad[4] == 1.0
    assert grad[1] == 0.0 and grad[4] == 1.0


def test_simam_1x1_map_is_nan_as_official():
    """H*W = 1: the official n = 0 gives 0/0 = NaN in both; n = H*W gives x * sigmoid(0.5)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 1, 1))
    expected = TorchSimAM()(torch.from_numpy(x)).numpy()
    assert np.isnan(expected).all() and np.isnan(host(simam.simam({}, dev(x)))).all()
    assert_close(host(simam.simam({}, dev(x), unbiased=False)), TorchSimAM(unbiased=False)(torch.from_numpy(x)),
                 rtol=TOL, atol=TOL)


def test_triplet_models_file_names_load_with_the_key_map():
    """The older MODELS/triplet_attention.py state_dict loads through triplet.models_key_map()."""
    module = TorchTripletModels().double().eval()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.dtype.is_floating_point:
                tensor.uniform_(0.5, 1.5) if "running_var" in name else tensor.normal_()
    params = from_torch_state_dict("triplet", module.state_dict(), key_map=triplet.models_key_map())
    x = np.random.default_rng(2).standard_normal((2, 6, 5, 7))
    assert_close(host(triplet.triplet(params, dev(x))), module(torch.from_numpy(x)), rtol=TOL, atol=TOL)


def test_triplet_hc_orientation_matters():
    """Transposing the hc branch's (H, C) plane gives other numbers: the twin would catch a wrong orientation."""
    rng = np.random.default_rng(3)
    params = _randomize_bn(triplet.init(rng), rng)
    x = rng.standard_normal((2, 6, 6, 5))
    module = TorchTriplet().double().eval()
    module.load_state_dict({k: torch.from_numpy(host(v).copy()) for k, v in params.items()})
    transposed = dict(params, **{"hc.conv.conv.weight": dev(np.swapaxes(host(params["hc.conv.conv.weight"]), 2, 3))})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.abs(host(triplet.triplet(transposed, dev(x))) - expected).max() > 1e-3


def test_cot_local_aggregation_is_the_official_kernel_sum():
    """npattn.cot.local_aggregation equals the official kernel's unfold expression, values and gradients."""
    rng = np.random.default_rng(4)
    for k, c, share in ((3, 8, 2), (5, 12, 3)):
        values, weights = rng.standard_normal((2, c, 4, 5)), rng.standard_normal((2, share, k * k, 4, 5))
        cotangent = rng.standard_normal(values.shape)
        got, pullback = ag.vjp(lambda v, w: cot.local_aggregation(v, w, k), dev(values), dev(weights))
        values_t = torch.tensor(values, requires_grad=True)
        weights_t = torch.tensor(weights, requires_grad=True)
        official = torch_aggregation_zeropad(values_t, weights_t[:, None], k)
        official.backward(torch.from_numpy(cotangent))
        assert_close(host(got), official, rtol=1e-12, atol=1e-12)
        grad_values, grad_weights = pullback(dev(cotangent))
        assert_close(host(grad_values), values_t.grad, rtol=1e-12, atol=1e-12)
        assert_close(host(grad_weights), weights_t.grad, rtol=1e-12, atol=1e-12)
