"""CoT: the Contextual Transformer block, CoTNet's ``CotLayer`` (Li, Yao, Pan, Mei, TPAMI 2022).

Static context from a k x k convolution of the keys, dynamic context from a local attention whose weights
come from the query and the static context, fused by a radix-2 split attention::

    K1  = ReLU(BN(key_embed(x)))                   k x k conv, groups 4, no bias      static context (B, C, H, W)
    W   = GN(conv(ReLU(BN(conv([x; K1])))))        2C -> C/2 -> k²·C/8, GN of C/8 groups of k²   (B, C/8, k², H, W)
    V   = BN(conv1x1(x))                           C -> C, no bias
    A   = Σ_{taps t} W[c mod C/8, t] · V[c, shifted by t]     local aggregation, zero padding     (B, C, H, W)
    K2  = SiLU(BN(A))                              dynamic context
    s   = mean_HW(K2 + K1);  r = se(s) as (B, C, 2);  a = softmax over the 2       (radix 2, channel-major)
    y   = a₀ · K2 + a₁ · K1

Follows the official code (``JDAI-CV/CoTNet``, ``models/cotnet.py``, ``CotLayer(dim, kernel_size)``; local
aggregation = ``cupy_layers/aggregation_zeropad.py``):

* the input of ``embed`` is **[x; K1]** (query first; the paper writes [K1, Q] -- a permutation of
  ``embed.0``'s input channels, not an option);
* the k² weights of output channel c are those of weight group **c mod C/8** (interleaved sharing, as the
  kernel's own unfold-based test ``test_aggregation_zeropad`` reads them: unfold(V) viewed as
  (B, 8, C/8, k², H·W)), **zero padding**, and **no softmax** over the k² taps;
* GroupNorm eps 1e-5; BatchNorms PyTorch's defaults; act = swish (SiLU);
* the fusion's ``se`` is Conv(C -> A, bias) -> BN -> ReLU -> Conv(A -> 2C, bias) with A = max(2C // 4, 32), its
  output viewed as (B, C, 2): channel 2c + i is radix i of channel c; radix 0 weighs K2, radix 1 weighs K1.
  ``se.1`` sees (B, A, 1, 1): in training each channel has only B values, and B = 1 is an error (as torch).
* C must be divisible by 8; k is odd (3 in CoTNet).  In CoTNet's Bottleneck an AvgPool2d(3, 2, 1) precedes the
  layer when the stride is 2 (not part of the layer); ``CoXtLayer`` (grouped) is another variant, not covered.

The CUDA kernel itself cannot run on a CPU (the official code moves CPU tensors to CUDA); npattn computes the
same sum with ``unfold``, as the official test asserts the kernel does (to 1e-9).

Parameters (official names): ``key_embed.0.weight (C, C/4, k, k)``, ``key_embed.1.*`` (C,);
``embed.0.weight (C/2, 2C, 1, 1)``, ``embed.1.*`` (C/2,), ``embed.3.weight (k²C/8, C/2, 1, 1)``,
``embed.3.bias``, ``embed.4.weight/.bias (k²C/8,)``; ``conv1x1.0.weight (C, C, 1, 1)``, ``conv1x1.1.*``;
``bn.*`` (C,); ``se.0.weight (A, C, 1, 1)``, ``se.0.bias``, ``se.1.*`` (A,), ``se.3.weight (2C, A, 1, 1)``,
``se.3.bias``.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import batch_norm, check_dtype, check_input, conv, example, init_batch_norm, init_conv
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Choice, Derived, Ints, Space, bn_train, image

NAME = "cot"
SHARE_PLANES = 8        # official share_planes: C/8 weight groups
KEY_GROUPS = 4          # key_embed's grouped conv
RADIX = 2
GN_EPS = 1e-5


def _attention_width(channels: int) -> int:
    """A = max(C · radix // reduction_factor, 32) with reduction_factor 4 (official ``attn_chs``)."""
    return max(channels * RADIX // 4, 32)


def _check_channels(channels: int, where: str) -> None:
    if channels < SHARE_PLANES or channels % SHARE_PLANES:
        raise ValueError(f"{NAME}: {where} {channels} channels; CotLayer needs a positive multiple of "
                         f"{SHARE_PLANES} (C/8 weight groups, key_embed groups={KEY_GROUPS}, embed width C/2)")


def init(rng, channels: int, *, kernel_size: int = 3, dtype=np.float64) -> dict:
    """Parameters of ``CotLayer(channels, kernel_size)`` (module docstring), PyTorch default initialisation."""
    _check_channels(channels, "init:")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{NAME}: kernel_size must be odd and positive, got {kernel_size}")
    c, k2 = channels, kernel_size * kernel_size
    width = _attention_width(c)
    params: dict = {}
    init_conv(rng, params, "key_embed.0", c, c, kernel_size, groups=KEY_GROUPS, bias=False, dtype=dtype)
    init_batch_norm(params, "key_embed.1", c, dtype=dtype)
    init_conv(rng, params, "embed.0", c // 2, 2 * c, 1, bias=False, dtype=dtype)
    init_batch_norm(params, "embed.1", c // 2, dtype=dtype)
    init_conv(rng, params, "embed.3", k2 * c // SHARE_PLANES, c // 2, 1, dtype=dtype)
    params["embed.4.weight"] = ag.from_numpy(np.ones(k2 * c // SHARE_PLANES, dtype=dtype))
    params["embed.4.bias"] = ag.from_numpy(np.zeros(k2 * c // SHARE_PLANES, dtype=dtype))
    init_conv(rng, params, "conv1x1.0", c, c, 1, bias=False, dtype=dtype)
    init_batch_norm(params, "conv1x1.1", c, dtype=dtype)
    init_batch_norm(params, "bn", c, dtype=dtype)
    init_conv(rng, params, "se.0", width, c, 1, dtype=dtype)
    init_batch_norm(params, "se.1", width, dtype=dtype)
    init_conv(rng, params, "se.3", RADIX * c, width, 1, dtype=dtype)
    return params


def _kernel_size(params, channels: int) -> int:
    weight = params.take("key_embed.0.weight", (channels, channels // KEY_GROUPS, None, None))
    k = weight.shape[-1]
    if k % 2 == 0 or weight.shape[-2] != k:
        raise ValueError(f"{NAME}: parameter 'key_embed.0.weight' must be a square kernel of odd size "
                         f"(C, C/4, k, k), got {tuple(weight.shape)}")
    return k


def _conv1x1(params, prefix: str, x, out: int, bias: bool = True):
    """A 1x1 conv: ``{prefix}.weight`` (out, C_in, 1, 1) [+ ``{prefix}.bias`` (out,)], shapes checked exactly."""
    weight = params.take(f"{prefix}.weight", (out, x.shape[1], 1, 1))
    return ag.conv2d(x, weight, params.take(f"{prefix}.bias", (out,)) if bias else None)


def local_aggregation(values, weights, kernel_size: int) -> ag.Tensor:
    """A[b, c] = Σ_t weights[b, c mod C/8, t] · V[b, c] shifted by tap t, zero padding (no softmax over taps).

    values (B, C, H, W), weights (B, C/8, k², H, W) -> (B, C, H, W); tap t = kh·k + kw reads
    V[b, c, h − p + kh, w − p + kw] with p = (k − 1)/2 (the official aggregation_zeropad kernel).
    """
    b, c, h, w = values.shape
    share = weights.shape[1]
    taps = kernel_size * kernel_size
    columns = ag.unfold(values, kernel_size, padding=(kernel_size - 1) // 2)           # (B, C·k², H·W)
    columns = ag.reshape(columns, (b, c // share, share, taps, h * w))                 # channel c = g·(C/8) + j
    aggregated = ag.sum(columns * ag.reshape(weights, (b, 1, share, taps, h * w)), axis=3)
    return ag.reshape(aggregated, (b, c, h, w))


def _dynamic_weights(params, x, static, train: bool, kernel_size: int):
    """W = GN(embed.3(ReLU(BN(embed.0([x; K1]))))): (B, C/8, k², H, W)."""
    b, c, h, w = x.shape
    taps = kernel_size * kernel_size
    hidden = _conv1x1(params, "embed.0", ag.concatenate([x, static], axis=1), c // 2, bias=False)   # [x; K1]
    hidden = ag.relu(batch_norm(params, "embed.1", hidden, train))
    logits = _conv1x1(params, "embed.3", hidden, taps * c // SHARE_PLANES)
    width = (taps * c // SHARE_PLANES,)
    logits = ag.group_norm(logits, c // SHARE_PLANES, params.take("embed.4.weight", width),
                           params.take("embed.4.bias", width), eps=GN_EPS)
    return ag.reshape(logits, (b, c // SHARE_PLANES, taps, h, w))


def _radix_weights(params, static, dynamic, train: bool):
    """a = softmax over the radix of se(mean_HW(K2 + K1)) viewed (B, C, 2): (B, C, 2, 1, 1)."""
    b, c = static.shape[:2]
    pooled = ag.mean(dynamic + static, axis=(2, 3), keepdims=True)                    # s = mean_HW(K2 + K1)
    hidden = _conv1x1(params, "se.0", pooled, _attention_width(c))
    hidden = ag.relu(batch_norm(params, "se.1", hidden, train))
    logits = ag.reshape(_conv1x1(params, "se.3", hidden, RADIX * c), (b, c, RADIX))   # channel 2c + i: radix i
    return ag.reshape(ag.softmax(logits, axis=2), (b, c, RADIX, 1, 1))


def _validate(params, x):
    channels = params.shape("conv1x1.0.weight")[1]
    x = check_input(NAME, x, channels=channels, min_size=1)
    _check_channels(channels, "parameters for")
    check_dtype(NAME, x, params)
    return x


def _contexts(params, x, train: bool):
    """(K1, K2, radix weights a (B, C, 2, 1, 1))."""
    c = x.shape[1]
    k = _kernel_size(params, c)
    static = conv(params, "key_embed.0", x, padding=k // 2, groups=KEY_GROUPS, bias=False, out=c)
    static = ag.relu(batch_norm(params, "key_embed.1", static, train))                # K1
    weights = _dynamic_weights(params, x, static, train, k)                           # W
    values = batch_norm(params, "conv1x1.1", _conv1x1(params, "conv1x1.0", x, c, bias=False), train)   # V
    aggregated = local_aggregation(values, weights, k)                                 # A
    normed = batch_norm(params, "bn", aggregated, train)
    dynamic = normed * ag.sigmoid(normed)                                              # K2 = SiLU(BN(A))
    return static, dynamic, _radix_weights(params, static, dynamic, train)


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False) -> dict:
    """{"static": K1 (B, C, H, W), "dynamic": K2 (B, C, H, W), "radix": a (B, C, 2)} for x (B, C, H, W)."""
    static, dynamic, radix = _contexts(params, _validate(params, x), train)
    return {"static": static, "dynamic": dynamic, "radix": ag.reshape(radix, radix.shape[:3])}


@uses_params(NAME)
def cot(params, x, *, train: bool = False) -> ag.Tensor:
    """Apply CoTNet's CotLayer to ``x`` (B, C, H, W); returns (B, C, H, W).

    ``train``: every BatchNorm uses batch statistics (reported to ``npattn.track_running_stats()``); ``se.1``
    then needs B >= 2.
    """
    x = _validate(params, x)
    static, dynamic, radix = _contexts(params, x, train)
    return dynamic * radix[:, :, 0] + static * radix[:, :, 1]                         # y = a₀·K2 + a₁·K1


register(Mechanism(
    name=NAME, family="self_attention",
    paper=Paper("Li, Yao, Pan, Mei", "Contextual Transformer Networks for Visual Recognition", "IEEE TPAMI", 2022),
    init=init, apply_fn=cot, config={"channels": 16},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # C a positive multiple of 8 (init's rule); every odd k, kernels wider than the map (zero padding); the
    # fusion's se.1 BN sees one value per sample (the other BNs B H W)
    space=Space(config={"_eighths": Ints(1, 3), "channels": Derived(lambda v: 8 * v._eighths),
                        "kernel_size": Choice(3, 1, 5, 7)},
                inputs=image(), where=(bn_train(lambda v: v.batch),)),
    description="static k x k key context plus local attention from [query; keys], fused by radix-2 attention",
))
