"""The transformer family against PyTorch twins.

* ``mha-gqa`` against a transcription of Meta's ``llama3/llama/model.py`` ``Attention.forward`` (freqs_cis via
  ``torch.polar``, ``view_as_complex``, ``repeat_kv``, a KV cache of rotated keys, the hstack mask), with
  Qwen3 / OLMo-2 qk-norm through ``torch.nn.functional.rms_norm``; and the same layer through torch SDPA
  (``enable_gqa``, ``is_causal``).  Outputs and gradients w.r.t. x and every parameter, float64, 1e-11.
* ``sdpa`` (ALiBi, GQA, bottom-right causal) against torch SDPA with the ALiBi bias as a float mask.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.transformer import mha_gqa as gqa  # noqa: E402
from tests.conftest import dev, host  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-11


def _freqs_cis(dim, end, theta=500000.0):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
    t = torch.arange(end, dtype=torch.float64)
    return torch.polar(torch.ones(end, dim // 2, dtype=torch.float64), torch.outer(t, freqs))


def _rotary(x, freqs_cis):
    """Meta apply_rotary_emb on x (B, L, H, hd)."""
    x_ = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3)


def _meta_attention(w, x, n_heads, n_kv_heads, start_pos=0, cache=None, qk_norm="none", bias=False, hd=None,
                    eps=1e-6):
    batch, length, dim = x.shape
    hd = hd or dim // n_heads

    def proj(name):
        return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"] if bias else None)

    xq, xk, xv = proj("wq"), proj("wk"), proj("wv")
    if qk_norm == "full":
        xq = F.rms_norm(xq, (xq.shape[-1],), w["q_norm.weight"], eps)
        xk = F.rms_norm(xk, (xk.shape[-1],), w["k_norm.weight"], eps)
    xq, xk, xv = xq.view(batch, length, n_heads, hd), xk.view(batch, length, n_kv_heads, hd), \
        xv.view(batch, length, n_kv_heads, hd)
    if qk_norm == "per-head":
        xq = F.rms_norm(xq, (hd,), w["q_norm.weight"], eps)
        xk = F.rms_norm(xk, (hd,), w["k_norm.weight"], eps)
    freqs = _freqs_cis(hd, start_pos + length)[start_pos:start_pos + length]
    xq, xk = _rotary(xq, freqs), _rotary(xk, freqs)
    keys, values = xk, xv
    if cache is not None:
        keys, values = torch.cat([cache[0], xk], dim=1), torch.cat([cache[1], xv], dim=1)
    rep = n_heads // n_kv_heads
    keys_r = keys[:, :, :, None, :].expand(batch, keys.shape[1], n_kv_heads, rep, hd).reshape(batch, -1, n_heads, hd)
    values_r = values[:, :, :, None, :].expand(batch, keys.shape[1], n_kv_heads, rep, hd).reshape(
        batch, -1, n_heads, hd)
    xq, keys_r, values_r = xq.transpose(1, 2), keys_r.transpose(1, 2), values_r.transpose(1, 2)
    scores = xq @ keys_r.transpose(2, 3) / hd ** 0.5
    if length > 1:
        mask = torch.triu(torch.full((length, length), float("-inf"), dtype=torch.float64), diagonal=1)
        mask = torch.hstack([torch.zeros((length, start_pos), dtype=torch.float64), mask])
        scores = scores + mask
    out = (F.softmax(scores, dim=-1) @ values_r).transpose(1, 2).reshape(batch, length, -1)
    return F.linear(out, w["wo.weight"]), (keys, values)


CONFIGS = {
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "qwen3": dict(n_heads=4, n_kv_heads=2, qk_norm="per-head"),
    "olmo2-bias": dict(n_heads=4, n_kv_heads=2, qk_norm="full", bias=True),
    "head-dim": dict(n_heads=4, n_kv_heads=2, head_dim=6),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mha_gqa_matches_meta_attention(name):
    config = CONFIGS[name]
    params = gqa.init(np.random.default_rng(0), 16, **config)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16))
    cotangent = rng.standard_normal((2, 5, 16))
    weights = {k: torch.tensor(host(v), requires_grad=True) for k, v in params.items()}
    x_t = torch.tensor(x, requires_grad=True)
    out_t, _ = _meta_attention(weights, x_t, config["n_heads"], config["n_kv_heads"], qk_norm=config.get("qk_norm",
                               "none"), bias=config.get("bias", False), hd=config.get("head_dim"))
    out_t.backward(torch.tensor(cotangent))

    def loss(p, x):
        out = gqa.mha_gqa(p, x, **config)
        return ag.sum(out * dev(cotangent)), out

    (_, out), (g_params, g_x) = ag.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, dev(x))
    np.testing.assert_allclose(host(out), out_t.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(host(g_x), x_t.grad.numpy(), rtol=TOL, atol=TOL)
    for key, value in weights.items():
        np.testing.assert_allclose(host(g_params[key]), value.grad.numpy(), rtol=TOL, atol=TOL, err_msg=key)


def test_mha_gqa_cache_matches_meta_with_start_pos():
    """GQA 4:2, start_pos 5: the spec's check of Meta's forward with a KV cache."""
    params = gqa.init(np.random.default_rng(2), 16, n_heads=4, n_kv_heads=2)
    weights = {k: torch.tensor(host(v)) for k, v in params.items()}
    x = np.random.default_rng(3).standard_normal((2, 8, 16))
    _, cache_t = _meta_attention(weights, torch.tensor(x[:, :5]), 4, 2)
    out_t, _ = _meta_attention(weights, torch.tensor(x[:, 5:]), 4, 2, start_pos=5, cache=cache_t)
    _, cache = gqa.mha_gqa_cached(params, dev(x[:, :5]), n_heads=4, n_kv_heads=2)
    out, cache = gqa.mha_gqa_cached(params, dev(x[:, 5:]), cache, n_heads=4, n_kv_heads=2)
    np.testing.assert_allclose(host(out), out_t.numpy(), rtol=TOL, atol=TOL)
    # our cache is (B, Hkv, P, hd); Meta's (B, P, Hkv, hd)
    np.testing.assert_allclose(host(cache[0])[:, :, :5], cache_t[0].numpy().transpose(0, 2, 1, 3), rtol=TOL, atol=TOL)


def test_sdpa_entry_matches_torch_with_an_alibi_float_mask():
    mech = npattn.get("sdpa")
    params = mech.default_params()
    q, k, v = mech.example_input(np.random.default_rng(4))
    slopes = host(params["alibi_slopes"])
    lq, lk = q.shape[2], k.shape[2]
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    off = lk - lq
    bias = -slopes[:, None, None] * np.abs(i + off - j)
    bias = np.where(j <= i + off, bias, -np.inf)
    tensors = [torch.tensor(host(a), requires_grad=True) for a in (q, k, v)]
    out_t = F.scaled_dot_product_attention(*tensors, attn_mask=torch.tensor(bias), enable_gqa=True)
    cotangent = np.random.default_rng(5).standard_normal(out_t.shape)
    out_t.backward(torch.tensor(cotangent))
    grads = ag.grad(lambda q, k, v: ag.sum(mech.apply(params, q, k, v) * dev(cotangent)), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(host(mech.apply(params, q, k, v)), out_t.detach().numpy(), rtol=TOL, atol=TOL)
    for g, t in zip(grads, tensors):
        np.testing.assert_allclose(host(g), t.grad.numpy(), rtol=TOL, atol=TOL)
