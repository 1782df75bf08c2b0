"""npattn.interop.torch: state_dict conversion both ways and compare()'s report."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict, to_torch_state_dict  # noqa: E402

pytestmark = pytest.mark.torch


class TorchSE(torch.nn.Module):
    """An independent SE twin with npattn's parameter names."""

    def __init__(self, channels, reduction, pool="avg"):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, channels // reduction)
        self.fc2 = torch.nn.Linear(channels // reduction, channels)
        self.pool = pool

    def forward(self, x):
        z = x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))[..., None, None]


def test_state_dict_roundtrip():
    params = npattn.get("se").default_params(seed=4)
    back = from_torch_state_dict("se", to_torch_state_dict(params))
    assert back.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(npattn.testing.to_host(back[k]), npattn.testing.to_host(params[k]))


def test_missing_keys_are_an_error():
    sd = to_torch_state_dict(npattn.get("se").default_params())
    sd.pop("fc2.bias")
    with pytest.raises(KeyError, match="missing"):
        from_torch_state_dict("se", sd)


def test_compare_agrees_with_a_correct_twin():
    torch.manual_seed(0)
    module = TorchSE(32, 4).double()
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)))
    assert report.ok, str(report)
    assert len(report.rows) == 6  # output, input grad, 4 parameter grads


def test_compare_catches_a_subtle_bug():
    torch.manual_seed(0)
    module = TorchSE(32, 4, pool="max").double()  # max instead of average squeeze
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)))
    assert not report.ok
    assert "DISAGREE" in str(report) and "[XX] output" in str(report)


# ---------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention's fused layout (mha, transformer)


class OutputOnly(torch.nn.MultiheadAttention):
    """torch's MHA returning only the attended values (compare() expects one tensor)."""

    def forward(self, query, key, value):
        return super().forward(query, key, value, need_weights=False)[0]


@pytest.mark.parametrize("bias", [False, True])
def test_mha_from_torch_multihead_attention(bias):
    torch.manual_seed(0)
    module = OutputOnly(16, 2, bias=bias, batch_first=True).double()
    config = {"d_model": 16, "attn_bias": bias}
    params = from_torch_state_dict("mha", module.state_dict(), config=config)
    assert sorted(params) == sorted(npattn.get("mha").init(np.random.default_rng(0), **config))
    w_k = npattn.testing.to_host(params["w_k.weight"])
    np.testing.assert_array_equal(w_k, module.in_proj_weight.detach().numpy()[16:32])  # rows K of cat(Q, K, V)

    rng = np.random.default_rng(1)
    query, key = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 7, 16))
    report = compare(module, "mha", query, key, key.copy(), config=config, heads=2)
    assert report.ok, str(report)
    # output, 3 input grads, then every npattn parameter's grad (a block of in_proj's for Q, K, V)
    assert len(report.rows) == 4 + (8 if bias else 4)
    assert "grad w_v.weight" in str(report)


def test_mha_state_dict_back_to_torch_loads_strictly():
    params = npattn.get("mha").init(np.random.default_rng(3), 16, attn_bias=True)
    state = to_torch_state_dict(params, name="mha")
    assert sorted(state) == ["in_proj_bias", "in_proj_weight", "out_proj.bias", "out_proj.weight"]
    module = torch.nn.MultiheadAttention(16, 2, batch_first=True).double()
    module.load_state_dict(state, strict=True)
    back = from_torch_state_dict("mha", module.state_dict(), config={"d_model": 16, "attn_bias": True})
    for k in params:
        np.testing.assert_array_equal(npattn.testing.to_host(back[k]), npattn.testing.to_host(params[k]))


def test_transformer_state_dict_of_torch_layers_and_the_final_norm_it_lacks():
    torch.manual_seed(0)
    config = {"d_model": 16, "d_ff": 32, "num_layers": 2, "attn_bias": True}
    model = torch.nn.Transformer(16, 2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                                 batch_first=True).double()
    # torch.nn.Transformer adds a final LayerNorm after each stack; npattn's (the paper's) stack has none
    with pytest.raises(KeyError, match=r"unexpected \['decoder.norm.bias'"):
        from_torch_state_dict("transformer", model.state_dict(), config=config)
    layers = {k: v for k, v in model.state_dict().items() if ".norm." not in k}
    params = from_torch_state_dict("transformer", layers, config=config)
    assert "decoder.layers.1.multihead_attn.w_q.weight" in params
    state = to_torch_state_dict(params, name="transformer")
    assert state.keys() == layers.keys()
    for k in state:
        torch.testing.assert_close(state[k], layers[k], rtol=0, atol=0)
