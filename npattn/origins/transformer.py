"""The Transformer (Vaswani et al., "Attention Is All You Need", NeurIPS 2017).

Paper equation                                                       code
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                scaled_dot_product_attention
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)                    _multi_head (heads split from one
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O             (d, d) matrix each: w_q, w_k, w_v, w_o)
        d_k = d_v = d_model / h
    FFN(x) = max(0, x W_1 + b_1) W_2 + b_2                           _feed_forward (linear1, linear2)
    each sub-layer: LayerNorm(x + Dropout(Sublayer(x)))   (post-LN)  _add_and_norm
    PE(pos, 2i) = sin(pos / 10000^(2i/d)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d))                          positional_encoding(layout="interleave")
    input = Dropout(Embedding * sqrt(d_model) + PE)                  _embed
    encoder: N x [self-attention, FFN]                               encoder_layer
    decoder: N x [masked self-attention, encoder-decoder attention,
                  FFN]                                               decoder_layer

Shapes: inputs are float embeddings (B, L, d_model) -- the rows of the embedding table, before the
sqrt(d_model) scaling, which happens here -- plus boolean padding masks (B, L) with **True = padding**
(torch's ``key_padding_mask``).  ``transformer`` returns the decoder output (B, L_tgt, d_model): the
input of the final linear + softmax, which is not part of this module.

Large inputs: the (B, h, Lq, Lk) attention weights are materialised (the tape keeps them for the backward
pass); when they exceed ``BLOCK_BYTES`` the batch is processed a few items at a time, which keeps the
softmax passes in cache (about half the CPU time at B=8, L=1024, d=512) and gives the same numbers.

Masks: padded keys and (in the decoder self-attention) future keys get exactly zero attention weight; a
query row whose keys are all masked gets all-zero weights (a zero context, no NaN) and passes zero
gradient.  The query rows of padded positions are still computed, as in torch.

Official code (tensorflow/tensor2tensor) versus the paper, and what is followed here:
    * Q/K/V/O projections without bias (t2t); ``attn_bias=True`` adds biases (torch's default MHA).
    * LayerNorm epsilon 1e-6 (t2t); ``eps`` changes it (torch's default is 1e-5).
    * positional encoding: t2t's ``get_timing_signal_1d`` concatenates [sin | cos] with
      inv_timescale_i = 10000^(-i / (d/2 - 1)) -- ``pe_layout="concat"``; the default is the paper's
      interleaved form ``pe_layout="interleave"``.
    * dropout: the paper's residual dropout P_drop on every sub-layer output and on the embedded input
      (``dropout``, default 0.1).  t2t can also drop attention weights and the FFN hidden layer
      (``attention_dropout``, ``relu_dropout``): 0 in ``transformer_base_v1`` (the paper's post-LN setup,
      the default here), 0.1 from ``transformer_base_v2`` on, which is also pre-LN.  Dropout masks come
      from the explicit ``rng``; eval mode is the identity.
    * post-LN as in the paper and ``transformer_base_v1``.  There is no final LayerNorm after the stacks
      (``torch.nn.Transformer`` adds one; its layers alone match these).

Structure (the parameter contract, :mod:`npattn.params`): ``attn_bias`` (biases on Q/K/V/O) and, for the
stack, ``num_layers`` (layers per stack) are keywords of ``init``/``init_mha`` *and* of the apply functions,
with the same defaults; a registry entry's ``config`` reaches both.  The parameters must be exactly those
``init`` makes for those values: a missing key (one decoder LayerNorm, a whole layer) is a KeyError naming
it -- never a shallower model -- and every parameter's shape is checked against ``d_model`` (read from the
in-features of the first query projection), ``d_ff`` (in-features of ``linear2``) and the options.
Dropout rates are checked (numbers in [0, 1]) in eval mode too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import example, init_layer_norm, init_linear, layer_norm, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Bools, Choice, Derived, Inputs, Ints, Space
from ._sequence import check_batch, check_padding_mask, check_sequence, keep_from_padding, prefix_view

NAME = "transformer"
NAME_MHA = "mha"
PAPER = Paper("Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin", "Attention Is All You Need",
              "NeurIPS", 2017)
PROJECTIONS = ("w_q", "w_k", "w_v", "w_o")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------
# scaled dot-product attention and masks


def attention_weights(query, key, keep=None) -> ag.Tensor:
    """softmax(Q K^T / sqrt(d_k)) with a boolean keep-mask: (..., Lq, d_k), (..., Lk, d_k) -> (..., Lq, Lk).

    ``keep`` (True = the key takes part, the convention of torch's ``scaled_dot_product_attention``)
    broadcasts to (..., Lq, Lk).  Masked weights are exactly 0; a row with no kept key is all zeros.
    """
    query = ag.as_tensor(query)
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = ag.matmul(query * scale, ag.swapaxes(key, -1, -2))   # scaling Q costs L*d, not L*L
    return ag.softmax(scores, axis=-1, mask=keep)


def scaled_dot_product_attention(query, key, value, keep=None, *, train: bool = False, dropout: float = 0.0,
                                 rng=None) -> ag.Tensor:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, by the core's :func:`autograd.scaled_dot_product_attention`.

    query (..., Lq, d_k), key (..., Lk, d_k), value (..., Lk, d_v) -> (..., Lq, d_v); leading axes broadcast.

    ``keep`` as in :func:`attention_weights` (the core's boolean ``attn_mask``; a row without keys gives a zero
    context, ``masked_rows='zero'``).  ``dropout`` (train mode, explicit ``rng``) drops attention weights, as t2t
    and torch do, with the keep mask :func:`autograd.dropout` draws on the weights (rng.random(shape) >= p)
    handed to the core as ``dropout_mask``.  The core runs its materialised path: the same composition
    (softmax, dropout, matmul) as before the core existed, so the numbers are unchanged bit for bit (its
    chunked path would sum in another order).
    """
    query, key, value = ag.as_tensor(query), ag.as_tensor(key), ag.as_tensor(value)
    keep_lead = () if keep is None else tuple(keep.shape[:-2])
    weights_shape = np.broadcast_shapes(query.shape[:-2], key.shape[:-2], keep_lead) + (query.shape[-2], key.shape[-2])
    lead = np.broadcast_shapes(weights_shape[:-2], value.shape[:-2])
    options = {}
    if train and dropout > 0:
        if rng is None:
            raise ValueError("dropout in training mode needs an explicit rng (numpy.random.Generator)")
        if dropout == 1.0:   # every weight dropped, nothing drawn (autograd.dropout): P * 0 from an all-False mask
            options = {"dropout_p": 0.5, "dropout_mask": np.zeros(weights_shape, dtype=bool)}
        else:
            options = {"dropout_p": dropout, "dropout_mask": rng.random(weights_shape) >= dropout}
        options["dropout_mask"] = backend.from_numpy(options["dropout_mask"])
    as_given = len(lead) == 2 and all(t.shape[:-2] == lead for t in (query, key, value))
    if not as_given:   # the core's (B, h, L, X) layout: broadcast the leading axes and flatten them into h
        query, key, value = (_heads_axis(t, lead) for t in (query, key, value))
        keep = None if keep is None else _heads_axis(keep, lead)
        options = {**options, "dropout_mask": _heads_axis(options["dropout_mask"], lead)} if options else {}
    out = ag.scaled_dot_product_attention(query, key, value, attn_mask=keep, implementation="materialised",
                                          **options)
    return out if as_given else ag.reshape(out, lead + out.shape[-2:])


def _heads_axis(x, lead: tuple):
    """(..., L, X) broadcast to ``lead`` + (L, X) and reshaped to (1, prod(lead), L, X)."""
    shape = (1, math.prod(lead)) + tuple(x.shape[-2:])
    if isinstance(x, ag.Tensor):
        return ag.reshape(ag.broadcast_to(x, lead + x.shape[-2:]), shape)
    return ag.xp.reshape(ag.xp.broadcast_to(x, lead + tuple(x.shape[-2:])), shape)


def causal_keep(query_length: int, key_length: int):
    """Boolean (Lq, Lk) keep-mask of the decoder self-attention: query i sees keys j <= i."""
    return backend.from_numpy(np.tril(np.ones((query_length, key_length), dtype=bool)))


def attention_keep(key_padding_mask=None, *, causal: bool = False, query_length: int = 0, key_length: int = 0):
    """Keep-mask broadcastable to (B, h, Lq, Lk) from a (B, Lk) padding mask (True = pad) and/or causality."""
    keep = None
    if key_padding_mask is not None:
        keep = keep_from_padding(key_padding_mask)[:, None, None, :]
    if causal:
        future = causal_keep(query_length, key_length)[None, None]
        keep = future if keep is None else keep & future
    return keep


# ---------------------------------------------------------------------------------------------
# multi-head attention


def init_attention(rng, params: dict, prefix: str, d_model: int, *, bias: bool = False, dtype=np.float64) -> None:
    """Add ``{prefix}.w_q/w_k/w_v/w_o.weight`` (d, d) [and ``.bias`` (d,)] to ``params``."""
    for name in PROJECTIONS:
        init_linear(rng, params, _key(prefix, name), d_model, d_model, bias=bias, dtype=dtype)


def _project(params, name: str, x, *, bias: bool, out: int) -> ag.Tensor:
    """``linear`` on (B, L, d_in) -> (B, L, out) as one (B*L, d_in) GEMM: a single BLAS call forward and a
    single weight-gradient GEMM backward (no per-batch products summed afterwards).  ``{name}.weight`` must
    be (out, d_in) (and ``{name}.bias`` (out,) if ``bias``)."""
    lead = x.shape[:-1]
    projected = linear(params, name, ag.reshape(x, (-1, x.shape[-1])), bias=bias, out=out)
    return ag.reshape(projected, lead + (out,))


def _split_heads(x: ag.Tensor, heads: int) -> ag.Tensor:
    """(B, L, d) -> (B, h, L, d/h)."""
    batch, length, d_model = x.shape
    return ag.transpose(ag.reshape(x, (batch, length, heads, d_model // heads)), (0, 2, 1, 3))


def _merge_heads(x: ag.Tensor) -> ag.Tensor:
    """(B, h, L, d_k) -> (B, L, h * d_k)  (Concat(head_1, ..., head_h))."""
    batch, heads, length, d_k = x.shape
    return ag.reshape(ag.transpose(x, (0, 2, 1, 3)), (batch, length, heads * d_k))


def _check_heads(mechanism: str, d_model: int, heads) -> None:
    if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1 or d_model % heads:
        raise ValueError(f"{mechanism}: heads={heads!r} must be a positive divisor of d_model={d_model}")


def _check_rate(mechanism: str, name: str, p) -> float:
    """A dropout probability: a real number in [0, 1] (checked in eval mode too, as torch's modules do)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{mechanism}: {name} must be a number in [0, 1], got {type(p).__name__} {p!r}")
    if not 0.0 <= p <= 1.0:                       # also False for NaN
        raise ValueError(f"{mechanism}: {name} must be in [0, 1], got {p!r}")
    return float(p)


def _check_flag(mechanism: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{mechanism}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_training_rng(mechanism: str, train: bool, rng, *rates) -> None:
    if train and rng is None and max(rates) > 0:
        raise ValueError(f"{mechanism}: train=True with dropout needs an explicit rng (numpy.random.Generator)")


#: Attention rows are independent, so a batch whose (B, h, Lq, Lk) weights would exceed this many bytes is
#: processed a few batch items at a time: the softmax passes and their VJP then run on cache-sized blocks
#: instead of streaming L x L arrays through memory (same numbers; dropout masks are drawn per block).
BLOCK_BYTES = 32 * 2**20


def _batch_blocks(batch: int, heads: int, query_length: int, key_length: int, itemsize: int) -> list:
    """Slices of the batch axis whose attention weights take about BLOCK_BYTES (at least one item each)."""
    per_item = max(heads * query_length * key_length * itemsize, 1)
    size = max(1, BLOCK_BYTES // per_item)
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def _multi_head(params, prefix, query, key, value, keep, regime: "_Regime") -> ag.Tensor:
    """MultiHead(Q, K, V) = Concat(head_1..h) W^O on (B, Lq, d), (B, Lk, d), (B, Lk, d) -> (B, Lq, d)."""
    batch, query_length = query.shape[:2]
    blocks = _batch_blocks(batch, regime.heads, query_length, key.shape[1], np.dtype(query.dtype).itemsize)
    if len(blocks) <= 1:                                          # one block, or an empty batch
        return _multi_head_block(params, prefix, query, key, value, keep, regime)
    outputs = []
    for rows in blocks:
        query_rows = query[rows]
        key_rows = query_rows if key is query else key[rows]      # self-attention: slice the input once
        value_rows = key_rows if value is key else value[rows]
        keep_rows = keep if keep is None or keep.shape[0] == 1 else keep[rows]
        outputs.append(_multi_head_block(params, prefix, query_rows, key_rows, value_rows, keep_rows, regime))
    return ag.concatenate(outputs, axis=0)


def _multi_head_block(params, prefix, query, key, value, keep, regime: "_Regime") -> ag.Tensor:
    d_model, bias = query.shape[-1], regime.attn_bias
    q = _split_heads(_project(params, _key(prefix, "w_q"), query, bias=bias, out=d_model), regime.heads)
    k = _split_heads(_project(params, _key(prefix, "w_k"), key, bias=bias, out=d_model), regime.heads)
    v = _split_heads(_project(params, _key(prefix, "w_v"), value, bias=bias, out=d_model), regime.heads)
    heads = scaled_dot_product_attention(q, k, v, keep, train=regime.train, dropout=regime.attention_dropout,
                                         rng=regime.rng)
    return _project(params, _key(prefix, "w_o"), _merge_heads(heads), bias=bias, out=d_model)


def _mha_inputs(params, query, key, value, key_padding_mask, heads, prefix=""):
    d_model = params.shape(_key(prefix, "w_q.weight"))[1]     # in-features: the other shapes are checked on it
    layout = "(B, L, d_model)"
    query = check_sequence(NAME_MHA, query, params, arg="query", features=d_model, layout=layout)
    key = query if key is None else check_sequence(NAME_MHA, key, params, arg="key", features=d_model, layout=layout)
    value = key if value is None else check_sequence(NAME_MHA, value, params, arg="value", features=d_model,
                                                     layout=layout)
    check_batch(NAME_MHA, key, query.shape[0], "key")
    if value.shape[:2] != key.shape[:2]:
        raise ValueError(f"{NAME_MHA}: value shape {value.shape} must match key shape {key.shape} on (B, Lk)")
    padding = check_padding_mask(NAME_MHA, key_padding_mask, arg="key_padding_mask", shape=key.shape[:2])
    _check_heads(NAME_MHA, d_model, heads)
    return query, key, value, padding


def init_mha(rng, d_model: int, *, attn_bias: bool = False, dtype=np.float64) -> dict:
    """Multi-head attention parameters ``w_q/w_k/w_v/w_o.weight`` (d_model, d_model) (+ biases if attn_bias)."""
    params: dict = {}
    init_attention(rng, params, "", d_model, bias=attn_bias, dtype=dtype)
    return params


@uses_params(NAME_MHA)
def mha(params: dict, query, key=None, value=None, key_padding_mask=None, *, heads: int, causal: bool = False,
        train: bool = False, dropout: float = 0.0, rng=None, attn_bias: bool = False) -> ag.Tensor:
    """Multi-head attention MultiHead(Q, K, V): query (B, Lq, d), key/value (B, Lk, d) -> (B, Lq, d).

    ``key`` defaults to ``query`` (self-attention), ``value`` to ``key``.  ``key_padding_mask`` (B, Lk) is
    boolean with True = padding; ``causal`` hides keys j > i from query i.  ``dropout`` drops attention
    weights in train mode (explicit ``rng``).  ``heads`` is not encoded in the parameter shapes, so it is
    an argument (d_k = d_model / heads).  ``attn_bias`` as given to :func:`init_mha`.
    """
    dropout = _check_rate(NAME_MHA, "dropout", dropout)
    attn_bias, causal = _check_flag(NAME_MHA, "attn_bias", attn_bias), _check_flag(NAME_MHA, "causal", causal)
    _check_training_rng(NAME_MHA, train, rng, dropout)
    query, key, value, padding = _mha_inputs(params, query, key, value, key_padding_mask, heads)
    keep = attention_keep(padding, causal=causal, query_length=query.shape[1], key_length=key.shape[1])
    regime = _Regime(heads=heads, train=train, rng=rng, attention_dropout=dropout, attn_bias=attn_bias)
    return _multi_head(params, "", query, key, value, keep, regime)


@uses_params(NAME_MHA)
def mha_weights(params: dict, query, key=None, key_padding_mask=None, *, heads: int, causal: bool = False,
                attn_bias: bool = False) -> ag.Tensor:
    """The attention maps of :func:`mha` (eval mode): (B, h, Lq, Lk); masked entries are exactly 0.

    ``params`` are the whole parameter set of :func:`mha` (the value and output projections are checked,
    though the maps do not depend on them).
    """
    attn_bias, causal = _check_flag(NAME_MHA, "attn_bias", attn_bias), _check_flag(NAME_MHA, "causal", causal)
    query, key, _, padding = _mha_inputs(params, query, key, None, key_padding_mask, heads)
    for name in ("w_v", "w_o"):
        _check_projection(params, name, query.shape[-1], attn_bias)
    return _attention_maps(params, "", query, key, padding, heads, causal, attn_bias)


def _check_projection(params, name: str, d_model: int, bias: bool) -> None:
    params.take(f"{name}.weight", (d_model, d_model))
    if bias:
        params.take(f"{name}.bias", (d_model,))


def _attention_maps(params, prefix, query, key, padding, heads, causal, attn_bias) -> ag.Tensor:
    """softmax(Q K^T / sqrt(d_k)) of one attention block ``prefix``: (B, h, Lq, Lk)."""
    d_model = query.shape[-1]
    keep = attention_keep(padding, causal=causal, query_length=query.shape[1], key_length=key.shape[1])
    q = _split_heads(_project(params, _key(prefix, "w_q"), query, bias=attn_bias, out=d_model), heads)
    k = _split_heads(_project(params, _key(prefix, "w_k"), key, bias=attn_bias, out=d_model), heads)
    return attention_weights(q, k, keep)


# ---------------------------------------------------------------------------------------------
# encoder and decoder layers


@dataclass(frozen=True)
class _Regime:
    """Head count, mode, dropout rates and structure shared by every sub-layer of one call."""

    heads: int
    train: bool = False
    rng: object = None
    dropout: float = 0.0             # residual + embedding dropout (the paper's P_drop)
    attention_dropout: float = 0.0   # on attention weights (t2t, torch)
    relu_dropout: float = 0.0        # on the FFN hidden layer (t2t, torch's TransformerEncoderLayer)
    eps: float = 1e-6                # LayerNorm epsilon (t2t)
    attn_bias: bool = False          # biases on the Q/K/V/O projections

    def drop(self, x, p: float):
        return ag.dropout(x, p, self.train, self.rng)


def init_encoder_layer(rng, params: dict, prefix: str, d_model: int, d_ff: int, *, attn_bias: bool = False,
                       dtype=np.float64) -> None:
    """Add one encoder layer: ``self_attn.*``, ``linear1`` (d_ff, d), ``linear2`` (d, d_ff), ``norm1/2``."""
    init_attention(rng, params, _key(prefix, "self_attn"), d_model, bias=attn_bias, dtype=dtype)
    _init_feed_forward(rng, params, prefix, d_model, d_ff, dtype)
    for norm in ("norm1", "norm2"):
        init_layer_norm(params, _key(prefix, norm), d_model, dtype=dtype)


def init_decoder_layer(rng, params: dict, prefix: str, d_model: int, d_ff: int, *, attn_bias: bool = False,
                       dtype=np.float64) -> None:
    """Add one decoder layer: ``self_attn.*``, ``multihead_attn.*`` (encoder-decoder), FFN, ``norm1/2/3``."""
    init_attention(rng, params, _key(prefix, "self_attn"), d_model, bias=attn_bias, dtype=dtype)
    init_attention(rng, params, _key(prefix, "multihead_attn"), d_model, bias=attn_bias, dtype=dtype)
    _init_feed_forward(rng, params, prefix, d_model, d_ff, dtype)
    for norm in ("norm1", "norm2", "norm3"):
        init_layer_norm(params, _key(prefix, norm), d_model, dtype=dtype)


def _init_feed_forward(rng, params, prefix, d_model, d_ff, dtype):
    init_linear(rng, params, _key(prefix, "linear1"), d_ff, d_model, dtype=dtype)
    init_linear(rng, params, _key(prefix, "linear2"), d_model, d_ff, dtype=dtype)


def _feed_forward(params, prefix, x, regime: _Regime) -> ag.Tensor:
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (dropout on the hidden layer only if relu_dropout > 0).

    d_ff is the in-features of ``linear2``; ``linear1`` must produce exactly that many."""
    d_ff = params.shape(_key(prefix, "linear2.weight"))[1]
    hidden = ag.relu(_project(params, _key(prefix, "linear1"), x, bias=True, out=d_ff))
    hidden = regime.drop(hidden, regime.relu_dropout)
    return _project(params, _key(prefix, "linear2"), hidden, bias=True, out=x.shape[-1])


def _add_and_norm(params, norm, x, sublayer_out, regime: _Regime) -> ag.Tensor:
    """Post-LN residual: LayerNorm(x + Dropout(Sublayer(x)))."""
    return layer_norm(params, norm, x + regime.drop(sublayer_out, regime.dropout), x.shape[-1], eps=regime.eps)


def _encoder_layer(params, prefix, x, keep, regime: _Regime) -> ag.Tensor:
    x = _add_and_norm(params, _key(prefix, "norm1"), x,
                      _multi_head(params, _key(prefix, "self_attn"), x, x, x, keep, regime), regime)
    return _add_and_norm(params, _key(prefix, "norm2"), x, _feed_forward(params, prefix, x, regime), regime)


def _decoder_layer(params, prefix, x, memory, self_keep, memory_keep, regime: _Regime, probe=None) -> ag.Tensor:
    """``probe`` (a list), if given, receives the queries of the encoder-decoder attention (for its maps)."""
    x = _add_and_norm(params, _key(prefix, "norm1"), x,
                      _multi_head(params, _key(prefix, "self_attn"), x, x, x, self_keep, regime), regime)
    if probe is not None:
        probe.append(x)
    x = _add_and_norm(params, _key(prefix, "norm2"), x,
                      _multi_head(params, _key(prefix, "multihead_attn"), x, memory, memory, memory_keep, regime),
                      regime)
    return _add_and_norm(params, _key(prefix, "norm3"), x, _feed_forward(params, prefix, x, regime), regime)


def _regime(heads, train, rng, dropout, attention_dropout, relu_dropout, eps, d_model, attn_bias) -> _Regime:
    _check_heads(NAME, d_model, heads)
    rates = [_check_rate(NAME, name, p) for name, p in (("dropout", dropout), ("attention_dropout", attention_dropout),
                                                       ("relu_dropout", relu_dropout))]
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not 0 <= eps < math.inf:
        raise ValueError(f"{NAME}: eps (LayerNorm epsilon) must be a finite number >= 0, got {eps!r}")
    _check_training_rng(NAME, train, rng, *rates)
    return _Regime(heads=heads, train=train, rng=rng, dropout=rates[0], attention_dropout=rates[1],
                   relu_dropout=rates[2], eps=float(eps), attn_bias=_check_flag(NAME, "attn_bias", attn_bias))


def encoder_layer(params: dict, x, src_key_padding_mask=None, *, prefix: str = "", heads: int,
                  train: bool = False, rng=None, dropout: float = 0.0, attention_dropout: float = 0.0,
                  relu_dropout: float = 0.0, eps: float = 1e-6, attn_bias: bool = False) -> ag.Tensor:
    """One post-LN encoder layer on x (B, L, d) with a (B, L) padding mask (True = pad) -> (B, L, d).

    x = LN1(x + Dropout(SelfAttn(x)));  x = LN2(x + Dropout(FFN(x)))  -- torch's TransformerEncoderLayer
    with ``norm_first=False`` (parameter names match its state_dict except w_q/w_k/w_v/w_o).
    Reads the keys under ``prefix`` (all of them must be used); ``attn_bias`` as in :func:`init_encoder_layer`.
    """
    view, owned = prefix_view(NAME, params, prefix)
    d_model = view.shape(_key(prefix, "self_attn.w_q.weight"))[1]
    x = check_sequence(NAME, x, view, arg="x", features=d_model, layout="(B, L, d_model)")
    padding = check_padding_mask(NAME, src_key_padding_mask, arg="src_key_padding_mask", shape=x.shape[:2])
    regime = _regime(heads, train, rng, dropout, attention_dropout, relu_dropout, eps, d_model, attn_bias)
    out = _encoder_layer(view, prefix, x, attention_keep(padding), regime)
    if owned:
        view.check_all_used()
    return out


def decoder_layer(params: dict, x, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None, *,
                  prefix: str = "", heads: int, causal: bool = True, train: bool = False, rng=None,
                  dropout: float = 0.0, attention_dropout: float = 0.0, relu_dropout: float = 0.0,
                  eps: float = 1e-6, attn_bias: bool = False) -> ag.Tensor:
    """One post-LN decoder layer: x (B, Lt, d), memory (B, Ls, d), padding masks (True = pad) -> (B, Lt, d).

    x = LN1(x + Dropout(MaskedSelfAttn(x)));  x = LN2(x + Dropout(Attn(x, memory)));  x = LN3(x + Dropout(FFN(x))).
    Reads the keys under ``prefix`` (all of them must be used); ``attn_bias`` as in :func:`init_decoder_layer`.
    """
    view, owned = prefix_view(NAME, params, prefix)
    d_model = view.shape(_key(prefix, "self_attn.w_q.weight"))[1]
    x = check_sequence(NAME, x, view, arg="x", features=d_model, layout="(B, L, d_model)")
    memory = check_sequence(NAME, memory, view, arg="memory", features=d_model, layout="(B, L, d_model)")
    check_batch(NAME, memory, x.shape[0], "memory")
    tgt_padding = check_padding_mask(NAME, tgt_key_padding_mask, arg="tgt_key_padding_mask", shape=x.shape[:2])
    memory_padding = check_padding_mask(NAME, memory_key_padding_mask, arg="memory_key_padding_mask",
                                        shape=memory.shape[:2])
    regime = _regime(heads, train, rng, dropout, attention_dropout, relu_dropout, eps, d_model, attn_bias)
    causal = _check_flag(NAME, "causal", causal)
    self_keep = attention_keep(tgt_padding, causal=causal, query_length=x.shape[1], key_length=x.shape[1])
    out = _decoder_layer(view, prefix, x, memory, self_keep, attention_keep(memory_padding), regime)
    if owned:
        view.check_all_used()
    return out


# ---------------------------------------------------------------------------------------------
# positional encoding and the encoder-decoder stack


def positional_encoding(length: int, d_model: int, layout: str = "interleave", dtype=np.float64):
    """Sinusoidal position signal (length, d_model) as a backend array (built on the host).

    ``"interleave"`` (paper): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).
    ``"concat"`` (t2t ``get_timing_signal_1d``): [sin(pos * inv_i) | cos(pos * inv_i)], i < d//2, with
    inv_i = 10000^(-i / max(d//2 - 1, 1)); an odd d_model gets a zero last column.
    """
    position = np.arange(length, dtype=np.float64)[:, None]
    if layout == "interleave":
        pair = np.arange(d_model) // 2                                     # i of columns 2i and 2i+1
        angle = position / np.power(10000.0, 2.0 * pair / d_model)
        table = np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))
    elif layout == "concat":
        half = d_model // 2
        inv_timescale = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))
        angle = position * inv_timescale
        table = np.concatenate([np.sin(angle), np.cos(angle), np.zeros((length, d_model % 2))], axis=1)
    else:
        raise ValueError(f"{NAME}: pe_layout must be 'interleave' (paper) or 'concat' (t2t), got {layout!r}")
    return backend.from_numpy(table.astype(dtype))


def _embed(x: ag.Tensor, layout: str, regime: _Regime) -> ag.Tensor:
    """Dropout(x * sqrt(d_model) + PE)."""
    length, d_model = x.shape[1], x.shape[2]
    return regime.drop(x * math.sqrt(d_model) + positional_encoding(length, d_model, layout, x.dtype), regime.dropout)


def _check_num_layers(num_layers) -> int:
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"{NAME}: num_layers must be a positive integer (layers per stack), got {num_layers!r}")
    return int(num_layers)


def init(rng, d_model: int, *, d_ff: int, num_layers: int = 6, attn_bias: bool = False, dtype=np.float64) -> dict:
    """Encoder-decoder parameters: ``encoder.layers.{i}.*`` and ``decoder.layers.{i}.*``, i < num_layers.

    Per layer as torch's TransformerEncoderLayer / TransformerDecoderLayer state_dict, with the fused
    ``in_proj_weight`` split into ``w_q/w_k/w_v`` and ``out_proj`` named ``w_o``.  :func:`transformer`
    takes the same ``num_layers`` and ``attn_bias``.
    """
    num_layers = _check_num_layers(num_layers)
    params: dict = {}
    for i in range(num_layers):
        init_encoder_layer(rng, params, f"encoder.layers.{i}", d_model, d_ff, attn_bias=attn_bias, dtype=dtype)
    for i in range(num_layers):
        init_decoder_layer(rng, params, f"decoder.layers.{i}", d_model, d_ff, attn_bias=attn_bias, dtype=dtype)
    return params


@uses_params(NAME)
def transformer(params: dict, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None, *, heads: int,
                train: bool = False, rng=None, dropout: float = 0.1, attention_dropout: float = 0.0,
                relu_dropout: float = 0.0, pe_layout: str = "interleave", eps: float = 1e-6, num_layers: int = 6,
                attn_bias: bool = False) -> ag.Tensor:
    """Encoder-decoder pass: src (B, Ls, d), tgt (B, Lt, d) embeddings, padding masks (True = pad) -> (B, Lt, d).

    The target is teacher-forced (the caller shifts it); the decoder self-attention is causal and also
    hides padded target keys, the encoder-decoder attention hides padded source keys.  ``num_layers`` and
    ``attn_bias``: the structure, as given to :func:`init` (the parameters must be exactly those it makes).
    """
    num_layers = _check_num_layers(num_layers)
    inputs = _transformer_inputs(params, src, tgt, src_key_padding_mask, tgt_key_padding_mask, pe_layout)
    regime = _regime(heads, train, rng, dropout, attention_dropout, relu_dropout, eps, inputs[0].shape[2], attn_bias)
    return _encode_decode(params, *inputs, regime, pe_layout, num_layers)[0]


@uses_params(NAME)
def cross_attention_weights(params: dict, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None, *,
                            heads: int, pe_layout: str = "interleave", eps: float = 1e-6, num_layers: int = 6,
                            attn_bias: bool = False) -> list:
    """The encoder-decoder attention maps of :func:`transformer` in eval mode, for plotting alignments.

    Returns one (B, h, Lt, Ls) tensor per decoder layer: row i of head k is the weight that target
    position i gives each source position; padded source positions get exactly 0.
    """
    num_layers = _check_num_layers(num_layers)
    inputs = _transformer_inputs(params, src, tgt, src_key_padding_mask, tgt_key_padding_mask, pe_layout)
    regime = _regime(heads, False, None, 0.0, 0.0, 0.0, eps, inputs[0].shape[2], attn_bias)
    queries: list = []
    _, memory = _encode_decode(params, *inputs, regime, pe_layout, num_layers, probe=queries)
    return [_attention_maps(params, f"decoder.layers.{i}.multihead_attn", query, memory, inputs[2], heads, False,
                            regime.attn_bias) for i, query in enumerate(queries)]


PE_LAYOUTS = ("interleave", "concat")


def _transformer_inputs(params, src, tgt, src_key_padding_mask, tgt_key_padding_mask, pe_layout) -> tuple:
    """Checked (src, tgt, src_padding, tgt_padding)."""
    if pe_layout not in PE_LAYOUTS:
        raise ValueError(f"{NAME}: pe_layout must be 'interleave' (paper) or 'concat' (t2t), got {pe_layout!r}")
    d_model = params.shape("encoder.layers.0.self_attn.w_q.weight")[1]
    layout = "(B, L, d_model)"
    src = check_sequence(NAME, src, params, arg="src", features=d_model, layout=layout)
    tgt = check_sequence(NAME, tgt, params, arg="tgt", features=d_model, layout=layout)
    check_batch(NAME, tgt, src.shape[0], "tgt")
    src_padding = check_padding_mask(NAME, src_key_padding_mask, arg="src_key_padding_mask", shape=src.shape[:2])
    tgt_padding = check_padding_mask(NAME, tgt_key_padding_mask, arg="tgt_key_padding_mask", shape=tgt.shape[:2])
    return src, tgt, src_padding, tgt_padding


def _encode_decode(params, src, tgt, src_padding, tgt_padding, regime: _Regime, pe_layout: str, num_layers: int,
                   probe=None):
    """(decoder output (B, Lt, d), encoder output (B, Ls, d)) through ``num_layers`` layers per stack."""
    source_keep = attention_keep(src_padding)
    memory = _embed(src, pe_layout, regime)
    for i in range(num_layers):
        memory = _encoder_layer(params, f"encoder.layers.{i}", memory, source_keep, regime)

    target_keep = attention_keep(tgt_padding, causal=True, query_length=tgt.shape[1], key_length=tgt.shape[1])
    out = _embed(tgt, pe_layout, regime)
    for i in range(num_layers):
        out = _decoder_layer(params, f"decoder.layers.{i}", out, memory, target_keep, source_keep, regime, probe)
    return out, memory


# ---------------------------------------------------------------------------------------------
# registry


def _padding(rng, batch: int, length: int, min_length: int):
    """A (B, L) padding mask (True = pad): row 0 unpadded, the others of random length >= min_length."""
    lengths = np.concatenate([[length], rng.integers(min_length, length + 1, size=batch - 1)])
    return backend.from_numpy(np.arange(length)[None, :] >= lengths[:, None])


def _mha_example(rng, dtype=np.float64):
    return (example(rng, (2, 5, 16), dtype), example(rng, (2, 6, 16), dtype), example(rng, (2, 6, 16), dtype),
            _padding(rng, 2, 6, 3))


def _transformer_example(rng, dtype=np.float64):
    return (example(rng, (2, 6, 16), dtype), example(rng, (2, 5, 16), dtype), _padding(rng, 2, 6, 3),
            _padding(rng, 2, 5, 3))


def _space_padding(rng, batch: int, length: int, min_kept: int):
    """A (B, L) padding mask (True = pad) keeping at least ``min_kept`` positions per row (0: all padding)."""
    kept = rng.integers(min_kept, length + 1, size=batch)
    return backend.from_numpy(np.arange(length)[None, :] >= kept[:, None])


#: d_model = heads * d_k (heads must divide it): drawn as the two factors, from one head of one feature up (and
#: d_k = 8 beside the small ones: the defaults' d_model 16 with 2 heads)
_HEADS = {"_heads": Ints(1, 3), "_head_dim": Choice(Ints(1, 4), 8),
          "d_model": Derived(lambda v: v._heads * v._head_dim)}
#: dropout rates: any in eval (the identity there, but checked); 0 in training, where p > 0 needs an rng
_RATE = Choice(0.0, 0.1, 0.5)


def _space_mha_inputs(rng, v, dtype):
    return (example(rng, (v.batch, v.query_length, v.d_model), dtype),
            example(rng, (v.batch, v.key_length, v.d_model), dtype),
            example(rng, (v.batch, v.key_length, v.d_model), dtype),
            _space_padding(rng, v.batch, v.key_length, v._min_kept))


def _space_transformer_inputs(rng, v, dtype):
    return (example(rng, (v.batch, v.source_length, v.d_model), dtype),
            example(rng, (v.batch, v.target_length, v.d_model), dtype),
            _space_padding(rng, v.batch, v.source_length, v._min_source),
            _space_padding(rng, v.batch, v.target_length, v._min_target))


# Query and key lengths from 1 and unequal (causal on Lq != Lk too), padded rows down to none kept (all-zero
# weights), both bias structures
MHA_SPACE = Space(config={**_HEADS, "attn_bias": Bools()},
                  options={"heads": Derived(lambda v: v._heads), "causal": Bools(), "dropout": _RATE},
                  inputs=Inputs({"batch": BATCH, "query_length": Ints(1, 5), "key_length": Ints(1, 5),
                                 "_min_kept": Ints(0, lambda v: v.key_length)}, _space_mha_inputs),
                  where=(lambda v: not v.train or v.dropout == 0.0,))

# One or two layers per stack, d_ff from 1, both position layouts (odd d_model: concat's zero column), LayerNorm
# eps 0 where a row has more than one feature (one feature and eps 0 is 0/0: NaN, as torch), every dropout
# rate in eval
TRANSFORMER_SPACE = Space(
    config={**_HEADS, "d_ff": Choice(Ints(1, 8), 32), "num_layers": Ints(1, 2), "attn_bias": Bools()},
    options={"heads": Derived(lambda v: v._heads), "dropout": _RATE, "attention_dropout": _RATE,
             "relu_dropout": _RATE, "pe_layout": Choice(*PE_LAYOUTS), "eps": Choice(1e-6, 1e-5, 0.0)},
    inputs=Inputs({"batch": BATCH, "source_length": Ints(1, 5), "target_length": Ints(1, 5),
                   "_min_source": Ints(0, lambda v: v.source_length),
                   "_min_target": Ints(0, lambda v: v.target_length)}, _space_transformer_inputs),
    where=(lambda v: not v.train or v.dropout == v.attention_dropout == v.relu_dropout == 0.0,
           lambda v: v.eps > 0.0 or v.d_model > 1 or v.batch == 0))


register(Mechanism(
    name=NAME_MHA, family="origins", paper=PAPER, init=init_mha, apply_fn=mha,
    config={"d_model": 16}, options={"heads": 2}, example_input=_mha_example, differentiable_inputs=(0, 1, 2),
    channel_axis=None, space=MHA_SPACE,
    description="multi-head scaled dot-product attention with padding / causal masks",
))

register(Mechanism(
    name=NAME, family="origins", paper=PAPER, init=init, apply_fn=transformer,
    config={"d_model": 16, "d_ff": 32, "num_layers": 2}, options={"heads": 2}, example_input=_transformer_example,
    differentiable_inputs=(0, 1), stochastic=True, channel_axis=None, space=TRANSFORMER_SPACE,
    description="post-LN encoder-decoder with sinusoidal positions (returns the decoder output)",
))
