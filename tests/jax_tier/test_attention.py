"""autograd.scaled_dot_product_attention against jax.nn.dot_product_attention (jax 0.10.2, CPU jaxlib, x64).

JAX's options: a boolean mask (True = attend), a float ``bias``, ``is_causal`` (top-left), ``local_window_size``
(top-left; an int w is (w, w)), key/query sequence lengths, grouped-query heads -- with npattn's ``jax``
convention (top-left, empty rows uniform).  Layout: JAX takes (B, L, H, D), npattn (B, H, L, D).

Tolerance: JAX computes its softmax in float32 even under ``jax_enable_x64`` (``_dot_product_attention_core``
casts the logits), so float64 agreement is about 1e-7 (shared/specs/attention-core.md); the checks use
rtol = atol = 2e-6, which a wrong convention (tiled GQA, another alignment, a dropped bias) misses by far
(``test_the_tolerance_still_catches_a_wrong_convention``).  Gradients: w.r.t. q, k, v and the bias.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

import autograd as ag  # noqa: E402
from npattn.attention import convention  # noqa: E402
from npattn.attention import scaled_dot_product_attention as sdpa  # noqa: E402
from npattn.testing import assert_close  # noqa: E402
from tests.conftest import dev, host  # noqa: E402

pytestmark = pytest.mark.jax
TOL = 2e-6
IMPLEMENTATIONS = ("materialised", "chunked")


def _to_jax(a):
    return jnp.asarray(np.swapaxes(a, 1, 2))        # (B, H, L, D) -> (B, L, H, D)


def _data(rng, heads=4, kv_heads=2, query_length=5, key_length=7, dim=8):
    return (rng.standard_normal((2, heads, query_length, dim)), rng.standard_normal((2, kv_heads, key_length, dim)),
            rng.standard_normal((2, kv_heads, key_length, dim)))


def _jax_run(q, k, v, cotangent, bias=None, **kwargs):
    def f(q, k, v, bias):
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla", **kwargs)
        return jnp.sum(out * _to_jax(cotangent)), out

    args = (_to_jax(q), _to_jax(k), _to_jax(v), None if bias is None else jnp.asarray(bias))
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    (_, out), grads = jax.value_and_grad(f, argnums=argnums, has_aux=True)(*args)
    grads = [np.swapaxes(np.asarray(g), 1, 2) for g in grads[:3]] + [np.asarray(g) for g in grads[3:]]
    return np.swapaxes(np.asarray(out), 1, 2), grads


def _ours(q, k, v, cotangent, implementation, bias=None, **kwargs):
    def loss(q, k, v, *bias_arg):
        out = sdpa(q, k, v, enable_gqa=True, implementation=implementation, chunk_size=(2, 3),
                   bias=bias_arg[0] if bias_arg else None, **{**convention("jax"), **kwargs})
        return ag.sum(out * dev(cotangent)), out

    args = [dev(q), dev(k), dev(v)] + ([dev(bias)] if bias is not None else [])
    (_, out), grads = ag.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True)(*args)
    return host(out), [host(g) for g in grads]


def _compare(ours, theirs):
    assert_close(ours[0], theirs[0], rtol=TOL, atol=TOL, name="output")
    for i, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert_close(a, b, rtol=TOL, atol=TOL, name=f"gradient {i}")


CASES = {
    "plain": ({}, {}, {}),
    "causal-long-k": ({}, dict(is_causal=True), dict(is_causal=True)),
    "causal-long-q": (dict(query_length=9, key_length=4), dict(is_causal=True), dict(is_causal=True)),
    "window-int": ({}, dict(local_window_size=1), dict(window=(1, 1))),
    "window-pair": (dict(query_length=7), dict(local_window_size=(2, 0)), dict(window=(2, 0))),
    "mqa-causal-window": (dict(kv_heads=1), dict(is_causal=True, local_window_size=(1, 3)),
                          dict(is_causal=True, window=(1, 3))),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_jax(case, implementation):
    shapes, theirs_kwargs, ours_kwargs = CASES[case]
    rng = np.random.default_rng(0)
    q, k, v = _data(rng, **shapes)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    _compare(_ours(q, k, v, cotangent, implementation, **ours_kwargs), _jax_run(q, k, v, cotangent, **theirs_kwargs))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_mask_bias_and_empty_rows_match_jax(implementation):
    """A boolean mask with fully masked rows (JAX: uniform over all keys) and a float bias (4-D, broadcast)."""
    rng = np.random.default_rng(1)
    q, k, v = _data(rng)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    mask = rng.random((2, 1, 5, 7)) > 0.4
    mask[:, :, 2] = False
    bias = rng.standard_normal((1, 4, 5, 7))
    theirs = _jax_run(q, k, v, cotangent, bias=bias, mask=jnp.asarray(mask))
    ours = _ours(q, k, v, cotangent, implementation, bias=bias, attn_mask=dev(mask))
    _compare(ours, theirs)
    np.testing.assert_allclose(ours[0][:, :, 2], np.repeat(v.mean(axis=2), 2, axis=1), rtol=1e-13)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_key_value_seq_lengths_match_a_padding_mask(implementation):
    rng = np.random.default_rng(2)
    q, k, v = _data(rng)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    lengths = np.array([7, 3], dtype=np.int32)
    theirs = _jax_run(q, k, v, cotangent, key_value_seq_lengths=jnp.asarray(lengths), is_causal=True)
    padding = np.arange(7)[None, :] >= lengths[:, None]
    _compare(_ours(q, k, v, cotangent, implementation, key_padding_mask=dev(padding), is_causal=True), theirs)


def test_the_tolerance_still_catches_a_wrong_convention():
    rng = np.random.default_rng(3)
    q, k, v = _data(rng)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    theirs = _jax_run(q, k, v, cotangent, is_causal=True)
    wrong_alignment = _ours(q, k, v, cotangent, "materialised", is_causal=True, alignment="bottom-right")
    tiled = _ours(q, np.tile(k, (1, 2, 1, 1)), np.tile(v, (1, 2, 1, 1)), cotangent, "materialised", is_causal=True)
    for wrong in (wrong_alignment, tiled):
        with pytest.raises(AssertionError, match="elements differ"):
            assert_close(wrong[0], theirs[0], rtol=TOL, atol=TOL)


def test_assert_close_accepts_jax_arrays():
    rng = np.random.default_rng(4)
    q, k, v = _data(rng, kv_heads=4)
    theirs = jax.nn.dot_product_attention(_to_jax(q), _to_jax(k), _to_jax(v))
    ours = sdpa(dev(q), dev(k), dev(v))
    assert_close(ours, jnp.swapaxes(theirs, 1, 2), rtol=TOL, atol=TOL)
    with pytest.raises(AssertionError, match="elements differ"):
        assert_close(ours, jnp.swapaxes(theirs, 1, 2) + 1e-3, rtol=TOL, atol=TOL)
