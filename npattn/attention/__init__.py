"""The attention core with every major library's conventions, rotary embeddings and ALiBi.

    from npattn.attention import scaled_dot_product_attention as sdpa, convention, alibi_slopes, apply_rope
    out = sdpa(q, k, v, **convention("flash"), is_causal=True)

``scaled_dot_product_attention`` is :func:`autograd.scaled_dot_product_attention` (torch's arguments plus the
options of shared/specs/attention-core.md); :mod:`.conventions` holds each library's option set with the
version and source it was read from; :mod:`.rope` and :mod:`.alibi` the positional encodings.
"""
from __future__ import annotations

from autograd.attention import scaled_dot_product_attention

from .alibi import alibi_slopes
from .conventions import CONVENTIONS, XFORMERS_BIASES, Convention, convention
from .rope import (
    apply_rope,
    apply_rope_2d,
    init_rope_mixed,
    inverse_frequencies,
    mixed_from_official,
    rope_2d_angles,
    rope_angles,
    rope_mixed_angles,
    rotate,
)

__all__ = ["CONVENTIONS", "Convention", "XFORMERS_BIASES", "alibi_slopes", "apply_rope", "apply_rope_2d",
    "convention", "init_rope_mixed", "inverse_frequencies", "mixed_from_official", "rope_2d_angles",
    "rope_angles", "rope_mixed_angles", "rotate", "scaled_dot_product_attention"]
