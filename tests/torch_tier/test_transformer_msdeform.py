"""Cross-framework tier for multi-scale deformable attention.

The twin is fundamentalvision/Deformable-DETR's ``MSDeformAttn`` with its PyTorch core
``ms_deform_attn_core_pytorch`` (one ``F.grid_sample`` per level), written from the official code; the
CUDA kernel is not built here (its ``im2col_step`` and ``level_start_index`` do not change the numbers).
HF ``transformers``' ``DeformableDetrMultiscaleDeformableAttention`` itself is compared in ``test_hf_vision.py``
(library tier; docs/libraries_vision.md).  float64 throughout; output, input gradients and every parameter
gradient to 1e-10.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict  # noqa: E402
from npattn.transformer import msdeform  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-10


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N_, S_, M_, D_ = value.shape
    _, Lq_, M_, L_, P_, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for lid_, (H_, W_) in enumerate(value_spatial_shapes):
        value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(N_, M_ * D_, Lq_)
    return output.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        nn.init.constant_(self.sampling_offsets.weight.data, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2).repeat(
            1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid_init[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias = nn.Parameter(grid_init.view(-1))
        nn.init.constant_(self.attention_weights.weight.data, 0.0)
        nn.init.constant_(self.attention_weights.bias.data, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight.data)
        nn.init.constant_(self.value_proj.bias.data, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight.data)
        nn.init.constant_(self.output_proj.bias.data, 0.0)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        N, Len_q, _ = query.shape
        N, Len_in, _ = input_flatten.shape
        assert (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum() == Len_in
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], float(0))
        value = value.view(N, Len_in, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(query).view(N, Len_q, self.n_heads, self.n_levels, self.n_points, 2)
        attention_weights = self.attention_weights(query).view(N, Len_q, self.n_heads, self.n_levels * self.n_points)
        attention_weights = F.softmax(attention_weights, -1).view(N, Len_q, self.n_heads, self.n_levels,
                                                                  self.n_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            sampling_locations = reference_points[:, :, None, :, None, :] \
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError
        output = ms_deform_attn_core_pytorch(value, input_spatial_shapes.tolist(), sampling_locations,
                                             attention_weights)
        return self.output_proj(output)


def _inputs(rng, batch, queries, channels, shapes, box=False, mask=True, spread=(0.0, 1.0)):
    total = sum(h * w for h, w in shapes)
    reference = rng.uniform(*spread, (batch, queries, len(shapes), 4 if box else 2))
    if box:
        reference[..., 2:] = rng.uniform(0.1, 0.6, reference[..., 2:].shape)
    inputs = [rng.standard_normal((batch, queries, channels)), reference, rng.standard_normal((batch, total, channels)),
              np.array(shapes, dtype=np.int64), np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int64)]
    if mask:
        padding = rng.random((batch, total)) < 0.2
        inputs.append(padding)
    return inputs


def _module(d_model, n_levels, n_heads, n_points, seed=0, randomise=True):
    torch.manual_seed(seed)
    module = MSDeformAttn(d_model, n_levels, n_heads, n_points).double()
    if randomise:   # offsets and weights that depend on the query, offsets reaching outside the maps
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.3)
            module.sampling_offsets.weight.mul_(5.0)
    return module


CASES = [
    # (batch, queries, d_model, heads, points, shapes, box, mask)
    (2, 7, 16, 2, 3, [(6, 5), (3, 4), (2, 2)], False, True),
    (2, 7, 16, 4, 2, [(6, 5), (3, 4), (2, 2)], True, True),
    (1, 5, 8, 2, 4, [(9, 4)], False, False),
    (3, 4, 12, 3, 1, [(4, 7), (2, 3)], True, False),
    (1, 6, 8, 1, 2, [(1, 1), (1, 5), (5, 1)], False, True),
    (0, 3, 8, 2, 2, [(4, 4), (2, 2)], False, True),
]


@pytest.mark.parametrize("batch,queries,d_model,heads,points,shapes,box,mask", CASES)
def test_msdeform_against_the_official_module(batch, queries, d_model, heads, points, shapes, box, mask):
    rng = np.random.default_rng(batch + 10 * heads)
    module = _module(d_model, len(shapes), heads, points)
    inputs = _inputs(rng, batch, queries, d_model, shapes, box=box, mask=mask, spread=(-0.2, 1.2))
    config = {"d_model": d_model, "n_levels": len(shapes), "n_heads": heads, "n_points": points}
    report = compare(module, "msdeform", *inputs, config=config, rtol=TOL, atol=TOL)
    assert report.ok, report


def test_msdeform_official_init_loads_and_agrees():
    """The official ``_reset_parameters`` (float32 offsets bias) is npattn's init, to the bit for the bias."""
    module = _module(32, 4, 8, 4, randomise=False)
    ours = npattn.get("msdeform").init(np.random.default_rng(0), 32, n_levels=4, n_heads=8, n_points=4)
    official_bias = module.sampling_offsets.bias.detach().numpy()
    np.testing.assert_array_equal(host(ours["sampling_offsets.bias"]), official_bias)
    assert official_bias[2 * 4 * 4 * 2] == pytest.approx(-4.371139e-08, abs=1e-14)   # cos(pi/2) in float32
    for key in ("sampling_offsets.weight", "attention_weights.weight", "attention_weights.bias", "value_proj.bias"):
        assert (host(ours[key]) == 0).all() and (module.state_dict()[key] == 0).all()
    params = from_torch_state_dict("msdeform", module.state_dict(), config={"d_model": 32, "n_levels": 4,
                                                                            "n_heads": 8, "n_points": 4})
    rng = np.random.default_rng(5)
    inputs = _inputs(rng, 2, 10, 32, [(8, 6), (4, 3), (2, 2), (1, 1)])
    expected = module(*[torch.tensor(a) for a in inputs]).detach().numpy()
    out = host(msdeform.msdeform(params, *inputs, n_levels=4, n_heads=8, n_points=4))
    np.testing.assert_allclose(out, expected, rtol=TOL, atol=TOL)


def test_msdeform_registry_entry_against_the_official_module():
    mech = npattn.get("msdeform")
    inputs = [host(a) for a in mech.example_input(np.random.default_rng(0))]
    module = _module(16, 3, 2, 2, seed=4)
    report = compare(module, "msdeform", *inputs, rtol=TOL, atol=TOL)
    assert report.ok, report


def test_msdeform_swapped_normaliser_shows_on_non_square_levels():
    """PR#7: (H, W) instead of (W, H) only changes non-square levels; the twin with the bug disagrees."""
    rng = np.random.default_rng(3)
    module = _module(8, 1, 2, 2)
    for shapes, differs in (([(6, 3)], True), ([(4, 4)], False)):
        inputs = _inputs(rng, 1, 5, 8, shapes, mask=False)
        tensors = [torch.tensor(a) for a in inputs]
        good = module(*tensors)

        def buggy_forward(*args):   # the normaliser read as (H, W): flip the shapes for it only
            query, reference, flat, shape_t, start = args
            offsets = module.sampling_offsets(query).view(1, 5, 2, 1, 2, 2)
            normaliser = torch.stack([shape_t[..., 0], shape_t[..., 1]], -1)
            locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
            weights = F.softmax(module.attention_weights(query).view(1, 5, 2, 2), -1).view(1, 5, 2, 1, 2)
            value = module.value_proj(flat).view(1, flat.shape[1], 2, 4)
            return module.output_proj(ms_deform_attn_core_pytorch(value, shape_t.tolist(), locations, weights))

        bad = buggy_forward(*tensors)
        assert ((good - bad).abs().max() > 1e-3) == differs
