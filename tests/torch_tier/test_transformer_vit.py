"""Cross-framework tier for ViT attention: a torch twin of timm's ``Attention`` (timm/layers/attention.py), both
its fused path (``F.scaled_dot_product_attention``) and its manual path (scale, q k^T, mask, softmax).
timm does not import here (it imports torchvision, whose wheel is a CUDA build that fails with the CPU torch),
so the twin is the comparison for timm; ``transformers``' ``ViTAttention`` and vit-pytorch's ``vit.Attention``
(no qk-norm in either) are compared in ``test_hf_vision.py`` (library tier; docs/libraries_vision.md).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
from npattn.interop.torch import compare  # noqa: E402

pytestmark = pytest.mark.torch


class TimmAttention(nn.Module):
    def __init__(self, dim, num_heads=8, attn_head_dim=None, dim_out=None, qkv_bias=False, qk_norm=False,
                 scale_norm=False, proj_bias=True, eps=1e-6, fused=True, attn_mask=None, is_causal=False):
        super().__init__()
        dim_out = dim_out or dim
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.fused, self.attn_mask, self.is_causal = fused, attn_mask, is_causal
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.norm = nn.LayerNorm(self.attn_dim, eps=eps) if scale_norm else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim_out, bias=proj_bias)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attn_mask, is_causal=self.is_causal)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            if self.is_causal:
                attn = attn + attn.new_full((N, N), float("-inf")).triu_(1)
            elif self.attn_mask is not None:
                mask = self.attn_mask
                if mask.dtype == torch.bool:
                    mask = torch.zeros_like(mask, dtype=attn.dtype).masked_fill_(~mask, float("-inf"))
                attn = attn + mask
            attn = attn.softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(self.norm(x))


def _module(dim, heads, seed=0, **kw):
    torch.manual_seed(seed)
    module = TimmAttention(dim, heads, **kw).double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * (0.3 if "norm" in name else 0.5)
                    + (1.0 if name.endswith("norm.weight") else 0.0))
    return module


def _x(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


STRUCTURES = [
    dict(),
    dict(qkv_bias=True),
    dict(qkv_bias=True, qk_norm=True),
    dict(qk_norm=True, scale_norm=True, proj_bias=False),
    dict(attn_head_dim=3, dim_out=5, qkv_bias=True, qk_norm=True),
]


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=lambda s: ",".join(s) or "default")
def test_vit_attention_twin(structure, fused):
    module = _module(8, 2, **structure, fused=fused)
    report = compare(module, "vit-attention", _x(1, (3, 6, 8)), config={"dim": 8, "num_heads": 2, "qkv_bias": False,
                     "qk_norm": False, **structure})
    assert report.ok, report


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("kind", ["bool", "float", "causal"])
def test_vit_attention_twin_masks(kind, fused):
    rng = np.random.default_rng(2)
    if kind == "bool":
        mask = rng.random((3, 1, 6, 6)) < 0.6
        mask[..., 0] = True
    elif kind == "float":
        mask = rng.standard_normal((6, 6))
        mask[1, 2:] = -np.inf
    options = {"is_causal": True} if kind == "causal" else {"attn_mask": ag.from_numpy(mask)}
    torch_mask = None if kind == "causal" else torch.from_numpy(mask)
    module = _module(8, 2, qkv_bias=True, fused=fused, attn_mask=torch_mask, is_causal=kind == "causal")
    report = compare(module, "vit-attention", _x(3, (3, 6, 8)), config={"dim": 8, "num_heads": 2, "qkv_bias": True,
                     "qk_norm": False}, **options)
    assert report.ok, report


def test_a_fully_masked_row_zero_as_sdpa_nan_as_the_manual_path():
    mask = np.ones((5, 5), bool)
    mask[3] = False
    config = {"dim": 8, "num_heads": 2, "qkv_bias": True, "qk_norm": True}
    x = _x(4, (2, 5, 8))
    fused = _module(8, 2, qkv_bias=True, qk_norm=True, fused=True, attn_mask=torch.from_numpy(mask))
    report = compare(fused, "vit-attention", x, config=config, attn_mask=ag.from_numpy(mask))
    assert report.ok, report
    manual = _module(8, 2, qkv_bias=True, qk_norm=True, fused=False, attn_mask=torch.from_numpy(mask))
    assert torch.isnan(manual(torch.from_numpy(x))).any()
    report = compare(manual, "vit-attention", x, config=config, attn_mask=ag.from_numpy(mask), masked_rows="nan",
                     equal_nan=True)
    assert report.ok, report
    assert not compare(manual, "vit-attention", x, config=config, attn_mask=ag.from_numpy(mask),
                       equal_nan=True).ok


def test_the_twin_catches_the_scale_before_the_norm():
    class ScaleFirst(TimmAttention):
        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = self.q_norm(q * self.scale), self.k_norm(k)
            x = (q @ k.transpose(-2, -1)).softmax(-1) @ v
            return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))

    torch.manual_seed(0)
    module = ScaleFirst(8, 2, qk_norm=True).double()
    report = compare(module, "vit-attention", _x(5, (1, 4, 8)), config={"dim": 8, "num_heads": 2, "qk_norm": True,
                     "qkv_bias": False})
    assert not report.ok
