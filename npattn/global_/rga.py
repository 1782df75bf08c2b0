"""RGA: relation-aware global attention (Zhang, Lan, Zeng, Jin, Chen, CVPR 2020).

Each node (a position for RGA-S, a channel for RGA-C) is described by its pairwise relations with
*all* nodes, in both directions, stacked with an embedding of its own feature; a small conv net maps
that descriptor to the node's attention weight.

RGA-S (spatial; N = H*W positions, Ci = C // cha_ratio, Ni = N // spa_ratio)::

    theta, phi = relu(BN(conv1x1(x)))             C -> Ci                                 (B, Ci, N)
    G   = theta^T phi                             G[p, q] = theta_p . phi_q               (B, N, N)
    r_p = [G[p, :]; G[:, p]]                      relations in both directions             (B, 2N, H, W)
    e   = relu(BN(conv1x1(r)))                    gg_spatial: 2N -> Ni                     (B, Ni, H, W)
    g   = mean_c relu(BN(conv1x1(x)))             gx_spatial: C -> Ci, then channel mean   (B, 1, H, W)
    a   = BN(conv1x1(relu(BN(conv1x1([g; e])))))  W_spatial: 1+Ni -> (1+Ni)//d -> 1         (B, 1, H, W)
    x  <- sigmoid(a) * x

RGA-C is the same with the roles swapped: the positions become channels (x viewed (B, N, C, 1)),
G is C x C, the embeddings map N -> Ni (theta/phi/gx_channel) and 2C -> Ci (gg_channel), g is the mean
over the Ni embedded positions, and the gate has shape (B, C, 1, 1).

Follows the official code (``microsoft/Relation-Aware-Global-Attention-Networks``,
``reid/models/models_utils/rga_modules.py``: ``RGA_Module``), parameter names included:

* Every embedding is conv1x1 (no bias) + BN + ReLU; the attention nets end in conv + **BN(1)** (no ReLU)
  before the sigmoid.  Floor division everywhere; ``(1 + Ci) // down_ratio`` may be 0 for small C
  (then ``init`` refuses -- choose the ratios accordingly).
* The relation feature stacks the *incoming* relations first: official ``Gs_in = G^T`` viewed as
  (B, N, H, W) gives channel j at position p = G[p, j], then ``Gs_out = G`` gives G[j, p].
* ``in_spatial = H*W`` is fixed at construction (it sizes gg_spatial and the channel branch's convs).
* RGA-S+C applies RGA-C to the output of RGA-S (official order, ``order="sc"``); ``order="cs"`` applies
  the channel gate first.  The official ratios are cha_ratio = spa_ratio = down_ratio = 8.
* Official init: kaiming-normal; we draw PyTorch's default conv init.

``use_spatial`` / ``use_channel`` are the structure: options of :func:`init` and of :func:`rga` (and of the
gate functions) alike -- a registry entry's ``config`` reaches both -- never read from which parameters
exist.  ``in_spatial = H*W`` is fixed, so the registry's default (64) accepts 8 x 8 as its smallest square
input (``min_spatial``; non-square maps with H*W = 64, e.g. 4 x 16, work too).
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm_shapes, check_dtype, check_input, conv_bn, conv_shapes, example, init_conv_bn, take_all
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Derived, Inputs, Ints, Space, bn_train, image

NAME = "rga"
ORDERS = ("sc", "cs")


def _init_branch(rng, params: dict, suffix: str, nodes: int, node_dim: int, inter_nodes: int,
                 inter_dim: int, down_ratio: int, dtype) -> None:
    """One branch: ``nodes`` nodes of ``node_dim`` features (spatial: N positions of C channels)."""
    for name in ("theta", "phi", "gx"):                        # node features -> inter_dim
        init_conv_bn(rng, params, f"{name}_{suffix}.0", f"{name}_{suffix}.1", inter_dim, node_dim, dtype=dtype)
    init_conv_bn(rng, params, f"gg_{suffix}.0", f"gg_{suffix}.1", inter_nodes, 2 * nodes, dtype=dtype)
    descriptor = 1 + inter_nodes
    hidden = descriptor // down_ratio
    if hidden < 1:
        raise ValueError(f"{NAME}: (1 + {inter_nodes}) // down_ratio={down_ratio} is 0 in the {suffix} branch; "
                         "use larger sizes or smaller ratios")
    init_conv_bn(rng, params, f"W_{suffix}.0", f"W_{suffix}.1", hidden, descriptor, dtype=dtype)
    init_conv_bn(rng, params, f"W_{suffix}.3", f"W_{suffix}.4", 1, hidden, dtype=dtype)


def init(rng, in_channel: int, in_spatial: int, *, use_spatial: bool = True, use_channel: bool = True,
         cha_ratio: int = 8, spa_ratio: int = 8, down_ratio: int = 8, dtype=np.float64) -> dict:
    """Parameters of ``RGA_Module(in_channel, in_spatial, ...)`` (official names); in_spatial = H*W.

    Spatial branch: ``theta_spatial``, ``phi_spatial``, ``gx_spatial`` (Ci, C), ``gg_spatial`` (Ni, 2N),
    ``W_spatial.{0,1,3,4}``; channel branch: ``theta_channel``, ``phi_channel``, ``gx_channel`` (Ni, N),
    ``gg_channel`` (Ci, 2C), ``W_channel.{0,1,3,4}``.  Each ``.0``/``.3`` is a conv, ``.1``/``.4`` a BN.
    """
    if not (use_spatial or use_channel):
        raise ValueError(f"{NAME}: at least one of use_spatial / use_channel must be True")
    inter_channel, inter_spatial = in_channel // cha_ratio, in_spatial // spa_ratio
    if inter_channel < 1 or inter_spatial < 1:
        raise ValueError(f"{NAME}: in_channel // cha_ratio and in_spatial // spa_ratio must be at least 1, got "
                         f"{in_channel}//{cha_ratio}, {in_spatial}//{spa_ratio}")
    params: dict = {}
    if use_spatial:
        _init_branch(rng, params, "spatial", in_spatial, in_channel, inter_spatial, inter_channel, down_ratio, dtype)
    if use_channel:
        _init_branch(rng, params, "channel", in_channel, in_spatial, inter_channel, inter_spatial, down_ratio, dtype)
    return params


def _relation_gate(params, suffix: str, nodes_map, train: bool) -> ag.Tensor:
    """The gate logits (B, 1, n, m) of a node map (B, d, n, m) whose n*m positions are the nodes."""
    b, _, n, m = nodes_map.shape
    theta = conv_bn(params, f"theta_{suffix}.0", f"theta_{suffix}.1", nodes_map, train)
    phi = conv_bn(params, f"phi_{suffix}.0", f"phi_{suffix}.1", nodes_map, train)
    theta = ag.reshape(theta, (b, theta.shape[1], n * m))
    phi = ag.reshape(phi, (b, phi.shape[1], n * m))
    affinity = ag.matmul(ag.swapaxes(theta, 1, 2), phi)                                 # G (B, nodes, nodes)
    relations = ag.concatenate([ag.swapaxes(affinity, 1, 2), affinity], axis=1)          # [G^T; G] (B, 2 nodes, nodes)
    relations = ag.reshape(relations, (b, relations.shape[1], n, m))                     # r_p in channels
    relation_embedding = conv_bn(params, f"gg_{suffix}.0", f"gg_{suffix}.1", relations, train)  # e
    own_embedding = conv_bn(params, f"gx_{suffix}.0", f"gx_{suffix}.1", nodes_map, train)
    own_embedding = ag.mean(own_embedding, axis=1, keepdims=True)                         # g (B, 1, n, m)
    descriptor = ag.concatenate([own_embedding, relation_embedding], axis=1)             # [g; e]
    hidden = conv_bn(params, f"W_{suffix}.0", f"W_{suffix}.1", descriptor, train)
    return conv_bn(params, f"W_{suffix}.3", f"W_{suffix}.4", hidden, train, relu=False)  # a


def _spatial_gate(params, x, train: bool) -> ag.Tensor:
    """RGA-S gate sigmoid(a) of x (B, C, H, W): (B, 1, H, W)."""
    return ag.sigmoid(_relation_gate(params, "spatial", x, train))


def _channel_gate(params, x, train: bool) -> ag.Tensor:
    """RGA-C gate sigmoid(a) of x (B, C, H, W): (B, C, 1, 1)."""
    b, c, h, w = x.shape
    positions_as_channels = ag.reshape(ag.swapaxes(ag.reshape(x, (b, c, h * w)), 1, 2), (b, h * w, c, 1))
    gate = _relation_gate(params, "channel", positions_as_channels, train)              # (B, 1, C, 1)
    return ag.sigmoid(ag.reshape(gate, (b, c, 1, 1)))


def _branch_shapes(params, suffix: str, nodes: int, node_dim: int) -> dict:
    """The shapes of one branch's parameters (inter sizes and the gate's hidden width read from them)."""
    inter_dim = params.shape(f"theta_{suffix}.0.weight")[0]
    inter_nodes = params.shape(f"gg_{suffix}.0.weight")[0]
    hidden = params.shape(f"W_{suffix}.3.weight")[1]
    units = [(f"{name}_{suffix}", inter_dim, node_dim) for name in ("theta", "phi", "gx")]
    units += [(f"gg_{suffix}", inter_nodes, 2 * nodes)]
    shapes = {}
    for prefix, out, inp in units:
        shapes.update({**conv_shapes(f"{prefix}.0", out, inp, bias=False), **batch_norm_shapes(f"{prefix}.1", out)})
    # The gate net last to first: when a key is missing, the keys not read yet are offered as misspellings,
    # and W_*.0.weight's near-twins (W_*.1/.3/.4.weight) must not crowd out a real typo of it.
    shapes.update({**conv_shapes(f"W_{suffix}.3", 1, hidden, bias=False), **batch_norm_shapes(f"W_{suffix}.4", 1),
                   **batch_norm_shapes(f"W_{suffix}.1", hidden),
                   **conv_shapes(f"W_{suffix}.0", hidden, 1 + inter_nodes, bias=False)})
    return shapes


def _sizes(params, use_spatial: bool, use_channel: bool) -> tuple[int, int]:
    """(in_channel, in_spatial) from the parameter shapes, every parameter of the structure checked."""
    if not (use_spatial or use_channel):
        raise ValueError(f"{NAME}: at least one of use_spatial / use_channel must be True")
    channels = (params.shape("theta_spatial.0.weight")[1] if use_spatial
                else params.shape("gg_channel.0.weight")[1] // 2)
    positions = (params.shape("theta_channel.0.weight")[1] if use_channel
                 else params.shape("gg_spatial.0.weight")[1] // 2)
    shapes = {}
    if use_spatial:
        shapes.update(_branch_shapes(params, "spatial", positions, channels))
    if use_channel:
        shapes.update(_branch_shapes(params, "channel", channels, positions))
    take_all(params, shapes)
    return channels, positions


def _checked(params, x, use_spatial: bool, use_channel: bool) -> ag.Tensor:
    channels, positions = _sizes(params, use_spatial, use_channel)
    x = check_input(NAME, x, channels=channels, min_size=1)
    check_dtype(NAME, x, params)
    if x.shape[2] * x.shape[3] != positions:
        raise ValueError(f"{NAME}: x has H*W = {x.shape[2] * x.shape[3]} positions (shape {x.shape}) but the "
                         f"parameters were built for in_spatial = {positions}")
    return x


@uses_params(NAME)
def spatial_attention(params, x, *, train: bool = False, use_spatial: bool = True,
                      use_channel: bool = True) -> ag.Tensor:
    """RGA-S gate sigmoid(a) of ``x`` (B, C, H, W): shape (B, 1, H, W).

    Takes the whole RGA parameter dict (``use_spatial``/``use_channel`` as given to :func:`init`).
    """
    if not use_spatial:
        raise ValueError(f"{NAME}: spatial_attention needs the spatial branch (use_spatial=True)")
    return _spatial_gate(params, _checked(params, x, use_spatial, use_channel), train)


@uses_params(NAME)
def channel_attention(params, x, *, train: bool = False, use_spatial: bool = True,
                      use_channel: bool = True) -> ag.Tensor:
    """RGA-C gate sigmoid(a) of ``x`` (B, C, H, W): shape (B, C, 1, 1) (the whole dict, as spatial_attention)."""
    if not use_channel:
        raise ValueError(f"{NAME}: channel_attention needs the channel branch (use_channel=True)")
    return _channel_gate(params, _checked(params, x, use_spatial, use_channel), train)


@uses_params(NAME)
def rga(params, x, *, train: bool = False, order: str = "sc", use_spatial: bool = True,
        use_channel: bool = True) -> ag.Tensor:
    """Apply RGA to ``x`` (B, C, H, W) with H*W = in_spatial; returns (B, C, H, W).

    ``use_spatial`` / ``use_channel``: the branches, as given to :func:`init` (RGA-S, RGA-C, or both);
    ``order`` is ``"sc"`` (official: spatial gate, then the channel gate on its output) or ``"cs"``.
    """
    if order not in ORDERS:
        raise ValueError(f"{NAME}: order must be one of {ORDERS}, got {order!r}")
    x = _checked(params, x, use_spatial, use_channel)
    gates = {"s": (use_spatial, _spatial_gate), "c": (use_channel, _channel_gate)}
    for branch in order:
        used, gate = gates[branch]
        if used:
            x = gate(params, x, train) * x                                                # x <- sigmoid(a) * x
    return x


_PAPER = Paper("Zhang, Lan, Zeng, Jin, Chen", "Relation-Aware Global Attention for Person Re-identification",
               "CVPR", 2020)


def _example(rng, dtype=np.float64):
    return (example(rng, (2, 64, 8, 8), dtype),)


def _space(use_spatial: bool, use_channel: bool) -> Space:
    """in_spatial = H W (the parameters are built for the map); C // cha_ratio >= 1 and H W // spa_ratio >= 1,
    and each used branch's gate keeps (1 + its inter nodes) // down_ratio >= 1 (init's rules).  spa_ratio and
    down_ratio depend on the map, so they are drawn after it (helper input dims) and every ratio that init
    accepts for the drawn sizes is reachable without rejection (a fixed 1 x 1 map too).  In training the
    spatial branch's BatchNorms see B H W values per channel, the channel branch's B C.  C = 64 (the default's)
    as a choice beside the small ones."""
    def hidden_ok(v):
        inter_channel, inter_spatial = v.in_channel // v.cha_ratio, v.in_spatial // v.spa_ratio
        return inter_spatial >= 1 and (not use_spatial or (1 + inter_spatial) // v.down_ratio >= 1) \
            and (not use_channel or (1 + inter_channel) // v.down_ratio >= 1)

    def largest_down(v):
        inter_nodes = ([1 + v.height * v.width // v._spa_ratio] if use_spatial else []) \
            + ([1 + v.in_channel // v.cha_ratio] if use_channel else [])
        return min(8, *inter_nodes)

    dims = {**image("in_channel").dims, "_spa_ratio": Ints(1, lambda v: min(8, v.height * v.width)),
            "_down_ratio": Ints(1, largest_down)}
    where = [hidden_ok]
    if use_spatial:
        where.append(bn_train(lambda v: v.batch * v.height * v.width))
    if use_channel:
        where.append(bn_train(lambda v: v.batch * v.in_channel))
    return Space(config={"in_channel": Choice(Ints(1, 24), 64), "cha_ratio": Ints(1, lambda v: min(8, v.in_channel)),
                         "spa_ratio": Derived(lambda v: v._spa_ratio), "down_ratio": Derived(lambda v: v._down_ratio),
                         "in_spatial": Derived(lambda v: v.height * v.width),
                         "use_spatial": use_spatial, "use_channel": use_channel},
                 options={"order": Choice(*ORDERS)} if use_spatial and use_channel else {},
                 inputs=Inputs(dims, image("in_channel").build), where=tuple(where))


# C = 64 and H*W = 64 keep the official ratios 8/8/8 valid: (1 + 64 // 8) // 8 = 1 hidden unit.
for _name, _spatial, _channel, _what in (
    ("rga", True, True, "RGA-S then RGA-C"),
    ("rga-s", True, False, "RGA-S: spatial gate from pairwise position relations"),
    ("rga-c", False, True, "RGA-C: channel gate from pairwise channel relations"),
):
    register(Mechanism(
        name=_name, family="global", paper=_PAPER, init=init, apply_fn=rga,
        config={"in_channel": 64, "in_spatial": 64, "use_spatial": _spatial, "use_channel": _channel},
        example_input=_example, description=_what, min_spatial=8,      # H*W = in_spatial: 8 x 8 is the square
        space=_space(_spatial, _channel),
    ))
