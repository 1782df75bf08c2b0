"""Pieces shared by the sequence models of this family (Transformer, Bahdanau, Show-Attend-Tell).

Conventions of the public APIs these helpers serve:

* sequence inputs are (B, L, features) float arrays;
* padding masks are boolean (B, L) with **True = padding** (torch's ``key_padding_mask``); the core
  softmax takes the opposite, a *keep* mask (True = takes part), so :func:`keep_from_padding` flips it;
* token ids are integer (B, T) arrays.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, linear
from ..params import Params


def check_sequence(mechanism: str, x, params, *, arg: str, features: int, layout: str) -> ag.Tensor:
    """Validate a float (B, L, features) input and return it as a Tensor (errors name mechanism and arg)."""
    x = check_input(mechanism, x, arg=arg, ndim=3, layout=layout)
    if x.shape[-1] != features:
        raise ValueError(
            f"{mechanism}: {arg} must have {features} features (last axis) to match the parameters, got shape {x.shape}"
        )
    check_dtype(mechanism, x, params, arg=arg)
    return x


def prefix_view(mechanism: str, params, prefix: str) -> tuple:
    """(view, owned): the parameters under ``prefix`` of a public building block as a :class:`Params` view.

    Called by a user with a whole dict, the view holds the keys under ``prefix`` (every key when ``prefix``
    is "") and ``owned`` is True: the caller checks afterwards (``view.check_all_used()``) that the block
    read all of them.  Called from a mechanism with its view, ``owned`` is False and the mechanism's
    outermost call checks the whole dict.
    """
    if isinstance(params, Params):
        return params, False
    if not isinstance(params, Mapping):
        raise TypeError(f"{mechanism}: params must be a dict of arrays (name -> array), got {type(params).__name__}")
    head = f"{prefix}." if prefix else ""
    return Params(mechanism, {k: v for k, v in params.items() if k.startswith(head)}), True


def check_batch(mechanism: str, x, batch: int, arg: str) -> None:
    if x.shape[0] != batch:
        raise ValueError(f"{mechanism}: {arg} has batch size {x.shape[0]}, expected {batch}")


def check_padding_mask(mechanism: str, mask, *, arg: str, shape: tuple):
    """A boolean (B, L) padding mask (True = pad) as a backend array, or None."""
    if mask is None:
        return None
    data = mask.data if isinstance(mask, ag.Tensor) else mask
    if not hasattr(data, "dtype") or data.dtype != np.bool_:
        raise TypeError(f"{mechanism}: {arg} must be a boolean array (True = padding), got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"{mechanism}: {arg} must have shape {tuple(shape)}, got {tuple(data.shape)}")
    return data


def check_tokens(mechanism: str, tokens, *, arg: str, vocab: int, batch: int):
    """Integer (B, T) token ids in [0, vocab) as a backend array."""
    data = tokens.data if isinstance(tokens, ag.Tensor) else tokens
    if not hasattr(data, "dtype") or np.dtype(data.dtype).kind not in "iu":
        raise TypeError(f"{mechanism}: {arg} must be integer token ids (B, T), got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 2 or data.shape[0] != batch:
        raise ValueError(f"{mechanism}: {arg} must be 2-D (B={batch}, T), got shape {tuple(data.shape)}")
    if data.size and (int(ag.xp.min(data)) < 0 or int(ag.xp.max(data)) >= vocab):
        raise ValueError(f"{mechanism}: {arg} must hold ids in [0, {vocab})")
    return data


def keep_from_padding(padding):
    """True = pad  ->  True = keep (the core softmax's convention); None stays None."""
    return None if padding is None else ~padding


def shift_right(sequence: ag.Tensor) -> ag.Tensor:
    """(B, T, m) -> (B, T, m) whose step t holds step t-1 and step 0 a zero vector (the "previous word")."""
    return ag.pad(sequence[:, :-1], ((0, 0), (1, 0), (0, 0)))


def additive_energy(params, prefix: str, projected_keys, projected_query, *, bias: bool) -> ag.Tensor:
    """Additive (Bahdanau-style) scores  e_j = v^T tanh(K_j + q) [+ c]  with v = ``{prefix}.weight`` (1, A).

    projected_keys (B, L, A), projected_query (B, A) -> (B, L).  With ``bias``, ``{prefix}.bias`` (1,) adds
    the scalar c (Show-Attend-Tell's c_tt; Bahdanau's v_a has none).
    """
    hidden = ag.tanh(projected_keys + ag.expand_dims(projected_query, 1))
    return linear(params, prefix, hidden, bias=bias, out=1)[..., 0]


def weighted_sum(weights, values) -> ag.Tensor:
    """Context  c = sum_j w_j v_j:  weights (B, L), values (B, L, D) -> (B, D)."""
    return ag.matmul(ag.expand_dims(weights, 1), values)[:, 0]
