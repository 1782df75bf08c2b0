"""Show, Attend and Tell (Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel, Bengio, ICML 2015):
an LSTM caption decoder attending over the annotation vectors of a convolutional feature map.

Paper equation                                                     code (official names, kelvinxu/arctic-captions)
    a = {a_1..a_L}, a_i in R^D: the (B, D, H, W) map, L = H*W      _annotations
    c_0 = tanh(f_init,c(mean_i a_i)), h_0 = tanh(f_init,h(mean a))  ff_memory, ff_state
    e_ti = f_att(a_i, h_{t-1})                                      (4)  U_att tanh(Wc_att a_i + b_att
                                                                              + Wd_att h_{t-1}) + c_tt
    alpha_ti = softmax_i(e_ti)                                      (5)
    z_t = beta_t * sum_i alpha_ti a_i  (soft),                      (6)  + selector (4.2.1)
          beta_t = sigma(f_beta(h_{t-1}))                                W_sel, b_sel
    z_t = sum_i s_ti a_i, s_t ~ Multinoulli(alpha_t)   (hard)      (8)  ``samples`` input
    [i; f; o; g] = [sigma; sigma; sigma; tanh](W E y_{t-1} + b + U h_{t-1} + Wc z_t)   (1)  gate order i, f, o, c
    c_t = f o c_{t-1} + i o g;  h_t = o o tanh(c_t)                (2, 3)
    p(y_t) = softmax(L_o tanh(E y_{t-1} + L_h h_t + L_z z_t))       (7)  ff_logit(tanh(ff_logit_lstm(h)
                                                                          [+ emb] [+ ff_logit_ctx(z)]))
    loss: -sum_t log p(y_t) + lambda sum_i (1 - sum_t alpha_ti)^2   (14) loss
    hard: REINFORCE with a moving-average baseline and an entropy term  (12)  hard_surrogate

Shapes: ``features`` (B, D, H, W) (annotations a_i are its H*W columns, row-major), ``captions`` (B, T)
integer word ids (teacher forcing: step t is fed y_{t-1}, with a zero vector at t = 0, as the official
``emb_shifted``), ``caption_mask`` (B, T) bool with True = padding (a padded step keeps the LSTM state, as
the official mask does).  Output: log p(y_t = k) (B, T, vocab).  :func:`attention_maps` gives alpha
(B, T, H, W).

Official code versus paper, and what is followed here:
    * Wd_att has no bias; c_tt is a scalar bias of the scores (zero gradient through the softmax).
    * ``selector``, ``prev2out``, ``ctx2out`` are off in the official ``train()`` defaults; the paper's
      model uses them, and so do the defaults here (``init(selector=..., ctx2out=...)``, ``prev2out=``).
    * Parameters are stored in PyTorch layout (out, in), e.g. ``decoder.W.weight`` = W^T of the official
      (nin, 4 dim) matrix; initialisation is PyTorch's uniform (official: N(0, 0.01^2) / orthogonal, zero
      biases).  Dropout (``use_dropout``, off by default officially) is not implemented: ``train`` has no
      effect.
    * The doubly stochastic term is the official ``alpha_c * ((1 - alphas.sum(0))**2).sum(0).mean()`` with
      alphas (T, B, L): summed over the batch and *averaged over the L locations*; ``regulariser="paper"``
      gives eq. (14) per caption averaged over the batch.  It sums over all T steps (masks do not reach alpha).
    * The cost is -log(p + 1e-8), masked, summed over time, averaged over the batch.
    * Hard attention: the official gradient replaces the gradient arriving at alpha by ``known_grads``
      (baseline - cost_b)/10 * (-s/alpha) + 0.002 (log alpha + 1), with cost_b the per-caption masked cost
      averaged over time; :func:`hard_surrogate` is a scalar whose gradient is exactly that.  With
      probability ``semi_sampling_p = 0.5`` per minibatch the official code uses alpha itself instead of a
      sample: run the soft pass (``attention="soft"``) for that branch.
    * ``temperature`` is an *inverse* temperature, as the official ``temperature_c``: the hard path takes
      alpha = softmax(temperature * e) (capgen.py: ``softmax(temperature_c * alpha)``), so a larger value
      sharpens the distribution; 1 (the official default) leaves it unchanged.  The official soft path has
      none, so ``attention="soft"`` accepts only 1.

Structure (the parameter contract, :mod:`npattn.params`): ``selector`` (the gating scalar beta, parameters
``decoder.W_sel``) and ``ctx2out`` (the context term of the deep output, ``ff_logit_ctx``) are keywords of
:func:`init` *and* of every function that reads the parameters, with the same defaults (True, the paper's
model); the parameters must be exactly those ``init`` makes for them.  ``prev2out`` has no parameters and is
an option of the apply functions only.  D, n, m and the vocabulary come from the shapes (in-features of
``decoder.Wc_att`` and ``decoder.U``, the ``embedding.weight`` table) and every parameter is checked on them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

import autograd as ag
from autograd import backend

from ..layers import check_dtype, check_input, example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH as ANY_BATCH
from ..space import Bools, Choice, Inputs, Ints, Space
from ._sequence import additive_energy, check_padding_mask, check_tokens, shift_right, weighted_sum

NAME = "show-attend-tell"
PAPER = Paper("Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel, Bengio",
              "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention", "ICML", 2015)
NLL_EPS = 1e-8          # the official -log(p + 1e-8)
REGULARISERS = ("official", "paper")


def init(rng, ctx_dim: int, hidden: int, *, embed_dim: int, vocab: int, selector: bool = True,
         ctx2out: bool = True, dtype=np.float64) -> dict:
    """Parameters for annotations of size D=ctx_dim, an LSTM of size n=hidden, word embeddings of size
    m=embed_dim and ``vocab`` words (official names, PyTorch (out, in) layout):

    ``embedding.weight`` (V, m) [Wemb]; ``ff_state`` / ``ff_memory`` (n, D) + bias; ``decoder.W`` (4n, m) +
    bias [W, b]; ``decoder.U`` (4n, n); ``decoder.Wc`` (4n, D); ``decoder.Wc_att`` (D, D) + bias [b_att];
    ``decoder.Wd_att`` (D, n); ``decoder.U_att`` (1, D) + bias [c_tt]; ``decoder.W_sel`` (1, n) + bias
    [b_sel] if selector; ``ff_logit_lstm`` (m, n), ``ff_logit_ctx`` (m, D) if ctx2out, ``ff_logit`` (V, m),
    all with bias.
    """
    params: dict = {"embedding.weight": backend.from_numpy(rng.standard_normal((vocab, embed_dim)).astype(dtype))}
    init_linear(rng, params, "ff_state", hidden, ctx_dim, dtype=dtype)
    init_linear(rng, params, "ff_memory", hidden, ctx_dim, dtype=dtype)
    init_linear(rng, params, "decoder.W", 4 * hidden, embed_dim, dtype=dtype)
    init_linear(rng, params, "decoder.U", 4 * hidden, hidden, bias=False, dtype=dtype)
    init_linear(rng, params, "decoder.Wc", 4 * hidden, ctx_dim, bias=False, dtype=dtype)
    init_linear(rng, params, "decoder.Wc_att", ctx_dim, ctx_dim, dtype=dtype)
    init_linear(rng, params, "decoder.Wd_att", ctx_dim, hidden, bias=False, dtype=dtype)
    init_linear(rng, params, "decoder.U_att", 1, ctx_dim, dtype=dtype)
    if selector:
        init_linear(rng, params, "decoder.W_sel", 1, hidden, dtype=dtype)
    init_linear(rng, params, "ff_logit_lstm", embed_dim, hidden, dtype=dtype)
    if ctx2out:
        init_linear(rng, params, "ff_logit_ctx", embed_dim, ctx_dim, dtype=dtype)
    init_linear(rng, params, "ff_logit", vocab, embed_dim, dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# the decoder


class Decoded(NamedTuple):
    """One teacher-forced pass: log-probs (B, T, V), alphas (B, T, L), selector beta (B, T) or None."""

    log_probs: ag.Tensor
    alphas: ag.Tensor
    betas: ag.Tensor | None


def _annotations(features: ag.Tensor) -> ag.Tensor:
    """(B, D, H, W) -> (B, L = H*W, D), locations in row-major order."""
    batch, channels, height, width = features.shape
    return ag.transpose(ag.reshape(features, (batch, channels, height * width)), (0, 2, 1))   # no -1: B may be 0



class _Structure(NamedTuple):
    """The model's variant: the parameter-carrying switches of :func:`init` and the parameter-free prev2out."""

    selector: bool
    ctx2out: bool
    prev2out: bool


def _lstm_step(params, projected_word, state, memory, context, step_keep):
    """Eqs. (1)-(3), gate order i, f, o, c: preact = (W E y_{t-1} + b) + U h_{t-1} + Wc z_t.

    A padded step (``step_keep`` False) keeps c and h, as the official ``m_ * c + (1 - m_) * c_``.
    """
    hidden = state.shape[-1]
    preact = (projected_word + linear(params, "decoder.U", state, bias=False, out=4 * hidden)
              + linear(params, "decoder.Wc", context, bias=False, out=4 * hidden))
    input_gate, forget_gate, output_gate = (ag.sigmoid(preact[:, k * hidden:(k + 1) * hidden]) for k in range(3))
    candidate = ag.tanh(preact[:, 3 * hidden:])
    new_memory = forget_gate * memory + input_gate * candidate
    if step_keep is not None:
        new_memory = ag.where(step_keep, new_memory, memory)
    new_state = output_gate * ag.tanh(new_memory)
    if step_keep is not None:
        new_state = ag.where(step_keep, new_state, state)
    return new_state, new_memory


def _deep_output(params, states, previous_words, contexts, structure: _Structure) -> ag.Tensor:
    """Eq. (7): log softmax(ff_logit(tanh(ff_logit_lstm(h_t) [+ E y_{t-1}] [+ ff_logit_ctx(z_t)])))."""
    embed_dim, vocab = previous_words.shape[-1], params.shape("embedding.weight")[0]
    logit = linear(params, "ff_logit_lstm", states, out=embed_dim)
    if structure.prev2out:
        logit = logit + previous_words
    if structure.ctx2out:
        logit = logit + linear(params, "ff_logit_ctx", contexts, out=embed_dim)
    return ag.log_softmax(linear(params, "ff_logit", ag.tanh(logit), out=vocab), axis=-1)


def _decode(params, features, captions, keep, choose, temperature: float, structure: _Structure) -> Decoded:
    """Run the attention LSTM over the T caption steps.

    ``choose(t, alpha)`` returns the weights that form z_t: alpha itself (soft attention) or the sample
    s_t (hard attention).
    """
    hidden = params.shape("decoder.U.weight")[1]
    annotations = _annotations(features)
    ctx_dim = annotations.shape[-1]
    mean = ag.mean(annotations, axis=1)
    state = ag.tanh(linear(params, "ff_state", mean, out=hidden))                    # h_0
    memory = ag.tanh(linear(params, "ff_memory", mean, out=hidden))                  # c_0
    previous_words = shift_right(ag.getitem(params["embedding.weight"], captions))   # E y_{t-1}, 0 at t = 0
    projected_words = linear(params, "decoder.W", previous_words, out=4 * hidden)   # W E y_{t-1} + b
    keys = linear(params, "decoder.Wc_att", annotations, out=ctx_dim)                # Wc_att a_i + b_att
    states, contexts, alphas, betas = [], [], [], []
    for t in range(captions.shape[1]):
        query = linear(params, "decoder.Wd_att", state, bias=False, out=ctx_dim)    # Wd_att h_{t-1}
        energy = additive_energy(params, "decoder.U_att", keys, query, bias=True)   # e_ti (with c_tt)
        alpha = ag.softmax(energy if temperature == 1.0 else energy * temperature, axis=-1)   # eq. (5)
        context = weighted_sum(choose(t, alpha), annotations)                       # eq. (6) / (8)
        if structure.selector:
            beta = ag.sigmoid(linear(params, "decoder.W_sel", state, out=1))        # (B, 1)
            context = beta * context
            betas.append(beta[:, 0])
        step_keep = None if keep is None else keep[:, t, None]
        state, memory = _lstm_step(params, projected_words[:, t], state, memory, context, step_keep)
        states.append(state)
        contexts.append(context)
        alphas.append(alpha)
    log_probs = _deep_output(params, ag.stack(states, axis=1), previous_words, ag.stack(contexts, axis=1), structure)
    return Decoded(log_probs, ag.stack(alphas, axis=1), ag.stack(betas, axis=1) if structure.selector else None)


# ---------------------------------------------------------------------------------------------
# inputs


class _Inputs(NamedTuple):
    features: ag.Tensor
    captions: object           # backend int array (B, T)
    keep: object               # backend bool array (B, T), True = real word, or None
    samples: ag.Tensor | None  # (B, T, L) or None


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{NAME}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _structure(selector, ctx2out, prev2out) -> _Structure:
    return _Structure(_check_flag("selector", selector), _check_flag("ctx2out", ctx2out),
                      _check_flag("prev2out", prev2out))


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise TypeError(f"{NAME}: temperature (an inverse temperature) must be a number, got "
                        f"{type(temperature).__name__} {temperature!r}")
    if not 0.0 < temperature < np.inf:
        raise ValueError(f"{NAME}: temperature (an inverse temperature, multiplying the scores) must be a finite "
                         f"positive number, got {temperature!r}")
    return float(temperature)


def _check(params, features, captions, caption_mask, samples, attention, temperature) -> _Inputs:
    ctx_dim = params.shape("decoder.Wc_att.weight")[1]
    features = check_input(NAME, features, arg="features", ndim=4, channels=ctx_dim, layout="(B, D, H, W)")
    check_dtype(NAME, features, params, arg="features")
    batch, _, height, width = features.shape
    if height * width < 1:
        raise ValueError(f"{NAME}: features must have at least one location (H, W >= 1), got shape {features.shape}")
    vocab = params.shape("embedding.weight")[0]
    captions = check_tokens(NAME, captions, arg="captions", vocab=vocab, batch=batch)
    if captions.shape[1] < 1:
        raise ValueError(f"{NAME}: captions must have at least one word (B, T >= 1), got shape {tuple(captions.shape)}")
    padding = check_padding_mask(NAME, caption_mask, arg="caption_mask", shape=tuple(captions.shape))
    if attention not in ("soft", "hard"):
        raise ValueError(f"{NAME}: attention must be 'soft' or 'hard', got {attention!r}")
    temperature = _check_temperature(temperature)
    if attention == "soft" and temperature != 1.0:
        raise ValueError(f"{NAME}: temperature applies to hard attention only (the official soft path has none)")
    if attention == "hard":
        if samples is None:
            raise ValueError(f"{NAME}: hard attention needs samples (B, T, H, W); draw them with sample_attention")
        expected = (batch, captions.shape[1], height, width)
        samples = check_input(NAME, samples, arg="samples", ndim=4, layout=f"(B, T, H, W) = {expected}")
        if samples.shape != expected:
            raise ValueError(f"{NAME}: samples must have shape {expected}, got {samples.shape}")
        check_dtype(NAME, samples, params, arg="samples")
        samples = ag.reshape(samples, expected[:2] + (height * width,))
    keep = None if padding is None else ~padding
    return _Inputs(features, captions, keep, samples)


def _chooser(inputs: _Inputs):
    if inputs.samples is None:
        return lambda t, alpha: alpha
    return lambda t, alpha: inputs.samples[:, t]


def _run(params, features, captions, caption_mask, samples, attention, temperature, structure: _Structure):
    inputs = _check(params, features, captions, caption_mask, samples, attention, temperature)
    return _decode(params, inputs.features, inputs.captions, inputs.keep, _chooser(inputs), float(temperature),
                   structure)


# ---------------------------------------------------------------------------------------------
# public API


@uses_params(NAME)
def show_attend_tell(params: dict, features, captions, caption_mask=None, samples=None, *, train: bool = False,
                     attention: str = "soft", temperature: float = 1.0, prev2out: bool = True, selector: bool = True,
                     ctx2out: bool = True) -> ag.Tensor:
    """Teacher-forced caption log-probs (B, T, vocab) for features (B, D, H, W) and captions (B, T) ids.

    ``caption_mask`` (B, T) bool, True = padding.  ``attention="soft"``: z_t = beta_t sum_i alpha_ti a_i.
    ``attention="hard"``: z_t = beta_t sum_i s_ti a_i with the given ``samples`` (B, T, H, W) (one-hot
    draws from :func:`sample_attention`; the samples carry no gradient in the official estimator).
    ``temperature``: the hard path's *inverse* temperature, alpha = softmax(temperature * e) (official
    ``temperature_c``; larger is sharper).  ``selector``, ``ctx2out``: the structure, as given to :func:`init`;
    ``prev2out`` adds E y_{t-1} to the deep output.  ``train`` has no effect (no dropout / BatchNorm).
    """
    structure = _structure(selector, ctx2out, prev2out)
    return _run(params, features, captions, caption_mask, samples, attention, temperature, structure).log_probs


@uses_params(NAME)
def attention_maps(params: dict, features, captions, caption_mask=None, samples=None, *, attention: str = "soft",
                   temperature: float = 1.0, prev2out: bool = True, selector: bool = True,
                   ctx2out: bool = True) -> ag.Tensor:
    """alpha_t over the feature map for every step: (B, T, H, W) (each map sums to 1).  Keywords as
    :func:`show_attend_tell`."""
    structure = _structure(selector, ctx2out, prev2out)
    alphas = _run(params, features, captions, caption_mask, samples, attention, temperature, structure).alphas
    batch, _, height, width = ag.as_tensor(features).shape
    return ag.reshape(alphas, (batch, alphas.shape[1], height, width))


@uses_params(NAME)
def selector_gates(params: dict, features, captions, caption_mask=None, samples=None, *, attention: str = "soft",
                   temperature: float = 1.0, prev2out: bool = True, selector: bool = True,
                   ctx2out: bool = True) -> ag.Tensor:
    """The gating scalars beta_t (B, T) of the selector (``selector=True``, parameters ``decoder.W_sel``)."""
    if not _check_flag("selector", selector):
        raise ValueError(f"{NAME}: selector=False builds no gating scalar beta; selector_gates needs selector=True "
                         "(and the parameters init(..., selector=True) makes)")
    structure = _structure(selector, ctx2out, prev2out)
    return _run(params, features, captions, caption_mask, samples, attention, temperature, structure).betas


@uses_params(NAME)
def sample_attention(params: dict, features, captions, caption_mask=None, *, rng, temperature: float = 1.0,
                     prev2out: bool = True, selector: bool = True, ctx2out: bool = True):
    """Draw the hard-attention locations s_t ~ Multinoulli(alpha_t) step by step (alpha_t depends on the
    earlier samples through h_{t-1}) from the explicit generator ``rng``; returns one-hot (B, T, H, W).

    ``temperature`` is the inverse temperature of the hard path (alpha = softmax(temperature * e)).  The
    draws use ``autograd.categorical`` (inverse CDF on the host), so a seed gives the same samples on
    every backend.
    """
    structure = _structure(selector, ctx2out, prev2out)
    temperature = _check_temperature(temperature)
    inputs = _check(params, features, captions, caption_mask, None, "soft", 1.0)
    locations = inputs.features.shape[2] * inputs.features.shape[3]
    identity = np.eye(locations, dtype=np.dtype(inputs.features.dtype))
    drawn = []

    def draw(t, alpha):
        one_hot = ag.Tensor(backend.from_numpy(identity[ag.to_numpy(ag.categorical(rng, alpha))]))
        drawn.append(one_hot)
        return one_hot

    with ag.no_grad():
        _decode(params, inputs.features, inputs.captions, inputs.keep, draw, temperature, structure)
    batch, _, height, width = inputs.features.shape
    return ag.xp.reshape(ag.xp.stack([s.data for s in drawn], axis=1), (batch, len(drawn), height, width))


def masked_cost(log_probs, captions, caption_mask=None) -> ag.Tensor:
    """Official per-word cost -log(p(y_t) + 1e-8), zero on padding: (B, T, V), (B, T) -> (B, T)."""
    log_probs = ag.as_tensor(log_probs)
    captions = captions.data if isinstance(captions, ag.Tensor) else captions
    picked = ag.take_along_axis(log_probs, captions[..., None], axis=-1)[..., 0]
    cost = -ag.log(ag.exp(picked) + NLL_EPS)
    if caption_mask is None:
        return cost
    mask = caption_mask.data if isinstance(caption_mask, ag.Tensor) else caption_mask
    return ag.where(~mask, cost, 0.0)


def doubly_stochastic(alphas, *, regulariser: str = "official") -> ag.Tensor:
    """The doubly stochastic penalty on alphas (B, T, L), without the coefficient alpha_c.

    "official": ((1 - alphas.sum over t)^2).sum over the batch, mean over the L locations;
    "paper": sum_i (1 - sum_t alpha_ti)^2 per caption (eq. 14), mean over the batch.
    """
    deficit = (1.0 - ag.sum(alphas, axis=1)) ** 2            # (B, L)
    if regulariser == "official":
        return ag.mean(ag.sum(deficit, axis=0))
    if regulariser == "paper":
        return ag.mean(ag.sum(deficit, axis=1))
    raise ValueError(f"{NAME}: regulariser must be 'official' or 'paper', got {regulariser!r}")


@uses_params(NAME)
def loss(params: dict, features, captions, caption_mask=None, *, alpha_c: float = 1.0, regulariser: str = "official",
         prev2out: bool = True, selector: bool = True, ctx2out: bool = True) -> ag.Tensor:
    """Soft-attention training loss: masked NLL summed over time, averaged over the batch, plus
    alpha_c times the doubly stochastic penalty (:func:`doubly_stochastic`).  A scalar Tensor."""
    if regulariser not in REGULARISERS:         # checked here too: alpha_c = 0 skips the penalty
        raise ValueError(f"{NAME}: regulariser must be 'official' or 'paper', got {regulariser!r}")
    if isinstance(alpha_c, bool) or not isinstance(alpha_c, (int, float, np.integer, np.floating)) \
            or not np.isfinite(alpha_c):
        raise ValueError(f"{NAME}: alpha_c must be a finite number, got {alpha_c!r}")
    decoded = _run(params, features, captions, caption_mask, None, "soft", 1.0,
                   _structure(selector, ctx2out, prev2out))
    nll = ag.mean(ag.sum(masked_cost(decoded.log_probs, captions, caption_mask), axis=1))
    if alpha_c == 0:
        return nll
    return nll + alpha_c * doubly_stochastic(decoded.alphas, regulariser=regulariser)


def reinforce_term(alphas, samples, cost, baseline: float, *, entropy_c: float = 0.002,
                   reward_scale: float = 0.1) -> ag.Tensor:
    """Scalar whose gradient in alphas is the official ``known_grads``:

        d/d alpha = (baseline - cost_b) * reward_scale * (-s / alpha) + entropy_c * (log alpha + 1)

    i.e. sum[(baseline - cost_b) * reward_scale * (-s log alpha) + entropy_c * alpha log alpha], with
    alphas, samples (B, T, L) and cost (B,) the per-caption cost (a constant: no gradient flows into it).
    """
    alphas = ag.as_tensor(alphas)
    cost = ag.as_tensor(cost).detach()
    advantage = ag.reshape((baseline - cost) * reward_scale, (-1, 1, 1))
    log_alpha = ag.log(alphas)
    return ag.sum(advantage * (-ag.as_tensor(samples) * log_alpha)) + entropy_c * ag.sum(alphas * log_alpha)


@uses_params(NAME)
def hard_surrogate(params: dict, features, captions, caption_mask, samples, cost=None, baseline: float = 0.0, *,
                   entropy_c: float = 0.002, reward_scale: float = 0.1, temperature: float = 1.0,
                   prev2out: bool = True, selector: bool = True, ctx2out: bool = True) -> ag.Tensor:
    """Scalar surrogate of the official hard-attention update (``RL_sumCost=True``).

    Its gradient in every parameter equals the official one for the sampled branch: the gradient of the
    masked NLL (summed over time, averaged over the batch) with the samples held fixed, plus the
    ``known_grads`` on alpha back-propagated (:func:`reinforce_term`).  The doubly stochastic term
    contributes nothing there (the known_grads replace every gradient arriving at alpha).

    ``cost`` (B,) is cost_b, the per-caption masked cost averaged over time; by default it is computed from
    this pass (and treated as a constant).  Pass it explicitly, with ``baseline``, for finite differences.
    """
    structure = _structure(selector, ctx2out, prev2out)
    inputs = _check(params, features, captions, caption_mask, samples, "hard", temperature)
    decoded = _decode(params, inputs.features, inputs.captions, inputs.keep, _chooser(inputs), float(temperature),
                      structure)
    word_cost = masked_cost(decoded.log_probs, captions, caption_mask)
    if cost is None:
        cost = ag.mean(word_cost, axis=1).detach()
    nll = ag.mean(ag.sum(word_cost, axis=1))
    return nll + reinforce_term(decoded.alphas, inputs.samples, cost, baseline, entropy_c=entropy_c,
                                reward_scale=reward_scale)


def update_baseline(baseline: float, word_cost) -> float:
    """The official moving-average baseline: 0.9 * baseline + 0.1 * mean(masked cost (B, T))."""
    return 0.9 * baseline + 0.1 * float(ag.mean(ag.as_tensor(word_cost)).item())


# ---------------------------------------------------------------------------------------------
# registry

CONFIG = {"ctx_dim": 8, "hidden": 6, "embed_dim": 5, "vocab": 10}
BATCH, STEPS, HEIGHT, WIDTH = 2, 5, 3, 3


def _captions(rng):
    captions = backend.from_numpy(rng.integers(0, CONFIG["vocab"], size=(BATCH, STEPS)).astype(np.int64))
    padding = backend.from_numpy(np.arange(STEPS)[None, :] >= np.array([[STEPS], [STEPS - 2]]))
    return captions, padding


def _soft_example(rng, dtype=np.float64):
    features = example(rng, (BATCH, CONFIG["ctx_dim"], HEIGHT, WIDTH), dtype)
    return (features, *_captions(rng))


def _hard_example(rng, dtype=np.float64):
    """One-hot samples drawn uniformly (the model's own draws need the parameters: sample_attention)."""
    features, captions, padding = _soft_example(rng, dtype)
    where = rng.integers(0, HEIGHT * WIDTH, size=(BATCH, STEPS))
    samples = np.eye(HEIGHT * WIDTH, dtype=dtype)[where].reshape(BATCH, STEPS, HEIGHT, WIDTH)
    return features, captions, padding, backend.from_numpy(samples)


def _space_inputs(hard: bool):
    """Features (B, D, H, W), captions (B, T) in [0, vocab), a padding mask keeping at least ``_min_kept``
    words per caption (0: all padding) and, for hard attention, one-hot samples (B, T, H, W)."""
    def build(rng, v, dtype):
        features = example(rng, (v.batch, v.ctx_dim, v.height, v.width), dtype)
        captions = backend.from_numpy(rng.integers(0, v.vocab, size=(v.batch, v.steps)).astype(np.int64))
        kept = rng.integers(v._min_kept, v.steps + 1, size=v.batch)
        padding = backend.from_numpy(np.arange(v.steps)[None, :] >= kept[:, None])
        if not hard:
            return features, captions, padding
        where = rng.integers(0, v.height * v.width, size=(v.batch, v.steps))
        samples = np.eye(v.height * v.width, dtype=dtype)[where].reshape(v.batch, v.steps, v.height, v.width)
        return features, captions, padding, backend.from_numpy(samples)
    dims = {"batch": ANY_BATCH, "steps": Ints(1, 4), "_min_kept": Ints(0, lambda v: v.steps), "height": Ints(1, 5),
            "width": Ints(1, 5)}
    return Inputs(dims, build)


def _space(hard: bool) -> Space:
    """Sizes from 1 (one location, one word, a one-word vocabulary), both structure options, ``prev2out``;
    the hard path's inverse temperature (the soft path accepts only 1)."""
    options = {"prev2out": Bools()}
    if hard:
        options["temperature"] = Choice(1.0, 0.5, 3.0)
    return Space(config={"ctx_dim": Ints(1, 8), "hidden": Ints(1, 6), "embed_dim": Ints(1, 5), "vocab": Ints(1, 10),
                         "selector": Bools(), "ctx2out": Bools()},
                 options=options, inputs=_space_inputs(hard))


register(Mechanism(
    name=NAME, family="origins", paper=PAPER, init=init, apply_fn=show_attend_tell, config=dict(CONFIG),
    options={"attention": "soft"}, example_input=_soft_example, differentiable_inputs=(0,), channel_axis=1,
    space=_space(hard=False),
    description="LSTM captioner with soft attention over annotation vectors, gating scalar beta (log-probs)",
))

register(Mechanism(
    name=NAME + "-hard", family="origins", paper=PAPER, init=init, apply_fn=show_attend_tell, config=dict(CONFIG),
    options={"attention": "hard"}, example_input=_hard_example, differentiable_inputs=(0,), channel_axis=1,
    space=_space(hard=True),
    description="hard (sampled one-hot) attention variant, given the samples (log-probs)",
))
