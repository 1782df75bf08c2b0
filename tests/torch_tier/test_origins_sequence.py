"""Cross-framework tier for the sequence models of the origins family.

* ``mha`` against ``torch.nn.MultiheadAttention`` (in_proj = cat(W_q, W_k, W_v), bias off / on);
* encoder / decoder layers and the whole stack against ``torch.nn.TransformerEncoderLayer`` /
  ``TransformerDecoderLayer`` (post-LN, ``layer_norm_eps=1e-6``, dropout 0) loaded with the same weights;
* Bahdanau and Show-Attend-Tell against independent torch twins written here from the paper / the
  official code (the SAT twin runs ``torch.nn.LSTMCell`` with the official i, f, o, c gates permuted into
  torch's i, f, g, o, and builds the hard-attention gradient with Theano-style ``known_grads``).

Outputs, the gradients w.r.t. every float input and every parameter, float64, 1e-10.
"""
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.interop.torch import torch_key  # noqa: E402
from npattn.origins import bahdanau as bah  # noqa: E402
from npattn.origins import show_attend_tell as sat  # noqa: E402
from npattn.origins import transformer as tf  # noqa: E402
from tests.conftest import dev, host  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10
D_MODEL, HEADS, D_FF = 16, 4, 24


def _t(array, grad=True):
    return torch.tensor(host(array) if not isinstance(array, np.ndarray) else array, dtype=torch.float64,
                        requires_grad=grad)


def _assert_close(ours, theirs, what):
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL, err_msg=what)


def _ours_with_grads(fn, params, inputs, cotangent):
    """npattn output and the VJP with ``cotangent`` for params and every input."""
    out, pullback = ag.vjp(fn, params, *inputs)
    grads = pullback(dev(cotangent))
    return host(out), grads[0], grads[1:]


# ---------------------------------------------------------------------------------------------
# npattn <-> torch parameter names for attention:  w_q/w_k/w_v -> slices of in_proj_*, w_o -> out_proj

def _torch_name(key, d_model):
    """(torch state_dict name, row slice or None) of an npattn parameter (npattn.interop.torch's mapping)."""
    name, part = torch_key("transformer", key)
    return name, None if part is None else slice(part * d_model, (part + 1) * d_model)


def _load(module, params, d_model):
    """Copy npattn params into a torch module; torch-only attention biases (attn_bias=False) become 0."""
    state = {name: torch.zeros_like(value) for name, value in module.state_dict().items()}
    loaded = set()
    for key, value in params.items():
        name, rows = _torch_name(key, d_model)
        target = state[name]
        if rows is None:
            target.copy_(torch.from_numpy(host(value)))
        else:
            target[rows] = torch.from_numpy(host(value))
        loaded.add(name)
    missing = [n for n in state if n not in loaded and not re.search(r"(in_proj_bias|out_proj\.bias)$", n)]
    assert not missing, f"torch parameters without npattn counterpart: {missing}"
    module.load_state_dict(state, strict=True)


def _compare_param_grads(module, params, ours, d_model):
    named = dict(module.named_parameters())
    for key in params:
        name, rows = _torch_name(key, d_model)
        grad = named[name].grad
        _assert_close(host(ours[key]), grad if rows is None else grad[rows], f"grad of {key}")


def _padding(lengths, length):
    return np.arange(length)[None, :] >= np.asarray(lengths)[:, None]


# ---------------------------------------------------------------------------------------------
# multi-head attention


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("blocked", [False, True])
def test_mha_matches_torch_multihead_attention(bias, causal, blocked, monkeypatch):
    if blocked:
        monkeypatch.setattr(tf, "BLOCK_BYTES", 1)               # one batch item at a time
    rng = np.random.default_rng(0)
    params = tf.init_mha(rng, D_MODEL, attn_bias=bias)
    length_q = length_k = 6
    query, key, value = (rng.standard_normal((3, n, D_MODEL)) for n in (length_q, length_k, length_k))
    pad = _padding([6, 4, 2], length_k)
    cotangent = rng.standard_normal((3, length_q, D_MODEL))

    def ours_fn(p, q, k, v):
        return tf.mha(p, q, k, v, dev(pad), heads=HEADS, causal=causal, attn_bias=bias)

    out, g_params, g_inputs = _ours_with_grads(ours_fn, params, [dev(a) for a in (query, key, value)], cotangent)

    module = nn.MultiheadAttention(D_MODEL, HEADS, bias=bias, batch_first=True, dtype=torch.float64)
    _load(module, params, D_MODEL)
    tq, tk, tv = _t(query), _t(key), _t(value)
    future = torch.triu(torch.ones(length_q, length_k, dtype=torch.bool), 1) if causal else None
    theirs, weights = module(tq, tk, tv, key_padding_mask=torch.from_numpy(pad), attn_mask=future,
                             need_weights=True, average_attn_weights=False)
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "output")
    _assert_close(host(tf.mha_weights(params, dev(query), dev(key), dev(pad), heads=HEADS, causal=causal,
                                   attn_bias=bias)), weights,
                  "attention weights")
    for ours_grad, t, name in zip(g_inputs, (tq, tk, tv), ("query", "key", "value")):
        _assert_close(host(ours_grad), t.grad, f"grad of {name}")
    _compare_param_grads(module, params, g_params, D_MODEL)


# ---------------------------------------------------------------------------------------------
# encoder / decoder layers and the stack


def _layer_kwargs():
    return dict(dim_feedforward=D_FF, dropout=0.0, activation="relu", layer_norm_eps=1e-6, batch_first=True,
                norm_first=False, dtype=torch.float64)


@pytest.mark.parametrize("bias", [False, True])
def test_encoder_layer_matches_torch(bias):
    rng = np.random.default_rng(1)
    params: dict = {}
    tf.init_encoder_layer(rng, params, "", D_MODEL, D_FF, attn_bias=bias)
    x = rng.standard_normal((3, 7, D_MODEL))
    pad = _padding([7, 5, 3], 7)
    cotangent = rng.standard_normal(x.shape)
    out, g_params, (g_x,) = _ours_with_grads(
        lambda p, x: tf.encoder_layer(p, x, dev(pad), heads=HEADS, attn_bias=bias), params, [dev(x)], cotangent)

    module = nn.TransformerEncoderLayer(D_MODEL, HEADS, **_layer_kwargs()).eval()
    _load(module, params, D_MODEL)
    tx = _t(x)
    theirs = module(tx, src_key_padding_mask=torch.from_numpy(pad))
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "output")
    _assert_close(host(g_x), tx.grad, "grad of x")
    _compare_param_grads(module, params, g_params, D_MODEL)


@pytest.mark.parametrize("bias", [False, True])
def test_decoder_layer_matches_torch(bias):
    rng = np.random.default_rng(2)
    params: dict = {}
    tf.init_decoder_layer(rng, params, "", D_MODEL, D_FF, attn_bias=bias)
    x, memory = rng.standard_normal((3, 5, D_MODEL)), rng.standard_normal((3, 6, D_MODEL))
    tgt_pad, memory_pad = _padding([5, 5, 3], 5), _padding([6, 4, 2], 6)
    cotangent = rng.standard_normal(x.shape)
    out, g_params, (g_x, g_memory) = _ours_with_grads(
        lambda p, x, m: tf.decoder_layer(p, x, m, dev(tgt_pad), dev(memory_pad), heads=HEADS, attn_bias=bias),
        params,
        [dev(x), dev(memory)], cotangent)

    module = nn.TransformerDecoderLayer(D_MODEL, HEADS, **_layer_kwargs()).eval()
    _load(module, params, D_MODEL)
    tx, tm = _t(x), _t(memory)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    theirs = module(tx, tm, tgt_mask=causal, tgt_key_padding_mask=torch.from_numpy(tgt_pad),
                    memory_key_padding_mask=torch.from_numpy(memory_pad))
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "output")
    _assert_close(host(g_x), tx.grad, "grad of x")
    _assert_close(host(g_memory), tm.grad, "grad of memory")
    _compare_param_grads(module, params, g_params, D_MODEL)


class TorchTransformer(nn.Module):
    """torch's encoder / decoder stacks without their final LayerNorm, fed sqrt(d) * x + sinusoidal PE."""

    def __init__(self, num_layers, pe_layout):
        super().__init__()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D_MODEL, HEADS, **_layer_kwargs()),
                                             num_layers, norm=None, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(D_MODEL, HEADS, **_layer_kwargs()),
                                             num_layers, norm=None)
        self.pe_layout = pe_layout

    def position_signal(self, length):
        position = torch.arange(length, dtype=torch.float64)[:, None]
        if self.pe_layout == "interleave":            # PE(pos, 2i) = sin(pos / 10000^(2i/d)), 2i+1: cos
            div = torch.pow(10000.0, torch.arange(0, D_MODEL, 2, dtype=torch.float64) / D_MODEL)
            signal = torch.zeros(length, D_MODEL, dtype=torch.float64)
            signal[:, 0::2], signal[:, 1::2] = torch.sin(position / div), torch.cos(position / div)
            return signal
        half = D_MODEL // 2                            # t2t get_timing_signal_1d
        inv = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(1e4) / (half - 1)))
        return torch.cat([torch.sin(position * inv), torch.cos(position * inv)], dim=1)

    def forward(self, src, tgt, src_pad, tgt_pad):
        embed = lambda x: x * math.sqrt(D_MODEL) + self.position_signal(x.shape[1])  # noqa: E731
        memory = self.encoder(embed(src), src_key_padding_mask=src_pad)
        causal = torch.triu(torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool), 1)
        return self.decoder(embed(tgt), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_pad,
                            memory_key_padding_mask=src_pad)


@pytest.mark.parametrize("pe_layout", ["interleave", "concat"])
@pytest.mark.parametrize("blocked", [False, True])
def test_transformer_stack_matches_torch(pe_layout, blocked, monkeypatch):
    if blocked:
        monkeypatch.setattr(tf, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(3)
    params = tf.init(rng, D_MODEL, d_ff=D_FF, num_layers=2)
    src, tgt = rng.standard_normal((2, 6, D_MODEL)), rng.standard_normal((2, 5, D_MODEL))
    src_pad, tgt_pad = _padding([6, 4], 6), _padding([5, 3], 5)
    cotangent = rng.standard_normal(tgt.shape)
    out, g_params, (g_src, g_tgt) = _ours_with_grads(
        lambda p, s, t: tf.transformer(p, s, t, dev(src_pad), dev(tgt_pad), heads=HEADS, num_layers=2, dropout=0.0,
                                       pe_layout=pe_layout), params, [dev(src), dev(tgt)], cotangent)

    module = TorchTransformer(2, pe_layout).eval()
    _load(module, params, D_MODEL)
    ts, tt = _t(src), _t(tgt)
    theirs = module(ts, tt, torch.from_numpy(src_pad), torch.from_numpy(tgt_pad))
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "output")
    _assert_close(host(g_src), ts.grad, "grad of src")
    _assert_close(host(g_tgt), tt.grad, "grad of tgt")
    _compare_param_grads(module, params, g_params, D_MODEL)


# ---------------------------------------------------------------------------------------------
# Bahdanau


class TorchPaperGRU(nn.Module):
    """The paper's GRU: h = (1 - z) h + z tanh(W x + U (r o h) [+ C c]), biases on the input maps only."""

    def __init__(self, input_dim, hidden, context_dim=0):
        super().__init__()
        self.W, self.W_z, self.W_r = (nn.Linear(input_dim, hidden, dtype=torch.float64) for _ in range(3))
        self.U, self.U_z, self.U_r = (nn.Linear(hidden, hidden, bias=False, dtype=torch.float64) for _ in range(3))
        if context_dim:
            self.C, self.C_z, self.C_r = (nn.Linear(context_dim, hidden, bias=False, dtype=torch.float64)
                                          for _ in range(3))

    def forward(self, x, h, c=None):
        extra = (lambda layer: layer(c)) if c is not None else (lambda layer: 0.0)
        z = torch.sigmoid(self.W_z(x) + self.U_z(h) + extra(getattr(self, "C_z", None)))
        r = torch.sigmoid(self.W_r(x) + self.U_r(h) + extra(getattr(self, "C_r", None)))
        h_tilde = torch.tanh(self.W(x) + self.U(r * h) + extra(getattr(self, "C", None)))
        return (1 - z) * h + z * h_tilde


class TorchRNNsearch(nn.Module):
    def __init__(self, embed_dim, hidden, vocab, align_dim, maxout, readout_state):
        super().__init__()
        self.fwd, self.bwd = TorchPaperGRU(embed_dim, hidden), TorchPaperGRU(embed_dim, hidden)
        self.init_state = nn.Linear(hidden, hidden, dtype=torch.float64)
        self.gru = TorchPaperGRU(embed_dim, hidden, 2 * hidden)
        self.W_a = nn.Linear(hidden, align_dim, bias=False, dtype=torch.float64)
        self.U_a = nn.Linear(2 * hidden, align_dim, bias=False, dtype=torch.float64)
        self.v_a = nn.Linear(align_dim, 1, bias=False, dtype=torch.float64)
        self.U_o = nn.Linear(hidden, 2 * maxout, dtype=torch.float64)
        self.V_o = nn.Linear(embed_dim, 2 * maxout, bias=False, dtype=torch.float64)
        self.C_o = nn.Linear(2 * hidden, 2 * maxout, bias=False, dtype=torch.float64)
        self.W_o = nn.Linear(maxout, vocab, dtype=torch.float64)
        self.hidden, self.readout_state = hidden, readout_state

    RENAME = (("encoder.forward.", "fwd."), ("encoder.backward.", "bwd."), ("decoder.init.", "init_state."),
              ("decoder.gru.", "gru."), ("attention.", ""), ("readout.", ""), ("output.", ""))

    @classmethod
    def torch_name(cls, key):
        for ours, theirs in cls.RENAME:
            if key.startswith(ours):
                return theirs + key[len(ours):]
        raise KeyError(key)

    def run(self, gru, x, keep, reverse):
        h = x.new_zeros(x.shape[0], self.hidden)
        states = [None] * x.shape[1]
        for t in (range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])):
            h = torch.where(keep[:, t, None], gru(x[:, t], h), h)
            states[t] = h
        return torch.stack(states, 1)

    def forward(self, source, target, padding):
        keep = ~padding
        annotations = torch.cat([self.run(self.fwd, source, keep, False), self.run(self.bwd, source, keep, True)], 2)
        s = torch.tanh(self.init_state(annotations[:, 0, self.hidden:]))
        previous = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], 1)
        logits, alphas = [], []
        for i in range(target.shape[1]):
            energy = self.v_a(torch.tanh(self.W_a(s)[:, None] + self.U_a(annotations)))[..., 0]
            alpha = torch.softmax(energy.masked_fill(padding, float("-inf")), dim=1)
            c = torch.einsum("bj,bjd->bd", alpha, annotations)
            s_new = self.gru(previous[:, i], s, c)
            read = s if self.readout_state == "prev" else s_new
            t_tilde = self.U_o(read) + self.V_o(previous[:, i]) + self.C_o(c)
            t = t_tilde.view(t_tilde.shape[0], -1, 2).max(dim=2).values
            logits.append(self.W_o(t))
            alphas.append(alpha)
            s = s_new
        return torch.log_softmax(torch.stack(logits, 1), dim=2), torch.stack(alphas, 1)


@pytest.mark.parametrize("readout_state", ["prev", "new"])
def test_bahdanau_matches_torch_twin(readout_state):
    rng = np.random.default_rng(4)
    config = dict(embed_dim=6, hidden=5, vocab=11, align_dim=7, maxout=4)
    params = bah.init(rng, **config)
    source, target = rng.standard_normal((3, 6, 6)), rng.standard_normal((3, 4, 6))
    pad = _padding([6, 4, 2], 6)
    cotangent = rng.standard_normal((3, 4, 11))
    out, g_params, (g_source, g_target) = _ours_with_grads(
        lambda p, s, t: bah.bahdanau(p, s, t, dev(pad), readout_state=readout_state), params,
        [dev(source), dev(target)], cotangent)

    module = TorchRNNsearch(**config, readout_state=readout_state)
    module.load_state_dict({module.torch_name(k): torch.from_numpy(host(v)) for k, v in params.items()}, strict=True)
    ts, tt = _t(source), _t(target)
    theirs, alignment = module(ts, tt, torch.from_numpy(pad))
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "log-probs")
    _assert_close(host(bah.alignment(params, dev(source), dev(target), dev(pad), readout_state=readout_state)),
                  alignment, "alignment")
    _assert_close(host(g_source), ts.grad, "grad of source")
    _assert_close(host(g_target), tt.grad, "grad of target")
    named = dict(module.named_parameters())
    for key in params:
        _assert_close(host(g_params[key]), named[module.torch_name(key)].grad, f"grad of {key}")


# ---------------------------------------------------------------------------------------------
# Show, Attend and Tell

# official gate order (i, f, o, c) -> torch LSTMCell's (i, f, g, o)
_GATES_TO_TORCH = (0, 1, 3, 2)


def _to_torch_gates(matrix, hidden):
    return torch.cat([matrix[k * hidden:(k + 1) * hidden] for k in _GATES_TO_TORCH])


def _from_torch_gates(matrix, hidden):
    blocks = [matrix[k * hidden:(k + 1) * hidden] for k in range(4)]        # i, f, g, o
    return torch.cat([blocks[0], blocks[1], blocks[3], blocks[2]])           # i, f, o, c


class TorchShowAttendTell(nn.Module):
    """arctic-captions' model on torch.nn.LSTMCell (input = [E y_{t-1}; z_t], gates permuted)."""

    def __init__(self, ctx_dim, hidden, embed_dim, vocab):
        super().__init__()
        f64 = dict(dtype=torch.float64)
        self.embedding = nn.Embedding(vocab, embed_dim, **f64)
        self.ff_state, self.ff_memory = nn.Linear(ctx_dim, hidden, **f64), nn.Linear(ctx_dim, hidden, **f64)
        self.lstm = nn.LSTMCell(embed_dim + ctx_dim, hidden, **f64)
        self.Wc_att = nn.Linear(ctx_dim, ctx_dim, **f64)
        self.Wd_att = nn.Linear(hidden, ctx_dim, bias=False, **f64)
        self.U_att = nn.Linear(ctx_dim, 1, **f64)
        self.W_sel = nn.Linear(hidden, 1, **f64)
        self.ff_logit_lstm = nn.Linear(hidden, embed_dim, **f64)
        self.ff_logit_ctx = nn.Linear(ctx_dim, embed_dim, **f64)
        self.ff_logit = nn.Linear(embed_dim, vocab, **f64)
        self.hidden, self.embed_dim = hidden, embed_dim

    def load(self, params):
        p = {k: torch.from_numpy(host(v)) for k, v in params.items()}
        n = self.hidden
        with torch.no_grad():
            for name in ("embedding", "ff_state", "ff_memory", "ff_logit_lstm", "ff_logit_ctx", "ff_logit"):
                for kind, value in getattr(self, name).named_parameters():
                    value.copy_(p[f"{name}.{kind}"])
            for name in ("Wc_att", "Wd_att", "U_att", "W_sel"):
                for kind, value in getattr(self, name).named_parameters():
                    value.copy_(p[f"decoder.{name}.{kind}"])
            self.lstm.weight_ih.copy_(_to_torch_gates(torch.cat([p["decoder.W.weight"], p["decoder.Wc.weight"]], 1), n))
            self.lstm.bias_ih.copy_(_to_torch_gates(p["decoder.W.bias"], n))
            self.lstm.weight_hh.copy_(_to_torch_gates(p["decoder.U.weight"], n))
            self.lstm.bias_hh.zero_()

    def grads(self):
        """Gradients in npattn's names and layout (a parameter the output does not reach: zeros)."""
        n, m = self.hidden, self.embed_dim
        grad = lambda value: torch.zeros_like(value) if value.grad is None else value.grad  # noqa: E731
        out = {}
        for name in ("embedding", "ff_state", "ff_memory", "ff_logit_lstm", "ff_logit_ctx", "ff_logit"):
            for kind, value in getattr(self, name).named_parameters():
                out[f"{name}.{kind}"] = grad(value)
        for name in ("Wc_att", "Wd_att", "U_att", "W_sel"):
            for kind, value in getattr(self, name).named_parameters():
                out[f"decoder.{name}.{kind}"] = grad(value)
        weight_ih = _from_torch_gates(self.lstm.weight_ih.grad, n)
        out["decoder.W.weight"], out["decoder.Wc.weight"] = weight_ih[:, :m], weight_ih[:, m:]
        out["decoder.W.bias"] = _from_torch_gates(self.lstm.bias_ih.grad, n)
        out["decoder.U.weight"] = _from_torch_gates(self.lstm.weight_hh.grad, n)
        return out

    def forward(self, features, captions, padding, samples=None):
        annotations = features.flatten(2).transpose(1, 2)                   # (B, L, D)
        mean = annotations.mean(1)
        h, c = torch.tanh(self.ff_state(mean)), torch.tanh(self.ff_memory(mean))
        words = self.embedding(captions)
        previous = torch.cat([torch.zeros_like(words[:, :1]), words[:, :-1]], 1)
        keys = self.Wc_att(annotations)
        keep = ~padding
        states, contexts, alphas = [], [], []
        for t in range(captions.shape[1]):
            alpha = torch.softmax(self.U_att(torch.tanh(keys + self.Wd_att(h)[:, None]))[..., 0], dim=1)
            weights = alpha if samples is None else samples[:, t].flatten(1)
            z = torch.sigmoid(self.W_sel(h)) * (weights[:, :, None] * annotations).sum(1)
            h_new, c_new = self.lstm(torch.cat([previous[:, t], z], 1), (h, c))
            h, c = torch.where(keep[:, t, None], h_new, h), torch.where(keep[:, t, None], c_new, c)
            states.append(h)
            contexts.append(z)
            alphas.append(alpha)
        logit = self.ff_logit_lstm(torch.stack(states, 1)) + previous + self.ff_logit_ctx(torch.stack(contexts, 1))
        return torch.log_softmax(self.ff_logit(torch.tanh(logit)), dim=2), torch.stack(alphas, 1)


def _sat_case():
    rng = np.random.default_rng(5)
    config = dict(ctx_dim=6, hidden=5, embed_dim=4, vocab=9)
    params = sat.init(rng, **config)
    features = rng.standard_normal((3, 6, 2, 3))
    captions = rng.integers(0, 9, size=(3, 5))
    pad = _padding([5, 3, 4], 5)
    module = TorchShowAttendTell(**config)
    module.load(params)
    return rng, params, features, captions, pad, module


def _official_cost(log_probs, captions, padding):
    """-log(p + 1e-8) * mask, as capgen.build_model (time-major there; the sums below are layout-free)."""
    p = log_probs.exp().gather(2, captions[..., None])[..., 0]
    return -torch.log(p + 1e-8) * (~padding).to(torch.float64)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_show_attend_tell_matches_torch_twin(attention):
    rng, params, features, captions, pad, module = _sat_case()
    samples = np.eye(6)[rng.integers(0, 6, size=(3, 5))].reshape(3, 5, 2, 3) if attention == "hard" else None
    cotangent = rng.standard_normal((3, 5, 9))
    args = (dev(captions), dev(pad), None if samples is None else dev(samples))
    out, g_params, (g_features,) = _ours_with_grads(
        lambda p, f: sat.show_attend_tell(p, f, *args, attention=attention), params, [dev(features)], cotangent)

    tf_ = _t(features)
    theirs, alphas = module(tf_, torch.from_numpy(captions), torch.from_numpy(pad),
                            None if samples is None else torch.from_numpy(samples))
    theirs.backward(torch.from_numpy(cotangent))
    _assert_close(out, theirs, "log-probs")
    maps = host(sat.attention_maps(params, dev(features), *args, attention=attention))
    _assert_close(maps.reshape(3, 5, 6), alphas, "attention maps")
    _assert_close(host(g_features), tf_.grad, "grad of features")
    for key, grad in module.grads().items():
        _assert_close(host(g_params[key]), grad, f"grad of {key}")
    assert set(module.grads()) == set(params)


def test_show_attend_tell_loss_matches_torch_twin():
    _, params, features, captions, pad, module = _sat_case()
    value, grads = ag.value_and_grad(lambda p, f: sat.loss(p, f, dev(captions), dev(pad), alpha_c=0.3),
                                     argnums=(0, 1))(params, dev(features))
    tf_ = _t(features)
    log_probs, alphas = module(tf_, torch.from_numpy(captions), torch.from_numpy(pad))
    cost = _official_cost(log_probs, torch.from_numpy(captions), torch.from_numpy(pad)).sum(1).mean()
    time_major = alphas.transpose(0, 1)                                     # (T, B, L) as in Theano
    total = cost + 0.3 * ((1.0 - time_major.sum(0)) ** 2).sum(0).mean()
    total.backward()
    _assert_close(host(value), total, "loss")
    _assert_close(host(grads[1]), tf_.grad, "grad of features")
    for key, grad in module.grads().items():
        _assert_close(host(grads[0][key]), grad, f"grad of {key}")


def test_hard_attention_gradient_matches_known_grads_in_torch():
    """Official update: grad of the summed NLL with the samples fixed, plus known_grads pushed into alpha."""
    rng, params, features, captions, pad, module = _sat_case()
    samples = sat.sample_attention(params, dev(features), dev(captions), dev(pad), rng=np.random.default_rng(8))
    cost, baseline = np.array([2.0, 1.5, 3.0]), 1.9
    grads = ag.grad(lambda p, f: sat.hard_surrogate(p, f, dev(captions), dev(pad), samples, dev(cost), baseline),
                    argnums=(0, 1))(params, dev(features))

    tf_ = _t(features)
    samples_t = torch.from_numpy(host(samples))
    log_probs, alphas = module(tf_, torch.from_numpy(captions), torch.from_numpy(pad), samples_t)
    nll = _official_cost(log_probs, torch.from_numpy(captions), torch.from_numpy(pad)).sum(1).mean()
    a = alphas.detach()
    s = samples_t.flatten(2)
    known = (baseline - torch.from_numpy(cost))[:, None, None] / 10.0 * (-s / a) + 0.002 * (torch.log(a) + 1)
    torch.autograd.backward([nll, alphas], [torch.ones_like(nll), known])
    _assert_close(host(grads[1]), tf_.grad, "grad of features")
    for key, grad in module.grads().items():
        _assert_close(host(grads[0][key]), grad, f"grad of {key}")


def test_registry_entries_are_the_ones_checked_here():
    for name in ("mha", "transformer", "bahdanau", "show-attend-tell", "show-attend-tell-hard"):
        assert npattn.get(name).family == "origins"
