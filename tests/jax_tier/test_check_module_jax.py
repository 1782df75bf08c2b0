"""npattn.interop.jax.check_module: Flax modules (Linen and NNX) across the entry's space; a wrong one is caught
and shrunk to its edge configuration."""
import pytest

jax = pytest.importorskip("jax")
flax = pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from npattn.interop.jax import check_module, dense  # noqa: E402

pytestmark = pytest.mark.jax

F64 = {"param_dtype": jnp.float64}
SE_MAP = {"fc1": dense("Dense_0"), "fc2": dense("Dense_1")}


class LinenSE(nn.Module):
    """An independent SE in Flax Linen (NHWC); ``odd_bug`` pools a 2x2 grid first (wrong at odd sizes > 1)."""

    reduction: int
    bias: bool = True
    odd_bug: bool = False

    @nn.compact
    def __call__(self, x):
        if self.odd_bug:  # a mean of the means of the four (floor/ceil) quadrants: not the mean at odd sizes
            h, w = x.shape[1], x.shape[2]
            rows, cols = (slice(0, -(-h // 2)), slice(h // 2, h)), (slice(0, -(-w // 2)), slice(w // 2, w))
            z = jnp.mean(jnp.stack([x[:, r, c].mean((1, 2)) for r in rows for c in cols]), 0)
        else:
            z = x.mean((1, 2))
        h = nn.relu(nn.Dense(x.shape[-1] // self.reduction, use_bias=self.bias, **F64)(z))
        return x * nn.sigmoid(nn.Dense(x.shape[-1], use_bias=self.bias, **F64)(h))[:, None, None, :]


class NnxSE(nnx.Module):
    def __init__(self, channels, reduction, bias=True):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(channels, channels // reduction, use_bias=bias, rngs=rngs, **F64)
        self.fc2 = nnx.Linear(channels // reduction, channels, use_bias=bias, rngs=rngs, **F64)

    def __call__(self, x):
        return x * nnx.sigmoid(self.fc2(nnx.relu(self.fc1(x.mean((1, 2))))))[:, None, None, :]


def test_a_correct_linen_module_passes():
    result = check_module(lambda channels, reduction, bias: LinenSE(reduction, bias), "se", key_map=SE_MAP,
                          channels_last=True, max_examples=6)
    assert len(result.checked) == 6


def test_a_correct_nnx_module_passes():
    check_module(NnxSE, "se", key_map={"fc1": dense("fc1"), "fc2": dense("fc2")}, channels_last=True, max_examples=4)


def test_an_odd_size_bug_is_caught_and_shrunk():
    with pytest.raises(AssertionError) as info:
        check_module(lambda channels, reduction, bias: LinenSE(reduction, bias, odd_bug=True), "se", key_map=SE_MAP,
                     channels_last=True, max_examples=30)
    message = str(info.value)
    assert "Flax module" in message and "config {'reduction': 1, 'channels': 1, 'bias': False}" in message, message
    assert ("input sizes {'batch': 1, 'height': 1, 'width': 3}" in message
            or "input sizes {'batch': 1, 'height': 3, 'width': 1}" in message), message
