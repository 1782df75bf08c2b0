"""What each library's scaled dot-product attention computes, as option sets of the npattn core.

    from npattn.attention import convention, scaled_dot_product_attention as sdpa
    out = sdpa(q, k, v, **convention("flash"), is_causal=True)        # what FlashAttention >= 2.1 computes

Each preset was read from the library source at the version named (shared/specs/attention-core.md §1, which
compared them in float64).  A preset holds only what the library implies; shapes, masks and the options a call
chooses (is_causal, window, softcap, ALiBi slopes, ...) stay the caller's.  ``convention(name, **details)``
translates a library's own argument (an xFormers bias class, a JAX ``local_window_size``, an ONNX past length)
into options too.  docs/attention_conventions.md lists the presets with their sources.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Convention:
    """One library's choices: ``options`` for :func:`autograd.scaled_dot_product_attention`."""

    name: str
    library: str
    sources: tuple
    options: dict = field(default_factory=dict)
    notes: tuple = ()


CONVENTIONS = {
    "torch": Convention(
        name="torch", library="torch 2.13",
        sources=("torch/nn/functional.py scaled_dot_product_attention",
                 "aten/src/ATen/native/transformers/attention.cpp _safe_softmax (PR #133882)",
                 "torch/nn/attention/bias.py causal_upper_left / causal_lower_right"),
        options={"alignment": "top-left", "masked_rows": "zero"},
        notes=("is_causal is top-left; causal_lower_right is alignment='bottom-right'.",
               "A fully masked row (bool, or all -inf float) gives 0 with zero gradients; the CPU flash kernel's "
               "logsumexp is 0 there, npattn's +inf.",
               "No window, softcap or ALiBi; attn_mask together with is_causal is refused by torch (npattn "
               "applies both).")),
    "flash": Convention(
        name="flash", library="flash-attn 2.x (HEAD 0251105)",
        sources=("flash_attn/flash_attn_interface.py", "csrc/flash_attn/flash_api.cpp L130-162, L420-427",
                 "csrc/flash_attn/src/mask.h", "csrc/flash_attn/src/softmax.h L180",
                 "tests/test_flash_attn.py L29, L182, L217"),
        options={"alignment": "bottom-right", "masked_rows": "zero", "window_unbounded": "seqlen_k",
                 "alibi_form": "flash"},
        notes=("Causal and window_size are bottom-right (>= 2.1); causal == window (-1, 0).",
               "window_size: a side >= seqlen_k becomes -1, then a -1 beside a bounded side becomes seqlen_k, so "
               "with Lq > Lk a window (l, -1) drops the last keys of rows i < Lq - Lk - 1.",
               "softcap c * tanh(S / c) on the scaled logits before ALiBi; softcap with dropout is refused.",
               "ALiBi: -m|i + Lk - Lq - j| outside the causal kernel, +m*j inside it (alibi_form='flash').",
               "Empty rows: output 0, softmax_lse +inf; lse layout (B, H, Lq), (H, total_q) for varlen.",
               "Dropout draws from a Philox RNG: pass its keep mask (return_attn_probs / dropout pattern).")),
    "xformers": Convention(
        name="xformers", library="xformers 0.0.35",
        sources=("xformers/ops/fmha/attn_bias.py (the classes live in mslk.attention.fmha.attn_bias)",
                 "xformers/attn_bias_utils.py ref_attention"),
        options={"masked_rows": "nan"},
        notes=("The alignment depends on the bias class: pass convention('xformers', attn_bias=<class name>, ...) "
               "(the XFORMERS_BIASES table).",
               "A local window_size W counts the diagonal: window (W - 1, 0).",
               "ref_attention gives NaN for a fully masked row (a docstring calls the case 'not defined').",
               "BlockDiagonal* masks on a batch-1 packed tensor == cu_seqlens_q / cu_seqlens_k.")),
    "jax": Convention(
        name="jax", library="jax 0.10.2",
        sources=("jax/_src/nn/functions.py dot_product_attention, _dot_product_attention_core, _apply_masks",),
        options={"alignment": "top-left", "masked_rows": "uniform"},
        notes=("is_causal and local_window_size are top-left; an int w is the window (w, w).",
               "Masked logits become -0.7 * finfo(float32).max (also in float64), so an empty row is uniform "
               "over all keys (the mean of V); rows past query_seq_lengths are zeroed afterwards.",
               "The softmax always runs in float32: float64 agreement is about 1e-7.",
               "A row that is -inf only through bias gives NaN in JAX (only the boolean mask triggers the "
               "uniform rule); npattn applies 'uniform' to every empty row.",
               "Dv must equal D.")),
    "onnx": Convention(
        name="onnx", library="onnx 1.23.2 (Attention-23/24/25)",
        sources=("onnx/reference/ops/op_attention.py",),
        options={"alignment": "top-left", "masked_rows": "zero"},
        notes=("is_causal is top-left without past_key; with it the diagonal is offset by the past length: "
               "convention('onnx', past_length=P).",
               "Q and K are each scaled by sqrt(scale); softcap before the mask since PR #7867 (April 2026) -- "
               "the older order turned -inf into -c.",
               "A short attn_mask is padded with False / -inf.",
               "Attention-24 adds nonpad_kv_seqlen (a key padding mask), Attention-25 the window attributes.")),
}

#: xFormers attention-bias classes (0.0.35) as npattn options; ``W`` is the class's window_size.
XFORMERS_BIASES = {
    "LowerTriangularMask": {"is_causal": True, "alignment": "top-left"},
    "LowerTriangularMaskWithTensorBias": {"is_causal": True, "alignment": "top-left", "bias": "<the tensor>"},
    "LowerTriangularFromBottomRightMask": {"is_causal": True, "alignment": "bottom-right"},
    "LowerTriangularFromBottomRightLocalAttentionMask": {"is_causal": True, "alignment": "bottom-right",
                                                          "window": ("W - 1", 0)},
    "LocalAttentionFromBottomRightMask": {"alignment": "bottom-right", "window": ("window_left", "window_right")},
    "BlockDiagonalMask": {"cu_seqlens": True},
    "BlockDiagonalCausalMask": {"cu_seqlens": True, "is_causal": True, "alignment": "top-left"},
    "BlockDiagonalCausalFromBottomRightMask": {"cu_seqlens": True, "is_causal": True, "alignment": "bottom-right"},
    "BlockDiagonalCausalLocalAttentionMask": {"cu_seqlens": True, "is_causal": True, "alignment": "top-left",
                                              "window": ("W - 1", 0)},
    "BlockDiagonalCausalLocalAttentionFromBottomRightMask": {"cu_seqlens": True, "is_causal": True,
                                                             "alignment": "bottom-right", "window": ("W - 1", 0)},
    "BlockDiagonalCausalWithOffsetPaddedKeysMask": {"is_causal": True, "alignment": "bottom-right",
                                                    "key_padding_mask": "right padding"},
}


def convention(name: str, *, attn_bias: str | None = None, window_size: int | None = None,
               window_left: int | None = None, window_right: int | None = None, local_window_size=None,
               past_length: int | None = None) -> dict:
    """The option set of library ``name`` ('torch', 'flash', 'xformers', 'jax', 'onnx') as a fresh dict.

    Library arguments translated to options:
        xformers: ``attn_bias`` (a class name of :data:`XFORMERS_BIASES`) with ``window_size`` W or
            ``window_left``/``window_right``; the varlen classes need cu_seqlens_q/k in the call, the tensor
            bias and the padded keys their own arguments.
        jax: ``local_window_size`` (an int w is (w, w), or a pair).
        onnx: ``past_length`` P (with past_key): the diagonal offset P.
    """
    if name not in CONVENTIONS:
        raise ValueError(f"convention: name must be one of {sorted(CONVENTIONS)}, got {name!r}")
    options = dict(CONVENTIONS[name].options)
    extra = {"attn_bias": attn_bias, "window_size": window_size, "window_left": window_left,
             "window_right": window_right, "local_window_size": local_window_size, "past_length": past_length}
    allowed = {"xformers": ("attn_bias", "window_size", "window_left", "window_right"),
               "jax": ("local_window_size",), "onnx": ("past_length",)}.get(name, ())
    given = [k for k, value in extra.items() if value is not None]
    wrong = [k for k in given if k not in allowed]
    if wrong:
        raise ValueError(f"convention: {wrong} do not apply to {name!r}"
                         + (f" (it takes {list(allowed)})" if allowed else ""))
    if name == "xformers" and attn_bias is not None:
        options.update(_xformers(attn_bias, window_size, window_left, window_right))
    if name == "jax" and local_window_size is not None:
        window = local_window_size
        if isinstance(window, numbers.Integral):
            window = (window, window)
        options["window"] = tuple(int(w) for w in window)
    if name == "onnx" and past_length is not None:
        if not isinstance(past_length, numbers.Integral) or past_length < 0:
            raise ValueError(f"convention: past_length must be an int >= 0, got {past_length!r}")
        options["alignment"] = int(past_length)
    return options


def _xformers(attn_bias: str, window_size, window_left, window_right) -> dict:
    if attn_bias not in XFORMERS_BIASES:
        raise ValueError(f"convention: attn_bias must be one of {sorted(XFORMERS_BIASES)}, got {attn_bias!r}")
    table = XFORMERS_BIASES[attn_bias]
    options = {k: table[k] for k in ("is_causal", "alignment") if k in table}
    window = table.get("window")
    if window == ("W - 1", 0):
        if not isinstance(window_size, numbers.Integral) or window_size < 1:
            raise ValueError(f"convention: {attn_bias} needs window_size (an int >= 1), got {window_size!r}")
        options["window"] = (int(window_size) - 1, 0)
    elif window is not None:
        if window_left is None or window_right is None:
            raise ValueError(f"convention: {attn_bias} needs window_left and window_right")
        options["window"] = (int(window_left), int(window_right))
    return options


__all__ = ["CONVENTIONS", "Convention", "XFORMERS_BIASES", "convention"]
