"""npattn.interop.jax: layouts both ways, and compare()'s fail-closed report against Flax modules and JAX functions."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
flax = pytest.importorskip("flax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import npattn  # noqa: E402
from npattn.interop import jax as njax  # noqa: E402
from npattn.testing import to_host  # noqa: E402

pytestmark = pytest.mark.jax

F64 = {"param_dtype": jnp.float64}
SE_CONFIG = {"channels": 32, "reduction": 4}
SE_MAP = {"fc1": njax.dense("Dense_0"), "fc2": njax.dense("Dense_1")}
CBAM_CONFIG = {"channels": 16, "reduction": 4}
CBAM_MAP = {"mlp.0": njax.dense("Dense_0"), "mlp.2": njax.dense("Dense_1"), "spatial_conv": njax.conv("Conv_0"),
            "spatial_bn": njax.batch_norm("BatchNorm_0")}


def nchw(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


class LinenSE(nn.Module):
    """An independent SE in Flax Linen (NHWC)."""

    reduction: int = 4
    pool: str = "avg"
    extra_layer: bool = False

    @nn.compact
    def __call__(self, x):
        z = x.mean((1, 2)) if self.pool == "avg" else x.max((1, 2))
        h = nn.relu(nn.Dense(x.shape[-1] // self.reduction, **F64)(z))
        gate = nn.sigmoid(nn.Dense(x.shape[-1], **F64)(h))
        if self.extra_layer:  # a layer npattn's SE does not have
            gate = nn.Dense(x.shape[-1], **F64)(gate)
        return x * gate[:, None, None, :]


class LinenCBAM(nn.Module):
    reduction: int = 4
    float64_statistics: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        hidden, out = nn.Dense(x.shape[-1] // self.reduction, **F64), nn.Dense(x.shape[-1], **F64)

        def mlp(z):
            return out(nn.relu(hidden(z)))

        x = x * nn.sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
        pooled = jnp.concatenate([x.max(-1, keepdims=True), x.mean(-1, keepdims=True)], axis=-1)
        gate = nn.Conv(1, (7, 7), padding=3, use_bias=False, **F64)(pooled)
        gate = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5,
                            force_float32_reductions=not self.float64_statistics, **F64)(gate)
        return x * nn.sigmoid(gate)


def cbam_variables(seed=0):
    params = npattn.get("cbam").init(np.random.default_rng(seed), **CBAM_CONFIG)
    params["spatial_bn.running_mean"] = np.full((1,), 0.1)
    params["spatial_bn.running_var"] = np.full((1,), 1.7)
    return params, njax.to_flax_variables(params, CBAM_MAP)


def nnx_cbam():
    class NnxCBAM(nnx.Module):
        def __init__(self, channels, reduction, rngs):
            self.mlp0 = nnx.Linear(channels, channels // reduction, rngs=rngs, **F64)
            self.mlp2 = nnx.Linear(channels // reduction, channels, rngs=rngs, **F64)
            self.conv = nnx.Conv(2, 1, (7, 7), padding=3, use_bias=False, rngs=rngs, **F64)
            self.bn = nnx.BatchNorm(1, momentum=0.99, epsilon=1e-5, rngs=rngs, **F64)

        def __call__(self, x):
            def mlp(z):
                return self.mlp2(nnx.relu(self.mlp0(z)))

            x = x * nnx.sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
            pooled = jnp.concatenate([x.max(-1, keepdims=True), x.mean(-1, keepdims=True)], axis=-1)
            return x * nnx.sigmoid(self.bn(self.conv(pooled)))

    with jax.enable_x64(True):
        return NnxCBAM(16, 4, nnx.Rngs(0))


NNX_CBAM_MAP = {"mlp.0": njax.dense("mlp0"), "mlp.2": njax.dense("mlp2"), "spatial_conv": njax.conv("conv"),
                "spatial_bn": njax.batch_norm("bn")}


# ---------------------------------------------------------------------------------------------
# a correct counterpart agrees on every tensor, a wrong one does not


def test_linen_se_agrees_and_every_tensor_is_listed():
    report = njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG, channels_last=True)
    assert report.ok, str(report)
    assert report.compared == ["output", "grad input 0", "grad fc1.weight (flax params/Dense_0/kernel)",
                               "grad fc1.bias (flax params/Dense_0/bias)",
                               "grad fc2.weight (flax params/Dense_1/kernel)",
                               "grad fc2.bias (flax params/Dense_1/bias)"]
    assert str(report).startswith("Flax Linen module (actual) vs npattn 'se' (expected): AGREE")


def test_linen_se_with_max_pooling_disagrees():
    report = njax.compare(LinenSE(pool="max"), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG,
                          channels_last=True)
    assert not report.ok
    assert "DISAGREE" in str(report) and "[XX] output" in str(report)


def test_without_channels_last_the_layouts_do_not_match():
    # NCHW given to an NHWC module: the module reads W as channels, so its Dense layers do not fit npattn's
    with pytest.raises(ValueError, match="fc1.weight"):
        njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG)


def test_a_flax_layer_the_key_map_skips_is_an_error():
    with pytest.raises(KeyError, match=r"Flax leaves that no layer of the key map holds: \['params/Dense_2/bias', "
                                       r"'params/Dense_2/kernel'\]"):
        njax.compare(LinenSE(extra_layer=True), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG,
                     channels_last=True)


def test_a_key_map_that_leaves_out_an_npattn_layer_is_an_error():
    with pytest.raises(KeyError, match=r"Dense_1"):
        njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), key_map={"fc1": njax.dense("Dense_0")}, config=SE_CONFIG,
                     channels_last=True)


def test_a_flax_module_without_an_npattn_layer_is_an_error():
    class HalfSE(nn.Module):  # one Dense: fc2 is missing
        @nn.compact
        def __call__(self, x):
            return x * nn.sigmoid(nn.Dense(x.shape[-1], **F64)(x.mean((1, 2))))[:, None, None, :]

    with pytest.raises(KeyError, match=r"missing \['fc2.bias', 'fc2.weight'\]"):
        njax.compare(HalfSE(), "se", nchw(2, 32, 5, 6), key_map={"fc1": njax.dense("Dense_0")},
                     config={"channels": 32, "reduction": 1}, channels_last=True)


def test_a_key_map_path_the_variables_lack_is_an_error_with_a_suggestion():
    key_map = {"fc1": njax.dense("Dense_0"), "fc2": njax.dense("Dense1")}
    with pytest.raises(KeyError, match=r"no dense leaves under 'Dense1' \(did you mean 'Dense_1'\?\)"):
        njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), key_map=key_map, config=SE_CONFIG, channels_last=True)


def test_a_layer_of_the_wrong_kind_is_a_shape_error():
    # a conv kernel read as a dense one: (7, 7, 2, 1) is no (out, in) matrix
    key_map = {**CBAM_MAP, "spatial_conv": njax.dense("Conv_0")}
    with pytest.raises(ValueError, match=r"shape \(7, 7, 2, 1\); a dense kernel has 2 dimensions"):
        njax.compare(LinenCBAM(), "cbam", nchw(2, 16, 6, 6), key_map=key_map, config=CBAM_CONFIG, channels_last=True)


def test_one_flax_leaf_for_two_npattn_layers_is_an_error():
    key_map = {"fc1": njax.dense("Dense_0"), "fc2": njax.dense("Dense_0")}
    with pytest.raises(ValueError, match="cannot be two npattn tensors"):
        njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), key_map=key_map, config=SE_CONFIG, channels_last=True)


def test_a_flax_module_needs_a_key_map():
    with pytest.raises(TypeError, match="needs key_map"):
        njax.compare(LinenSE(), "se", nchw(2, 32, 5, 6), config=SE_CONFIG, channels_last=True)


def test_float32_parameters_with_float64_inputs_are_refused():
    class SE32(LinenSE):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(x.shape[-1] // 4)(x.mean((1, 2))))  # Flax's default float32 parameters
            return x * nn.sigmoid(nn.Dense(x.shape[-1])(h))[:, None, None, :]

    with pytest.raises(TypeError, match="param_dtype=jnp.float64"):
        njax.compare(SE32(), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG, channels_last=True)


def test_a_module_returning_two_arrays_is_refused():
    class Pair(LinenSE):
        def __call__(self, x):
            y = super().__call__(x)
            return y, y

    with pytest.raises(TypeError, match="not one array"):
        njax.compare(Pair(), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG, channels_last=True)


def test_an_output_of_another_shape_fails_every_row():
    class GateOnly(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(x.shape[-1] // 4, **F64)(x.mean((1, 2))))
            return nn.sigmoid(nn.Dense(x.shape[-1], **F64)(h))  # forgets to gate the input

    report = njax.compare(GateOnly(), "se", nchw(2, 32, 5, 6), key_map=SE_MAP, config=SE_CONFIG, channels_last=True)
    assert [ok for _, ok, _ in report.rows] == [False] * 6, str(report)
    assert "shape mismatch" in str(report) and "not compared: the outputs differ in shape" in str(report)


# ---------------------------------------------------------------------------------------------
# convolution, BatchNorm (eval and train), NNX


def test_linen_cbam_agrees_in_eval_mode_with_float64_statistics():
    params, variables = cbam_variables()
    report = njax.compare(LinenCBAM(), "cbam", nchw(2, 16, 6, 7), variables=variables, key_map=CBAM_MAP,
                          config=CBAM_CONFIG, channels_last=True)
    assert report.ok, str(report)
    assert len(report.rows) == 2 + 7 + 3  # output, input grad, 7 gradients, 2 statistics and the counter
    assert "buffer spatial_bn.running_var (flax batch_stats/BatchNorm_0/var) (eval: unchanged)" in report.compared
    assert "counter spatial_bn.num_batches_tracked" in report.compared


def test_flax_float32_batchnorm_statistics_are_not_a_float64_reference():
    """Linen's default float32 statistics make eval mode compute rsqrt(var + eps) in float32: ~1e-8 off."""
    _, variables = cbam_variables()
    # float32 statistics as Linen makes them; npattn widens the same float32 values exactly
    variables["batch_stats"] = jax.tree_util.tree_map(lambda v: v.astype(np.float32), variables["batch_stats"])
    report = njax.compare(LinenCBAM(float64_statistics=False), "cbam", nchw(2, 16, 6, 7), key_map=CBAM_MAP,
                          variables=variables, config=CBAM_CONFIG, channels_last=True)
    assert not report.ok and "[XX] output" in str(report)
    assert "buffer spatial_bn.running_var (flax batch_stats/BatchNorm_0/var) (eval: unchanged)" in report.compared
    loose = njax.compare(LinenCBAM(float64_statistics=False), "cbam", nchw(2, 16, 6, 7), key_map=CBAM_MAP,
                         variables=variables, config=CBAM_CONFIG, channels_last=True, rtol=1e-6, atol=1e-7)
    assert loose.ok, str(loose)  # float32 precision, the same semantics


def test_linen_batchnorm_in_train_mode_updates_the_running_variance_with_the_biased_variance():
    """torch (and npattn) update running_var with the unbiased batch variance, Flax with the biased one."""
    _, variables = cbam_variables()
    report = njax.compare(LinenCBAM(), "cbam", nchw(2, 16, 6, 7), variables=variables, key_map=CBAM_MAP,
                          config=CBAM_CONFIG, channels_last=True, train=True)
    failing = [what for what, ok, _ in report.rows if not ok]
    assert failing == ["running spatial_bn.running_var (flax batch_stats/BatchNorm_0/var)"], str(report)
    assert "running spatial_bn.running_mean (flax batch_stats/BatchNorm_0/mean)" in report.compared


def test_nnx_cbam_agrees_and_the_callers_module_is_left_alone():
    module = nnx_cbam()
    params, _ = cbam_variables(seed=2)
    with jax.enable_x64(True):
        njax.load_nnx(module, params, NNX_CBAM_MAP)
    before = {k: np.array(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(module)))}
    x = nchw(2, 16, 6, 7)
    report = njax.compare(module, "cbam", x, key_map=NNX_CBAM_MAP, config=CBAM_CONFIG, channels_last=True)
    assert report.ok, str(report)
    assert str(report).startswith("Flax NNX module (actual)")
    train = njax.compare(module, "cbam", x, key_map=NNX_CBAM_MAP, config=CBAM_CONFIG, channels_last=True, train=True)
    failing = [what for what, ok, _ in train.rows if not ok]
    assert failing == ["running spatial_bn.running_var (flax batch_stats/bn/var)"], str(train)
    after = {k: np.array(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(module)))}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert module.bn.use_running_average is False  # nnx.BatchNorm's constructor default; compare used a clone


def test_nnx_conv_1d_of_eca():
    class NnxECA(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 1, (3,), padding=1, use_bias=False, rngs=rngs, **F64)

        def __call__(self, x):  # NHWC -> channel descriptor as a length-C sequence of one feature
            z = self.conv(x.mean((1, 2))[:, :, None])[:, :, 0]
            return x * nnx.sigmoid(z)[:, None, None, :]

    with jax.enable_x64(True):
        module = NnxECA(nnx.Rngs(0))
    report = njax.compare(module, "eca", nchw(2, 16, 5, 5), key_map={"conv": njax.conv("conv")},
                          config={"channels": 16}, channels_last=True)
    assert report.ok, str(report)


def test_load_nnx_refuses_a_module_with_another_layer_set():
    params, _ = cbam_variables()
    with pytest.raises(KeyError, match="bn"):
        njax.load_nnx(nnx_cbam(), params, {k: v for k, v in NNX_CBAM_MAP.items() if k != "spatial_bn"})


# ---------------------------------------------------------------------------------------------
# attention layouts


@pytest.mark.parametrize("bias", [False, True])
def test_linen_multi_head_dot_product_attention_agrees_with_mha(bias):
    rng = np.random.default_rng(1)
    query, key = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 7, 16))
    module = nn.MultiHeadDotProductAttention(num_heads=2, use_bias=bias, **F64)
    report = njax.compare(module, "mha", query, key, key.copy(), key_map={"": njax.attention("")},
                          config={"d_model": 16, "attn_bias": bias})
    assert report.ok, str(report)
    assert len(report.rows) == 4 + (8 if bias else 4)
    assert "grad w_v.weight (flax params/value/kernel)" in report.compared


def test_nnx_multi_head_attention_softmax_is_float32():
    """nnx.MultiHeadAttention takes jax.nn.dot_product_attention, whose softmax is float32 even for float64."""
    rng = np.random.default_rng(1)
    query, key = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 7, 16))
    with jax.enable_x64(True):
        module = nnx.MultiHeadAttention(2, 16, use_bias=False, decode=False, rngs=nnx.Rngs(0), **F64)
    report = njax.compare(module, "mha", query, key, key.copy(), key_map={"": njax.attention("")},
                          config={"d_model": 16})
    assert not report.ok
    loose = njax.compare(module, "mha", query, key, key.copy(), key_map={"": njax.attention("")},
                         config={"d_model": 16}, rtol=1e-5, atol=1e-6)
    assert loose.ok, str(loose)  # the same semantics, float32 precision


@pytest.mark.parametrize("bias", [False, True])
def test_attention_layout_round_trip(bias):
    params = npattn.get("mha").init(np.random.default_rng(3), 16, attn_bias=bias)
    variables = njax.to_flax_variables(params, {"": njax.attention("", heads=4)})
    assert variables["params"]["query"]["kernel"].shape == (16, 4, 4)
    assert variables["params"]["out"]["kernel"].shape == (4, 4, 16)
    # head h of Flax's query kernel is rows h*D:(h+1)*D of npattn's (H*D, in) matrix, transposed
    np.testing.assert_array_equal(variables["params"]["query"]["kernel"][:, 1, :], to_host(params["w_q.weight"])[4:8].T)
    back = njax.from_flax("mha", variables, {"": njax.attention("")}, config={"d_model": 16, "attn_bias": bias})
    assert back.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(to_host(back[k]), to_host(params[k]))


def test_attention_export_needs_heads():
    params = npattn.get("mha").init(np.random.default_rng(3), 16)
    with pytest.raises(ValueError, match="needs heads"):
        njax.to_flax_variables(params, {"": njax.attention("")})


def test_conv_and_batch_norm_layout_round_trip():
    params, variables = cbam_variables(seed=5)
    assert variables["params"]["Conv_0"]["kernel"].shape == (7, 7, 2, 1)  # HWIO
    np.testing.assert_array_equal(variables["params"]["Conv_0"]["kernel"][2, 3, 1, 0],
                                  to_host(params["spatial_conv.weight"])[0, 1, 2, 3])
    assert variables["batch_stats"]["BatchNorm_0"]["var"][0] == 1.7
    back = njax.from_flax("cbam", variables, CBAM_MAP, config=CBAM_CONFIG)
    for k in params:
        if k != "spatial_bn.num_batches_tracked":  # Flax keeps no counter: 0 on import
            np.testing.assert_array_equal(to_host(back[k]), to_host(params[k]))
    assert to_host(back["spatial_bn.num_batches_tracked"]) == 0


def test_to_flax_refuses_a_parameter_no_layer_holds():
    params = npattn.get("se").default_params()
    with pytest.raises(KeyError, match="'fc2.weight' is held by no layer"):
        njax.to_flax_variables(params, {"fc1": njax.dense("Dense_0")})


# ---------------------------------------------------------------------------------------------
# JAX functions


def jax_se(params, x, forget_bias=False):
    """SE on npattn's own names and layouts (NCHW, (out, in) weights)."""
    z = x.mean((2, 3))
    h = z @ params["fc1.weight"].T + (0 if forget_bias else params["fc1.bias"])
    gate = jax.nn.sigmoid(jax.nn.relu(h) @ params["fc2.weight"].T + params["fc2.bias"])
    return x * gate[:, :, None, None]


def test_a_jax_function_on_npattn_parameters_agrees():
    params = npattn.get("se").default_params(seed=1)
    report = njax.compare(jax_se, "se", nchw(2, 32, 4, 3), variables=params)
    assert report.ok, str(report)
    assert report.compared == ["output", "grad input 0", "grad fc1.weight", "grad fc1.bias", "grad fc2.weight",
                               "grad fc2.bias"]
    assert str(report).startswith("JAX function (actual)")


def test_a_jax_function_that_ignores_a_parameter_fails():
    params = npattn.get("se").default_params(seed=1)
    report = njax.compare(jax_se, "se", nchw(2, 32, 4, 3), variables=params, call_kwargs={"forget_bias": True})
    failing = [what for what, ok, _ in report.rows if not ok]
    assert "output" in failing and "grad fc1.bias" in failing, str(report)


def test_a_jax_function_missing_a_parameter_is_an_error():
    params = npattn.get("se").default_params(seed=1)
    del params["fc2.bias"]
    with pytest.raises(KeyError, match=r"missing \['fc2.bias'\]"):
        njax.compare(jax_se, "se", nchw(2, 32, 4, 3), variables=params)


def test_a_jax_function_on_linen_style_variables_with_a_key_map():
    def se(variables, x):  # NHWC with Flax layouts
        p = variables["params"]
        h = jax.nn.relu(x.mean((1, 2)) @ p["a"]["kernel"] + p["a"]["bias"])
        return x * jax.nn.sigmoid(h @ p["b"]["kernel"] + p["b"]["bias"])[:, None, None, :]

    key_map = {"fc1": njax.dense("a"), "fc2": njax.dense("b")}
    variables = njax.to_flax_variables(npattn.get("se").default_params(seed=2), key_map)
    report = njax.compare(se, "se", nchw(2, 32, 4, 3), variables=variables, key_map=key_map, channels_last=True)
    assert report.ok, str(report)
    assert report.compared[2] == "grad fc1.weight (flax params/a/kernel)"
