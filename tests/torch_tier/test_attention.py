"""autograd.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention (torch 2.13).

Every option torch has: boolean and float masks (fully masked rows included: torch >= 2.5 returns 0 with zero
gradients, npattn's 'zero' policy), is_causal (top-left), ``causal_lower_right`` (bottom-right), scale,
enable_gqa, Dv != D, dropout with an explicit mask (``aten._scaled_dot_product_attention_math``'s
``dropout_mask``), and the logsumexp of torch's CPU flash kernel.  Outputs and the gradients w.r.t. q, k, v
and the float mask, float64, both npattn implementations, 1e-12.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.bias import causal_lower_right, causal_upper_left  # noqa: E402

import autograd as ag  # noqa: E402
from autograd.attention import scaled_dot_product_attention as sdpa  # noqa: E402
from npattn.testing import assert_close  # noqa: E402
from tests.conftest import dev, host  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-12
IMPLEMENTATIONS = ("materialised", "chunked")
BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}


def _data(rng, batch=2, heads=4, kv_heads=4, query_length=5, key_length=7, dim=8, value_dim=8):
    return (rng.standard_normal((batch, heads, query_length, dim)),
            rng.standard_normal((batch, kv_heads, key_length, dim)),
            rng.standard_normal((batch, kv_heads, key_length, value_dim)))


def _torch_run(q, k, v, mask=None, cotangent=None, backend="math", **kwargs):
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    mask_t = None
    if mask is not None and not isinstance(mask, np.ndarray):
        mask_t = mask
    elif mask is not None:
        mask_t = torch.tensor(mask, requires_grad=mask.dtype != bool)
    with sdpa_kernel(BACKENDS[backend]):
        out = F.scaled_dot_product_attention(*tensors, attn_mask=mask_t, **kwargs)
    out.backward(torch.tensor(cotangent))
    grads = [t.grad.numpy() for t in tensors]
    if isinstance(mask_t, torch.Tensor) and mask_t.requires_grad:
        grads.append(mask_t.grad.numpy())
    return out.detach().numpy(), grads


def _ours(q, k, v, mask=None, cotangent=None, implementation="materialised", **kwargs):
    float_mask = mask is not None and mask.dtype != bool

    def loss(q, k, v, *mask_arg):
        out = sdpa(q, k, v, attn_mask=mask_arg[0] if mask_arg else (dev(mask) if mask is not None else None),
                   implementation=implementation, chunk_size=(2, 3), **kwargs)
        return ag.sum(out * dev(cotangent)), out

    args = [dev(a) for a in (q, k, v)] + ([dev(mask)] if float_mask else [])
    (_, out), grads = ag.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True)(*args)
    return host(out), [host(g) for g in grads]


def _compare(ours, theirs):
    assert_close(ours[0], theirs[0], rtol=TOL, atol=TOL, name="output")
    assert len(ours[1]) == len(theirs[1])
    for i, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert_close(a, b, rtol=TOL, atol=TOL, name=f"gradient {i}")


CASES = {
    "plain": ({}, {}),
    "scale": ({}, dict(scale=0.3)),
    "dv-ne-d": (dict(dim=6, value_dim=3), {}),
    "gqa": (dict(kv_heads=2), dict(enable_gqa=True)),
    "mqa-causal": (dict(kv_heads=1, query_length=7), dict(enable_gqa=True, is_causal=True)),
    "causal-long-k": ({}, dict(is_causal=True)),
    "causal-long-q": (dict(query_length=9, key_length=4), dict(is_causal=True)),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("backend", ["math", "flash"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, backend, implementation):
    shapes, kwargs = CASES[case]
    if backend == "flash" and shapes.get("value_dim", 8) != shapes.get("dim", 8):
        pytest.skip("torch's CPU flash kernel needs Dv == D (it falls back to math)")
    rng = np.random.default_rng(0)
    q, k, v = _data(rng, **shapes)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    ours_kwargs = dict(kwargs)
    if kwargs.get("is_causal"):
        ours_kwargs["alignment"] = "top-left"    # torch's is_causal
    _compare(_ours(q, k, v, cotangent=cotangent, implementation=implementation, **ours_kwargs),
             _torch_run(q, k, v, cotangent=cotangent, backend=backend, **kwargs))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["bool", "float", "bool-empty-rows", "float-inf-rows"])
def test_masks_match_torch(kind, implementation):
    """Masks broadcast from (Lq, Lk) and (B, 1, Lq, Lk); empty rows: zero output and zero gradients in both."""
    rng = np.random.default_rng(1)
    q, k, v = _data(rng, kv_heads=4)
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    if kind.startswith("bool"):
        mask = rng.random((2, 1, 5, 7)) > 0.4
        if kind == "bool-empty-rows":
            mask[:, :, 3] = False
    else:
        mask = rng.standard_normal((5, 7))
        if kind == "float-inf-rows":
            mask[1] = -np.inf
            mask[2, ::2] = -np.inf
    theirs = _torch_run(q, k, v, mask=mask, cotangent=cotangent)
    ours = _ours(q, k, v, mask=mask, cotangent=cotangent, implementation=implementation)
    _compare(ours, theirs)
    if "empty" in kind or "inf" in kind:
        row = 3 if kind == "bool-empty-rows" else 1
        assert np.all(ours[0][:, :, row] == 0.0) and np.all(ours[1][0][:, :, row] == 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("lengths", [(5, 7), (7, 5), (6, 6)])
def test_causal_bias_objects(lengths, implementation):
    """torch.nn.attention.bias.causal_upper_left == 'top-left', causal_lower_right == 'bottom-right'."""
    rng = np.random.default_rng(2)
    q, k, v = _data(rng, query_length=lengths[0], key_length=lengths[1])
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    for bias, alignment in ((causal_upper_left(*lengths), "top-left"), (causal_lower_right(*lengths), "bottom-right")):
        # with Lq > Lk the lower-right bias leaves the first Lq - Lk rows empty: torch 2.13 returns 0 there (its
        # warning still promises NaN), as npattn's default 'zero' policy does
        _compare(_ours(q, k, v, cotangent=cotangent, implementation=implementation, is_causal=True,
                       alignment=alignment), _torch_run(q, k, v, mask=bias, cotangent=cotangent))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("gqa", [False, True])
def test_dropout_with_an_explicit_mask_matches_torch_math(gqa, implementation):
    """aten._scaled_dot_product_attention_math(..., dropout_mask=keep): P * keep / (1 - p)."""
    rng = np.random.default_rng(3)
    q, k, v = _data(rng, kv_heads=2 if gqa else 4)
    keep = rng.random((2, 4, 5, 7)) > 0.3
    p = 0.3
    cotangent = rng.standard_normal(q.shape[:3] + (v.shape[-1],))
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out_t, _ = torch.ops.aten._scaled_dot_product_attention_math(*tensors, None, p, False,
                                                                   dropout_mask=torch.tensor(keep), enable_gqa=gqa)
    out_t.backward(torch.tensor(cotangent))
    theirs = (out_t.detach().numpy(), [t.grad.numpy() for t in tensors])
    ours = _ours(q, k, v, cotangent=cotangent, implementation=implementation, dropout_p=p,
                 dropout_mask=dev(keep), enable_gqa=gqa)
    _compare(ours, theirs)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("causal", [False, True])
def test_lse_matches_torch_cpu_flash_kernel(causal, implementation):
    """_scaled_dot_product_flash_attention_for_cpu returns (out, logsumexp (B, H, Lq)), natural log."""
    rng = np.random.default_rng(4)
    q, k, v = _data(rng, query_length=6, key_length=6)
    tensors = [torch.tensor(a) for a in (q, k, v)]
    out_t, lse_t = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*tensors, 0.0, causal)
    out, lse = sdpa(*(dev(a) for a in (q, k, v)), is_causal=causal, return_lse=True, implementation=implementation)
    assert_close(out, out_t, rtol=TOL, atol=TOL)
    assert_close(lse, lse_t, rtol=TOL, atol=TOL)


def test_assert_close_reports_a_wrong_answer_against_torch():
    rng = np.random.default_rng(5)
    q, k, v = _data(rng, query_length=4, key_length=6)
    theirs = F.scaled_dot_product_attention(*(torch.tensor(a) for a in (q, k, v)), is_causal=True)
    wrong = sdpa(*(dev(a) for a in (q, k, v)), is_causal=True, alignment="bottom-right")
    with pytest.raises(AssertionError, match="elements differ"):
        assert_close(wrong, theirs, rtol=TOL, atol=TOL)
