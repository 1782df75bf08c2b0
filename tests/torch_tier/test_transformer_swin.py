"""Cross-framework tier for Swin v1 and v2 window attention.

The twins are written from the official code, independently of npattn's implementation:

* ``OfficialBlockAttention`` / ``OfficialBlockAttentionV2``: microsoft/Swin-Transformer's ``WindowAttention``
  (v1 and v2) inside the attention part of ``SwinTransformerBlock``: the min rule in ``__init__``, the
  ``img_mask`` slices -> ``window_partition`` -> ``masked_fill(-100)`` mask, ``torch.roll``, ``view``/
  ``permute`` partitions; with the detection code's ``F.pad`` before the roll (and its mask built on the
  padded size), and its rule (always shift) as an option.
* ``torchvision_shifted_window_attention``: torchvision's functional form (pad, per-axis shift drop, the
  mask from slices with count labels, a flattened ``relative_position_index``), v1 and v2.

HF ``transformers``' own ``SwinLayer`` / ``Swinv2Layer`` are compared in ``test_hf_vision.py`` (library tier; the
differences found there -- float32 eager softmax, v1 failing below the window, v2's doubled shift mask and
height-only window rule -- are in docs/libraries_vision.md).
Everything is float64; outputs, the input gradient and every parameter gradient must agree to 1e-10.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict  # noqa: E402
from npattn.transformer import swin, swin_v2  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-10


# ---------------------------------------------------------------------------------------------
# the official code (v1 and v2 WindowAttention, the block's window machinery)


def window_partition(x, window_size):
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows, window_size, H, W):
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def official_index(window_size):
    coords_h = torch.arange(window_size[0])
    coords_w = torch.arange(window_size[1])
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window_size[0] - 1
    relative_coords[:, :, 1] += window_size[1] - 1
    relative_coords[:, :, 0] *= 2 * window_size[1] - 1
    return relative_coords.sum(-1)


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        self.register_buffer("relative_position_index", official_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        relative_position_bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1)
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
        attn = attn + relative_position_bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class WindowAttentionV2(nn.Module):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, pretrained_window_size=(0, 0),
                 table_dtype=torch.float64):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))), requires_grad=True)
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False))
        relative_coords_h = torch.arange(-(window_size[0] - 1), window_size[0], dtype=table_dtype)
        relative_coords_w = torch.arange(-(window_size[1] - 1), window_size[1], dtype=table_dtype)
        table = torch.stack(torch.meshgrid([relative_coords_h, relative_coords_w], indexing="ij")).permute(
            1, 2, 0).contiguous().unsqueeze(0)
        if pretrained_window_size[0] > 0:
            table[:, :, :, 0] /= pretrained_window_size[0] - 1
            table[:, :, :, 1] /= pretrained_window_size[1] - 1
        else:
            table[:, :, :, 0] /= window_size[0] - 1
            table[:, :, :, 1] /= window_size[1] - 1
        table *= 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / np.log2(8)
        self.register_buffer("relative_coords_table", table)
        self.register_buffer("relative_position_index", official_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        attn = attn * logit_scale
        relative_position_bias_table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        relative_position_bias = relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1], -1)
        relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
        relative_position_bias = 16 * torch.sigmoid(relative_position_bias)
        attn = attn + relative_position_bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class OfficialBlockAttention(nn.Module):
    """The attention part of SwinTransformerBlock on x (B, H, W, C), with the detection code's padding."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, always_shift=False,
                 version=1, mask_value=-100.0, **kwargs):
        super().__init__()
        self.window_size, self.shift_size, self.mask_value = window_size, shift_size, mask_value
        if not always_shift and min(input_resolution) <= self.window_size:
            self.shift_size = 0
            self.window_size = min(input_resolution)
        assert 0 <= self.shift_size < self.window_size
        cls = WindowAttention if version == 1 else WindowAttentionV2
        self.attn = cls(dim, (self.window_size, self.window_size), num_heads, **kwargs)

    def mask(self, Hp, Wp, dtype):
        img_mask = torch.zeros((1, Hp, Wp, 1), dtype=dtype)
        h_slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                    slice(-self.shift_size, None))
        w_slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                    slice(-self.shift_size, None))
        cnt = 0
        for h in h_slices:
            for w in w_slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = window_partition(img_mask, self.window_size).view(-1, self.window_size * self.window_size)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return attn_mask.masked_fill(attn_mask != 0, float(self.mask_value)).masked_fill(attn_mask == 0, 0.0)

    def forward(self, x):
        B, H, W, C = x.shape
        pad_r = (self.window_size - W % self.window_size) % self.window_size
        pad_b = (self.window_size - H % self.window_size) % self.window_size
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, Hp, Wp, _ = x.shape
        if self.shift_size > 0:
            shifted_x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            attn_mask = self.mask(Hp, Wp, x.dtype)
        else:
            shifted_x, attn_mask = x, None
        x_windows = window_partition(shifted_x, self.window_size).view(-1, self.window_size * self.window_size, C)
        attn_windows = self.attn(x_windows, mask=attn_mask).view(-1, self.window_size, self.window_size, C)
        shifted_x = window_reverse(attn_windows, self.window_size, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(shifted_x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        else:
            x = shifted_x
        return x[:, :H, :W, :].contiguous()


# ---------------------------------------------------------------------------------------------
# torchvision's functional form


def torchvision_shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, window_size,
                                         num_heads, shift_size, qkv_bias=None, proj_bias=None, logit_scale=None):
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length: 2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        q = q * (C // num_heads) ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0]: h[1], w[0]: w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


class TorchvisionBlockAttention(nn.Module):
    """torchvision's ShiftedWindowAttention(V2) around the functional form, with npattn's ``attn.*`` names
    (v2: the official q_bias / v_bias, which torchvision stores as one qkv.bias whose middle third it zeroes)."""

    def __init__(self, dim, window_size, shift_size, num_heads, version=1, pretrained_window_size=(0, 0)):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads, self.version = window_size, shift_size, num_heads, version
        if version == 1:
            self.attn = WindowAttention(dim, window_size, num_heads)
        else:
            self.attn = WindowAttentionV2(dim, window_size, num_heads, pretrained_window_size=pretrained_window_size)

    def forward(self, x):
        a = self.attn
        n = self.window_size[0] * self.window_size[1]
        if self.version == 1:
            table = a.relative_position_bias_table
            qkv_bias, logit_scale = a.qkv.bias, None
        else:
            table = 16 * torch.sigmoid(a.cpb_mlp(a.relative_coords_table).view(-1, self.num_heads))
            qkv_bias = torch.cat((a.q_bias, torch.zeros_like(a.q_bias), a.v_bias))
            logit_scale = a.logit_scale
        # torchvision gathers after the 16 sigmoid (the official code before it: the same numbers)
        bias = table[a.relative_position_index.flatten()].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        return torchvision_shifted_window_attention(x, a.qkv.weight, a.proj.weight, bias, self.window_size,
                                                    self.num_heads, self.shift_size, qkv_bias, a.proj.bias,
                                                    logit_scale)


# ---------------------------------------------------------------------------------------------
# helpers


def _randomised(module, seed=0):
    """Every parameter random (the zero inits would hide errors), in float64."""
    module = module.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if "logit" in name else 0.5
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * scale)
    return module


def _check(module, name, x, config, **options):
    report = compare(module, name, x, config=config, rtol=TOL, atol=TOL, **options)
    assert report.ok, report
    return report


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------------------
# Swin v1


V1_CASES = [
    # (H, W, window, shift): multiples, non-multiples (padding before the shift), the min rule
    (8, 8, 4, 2), (7, 10, 4, 2), (8, 8, 4, 0), (12, 9, 3, 1), (4, 9, 4, 2), (3, 3, 7, 3), (5, 12, 7, 3), (1, 6, 4, 2),
]


@pytest.mark.parametrize("height,width,window,shift", V1_CASES)
def test_swin_official_rule(height, width, window, shift):
    module = _randomised(OfficialBlockAttention(16, (height, width), 2, window, shift))
    config = {"dim": 16, "num_heads": 2, "window_size": window, "shift_size": shift,
              "input_resolution": (height, width)}
    _check(module, "swin", _x((2, height, width, 16)), config)


@pytest.mark.parametrize("height,width,window,shift", [(8, 8, 4, 2), (7, 10, 4, 2), (4, 9, 4, 2), (3, 5, 4, 1)])
def test_swin_detection_rule(height, width, window, shift):
    module = _randomised(OfficialBlockAttention(8, (height, width), 2, window, shift, always_shift=True))
    config = {"dim": 8, "num_heads": 2, "window_size": window, "shift_size": shift, "rule": "detection"}
    _check(module, "swin", _x((2, height, width, 8)), config)


@pytest.mark.parametrize("height,width,window,shift", [
    (8, 8, (3, 4), (1, 2)), (7, 10, (3, 4), (1, 2)), (4, 9, (3, 4), (1, 2)), (3, 3, (3, 4), (1, 2)),
    (5, 12, (3, 4), (1, 2)), (4, 9, (4, 4), (2, 2)), (6, 6, (3, 3), (0, 0)),
])
def test_swin_torchvision_rule(height, width, window, shift):
    pair = tuple(window) if isinstance(window, tuple) else (window, window)
    module = _randomised(TorchvisionBlockAttention(8, pair, list(shift), 2))
    config = {"dim": 8, "num_heads": 2, "window_size": window, "shift_size": shift, "rule": "torchvision"}
    _check(module, "swin", _x((2, height, width, 8)), config)


def test_swin_mask_value_inf_and_qk_scale():
    module = _randomised(OfficialBlockAttention(8, (8, 8), 2, 4, 2, mask_value=-math.inf, qk_scale=0.3))
    config = {"dim": 8, "num_heads": 2, "window_size": 4, "shift_size": 2}
    _check(module, "swin", _x((1, 8, 8, 8)), config, mask_value=-math.inf, qk_scale=0.3)


def test_swin_without_qkv_bias():
    module = _randomised(OfficialBlockAttention(8, (6, 6), 2, 3, 1, qkv_bias=False))
    config = {"dim": 8, "num_heads": 2, "window_size": 3, "shift_size": 1, "qkv_bias": False}
    _check(module, "swin", _x((2, 6, 6, 8)), config)


def test_swin_official_state_dict_loads():
    """An official block's attn.* entries load as they are (the index buffer included)."""
    module = _randomised(OfficialBlockAttention(16, (8, 8), 2, 4, 2))
    params = from_torch_state_dict("swin", module.state_dict(), config={"dim": 16, "num_heads": 2, "window_size": 4,
                                                                        "shift_size": 2})
    assert set(params) == set(module.state_dict())
    assert params["attn.relative_position_index"].dtype == np.int64


def test_swin_rules_differ_where_the_spec_says():
    """On 4x9 with w = 4, s = 2 torchvision drops the H shift and the detection code does not (spec: 1.4)."""
    torch.manual_seed(0)
    tv = _randomised(TorchvisionBlockAttention(8, (4, 4), [2, 2], 2))
    det = OfficialBlockAttention(8, (4, 9), 2, 4, 2, always_shift=True).double()
    det.load_state_dict(tv.state_dict())
    x = torch.tensor(_x((1, 4, 9, 8)))
    assert (tv(x) - det(x)).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------
# Swin v2


V2_CASES = [(8, 8, 4, 2, 0), (8, 12, 4, 2, 0), (6, 6, 3, 1, 8), (12, 8, 4, 0, 6), (3, 5, 4, 2, 0)]


@pytest.mark.parametrize("height,width,window,shift,pretrained", V2_CASES)
def test_swin_v2_official_rule(height, width, window, shift, pretrained):
    module = _randomised(OfficialBlockAttention(16, (height, width), 2, window, shift, version=2,
                                                pretrained_window_size=(pretrained, pretrained)))
    config = {"dim": 16, "num_heads": 2, "window_size": window, "shift_size": shift,
              "input_resolution": (height, width), "pretrained_window_size": pretrained}
    _check(module, "swin-v2", _x((2, height, width, 16)), config)


def test_swin_v2_clamped_logit_scale_and_padding():
    """One head above log(100) (its gradient is 0), the other below; a padded 7x10 map (q of padded tokens
    is the random q_bias, away from normalize's kink at 0)."""
    module = _randomised(OfficialBlockAttention(8, (7, 10), 2, 4, 2, version=2))
    with torch.no_grad():
        module.attn.logit_scale.copy_(torch.tensor([[[5.0]], [[2.0]]], dtype=torch.float64))
    config = {"dim": 8, "num_heads": 2, "window_size": 4, "shift_size": 2, "input_resolution": (7, 10)}
    report = _check(module, "swin-v2", _x((2, 7, 10, 8)), config)
    assert any("logit_scale" in row for row in report.compared)


@pytest.mark.parametrize("height,width", [(8, 8), (7, 10), (3, 5)])
def test_swin_v2_torchvision_rule(height, width):
    module = _randomised(TorchvisionBlockAttention(8, (4, 4), [2, 2], 2, version=2))
    config = {"dim": 8, "num_heads": 2, "window_size": 4, "shift_size": 2, "rule": "torchvision"}
    _check(module, "swin-v2", _x((2, height, width, 8)), config)


def test_swin_v2_float32_official_table_is_within_spec():
    """The official buffer is computed in float32, a few 1e-8 from ours, and it loads.

    Measured: 3.1e-8 (w = 4, 16), 3.6e-8 (7), 4.6e-8 (8), 6.6e-8 (12); the spec sheet's 3.1e-8 is one window's.
    """
    for window in (4, 7, 8, 12):
        official = WindowAttentionV2(8, (window,) * 2, 2, table_dtype=torch.float32).relative_coords_table
        ours = host(swin_v2.coordinates_table((window,) * 2, (0, 0), np.float64))
        assert 1e-9 < np.abs(official.double().numpy() - ours).max() < 7e-8
    official = WindowAttentionV2(8, (7, 7), 2, table_dtype=torch.float32).relative_coords_table.double().numpy()
    module = _randomised(OfficialBlockAttention(8, (14, 14), 2, 7, 3, version=2))
    state = {**module.state_dict(), "attn.relative_coords_table": torch.tensor(official)}
    params = from_torch_state_dict("swin-v2", state, config={"dim": 8, "num_heads": 2, "window_size": 7,
                                                             "shift_size": 3})
    x = _x((1, 14, 14, 8))
    out = host(npattn.get("swin-v2").apply(params, x, num_heads=2, window_size=7, shift_size=3))
    np.testing.assert_allclose(out, module(torch.tensor(x)).detach().numpy(), atol=1e-6)


def test_swin_registry_entries_against_twins():
    """The registry's own configurations and example inputs (7x10 padded and shifted) against the twins."""
    for name, version in (("swin", 1), ("swin-v2", 2)):
        mech = npattn.get(name)
        (x,) = mech.example_input(np.random.default_rng(0))
        height, width = x.shape[1:3]
        module = OfficialBlockAttention(mech.config["dim"], (height, width), mech.config["num_heads"],
                                        mech.config["window_size"], mech.config["shift_size"], version=version)
        module = _randomised(module, seed=3)
        _check(module, name, host(x), None)
    assert swin.NAME == "swin"
