"""Cross-framework tier for MobileViT-v2's LinearSelfAttention: the twin is ml-cvnets' layer
(``cvnets/layers/linear_attention.py``) with its nested ConvLayer2d names (``qkv_proj.block.conv``), loaded through
:func:`npattn.transformer.mobilevit.cvnets_key_map`; self- and cross-attention.  timm's patch unfolding
(``F.unfold(kernel = stride = patch)``) is checked against :func:`unfold_patches` / :func:`fold_patches`."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
from npattn.interop.torch import compare  # noqa: E402
from npattn.transformer import mobilevit as mv  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch


class ConvLayer2d(nn.Module):
    """ml-cvnets' wrapper: the conv sits at ``block.conv`` (no norm, no activation here)."""

    def __init__(self, in_channels, out_channels, bias):
        super().__init__()
        self.block = nn.Module()
        self.block.conv = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x):
        return self.block.conv(x)


class CvnetsLinearSelfAttention(nn.Module):
    def __init__(self, embed_dim, bias=True, x_prev=None, softmax_dim=-1):
        super().__init__()
        self.qkv_proj = ConvLayer2d(embed_dim, 1 + 2 * embed_dim, bias)
        self.out_proj = ConvLayer2d(embed_dim, embed_dim, bias)
        self.embed_dim, self.x_prev, self.softmax_dim = embed_dim, x_prev, softmax_dim

    def forward(self, x):
        if self.x_prev is None:
            qkv = self.qkv_proj(x)
            query, key, value = torch.split(qkv, [1, self.embed_dim, self.embed_dim], dim=1)
        else:
            conv = self.qkv_proj.block.conv
            bias = conv.bias
            qk = F.conv2d(self.x_prev, weight=conv.weight[: self.embed_dim + 1],
                          bias=None if bias is None else bias[: self.embed_dim + 1])
            query, key = torch.split(qk, [1, self.embed_dim], dim=1)
            value = F.conv2d(x, weight=conv.weight[self.embed_dim + 1:],
                             bias=None if bias is None else bias[self.embed_dim + 1:])
        context_scores = F.softmax(query, dim=self.softmax_dim)
        context_vector = torch.sum(key * context_scores, dim=-1, keepdim=True)
        out = F.relu(value) * context_vector.expand_as(value)
        return self.out_proj(out)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (1, 16, 4, 49), (3, 4, 1, 1)])
def test_mobilevit_v2_twin(shape, bias):
    torch.manual_seed(0)
    module = CvnetsLinearSelfAttention(shape[1], bias).double()
    x = np.random.default_rng(1).standard_normal(shape)
    report = compare(module, "mobilevit-v2", x, key_map=mv.cvnets_key_map(bias),
                     config={"embed_dim": shape[1], "bias": bias})
    assert report.ok, report


def test_mobilevit_v2_twin_cross_attention():
    torch.manual_seed(1)
    rng = np.random.default_rng(2)
    x_prev = rng.standard_normal((2, 6, 4, 7))
    module = CvnetsLinearSelfAttention(6, x_prev=torch.from_numpy(x_prev)).double()
    report = compare(module, "mobilevit-v2", rng.standard_normal((2, 6, 4, 5)), key_map=mv.cvnets_key_map(),
                     config={"embed_dim": 6}, x_prev=ag.from_numpy(x_prev))
    assert report.ok, report


def test_a_twin_with_the_softmax_over_pixels_is_caught():
    torch.manual_seed(2)
    module = CvnetsLinearSelfAttention(6, softmax_dim=2).double()
    report = compare(module, "mobilevit-v2", np.random.default_rng(3).standard_normal((1, 6, 4, 5)),
                     key_map=mv.cvnets_key_map(), config={"embed_dim": 6})
    assert not report.ok


@pytest.mark.parametrize("patch", [(2, 2), (1, 3), (3, 2)])
def test_patch_unfold_matches_timm(patch):
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    b, c = x.shape[:2]
    expected = F.unfold(torch.from_numpy(x), kernel_size=patch, stride=patch).reshape(b, c, patch[0] * patch[1], -1)
    np.testing.assert_array_equal(host(mv.unfold_patches(ag.from_numpy(x), patch)), expected.numpy())
    folded = F.fold(expected.reshape(b, c * patch[0] * patch[1], -1), output_size=(6, 6), kernel_size=patch,
                    stride=patch)
    np.testing.assert_array_equal(host(mv.fold_patches(ag.from_numpy(expected.numpy()), (6, 6), patch)),
                                  folded.numpy())
