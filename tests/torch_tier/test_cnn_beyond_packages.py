"""How popular packages implement issue 17's modules, measured against npattn (docs/official_vs_paper.md).

Runs only where the packages are importable (neither is a dependency of npattn): ``fightingcv-attention``
(1.0.0 measured) and ``timm`` (1.0.31 measured; its ``timm.layers`` package imports torchvision, so without
torchvision the two files used here are loaded on their own).  Each test loads the package module's state
(randomised) into npattn with ``from_torch_state_dict`` and a key map, compares outputs in float64, and
asserts the documented verdict: agreement to 1e-12, or the documented deviation.
"""
import importlib
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npattn  # noqa: E402
from npattn.interop.torch import from_torch_state_dict  # noqa: E402
from tests.conftest import dev, host  # noqa: E402
from tests.packages.spaces import timm_layers  # noqa: E402

pytestmark = pytest.mark.torch

AGREE = 1e-12


def _fightingcv(module: str):
    pytest.importorskip("fightingcv_attention")
    return importlib.import_module(f"fightingcv_attention.attention.{module}")


def _randomise(module, seed=0):
    """Random float64 state: N(0, 1) weights, positive running variances."""
    module = module.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module


def _max_diff(name, module, x, key_map=None, convert=None, train=False, **options):
    """max |torch module(x) - npattn name(x)| after loading the module's state into npattn."""
    state = module.state_dict()
    params = from_torch_state_dict(name, state, key_map=key_map, config=options.pop("config", None))
    if convert:
        params = convert(params)
    module.train(train)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = host(npattn.get(name).apply(params, dev(x), train=train, **options))
    worst = float(np.abs(got - expected).max())
    print(f"{type(module).__module__}.{type(module).__name__} vs npattn {name} (train={train}): max|diff| {worst:.2g}")
    return worst


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------------------
# fightingcv-attention


@pytest.mark.parametrize("train", [False, True])
def test_fightingcv_coord_is_the_official_module(train):
    module = _randomise(_fightingcv("CoordAttention").CoordAtt(16, 16, reduction=4))   # mip = max(8, 4) = 8
    assert _max_diff("coord", module, _x((2, 16, 5, 7)), train=train, config={"reduction": 4, "min_mip": 8},
                     ) < AGREE


def test_fightingcv_simam_is_the_official_module():
    assert _max_diff("simam", _fightingcv("SimAM").SimAM().double(), _x((2, 8, 5, 4))) < AGREE


def test_fightingcv_sge_forward_matches_but_bias_init_is_zero():
    sge_module = _fightingcv("SGE").SpatialGroupEnhance(groups=4)
    assert torch.all(sge_module.bias == 0)                                   # official init: bias = 1
    assert _max_diff("sge", _randomise(sge_module), _x((2, 16, 5, 6))) < AGREE


@pytest.mark.parametrize("no_spatial", [False, True])
def test_fightingcv_triplet_is_the_official_module(no_spatial):
    module = _randomise(_fightingcv("TripletAttention").TripletAttention(no_spatial=no_spatial))
    assert _max_diff("triplet", module, _x((2, 6, 5, 7)), config={"no_spatial": no_spatial},
                     no_spatial=no_spatial) < AGREE


PSA_KEY_MAP = {f"{old}.{leaf}": f"{new}.{leaf}" for old, new in (
    ("ch_wv", "conv_v_right"), ("ch_wq", "conv_q_right"), ("ch_wz", "conv_up.0"), ("ln", "conv_up.1"),
    ("sp_wv", "conv_v_left"), ("sp_wq", "conv_q_left")) for leaf in ("weight", "bias")}


def _ln_as_chw(params):
    """fightingcv's nn.LayerNorm(C) holds (C,) affine tensors; npattn's paper form LayerNorm([C, 1, 1])."""
    return {k: (v.reshape(-1, 1, 1) if k.startswith("conv_up.1.") else v) for k, v in params.items()}


@pytest.mark.parametrize("layout, cls", [("parallel", "ParallelPolarizedSelfAttention"),
                                         ("sequential", "SequentialPolarizedSelfAttention")])
def test_fightingcv_psa_is_the_paper_form_with_biases(layout, cls):
    module = _randomise(getattr(_fightingcv("PolarizedSelfAttention"), cls)(16))
    structure = {"layout": layout, "form": "paper", "qkv_bias": True}
    state = {k: (v.reshape(-1, 1, 1) if k.startswith("ln.") else v) for k, v in module.state_dict().items()}
    params = from_torch_state_dict("psa-p", state, key_map=PSA_KEY_MAP, config=structure)
    x = _x((2, 16, 5, 6))
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    worst = np.abs(host(npattn.get("psa-p").apply(params, dev(x), **structure)) - expected).max()
    print(f"fightingcv {cls} vs npattn psa {structure}: max|diff| {worst:.2g}")
    assert worst < AGREE


def test_fightingcv_external_is_the_bare_unit_without_eps():
    module = _randomise(_fightingcv("ExternalAttention").ExternalAttention(d_model=16, S=8))
    params = {"linear_0.weight": dev(module.mk.weight.detach().numpy()[:, :, None]),
              "linear_1.weight": dev(module.mv.weight.detach().numpy()[:, :, None])}
    x = _x((2, 16, 5, 6))
    tokens = torch.from_numpy(x.reshape(2, 16, 30).transpose(0, 2, 1).copy())        # (B, N, d)
    with torch.no_grad():
        expected = module(tokens).numpy().transpose(0, 2, 1).reshape(x.shape)
    mech = npattn.get("external")
    exact, official = (np.abs(host(mech.apply(params, dev(x), bare=True, eps=eps)) - expected).max()
                       for eps in (0.0, 1e-9))
    print(f"fightingcv ExternalAttention vs npattn external bare: max|diff| {exact:.2g} (eps 0), {official:.2g} (1e-9)")
    assert exact < AGREE and official > 0


def test_fightingcv_cot_is_another_mechanism():
    """fightingcv's CoTAttention has no GroupNorm, no radix fusion, no local aggregation: no key map exists."""
    module = _fightingcv("CoTAttention").CoTAttention(dim=16, kernel_size=3)
    official = set(npattn.get("cot").init(np.random.default_rng(0), 16))
    assert not any(key.startswith(("se.", "bn.", "conv1x1.")) for key in module.state_dict())
    assert len(official) > len(module.state_dict())


def test_fightingcv_shuffle_forward_matches_with_g8_default():
    package = _fightingcv("ShuffleAttention")
    assert package.ShuffleAttention(channel=512).G == 8                   # official default groups = 64
    module = _randomise(package.ShuffleAttention(channel=16, G=2))
    assert _max_diff("shuffle-attention", module, _x((2, 16, 5, 6)), config={"groups": 2}) < AGREE


# ---------------------------------------------------------------------------------------------
# timm


@pytest.mark.parametrize("train", [False, True])
def test_timm_coord_attn_matches_with_official_width_and_bias(train):
    coord_attn = timm_layers("coord_attn")
    module = _randomise(coord_attn.CoordAttn(16, rd_channels=8, bias=True))
    assert _max_diff("coord", module, _x((2, 16, 5, 7)), train=train, config={"reduction": 4, "min_mip": 8},
                     act="hardswish") < AGREE
    defaults = {c: coord_attn.CoordAttn(c).conv1.out_channels for c in (512, 1280)}
    assert defaults == {512: 24, 1280: 56}                                     # official: 16, 40
    assert coord_attn.CoordAttn(16).conv1.bias is None                         # official: bias


@pytest.mark.parametrize("radix, groups", [(2, 2), (1, 2), (4, 1)])
def test_timm_split_attn_matches_with_batch_norm(radix, groups):
    split_attn = timm_layers("split_attn")
    module = _randomise(split_attn.SplitAttn(16, 16, radix=radix, groups=groups, norm_layer=torch.nn.BatchNorm2d))
    structure = {"radix": radix, "cardinality": groups}
    for train in (False, True):
        assert _max_diff("split-attention", module, _x((2, 16, 5, 6)), train=train, config=structure,
                         **structure) < AGREE
    assert split_attn.SplitAttn(100, 64, norm_layer=torch.nn.BatchNorm2d).fc1.out_channels == 48   # official: 50
