"""Pieces shared by the self-attention modules: flattening, softmax dot-product attention (composed, and
as one fused primitive defined with the core's ``autograd.tensor.record``), conv-BN(-ReLU) stacks,
channel dropout and two initialisers the shared layers do not offer.

Layout convention: attention operands are *channel-first* flattened maps, as 1x1 conv outputs
reshape naturally::

    query (B, Ck, N)   key (B, Ck, M)   value (B, Cv, M)   ->   context (B, Cv, N)

so ``energy = query^T key`` is (B, N, M), the softmax runs over M (the last axis) and
``context = value attention^T`` needs only views (``swapaxes``), never a copy of an N x M matrix.
"""
from __future__ import annotations

import numpy as np

import autograd as ag
from autograd.backend import xp
from autograd.tensor import record

from ..layers import batch_norm, check_dropout, conv

# ---------------------------------------------------------------------------------------------
# shapes


def flatten_spatial(t: ag.Tensor) -> ag.Tensor:
    """(B, C, H, W) -> (B, C, H*W), row-major positions (index h*W + w, as torch's ``view``)."""
    n, c, h, w = t.shape
    return ag.reshape(t, (n, c, h * w))


# ---------------------------------------------------------------------------------------------
# attention


def attention_map(query: ag.Tensor, key: ag.Tensor, scale: float = 1.0) -> ag.Tensor:
    """softmax_j(scale * q_i . k_j): query (B, Ck, N), key (B, Ck, M) -> (B, N, M), rows sum to 1."""
    energy = ag.matmul(ag.swapaxes(query, 1, 2), key)                 # (B, N, M)
    if scale != 1.0:
        energy = energy * scale
    return ag.softmax(energy, axis=-1)


def aggregate(attention: ag.Tensor, value: ag.Tensor) -> ag.Tensor:
    """context_i = sum_j attention_ij value_j: attention (B, N, M), value (B, Cv, M) -> (B, Cv, N)."""
    return ag.matmul(value, ag.swapaxes(attention, 1, 2))


def dot_product_attention(query, key, value, scale: float = 1.0) -> ag.Tensor:
    """context = value softmax(scale query^T key)^T: (B, Ck, N), (B, Ck, M), (B, Cv, M) -> (B, Cv, N).

    The composed form is ``aggregate(attention_map(query, key, scale), value)``; this is the same function
    as one primitive, because the (B, N, M) matrix dominates time and memory at real sizes:

    * forward: the softmax runs in place on the energy buffer, so the attention is the only N x M
      array (the composed form holds energy, attention and the softmax temporaries);
    * backward (first order): with A the attention and G the output cotangent,
          dA = G^T V,   dE = scale * A * (dA - rowsum(dA * A)),   dQ = K dE^T,   dK = Q dE,   dV = G A
      in place on one N x M buffer; dQ and dK come out contiguous in the (B, C, N) layout the 1x1 convs
      expect.
    * backward with ``create_graph`` (grad-of-grad): the same formulas written with differentiable ops
      on a recomputed attention, so higher derivatives are exact.
    """
    query, key, value = ag.as_tensor(query), ag.as_tensor(key), ag.as_tensor(value)
    attention = _softmax_in_place(xp.matmul(xp.swapaxes(query.data, 1, 2), key.data), scale)   # (B, N, M)
    out = _gemm(value.data, xp.swapaxes(attention, 1, 2))                                      # (B, Cv, N)
    state: dict = {}
    key_needs_grad = key.requires_grad and ag.is_grad_enabled()

    def energy_grad(g):
        """dE (raw array), computed once per cotangent and shared by the query and key VJPs."""
        if state.get("g") is not g:
            state.clear()
            state.update(g=g, grad=_energy_grad(g.data, value.data, attention, scale))
        return state["grad"]

    def vjp_query(g):
        if ag.is_grad_enabled():
            return _recorded_grads(query, key, value, scale, g)[0]
        grad = _gemm(key.data, xp.swapaxes(energy_grad(g), 1, 2))                              # (B, Ck, N)
        if not key_needs_grad:
            state.clear()
        return ag.Tensor(grad)

    def vjp_key(g):
        if ag.is_grad_enabled():
            return _recorded_grads(query, key, value, scale, g)[1]
        grad = _gemm(query.data, energy_grad(g))                                               # (B, Ck, M)
        state.clear()
        return ag.Tensor(grad)

    def vjp_value(g):
        if ag.is_grad_enabled():
            return _recorded_grads(query, key, value, scale, g)[2]
        return ag.Tensor(_gemm(g.data, attention))                                             # (B, Cv, M)

    return record(out, ((query, vjp_query), (key, vjp_key), (value, vjp_value)))


def _gemm(a, b):
    """Batched ``a @ b`` of raw arrays; a wide result (fewer rows than columns) is computed as (b^T a^T)^T.

    The products with a few-channel result and a long contraction -- (C x N)(N x M), C << N, M -- run
    1.5-4x faster through OpenBLAS's sgemm/dgemm in the transposed orientation (measured on the project
    machine for every such product of the attention's backward pass).  The result is made contiguous
    again, which costs one copy of the small (C x M) matrix.
    """
    if a.shape[-2] < b.shape[-1]:
        return xp.ascontiguousarray(xp.swapaxes(xp.matmul(xp.swapaxes(b, -1, -2), xp.swapaxes(a, -1, -2)), -1, -2))
    return xp.matmul(a, b)


def _softmax_in_place(energy, scale: float):
    """softmax(scale * energy) over the last axis, overwriting ``energy`` (a fresh matmul result)."""
    if scale != 1.0:
        energy *= scale
    energy -= xp.max(energy, axis=-1, keepdims=True)
    xp.exp(energy, out=energy)
    energy /= xp.sum(energy, axis=-1, keepdims=True)
    return energy


def _energy_grad(g, value, attention, scale: float):
    """dE = scale * A * (dA - rowsum(dA * A)) with dA = G^T V, on one (B, N, M) buffer."""
    grad = xp.matmul(xp.swapaxes(g, 1, 2), value)          # dA (B, N, M)
    grad *= attention
    row_sums = xp.sum(grad, axis=-1, keepdims=True)
    for b in range(grad.shape[0]):                          # one sample's temporary at a time
        grad[b] -= attention[b] * row_sums[b]
    if scale != 1.0:
        grad *= scale
    return grad


def _recorded_grads(query, key, value, scale, g):
    """(dQ, dK, dV) as differentiable expressions of query, key, value and g (for create_graph)."""
    attention = attention_map(query, key, scale)
    d_attention = ag.matmul(ag.swapaxes(g, 1, 2), value)
    d_energy = attention * (d_attention - ag.sum(d_attention * attention, axis=-1, keepdims=True))
    if scale != 1.0:
        d_energy = d_energy * scale
    return (ag.matmul(key, ag.swapaxes(d_energy, 1, 2)), ag.matmul(query, d_energy),
            ag.matmul(g, attention))


# ---------------------------------------------------------------------------------------------
# layer stacks


def conv_bn(params, conv_prefix: str, bn_prefix: str, x, train: bool, *, padding=0, relu: bool = True,
            eps: float = 1e-5, bias: bool = True) -> ag.Tensor:
    """conv -> BatchNorm (-> ReLU): the ``Sequential(Conv2d, BN, ReLU)`` stacks of the official code."""
    y = batch_norm(params, bn_prefix, conv(params, conv_prefix, x, padding=padding, bias=bias), train, eps=eps)
    return ag.relu(y) if relu else y


def dropout2d(x: ag.Tensor, p: float, train: bool, rng=None, mechanism: str = "") -> ag.Tensor:
    """``nn.Dropout2d``: zero whole channels with probability ``p`` and scale the rest by 1/(1-p).

    Identity in eval mode or with ``p == 0``; otherwise the (N, C, 1, 1) keep-mask is drawn on the host
    from ``rng`` (a ``numpy.random.Generator``), so a seed gives the same mask on every backend.
    """
    p = check_dropout(mechanism, p)
    if not train or p == 0.0:
        return x
    if rng is None:
        raise ValueError(f"{mechanism}: dropout={p} in training mode needs an explicit rng (numpy.random.Generator)")
    n, c = x.shape[:2]
    keep = rng.random((n, c) + (1,) * (x.ndim - 2)) >= p
    return x * ag.from_numpy((keep / (1.0 - p)).astype(np.dtype(x.dtype)))


# ---------------------------------------------------------------------------------------------
# initialisers the shared layers do not have


def init_conv_normal(rng, params: dict, prefix: str, out_channels: int, in_channels: int, std: float, *,
                     bias: bool = True, dtype=np.float64) -> None:
    """A 1x1 conv with N(0, std^2) weights and zero bias (Caffe2's GaussianFill, or Kaiming normal)."""
    weight = rng.standard_normal((out_channels, in_channels, 1, 1)) * std
    params[f"{prefix}.weight"] = ag.from_numpy(weight.astype(dtype))
    if bias:
        params[f"{prefix}.bias"] = ag.from_numpy(np.zeros(out_channels, dtype=dtype))


def zero_conv(params: dict, prefix: str) -> None:
    """Set ``{prefix}.weight`` (and bias) to zero: the official "last layer starts at 0" init."""
    for key in (f"{prefix}.weight", f"{prefix}.bias"):
        if key in params:
            params[key] = ag.from_numpy(np.zeros(params[key].shape, dtype=params[key].dtype))


def init_gamma(params: dict, name: str, value: float, dtype=np.float64) -> None:
    """A learnable scalar of shape (1,) (``nn.Parameter(torch.zeros(1))`` when ``value`` is 0)."""
    params[name] = ag.from_numpy(np.full(1, value, dtype=dtype))
