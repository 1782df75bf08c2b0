"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi, NeurIPS 2018): GE-theta-minus, GE-theta, GE-theta-plus.

    g = xi_G(x)                         gather over windows of extent e:   (N, C, H, W) -> (N, C, H_e, W_e)
    y = x * sigmoid(interp(g))          excite: nearest upsampling back to (H, W), sigmoid gate

The three variants differ in the gather xi_G:

    GE-theta-minus   g = avgpool_e(x)                                       parameter-free
    GE-theta         g = BN(dwconv(...relu(BN(dwconv(x)))...))              depth-wise, strided, no bias
    GE-theta-plus    g = W_up relu(W_down relu(theta-gather(x)) + b_down) + b_up    1x1 "MLP", C -> C/r -> C

Extent e = 0 means *global* (the gather sees the whole map, H_e = W_e = 1, no upsampling).

**Global extent: the official models** (``hujie-frank/GENet``, Caffe; only global-extent models were released):

* GEPF (theta-minus): global average pooling, sigmoid, scale.
* GEP (theta): a depth-wise convolution whose kernel is the whole feature map (``kernel_size`` = 56/28/14/7,
  no padding, no bias), BN, sigmoid.  Its kernel is ``feat_size``: ``init(..., feat_size=(H, W))``, and the
  input must then be exactly H x W.  With one output position that conv is a per-channel weighted sum of the
  map, and is computed as one (:func:`_whole_map_depthwise`).
* GEPP (theta-plus): the same depth-wise conv and BN, then **ReLU**, then 1x1 conv C -> C/16 with bias, ReLU,
  1x1 conv C/16 -> C with bias, sigmoid.

**Extent e in {2, 4, 8}: timm's forms** (``timm/layers/gather_excite.py``; there is no official code):

* theta-minus: ``avg_pool2d(kernel 2e-1, stride e, padding e-1, count_include_pad=False)``; H_e = ceil(H/e).
* theta: log2(e) stages of [depth-wise 3x3, stride 2, padding 1, no bias, BN], ReLU between stages but not
  after the last.
* theta-plus: the theta gather followed by the GEPP head (ReLU, 1x1 MLP).  timm feeds the gather's BN output
  to its MLP without that ReLU (and its ``extra_params=True`` path fails to build in timm 1.0.31);
  ``gather_relu=False`` gives timm's form.

Upsampling is ``F.interpolate(mode='nearest')`` to (H, W): src = floor(dst * in / out).  The sigmoid is taken
before upsampling; nearest upsampling only copies values, so the order does not change the result.

Parameters: ``gather.conv{i}.weight (C, 1, k, k)`` and ``gather.bn{i}.*`` (i = 1 .. log2(e), or 1 for
global), ``mlp_down.weight (C // r, C, 1, 1)`` + bias and ``mlp_up.weight (C, C // r, 1, 1)`` + bias.
**Structure options** (keywords of :func:`init` and :func:`gather_excite` alike; a registry entry's config
gives both): ``variant`` and ``extent``, which fixes the number of gather stages.  The parameters must be
exactly those ``init`` makes for them (npattn.params): a missing stage is a KeyError, never a shallower
gather.  ``feat_size`` and ``reduction`` are read from the shapes.  BatchNorm follows PyTorch (eps 1e-5,
momentum 0.1; the Caffe models' moving-average factor is 0.95); training it on one value per channel (the
global gather with a batch of one) is a ValueError naming the layer, as in PyTorch.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, conv, example, init_batch_norm, init_conv
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Derived, Ints, Space, bn_train, image

VARIANTS = ("theta_minus", "theta", "theta_plus")
EXTENTS = (0, 2, 4, 8)
#: registry name of each variant (errors name it)
NAMES = {"theta_minus": "ge-theta-minus", "theta": "ge-theta", "theta_plus": "ge-theta-plus"}


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"ge: variant must be one of {VARIANTS}, got {variant!r}")
    return NAMES[variant]


def _stages(extent: int, name: str = "ge") -> int:
    """Number of gather stages: one for global extent, log2(e) strided stages otherwise."""
    if isinstance(extent, bool) or extent not in EXTENTS:
        raise ValueError(f"{name}: extent must be one of {EXTENTS} (0 = global), got {extent!r}")
    return 1 if extent == 0 else int(math.log2(extent))


def _pair(size) -> tuple:
    return (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)


def init(rng, channels: int, *, variant: str = "theta", extent: int = 0, feat_size=None, reduction: int = 16,
         dtype=np.float64) -> dict:
    """Parameters of GE-``variant`` (``theta_minus`` has none) for ``channels`` channels.

    ``feat_size`` (int or (H, W)) is the input size, required for global-extent theta / theta-plus.
    """
    name = _check_variant(variant)
    stages = _stages(extent, name)
    params: dict = {}
    if variant == "theta_minus":
        return params
    if extent == 0:
        if feat_size is None:
            raise ValueError(f"{name}: global extent needs feat_size, the (H, W) its kernel covers")
        init_conv(rng, params, "gather.conv1", channels, channels, _pair(feat_size), groups=channels, bias=False,
                  dtype=dtype)
        init_batch_norm(params, "gather.bn1", channels, dtype=dtype)
    else:
        for i in range(1, stages + 1):
            init_conv(rng, params, f"gather.conv{i}", channels, channels, 3, groups=channels, bias=False, dtype=dtype)
            init_batch_norm(params, f"gather.bn{i}", channels, dtype=dtype)
    if variant == "theta_plus":
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"ge-theta-plus: channels={channels} // reduction={reduction} must be at least 1")
        init_conv(rng, params, "mlp_down", hidden, channels, 1, dtype=dtype)
        init_conv(rng, params, "mlp_up", channels, hidden, 1, dtype=dtype)
    return params


def _average_gather(x: ag.Tensor, extent: int) -> ag.Tensor:
    """GE-theta-minus: mean over windows of 2e-1 with stride e (global mean for e = 0)."""
    if extent == 0:
        return ag.mean(x, axis=(2, 3), keepdims=True)
    return ag.avg_pool2d(x, 2 * extent - 1, stride=extent, padding=extent - 1, count_include_pad=False)


def _whole_map_depthwise(weight, x: ag.Tensor) -> ag.Tensor:
    """``conv2d(x, weight, groups=C)`` for a kernel that covers the whole map (no padding, no bias).

    The output has one position, g[n, c] = sum_{h,w} weight[c, 0, h, w] x[n, c, h, w]; computed as that
    weighted sum (one einsum; a sliding depth-wise conv with a 28 x 28 kernel is ~100x slower).
    x (N, C, H, W), weight (C, 1, H, W) -> (N, C, 1, 1).
    """
    n, c, h, w = x.shape
    flat = ag.einsum("ncl,cl->nc", ag.reshape(x, (n, c, h * w)), ag.reshape(weight, (c, h * w)))
    return ag.reshape(flat, (n, c, 1, 1))


def _conv_gather(params, x: ag.Tensor, extent: int, train: bool) -> ag.Tensor:
    """GE-theta: depth-wise conv + BN stages (one whole-map stage for global extent)."""
    channels = x.shape[1]
    if extent == 0:      # _check made the kernel exactly the input's size
        weight = params.take("gather.conv1.weight", (channels, 1) + tuple(x.shape[2:]))
        return batch_norm(params, "gather.bn1", _whole_map_depthwise(weight, x), train)
    stages = _stages(extent)
    g = x
    for i in range(1, stages + 1):
        params.take(f"gather.conv{i}.weight", (channels, 1, 3, 3))
        g = batch_norm(params, f"gather.bn{i}", conv(params, f"gather.conv{i}", g, stride=2, padding=1,
                                                     groups=channels, bias=False, out=channels), train)
        if i < stages:
            g = ag.relu(g)
    return g


def _gather(params, x: ag.Tensor, variant: str, extent: int, train: bool, gather_relu: bool) -> ag.Tensor:
    if variant == "theta_minus":
        return _average_gather(x, extent)
    g = _conv_gather(params, x, extent, train)
    if variant == "theta_plus":
        if gather_relu:
            g = ag.relu(g)                                       # official GEPP: gather/relu
        hidden = ag.relu(conv(params, "mlp_down", g))
        g = conv(params, "mlp_up", hidden, out=x.shape[1])
    return g


def _check(params, x, variant: str, extent: int) -> ag.Tensor:
    """x (N, C, H, W); the channel count C is the input's, and every parameter is checked against it."""
    name = _check_variant(variant)
    _stages(extent, name)
    x = check_input(name, x, min_size=1)
    if variant == "theta_minus":
        return x             # no parameters to agree with: any floating dtype and channel count
    check_dtype(name, x, params)
    if extent == 0:
        kernel = params.take("gather.conv1.weight", (x.shape[1], 1, None, None)).shape[2:]
        if tuple(x.shape[2:]) != tuple(kernel):
            raise ValueError(f"{name}: global extent gathers with a {tuple(kernel)} kernel (feat_size), so x must be "
                             f"{tuple(kernel)} spatially; got shape {x.shape}")
    return x


def _contract(variant: str):
    """The parameter contract (npattn.params), its errors named after the variant's entry (ge-theta, ...)."""
    return uses_params(_check_variant(variant))


def gather(params, x, *, train: bool = False, variant: str = "theta", extent: int = 0,
           gather_relu: bool = True) -> ag.Tensor:
    """xi_G(x) before the sigmoid: (N, C, H, W) -> (N, C, H_e, W_e).  Options as :func:`gather_excite`."""
    def run(params, x):
        return _gather(params, _check(params, x, variant, extent), variant, extent, train, gather_relu)

    return _contract(variant)(run)(params, x)


def excite(params, x, *, train: bool = False, variant: str = "theta", extent: int = 0,
           gather_relu: bool = True) -> ag.Tensor:
    """The gate sigmoid(interp(xi_G(x))) at full resolution: (N, C, H, W).  Options as :func:`gather_excite`."""
    def run(params, x):
        return _gate(params, _check(params, x, variant, extent), variant, extent, train, gather_relu)

    return _contract(variant)(run)(params, x)


def _gate(params, x, variant, extent, train, gather_relu) -> ag.Tensor:
    gate = ag.sigmoid(_gather(params, x, variant, extent, train, gather_relu))
    if gate.shape[2:] == (1, 1):
        return gate                                               # broadcasts over (H, W)
    return ag.interpolate(gate, size=tuple(x.shape[2:]), mode="nearest")


def gather_excite(params, x, *, train: bool = False, variant: str = "theta", extent: int = 0,
                  gather_relu: bool = True) -> ag.Tensor:
    """Apply GE to ``x`` (N, C, H, W); returns (N, C, H, W).

    ``variant`` ("theta_minus", "theta", "theta_plus") and ``extent`` (0 = global, 2, 4 or 8) as given to
    :func:`init`.  ``gather_relu`` (theta-plus only): the ReLU between the gather's BN and the MLP (official
    GEPP); False gives timm's form.
    """
    def run(params, x):
        x = _check(params, x, variant, extent)
        gate = ag.sigmoid(_gather(params, x, variant, extent, train, gather_relu))
        return scale_by_gate(x, gate)                              # y = x * sigmoid(interp(g))

    return _contract(variant)(run)(params, x)


def scale_by_gate(x, gate) -> ag.Tensor:
    """y = x * interp_nearest(gate) for x (N, C, H, W) and a gate (N, C, H_e, W_e).

    When nearest upsampling repeats every gate value over a k x k' block (PyTorch's index rule gives
    src = dst // k exactly), the gate is repeated along W only and broadcast over the k rows of each block
    of x: the same values without a full-size upsampled gate (nor the two resampling matmuls and their
    VJPs).  Otherwise: interpolate, then multiply.
    """
    n, c, h, w = x.shape
    h_e, w_e = gate.shape[2:]
    if (h_e, w_e) == (1, 1):
        return x * gate                                           # broadcasts over (H, W)
    if not (_repeats_blocks(h_e, h) and _repeats_blocks(w_e, w)):
        return x * ag.interpolate(gate, size=(h, w), mode="nearest")
    # repeat along W only (the gate stays H/H_e times smaller), broadcast over the row blocks: the
    # innermost axis of the product is a whole row of W, which NumPy's loops need to run fast
    rows = ag.reshape(ag.repeat(gate, w // w_e, axis=3), (n, c, h_e, 1, w))
    return ag.reshape(ag.reshape(x, (n, c, h_e, h // h_e, w)) * rows, (n, c, h, w))


def _repeats_blocks(size_in: int, size_out: int) -> bool:
    """Whether nearest resizing size_in -> size_out (autograd's = PyTorch's rule) repeats each entry k times."""
    if size_out % size_in:
        return False
    blocks = np.arange(size_out) // (size_out // size_in)
    return bool(np.array_equal(ag.resize.nearest_indices(size_in, size_out), blocks))


def _register(variant: str, config: dict, shape: tuple, space: Space, min_spatial: int = 1) -> None:
    register(Mechanism(
        name=NAMES[variant], family="channel",
        paper=Paper("Hu, Shen, Albanie, Sun, Vedaldi", "Gather-Excite: Exploiting Feature Context in "
                    "Convolutional Neural Networks", "NeurIPS", 2018),
        init=init, apply_fn=gather_excite, config={"variant": variant, **config},
        example_input=lambda rng, dtype=np.float64: (example(rng, shape, dtype),),
        # theta-minus has no parameters, so any channel count is valid
        channel_axis=None if variant == "theta_minus" else 1, min_spatial=min_spatial, space=space,
        description=f"GE-{variant.replace('_', '-')}: gather over a spatial extent, excite by an upsampled gate",
    ))


# H = 9, W = 7 with e = 4: ceil(9/4) x ceil(7/4) = 3 x 2 gathered cells, upsampled unevenly back


def _global_size(v):
    """feat_size of a global gather: the map's size (one int for a square map, as the default config)."""
    return v.height if v.height == v.width else (v.height, v.width)


def _bn_values(v) -> int:
    """Values per channel at the gather's last BatchNorm: a global gather leaves one position per sample; each
    stride-2 conv of a strided one rounds up (ceil(ceil(H / 2) / 2) = ceil(H / 4)), leaving ceil(H / e) rows."""
    if v.extent == 0:
        return v.batch
    return v.batch * math.ceil(v.height / v.extent) * math.ceil(v.width / v.extent)


def _space(variant: str, **config) -> Space:
    """Every extent (global: feat_size = the map's size), any map size; BN in training on more than one value."""
    sizes = {"feat_size": Derived(lambda v: _global_size(v) if v.extent == 0 else None)}
    where = () if variant == "theta_minus" else (bn_train(_bn_values),)
    if "reduction" in config:  # theta-plus's excite MLP: C // r >= 1
        where += (lambda v: v.channels // v.reduction >= 1,)
    return Space(config={"variant": variant, "channels": Ints(1, 16), "extent": Choice(*EXTENTS),
                         **(sizes if variant != "theta_minus" else {}), **config},
                 options={"gather_relu": Bools()} if variant == "theta_plus" else {}, inputs=image(), where=where)


_register("theta_minus", {"channels": 16, "extent": 4}, (2, 16, 9, 7), _space("theta_minus"))
_register("theta", {"channels": 16, "extent": 4}, (2, 16, 9, 7), _space("theta"))
# global extent, the official GEPP form: the gather kernel covers the whole 7 x 7 map
_register("theta_plus", {"channels": 16, "extent": 0, "feat_size": 7, "reduction": 4}, (2, 16, 7, 7),
          _space("theta_plus", reduction=Ints(1, 4)), min_spatial=7)
