"""npattn.interop.torch: state_dict conversion both ways and compare()'s report."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npattn  # noqa: E402
from npattn.interop.torch import compare, from_torch_state_dict, to_torch_state_dict  # noqa: E402

pytestmark = pytest.mark.torch

SE_CONFIG = {"channels": 32, "reduction": 4}


class TorchSE(torch.nn.Module):
    """An independent SE twin with npattn's parameter names."""

    def __init__(self, channels, reduction, pool="avg", bias=True):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, channels // reduction, bias=bias)
        self.fc2 = torch.nn.Linear(channels // reduction, channels, bias=bias)
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
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)), config=SE_CONFIG)
    assert report.ok, str(report)
    assert report.compared == ["output", "grad input 0", "grad fc1.weight", "grad fc1.bias", "grad fc2.weight",
                               "grad fc2.bias"]


def test_compare_catches_a_subtle_bug():
    torch.manual_seed(0)
    module = TorchSE(32, 4, pool="max").double()  # max instead of average squeeze
    report = compare(module, "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)), config=SE_CONFIG)
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


# ---------------------------------------------------------------------------------------------
# compare() fails closed: every tensor it should compare is a row, anything it cannot compare fails


def _x(shape=(2, 32, 5, 6), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_compare_refuses_a_module_with_an_unmapped_parameter_or_buffer():
    module = TorchSE(32, 4).double()
    module.extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # used by nothing npattn knows
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        compare(module, "se", _x(), config=SE_CONFIG)
    module = TorchSE(32, 4).double()
    module.register_buffer("scale", torch.ones(1, dtype=torch.float64))
    with pytest.raises(KeyError, match=r"unexpected \['scale'\]"):
        compare(module, "se", _x(), config=SE_CONFIG)


def test_compare_refuses_a_key_map_to_or_from_a_name_that_does_not_exist():
    module = TorchSE(32, 4).double()
    with pytest.raises(KeyError, match="key_map maps 'fc1.wieght'.*did you mean 'fc1.weight'"):
        compare(module, "se", _x(), key_map={"fc1.wieght": "fc1.weight"}, config=SE_CONFIG)
    with pytest.raises(KeyError, match=r"missing \['fc1.weight'\], unexpected \['fc9.weight'\]"):
        compare(module, "se", _x(), key_map={"fc1.weight": "fc9.weight"}, config=SE_CONFIG)


def test_compare_refuses_a_module_of_another_configuration():
    module = TorchSE(32, 8).double()  # reduction 8, compared as the default reduction 4 (SE_CONFIG)
    with pytest.raises(ValueError, match="'fc1.weight' must have shape \\(8, 32\\).*got \\(4, 32\\)"):
        compare(module, "se", _x(), config=SE_CONFIG)
    assert compare(module, "se", _x(), config={"channels": 32, "reduction": 8}).ok


def test_compare_with_the_configuration_of_a_bias_free_module():
    module = TorchSE(32, 4, bias=False).double()
    with pytest.raises(KeyError, match="missing.*fc1.bias"):  # the default configuration has biases
        compare(module, "se", _x(), config=SE_CONFIG)
    report = compare(module, "se", _x(), config={**SE_CONFIG, "bias": False})
    assert report.ok, str(report)
    assert report.compared == ["output", "grad input 0", "grad fc1.weight", "grad fc2.weight"]


class DetachedBiasSE(TorchSE):
    """Right forward, wrong backward: fc1's bias is detached, so torch gives it no gradient."""

    def forward(self, x):
        z = x.mean((2, 3))
        hidden = torch.relu(torch.nn.functional.linear(z, self.fc1.weight, self.fc1.bias.detach()))
        return x * torch.sigmoid(self.fc2(hidden))[..., None, None]


def test_compare_fails_a_parameter_whose_gradient_torch_does_not_produce():
    report = compare(DetachedBiasSE(32, 4).double(), "se", _x(), config=SE_CONFIG)
    assert not report.ok
    failing = [what for what, ok, _ in report.rows if not ok]
    assert failing == ["grad fc1.bias"], str(report)


def test_compare_fails_a_perturbed_parameter_use():
    class ScaledBiasSE(TorchSE):
        def forward(self, x):
            z = x.mean((2, 3))
            hidden = torch.relu(torch.nn.functional.linear(z, self.fc1.weight, self.fc1.bias * (1 + 1e-6)))
            return x * torch.sigmoid(self.fc2(hidden))[..., None, None]

    report = compare(ScaledBiasSE(32, 4).double(), "se", _x(), config=SE_CONFIG)
    assert not report.ok and "[XX] output" in str(report)


def test_compare_includes_frozen_parameters_and_leaves_the_callers_module_alone():
    torch.manual_seed(0)
    module = TorchSE(32, 4).double()
    module.fc1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    report = compare(module, "se", _x(), config=SE_CONFIG, train=True)
    assert report.ok and "grad fc1.weight" in report.compared, str(report)
    assert module.training and not module.fc1.weight.requires_grad  # mode and flags as they were
    assert all(p.grad is None for p in module.parameters())
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_compare_config_and_options_must_agree():
    with pytest.raises(ValueError, match="disagree on variant"):
        compare(TorchSE(32, 4).double(), "danet-cam", _x(), config={"variant": "cam"}, variant="pam")


def test_compare_needs_one_output_tensor():
    class Pair(TorchSE):
        def forward(self, x):
            return super().forward(x), x

    with pytest.raises(TypeError, match="returned tuple"):
        compare(Pair(32, 4).double(), "se", _x(), config=SE_CONFIG)


# ---------------------------------------------------------------------------------------------
# APNB: one query/key transform under two names (the official module's f_query is its f_key)


def _apnb(call_twice=True, tied=True):
    from tests.torch_tier.test_self_attention import TorchAPNB

    torch.manual_seed(0)
    module = TorchAPNB(16, 8, 8, call_twice=call_twice).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode really uses them
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.3)
    if not tied:  # equal values, but a separate module: not an APNB
        stage = module.stages[0]
        stage.f_query = copy.deepcopy(stage.f_key)
    return module


APNB_CONFIG = {"channels": 16, "key_channels": 8, "value_channels": 8, "zero_init": False}


def _rows_cover_every_parameter(report, params):
    for key, value in params.items():
        kinds = ("grad",) if key.endswith((".weight", ".bias")) else ("running", "buffer")
        assert any(row.split(" ")[0] in kinds and row.split(" ")[1] == key for row in report.compared), (key, report)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_apnb_official_state_dict_imports_and_every_gradient_is_compared(train):
    module = _apnb()
    state = module.state_dict()
    assert "stages.0.f_query.0.weight" in state  # the official layout lists the alias
    params = from_torch_state_dict("ann-apnb", state, config=APNB_CONFIG)
    assert not any(".f_query." in k for k in params)
    assert sorted(params) == sorted(npattn.get("ann-apnb").default_params())
    # the export adds the alias back; the module loads it strictly
    module.load_state_dict(to_torch_state_dict(params, name="ann-apnb"), strict=True)

    report = compare(module, "ann-apnb", _x((2, 16, 9, 9)), train=train, config=APNB_CONFIG, query_key_bn_updates=2)
    assert report.ok, str(report)
    _rows_cover_every_parameter(report, params)
    assert "grad stages.0.f_key.0.weight (torch stages.0.f_key.0.weight, stages.0.f_query.0.weight)" in report.compared


def test_apnb_with_a_key_map_to_the_shared_names_compares_the_shared_gradients():
    """The reproduction of issue 13: key-mapping f_query onto f_key reported AGREE with no f_key gradient."""
    module = _apnb()
    key_map = {k: k.replace(".f_query.", ".f_key.") for k in module.state_dict() if ".f_query." in k}
    report = compare(module, "ann-apnb", _x((2, 16, 9, 9)), key_map=key_map, config=APNB_CONFIG)
    assert report.ok, str(report)
    _rows_cover_every_parameter(report, npattn.get("ann-apnb").default_params())
    assert sum(row.startswith("grad stages.0.f_key.") for row in report.compared) == 4


def test_apnb_with_untied_query_and_key_transforms_fails():
    module = _apnb(tied=False)
    report = compare(module, "ann-apnb", _x((2, 16, 9, 9)), config=APNB_CONFIG)
    assert not report.ok
    failing = [what for what, ok, _ in report.rows if not ok]
    assert failing and all(".f_key." in what for what in failing), str(report)
    assert "not tied" in str(report)
    # different values under the two names: the import itself refuses
    with torch.no_grad():
        module.stages[0].f_query[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="'stages.0.f_query.0.weight' and 'stages.0.f_key.0.weight' differ"):
        from_torch_state_dict("ann-apnb", module.state_dict(), config=APNB_CONFIG)


def test_apnb_key_map_aliasing_different_tensors_is_an_error():
    state = _apnb().state_dict()
    state["stages.0.f_query.0.bias"] = state["stages.0.f_query.0.bias"] + 1.0
    key_map = {"stages.0.f_query.0.bias": "stages.0.f_key.0.bias"}
    with pytest.raises(ValueError, match="hold different arrays"):
        from_torch_state_dict("ann-apnb", state, key_map=key_map, config=APNB_CONFIG)


def test_apnb_alias_without_its_twin_is_an_error():
    state = _apnb().state_dict()
    del state["stages.0.f_key.0.bias"]
    with pytest.raises(KeyError, match="'stages.0.f_query.0.bias' but not 'stages.0.f_key.0.bias'"):
        from_torch_state_dict("ann-apnb", state, config=APNB_CONFIG)


def test_apnb_running_statistics_are_compared_in_train_mode():
    """The official module updates the shared BatchNorm twice; npattn's default once: the rows say so."""
    module = _apnb(call_twice=True)
    report = compare(module, "ann-apnb", _x((2, 16, 9, 9)), train=True, config=APNB_CONFIG)  # one update
    failing = sorted(what.split(" ")[1] for what, ok, _ in report.rows if not ok)
    assert failing == ["stages.0.f_key.1.0.num_batches_tracked", "stages.0.f_key.1.0.running_mean",
                       "stages.0.f_key.1.0.running_var"], str(report)


def test_official_state_dict_round_trip_in_ann():
    from npattn.self_attention import ann

    params = npattn.get("ann-apnb").default_params()
    official = ann.official_state_dict(params)
    assert official["stages.0.f_query.0.weight"] is params["stages.0.f_key.0.weight"]
    back = ann.from_official_state_dict(official)
    assert back.keys() == params.keys() and all(back[k] is params[k] for k in params)


# ---------------------------------------------------------------------------------------------
# a buffer fixed by the configuration (FcaNet's DCT filters) is compared with npattn's


def test_compare_checks_a_configuration_fixed_buffer():
    from npattn.frequency.fca import scaled_frequencies
    from tests.torch_tier.test_beyond import TorchFca

    config = {"channels": 32, "dct_h": 7, "dct_w": 7, "reduction": 4, "freq_sel_method": "top16"}
    us, vs = scaled_frequencies("top16", 7, 7)
    module = TorchFca(32, 7, 7, 4, us, vs).double()
    report = compare(module, "fca", _x((2, 32, 7, 7)), config=config)
    assert report.ok and any(row.startswith("constant dct_layer.weight") for row in report.compared), str(report)
    with torch.no_grad():  # filters of other frequencies: a wrong module whose own filters would load fine
        module.dct_layer.weight.copy_(torch.roll(module.dct_layer.weight, 1, dims=2))
    report = compare(module, "fca", _x((2, 32, 7, 7)), config=config)
    assert not report.ok
    assert any(row.startswith("constant dct_layer.weight") and not ok for row, ok, _ in report.rows), str(report)


def test_compare_reports_an_output_of_another_shape_and_every_gradient_it_could_not_compare():
    class GateOnly(TorchSE):  # returns the gate (N, C) and forgets to multiply the input by it
        def forward(self, x):
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))

    torch.manual_seed(0)
    report = compare(GateOnly(32, 4).double(), "se", np.random.default_rng(0).standard_normal((2, 32, 5, 6)),
                     config=SE_CONFIG)
    assert not report.ok
    assert [ok for _, ok, _ in report.rows] == [False] * 6, str(report)
    assert "shape mismatch" in str(report) and "grad fc2.bias: not compared" in str(report)
