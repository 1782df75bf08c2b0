"""External Attention with double normalisation (Guo, Liu, Mu, Hu, "Beyond Self-attention: External Attention
using Two Linear Layers for Visual Tasks", arXiv 2105.02358, 2021; TPAMI 2022).

Self-attention's keys and values are replaced by two small learnable memories M_k, M_v of S units shared
over the whole dataset; the attention map is normalised twice::

    F     = conv1(x)                            1x1 conv C -> C with bias          (B, C, N),  N = H·W
    A     = M_k F                               linear_0: Conv1d(C, S, 1), no bias  (B, S, N)
    Â     = softmax_N(A)                        over the pixels, per memory unit
    Ã     = Â / (ε + Σ_S Â)                     ℓ1 over the memory units, ε = 1e-9
    F_out = M_v Ã                               linear_1: Conv1d(S, C, 1), no bias  (B, C, N)
    y     = ReLU(BN(conv2(F_out)) + x)          conv2: 1x1 conv C -> C without bias, then BN(C)

Follows the official code (``MenghaoGuo/EANet``, ``model_torch.py``, ``External_attention(c)``, S = k = 64;
in EANet it follows ``fc0 = ConvBNReLU(2048, 512, 3)``).  The paper's block diagram is the same; the code
fixes ε = 1e-9 (inside the ℓ1 denominator), the residual and the final ReLU.  Initialisation as the official
module: 1x1 conv and Conv1d weights N(0, 2/(k·k·out)), and ``linear_1.weight = linear_0.weight.permute(1, 0, 2)``
-- the official module makes linear_1 a *view* of linear_0's storage, so M_v = M_kᵀ at init only (``.cuda()``
or ``.to()`` gives each parameter its own storage); here they are two arrays, equal transposed at init.
The multi-head form (EAMLP, ``multi_head_attention_torch.py``) is not covered.

``bare=True`` gives the unit alone (linear_0, the double normalisation, linear_1: no conv1/conv2/BN/residual/
ReLU); with ``eps=0.0`` that is fightingcv-attention's ``ExternalAttention`` on (B, N, C) tokens.  Normalising
over the swapped axes (softmax over S, ℓ1 over N) changes outputs by ~0.3.

Parameters (official names): ``conv1.weight (C, C, 1, 1)``, ``conv1.bias (C,)``, ``linear_0.weight (S, C, 1)``,
``linear_1.weight (C, S, 1)``, ``conv2.0.weight (C, C, 1, 1)``, ``conv2.1.*`` (C,) (BatchNorm; the official
SynchronizedBatchNorm2d has the same state_dict names and, on one device, the same numbers).  ``bare`` is a
structure option of :func:`init` and :func:`external` alike.
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import _uniform, batch_norm, check_dtype, check_input, example, init_batch_norm
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import Bools, Choice, Ints, Space, bn_train, image

NAME = "external"
EPS = 1e-9


def _normal_fan_out(rng, shape, dtype):
    """The official init: N(0, 2 / n) with n = kernel elements · out_channels (fan-out)."""
    std = math.sqrt(2.0 / (math.prod(shape[2:]) * shape[0]))
    return (rng.standard_normal(shape) * std).astype(dtype)


def init(rng, channels: int, *, k: int = 64, bare: bool = False, dtype=np.float64) -> dict:
    """Parameters for C = ``channels`` and S = ``k`` memory units (module docstring for the names)."""
    if channels < 1 or k < 1:
        raise ValueError(f"{NAME}: channels and k must be positive, got channels={channels}, k={k}")
    params: dict = {}
    if not bare:
        params["conv1.weight"] = backend.from_numpy(_normal_fan_out(rng, (channels, channels, 1, 1), dtype))
        params["conv1.bias"] = _uniform(rng, (channels,), 1.0 / math.sqrt(channels), dtype)   # PyTorch default
    memory = _normal_fan_out(rng, (k, channels, 1), dtype)
    params["linear_0.weight"] = backend.from_numpy(memory)
    params["linear_1.weight"] = backend.from_numpy(np.ascontiguousarray(memory.transpose(1, 0, 2)))  # M_v = M_kᵀ
    if not bare:
        params["conv2.0.weight"] = backend.from_numpy(_normal_fan_out(rng, (channels, channels, 1, 1), dtype))
        init_batch_norm(params, "conv2.1", channels, dtype=dtype)
    return params


def _memories(params, channels: int):
    """(M_k (S, C), M_v (C, S)) from linear_0.weight (S, C, 1) and linear_1.weight (C, S, 1)."""
    memory_key = params.take("linear_0.weight", (None, channels, 1))
    units = memory_key.shape[0]
    memory_value = params.take("linear_1.weight", (channels, units, 1))
    return ag.reshape(memory_key, (units, channels)), ag.reshape(memory_value, (channels, units))


def _attention(params, features, eps: float):
    """The doubly normalised map Ã = ℓ1_S(softmax_N(M_k F)): F (B, C, N) -> (B, S, N)."""
    memory_key, _ = _memories(params, features.shape[1])
    attention = ag.softmax(ag.matmul(memory_key, features), axis=-1)               # Â = softmax_N(M_k F)
    return attention / (eps + ag.sum(attention, axis=1, keepdims=True))           # Ã = Â / (ε + Σ_S Â)


def _pointwise(params, key: str, flat, bias_key: str | None = None):
    """A 1x1 conv C -> C on (B, C, N): weight (C, C, 1, 1) [+ bias (C,)]."""
    channels = flat.shape[1]
    out = ag.matmul(ag.reshape(params.take(key, (channels, channels, 1, 1)), (channels, channels)), flat)
    if bias_key is not None:
        out = out + ag.reshape(params.take(bias_key, (channels,)), (1, channels, 1))
    return out


def _validate(params, x, bare: bool, eps):
    key = "linear_0.weight" if bare else "conv1.weight"
    x = check_input(NAME, x, channels=params.shape(key)[1], min_size=1)
    check_dtype(NAME, x, params)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{NAME}: eps must be a number >= 0, got {eps!r}")
    return x


def _features(params, x, bare: bool):
    b, c, h, w = x.shape
    flat = ag.reshape(x, (b, c, h * w))
    return flat if bare else _pointwise(params, "conv1.weight", flat, "conv1.bias")    # F = conv1(x)


def _check_output_layers(params, channels: int) -> None:
    """Shape-check conv2 and its BatchNorm (the parameters after the attention map)."""
    params.take("conv2.0.weight", (channels, channels, 1, 1))
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        params.take(f"conv2.1.{leaf}", (channels,))
    params.take("conv2.1.num_batches_tracked", ())


@uses_params(NAME)
def attention_maps(params, x, *, train: bool = False, bare: bool = False, eps: float = EPS) -> ag.Tensor:
    """The doubly normalised attention Ã of x (B, C, H, W): (B, S, H·W); each column sums to ~1 over S.

    ``params`` is the whole parameter dict of :func:`external` (the layers after the map are shape-checked).
    """
    x = _validate(params, x, bare, eps)
    if not bare:
        _check_output_layers(params, x.shape[1])
    return _attention(params, _features(params, x, bare), eps)


@uses_params(NAME)
def external(params, x, *, train: bool = False, bare: bool = False, eps: float = EPS) -> ag.Tensor:
    """Apply External Attention to ``x`` (B, C, H, W); returns (B, C, H, W).

    ``train``: conv2's BatchNorm uses batch statistics (reported to ``npattn.track_running_stats()``).
    ``bare``: the structure, as given to :func:`init`.  ``eps``: the ℓ1 normalisation's ε (official 1e-9).
    """
    x = _validate(params, x, bare, eps)
    features = _features(params, x, bare)                                          # F      (B, C, N)
    _, memory_value = _memories(params, features.shape[1])
    out = ag.matmul(memory_value, _attention(params, features, eps))           # F_out = M_v Ã
    out = ag.reshape(out, x.shape)
    if bare:
        return out
    b, c, h, w = x.shape
    out = ag.reshape(_pointwise(params, "conv2.0.weight", ag.reshape(out, (b, c, h * w))), x.shape)
    return ag.relu(batch_norm(params, "conv2.1", out, train) + x)                  # y = ReLU(BN(conv2(F_out)) + x)


register(Mechanism(
    name=NAME, family="self_attention",
    paper=Paper("Guo, Liu, Mu, Hu", "Beyond Self-attention: External Attention using Two Linear Layers for Visual "
                "Tasks", "IEEE TPAMI", 2022),
    init=init, apply_fn=external, config={"channels": 16, "k": 8},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 16, 5, 6), dtype),),
    # S independent of C (more units than channels too); the bare unit (no convs, no BN) and eps 0 (the
    # fightingcv form); conv2's BN sees B H W values per channel
    space=Space(config={"channels": Ints(1, 16), "k": Ints(1, 12), "bare": Bools()},
                options={"eps": Choice(EPS, 0.0)}, inputs=image(),
                where=(bn_train(lambda v: 2 if v.bare else v.batch * v.height * v.width),)),
    description="attention to two learnable external memories with softmax over pixels then l1 over units",
))
