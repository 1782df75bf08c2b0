"""Train a small CNN with a Squeeze-and-Excitation block on scikit-learn's digits, with plain SGD.

Shows that npattn's autodiff trains real models: every gradient below comes from ``autograd.grad``.

    python examples/train_digits.py            # 20 epochs: 98.2% test accuracy (seed 0)
    python examples/train_digits.py --quick    # 4 epochs (what CI runs; ~90%)

Network: conv3x3(1->16) -> ReLU -> SE(16, r=4) -> conv3x3(16->32, stride 2) -> ReLU -> flatten -> linear(512->10).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import autograd as ag
import npattn
from npattn.layers import conv, init_conv, init_linear, linear

se = npattn.get("se")


def init(rng) -> dict:
    params: dict = {}
    init_conv(rng, params, "conv1", 16, 1, 3)
    params.update({f"se.{k}": v for k, v in se.init(rng, 16, reduction=4).items()})
    init_conv(rng, params, "conv2", 32, 16, 3)
    init_linear(rng, params, "head", 10, 32 * 4 * 4)
    return params


def logits(params: dict, images) -> ag.Tensor:
    """images: (N, 1, 8, 8) -> class scores (N, 10)."""
    h = ag.relu(conv(params, "conv1", images, padding=1))
    h = se.apply({k[3:]: v for k, v in params.items() if k.startswith("se.")}, h)
    h = ag.relu(conv(params, "conv2", h, stride=2, padding=1))
    return linear(params, "head", ag.flatten(h, 1))


def loss(params: dict, images, labels_onehot) -> ag.Tensor:
    """Mean cross-entropy."""
    return -ag.mean(ag.sum(ag.log_softmax(logits(params, images), axis=1) * labels_onehot, axis=1))


def accuracy(params, images, labels) -> float:
    with ag.no_grad():
        predicted = ag.to_numpy(ag.argmax(logits(params, images), axis=1))
    return float(np.mean(predicted == labels))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4 epochs (CI)")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = 4 if args.quick else args.epochs

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = digits.target
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    train, test = order[:1347], order[1347:]
    x_test, y_test = ag.from_numpy(images[test]), labels[test]

    params = {k: v.astype(np.float32) for k, v in init(rng).items()}
    step = ag.value_and_grad(loss)
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in np.array_split(rng.permutation(train), len(train) // 32):
            onehot = np.eye(10, dtype=np.float32)[labels[batch]]
            value, grads = step(params, ag.from_numpy(images[batch]), ag.from_numpy(onehot))
            params = {k: params[k] - args.lr * grads[k] for k in params}  # plain SGD, new arrays
        print(f"epoch {epoch + 1:2d}  loss {float(value):.4f}  test accuracy {accuracy(params, x_test, y_test):.3f}")
    acc = accuracy(params, x_test, y_test)
    print(f"final test accuracy {acc:.3f} on {len(test)} held-out digits ({time.perf_counter() - start:.1f} s)")
    return acc


if __name__ == "__main__":
    main()
