"""vit-pytorch 1.26.14's ``vit.Attention`` against npattn's ``vit-attention`` (timm's Attention) across
configurations.  ``vit_pytorch/__init__.py`` imports torchvision (no CPU wheel here), so ``vit.py`` is loaded
on its own (it needs only torch and einops)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("einops")

from npattn.interop.torch import check_module  # noqa: E402
from tests.packages.spaces import VIT, package_file  # noqa: E402

pytestmark = [pytest.mark.packages, pytest.mark.torch]

NAMES = {"to_qkv.weight": "qkv.weight", "to_out.0.weight": "proj.weight", "to_out.0.bias": "proj.bias"}


def attention(dim, num_heads, attn_head_dim, qkv_bias, qk_norm):
    module = package_file("vit_pytorch", "vit.py", "vit_pytorch_vit").Attention(dim, num_heads, attn_head_dim)
    module.norm = torch.nn.Identity()  # its pre-norm is timm's block norm1, outside timm's Attention
    return module


def key_map(config):  # without an output projection there is nothing to map proj to
    return NAMES if "to_out.0.weight" in attention(**config).state_dict() else {"to_qkv.weight": "qkv.weight"}


def test_agrees_where_it_projects_the_output():
    check_module(attention, "vit-attention", key_map=NAMES,
                 space=VIT.require(lambda v: not (v.num_heads == 1 and v.attn_head_dim == v.dim)))


def test_expected_no_output_projection_for_one_head_as_wide_as_the_model():
    with pytest.raises(AssertionError) as info:
        check_module(attention, "vit-attention", key_map=key_map, space=VIT)
    assert "config {'dim': 1, 'num_heads': 1, 'attn_head_dim': 1," in str(info.value)
    assert 'Unexpected key(s) in state_dict: "proj.weight", "proj.bias"' in str(info.value)
