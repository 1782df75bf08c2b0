"""Swin's shifted windows and masks, and deformable attention's sampling points, on a photograph.

    python examples/window_and_deformable_maps.py --out maps/          # 256 x 256 image
    python examples/window_and_deformable_maps.py --quick --out maps/  # 64 x 64 (CI)

Figures:
* swin_windows.png -- the regular windows of a Swin block, the shifted windows (the cyclic shift wraps the
                      bottom and right strips around: colours are the mask's regions), the -100 mask of the
                      bottom-right shifted window, and one query token's attention inside its shifted window
                      (it never reaches the tokens the shift brought from the opposite border);
* deformable_points.png -- where multi-scale deformable attention samples for three reference points: every
                      head's points on every level (colour = level, size = attention weight).

The parameters are npattn's seeded initialisations on features from a fixed random conv layer (for
deformable attention, the official init -- each head's points on a ray in its own direction, (p + 1)
pixels of its level away -- plus a small random query dependence): the figures show *how* each
mechanism reads the image, not what a trained network would pick.
"""
from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention_maps import _save, features, photo  # noqa: E402

import autograd as ag  # noqa: E402
from npattn.transformer import _windows, msdeform, swin  # noqa: E402

WINDOW, SHIFT = 4, 2
TOKENS = 16   # Swin's token map: 16 x 16 (4 x 4 windows of 4 x 4 tokens)


def _grid_lines(ax, size, step, offset, scale, **style):
    for k in range(-1, size // step + 1):
        position = (k * step + offset) * scale
        if 0 < position < size * scale:
            ax.axhline(position - 0.5, **style)
            ax.axvline(position - 0.5, **style)


def plot_swin(image, feats, out):
    pooled = ag.avg_pool2d(feats, feats.shape[2] // TOKENS)              # (1, C, 16, 16)
    tokens = ag.transpose(pooled, (0, 2, 3, 1))                           # (1, H, W, C) channels-last
    _, height, width, channels = tokens.shape
    scale = image.shape[2] / height
    params = swin.init(np.random.default_rng(2), channels, num_heads=2, window_size=WINDOW, shift_size=SHIFT)
    options = dict(num_heads=2, window_size=WINDOW, shift_size=SHIFT)
    weights, window_plan = swin.attention_weights(params, tokens, **options)
    hp, wp = window_plan.padded
    rows = _windows.region_labels(hp, WINDOW, SHIFT)
    cols = _windows.region_labels(wp, WINDOW, SHIFT)
    # the region of every token of the shifted map, rolled back to the token's place in the image
    regions = np.roll(rows[:, None] * 3 + cols[None, :], (SHIFT, SHIFT), axis=(0, 1))[:height, :width]
    fig, axes = plt.subplots(1, 4, figsize=(17, 5))
    photo_rgb = image[0].transpose(1, 2, 0)
    axes[0].imshow(photo_rgb)
    _grid_lines(axes[0], height, WINDOW, 0, scale, color="white", lw=1.5)
    axes[0].set_title(f"windows {WINDOW}x{WINDOW} tokens (shift 0)")
    axes[1].imshow(photo_rgb)
    axes[1].imshow(np.kron(regions, np.ones((int(scale), int(scale)))), cmap="tab10", alpha=0.45, vmin=0, vmax=9)
    _grid_lines(axes[1], height, WINDOW, -SHIFT, scale, color="white", lw=1.5)
    axes[1].set_title(f"shifted windows (shift {SHIFT}): mask regions")
    mask = _windows.shift_mask(window_plan, -100.0, np.float64)[-1]
    axes[2].imshow(mask, cmap="gray")
    axes[2].set_title("-100 mask of the bottom-right window\n(N x N tokens; black = masked)")
    # a query token in the bottom-right shifted window: its weights over that window, placed in the image
    window_index, query = window_plan.count - 1, 0
    attention = ag.to_numpy(weights)[0, window_index, :, query].mean(axis=0)          # (N,) mean over heads
    heat = np.full((hp, wp), np.nan)
    top, left = hp - WINDOW, wp - WINDOW
    heat[top:top + WINDOW, left:left + WINDOW] = attention.reshape(WINDOW, WINDOW)
    heat = np.roll(heat, (SHIFT, SHIFT), axis=(0, 1))[:height, :width]             # back to image positions
    axes[3].imshow(photo_rgb)
    axes[3].imshow(np.kron(heat, np.ones((int(scale), int(scale)))), cmap="magma", alpha=0.75)
    axes[3].set_title("one query's attention in its shifted window\n(mean of heads; wrapped parts masked)")
    _save(fig, out, "swin_windows.png")


def _levels(feats, count=3):
    """Three levels of a feature pyramid (average pooling by 1, 2, 4), flattened as Deformable DETR's encoder."""
    maps = [feats] + [ag.avg_pool2d(feats, 2 ** k) for k in range(1, count)]
    shapes = np.array([m.shape[2:] for m in maps], dtype=np.int64)
    flat = ag.concatenate([ag.transpose(ag.flatten(m, 2), (0, 2, 1)) for m in maps], axis=1)   # (1, S, C)
    return flat, shapes


def plot_deformable(image, feats, out):
    channels = feats.shape[1]
    heads, points = 8, 4
    flat, shapes = _levels(feats)
    params = msdeform.init(np.random.default_rng(3), channels, n_levels=len(shapes), n_heads=heads, n_points=points)
    rng = np.random.default_rng(4)
    for key, spread in (("sampling_offsets.weight", 0.15), ("attention_weights.weight", 0.3)):
        params[key] = ag.from_numpy(rng.normal(0, spread, params[key].shape))
    references = np.array([[0.3, 0.35], [0.62, 0.55], [0.45, 0.8]])                # (x, y) in [0, 1]
    positions = (references * np.array(shapes[0][::-1])).astype(int)               # their tokens on level 0
    rows, cols = ag.from_numpy(positions[:, 1]), ag.from_numpy(positions[:, 0])    # indices on the backend
    query = ag.getitem(ag.transpose(feats, (0, 2, 3, 1)), (0, rows, cols))[None]
    reference_points = np.repeat(references[None, :, None, :], len(shapes), axis=2)
    locations, weights = msdeform.sampling_locations(params, query, ag.from_numpy(reference_points), shapes,
                                                     n_levels=len(shapes), n_heads=heads, n_points=points)
    locations, weights = ag.to_numpy(locations)[0], ag.to_numpy(weights)[0]       # (Lq, M, L, P, 2), (Lq, M, L, P)
    size = image.shape[2]
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 6.5))
    ax.imshow(image[0].transpose(1, 2, 0))
    colours = ("tab:red", "tab:orange", "tab:cyan")
    for level in range(len(shapes)):
        xy = locations[:, :, level].reshape(-1, 2) * size - 0.5
        ax.scatter(xy[:, 0], xy[:, 1], s=weights[:, :, level].reshape(-1) * 900, color=colours[level], alpha=0.8,
                   edgecolors="black", linewidths=0.3, label=f"level {level} ({shapes[level][0]}x{shapes[level][1]})")
    ax.scatter(references[:, 0] * size - 0.5, references[:, 1] * size - 0.5, marker="x", s=120, color="white",
               linewidths=3, label="reference points")
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"deformable sampling points: {heads} heads x {points} points per level\n(size = attention weight)")
    _save(fig, out, "deformable_points.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="maps", help="directory for the PNG files")
    parser.add_argument("--quick", action="store_true", help="a 64 x 64 image (for CI)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    image = photo(64 if args.quick else 256)
    feats = features(image)                         # (1, 32, size/2, size/2)
    plot_swin(image, feats, args.out)
    plot_deformable(image, feats, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
