"""Itti-Koch-Niebur saliency (Itti, Koch, Niebur, "A Model of Saliency-Based Visual Attention for Rapid
Scene Analysis", TPAMI 1998).

The model has no learned parameters (``init`` returns ``{}``).  With ``r, g, b`` the input channels:

    I = (r + g + b) / 3                                          intensity               _features
    r, g, b <- r / I, g / I, b / I  where I > max(I) / 10, else 0  hue decoupled from intensity
    R = [r - (g+b)/2]+   G = [g - (r+b)/2]+   B = [b - (r+g)/2]+
    Y = [(r+g)/2 - |r-g|/2 - b]+                                 broadly tuned colours
    F(sigma), sigma = 0..L-1: dyadic Gaussian pyramids of I, R, G, B, Y              pyramid
    O(sigma, theta) = |Gabor_theta * I(sigma)|, theta in {0, 45, 90, 135} degrees    orientation_pyramid
    I(c, s)        = |I(c) (-) I(s)|                                                 _centre_surround
    RG(c, s)       = |(R(c) - G(c)) (-) (G(s) - R(s))|
    BY(c, s)       = |(B(c) - Y(c)) (-) (Y(s) - B(s))|
    O(c, s, theta) = |O(c, theta) (-) O(s, theta)|       c in centers, s = c + delta, delta in deltas
    Ibar = (+)_{c,s} N(I(c,s))                                    conspicuity maps     conspicuity_maps
    Cbar = (+)_{c,s} [N(RG(c,s)) + N(BY(c,s))]
    Obar = sum_theta N((+)_{c,s} N(O(c,s,theta)))
    S = (N(Ibar) + N(Cbar) + N(Obar)) / 3                         saliency map         itti
    fixations: winner-take-all on S, then inhibition of return    (non-differentiable) fixations

``(-)`` (across-scale difference) interpolates the surround map to the centre's size and subtracts;
``(+)`` (across-scale addition) brings every map to the map level and adds.  The RG/BY formulas are taken
literally from the paper: ``(R-G)(c) - up((G-R)(s)) = (R-G)(c) + up((R-G)(s))``.

Paper defaults: 9 levels (0..8), centres c in {2, 3, 4}, deltas {3, 4}, map level 4 -- the keyword
defaults of :func:`itti`.  The registry entry uses the small configuration of the spec sheet: 6 levels,
c in {1, 2}, delta in {2, 3}, map level 2, on 32x32 RGB images.

Details the paper leaves open, fixed here (they follow the spec sheet's "In PyTorch terms"):

* pyramid: separable blur with taps [1, 4, 6, 4, 1] / 16, replicate padding, then decimation ``[::2, ::2]``
  (level k has size ceil(H / 2^k)); the blur is a depthwise convolution (core ``conv2d``);
* orientation: zero-mean, L1-normalised cosine Gabor kernels (``gabor_size`` 7, ``gabor_sigma`` 2,
  ``gabor_wavelength`` 4 pixels, ``gabor_gamma`` 0.5 by default) applied to the intensity pyramid's levels
  with replicate padding, then ``|.|``.  ``theta`` is measured from the column axis:
  ``x' = x cos(theta) + y sin(theta)`` with x the column offset and y the row offset (rows grow downwards);
* ``(-)``: bilinear upsampling with ``align_corners=False`` (core ``interpolate``);
* ``(+)``: adaptive average pooling when shrinking (core ``adaptive_avg_pool2d``), bilinear
  ``align_corners=False`` when enlarging (never needed when all centres are at or below the map level);
* N(.) (:func:`normalize`): range normalisation to [0, M] (``M = norm_max``; a constant map gives 0), then
  ``N(x) = x (M - mbar)^2`` where ``mbar`` is the mean of the local maxima other than the global one.
  A local maximum is a pixel >= each of its (up to) 8 in-image neighbours and >= M / 10; the first
  (row-major) argmax is excluded; if there is no other local maximum, ``mbar = 0``.

Differentiability.  The saliency map is differentiable almost everywhere in the image.  These steps are
selections that carry *no gradient* (the values they select do): the colour-normalisation mask
``I > max(I)/10``; the local-maxima selection and the excluded argmax in N(.); the min/max of the range
normalisation route the gradient to the extreme pixels.  ``|.|``, ``[.]+`` and the selections have kinks
(or jumps) where their arguments tie, and a 32x32 image meets thousands of them: a finite-difference check
with step 1e-6 on a plain random image straddles one in roughly one direction in ten.  Checks must draw
images away from them -- :func:`example_image` does, measuring the distance with :func:`selection_margins`.
:func:`fixations` (winner-take-all, inhibition of return) is not differentiable at all.

Inputs are RGB images (N, 3, H, W) with non-negative values (e.g. in [0, 1]); H and W must be at least
``2 ** (levels - 1)`` so that every pyramid level is a true decimation.

Parameters: none.  :func:`itti` takes ``params`` for the registry's uniform signature and accepts only an
empty dict; any key is a KeyError saying that the model has no parameters (never silently ignored).  The
keyword options are validated (types, ranges, odd Gabor size >= 3) with the expected and the received value.
"""
from __future__ import annotations

import contextvars
import math
from typing import Mapping

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_input
from ..params import ParameterKeyError
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Choice, Derived, Inputs, Ints, Space

NAME = "itti"

#: the binomial approximation of a Gaussian used by every pyramid level
BLUR_TAPS = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
#: orientations of the Gabor channels, in degrees
ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)
PAPER_OPTIONS = {"levels": 9, "centers": (2, 3, 4), "deltas": (3, 4), "map_level": 4}
SMALL_OPTIONS = {"levels": 6, "centers": (1, 2), "deltas": (2, 3), "map_level": 2}

#: when set (by :func:`selection_margins`), a list that collects per-sample decision margins
_margin_log: contextvars.ContextVar = contextvars.ContextVar("itti_margin_log", default=None)


def init(rng=None, *, dtype=np.float64) -> dict:
    """The model has no parameters: returns ``{}`` (``rng`` and ``dtype`` are accepted for the registry)."""
    return {}


# ---------------------------------------------------------------------------------------------
# building blocks: replicate padding, blur + decimation, Gabor kernels


def replicate_pad(maps, pad: int) -> ag.Tensor:
    """Pad the last two axes of (N, K, H, W) by ``pad`` copies of the edge rows/columns (replicate mode)."""
    if pad == 0:
        return ag.as_tensor(maps)
    maps = ag.as_tensor(maps)
    top, bottom = ag.repeat(maps[:, :, :1, :], pad, axis=2), ag.repeat(maps[:, :, -1:, :], pad, axis=2)
    maps = ag.concatenate([top, maps, bottom], axis=2)
    left, right = ag.repeat(maps[:, :, :, :1], pad, axis=3), ag.repeat(maps[:, :, :, -1:], pad, axis=3)
    return ag.concatenate([left, maps, right], axis=3)


def _depthwise_taps(taps: np.ndarray, channels: int, vertical: bool, dtype):
    """(K, 1, 5, 1) or (K, 1, 1, 5) depthwise weight holding ``taps`` for each of K channels."""
    shape = (channels, 1, taps.size, 1) if vertical else (channels, 1, 1, taps.size)
    return backend.from_numpy(np.broadcast_to(taps.reshape(shape[1:]), shape).astype(dtype))


def blur_decimate(maps) -> ag.Tensor:
    """One pyramid step: separable [1,4,6,4,1]/16 blur (replicate padding), then ``[::2, ::2]``.

    maps: (N, K, H, W) -> (N, K, ceil(H/2), ceil(W/2)); each of the K maps is filtered on its own.
    """
    maps = ag.as_tensor(maps)
    channels, radius = maps.shape[1], BLUR_TAPS.size // 2
    padded = replicate_pad(maps, radius)
    blurred = ag.conv2d(padded, _depthwise_taps(BLUR_TAPS, channels, True, maps.dtype), groups=channels)
    blurred = ag.conv2d(blurred, _depthwise_taps(BLUR_TAPS, channels, False, maps.dtype), groups=channels)
    return blurred[:, :, ::2, ::2]


def pyramid(maps, levels: int) -> list:
    """Dyadic Gaussian pyramid: ``[maps, blur_decimate(maps), ...]``, ``levels`` entries (level 0 = input)."""
    out = [ag.as_tensor(maps)]
    for _ in range(levels - 1):
        out.append(blur_decimate(out[-1]))
    return out


def gabor_kernels(size: int = 7, sigma: float = 2.0, wavelength: float = 4.0, gamma: float = 0.5,
                  orientations=ORIENTATIONS, dtype=np.float64) -> np.ndarray:
    """Host (len(orientations), 1, size, size) cosine Gabor kernels, each zero-mean and L1-normalised.

        g(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) cos(2 pi x' / wavelength)
        x' = x cos(theta) + y sin(theta),  y' = -x sin(theta) + y cos(theta)
        g <- (g - mean(g)) / sum|g - mean(g)|
    """
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    y, x = np.meshgrid(offsets, offsets, indexing="ij")  # y: row offset, x: column offset
    kernels = []
    for degrees in orientations:
        theta = math.radians(degrees)
        x_rot = x * math.cos(theta) + y * math.sin(theta)
        y_rot = -x * math.sin(theta) + y * math.cos(theta)
        g = np.exp(-(x_rot**2 + gamma**2 * y_rot**2) / (2.0 * sigma**2)) * np.cos(2.0 * math.pi * x_rot / wavelength)
        g = g - g.mean()
        kernels.append(g / np.abs(g).sum())
    return np.stack(kernels)[:, None].astype(dtype)


def orientation_pyramid(intensity_levels: list, kernels, used=None) -> list:
    """O(sigma, theta) = |Gabor_theta * I(sigma)| with replicate padding: each level (N, 1, h, w) -> (N, 4, h, w).

    ``used``: the levels needed (default all); the others are left as None.
    """
    radius = kernels.shape[-1] // 2
    out = []
    for index, level in enumerate(intensity_levels):
        if used is not None and index not in used:
            out.append(None)
            continue
        response = ag.conv2d(replicate_pad(level, radius), kernels)
        if _margin_log.get() is not None:
            _log_abs_margins(response.data)
        out.append(ag.abs(response))
    return out


# ---------------------------------------------------------------------------------------------
# features


def _features(x: ag.Tensor) -> ag.Tensor:
    """(N, 3, H, W) RGB -> (N, 5, H, W) holding I, R, G, B, Y (paper eqs. for I and the colour channels)."""
    red, green, blue = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    intensity = (red + green + blue) / 3.0
    # Hue is only meaningful where the image is bright enough: the mask is a selection (no gradient).
    threshold = ag.xp.max(intensity.data, axis=(2, 3), keepdims=True) / 10.0
    bright = intensity.data > threshold
    safe_intensity = ag.where(bright, intensity, 1.0)
    red, green, blue = (ag.where(bright, c / safe_intensity, 0.0) for c in (red, green, blue))
    red_c = ag.relu(red - (green + blue) / 2.0)
    green_c = ag.relu(green - (red + blue) / 2.0)
    blue_c = ag.relu(blue - (red + green) / 2.0)
    yellow_c = ag.relu((red + green) / 2.0 - ag.abs(red - green) / 2.0 - blue)
    if _margin_log.get() is not None:
        _log_colour_margins(intensity.data, threshold, red.data, green.data, blue.data)
    return ag.concatenate([intensity, red_c, green_c, blue_c, yellow_c], axis=1)


def _opponent(levels: list, orientations: list, level: int, centre: bool) -> ag.Tensor:
    """(N, 7, h, w) at one level: [I, R-G, B-Y, O_0..O_3] as centre, or [I, G-R, Y-B, O_...] as surround."""
    f = levels[level]
    intensity, red, green, blue, yellow = (f[:, i:i + 1] for i in range(5))
    red_green, blue_yellow = (red - green, blue - yellow) if centre else (green - red, yellow - blue)
    return ag.concatenate([intensity, red_green, blue_yellow, orientations[level]], axis=1)


def _centre_surround(levels: list, orientations: list, centre: int, surround: int) -> ag.Tensor:
    """The 7 feature maps at (c, s): |centre(c) (-) surround(s)|, (N, 7, h_c, w_c)."""
    centre_maps = _opponent(levels, orientations, centre, True)
    surround_maps = _opponent(levels, orientations, surround, False)
    upsampled = ag.interpolate(surround_maps, size=centre_maps.shape[2:], mode="bilinear", align_corners=False)
    difference = centre_maps - upsampled
    if _margin_log.get() is not None:
        _log_abs_margins(difference.data)
    return ag.abs(difference)


def to_level(maps, size) -> ag.Tensor:
    """Bring (N, K, h, w) maps to ``size`` for across-scale addition: adaptive average pooling when shrinking,
    bilinear (align_corners=False) when enlarging."""
    maps = ag.as_tensor(maps)
    size = tuple(int(s) for s in size)
    if maps.shape[2:] == size:
        return maps
    if maps.shape[2] >= size[0] and maps.shape[3] >= size[1]:
        return ag.adaptive_avg_pool2d(maps, size)
    return ag.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# N(.)


def local_maxima(values, threshold: float):
    """Boolean backend array: pixels >= each in-image 8-neighbour and >= ``threshold``, excluding the first
    (row-major) argmax of each map.  values: backend array (..., h, w).  No gradient (a selection)."""
    xp = ag.xp
    h, w = values.shape[-2:]
    lead = values.shape[:-2]
    padded = xp.pad(values, [(0, 0)] * len(lead) + [(1, 1), (1, 1)], mode="constant", constant_values=-xp.inf)
    peak = values >= threshold
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                peak = peak & (values >= padded[..., dy:dy + h, dx:dx + w])
    first = xp.argmax(xp.reshape(values, lead + (h * w,)), axis=-1)
    is_first = xp.arange(h * w) == xp.expand_dims(first, -1)
    return peak & ~xp.reshape(is_first, lead + (h, w))


def normalize(maps, norm_max: float = 1.0) -> ag.Tensor:
    """The normalisation operator N(.) on each map of (N, K, h, w) (returns the same shape).

        x <- M (x - min x) / (max x - min x)          range normalisation to [0, M] (0 if the map is constant)
        mbar = mean of the local maxima except the global one  (0 if there is none)
        N(x) = x (M - mbar)^2
    """
    maps = ag.as_tensor(maps)
    low = ag.min(maps, axis=(2, 3), keepdims=True)
    spread = ag.max(maps, axis=(2, 3), keepdims=True) - low
    flat = spread.data <= 0
    scaled = ag.where(flat, 0.0, (maps - low) / ag.where(flat, 1.0, spread)) * norm_max
    if _margin_log.get() is not None:
        _log_normalize_margins(maps.data, scaled.data, norm_max)
    peaks = local_maxima(scaled.data, norm_max / 10.0).astype(maps.dtype)
    count = ag.xp.maximum(ag.xp.sum(peaks, axis=(2, 3), keepdims=True), 1.0)
    other_peaks_mean = ag.sum(scaled * peaks, axis=(2, 3), keepdims=True) / count
    return scaled * (norm_max - other_peaks_mean) ** 2


# ---------------------------------------------------------------------------------------------
# the model


def _integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _levels_list(name: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{NAME}: {name} must be a non-empty sequence of integers, got {values!r}")
    values = tuple(values)
    if not values or not all(_integer(v) for v in values):
        raise ValueError(f"{NAME}: {name} must be a non-empty sequence of integers, got {values!r}")
    return values


def _positive_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value < math.inf:
        raise ValueError(f"{NAME}: {name} must be a finite positive number, got {value!r}")


def _validate_options(levels: int, centers, deltas, map_level: int, gabor: tuple = (7, 2.0, 4.0, 0.5),
                      norm_max: float = 1.0) -> tuple:
    """Checked (centers, deltas) as tuples; every option's expected and received value in the errors."""
    if not _integer(levels) or levels < 2:
        raise ValueError(f"{NAME}: levels must be an integer >= 2, got {levels!r}")
    centers, deltas = _levels_list("centers", centers), _levels_list("deltas", deltas)
    surrounds = [c + d for c in centers for d in deltas]
    if min(centers) < 0 or min(deltas) < 1 or max(surrounds) > levels - 1:
        raise ValueError(
            f"{NAME}: centres {centers} + deltas {deltas} must give surround levels within 0..{levels - 1} "
            "(centres >= 0, deltas >= 1)"
        )
    if not _integer(map_level) or not 0 <= map_level < levels:
        raise ValueError(f"{NAME}: map_level must be an integer in 0..{levels - 1}, got {map_level!r}")
    size, sigma, wavelength, gamma = gabor
    # 1 x 1 is odd but degenerate: its zero-mean kernel is 0 and the L1 normalisation 0/0 made every map NaN
    if not _integer(size) or size < 3 or size % 2 == 0:
        raise ValueError(f"{NAME}: gabor_size must be an odd integer >= 3 (a centred kernel; a zero-mean 1 x 1 "
                         f"kernel is 0), got {size!r}")
    for name, value in (("gabor_sigma", sigma), ("gabor_wavelength", wavelength), ("gabor_gamma", gamma),
                        ("norm_max", norm_max)):
        _positive_finite(name, value)
    return centers, deltas


def conspicuity_maps(x, *, levels: int = 9, centers=(2, 3, 4), deltas=(3, 4), map_level: int = 4,
                     gabor_size: int = 7, gabor_sigma: float = 2.0, gabor_wavelength: float = 4.0,
                     gabor_gamma: float = 0.5, norm_max: float = 1.0) -> dict:
    """The three conspicuity maps ``{"intensity": Ibar, "colour": Cbar, "orientation": Obar}``, each
    (N, 1, h, w) at the map level.  x: (N, 3, H, W) RGB.  Keywords as :func:`itti`."""
    centers, deltas = _validate_options(levels, centers, deltas, map_level,
                                        (gabor_size, gabor_sigma, gabor_wavelength, gabor_gamma), norm_max)
    x = check_input(NAME, x, min_size=2 ** (levels - 1), layout="(N, 3, H, W) RGB")
    if x.shape[1] != 3:
        raise ValueError(f"{NAME}: x must be an RGB image batch (N, 3, H, W) (the colour channels are r, g, b), "
                         f"got shape {x.shape}")
    features = pyramid(_features(x), levels)
    kernels = backend.from_numpy(gabor_kernels(gabor_size, gabor_sigma, gabor_wavelength, gabor_gamma, dtype=x.dtype))
    used = set(centers) | {c + d for c in centers for d in deltas}
    orientations = orientation_pyramid([f[:, 0:1] for f in features], kernels, used)
    map_size = features[map_level].shape[2:]
    total = None  # (+)_{c,s} N(.) of the 7 feature maps, (N, 7, h, w)
    for centre in centers:
        for delta in deltas:
            feature_maps = _centre_surround(features, orientations, centre, centre + delta)
            term = to_level(normalize(feature_maps, norm_max), map_size)
            total = term if total is None else total + term
    orientation = sum(normalize(total[:, 3 + i:4 + i], norm_max) for i in range(len(ORIENTATIONS)))
    return {"intensity": total[:, 0:1], "colour": total[:, 1:2] + total[:, 2:3], "orientation": orientation}


def _check_no_parameters(params) -> None:
    """The model has none: ``params`` must be an empty dict, and any key is an error saying so."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{NAME}: params must be an empty dict (the model has no parameters), "
                        f"got {type(params).__name__}")
    if len(params):
        keys = ", ".join(repr(k) for k in list(params)[:5]) + (", ..." if len(params) > 5 else "")
        raise ParameterKeyError(f"{NAME}: the model has no parameters (init returns {{}}), but params has "
                                f"{len(params)} key(s): {keys}; pass {{}}")


def itti(params: dict, x, *, train: bool = False, levels: int = 9, centers=(2, 3, 4), deltas=(3, 4),
         map_level: int = 4, gabor_size: int = 7, gabor_sigma: float = 2.0, gabor_wavelength: float = 4.0,
         gabor_gamma: float = 0.5, norm_max: float = 1.0) -> ag.Tensor:
    """Saliency map S = (N(Ibar) + N(Cbar) + N(Obar)) / 3 of RGB images.

    Args:
        params: ``{}`` (the model has no parameters; a non-empty dict is a KeyError saying so).
        x: (N, 3, H, W) non-negative RGB, H, W >= 2 ** (levels - 1).
        train: no effect.
        levels, centers, deltas, map_level: pyramid depth, centre levels c, deltas s - c, level of S.
        gabor_*: Gabor kernel size, envelope sigma, carrier wavelength (pixels), aspect ratio gamma.
        norm_max: M, the range of N(.).

    Returns:
        (N, 1, ceil(H / 2^map_level), ceil(W / 2^map_level)), dtype of ``x``.
    """
    _check_no_parameters(params)
    maps = conspicuity_maps(x, levels=levels, centers=centers, deltas=deltas, map_level=map_level,
                            gabor_size=gabor_size, gabor_sigma=gabor_sigma, gabor_wavelength=gabor_wavelength,
                            gabor_gamma=gabor_gamma, norm_max=norm_max)
    stacked = ag.concatenate([maps["intensity"], maps["colour"], maps["orientation"]], axis=1)
    return ag.mean(normalize(stacked, norm_max), axis=1, keepdims=True)


def fixations(saliency, n: int, *, radius: float | None = None):
    """The first ``n`` fixations: winner-take-all on the saliency map with inhibition of return.

    The paper's WTA network of integrate-and-fire neurons fires first at the most salient location; this
    is its idealisation: the winner is the (first, row-major) argmax.  Inhibition of return then
    suppresses a disc of ``radius`` map pixels around the winner (the paper's FOA radius, one sixth of the
    smaller image side: default ``min(h, w) / 6``) for the rest of the sequence.  Once every location is
    inhibited, further fixations return the first pixel.  Not differentiable.

    Args:
        saliency: (N, 1, h, w) or (N, h, w) saliency maps (Tensor or backend array).
        n: number of fixations.
        radius: inhibition radius in map pixels (a pixel at distance <= radius is inhibited).

    Returns:
        backend int64 array (N, n, 2) of (row, column) positions at the map's resolution.
    """
    xp = ag.xp
    values = saliency.data if isinstance(saliency, ag.Tensor) else saliency
    if values.ndim == 4:
        if values.shape[1] != 1:
            raise ValueError(f"itti: saliency must be (N, 1, h, w) or (N, h, w), got shape {values.shape}")
        values = values[:, 0]
    if values.ndim != 3:
        raise ValueError(f"itti: saliency must be (N, 1, h, w) or (N, h, w), got shape {values.shape}")
    batch, h, w = values.shape
    radius = min(h, w) / 6.0 if radius is None else float(radius)
    rows = xp.reshape(xp.arange(h), (1, h, 1))
    cols = xp.reshape(xp.arange(w), (1, 1, w))
    remaining = values
    found = []
    for _ in range(int(n)):
        winner = xp.argmax(xp.reshape(remaining, (batch, h * w)), axis=1)
        row, col = winner // w, winner % w
        found.append(xp.stack([row, col], axis=-1))
        distance2 = (rows - xp.reshape(row, (batch, 1, 1))) ** 2 + (cols - xp.reshape(col, (batch, 1, 1))) ** 2
        remaining = xp.where(distance2 <= radius**2, -xp.inf, remaining)
    if not found:
        return xp.zeros((batch, 0, 2), dtype=xp.int64)
    return xp.stack(found, axis=1).astype(xp.int64)


# ---------------------------------------------------------------------------------------------
# distance from the non-differentiable points (for drawing finite-difference-safe test images)


def _per_sample_min(values):
    """Backend (N, ...) -> host (N,) minimum over all but the first axis (+inf for empty)."""
    flat = ag.xp.reshape(values, (values.shape[0], -1))
    if flat.shape[1] == 0:
        return np.full(values.shape[0], np.inf)
    return ag.to_numpy(ag.xp.min(flat, axis=1)).astype(np.float64)


def _log_colour_margins(intensity, threshold, red, green, blue) -> None:
    """Distances of the colour kinks' arguments from 0 (bright pixels) and of I from the mask threshold."""
    xp = ag.xp
    arguments = [red - (green + blue) / 2, green - (red + blue) / 2, blue - (red + green) / 2, red - green,
                 (red + green) / 2 - xp.abs(red - green) / 2 - blue]
    bright = intensity > threshold
    kink = xp.min(xp.stack([xp.where(bright, xp.abs(a), xp.inf) for a in arguments]), axis=0)
    mask_edge = xp.abs(intensity - threshold) / (10.0 * threshold)
    _margin_log.get().append(np.minimum(_per_sample_min(kink), _per_sample_min(mask_edge)))


def _log_abs_margins(argument) -> None:
    """Distance of the arguments of |.| from 0, relative to the largest |argument| of their map.

    Maps of a single pixel are skipped: there the Gabor response of the replicate-padded constant is 0 up
    to rounding for every image, so the kink is never crossed."""
    xp = ag.xp
    n, k, h, w = argument.shape
    if h * w == 1:
        return
    magnitude = xp.abs(argument)
    scale = xp.max(magnitude, axis=(2, 3), keepdims=True)
    relative = xp.where(scale > 0, magnitude / xp.where(scale > 0, scale, 1.0), xp.inf)
    _margin_log.get().append(_per_sample_min(relative))


def _log_normalize_margins(raw, scaled, norm_max: float) -> None:
    """Margins of N(.)'s selections: gaps at the min and max (relative to the spread), and the distance of
    every candidate peak from its neighbours' maximum and from M/10 (relative to M)."""
    xp = ag.xp
    n, k, h, w = raw.shape
    ordered = xp.sort(xp.reshape(raw, (n, k, h * w)), axis=-1)
    spread = ordered[..., -1] - ordered[..., 0]
    live = spread > 0
    safe = xp.where(live, spread, 1.0)
    gaps = xp.minimum(ordered[..., 1] - ordered[..., 0], ordered[..., -1] - ordered[..., -2]) / safe
    gaps = xp.where(live, gaps, xp.inf) if h * w > 1 else xp.full((n, k), xp.inf)
    padded = xp.pad(scaled, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="constant", constant_values=-xp.inf)
    neighbours = xp.stack([padded[..., dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)
                           if (dy, dx) != (1, 1)])
    threshold = norm_max / 10.0
    candidate = scaled >= threshold / 2
    peak_margin = xp.where(candidate, xp.abs(scaled - xp.max(neighbours, axis=0)), xp.inf) / norm_max
    threshold_margin = xp.abs(scaled - threshold) / norm_max
    _margin_log.get().append(np.minimum.reduce([_per_sample_min(gaps), _per_sample_min(peak_margin),
                                                _per_sample_min(threshold_margin)]))


def selection_margins(x, **options) -> np.ndarray:
    """Host (N,): for each image, the smallest relative distance of any selection in the model from its
    switching point -- the colour kinks and mask, N(.)'s min/max gaps, local-maximum tests and M/10
    threshold.  Finite differences of step ``eps`` are safe when it is well above ``eps`` times the
    input's sensitivity.  ``options``: keywords of :func:`itti`."""
    token = _margin_log.set([])
    try:
        with ag.no_grad():
            itti({}, x, **options)
        return np.minimum.reduce(_margin_log.get())
    finally:
        _margin_log.reset(token)


def example_image(rng, shape=(2, 3, 32, 32), dtype=np.float64, margin: float = 2e-5, options=None):
    """Random RGB images in [0, 1] drawn away from the model's non-differentiable points.

    Each pixel is redrawn (from ``rng``) until the arguments of the colour kinks (``[.]+`` in R, G, B, Y
    and ``|r - g|``, on the intensity-normalised r, g, b) are at least ``max(margin, 1e-3)`` from 0 and I is
    well above max(I)/10; then each image is redrawn until :func:`selection_margins` (under ``options``,
    default the registry's small configuration) is at least ``margin`` (``margin=0`` skips this step).
    Why: on plain random 32x32 images a finite-difference check with step 1e-6 straddles a switch of some
    selection (a near-tie at a map's minimum is enough) in roughly one direction in ten; on images with
    margin 2e-5 it did so in none of 360 directions tried (60 images).  Returns a backend array.
    """
    options = SMALL_OPTIONS if options is None else options
    batch, _, h, w = shape
    images = np.stack([_colour_safe_image(rng, h, w, max(margin, 1e-3)) for _ in range(batch)])
    while margin > 0:
        bad = selection_margins(backend.from_numpy(images), **options) < margin
        if not bad.any():
            return backend.from_numpy(images.astype(dtype))
        for i in np.flatnonzero(bad):
            images[i] = _colour_safe_image(rng, h, w, max(margin, 1e-3))
    return backend.from_numpy(images.astype(dtype))


def _colour_safe_image(rng, h: int, w: int, margin: float) -> np.ndarray:
    """Host (3, h, w) image whose every pixel keeps its colour-kink arguments ``margin`` away from 0."""
    pixels = rng.uniform(0.0, 1.0, (h * w, 3))
    while True:
        bad = _colour_kink_distance(pixels) < margin
        if not bad.any():
            return np.ascontiguousarray(pixels.reshape(h, w, 3).transpose(2, 0, 1))
        pixels[bad] = rng.uniform(0.0, 1.0, (int(bad.sum()), 3))


def _colour_kink_distance(pixels: np.ndarray) -> np.ndarray:
    """Host helper: per pixel (P, 3), the smallest distance of a colour-feature kink argument from 0."""
    intensity = pixels.mean(axis=1)
    r, g, b = (pixels / intensity[:, None]).T
    arguments = [r - (g + b) / 2, g - (r + b) / 2, b - (r + g) / 2, r - g, (r + g) / 2 - np.abs(r - g) / 2 - b]
    distance = np.min(np.abs(np.stack(arguments)), axis=0)
    return np.where(intensity > 0.2, distance, 0.0)  # 0.2 > 2 * max(I)/10 keeps clear of the mask's edge


def _space_images(rng, v, dtype):
    """Non-negative RGB images (N, 3, H, W) with every pixel clear of the colour kinks (no selection margin:
    that search runs the model and depends on the options)."""
    images = [_colour_safe_image(rng, v.height, v.width, 1e-3) for _ in range(v.batch)]
    stacked = np.stack(images) if images else np.zeros((0, 3, v.height, v.width))
    return (backend.from_numpy(stacked.astype(dtype)),)


def _smallest(v) -> int:
    return 2 ** (v.levels - 1)


_SIDE = Ints(_smallest, lambda v: _smallest(v) + 4)


# Pyramids of 2 to 5 levels on maps from their smallest accepted side 2^(L-1) (conspicuity_maps' rule) to a few
# pixels above (odd sizes: ceil rounding per level); contiguous or gapped sets of one or two centres and deltas
# with every surround c + delta <= L - 1; the map at any level (above the centres too: bilinear enlarging);
# Gabor kernels from 3 x 3 to wider than the coarse levels (replicate padding); N(.) with another range M.
SPACE = Space(config={},
              options={"levels": Ints(2, 5), "_c0": Ints(0, lambda v: v.levels - 2),
                       "_c1": Ints(lambda v: v._c0, lambda v: v.levels - 2),
                       "centers": Derived(lambda v: tuple(sorted({v._c0, v._c1}))),
                       "_d0": Ints(1, lambda v: v.levels - 1 - v._c1),
                       "_d1": Ints(lambda v: v._d0, lambda v: v.levels - 1 - v._c1),
                       "deltas": Derived(lambda v: tuple(sorted({v._d0, v._d1}))),
                       "map_level": Ints(0, lambda v: v.levels - 1), "gabor_size": Choice(7, 3, 5, 9),
                       "gabor_sigma": Choice(2.0, 0.5, 4.0), "gabor_wavelength": Choice(4.0, 2.0, 8.0),
                       "gabor_gamma": Choice(0.5, 1.0, 2.0), "norm_max": Choice(1.0, 0.1, 10.0)},
              inputs=Inputs({"batch": BATCH, "height": _SIDE, "width": _SIDE}, _space_images))


register(Mechanism(
    name=NAME, family="origins",
    paper=Paper("Itti, Koch, Niebur", "A Model of Saliency-Based Visual Attention for Rapid Scene Analysis",
                "IEEE TPAMI", 1998),
    init=init, apply_fn=itti, config={}, options=dict(SMALL_OPTIONS),
    example_input=lambda rng, dtype=np.float64: (example_image(rng, (2, 3, 32, 32), dtype),),
    channel_axis=1, min_spatial=2 ** (SMALL_OPTIONS["levels"] - 1), space=SPACE,
    description="bottom-up saliency: centre-surround feature pyramids, N(.) normalisation, WTA + IOR fixations",
))
