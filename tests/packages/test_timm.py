"""timm 1.0.31's attention layers (``timm.layers``) against npattn across configurations.

Each factory maps npattn's ``init`` keywords to the timm constructor arguments that select the same
architecture (``reduction`` -> ``rd_ratio=1 / reduction``, ``groups``, kernel sizes, biases npattn's config
switches) and leaves everything else at timm's defaults: widths rounded by timm's ``make_divisible``, eps,
input splits.  The differences the EXPECTED tests record are what ``check_module`` found at the shrunk
configuration it reports, without the factory pointing at them; where a test then sets a timm argument to
step past one difference (``split_input=False``, an explicit ``rd_channels``), its name says so, and what it
finds next is again the harness's own finding.  docs/fuzzing.md lists them with versions.

Loading: ``timm/__init__.py`` and ``timm/layers/__init__.py`` import torchvision, which has no CPU wheel here.
:func:`timm_layers` loads one ``timm/layers/<file>.py`` under bare namespace packages ``timm`` and
``timm.layers`` (so its relative imports resolve without the packages' ``__init__``), and, for the files that
reach ``norm_act.py`` (``selective_kernel``, ``non_local_attn``, ``cbam``: through ``conv_bn_act``), with a
stub ``torchvision.ops.misc`` holding a placeholder ``FrozenBatchNorm2d``: norm_act.py imports it only for its
batch-norm freezing helpers, which nothing here calls.  The stubs and bare packages are in ``sys.modules``
only while a file loads, and removed after (a real torchvision, where installed, is put back).

Layout adaptor: npattn holds some 1x1 convolutions as Linear-shaped ``(out, in)`` matrices (SE's ``fc1``,
CBAM's ``mlp.0``) and GCNet's LayerNorm affine as ``(C, 1, 1)``; timm holds ``(out, in, 1, 1)`` and ``(C,)``.
:func:`reshaped` puts a reshape parametrization on those timm tensors, so their state_dict entry has npattn's
shape (the same numbers, the same function; gradients reach the original tensor).
"""
import functools
import importlib
import importlib.util
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hypothesis")
if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed", allow_module_level=True)

from torch.nn.utils import parametrize  # noqa: E402

import npattn  # noqa: E402
from npattn.interop.torch import check_module  # noqa: E402
from npattn.space import Choice  # noqa: E402
from tests.packages.spaces import NONEMPTY, timm_layers  # noqa: E402

pytestmark = [pytest.mark.packages, pytest.mark.torch,
              pytest.mark.filterwarnings(r"ignore:gcnet. int\(C \* ratio\) = 1")]  # npattn's one-plane note

EXAMPLES = 20


class _Reshape(torch.nn.Module):
    """A parametrization: the stored tensor has npattn's shape, the module sees its own."""

    def __init__(self, module_shape, stored_shape):
        super().__init__()
        self.module_shape, self.stored_shape = tuple(module_shape), tuple(stored_shape)

    def forward(self, stored):
        return stored.reshape(self.module_shape)

    def right_inverse(self, value):
        return value.reshape(self.stored_shape)


def reshaped(module, stored_shapes: dict):
    """``module`` with each named tensor (``"fc1.weight"``) stored in the given shape (see module docstring)."""
    for path, shape in stored_shapes.items():
        owner, leaf = path.rsplit(".", 1)
        holder = module.get_submodule(owner)
        parametrize.register_parametrization(holder, leaf, _Reshape(getattr(holder, leaf).shape, shape), unsafe=True)
    return module


def stored(path: str) -> str:
    """The state_dict key of a tensor :func:`reshaped` re-stores (``fc1.parametrizations.weight.original``)."""
    owner, leaf = path.rsplit(".", 1)
    return f"{owner}.parametrizations.{leaf}.original"


def _raises(*args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check_module(*args, max_examples=EXAMPLES, **kwargs)
    return str(info.value)


def _agrees(*args, **kwargs):
    check_module(*args, max_examples=EXAMPLES, **kwargs)


# ---------------------------------------------------------------------------------------------
# SEModule vs se


def _se(channels, reduction, bias, rd_channels=None):
    module = timm_layers("squeeze_excite").SEModule(channels, rd_ratio=1 / reduction, rd_channels=rd_channels,
                                                    bias=bias)
    return reshaped(module, {"fc1.weight": module.fc1.weight.shape[:2], "fc2.weight": module.fc2.weight.shape[:2]})


SE_NAMES = {stored("fc1.weight"): "fc1.weight", stored("fc2.weight"): "fc2.weight"}


def test_expected_se_rounds_the_hidden_width_to_eight():
    # timm: rd_channels = make_divisible(channels / reduction, 8, round_limit=0) -- a multiple of 8, at least 8;
    # the official SE: channels // reduction
    message = _raises(_se, "se", key_map=SE_NAMES)
    assert "config {'reduction': 1, 'channels': 1, 'bias': False}" in message
    assert "copying a param with shape torch.Size([1, 1]) from checkpoint, the shape in current model is " \
           "torch.Size([8, 1])" in message


def test_se_with_the_official_hidden_width_agrees():
    _agrees(lambda channels, reduction, bias: _se(channels, reduction, bias, rd_channels=channels // reduction),
            "se", key_map=SE_NAMES)


# ---------------------------------------------------------------------------------------------
# EcaModule vs eca


def _eca(channels, k_size, gamma, b):
    """k_size None is the paper's adaptive kernel (timm: ``channels`` given); else a fixed kernel."""
    eca = timm_layers("eca")
    if k_size is None:
        return eca.EcaModule(channels, gamma=gamma, beta=b)
    return eca.EcaModule(None, kernel_size=k_size)


def test_expected_eca_adaptive_kernel_is_at_least_3():
    # timm: kernel_size = max(t if t % 2 else t + 1, 3); the official ECA has no max (C = 1 gives k = 1)
    message = _raises(_eca, "eca")
    assert "config {'channels': 1, 'k_size': None, 'gamma': 2, 'b': 1}" in message
    assert "size mismatch for conv.weight: copying a param with shape torch.Size([1, 1, 1]) from checkpoint, " \
           "the shape in current model is torch.Size([1, 1, 3])" in message


FIXED_K = Choice(1, 3, 5, 7)


def test_expected_eca_refuses_an_empty_batch():
    # timm: x.mean((2, 3)).view(x.shape[0], 1, -1) -- a -1 beside an empty batch axis is ambiguous
    message = _raises(_eca, "eca", k_size=FIXED_K)
    assert "input sizes {'batch': 0, 'height': 1, 'width': 1}" in message
    assert "raised RuntimeError: cannot reshape tensor of 0 elements" in message


def test_eca_with_a_fixed_kernel_agrees_on_nonempty_batches():
    _agrees(_eca, "eca", batch=NONEMPTY, k_size=FIXED_K)


# ---------------------------------------------------------------------------------------------
# GatherExcite vs ge-theta-minus / ge-theta / ge-theta-plus


def test_ge_theta_minus_agrees():
    _agrees(lambda variant, channels, extent: timm_layers("gather_excite").GatherExcite(
        channels, extent=extent, use_mlp=False), "ge-theta-minus")


def test_expected_ge_theta_raises_type_error():
    # timm: create_conv2d(..., *dd) unpacks the {'device', 'dtype'} dict's keys as positional arguments
    # (gather_excite.py line 56; **dd meant), so extra_params=True never constructs
    message = _raises(lambda variant, channels, extent, feat_size: timm_layers("gather_excite").GatherExcite(
        channels, feat_size=feat_size, extra_params=True, extent=extent, use_mlp=False), "ge-theta")
    assert "config {'variant': 'theta', 'channels': 1, 'extent': 0, 'feat_size': 1}" in message
    assert "raised TypeError: create_conv2d() got multiple values for argument 'kernel_size'" in message


def test_expected_ge_theta_plus_raises_type_error():
    message = _raises(lambda variant, channels, extent, feat_size, reduction: timm_layers("gather_excite").GatherExcite(
        channels, feat_size=feat_size, extra_params=True, extent=extent, rd_ratio=1 / reduction), "ge-theta-plus")
    assert "config {'variant': 'theta_plus', 'channels': 1, 'extent': 0, 'feat_size': 1, 'reduction': 1}" in message
    assert "raised TypeError: create_conv2d() got multiple values for argument 'kernel_size'" in message


def test_expected_ge_mlp_raises_type_error():
    """The same slip in ``ConvMlp(channels, rd_channels, act_layer=act_layer, *dd)``: use_mlp=True (timm's
    default, every variant) never constructs either, so the theta+ difference the spec records (no ReLU
    between the gather BN and the MLP) is out of reach: nothing here builds timm's theta+."""
    with pytest.raises(TypeError, match="got multiple values for argument 'act_layer'"):
        timm_layers("gather_excite").GatherExcite(4)


# ---------------------------------------------------------------------------------------------
# GlobalContext vs gcnet


def _gc(channels, ratio, pooling_type, fusion_types, zero_init, rd_channels=None):
    """mmcv's ContextBlock options as timm's switches: attention pooling, the add and the scale (mul) fusions."""
    module = timm_layers("global_context").GlobalContext(
        channels, use_attn=pooling_type == "att", fuse_add="channel_add" in fusion_types,
        fuse_scale="channel_mul" in fusion_types, rd_ratio=ratio, rd_channels=rd_channels)
    mlps = [name for name in ("mlp_add", "mlp_scale") if getattr(module, name) is not None]
    planes = module.get_submodule(mlps[0]).fc1.out_channels
    return reshaped(module, {f"{mlp}.norm.{leaf}": (planes, 1, 1) for mlp in mlps for leaf in ("weight", "bias")})


def gc_names(config):
    """timm's names for the configuration's tensors: conv_attn with attention pooling, an MLP per fusion."""
    names = {"conv_attn.weight": "conv_mask.weight", "conv_attn.bias": "conv_mask.bias"}
    if config["pooling_type"] != "att":
        names = {}
    for timm_name, npattn_name in (("mlp_add", "channel_add"), ("mlp_scale", "channel_mul")):
        if npattn_name not in config["fusion_types"]:
            continue
        for leaf in ("weight", "bias"):
            names.update({f"{timm_name}.fc1.{leaf}": f"{npattn_name}_conv.0.{leaf}",
                          stored(f"{timm_name}.norm.{leaf}"): f"{npattn_name}_conv.1.{leaf}",
                          f"{timm_name}.fc2.{leaf}": f"{npattn_name}_conv.3.{leaf}"})
    return names


def test_expected_gcnet_rounds_the_hidden_width():
    # timm: rd_channels = make_divisible(C * ratio, 1, round_limit=0) = int(C * ratio + 0.5), to the nearest;
    # mmcv's ContextBlock: int(C * ratio), truncated (6 * 0.25 = 1.5: 2 planes against 1)
    message = _raises(_gc, "gcnet", key_map=gc_names)
    assert "config {'channels': 6, 'ratio': 0.25, 'pooling_type': 'att', 'fusion_types': ('channel_add',)" in message
    assert "size mismatch for mlp_add.fc1.weight: copying a param with shape torch.Size([1, 6, 1, 1]) from " \
           "checkpoint, the shape in current model is torch.Size([2, 6, 1, 1])" in message


def test_expected_gcnet_layer_norm_eps_with_the_official_width():
    message = _raises(lambda **config: _gc(**config, rd_channels=int(config["channels"] * config["ratio"])), "gcnet",
                      key_map=gc_names)
    # timm's ConvMlp normalises with its LayerNorm2d, eps 1e-6 (norm.py); mmcv's nn.LayerNorm([P, 1, 1]): 1e-5.
    # It shows from P = 2 planes on (one plane normalises to its bias whatever the eps): ~1e-5 on the gradients
    assert "config {'channels': 8, 'ratio': 0.25, 'pooling_type': 'att', 'fusion_types': ('channel_add',)" in message
    assert "input sizes {'batch': 1, 'height': 1, 'width': 1}" in message
    assert "[XX] output:" in message and "[ok] grad channel_add_conv.1.bias" in message


# ---------------------------------------------------------------------------------------------
# CoordAttn vs coord


def _coord(channels, reduction, min_mip, bias, rd_channels=None):
    """timm's CoordAttn has no min_mip: its width rule is its own (rd_ratio * se_factor, rounded to 8)."""
    return timm_layers("coord_attn").CoordAttn(channels, rd_ratio=1 / reduction, rd_channels=rd_channels, bias=bias)


def test_expected_coord_width_rule():
    # timm: rd_channels = make_divisible(C / reduction * 2/3, 8, round_limit=0) (se_factor 2/3; a multiple of 8,
    # at least 8); the official CoordAtt: mip = max(min_mip, C // reduction)
    message = _raises(_coord, "coord", act="hardswish")
    assert "config {'channels': 1, 'reduction': 1, 'min_mip': 1, 'bias': False}" in message
    assert "size mismatch for conv1.weight: copying a param with shape torch.Size([1, 1, 1, 1]) from checkpoint, " \
           "the shape in current model is torch.Size([8, 1, 1, 1])" in message


def test_coord_with_the_official_width_agrees():
    _agrees(lambda channels, reduction, min_mip, bias: _coord(
        channels, reduction, min_mip, bias, rd_channels=max(min_mip, channels // reduction)), "coord", act="hardswish")


# ---------------------------------------------------------------------------------------------
# SplitAttn vs split-attention


def _split(in_channels, channels, radix, cardinality, kernel_size, bias, norm, reduction_factor, rd_channels=None):
    return timm_layers("split_attn").SplitAttn(
        in_channels, channels, kernel_size=kernel_size, groups=cardinality, bias=bias, radix=radix,
        rd_ratio=1 / reduction_factor, rd_channels=rd_channels, norm_layer=torch.nn.BatchNorm2d if norm else None)


def _width_at_most_32(v) -> bool:
    """Cin R / reduction_factor <= 32: both width rules give 32 there (the official max(Cin R // rf, 32), timm's
    make_divisible(Cin R / rf, 8, min_value=32)); above it they part (the next test)."""
    return v.in_channels * v.radix <= 32 * v.reduction_factor


def test_split_attention_agrees_on_nonempty_batches_where_the_widths_agree():
    space = npattn.get("split-attention").space.require(_width_at_most_32)
    _agrees(_split, "split-attention", batch=NONEMPTY, space=space)


def test_expected_split_attention_refuses_an_empty_batch():
    # timm: RadixSoftmax's output .view(B, -1, 1, 1) (split_attn.py line 107): -1 beside an empty batch axis
    space = npattn.get("split-attention").space.require(_width_at_most_32)
    message = _raises(_split, "split-attention", space=space)
    assert "input sizes {'batch': 0, 'height': 1, 'width': 1}" in message
    assert "raised RuntimeError: cannot reshape tensor of 0 elements into shape [0, -1, 1, 1]" in message


def test_expected_split_attention_width_rule_where_it_exceeds_32():
    """Found unaided (the registry space reaches Cin R / reduction_factor > 32): the official width
    max(Cin R // reduction_factor, 32) and timm's make_divisible(Cin R / reduction_factor, 8, min_value=32)
    part only above 32, where timm rounds up to a multiple of 8 (36 -> 40)."""
    message = _raises(_split, "split-attention", batch=NONEMPTY)
    assert "config {'radix': 3, 'cardinality': 1, 'in_channels': 12, 'channels': 1," in message
    assert "size mismatch for fc1.weight: copying a param with shape torch.Size([36, 1, 1, 1]) from checkpoint, " \
           "the shape in current model is torch.Size([40, 1, 1, 1])" in message


# ---------------------------------------------------------------------------------------------
# SelectiveKernel vs sk


def _sk(channels, groups, branches, reduction, min_hidden, dilated, **timm_arguments):
    """Branch m: kernel 3 + 2m; ``keep_3x3`` turns it into timm's 3x3 with dilation m + 1 (npattn's ``dilated``)."""
    return timm_layers("selective_kernel").SelectiveKernel(
        channels, channels, kernel_size=[3 + 2 * m for m in range(branches)], groups=groups,
        rd_ratio=1 / reduction, keep_3x3=dilated, **timm_arguments)


def sk_names(config):
    names = {"attn.fc_reduce.weight": "fc.weight", "attn.fc_select.weight": "fc_select.weight"}
    for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        names[f"attn.bn.{leaf}"] = f"fc_bn.{leaf}"
        names.update({f"paths.{m}.bn.{leaf}": f"bns.{m}.{leaf}" for m in range(config["branches"])})
    names.update({f"paths.{m}.conv.weight": f"convs.{m}.weight" for m in range(config["branches"])})
    return names


def _sk_width(config):
    """The official SKNet width d = max(C // reduction, L)."""
    return max(config["channels"] // config["reduction"], config["min_hidden"])


def test_expected_sk_width():
    # timm: attn_channels = make_divisible(C / reduction, 8) (a multiple of 8, at least 8); SKNet: max(C // r, L)
    message = _raises(_sk, "sk", key_map=sk_names)
    assert "config {'groups': 1, 'channels': 1, 'branches': 1, 'reduction': 1, 'min_hidden': 1, 'dilated': False}" \
        in message
    assert "size mismatch for attn.fc_reduce.weight: copying a param with shape torch.Size([1, 1, 1, 1]) from " \
           "checkpoint, the shape in current model is torch.Size([8, 1, 1, 1])" in message


def test_expected_sk_splits_its_input_with_the_official_width():
    # timm's split_input=True (default) feeds each branch C / M input channels (SKNet: all C), and asserts
    # in_channels % num_paths == 0 (selective_kernel.py line 125): C = 1 with two branches does not construct
    message = _raises(lambda **config: _sk(**config, rd_channels=_sk_width(config)), "sk", key_map=sk_names)
    assert "config {'groups': 1, 'channels': 1, 'branches': 2, 'reduction': 1, 'min_hidden': 1, 'dilated': False}" \
        in message
    assert "raised AssertionError at " in message and "selective_kernel.py:125" in message


def test_sk_without_the_split_and_with_the_official_width_agrees():
    _agrees(lambda **config: _sk(**config, split_input=False, rd_channels=_sk_width(config)), "sk", key_map=sk_names)


# ---------------------------------------------------------------------------------------------
# NonLocalAttn vs nonlocal (embedded Gaussian)


def _non_local(channels, inter_channels, mode, bn_layer, zero_init, conv_std, **timm_arguments):
    """inter_channels None is the official C // 2: timm's rd_ratio 1/2 (timm's own default is 1/8)."""
    if inter_channels is None:
        timm_arguments.setdefault("rd_ratio", 1 / 2)
    else:
        timm_arguments.setdefault("rd_channels", inter_channels)
    return timm_layers("non_local_attn").NonLocalAttn(channels, **timm_arguments)


NON_LOCAL_NAMES = {f"{timm_name}.{leaf}": f"{npattn_name}.{leaf}"
                   for timm_name, npattn_name in (("t", "theta"), ("p", "phi"), ("z", "W"))
                   for leaf in ("weight", "bias")}
NON_LOCAL_NAMES.update({f"norm.{leaf}": f"W_bn.{leaf}"
                        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
#: timm's block: BN after W, no sub-sampling, softmax of scaled logits (use_scale=True by default)
NON_LOCAL = {"bn_layer": True, "sub_sample": False, "pool_first": False, "use_scale": True, "scale": None}


def _official_inter(config):
    return config["inter_channels"] or max(config["channels"] // 2, 1)


def test_expected_non_local_width():
    # timm: rd_channels = make_divisible(C * rd_ratio, 8) (a multiple of 8, at least 8); official: C // 2
    message = _raises(_non_local, "nonlocal", key_map=NON_LOCAL_NAMES, **NON_LOCAL)
    assert "config {'channels': 1, 'inter_channels': None, 'mode': 'embedded_gaussian', 'bn_layer': True," in message
    assert "size mismatch for t.weight: copying a param with shape torch.Size([1, 1, 1, 1]) from checkpoint, " \
           "the shape in current model is torch.Size([8, 1, 1, 1])" in message


def test_expected_non_local_refuses_an_empty_batch_with_the_official_width():
    message = _raises(lambda **config: _non_local(**config, rd_channels=_official_inter(config)), "nonlocal",
                      key_map=NON_LOCAL_NAMES, **NON_LOCAL)
    # timm: t.view(B, C, -1) (non_local_attn.py line 57): -1 beside an empty batch axis
    assert "'conv_std': None}, options {'sub_sample': False, 'pool_first': False, 'use_scale': True, 'scale': None}, " \
           "input sizes {'batch': 0, 'height': 1, 'width': 1}" in message
    assert "raised RuntimeError: cannot reshape tensor of 0 elements into shape [0, 1, -1]" in message


def test_expected_non_local_scale_with_the_official_width():
    message = _raises(lambda **config: _non_local(**config, rd_channels=_official_inter(config)), "nonlocal",
                      key_map=NON_LOCAL_NAMES, batch=NONEMPTY, **NON_LOCAL)
    # timm: self.scale = in_channels ** -0.5 (C); the official USE_SCALE: Ci ** -0.5 (the embedding width).
    # Shrunk to C = 2, Ci = 1 (scale 0.707 against 1) on a 1x2 map (a 1x1 map's softmax is 1 whatever the scale)
    assert "config {'channels': 2, 'inter_channels': None," in message
    assert "input sizes {'batch': 1, 'height': 1, 'width': 2}" in message and "[XX] output:" in message


def test_non_local_unscaled_with_the_official_width_agrees_on_nonempty_batches():
    """conv_std=None: with the official N(0, 0.01^2) init, W's output is ~1e-4 and its train-mode BN amplifies the
    rounding of W.bias's gradient, exactly 0 (BN removes a constant), to ~1.7e-12 on both sides (seed 0 draws it)."""
    _agrees(lambda **config: _non_local(**config, use_scale=False, rd_channels=_official_inter(config)), "nonlocal",
            key_map=NON_LOCAL_NAMES, batch=NONEMPTY, conv_std=None, **{**NON_LOCAL, "use_scale": False})


# ---------------------------------------------------------------------------------------------
# CbamModule / LightCbamModule vs cbam


def _cbam(channels, reduction, no_spatial, kernel_size, spatial_bn, spatial_bias, light=False, **timm_arguments):
    cbam = timm_layers("cbam")
    module = (cbam.LightCbamModule if light else cbam.CbamModule)(
        channels, rd_ratio=1 / reduction, spatial_kernel_size=kernel_size, **timm_arguments)
    fc1, fc2 = module.channel.fc1.weight, module.channel.fc2.weight
    return reshaped(module, {"channel.fc1.weight": fc1.shape[:2], "channel.fc2.weight": fc2.shape[:2]})


CBAM_NAMES = {stored("channel.fc1.weight"): "mlp.0.weight", "channel.fc1.bias": "mlp.0.bias",
              stored("channel.fc2.weight"): "mlp.2.weight", "channel.fc2.bias": "mlp.2.bias",
              "spatial.conv.conv.weight": "spatial_conv.weight"}
CBAM_NAMES.update({f"spatial.conv.bn.{leaf}": f"spatial_bn.{leaf}"
                   for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
#: timm's spatial gate: ConvNormAct(2, 1, k, apply_act=False) -- a conv without bias, then BatchNorm (the official
#: BasicConv's bn=True, bias=False); the channel gate pools avg and max
CBAM = {"spatial_bn": True, "spatial_bias": False, "pool_types": ("avg", "max")}


def _cbam_biased(official_width=False):
    """timm's CBAM with the official MLP biases (``mlp_bias=True``), and with C // reduction hidden units."""
    def factory(**config):
        width = {"rd_channels": config["channels"] // config["reduction"]} if official_width else {}
        return _cbam(**config, mlp_bias=True, **width)
    return factory


def test_expected_cbam_has_no_mlp_bias():
    # timm: ChannelAttn(mlp_bias=False) by default; the official CBAM's MLP is nn.Linear with biases
    message = _raises(_cbam, "cbam", key_map=CBAM_NAMES, **CBAM)
    assert "config {'reduction': 1, 'channels': 1, 'no_spatial': False, 'kernel_size': 7, 'spatial_bn': True, " \
           "'spatial_bias': False}" in message
    assert 'Unexpected key(s) in state_dict: "channel.fc1.bias", "channel.fc2.bias"' in message


def test_expected_cbam_width_with_mlp_bias():
    # timm: rd_channels = make_divisible(C / reduction, 1, round_limit=0) = int(C / r + 0.5), to the nearest;
    # the official CBAM: C // reduction (3 / 2: 2 hidden units against 1).  Found right after the MLP bias
    message = _raises(_cbam_biased(), "cbam", key_map=CBAM_NAMES, **CBAM)
    assert "config {'reduction': 2, 'channels': 3, 'no_spatial': False, 'kernel_size': 7," in message
    assert "size mismatch for channel.fc1.bias: copying a param with shape torch.Size([1]) from checkpoint, " \
           "the shape in current model is torch.Size([2])" in message


def test_expected_cbam_spatial_bn_momentum_past_bias_width_and_order():
    # timm's spatial BatchNorm (ConvNormAct's BatchNormAct2d) keeps PyTorch's momentum 0.1; the official
    # BasicConv's BatchNorm2d(momentum=0.01): the outputs agree, the updated running statistics do not.
    # Found in training once the MLP bias, the width and the pooling order (below) are stepped past
    message = _raises(_cbam_biased(official_width=True), "cbam", key_map=CBAM_NAMES, spatial_order="mean-max", **CBAM)
    assert "}, train" in message.splitlines()[1]
    assert "worst: running spatial_bn.running_var (torch spatial.conv.bn.running_var)" in message
    assert "[ok] output:" in message


def test_expected_cbam_spatial_order_in_eval_with_mlp_bias_and_official_width():
    # timm's SpatialAttn: cat([mean, max]); the official ChannelPool: cat([max, mean]) -- the conv's two input
    # channels swap roles (npattn's spatial_order="mean-max" is timm's).  Shrunk to C = 2, where mean and max differ
    message = _raises(_cbam_biased(official_width=True), "cbam", key_map=CBAM_NAMES, train=False, **CBAM)
    assert "'channels': 2, 'no_spatial': False, 'kernel_size': 7, 'spatial_bn': True, " \
           "'spatial_bias': False}, options {'pool_types': ('avg', 'max'), 'spatial_order': 'max-mean'}, " \
           "input sizes {'batch': 1, 'height': 1, 'width': 1}, eval" in message
    assert "[XX] output:" in message


def test_cbam_with_mlp_bias_official_width_and_mean_max_order_agrees_in_eval():
    _agrees(_cbam_biased(official_width=True), "cbam", key_map=CBAM_NAMES, train=False, spatial_order="mean-max",
            **CBAM)


def test_expected_light_cbam_pools_to_one_spatial_channel():
    # LightCbamModule: 0.5 (mean + max) before one MLP pass, and a one-channel spatial conv: another mechanism
    message = _raises(lambda **config: _cbam(**config, light=True, mlp_bias=True), "cbam", key_map=CBAM_NAMES, **CBAM)
    assert "config {'reduction': 1, 'channels': 1, 'no_spatial': False, 'kernel_size': 7," in message
    assert "size mismatch for spatial.conv.conv.weight: copying a param with shape torch.Size([1, 2, 7, 7]) from " \
           "checkpoint, the shape in current model is torch.Size([1, 1, 7, 7])" in message


# ---------------------------------------------------------------------------------------------
# BottleneckAttn vs botnet; Attention vs vit-attention


def _botnet(scale_pos_embed=False):
    """npattn's ``scale_pos_embed`` is an option of apply; timm's a constructor argument: one factory per value."""
    def factory(dim, dim_out, feat_size, stride, num_heads, dim_head, qk_ratio, qkv_bias):
        return timm_layers("bottleneck_attn").BottleneckAttn(
            dim, dim_out, feat_size=feat_size, stride=stride, num_heads=num_heads, dim_head=dim_head,
            qk_ratio=qk_ratio, qkv_bias=qkv_bias, scale_pos_embed=scale_pos_embed)
    return factory


def test_expected_botnet_refuses_an_empty_batch():
    # timm: q.reshape(B * num_heads, dim_head_qk, -1) (bottleneck_attn.py line 173): -1 beside an empty axis
    message = _raises(_botnet(), "botnet", scale_pos_embed=False)
    assert "config {'num_heads': 1, 'dim': 1, 'dim_out': None, 'dim_head': None, 'qk_ratio': 1.0, " \
           "'qkv_bias': False, 'stride': 1, 'feat_size': (1, 1)}, options {'scale_pos_embed': False}, " \
           "input sizes {'batch': 0, 'height': 1, 'width': 1}" in message
    assert "raised RuntimeError: cannot reshape tensor of 0 elements into shape [0, 8, -1]" in message


@pytest.mark.parametrize("scale_pos_embed", [False, True])
def test_botnet_agrees_on_nonempty_batches(scale_pos_embed):
    _agrees(_botnet(scale_pos_embed), "botnet", batch=NONEMPTY, scale_pos_embed=scale_pos_embed)


def _vit_attention(dim, num_heads, attn_head_dim, dim_out, qkv_bias, qk_norm, scale_norm, proj_bias):
    """timm's VisionTransformer passes norm_layer = partial(nn.LayerNorm, eps=1e-6) to its blocks."""
    return timm_layers("attention").Attention(
        dim, num_heads, attn_head_dim=attn_head_dim, dim_out=dim_out, qkv_bias=qkv_bias, qk_norm=qk_norm,
        scale_norm=scale_norm, proj_bias=proj_bias, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))


#: the module is called with x alone: no mask, not causal; its norms are VisionTransformer's (eps 1e-6)
VIT = {"attn_mask": None, "is_causal": False, "norm_eps": 1e-6}


@pytest.mark.parametrize("fused", [True, False])
def test_vit_attention_agrees(fused):
    """Both of timm's paths: F.scaled_dot_product_attention, and the explicit softmax (``fused_attn=False``)."""
    def factory(**config):
        module = _vit_attention(**config)
        module.fused_attn = fused
        return module
    _agrees(factory, "vit-attention", **VIT)


def test_loading_leaves_no_stub_behind():
    """The bare packages and the torchvision stub are gone once a file is loaded; the loaded file stays usable."""
    before = {key: sys.modules.get(key) for key in ("timm", "torchvision", "torchvision.ops.misc")}
    cbam = timm_layers("cbam")
    assert {key: sys.modules.get(key) for key in before} == before
    assert isinstance(cbam.CbamModule(4), torch.nn.Module)
