"""The shape tables of npattn.layers (conv_shapes, linear_shapes, batch_norm_shapes) and take_all, the up-front
check the converted mechanisms run: each table matches what the matching initialiser makes, and take_all names
the wrong, missing or never-read key."""
import re

import numpy as np
import pytest

from npattn import layers
from npattn.params import ParameterKeyError, Params, uses_params


def _shapes_of(params):
    return {k: tuple(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("kernel,groups,bias", [(1, 1, True), (3, 1, False), ((4, 1), 4, True)])
def test_tables_match_the_initialisers(kernel, groups, bias):
    rng = np.random.default_rng(0)
    made: dict = {}
    layers.init_conv(rng, made, "conv", 8, 4, kernel, groups=groups, bias=bias)
    layers.init_linear(rng, made, "fc", 3, 5, bias=bias)
    layers.init_batch_norm(made, "bn", 6)
    table = {**layers.conv_shapes("conv", 8, 4, kernel, groups=groups, bias=bias),
             **layers.linear_shapes("fc", 3, 5, bias=bias), **layers.batch_norm_shapes("bn", 6)}
    assert table == _shapes_of(made)


@uses_params("toy")
def _toy(params, x):
    layers.take_all(params, {**layers.conv_shapes("conv", 2, x.shape[1]), **layers.batch_norm_shapes("bn", 2)})
    return x


def _toy_params():
    params: dict = {}
    layers.init_conv(np.random.default_rng(0), params, "conv", 2, 3, 1)
    layers.init_batch_norm(params, "bn", 2)
    return params


def test_take_all_accepts_the_right_shapes_and_reads_every_key():
    x = np.zeros((1, 3, 2, 2))
    assert _toy(_toy_params(), x) is x                          # every key read: no unused-key error


@pytest.mark.parametrize("key,wrong,expected", [("conv.weight", (2, 3, 3, 3), r"\(2, 3, 1, 1\)"),
                                                ("conv.bias", (3,), r"\(2,\)"),
                                                ("bn.running_var", (2, 1), r"\(2,\)"),
                                                ("bn.num_batches_tracked", (1,), r"\(\)")])
def test_take_all_names_the_wrong_key_expected_and_received(key, wrong, expected):
    params = _toy_params()
    value = np.zeros(wrong, dtype=params[key].dtype)
    with pytest.raises(ValueError, match=rf"toy: parameter '{key}' must have shape {expected}, got "
                                         rf"{re.escape(str(wrong))}"):
        _toy({**params, key: value}, np.zeros((1, 3, 2, 2)))


def test_take_all_missing_key_and_plain_dicts():
    params = _toy_params()
    with pytest.raises(ParameterKeyError, match="toy: parameter 'bn.bias' is missing"):
        _toy({k: v for k, v in params.items() if k != "bn.bias"}, np.zeros((1, 3, 2, 2)))
    # a plain dict (a building block called directly) is checked too, under the generic name
    with pytest.raises(ValueError, match="npattn: parameter 'conv.weight' must have shape"):
        layers.take_all(params, layers.conv_shapes("conv", 2, 4))
    view = Params("toy", params)
    layers.take_all(view, layers.conv_shapes("conv", 2, 3))
    assert sorted(view.unused()) == sorted(layers.batch_norm_shapes("bn", 2))


def test_take_all_complete_names_unread_keys_before_shapes():
    """With ``complete``, the table is the whole structure: keys of another structure (an extra branch) are
    named as unused before a shape they make inconsistent; without it, the shape error comes first."""
    params = {**_toy_params(), "extra.weight": np.zeros((2, 3, 1, 1))}
    params["conv.weight"] = np.zeros((3, 3, 1, 1))              # as if built for 3 outputs
    table = {**layers.conv_shapes("conv", 2, 3), **layers.batch_norm_shapes("bn", 2)}
    with pytest.raises(ValueError, match=r"toy: parameter 'conv.weight' must have shape \(2, 3, 1, 1\)"):
        layers.take_all(Params("toy", params), table)
    with pytest.raises(ParameterKeyError, match=r"toy: params has 1 key\(s\) this configuration does not use: "
                                                r"'extra.weight'"):
        layers.take_all(Params("toy", params), table, complete=True)
    view = Params("toy", _toy_params())
    layers.take_all(view, table, complete=True)
    assert view.unused() == []
    with pytest.raises(ParameterKeyError, match="toy: parameter 'bn.bias' is missing"):
        layers.take_all(Params("toy", {k: v for k, v in _toy_params().items() if k != "bn.bias"}), table,
                        complete=True)
