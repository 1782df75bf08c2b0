"""Cross-framework tier for neighborhood attention (NAT / DiNAT).

The twin is NATTEN 0.17's ``NeighborhoodAttention2D`` (``src/natten/na2d.py``) written in torch, with its
unfused ops computed as NATTEN's naive CPU kernels compute them: per query (i, j) the window start ``ni``
and bias start ``pi`` from ``get_window_start`` / ``get_pb_start`` (``natten_cpu_commons.h``), then
``attn[..., ki * K1 + kj] = q[i, j] . k[ni + ki d, nj + kj d] + rpb[h, pi + ki, pj + kj]``
(``pointwise_neighborhood_2d.hpp``) and ``out[i, j] = sum attn * v[ni + ki d, nj + kj d]`` (the AV kernel).
The integer functions are transcribed from the C++ and tabulated with Python loops; the arithmetic is
torch indexing, not npattn's gather/scatter.  ``pad_small`` follows NATTEN <= 0.14 (``nattentorch``): zero
padding of x before qkv, crop before proj.  No library with these semantics imports here (natten needs a
compiled build; ``transformers`` imports here, but its DiNAT ``NeighborhoodAttention`` calls natten's kernels,
stubs that raise without natten: ``test_hf_vision.py::test_transformers_dinat_needs_natten``).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict  # noqa: E402
from npattn.transformer import nat  # noqa: E402
from tests.npattn.test_transformer_nat import natten_pb_start, natten_window_start  # noqa: E402
from tests.torch_tier.test_self_attention import check_twin  # noqa: E402

pytestmark = pytest.mark.torch


class TorchNeighborhoodAttention2D(nn.Module):
    def __init__(self, dim, num_heads, kernel_size, dilation=1, qkv_bias=True, rel_pos_bias=True, qk_scale=None,
                 pad_small=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
        self.dilation = dilation if isinstance(dilation, tuple) else (dilation, dilation)
        self.pad_small = pad_small
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * self.kernel_size[0] - 1, 2 * self.kernel_size[1] - 1))
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)

    @staticmethod
    def _starts(length, kernel, dilation):
        radius = kernel // 2
        window = [natten_window_start(i, length, kernel, radius, dilation) for i in range(length)]
        bias = [natten_pb_start(i, length, kernel, radius, dilation) for i in range(length)]
        return torch.tensor(window), torch.tensor(bias)

    def forward(self, x):
        B, Ho, Wo, C = x.shape
        (k0, k1), (d0, d1) = self.kernel_size, self.dilation
        if self.pad_small:
            x = F.pad(x, (0, 0, 0, max(0, k1 * d1 - Wo), 0, max(0, k0 * d0 - Ho)))
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        ni, pi = self._starts(H, k0, d0)
        nj, pj = self._starts(W, k1, d1)
        rows = (ni[:, None] + torch.arange(k0)[None] * d0)          # (H, K0) key rows
        cols = (nj[:, None] + torch.arange(k1)[None] * d1)          # (W, K1) key cols
        key_rows = rows[:, None, :, None].expand(H, W, k0, k1)
        key_cols = cols[None, :, None, :].expand(H, W, k0, k1)
        k_n = k[:, :, key_rows, key_cols]                            # (B, h, H, W, K0, K1, d)
        v_n = v[:, :, key_rows, key_cols]
        attn = torch.einsum("nhijd,nhijxyd->nhijxy", q, k_n)
        if self.rpb is not None:
            bias_rows = (pi[:, None] + torch.arange(k0)[None])[:, None, :, None].expand(H, W, k0, k1)
            bias_cols = (pj[:, None] + torch.arange(k1)[None])[None, :, None, :].expand(H, W, k0, k1)
            attn = attn + self.rpb[:, bias_rows, bias_cols]
        attn = attn.reshape(B, self.num_heads, H, W, k0 * k1).softmax(dim=-1).reshape(attn.shape)
        out = torch.einsum("nhijxy,nhijxyd->nhijd", attn, v_n)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)[:, :Ho, :Wo]
        return self.proj(out)


def _module(dim, heads, kernel, seed=0, **kw):
    torch.manual_seed(seed)
    module = TorchNeighborhoodAttention2D(dim, heads, kernel, **kw).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
    return module


def _x(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


CASES = [
    # (dim, heads, kernel, dilation, H, W)
    (8, 2, 3, 1, 5, 6),
    (8, 2, 5, 1, 5, 9),
    (12, 3, (3, 5), 1, 6, 7),
    (8, 2, 3, 2, 7, 9),
    (8, 1, 3, (2, 3), 8, 11),
    (8, 2, 5, 3, 16, 15),
    (6, 2, 7, 1, 7, 7),
]


@pytest.mark.parametrize("dim,heads,kernel,dilation,height,width", CASES)
def test_nat_twin(dim, heads, kernel, dilation, height, width):
    module = _module(dim, heads, kernel, dilation=dilation)
    name = "nat" if dilation == 1 else "dinat"
    report = compare(module, name, _x(1, (2, height, width, dim)),
                     config={"dim": dim, "num_heads": heads, "kernel_size": kernel}, dilation=dilation)
    assert report.ok, report


@pytest.mark.parametrize("qkv_bias,rel_pos_bias", [(False, True), (True, False), (False, False)])
def test_nat_twin_without_biases(qkv_bias, rel_pos_bias):
    module = _module(8, 2, 3, dilation=2, qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias)
    params = from_torch_state_dict("dinat", module.state_dict(), config={
        "dim": 8, "num_heads": 2, "kernel_size": 3, "qkv_bias": qkv_bias, "rel_pos_bias": rel_pos_bias})
    apply = lambda p, x, train: nat.dinat(p, x, num_heads=2, kernel_size=3, qkv_bias=qkv_bias,  # noqa: E731
                                          rel_pos_bias=rel_pos_bias)
    check_twin(module, apply, params, [ag.from_numpy(_x(2, (2, 7, 6, 8)))], train=False)


@pytest.mark.parametrize("height,width,kernel,dilation", [(3, 4, 5, 1), (2, 9, 3, 2), (5, 5, 3, 2)])
def test_nat_twin_pad_small(height, width, kernel, dilation):
    module = _module(8, 2, kernel, dilation=dilation, pad_small=True)
    report = compare(module, "nat", _x(3, (2, height, width, 8)), config={"dim": 8, "num_heads": 2,
                     "kernel_size": kernel}, dilation=dilation, pad_small=True)
    assert report.ok, report


def test_nat_twin_qk_scale():
    module = _module(8, 2, 3, qk_scale=0.7)
    report = compare(module, "nat", _x(4, (1, 5, 5, 8)), config={"dim": 8, "num_heads": 2, "kernel_size": 3},
                     qk_scale=0.7)
    assert report.ok, report


def test_the_twin_comparison_fails_for_a_centred_window():
    """compare() is not vacuous here: a twin that indexes the bias relative to a centred window disagrees."""

    class Centred(TorchNeighborhoodAttention2D):
        @staticmethod
        def _starts(length, kernel, dilation):
            window, _ = TorchNeighborhoodAttention2D._starts(length, kernel, dilation)
            return window, torch.full((length,), kernel // 2)

    torch.manual_seed(0)
    module = Centred(8, 2, 3).double()
    with torch.no_grad():
        module.rpb.copy_(torch.randn(module.rpb.shape, dtype=torch.float64))
    report = compare(module, "nat", _x(5, (1, 5, 6, 8)), config={"dim": 8, "num_heads": 2, "kernel_size": 3})
    assert not report.ok


def test_registry_defaults_load_into_the_twin():
    mech = npattn.get("dinat")
    params = mech.default_params()
    module = TorchNeighborhoodAttention2D(8, 2, 3, dilation=2)
    check_twin(module, lambda p, x, train: mech.apply(p, x, train=train), params,
               list(mech.example_input(np.random.default_rng(0))), train=False)
