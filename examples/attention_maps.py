"""Attention maps on a real photograph (scikit-image's "chelsea" cat), written as PNG.

    python examples/attention_maps.py --out maps/          # 256 x 256 image, 9-level Itti pyramid
    python examples/attention_maps.py --quick --out maps/  # 64 x 64, 6 levels (CI)

Figures:
* itti.png      -- the Itti-Koch-Niebur saliency map and its first fixations (WTA + inhibition of return);
* cbam.png      -- CBAM's spatial gate Ms on the photo's features;
* nonlocal_ccnet.png -- for one query pixel, the Non-local (embedded Gaussian) attention over all
                   positions and CCNet's criss-cross attention over its row and column;
* fca_filters.png -- FcaNet's 2-D DCT filters (the top-16 frequencies on a 7 x 7 grid).

Itti-Koch and the DCT filters have no learned parameters. CBAM, Non-local and CCNet use npattn's seeded
default initialisation on features from a fixed random conv layer: they show *what* each mechanism
attends over (its support and structure), not what a trained network would pick.
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data, transform  # noqa: E402

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.frequency import fca  # noqa: E402
from npattn.hybrid import cbam  # noqa: E402
from npattn.layers import conv, init_conv  # noqa: E402
from npattn.origins import itti  # noqa: E402
from npattn.self_attention import ccnet, non_local  # noqa: E402


def photo(size: int) -> np.ndarray:
    """(1, 3, size, size) RGB in [0, 1]."""
    image = transform.resize(data.chelsea(), (size, size), anti_aliasing=True)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float64)


def features(image: np.ndarray, channels: int = 32) -> ag.Tensor:
    """Features from a fixed (seeded) random 3x3 conv layer + ReLU at half resolution."""
    params: dict = {}
    init_conv(np.random.default_rng(0), params, "stem", channels, 3, 3)
    return ag.relu(conv(params, "stem", ag.from_numpy(image), stride=2, padding=1))


def plot_itti(image, out, quick):
    options = dict(npattn.get("itti").options) if quick else {}
    saliency = itti.itti({}, ag.from_numpy(image), **options)
    points = ag.to_numpy(itti.fixations(saliency, 5))[0]
    scale = image.shape[2] / saliency.shape[2]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(image[0].transpose(1, 2, 0))
    axes[0].plot((points[:, 1] + 0.5) * scale, (points[:, 0] + 0.5) * scale, "o-", color="yellow")
    for i, (r, c) in enumerate(points):
        axes[0].annotate(str(i + 1), ((c + 0.5) * scale, (r + 0.5) * scale), color="red", fontsize=12)
    axes[0].set_title("first fixations")
    axes[1].imshow(saliency.numpy()[0, 0], cmap="inferno")
    axes[1].set_title("Itti-Koch saliency")
    _save(fig, out, "itti.png")


def plot_cbam(image, feats, out):
    params = cbam.init(np.random.default_rng(1), feats.shape[1], reduction=8)
    _, spatial = cbam.attention_maps(params, feats)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(image[0].transpose(1, 2, 0))
    axes[0].set_title("input")
    axes[1].imshow(spatial.numpy()[0, 0], cmap="viridis")
    axes[1].set_title("CBAM spatial gate Ms")
    _save(fig, out, "cbam.png")


def plot_nonlocal_ccnet(image, feats, out):
    _, c, h, w = feats.shape
    qy, qx = h // 2, w // 3  # the query pixel
    nl_params = non_local.init(np.random.default_rng(2), c)
    weights = non_local.pairwise(nl_params, feats, sub_sample=False)            # (1, HW, HW)
    nl_map = weights.numpy()[0, qy * w + qx].reshape(h, w)

    cc_params = ccnet.init(np.random.default_rng(3), c)
    query = conv(cc_params, f"{ccnet.PREFIX}query_conv", feats)
    key = conv(cc_params, f"{ccnet.PREFIX}key_conv", feats)
    cc_weights = ccnet.criss_cross_attention_map(query, key).numpy()[0, qy, qx]  # (H + W,)
    cc_map = np.zeros((h, w))
    cc_map[:, qx] += cc_weights[:h]      # column entries (zero at the query itself)
    cc_map[qy, :] += cc_weights[h:]      # row entries (the query counted once, here)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].imshow(image[0].transpose(1, 2, 0))
    axes[0].plot([(qx + 0.5) * 2], [(qy + 0.5) * 2], "r+", markersize=14, mew=2)
    axes[0].set_title("query pixel")
    axes[1].imshow(nl_map, cmap="magma")
    axes[1].set_title("Non-local: weights over all HW positions")
    axes[2].imshow(cc_map, cmap="magma")
    axes[2].set_title("CCNet: weights over row + column")
    _save(fig, out, "nonlocal_ccnet.png")


def plot_fca(out):
    filters = ag.to_numpy(fca.dct_filters(16, 7, 7, "top16"))  # one frequency per channel group
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for ax, kernel in zip(axes.ravel(), filters):
        ax.imshow(kernel, cmap="RdBu")
        ax.axis("off")
    fig.suptitle("FcaNet top-16 DCT filters (7 x 7)")
    _save(fig, out, "fca_filters.png")


def _save(fig, out, name):
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 x 64 image, small Itti pyramid (CI)")
    parser.add_argument("--out", default="attention_maps", help="output directory")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    image = photo(64 if args.quick else 256)
    feats = features(image)
    plot_itti(image, args.out, args.quick)
    plot_cbam(image, feats, args.out)
    plot_nonlocal_ccnet(image, feats, args.out)
    plot_fca(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
