"""Cross-framework tier for VOLO's OutlookAttention: the twin is the official module (sail-sg/volo
``models/volo.py``) in torch: nn.Unfold of v, AvgPool2d(ceil_mode=True), the k^4 M linear, softmax, F.fold.
timm's ``volo.OutlookAttention`` has the same code (spec sheet: verified identical) but timm does not import."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from npattn.interop.torch import compare  # noqa: E402

pytestmark = pytest.mark.torch


class OfficialOutlookAttention(nn.Module):
    def __init__(self, dim, num_heads, kernel_size=3, padding=1, stride=1, qkv_bias=False, qk_scale=None,
                 fold="sum"):
        super().__init__()
        head_dim = dim // num_heads
        self.num_heads, self.kernel_size, self.padding, self.stride = num_heads, kernel_size, padding, stride
        self.scale = qk_scale or head_dim ** -0.5
        self.fold_mode = fold
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.proj = nn.Linear(dim, dim)
        self.unfold = nn.Unfold(kernel_size=kernel_size, padding=padding, stride=stride)
        self.pool = nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True)

    def forward(self, x):
        B, H, W, C = x.shape
        v = self.v(x).permute(0, 3, 1, 2)
        h, w = math.ceil(H / self.stride), math.ceil(W / self.stride)
        v = self.unfold(v).reshape(B, self.num_heads, C // self.num_heads, self.kernel_size * self.kernel_size,
                                   h * w).permute(0, 1, 4, 3, 2)
        attn = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        attn = self.attn(attn).reshape(B, h * w, self.num_heads, self.kernel_size * self.kernel_size,
                                       self.kernel_size * self.kernel_size).permute(0, 2, 1, 3, 4)
        attn = attn * self.scale
        attn = attn.softmax(dim=-1)
        cols = (attn @ v).permute(0, 1, 4, 3, 2).reshape(B, C * self.kernel_size * self.kernel_size, h * w)
        x = F.fold(cols, output_size=(H, W), kernel_size=self.kernel_size, padding=self.padding, stride=self.stride)
        if self.fold_mode == "mean":
            ones = F.fold(torch.ones_like(cols), output_size=(H, W), kernel_size=self.kernel_size,
                          padding=self.padding, stride=self.stride)
            x = x / ones
        return self.proj(x.permute(0, 2, 3, 1))


CASES = [  # dim, heads, kernel, padding, stride, qkv_bias, (H, W)
    (8, 2, 3, 1, 1, False, (5, 6)),
    (8, 2, 3, 1, 2, False, (5, 6)),
    (6, 3, 3, 1, 2, True, (7, 7)),
    (12, 4, 3, 1, 2, True, (8, 8)),
    (4, 1, 5, 2, 1, True, (4, 6)),
    (8, 2, 3, 1, 3, False, (7, 5)),
]


@pytest.mark.parametrize("dim,heads,kernel,padding,stride,qkv_bias,size", CASES)
def test_outlook_twin(dim, heads, kernel, padding, stride, qkv_bias, size):
    torch.manual_seed(0)
    module = OfficialOutlookAttention(dim, heads, kernel, padding, stride, qkv_bias).double()
    x = np.random.default_rng(1).standard_normal((2,) + size + (dim,))
    report = compare(module, "outlook", x, config={"dim": dim, "num_heads": heads, "kernel_size": kernel,
                     "padding": padding, "stride": stride, "qkv_bias": qkv_bias})
    assert report.ok, report


def test_outlook_twin_qk_scale():
    torch.manual_seed(1)
    module = OfficialOutlookAttention(8, 2, stride=2, qk_scale=0.3).double()
    report = compare(module, "outlook", np.random.default_rng(2).standard_normal((1, 6, 5, 8)),
                     config={"dim": 8, "num_heads": 2, "stride": 2}, qk_scale=0.3)
    assert report.ok, report


def test_a_twin_averaging_the_overlaps_is_caught():
    torch.manual_seed(2)
    module = OfficialOutlookAttention(8, 2, fold="mean").double()
    report = compare(module, "outlook", np.random.default_rng(3).standard_normal((1, 5, 5, 8)),
                     config={"dim": 8, "num_heads": 2, "stride": 1})
    assert not report.ok
