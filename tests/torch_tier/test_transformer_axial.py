"""Cross-framework tier for Axial-DeepLab's AxialAttention: the twin is the official layer
(csrhddlam/axial-deeplab ``lib/models/axialnet.py``) transcribed in torch: index_select of ``relative`` by
``flatten_index``, the three einsums, BatchNorm1d/2d/1d, the interleaved output view.  Eval and train mode
(updated running statistics compared too)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict  # noqa: E402
from npattn.transformer import axial  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch


class qkv_transform(nn.Conv1d):  # noqa: N801 - the official class name
    """Conv1d (the official code subclasses it only to skip the network-level init)."""


class OfficialAxialAttention(nn.Module):
    def __init__(self, in_planes, out_planes, groups=8, kernel_size=56, stride=1, width=False,
                 persistent_index=True):
        super().__init__()
        self.in_planes, self.out_planes, self.groups = in_planes, out_planes, groups
        self.group_planes = out_planes // groups
        self.kernel_size, self.stride, self.width = kernel_size, stride, width
        self.qkv_transform = qkv_transform(in_planes, out_planes * 2, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_qkv = nn.BatchNorm1d(out_planes * 2)
        self.bn_similarity = nn.BatchNorm2d(groups * 3)
        self.bn_output = nn.BatchNorm1d(out_planes * 2)
        self.relative = nn.Parameter(torch.randn(self.group_planes * 2, kernel_size * 2 - 1))
        query_index = torch.arange(kernel_size).unsqueeze(0)
        key_index = torch.arange(kernel_size).unsqueeze(1)
        relative_index = key_index - query_index + kernel_size - 1
        self.register_buffer("flatten_index", relative_index.view(-1), persistent=persistent_index)
        if stride > 1:
            self.pooling = nn.AvgPool2d(stride, stride=stride)
        self.qkv_transform.weight.data.normal_(0, math.sqrt(1. / self.in_planes))
        nn.init.normal_(self.relative, 0., math.sqrt(1. / self.group_planes))

    def forward(self, x):
        if self.width:
            x = x.permute(0, 2, 1, 3)
        else:
            x = x.permute(0, 3, 1, 2)
        N, W, C, H = x.shape
        x = x.contiguous().view(N * W, C, H)
        qkv = self.bn_qkv(self.qkv_transform(x))
        q, k, v = torch.split(qkv.reshape(N * W, self.groups, self.group_planes * 2, H),
                              [self.group_planes // 2, self.group_planes // 2, self.group_planes], dim=2)
        all_embeddings = torch.index_select(self.relative, 1, self.flatten_index).view(
            self.group_planes * 2, self.kernel_size, self.kernel_size)
        q_embedding, k_embedding, v_embedding = torch.split(
            all_embeddings, [self.group_planes // 2, self.group_planes // 2, self.group_planes], dim=0)
        qr = torch.einsum("bgci,cij->bgij", q, q_embedding)
        kr = torch.einsum("bgci,cij->bgij", k, k_embedding).transpose(2, 3)
        qk = torch.einsum("bgci, bgcj->bgij", q, k)
        stacked_similarity = torch.cat([qk, qr, kr], dim=1)
        stacked_similarity = self.bn_similarity(stacked_similarity).view(N * W, 3, self.groups, H, H).sum(dim=1)
        similarity = F.softmax(stacked_similarity, dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", similarity, v)
        sve = torch.einsum("bgij,cij->bgci", similarity, v_embedding)
        stacked_output = torch.cat([sv, sve], dim=-1).view(N * W, self.out_planes * 2, H)
        output = self.bn_output(stacked_output).view(N, W, self.out_planes, 2, H).sum(dim=-2)
        if self.width:
            output = output.permute(0, 2, 1, 3)
        else:
            output = output.permute(0, 2, 3, 1)
        if self.stride > 1:
            output = self.pooling(output)
        return output


def _module(in_planes, out_planes, groups, kernel, seed=0, **kw):
    torch.manual_seed(seed)
    module = OfficialAxialAttention(in_planes, out_planes, groups, kernel, **kw).double()
    with torch.no_grad():                        # BatchNorms away from the identity (eval mode reads them)
        for name, bn in module.named_children():
            if name.startswith("bn"):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.3)
                bn.running_mean.normal_(0, 0.3)
                bn.running_var.uniform_(0.5, 1.5)
                bn.num_batches_tracked.fill_(3)
    return module


CASES = [
    # in, out, groups, width, stride, (H, W)
    (6, 8, 2, False, 1, (5, 4)),
    (6, 8, 2, True, 1, (3, 6)),
    (8, 16, 4, False, 2, (6, 5)),
    (4, 4, 1, True, 2, (4, 7)),
    (16, 32, 8, False, 1, (7, 7)),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("in_planes,out_planes,groups,width,stride,size", CASES)
def test_axial_twin(in_planes, out_planes, groups, width, stride, size, train):
    kernel = size[1] if width else size[0]
    module = _module(in_planes, out_planes, groups, kernel, width=width, stride=stride, persistent_index=False)
    x = np.random.default_rng(1).standard_normal((3, in_planes) + size)
    report = compare(module, "axial", x, train=train, config={"in_planes": in_planes, "out_planes": out_planes,
                     "groups": groups, "kernel_size": kernel, "width": width, "stride": stride})
    assert report.ok, report


def test_the_official_state_dict_loads_through_from_official_state_dict():
    module = _module(6, 8, 2, 5)
    state = module.state_dict()
    assert "flatten_index" in state
    params = from_torch_state_dict("axial", axial.from_official_state_dict(state),
                                   config={"in_planes": 6, "out_planes": 8, "groups": 2, "kernel_size": 5})
    x = np.random.default_rng(2).standard_normal((2, 6, 5, 3))
    expected = module.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(host(axial.axial(params, ag.from_numpy(x), groups=2)), expected, rtol=1e-10,
                               atol=1e-12)


def test_a_twin_with_the_query_minus_key_offset_in_the_key_term_is_caught():
    class Swapped(OfficialAxialAttention):
        def forward(self, x):
            x = x.permute(0, 3, 1, 2)
            N, W, C, H = x.shape
            x = x.contiguous().view(N * W, C, H)
            qkv = self.bn_qkv(self.qkv_transform(x))
            gp = self.group_planes
            q, k, v = torch.split(qkv.reshape(N * W, self.groups, gp * 2, H), [gp // 2, gp // 2, gp], dim=2)
            emb = torch.index_select(self.relative, 1, self.flatten_index).view(gp * 2, H, H)
            q_e, k_e, v_e = torch.split(emb, [gp // 2, gp // 2, gp], dim=0)
            qr = torch.einsum("bgci,cij->bgij", q, q_e)
            kr = torch.einsum("bgcj,cij->bgij", k, k_e)          # the query - key offset
            qk = torch.einsum("bgci,bgcj->bgij", q, k)
            sim = self.bn_similarity(torch.cat([qk, qr, kr], dim=1)).view(N * W, 3, self.groups, H, H).sum(dim=1)
            sim = F.softmax(sim, dim=3)
            out = torch.cat([torch.einsum("bgij,bgcj->bgci", sim, v), torch.einsum("bgij,cij->bgci", sim, v_e)],
                            dim=-1).view(N * W, self.out_planes * 2, H)
            return self.bn_output(out).view(N, W, self.out_planes, 2, H).sum(dim=-2).permute(0, 2, 3, 1)

    module = _module(6, 8, 2, 5)
    swapped = Swapped(6, 8, 2, 5, persistent_index=False).double()
    swapped.load_state_dict({k: v for k, v in module.state_dict().items() if k != "flatten_index"})
    x = np.random.default_rng(3).standard_normal((2, 6, 5, 3))
    report = compare(swapped, "axial", x, config={"in_planes": 6, "out_planes": 8, "groups": 2, "kernel_size": 5})
    assert not report.ok
