"""Cross-framework tier for BoTNet's MHSA: the twin is timm's ``BottleneckAttn`` (``timm/layers/bottleneck_attn.py``)
transcribed in torch, with its ``rel_logits_1d`` pad-and-reshape ``rel_to_abs`` (the gist's trick; npattn
gathers instead), both ``scale_pos_embed`` settings (True is the gist's scaling, npattn's default), H != W and
stride 2.  timm does not import here."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from npattn.interop.torch import compare  # noqa: E402
from npattn.transformer import botnet  # noqa: E402

pytestmark = pytest.mark.torch


def rel_logits_1d(q, rel_k, permute_mask):
    B, H, W, dim = q.shape
    x = q @ rel_k.transpose(-1, -2)
    x = x.reshape(-1, W, 2 * W - 1)
    x_pad = F.pad(x, [0, 1]).flatten(1)
    x_pad = F.pad(x_pad, [0, W - 1])
    x_pad = x_pad.reshape(-1, W + 1, 2 * W - 1)
    x = x_pad[:, :W, W - 1:]
    x = x.reshape(B, H, 1, W, W).expand(-1, -1, H, -1, -1)
    return x.permute(permute_mask)


class PosEmbedRel(nn.Module):
    def __init__(self, feat_size, dim_head):
        super().__init__()
        self.height, self.width = feat_size
        self.height_rel = nn.Parameter(torch.randn(self.height * 2 - 1, dim_head) * dim_head ** -0.5)
        self.width_rel = nn.Parameter(torch.randn(self.width * 2 - 1, dim_head) * dim_head ** -0.5)

    def forward(self, q):
        B, HW, _ = q.shape
        q = q.reshape(B, self.height, self.width, -1)
        rel_logits_w = rel_logits_1d(q, self.width_rel, permute_mask=(0, 1, 3, 2, 4))
        q = q.transpose(1, 2)
        rel_logits_h = rel_logits_1d(q, self.height_rel, permute_mask=(0, 3, 1, 4, 2))
        return (rel_logits_h + rel_logits_w).reshape(B, HW, HW)


class TimmBottleneckAttn(nn.Module):
    def __init__(self, dim, dim_out=None, feat_size=None, stride=1, num_heads=4, dim_head=None, qk_ratio=1.0,
                 qkv_bias=False, scale_pos_embed=False):
        super().__init__()
        dim_out = dim_out or dim
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or botnet.make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.dim_out_qk = num_heads * self.dim_head_qk
        self.dim_out_v = num_heads * self.dim_head_v
        self.scale = self.dim_head_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.qkv = nn.Conv2d(dim, self.dim_out_qk * 2 + self.dim_out_v, 1, bias=qkv_bias)
        self.pos_embed = PosEmbedRel(feat_size, dim_head=self.dim_head_qk)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x):
        B, C, H, W = x.shape
        x = self.qkv(x)
        q, k, v = torch.split(x, [self.dim_out_qk, self.dim_out_qk, self.dim_out_v], dim=1)
        q = q.reshape(B * self.num_heads, self.dim_head_qk, -1).transpose(-1, -2)
        k = k.reshape(B * self.num_heads, self.dim_head_qk, -1)
        v = v.reshape(B * self.num_heads, self.dim_head_v, -1).transpose(-1, -2)
        if self.scale_pos_embed:
            attn = (q @ k + self.pos_embed(q)) * self.scale
        else:
            attn = (q @ k) * self.scale + self.pos_embed(q)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(-1, -2).reshape(B, self.dim_out_v, H, W)
        return self.pool(out)


CASES = [  # dim, feat_size, heads, structure
    (8, (4, 5), 2, {}),
    (8, (3, 3), 4, {"dim_head": 3}),
    (12, (2, 6), 3, {"dim_out": 6, "qkv_bias": True}),
    (16, (6, 4), 2, {"qk_ratio": 0.5, "stride": 2}),
    (32, (7, 7), 4, {}),
]


@pytest.mark.parametrize("scale_pos_embed", [True, False], ids=["gist", "timm"])
@pytest.mark.parametrize("dim,size,heads,structure", CASES)
def test_botnet_twin(dim, size, heads, structure, scale_pos_embed):
    torch.manual_seed(0)
    module = TimmBottleneckAttn(dim, feat_size=size, num_heads=heads, scale_pos_embed=scale_pos_embed,
                                **structure).double()
    x = np.random.default_rng(1).standard_normal((2, dim) + size)
    report = compare(module, "botnet", x, config={"dim": dim, "feat_size": size, "num_heads": heads, **structure},
                     scale_pos_embed=scale_pos_embed)
    assert report.ok, report


def test_the_other_scaling_is_caught():
    torch.manual_seed(1)
    module = TimmBottleneckAttn(8, feat_size=(4, 5), num_heads=2, scale_pos_embed=False).double()
    report = compare(module, "botnet", np.random.default_rng(2).standard_normal((1, 8, 4, 5)),
                     config={"dim": 8, "feat_size": (4, 5), "num_heads": 2})
    assert not report.ok
