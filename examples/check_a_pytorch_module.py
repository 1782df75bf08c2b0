"""Verify a PyTorch CBAM against npattn, and watch a subtle bug get caught.

    python examples/check_a_pytorch_module.py          # (4, 64, 16, 16)
    python examples/check_a_pytorch_module.py --quick  # (2, 32, 8, 8)

The module below is written the way one would write CBAM in PyTorch (Woo et al., ECCV 2018, following
the official code: a shared MLP over the average- and max-pooled descriptors, then a 7x7 conv + BN
over [max; mean] of the channels). ``npattn.interop.torch.compare`` loads its ``state_dict`` into
npattn, runs both in float64 on the same input, backpropagates the same random cotangent, and compares
the output, the input gradient and every parameter gradient.

The second run uses the same module with a classic slip -- the channel gate uses the average-pooled
descriptor only -- and the report says where the two disagree.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from npattn.interop.torch import compare


class TorchCBAM(nn.Module):
    """CBAM as a PyTorch user would write it; parameter names match npattn's ``cbam`` entry."""

    def __init__(self, channels: int, reduction: int = 16, average_only: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))
        self.spatial_conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.average_only = average_only  # the bug under test

    def forward(self, x):
        channel_logits = self.mlp(x.mean((2, 3)))
        if not self.average_only:
            channel_logits = channel_logits + self.mlp(x.amax((2, 3)))
        x = x * torch.sigmoid(channel_logits)[:, :, None, None]
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_bn(self.spatial_conv(pooled)))


def make_module(channels: int, average_only: bool) -> TorchCBAM:
    torch.manual_seed(0)
    module = TorchCBAM(channels, reduction=16, average_only=average_only).double()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is a real test
        module.spatial_bn.running_mean.fill_(0.1)
        module.spatial_bn.running_var.fill_(1.7)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    shape = (2, 32, 8, 8) if args.quick else (4, 64, 16, 16)
    x = np.random.default_rng(0).standard_normal(shape)

    print("1) a correct PyTorch CBAM")
    config = {"channels": shape[1], "reduction": 16}  # the configuration the module was built with
    good = compare(make_module(shape[1], average_only=False), "cbam", x, config=config)
    print(good, "\n")

    print("2) the same module with the channel gate on the average-pooled descriptor only")
    buggy = compare(make_module(shape[1], average_only=True), "cbam", x, config=config)
    print(buggy)

    caught = good.ok and not buggy.ok
    print("\nthe bug was", "caught" if caught else "NOT caught")
    return 0 if caught else 1


if __name__ == "__main__":
    raise SystemExit(main())
