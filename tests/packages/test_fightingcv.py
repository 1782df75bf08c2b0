"""fightingcv-attention 1.0.0 (External-Attention-pytorch's modules) against npattn across configurations.

Agreement tests are five-line check_module calls; EXPECTED differences assert that check_module raises with the
shrunk configuration it finds (docs/fuzzing.md lists them with the package versions)."""
import math

import pytest

pytest.importorskip("torch")
fightingcv = pytest.importorskip("fightingcv_attention.attention")

from fightingcv_attention.attention import (  # noqa: E402
    SGE,
    CoordAttention,
    ECAAttention,
    SEAttention,
    ShuffleAttention,
    SimAM,
    TripletAttention,
)

from npattn.interop.torch import check_module  # noqa: E402
from tests.packages.spaces import NONEMPTY, SHUFFLE, SIMAM, TRIPLET  # noqa: E402

pytestmark = [pytest.mark.packages, pytest.mark.torch, pytest.mark.filterwarnings(r"ignore:var\(\)")]


def _raises(*args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check_module(*args, **kwargs)
    return str(info.value)


def test_se_agrees():
    check_module(lambda channels, reduction, bias: SEAttention.SEAttention(channels, reduction), "se",
                 key_map={"fc.0.weight": "fc1.weight", "fc.2.weight": "fc2.weight"}, bias=False)


def test_coord_agrees():
    check_module(lambda channels, reduction, min_mip, bias: CoordAttention.CoordAtt(channels, channels, reduction),
                 "coord", min_mip=8, bias=True, act="h_swish")


def test_triplet_agrees():
    check_module(lambda no_spatial: TripletAttention.TripletAttention(no_spatial), "triplet", space=TRIPLET)


def test_simam_agrees_nan_for_nan_on_a_1x1_map():
    check_module(lambda channels: SimAM.SimAM(channels), "simam", space=SIMAM, equal_nan=True)


def _sge(channels, groups, official_init):
    return SGE.SpatialGroupEnhance(groups)


def test_sge_agrees_on_nonempty_batches():
    check_module(_sge, "sge", unbiased=True, batch=NONEMPTY)


def test_expected_sge_refuses_an_empty_batch():
    message = _raises(_sge, "sge", unbiased=True)
    assert "config {'groups': 1, 'channels': 1, 'official_init': False}, options {'unbiased': True}, input sizes " \
           "{'batch': 0, 'height': 1, 'width': 1}" in message and "raised RuntimeError: cannot reshape" in message


def _shuffle(channels, groups, official_init):
    return ShuffleAttention.ShuffleAttention(channels, G=groups)


def test_shuffle_agrees_on_nonempty_batches_of_more_than_one_position():
    check_module(_shuffle, "shuffle-attention", space=SHUFFLE.require(lambda v: v.height * v.width > 1),
                 batch=NONEMPTY)


def test_expected_shuffle_refuses_an_empty_batch_and_a_1x1_map():
    message = _raises(_shuffle, "shuffle-attention", space=SHUFFLE)
    assert "'batch': 0, 'height': 1, 'width': 1}" in message and "raised RuntimeError: cannot reshape" in message
    message = _raises(_shuffle, "shuffle-attention", space=SHUFFLE, batch=NONEMPTY)
    assert "input sizes {'batch': 1, 'height': 1, 'width': 1}" in message
    assert "Expected more than 1 value per channel" in message  # torch's GroupNorm of one value; npattn's gives beta


def _eca(channels, k_size, gamma, b, drop_bias=False):
    if k_size is None:  # the paper's adaptive k, which the package leaves to the caller
        t = int(abs((math.log2(channels) + b) / gamma))
        k_size = t if t % 2 else t + 1
    module = ECAAttention.ECAAttention(k_size)
    if drop_bias:
        module.conv.register_parameter("bias", None)
    return module


def test_expected_eca_has_a_conv_bias():
    message = _raises(_eca, "eca")
    assert "config {'channels': 1, 'k_size': None, 'gamma': 2, 'b': 1}" in message
    assert 'Missing key(s) in state_dict: "conv.bias"' in message


def test_eca_without_its_bias_agrees_adaptive_k_included():
    check_module(lambda **config: _eca(**config, drop_bias=True), "eca")
