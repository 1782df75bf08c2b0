"""Cross-framework tier for CLIP's AttentionPool2d: the twin is the official module's forward (openai/CLIP
``clip/model.py``), which runs ``F.multi_head_attention_forward`` with separate q/k/v weights, every token as a
query, and keeps token 0 (npattn computes the one query only)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from npattn.interop.torch import compare  # noqa: E402

pytestmark = pytest.mark.torch


class ClipAttentionPool2d(nn.Module):
    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x):
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)   # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)                           # (HW + 1, N, C)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training,
            need_weights=False)
        return x[0]


@pytest.mark.parametrize("side,dim,heads,out", [(1, 4, 1, None), (3, 16, 4, 12), (4, 12, 3, 5), (7, 8, 2, None)])
def test_attention_pool_twin(side, dim, heads, out):
    torch.manual_seed(side)
    module = ClipAttentionPool2d(side, dim, heads, out).double()
    x = np.random.default_rng(side).standard_normal((3, dim, side, side))
    report = compare(module, "attention-pool", x, config={"spacial_dim": side, "embed_dim": dim, "num_heads": heads,
                                                          "output_dim": out})
    assert report.ok, report


def test_a_twin_taking_the_mean_after_the_embedding_is_caught():
    class MeanAfter(ClipAttentionPool2d):
        def forward(self, x):
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1) + self.positional_embedding[1:, None]
            x = torch.cat([x.mean(dim=0, keepdim=True) + self.positional_embedding[:1, None], x], dim=0)
            x, _ = F.multi_head_attention_forward(
                query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
                q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
                in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
                bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0, out_proj_weight=self.c_proj.weight,
                out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, need_weights=False)
            return x[0]

    torch.manual_seed(0)
    module = MeanAfter(3, 8, 2).double()
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 3))
    report = compare(module, "attention-pool", x, config={"spacial_dim": 3, "embed_dim": 8, "num_heads": 2,
                                                          "output_dim": None})
    assert not report.ok
