"""Verify a Flax CBAM against npattn in float64, and watch a subtle bug get caught.

    python examples/check_a_flax_module.py          # (4, 64, 16, 16)
    python examples/check_a_flax_module.py --quick  # (2, 32, 8, 8)

The module below is CBAM (Woo et al., ECCV 2018) written the way one writes it in Flax Linen: channels-last
(NHWC) inputs, ``Dense`` kernels (in, out), an HWIO ``Conv`` kernel, ``BatchNorm`` with scale/bias in
``params`` and mean/var in ``batch_stats``.  ``npattn.interop.jax.compare`` maps those into npattn's
``cbam`` parameters with an explicit key map, runs both in float64 (``jax_enable_x64``) on the same input,
backpropagates the same random cotangent, and compares the output, the input gradient and every parameter
gradient; ``channels_last=True`` moves npattn's (N, C, H, W) input and output to and from NHWC.

Two things a float64 check needs from Flax, both visible in the module: ``param_dtype=jnp.float64`` (Flax
defaults to float32 parameters even with x64 on), and ``force_float32_reductions=False`` on BatchNorm --
by default its running statistics are float32, and eval mode then computes ``rsqrt(var + eps)`` in float32,
a relative difference of ~1e-8 that the comparison reports.

The second run uses the same module with a classic slip -- the channel gate uses the average-pooled
descriptor only -- and the report says where the two disagree.
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import npattn
from npattn.interop import jax as njax

F64 = {"param_dtype": jnp.float64}


class FlaxCBAM(nn.Module):
    """CBAM in Flax Linen, NHWC; the official choices npattn's ``cbam`` follows (docstring of npattn.hybrid.cbam)."""

    reduction: int = 16
    average_only: bool = False  # the bug under test

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        hidden, out = nn.Dense(channels // self.reduction, **F64), nn.Dense(channels, **F64)

        def mlp(z):  # shared by both descriptors
            return out(nn.relu(hidden(z)))

        logits = mlp(x.mean((1, 2)))
        if not self.average_only:
            logits = logits + mlp(x.max((1, 2)))
        x = x * nn.sigmoid(logits)[:, None, None, :]
        pooled = jnp.concatenate([x.max(-1, keepdims=True), x.mean(-1, keepdims=True)], axis=-1)  # [max; mean]
        gate = nn.Conv(1, (7, 7), padding=3, use_bias=False, **F64)(pooled)
        # torch momentum 0.01 (the official BasicConv) is Flax momentum 0.99: Flax weighs the old value
        gate = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5,
                            force_float32_reductions=False, **F64)(gate)
        return x * nn.sigmoid(gate)


#: npattn layer prefix -> the Flax module that holds it (Linen's automatic names) and its layout.
KEY_MAP = {
    "mlp.0": njax.dense("Dense_0"),
    "mlp.2": njax.dense("Dense_1"),
    "spatial_conv": njax.conv("Conv_0"),
    "spatial_bn": njax.batch_norm("BatchNorm_0"),
}


def variables(config: dict) -> dict:
    """Flax variables from npattn's seeded init: random biases (Flax initialises them to 0, and a zero bias
    can hide a bug from the output) and non-trivial BatchNorm statistics, so eval mode is a real test."""
    params = npattn.get("cbam").init(np.random.default_rng(0), **config)
    params["spatial_bn.running_mean"] = np.full((1,), 0.1)
    params["spatial_bn.running_var"] = np.full((1,), 1.7)
    return njax.to_flax_variables(params, KEY_MAP)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    shape = (2, 32, 8, 8) if args.quick else (4, 64, 16, 16)
    x = np.random.default_rng(0).standard_normal(shape)  # npattn's layout (N, C, H, W)
    config = {"channels": shape[1], "reduction": 16}  # the configuration the module was built with

    print("1) a correct Flax CBAM")
    good = njax.compare(FlaxCBAM(reduction=16), "cbam", x, variables=variables(config), key_map=KEY_MAP,
                        config=config, channels_last=True)
    print(good, "\n")

    print("2) the same module with the channel gate on the average-pooled descriptor only")
    buggy = njax.compare(FlaxCBAM(reduction=16, average_only=True), "cbam", x, variables=variables(config),
                         key_map=KEY_MAP, config=config, channels_last=True)
    print(buggy)

    caught = good.ok and not buggy.ok
    print("\nthe bug was", "caught" if caught else "NOT caught")
    return 0 if caught else 1


if __name__ == "__main__":
    raise SystemExit(main())
