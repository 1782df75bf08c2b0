"""Library tier: the vision-attention modules of HF ``transformers`` and ``vit-pytorch`` against npattn.

The modules under test are the libraries' own classes, built from a config with no weights (no download), in
float64 and eval mode, with npattn's ``init`` parameters loaded into them (perturbed where ``init`` leaves a
special value, e.g. Deformable-DETR's zero offset weights); then :func:`npattn.interop.torch.compare` checks the
output, the input gradient and every parameter gradient to rtol 1e-10.

* ``swin``: ``transformers.models.swin.modeling_swin.SwinLayer``'s own ``forward`` -- the min rule
  (``set_shift_and_window_size``), ``maybe_pad`` before the roll, ``get_attn_mask`` on the padded map,
  ``SwinAttention`` (relative position bias), window reverse, crop -- with ``layernorm_before`` and the MLP
  branch made identity / zero and the residual subtracted, so that what is left is npattn's entry.
* ``swin-v2``: ``Swinv2Layer``'s ``forward`` likewise (``Swinv2SelfAttention``: cosine attention, clamped logit
  scale, continuous position bias MLP; ``Swinv2SelfOutput``'s projection).
* ``msdeform``: ``DeformableDetrMultiscaleDeformableAttention`` (its PyTorch core, one ``grid_sample`` per level;
  the hub kernel needs the ``kernels`` package, absent here).
* ``vit-attention``: ``ViTAttention`` (q/k/v/o projections, the attention interface), and vit-pytorch's
  ``vit.Attention``.

HF keeps q, k and v as three ``nn.Linear`` where npattn (and the official code) hold one fused ``qkv``; the
wrappers below replace the three Linears by :class:`FusedRows`, which computes ``F.linear`` with the rows of a
fused Linear, so the library's forward runs unchanged on npattn's layout and the fused gradient is compared.
HF's non-persistent index/coordinate buffers are registered on the wrappers (the same tensors), so compare checks
them against npattn's ``init`` as well.  vit-pytorch's package ``__init__`` imports torchvision (a CUDA build
that does not import with the CPU torch here), so ``vit_pytorch/vit.py`` is loaded by file, without the package
``__init__``.  NAT/DiNAT: ``transformers``' DiNAT calls NATTEN's kernels, absent here (tested below).

Differences found (each asserted where it shows, and described in docs/libraries_vision.md):

* HF's eager attention takes the softmax in float32 (``dtype=torch.float32``): float64 agrees only with
  ``attn_implementation="sdpa"`` (Swin v1, ViT).
* HF Swin v1 raises when min(H, W) < window (the bias table is built for the configured window, the forward
  shrinks the window), and keeps a dropped shift for later calls.
* HF Swin v2 adds the shift mask twice (-200, not -100), keeps only the height axis of a per-axis window rule, and
  holds a float32-rounded coordinate table.
* HF's deformable attention takes ``attention_mask`` True = valid (the official ``input_padding_mask``: True =
  padded).
* vit-pytorch's ``Attention`` includes a pre-LayerNorm and drops the output projection when heads == 1 and
  dim_head == dim.
"""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn
F = torch.nn.functional

from transformers.models.deformable_detr.modeling_deformable_detr import (  # noqa: E402
    DeformableDetrConfig,
    DeformableDetrMultiscaleDeformableAttention,
)
from transformers.models.swin.modeling_swin import SwinConfig, SwinLayer  # noqa: E402
from transformers.models.swinv2.modeling_swinv2 import Swinv2Config, Swinv2Layer  # noqa: E402
from transformers.models.vit.modeling_vit import ViTAttention, ViTConfig  # noqa: E402

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.interop.torch import compare, to_torch_state_dict  # noqa: E402
from npattn.transformer import swin_v2 as npattn_swin_v2  # noqa: E402

pytestmark = [pytest.mark.torch,
              # DeformableDetrMultiscaleDeformableAttention's advice for its CUDA kernel (a head dim of 6 is tested)
              pytest.mark.filterwarnings("ignore:You'd better set embed_dim:UserWarning")]
TOL = 1e-10


def test_library_versions_are_the_documented_ones():
    """docs/libraries_vision.md reports these versions; a new one needs the comparison re-read."""
    assert transformers.__version__ == "5.25.0"


# ---------------------------------------------------------------------------------------------
# shared pieces


class FusedRows(nn.Module):
    """Stands in for one of HF's q/k/v ``nn.Linear``: ``F.linear`` with rows [part n, (part + 1) n) of a fused
    Linear's weight, and its bias rows (or ``bias``, a parameter of its own, or none)."""

    def __init__(self, fused, part, rows, bias=None):
        super().__init__()
        self._fused = [fused]            # a list: not a submodule, so it is not listed twice in the state_dict
        self.part, self.rows = part, rows
        self.bias = bias

    def forward(self, x):
        fused, rows = self._fused[0], slice(self.part * self.rows, (self.part + 1) * self.rows)
        bias = self.bias if self.bias is not None else (None if fused.bias is None else fused.bias[rows])
        return F.linear(x, fused.weight[rows], bias)


class Zero(nn.Module):
    """The MLP branch of a layer, switched off (output 0) so the layer's output is x + attention(x)."""

    def forward(self, x):
        return torch.zeros_like(x)


def load(module, params, key_map):
    """Load npattn parameters into the torch module (``key_map`` torch -> npattn names); every key must match."""
    state = to_torch_state_dict(params, {npattn_key: key for key, npattn_key in key_map.items()})
    module.load_state_dict(state, strict=True)
    return module


def perturb(params, rng, scales):
    """``params`` with N(0, scale^2) noise added to the named entries (values ``init`` leaves at 0 or constant)."""
    out = dict(params)
    for key, scale in scales.items():
        value = ag.to_numpy(params[key])
        out[key] = ag.from_numpy(value + scale * rng.standard_normal(value.shape))
    return out


def max_error(report):
    """The largest max |diff| over the report's rows (for the record in docs/libraries_vision.md)."""
    values = []
    for _, _, detail in report.rows:
        if "max |diff|" in detail:
            values.append(float(detail.split("max |diff|")[1].split()[0].rstrip(");,")))
    return max(values)


def failing_rows(report):
    return [what for what, ok, _ in report.rows if not ok]


# ---------------------------------------------------------------------------------------------
# Swin v1: SwinLayer's attention path


class HFSwinAttention(nn.Module):
    """x (B, H, W, C) -> SwinLayer(x) - x with the layer's norms identity and its MLP 0: the attention branch."""

    def __init__(self, dim, heads, window, shift, resolution, qkv_bias=True, implementation="sdpa"):
        super().__init__()
        config = SwinConfig(embed_dim=dim, window_size=window, qkv_bias=qkv_bias, attention_probs_dropout_prob=0.0,
                            hidden_dropout_prob=0.0, drop_path_rate=0.0)
        config._attn_implementation = implementation
        layer = SwinLayer(config, dim=dim, input_resolution=resolution, num_heads=heads, shift_size=shift).double()
        layer.layernorm_before, layer.layernorm_after, layer.mlp = nn.Identity(), nn.Identity(), Zero()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias).double()
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            setattr(layer.attention, name, FusedRows(self.qkv, part, dim))
        self.layer = layer
        tokens = window * window
        self.register_buffer("index", layer.attention.relative_position_bias.relative_position_index.view(tokens,
                                                                                                         tokens))

    def forward(self, x):
        batch, height, width, channels = x.shape
        flat = x.reshape(batch, height * width, channels)
        return (self.layer(flat, (height, width))[0] - flat).reshape(x.shape)


SWIN_KEYS = {"qkv.weight": "attn.qkv.weight", "qkv.bias": "attn.qkv.bias",
             "layer.attention.o_proj.weight": "attn.proj.weight", "layer.attention.o_proj.bias": "attn.proj.bias",
             "layer.attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
             "index": "attn.relative_position_index"}


def swin_case(batch, height, width, dim, heads, window, shift, qkv_bias=True, implementation="sdpa", seed=0):
    """(HF module with npattn's init loaded, x, config) for one Swin v1 configuration."""
    rng = np.random.default_rng(seed)
    config = dict(dim=dim, num_heads=heads, window_size=window, shift_size=shift, qkv_bias=qkv_bias,
                  input_resolution=(height, width))
    params = npattn.get("swin").init(rng, **config)
    params = perturb(params, rng, {"attn.relative_position_bias_table": 0.5})   # std 0.02 would hide a wrong index
    keys = {k: v for k, v in SWIN_KEYS.items() if qkv_bias or k != "qkv.bias"}
    module = load(HFSwinAttention(dim, heads, window, shift, (height, width), qkv_bias, implementation).eval(),
                  params, keys)
    return module, rng.standard_normal((batch, height, width, dim)), config, keys


SWIN_CASES = [
    # (B, H, W, C, heads, window, shift, qkv_bias)
    (2, 8, 8, 16, 2, 4, 2, True),       # multiples of the window, shifted: the -100 mask
    (2, 7, 10, 16, 2, 4, 2, True),      # neither side a multiple: zero padding before the roll
    (1, 5, 13, 12, 3, 3, 1, True),      # odd sizes, padding on both axes, batch 1
    (1, 11, 12, 10, 2, 5, 2, False),    # window 5, no qkv bias, padding on both axes
    (2, 9, 11, 16, 2, 4, 0, True),      # no shift, with padding
    (1, 7, 9, 8, 1, 7, 3, True),        # min(H, W) == window: the min rule drops the shift; heads 1
    (3, 6, 6, 16, 4, 6, 3, True),       # window == map: one window, shift dropped
    (1, 1, 1, 4, 1, 1, 0, True),        # one token, window 1
]


@pytest.mark.parametrize("case", SWIN_CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-h{c[4]}w{c[5]}s{c[6]}")
def test_swin_agrees_with_transformers_swin_layer(case):
    *shape, qkv_bias = case
    module, x, config, keys = swin_case(*shape, qkv_bias=qkv_bias)
    report = compare(module, "swin", x, key_map=keys, config=config, rtol=TOL)
    assert report.ok, report
    assert "constant attn.relative_position_index (torch index) (npattn's init for config)" in report.compared


def test_swin_eager_attention_takes_the_softmax_in_float32():
    """Expected difference: HF's ``eager_attention_forward`` calls ``softmax(..., dtype=torch.float32)`` and casts
    back, so a float64 module computes its attention weights in float32.  The same configuration agrees to 1e-10
    with ``attn_implementation="sdpa"`` (above) and to float32 rounding here."""
    module, x, config, keys = swin_case(2, 7, 10, 16, 2, 4, 2, implementation="eager")
    report = compare(module, "swin", x, key_map=keys, config=config, rtol=TOL)
    assert not report.ok and "output" in failing_rows(report), report
    assert 1e-9 < max_error(report) < 1e-5, report
    loose = compare(module, "swin", x, key_map=keys, config=config, rtol=1e-5, atol=1e-6)
    assert loose.ok, loose


@pytest.mark.parametrize("resolution", [(5, 9), (6, 6), (3, 12)])
def test_swin_transformers_fails_on_maps_smaller_than_the_window(resolution):
    """Expected difference: for min(H, W) < window, ``SwinLayer.forward`` applies the official min rule
    (``set_shift_and_window_size``: window = min(H, W), shift 0) but its ``SwinAttention`` was built in ``__init__``
    with ``config.window_size``, so the (w^2, w^2) bias meets (m^2, m^2) logits: a RuntimeError.  npattn (and the
    official block, whose ``__init__`` applies the rule before building the table) use an m x m table."""
    module = HFSwinAttention(8, 2, 7, 3, resolution).eval()
    x = torch.randn(1, *resolution, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="must match the size"):
        module(x)
    config = dict(dim=8, num_heads=2, window_size=7, shift_size=3, input_resolution=resolution)
    params = npattn.get("swin").init(np.random.default_rng(0), **config)
    out = npattn.get("swin").apply(params, ag.from_numpy(x.numpy()), num_heads=2, window_size=7, shift_size=3)
    assert out.shape == (1, *resolution, 8) and np.isfinite(ag.to_numpy(out)).all()


def test_swin_transformers_keeps_a_dropped_shift():
    """Expected difference: ``set_shift_and_window_size`` stores its result on the layer, so after one call on a map
    with min(H, W) == window (shift dropped), the layer attends to a larger map without shift: it then agrees with
    npattn's ``shift_size=0``, not with the configured shift."""
    module, x, config, keys = swin_case(1, 8, 8, 8, 2, 4, 2)
    assert compare(module, "swin", x, key_map=keys, config=config, rtol=TOL).ok
    module(torch.zeros(1, 4, 6, 8, dtype=torch.float64))
    report = compare(module, "swin", x, key_map=keys, config=config, rtol=TOL)
    assert not report.ok and "output" in failing_rows(report), report
    report = compare(module, "swin", x, key_map=keys, config=dict(config, shift_size=0), rtol=TOL)
    assert report.ok, report


# ---------------------------------------------------------------------------------------------
# Swin v2: Swinv2Layer's attention path


class HFSwinV2Attention(nn.Module):
    """x (B, H, W, C) -> Swinv2Layer(x) - x with its res-post-norms identity and its MLP 0."""

    def __init__(self, dim, heads, window, shift, resolution, qkv_bias=True, pretrained_window_size=0):
        super().__init__()
        config = Swinv2Config(embed_dim=dim, window_size=window, qkv_bias=qkv_bias, attention_probs_dropout_prob=0.0,
                              hidden_dropout_prob=0.0, drop_path_rate=0.0)
        layer = Swinv2Layer(config, dim=dim, input_resolution=resolution, num_heads=heads, shift_size=shift,
                            pretrained_window_size=pretrained_window_size).double()
        layer.layernorm_before, layer.layernorm_after = nn.Identity(), nn.Identity()
        layer.intermediate, layer.output = nn.Identity(), Zero()
        attention = layer.attention.self
        self.qkv = nn.Linear(dim, 3 * dim, bias=False).double()
        attention.query = FusedRows(self.qkv, 0, dim, attention.query.bias)
        attention.key = FusedRows(self.qkv, 1, dim)
        attention.value = FusedRows(self.qkv, 2, dim, attention.value.bias)
        self.layer = layer
        self.register_buffer("coords", attention.relative_coords_table)      # the same tensors as HF's buffers
        self.register_buffer("index", attention.relative_position_index)

    def forward(self, x):
        batch, height, width, channels = x.shape
        flat = x.reshape(batch, height * width, channels)
        return (self.layer(flat, (height, width))[0] - flat).reshape(x.shape)


SWIN_V2_KEYS = {"qkv.weight": "attn.qkv.weight",
                "layer.attention.self.query.bias": "attn.q_bias", "layer.attention.self.value.bias": "attn.v_bias",
                "layer.attention.self.logit_scale": "attn.logit_scale",
                "layer.attention.self.continuous_position_bias_mlp.0.weight": "attn.cpb_mlp.0.weight",
                "layer.attention.self.continuous_position_bias_mlp.0.bias": "attn.cpb_mlp.0.bias",
                "layer.attention.self.continuous_position_bias_mlp.2.weight": "attn.cpb_mlp.2.weight",
                "layer.attention.output.dense.weight": "attn.proj.weight",
                "layer.attention.output.dense.bias": "attn.proj.bias",
                "coords": "attn.relative_coords_table", "index": "attn.relative_position_index"}


def swin_v2_case(batch, height, width, dim, heads, window, shift, qkv_bias=True, pretrained=0, rule="official",
                 logit_scale=None, hf_table=False, seed=0):
    """(HF module with npattn's init loaded, x, config, key_map) for one Swin v2 configuration.

    ``hf_table``: keep HF's own (float32-rounded) coordinate table instead of loading npattn's float64 one.
    ``logit_scale``: per-head values for ``attn.logit_scale`` (else log 10, the init, perturbed)."""
    rng = np.random.default_rng(seed)
    config = dict(dim=dim, num_heads=heads, window_size=window, shift_size=shift, qkv_bias=qkv_bias,
                  pretrained_window_size=pretrained, rule=rule, input_resolution=(height, width))
    params = npattn.get("swin-v2").init(rng, **config)
    # the zero q/v biases of init would make a padded token's q exactly 0 (normalize's kink)
    params = perturb(params, rng, {"attn.logit_scale": 0.3, **({"attn.q_bias": 0.5, "attn.v_bias": 0.5}
                                                                if qkv_bias else {})})
    if logit_scale is not None:
        params["attn.logit_scale"] = ag.from_numpy(np.asarray(logit_scale, dtype=np.float64).reshape(heads, 1, 1))
    keys = {k: v for k, v in SWIN_V2_KEYS.items() if qkv_bias or not k.endswith((".query.bias", ".value.bias"))}
    module = HFSwinV2Attention(dim, heads, window, shift, (height, width), qkv_bias, pretrained).eval()
    if hf_table:
        params = dict(params, **{"attn.relative_coords_table": ag.from_numpy(module.coords.numpy().copy())})
    load(module, params, keys)
    return module, rng.standard_normal((batch, height, width, dim)), config, keys


SWIN_V2_CASES = [
    # (B, H, W, C, heads, window, shift, qkv_bias, pretrained_window_size)
    (2, 8, 12, 16, 2, 4, 2, True, 0),     # multiples, shifted
    (2, 7, 10, 16, 2, 4, 2, True, 0),     # padding before the roll
    (1, 5, 9, 8, 1, 7, 3, True, 0),       # H < window: window 5, no shift (both rules agree here)
    (1, 6, 6, 12, 3, 6, 3, True, 0),      # window == map
    (2, 8, 8, 16, 4, 4, 0, False, 0),     # no shift, no q/v bias (k has none anyway)
    (1, 9, 11, 12, 2, 3, 1, True, 6),     # odd window 3, padding, pretrained_window_size 6
]


@pytest.mark.parametrize("case", SWIN_V2_CASES,
                         ids=lambda c: "x".join(map(str, c[:4])) + f"-h{c[4]}w{c[5]}s{c[6]}p{c[8]}")
def test_swin_v2_agrees_with_transformers_swinv2_layer(case):
    *shape, qkv_bias, pretrained = case
    module, x, config, keys = swin_v2_case(*shape, qkv_bias=qkv_bias, pretrained=pretrained)
    report = compare(module, "swin-v2", x, key_map=keys, config=config, rtol=TOL)
    assert report.ok, report


def test_swin_v2_transformers_coordinate_table_is_float32():
    """Expected difference: HF builds ``relative_coords_table`` in float32 (``.float()``) and then casts it to the
    MLP's dtype, so a float64 module holds float32-rounded coordinates.  With that table loaded on both sides,
    every computed tensor agrees; only the row comparing the table with npattn's float64 ``init`` fails, by ~1e-8."""
    module, x, config, keys = swin_v2_case(2, 8, 12, 16, 2, 4, 2, hf_table=True)
    report = compare(module, "swin-v2", x, key_map=keys, config=config, rtol=TOL)
    assert failing_rows(report) == ["constant attn.relative_coords_table (torch coords) (npattn's init for config)"], \
        report
    table = module.coords.numpy()
    exact = ag.to_numpy(npattn_swin_v2.coordinates_table((4, 4), 0))
    assert 1e-9 < np.abs(table - exact).max() < 1e-7
    assert np.array_equal(table, exact.astype(np.float32).astype(np.float64))


def test_swin_v2_transformers_adds_the_shift_mask_twice():
    """Expected difference: ``Swinv2SelfAttention.forward`` adds ``attention_mask`` to the scores in two consecutive
    statements, so masked logits get -200, not the official -100.  Invisible while the logit scale t is small
    (exp(-100) is already negligible), but t is clamped at 100 and cos t spans [-100, 100]: with a head at the clamp a
    masked key can outweigh unmasked ones and the outputs differ.  npattn with ``mask_value=-200`` agrees."""
    # heads 0, 1 above the clamp (gradient 0), 2, 3 below; head dim 2 so that cosines spread over [-1, 1]
    scale = [math.log(100.0) + 0.5, math.log(100.0) + 0.1, math.log(100.0) - 0.05, math.log(60.0)]
    module, x, config, keys = swin_v2_case(2, 8, 8, 8, 4, 4, 2, logit_scale=scale)
    official = compare(module, "swin-v2", x, key_map=keys, config=config, rtol=TOL)
    assert not official.ok and "output" in failing_rows(official), official
    assert max_error(official) > 1e-3, official
    doubled = compare(module, "swin-v2", x, key_map=keys, config=config, rtol=TOL, mask_value=-200.0)
    assert doubled.ok, doubled
    unshifted, x0, config0, keys0 = swin_v2_case(2, 8, 8, 8, 4, 4, 0, logit_scale=scale)
    report = compare(unshifted, "swin-v2", x0, key_map=keys0, config=config0, rtol=TOL)
    assert report.ok, report                                   # no shift, no mask: the clamp itself agrees


@pytest.mark.parametrize("case,official_window", [((1, 9, 5, 8, 2, 7, 3), 5), ((2, 9, 4, 8, 2, 4, 2), 4),
                                                   ((1, 13, 6, 12, 3, 7, 3), 6)],
                         ids=lambda c: f"{c[1]}x{c[2]}-w{c[5]}s{c[6]}" if isinstance(c, tuple) else f"official{c}")
def test_swin_v2_transformers_window_rule_reads_the_height_only(case, official_window):
    """Expected difference: ``Swinv2Layer._compute_window_shift`` computes window = min(r, w) and shift = 0 if
    r <= window per axis (timm's rule) but keeps only entry 0, the height.  A map with H > window >= W keeps the full
    window and the shift (npattn's ``rule="detection"``: pad, always shift), where the official min rule (npattn's
    default) uses a W x W window without shift.  The rule is fixed at construction from input_resolution."""
    window = case[5]
    module, x, config, keys = swin_v2_case(*case, rule="detection")
    report = compare(module, "swin-v2", x, key_map=keys, config=config, rtol=TOL)
    assert report.ok, report
    official = dict(config, rule="official")
    if official_window < window:    # the official tables are for a W x W window: the structures differ
        with pytest.raises(ValueError, match="must have shape"):
            compare(module, "swin-v2", x, key_map=keys, config=official, rtol=TOL)
    else:                           # same window, but the official rule drops the shift
        report = compare(module, "swin-v2", x, key_map=keys, config=official, rtol=TOL)
        assert not report.ok and "output" in failing_rows(report), report


# ---------------------------------------------------------------------------------------------
# multi-scale deformable attention


class HFDeformable(nn.Module):
    """npattn's / the official argument order -> ``DeformableDetrMultiscaleDeformableAttention.forward``.

    The official ``input_padding_mask`` (True = padded) becomes HF's ``attention_mask`` (True = valid: HF does
    ``masked_fill(~attention_mask, 0)``); ``invert_mask=False`` passes it unchanged (the mistake a port could make)."""

    def __init__(self, d_model, n_levels, n_heads, n_points, invert_mask=True):
        super().__init__()
        config = DeformableDetrConfig(d_model=d_model, num_feature_levels=n_levels, dropout=0.0, attention_dropout=0.0)
        self.attn = DeformableDetrMultiscaleDeformableAttention(config, num_heads=n_heads, n_points=n_points).double()
        self.invert_mask = invert_mask

    def forward(self, query, reference_points, input_flatten, spatial_shapes, level_start_index, padding_mask=None):
        mask = None if padding_mask is None else (~padding_mask if self.invert_mask else padding_mask)
        shapes = [tuple(int(n) for n in shape) for shape in spatial_shapes.tolist()]
        out, _ = self.attn(query, attention_mask=mask, encoder_hidden_states=input_flatten,
                           reference_points=reference_points, spatial_shapes=spatial_shapes,
                           spatial_shapes_list=shapes, level_start_index=level_start_index)
        return out


MSDEFORM_KEYS = {f"attn.{layer}.{kind}": f"{layer}.{kind}" for layer in
                 ("sampling_offsets", "attention_weights", "value_proj", "output_proj") for kind in ("weight", "bias")}


def msdeform_case(batch, queries, dim, heads, points, shapes, corners, padded=0, spread=(0.05, 0.95), seed=0,
                  invert_mask=True):
    """(HF module, inputs, config) for one configuration; ``corners`` 2 (points) or 4 (boxes); ``padded`` positions
    at the end of the last image are padding."""
    rng = np.random.default_rng(seed)
    config = dict(d_model=dim, n_levels=len(shapes), n_heads=heads, n_points=points)
    params = npattn.get("msdeform").init(rng, **config)
    # init's zero offset / attention weight maps would make both independent of the query
    params = perturb(params, rng, {"sampling_offsets.weight": 0.3, "attention_weights.weight": 0.5,
                                   "attention_weights.bias": 0.5, "value_proj.bias": 0.2, "output_proj.bias": 0.2})
    module = load(HFDeformable(dim, len(shapes), heads, points, invert_mask).eval(), params, MSDEFORM_KEYS)
    total = sum(h * w for h, w in shapes)
    reference = rng.uniform(*spread, (batch, queries, len(shapes), 2))
    if corners == 4:
        reference = np.concatenate([reference, rng.uniform(0.1, 0.6, (batch, queries, len(shapes), 2))], axis=-1)
    mask = np.zeros((batch, total), dtype=bool)
    if padded:
        mask[-1, total - padded:] = True
    inputs = (rng.standard_normal((batch, queries, dim)), reference, rng.standard_normal((batch, total, dim)),
              np.array(shapes, dtype=np.int64), np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int64),
              mask)
    return module, inputs, config


MSDEFORM_CASES = {
    # id: (batch, queries, dim, heads, points, shapes, corners, padded, spread)
    "3levels-nonsquare-points-padded": (2, 5, 16, 2, 2, ((6, 5), (3, 4), (2, 2)), 2, 4, (0.05, 0.95)),
    "1level-1head-1point-batch1": (1, 1, 8, 1, 1, ((7, 3),), 2, 0, (0.05, 0.95)),
    "4levels-boxes-to-1x1": (2, 4, 16, 4, 3, ((9, 7), (5, 4), (3, 2), (1, 1)), 4, 0, (0.05, 0.95)),
    "boxes-padded-odd-head-dim": (1, 6, 12, 2, 4, ((5, 8), (3, 3)), 4, 7, (0.05, 0.95)),
    "points-outside-the-map": (2, 7, 8, 2, 3, ((4, 6), (2, 3)), 2, 0, (-0.3, 1.3)),
    "1xW-and-Hx1-levels": (1, 3, 8, 4, 2, ((1, 9), (6, 1)), 2, 2, (0.05, 0.95)),
}


@pytest.mark.parametrize("case", MSDEFORM_CASES.values(), ids=MSDEFORM_CASES.keys())
def test_msdeform_agrees_with_transformers(case):
    *shape, spread = case
    module, inputs, config = msdeform_case(*shape, spread=spread)
    report = compare(module, "msdeform", *inputs, key_map=MSDEFORM_KEYS, config=config, rtol=TOL)
    assert report.ok, report


def test_msdeform_transformers_attention_mask_is_true_where_valid():
    """Interface difference: HF's ``attention_mask`` is True at valid positions (``masked_fill(~mask, 0)``), the
    official ``input_padding_mask`` True at padded ones.  Passed through unchanged, the padding is inverted."""
    module, inputs, config = msdeform_case(*MSDEFORM_CASES["3levels-nonsquare-points-padded"][:-1],
                                           invert_mask=False)
    report = compare(module, "msdeform", *inputs, key_map=MSDEFORM_KEYS, config=config, rtol=TOL)
    assert not report.ok and "output" in failing_rows(report), report


# ---------------------------------------------------------------------------------------------
# ViT: transformers ViTAttention and vit-pytorch Attention


class HFViTAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True, head_dim=None, implementation="sdpa", attention_mask=None):
        super().__init__()
        config = ViTConfig(hidden_size=dim, num_attention_heads=heads, qkv_bias=qkv_bias,
                           attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
        if head_dim is not None:
            config.head_dim = head_dim                     # read by ViTAttention (getattr(config, "head_dim", ...))
        config._attn_implementation = implementation
        self.attn = ViTAttention(config).double()
        width = heads * (head_dim or dim // heads)
        self.qkv = nn.Linear(dim, 3 * width, bias=qkv_bias).double()
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            setattr(self.attn, name, FusedRows(self.qkv, part, width))
        self.attention_mask = attention_mask

    def forward(self, x):
        return self.attn(x, self.attention_mask)[0]


VIT_KEYS = {"attn.o_proj.weight": "proj.weight", "attn.o_proj.bias": "proj.bias"}


def vit_case(batch, tokens, dim, heads, qkv_bias=True, head_dim=None, implementation="sdpa", mask=False, seed=0):
    rng = np.random.default_rng(seed)
    config = dict(dim=dim, num_heads=heads, attn_head_dim=head_dim, qkv_bias=qkv_bias, qk_norm=False)
    params = npattn.get("vit-attention").init(rng, **config)
    additive = rng.standard_normal((batch, 1, tokens, tokens)) if mask else None
    module = HFViTAttention(dim, heads, qkv_bias, head_dim, implementation,
                            None if additive is None else torch.from_numpy(additive))
    keys = {**VIT_KEYS, "qkv.weight": "qkv.weight", **({"qkv.bias": "qkv.bias"} if qkv_bias else {})}
    load(module.eval(), params, keys)
    options = {} if additive is None else {"attn_mask": ag.from_numpy(additive)}
    return module, rng.standard_normal((batch, tokens, dim)), config, keys, options


VIT_CASES = {
    "2x7x16-h4": (2, 7, 16, 4, True, None, False),
    "1x1x8-h1-nobias": (1, 1, 8, 1, False, None, False),
    "3x5x12-h3-headdim5": (3, 5, 12, 3, True, 5, False),
    "2x6x8-h2-additive-mask": (2, 6, 8, 2, True, None, True),
    "1x9x6-h6-headdim1": (1, 9, 6, 6, True, None, False),
}


@pytest.mark.parametrize("case", VIT_CASES.values(), ids=VIT_CASES.keys())
def test_vit_attention_agrees_with_transformers(case):
    *shape, qkv_bias, head_dim, mask = case
    module, x, config, keys, options = vit_case(*shape, qkv_bias=qkv_bias, head_dim=head_dim, mask=mask)
    report = compare(module, "vit-attention", x, key_map=keys, config=config, rtol=TOL, **options)
    assert report.ok, report


def test_vit_attention_transformers_eager_softmax_is_float32():
    """Expected difference: as Swin's, ViT's ``eager_attention_forward`` takes the softmax with
    ``dtype=torch.float32``; float64 agreement needs ``attn_implementation="sdpa"``."""
    module, x, config, keys, options = vit_case(2, 7, 16, 4, implementation="eager")
    report = compare(module, "vit-attention", x, key_map=keys, config=config, rtol=TOL)
    assert not report.ok and "output" in failing_rows(report), report
    assert 1e-9 < max_error(report) < 1e-5, report
    assert compare(module, "vit-attention", x, key_map=keys, config=config, rtol=1e-5, atol=1e-6).ok


def _vit_pytorch():
    """vit-pytorch's ``vit`` module, loaded by file: the package ``__init__`` imports torchvision, which does not
    import here (CUDA wheel, CPU torch), and ``vit.py`` itself needs only torch and einops."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vit-pytorch is not installed")
    pytest.importorskip("einops")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "vit.py"
    module_spec = importlib.util.spec_from_file_location("_vit_pytorch_vit", path)
    vit = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(vit)
    return vit


VIT_PYTORCH_KEYS = {"to_qkv.weight": "qkv.weight", "to_out.0.weight": "proj.weight", "to_out.0.bias": "proj.bias"}


def vit_pytorch_case(batch, tokens, dim, heads, dim_head, seed=0):
    """vit-pytorch ``Attention(dim, heads, dim_head)`` with its pre-LayerNorm made identity (npattn's entry, like
    timm's, starts after the block's norm), npattn's init loaded."""
    vit = _vit_pytorch()
    rng = np.random.default_rng(seed)
    module = vit.Attention(dim, heads=heads, dim_head=dim_head).double()
    module.norm = nn.Identity()
    config = dict(dim=dim, num_heads=heads, attn_head_dim=dim_head, qkv_bias=False, qk_norm=False)
    return module.eval(), rng.standard_normal((batch, tokens, dim)), config


@pytest.mark.parametrize("case", [(2, 7, 16, 4, 8), (1, 5, 12, 3, 5), (3, 4, 8, 1, 4), (2, 3, 16, 2, 64)],
                         ids=lambda c: "x".join(map(str, c[:3])) + f"-h{c[3]}d{c[4]}")
def test_vit_attention_agrees_with_vit_pytorch(case):
    module, x, config = vit_pytorch_case(*case)
    load(module, npattn.get("vit-attention").init(np.random.default_rng(1), **config), VIT_PYTORCH_KEYS)
    report = compare(module, "vit-attention", x, key_map=VIT_PYTORCH_KEYS, config=config, rtol=TOL)
    assert report.ok, report


def test_vit_pytorch_drops_the_projection_for_one_full_width_head():
    """Structural difference: ``vit.Attention`` has ``to_out = Identity`` when heads == 1 and dim_head == dim
    (``project_out``), so it has no projection to load; npattn always has ``proj``.  With an identity ``proj``
    npattn gives the same output."""
    module, x, config = vit_pytorch_case(2, 5, 8, 1, 8)
    assert isinstance(module.to_out, nn.Identity)
    with pytest.raises(KeyError, match="proj"):
        compare(module, "vit-attention", x, key_map={"to_qkv.weight": "qkv.weight"}, config=config)
    params = npattn.get("vit-attention").init(np.random.default_rng(1), **config)
    params = dict(params, **{"proj.weight": ag.from_numpy(np.eye(8)), "proj.bias": ag.from_numpy(np.zeros(8))})
    module.to_qkv.weight.data = torch.from_numpy(ag.to_numpy(params["qkv.weight"]).copy())
    ours = npattn.get("vit-attention").apply(params, ag.from_numpy(x), num_heads=1, attn_head_dim=8, qkv_bias=False,
                                             qk_norm=False)
    theirs = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(theirs, ag.to_numpy(ours), rtol=TOL, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# NAT / DiNAT


def test_transformers_dinat_needs_natten():
    """No library comparison for ``nat``/``dinat``: transformers' ``NeighborhoodAttention`` calls NATTEN's
    ``natten2dqkrpb``/``natten2dav``, stubs that raise without the ``natten`` package (not installed here; it needs
    a compiled build, and NATTEN >= 0.20 dropped the CPU kernels and RPB).  If natten appears, compare it here."""
    from transformers.models.dinat.modeling_dinat import DinatConfig, NeighborhoodAttention
    from transformers.utils import OptionalDependencyNotAvailable

    attention = NeighborhoodAttention(DinatConfig(), dim=8, num_heads=2, kernel_size=3, dilation=1)
    with pytest.raises(OptionalDependencyNotAvailable):
        attention(torch.randn(1, 5, 5, 8))
