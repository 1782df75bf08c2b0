"""Bahdanau attention / RNNsearch (Bahdanau, Cho, Bengio, "Neural Machine Translation by Jointly Learning
to Align and Translate", ICLR 2015), one teacher-forced decoding pass.

Paper equation (Appendix A)                                           code
    encoder, both directions (PaperGRU, h_0 = 0):
        z_t = sigma(W_z E x_t + U_z h_{t-1})                          _gru_step
        r_t = sigma(W_r E x_t + U_r h_{t-1})
        h~_t = tanh(W E x_t + U [r_t o h_{t-1}])
        h_t = (1 - z_t) o h_{t-1} + z_t o h~_t
    annotations h_j = [->h_j ; <-h_j]                                 _encode
    s_0 = tanh(W_s <-h_1)                                             _encode ("decoder.init")
    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)                          _decode (additive_energy)
    alpha_ij = softmax_j(e_ij)  (padded source positions excluded)
    c_i = sum_j alpha_ij h_j                                          (weighted_sum)
    decoder GRU with context:
        z_i = sigma(W_z E y_{i-1} + U_z s_{i-1} + C_z c_i)            _gru_step(context=c_i)
        r_i = sigma(W_r E y_{i-1} + U_r s_{i-1} + C_r c_i)
        s~_i = tanh(W E y_{i-1} + U [r_i o s_{i-1}] + C c_i)
        s_i = (1 - z_i) o s_{i-1} + z_i o s~_i
    t~_i = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i                      _readout
    t_i = [max(t~_{i,2j-1}, t~_{i,2j})]_j   (maxout over pairs)
    p(y_i | ...) = softmax(W_o t_i)                                   -> log-probs

Shapes: ``source`` (B, Tx, m) and ``target`` (B, Ty, m) are word embeddings (E x, E y); the decoder is
fed the previous target word, E y_{i-1}, with E y_0 = 0 (the target is shifted right here).  The output
is log p(y_i = k | y_<i, x): (B, Ty, K).  :func:`alignment` returns alpha (B, Ty, Tx) for plotting.

Where this follows the official code (lisa-groundhog/GroundHog, ``experiments/nmt/encdec.py``) or makes
the paper's omitted details explicit:
    * The GRU is the paper's, not ``torch.nn.GRU``: z weights the *new* candidate, and the reset gate acts
      before the recurrent matrix, U(r o h); torch computes r o (U h + b), which is not equivalent.
    * Biases ("omitted for readability" in the paper) sit on the input-side maps W, W_z, W_r of both GRUs
      (one per gate pre-activation), on W_s, on the readout's state map U_o and on the output layer W_o; the
      recurrent (U), context (C, C_o), previous-word readout (V_o) and alignment (W_a, U_a, v_a) maps have
      none.  Where GroundHog learns them (read in ``experiments/nmt/encdec.py`` and
      ``groundhog/layers/rec_layers.py``): a bias on the candidate's input map W only (``input_embdr``);
      the update- and reset-gate input maps W_z, W_r (``update_embdr``, ``reset_embdr``) are built with
      ``learn_bias=False``, so npattn's biases of W_z and W_r have no GroundHog counterpart -- set them to
      zero (and keep them out of training) to reproduce it.  The recurrent layers (``W_hh, G_hh, R_hh``,
      ``A_cp, B_hp, D_pe``), the context maps (``dec_inputter/updater/reseter``), ``repr_readout`` (C_o) and
      ``prev_readout`` (V_o) have no bias; ``initializer`` (W_s), ``hid_readout`` (U_o, "the only readout
      layer with trainable bias") and the softmax (W_o, ``b_em``) have one.  GroundHog's word embedding
      (``approx_embdr``) carries a bias too; here it is part of the embeddings the caller passes in.
    * A padded source step keeps the encoder state, so <-h_1 (hence s_0) ignores the padding.
    * ``readout_state="prev"`` is the appendix's t~_i = U_o s_{i-1} + ...; ``"new"`` feeds s_i instead (as
      the main text's g(y_{i-1}, s_i, c_i) and dl4mt-style code do).

Parameters (the contract of :mod:`npattn.params`): the model has no structural options; the sizes m, n, n',
l come from the shapes (m and n from the in-features of ``encoder.forward.W`` and ``encoder.forward.U``, n'
and l from those of ``attention.v_a`` and ``output.W_o``) and every parameter is checked against them.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Choice, Inputs, Ints, Space
from ._sequence import (
    additive_energy,
    check_batch,
    check_padding_mask,
    check_sequence,
    keep_from_padding,
    prefix_view,
    shift_right,
    weighted_sum,
)

NAME = "bahdanau"
INPUT_GATES = ("W", "W_z", "W_r")
RECURRENT_GATES = ("U", "U_z", "U_r")
CONTEXT_GATES = ("C", "C_z", "C_r")


# ---------------------------------------------------------------------------------------------
# the paper's GRU


def init_paper_gru(rng, params: dict, prefix: str, input_dim: int, hidden: int, context_dim: int | None = None,
                   dtype=np.float64) -> None:
    """Add a PaperGRU: ``{prefix}.W/W_z/W_r`` (n, in) + bias, ``U/U_z/U_r`` (n, n) [, ``C/C_z/C_r`` (n, ctx)]."""
    for gate in INPUT_GATES:
        init_linear(rng, params, f"{prefix}.{gate}", hidden, input_dim, bias=True, dtype=dtype)
    for gate in RECURRENT_GATES:
        init_linear(rng, params, f"{prefix}.{gate}", hidden, hidden, bias=False, dtype=dtype)
    for gate in CONTEXT_GATES if context_dim else ():
        init_linear(rng, params, f"{prefix}.{gate}", hidden, context_dim, bias=False, dtype=dtype)


def _input_projections(params, prefix, x, hidden: int) -> tuple:
    """(W x + b, W_z x + b_z, W_r x + b_r) for every step at once: x (B, T, in) -> 3 x (B, T, n)."""
    return tuple(linear(params, f"{prefix}.{gate}", x, out=hidden) for gate in INPUT_GATES)


def _gru_step(params, prefix, projected, state, context=None) -> ag.Tensor:
    """One PaperGRU transition from this step's input projections; state (B, n) -> (B, n)."""
    candidate_in, update_in, reset_in = projected
    hidden = state.shape[-1]

    def recurrent(gate, v):                    # U, U_z, U_r, C, C_z, C_r: no bias (GroundHog neither)
        return linear(params, f"{prefix}.{gate}", v, bias=False, out=hidden)

    if context is not None:
        candidate_in = candidate_in + recurrent("C", context)
        update_in = update_in + recurrent("C_z", context)
        reset_in = reset_in + recurrent("C_r", context)
    update = ag.sigmoid(update_in + recurrent("U_z", state))                # z
    reset = ag.sigmoid(reset_in + recurrent("U_r", state))                  # r
    candidate = ag.tanh(candidate_in + recurrent("U", reset * state))       # h~ = tanh(Wx + U(r o h))
    return (1.0 - update) * state + update * candidate


def paper_gru(params: dict, prefix: str, x, keep=None, *, reverse: bool = False) -> ag.Tensor:
    """Run a PaperGRU over x (B, T, in) from h_0 = 0; returns every state (B, T, n).

    ``keep`` (B, T) bool (True = real step): a padded step keeps the previous state.  ``reverse`` runs
    from the last step to the first (the states are still returned in input order).  Reads the keys under
    ``prefix`` (given a whole dict, every one of them must be the GRU's: see :func:`init_paper_gru`).
    """
    view, owned = prefix_view(NAME, params, prefix)
    states = _paper_gru(view, prefix, ag.as_tensor(x), keep, reverse)
    if owned:
        view.check_all_used()
    return states


def _paper_gru(params, prefix: str, x: ag.Tensor, keep, reverse: bool) -> ag.Tensor:
    batch, steps = x.shape[:2]
    hidden = params.shape(f"{prefix}.U.weight")[1]
    projected = _input_projections(params, prefix, x, hidden)
    state = ag.Tensor(ag.xp.zeros((batch, hidden), dtype=x.dtype))
    states = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        new = _gru_step(params, prefix, tuple(p[:, t] for p in projected), state)
        state = new if keep is None else ag.where(keep[:, t, None], new, state)
        states[t] = state
    return ag.stack(states, axis=1)


# ---------------------------------------------------------------------------------------------
# the model


def init(rng, embed_dim: int, hidden: int, *, vocab: int, align_dim: int | None = None, maxout: int | None = None,
         dtype=np.float64) -> dict:
    """RNNsearch parameters for embeddings of size m=embed_dim, GRUs of size n=hidden, alignment size
    n'=align_dim (default n), maxout units l=maxout (default m) and K=vocab target words.

    ``encoder.forward.*``, ``encoder.backward.*`` (PaperGRU), ``decoder.init`` (W_s, n x n),
    ``decoder.gru.*`` (PaperGRU with context 2n), ``attention.W_a`` (n', n), ``attention.U_a`` (n', 2n),
    ``attention.v_a`` (1, n'), ``readout.U_o`` (2l, n), ``readout.V_o`` (2l, m), ``readout.C_o`` (2l, 2n),
    ``output.W_o`` (K, l).
    """
    align_dim = hidden if align_dim is None else align_dim
    maxout = embed_dim if maxout is None else maxout
    params: dict = {}
    init_paper_gru(rng, params, "encoder.forward", embed_dim, hidden, dtype=dtype)
    init_paper_gru(rng, params, "encoder.backward", embed_dim, hidden, dtype=dtype)
    init_linear(rng, params, "decoder.init", hidden, hidden, dtype=dtype)
    init_paper_gru(rng, params, "decoder.gru", embed_dim, hidden, context_dim=2 * hidden, dtype=dtype)
    init_linear(rng, params, "attention.W_a", align_dim, hidden, bias=False, dtype=dtype)
    init_linear(rng, params, "attention.U_a", align_dim, 2 * hidden, bias=False, dtype=dtype)
    init_linear(rng, params, "attention.v_a", 1, align_dim, bias=False, dtype=dtype)
    init_linear(rng, params, "readout.U_o", 2 * maxout, hidden, dtype=dtype)
    init_linear(rng, params, "readout.V_o", 2 * maxout, embed_dim, bias=False, dtype=dtype)
    init_linear(rng, params, "readout.C_o", 2 * maxout, 2 * hidden, bias=False, dtype=dtype)
    init_linear(rng, params, "output.W_o", vocab, maxout, dtype=dtype)
    return params


READOUT_STATES = ("prev", "new")


def _check(params, source, target, source_padding_mask, readout_state):
    embed_dim = params.shape("encoder.forward.W.weight")[1]
    layout = "(B, T, embed_dim)"
    source = check_sequence(NAME, source, params, arg="source", features=embed_dim, layout=layout)
    target = check_sequence(NAME, target, params, arg="target", features=embed_dim, layout=layout)
    check_batch(NAME, target, source.shape[0], "target")
    for arg, sequence in (("source", source), ("target", target)):
        if sequence.shape[1] < 1:       # s_0 reads <-h_1; a decoder pass has at least one word
            raise ValueError(f"{NAME}: {arg} must have at least one time step (B, T >= 1, embed_dim), "
                             f"got shape {sequence.shape}")
    padding = check_padding_mask(NAME, source_padding_mask, arg="source_padding_mask", shape=source.shape[:2])
    if readout_state not in READOUT_STATES:
        raise ValueError(f"{NAME}: readout_state must be 'prev' (paper appendix) or 'new', got {readout_state!r}")
    return source, target, keep_from_padding(padding)


def _encode(params, source, keep):
    """Annotations h_j = [->h_j ; <-h_j] (B, Tx, 2n) and s_0 = tanh(W_s <-h_1) (B, n)."""
    forward = _paper_gru(params, "encoder.forward", source, keep, reverse=False)
    backward = _paper_gru(params, "encoder.backward", source, keep, reverse=True)
    initial = ag.tanh(linear(params, "decoder.init", backward[:, 0], out=backward.shape[-1]))
    return ag.concatenate([forward, backward], axis=2), initial


def _decode(params, source, target, keep, readout_state):
    """Teacher-forced pass: log-probs (B, Ty, K) and alignments alpha (B, Ty, Tx)."""
    annotations, state = _encode(params, source, keep)
    align_dim = params.shape("attention.v_a.weight")[1]
    keys = linear(params, "attention.U_a", annotations, bias=False, out=align_dim)   # U_a h_j, once for all i
    previous_words = shift_right(target)                                            # E y_{i-1}, E y_0 = 0
    projected = _input_projections(params, "decoder.gru", previous_words, state.shape[-1])
    readout_states, contexts, alignments = [], [], []
    for i in range(target.shape[1]):
        query = linear(params, "attention.W_a", state, bias=False, out=align_dim)   # W_a s_{i-1}
        energy = additive_energy(params, "attention.v_a", keys, query, bias=False)  # e_ij
        alpha = ag.softmax(energy, axis=-1, mask=keep)
        context = weighted_sum(alpha, annotations)                                  # c_i
        new_state = _gru_step(params, "decoder.gru", tuple(p[:, i] for p in projected), state, context)
        readout_states.append(state if readout_state == "prev" else new_state)
        contexts.append(context)
        alignments.append(alpha)
        state = new_state
    log_probs = _readout(params, ag.stack(readout_states, axis=1), previous_words, ag.stack(contexts, axis=1))
    return log_probs, ag.stack(alignments, axis=1)


def _readout(params, states, previous_words, contexts) -> ag.Tensor:
    """Deep output with maxout: t~ = U_o s + V_o E y_{i-1} + C_o c_i; t = max over pairs; log softmax(W_o t)."""
    double = 2 * params.shape("output.W_o.weight")[1]                               # 2l
    pre = (linear(params, "readout.U_o", states, out=double)
           + linear(params, "readout.V_o", previous_words, bias=False, out=double)
           + linear(params, "readout.C_o", contexts, bias=False, out=double))
    batch, steps = pre.shape[:2]
    maxout = ag.max(ag.reshape(pre, (batch, steps, double // 2, 2)), axis=-1)
    return ag.log_softmax(linear(params, "output.W_o", maxout), axis=-1)


@uses_params(NAME)
def bahdanau(params: dict, source, target, source_padding_mask=None, *, train: bool = False,
             readout_state: str = "prev") -> ag.Tensor:
    """RNNsearch, one teacher-forced pass: source (B, Tx, m), target (B, Ty, m) embeddings, padding mask
    (B, Tx) bool (True = pad) -> log p(y_i | y_<i, x) of every target word, (B, Ty, K).

    ``train`` has no effect (no dropout / BatchNorm).  Tx, Ty >= 1.
    """
    source, target, keep = _check(params, source, target, source_padding_mask, readout_state)
    return _decode(params, source, target, keep, readout_state)[0]


@uses_params(NAME)
def alignment(params: dict, source, target, source_padding_mask=None, *, readout_state: str = "prev") -> ag.Tensor:
    """The alignment matrix alpha_ij (B, Ty, Tx) of :func:`bahdanau` (rows sum to 1, padding columns 0)."""
    source, target, keep = _check(params, source, target, source_padding_mask, readout_state)
    return _decode(params, source, target, keep, readout_state)[1]


def _example(rng, dtype=np.float64):
    padding = ag.from_numpy(np.arange(6)[None, :] >= np.array([[6], [4]]))   # second sentence: 4 words
    return example(rng, (2, 6, 6), dtype), example(rng, (2, 5, 6), dtype), padding


def _space_inputs(rng, v, dtype):
    """Source and target embeddings and a source padding mask whose rows keep at least ``_min_kept`` words
    (0: a fully padded sentence, whose alignment row is all zeros)."""
    kept = rng.integers(v._min_kept, v.source_length + 1, size=v.batch)
    padding = ag.from_numpy(np.arange(v.source_length)[None, :] >= kept[:, None])
    return (example(rng, (v.batch, v.source_length, v.embed_dim), dtype),
            example(rng, (v.batch, v.target_length, v.embed_dim), dtype), padding)


# Every size from 1 (n' and l default to n and m: None), one source and one target word up (Tx, Ty >= 1 is
# the model's rule), padded and fully padded sentences, both readouts
SPACE = Space(config={"embed_dim": Ints(1, 6), "hidden": Ints(1, 5), "vocab": Ints(1, 10),
                      "align_dim": Choice(None, Ints(1, 7)), "maxout": Choice(None, Ints(1, 4))},
              options={"readout_state": Choice(*READOUT_STATES)},
              inputs=Inputs({"batch": BATCH, "source_length": Ints(1, 5), "target_length": Ints(1, 5),
                             "_min_kept": Ints(0, lambda v: v.source_length)}, _space_inputs))


register(Mechanism(
    name=NAME, family="origins",
    paper=Paper("Bahdanau, Cho, Bengio", "Neural Machine Translation by Jointly Learning to Align and Translate",
                "ICLR", 2015),
    init=init, apply_fn=bahdanau, config={"embed_dim": 6, "hidden": 5, "vocab": 10, "align_dim": 7, "maxout": 4},
    example_input=_example, differentiable_inputs=(0, 1), channel_axis=None, space=SPACE,
    description="bidirectional-GRU encoder, additive alignment, GRU decoder with maxout readout (log-probs)",
))
