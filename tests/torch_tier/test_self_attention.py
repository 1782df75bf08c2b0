"""Cross-framework tier for the self-attention family: Non-local, DANet, ANN, CCNet, GCNet.

Each twin is an independent torch.nn module written from the spec sheet / official code, with npattn's
parameter names (the npattn dict loads with ``load_state_dict(strict=True)``), and computed the way the
official code computes it (e.g. CCNet with a -inf diagonal, ANN with AdaptiveAvgPool2d stages, the
Non-local concatenation with an explicit repeat + cat + conv), not the way npattn does.  Outputs, every
input gradient, every parameter gradient and (train mode) the updated BatchNorm buffers must agree to
1e-10 in float64.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.self_attention import ann  # noqa: E402
from tests.conftest import host  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10
MODES = pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])


# ---------------------------------------------------------------------------------------------
# Non-local


class TorchNonLocal(nn.Module):
    def __init__(self, channels, inter, mode="embedded_gaussian", sub_sample=True, pool_first=True,
                 use_scale=True, scale=None, bn_layer=True, separable_concat=False):
        super().__init__()
        # separable_concat: w^T [theta_i; phi_j] as w_theta . theta_i + w_phi . phi_j, without the
        # (B, 2Ci, N, M) tensor of the explicit form (which needs 8 GiB at (2, 256, 64, 64); benchmarks)
        self.separable_concat = separable_concat
        self.mode, self.sub_sample, self.pool_first, self.inter = mode, sub_sample, pool_first, inter
        if scale is None:
            scale = inter ** -0.5 if (use_scale and mode == "embedded_gaussian") else 1.0
        self.scale = scale
        if mode != "gaussian":
            self.theta = nn.Conv2d(channels, inter, 1)
            self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter, 1, 1, bias=False)
        self.W = nn.Conv2d(inter, channels, 1)
        self.W_bn = nn.BatchNorm2d(channels) if bn_layer else None

    def branch(self, conv, x):
        if not self.sub_sample:
            return conv(x)
        if self.pool_first:
            return conv(F.max_pool2d(x, 2))
        return F.max_pool2d(conv(x), 2)

    def forward(self, x):
        b, c, h, w = x.shape
        g_x = self.branch(self.g, x).flatten(2).permute(0, 2, 1)                  # (B, M, Ci)
        if self.mode == "gaussian":
            theta_x = x.flatten(2).permute(0, 2, 1)
            phi_x = (F.max_pool2d(x, 2) if self.sub_sample else x).flatten(2)
        else:
            theta_x = self.theta(x).flatten(2).permute(0, 2, 1)                   # (B, N, Ci)
            phi_x = self.branch(self.phi, x).flatten(2)                           # (B, Ci, M)
        if self.mode in ("embedded_gaussian", "gaussian"):
            f = F.softmax(torch.matmul(theta_x, phi_x) * self.scale, dim=-1)
        elif self.mode == "dot_product":
            f = torch.matmul(theta_x, phi_x) / phi_x.shape[-1]
        elif self.separable_concat:
            w_f = self.concat_project.weight[0, :, 0, 0]
            w_theta, w_phi = w_f[: self.inter], w_f[self.inter :]
            logits = (theta_x @ w_theta)[:, :, None] + (w_phi @ phi_x)[:, None, :]
            f = F.relu(logits) / phi_x.shape[-1]
        else:
            n, m = theta_x.shape[1], phi_x.shape[2]
            theta_rep = theta_x.permute(0, 2, 1)[:, :, :, None].repeat(1, 1, 1, m)    # (B, Ci, N, M)
            phi_rep = phi_x[:, :, None, :].repeat(1, 1, n, 1)                       # (B, Ci, N, M)
            f = F.relu(self.concat_project(torch.cat([theta_rep, phi_rep], 1)))[:, 0] / m
        y = torch.matmul(f, g_x).permute(0, 2, 1).reshape(b, self.inter, h, w)
        out = self.W(y)
        if self.W_bn is not None:
            out = self.W_bn(out)
        return out + x


# ---------------------------------------------------------------------------------------------
# DANet


class TorchPAM(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        query = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
        key = self.key_conv(x).view(b, -1, h * w)
        attention = F.softmax(torch.bmm(query, key), dim=-1)
        value = self.value_conv(x).view(b, -1, h * w)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class TorchCAM(nn.Module):
    def __init__(self, form="official"):
        super().__init__()
        self.form = form
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        flat = x.view(b, c, -1)
        energy = torch.bmm(flat, flat.permute(0, 2, 1))
        if self.form == "official":
            energy = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = F.softmax(energy, dim=-1)
        return self.gamma * torch.bmm(attention, flat).view(b, c, h, w) + x


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TorchDANetHead(nn.Module):
    def __init__(self, channels, cam_form="official"):
        super().__init__()
        inter = channels // 4
        self.conv5a, self.conv5c = conv_bn_relu(channels, inter), conv_bn_relu(channels, inter)
        self.sa, self.sc = TorchPAM(inter), TorchCAM(cam_form)
        self.conv51, self.conv52 = conv_bn_relu(inter, inter), conv_bn_relu(inter, inter)

    def forward(self, x):
        return self.conv51(self.sa(self.conv5a(x))) + self.conv52(self.sc(self.conv5c(x)))


class TorchPamCam(nn.Module):
    def __init__(self, channels, cam_form="official"):
        super().__init__()
        self.sa, self.sc = TorchPAM(channels), TorchCAM(cam_form)

    def forward(self, x):
        return self.sa(x) + self.sc(x) - x


# ---------------------------------------------------------------------------------------------
# ANN


class TorchPSP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.stages = nn.ModuleList([nn.AdaptiveAvgPool2d((s, s)) for s in sizes])

    def forward(self, t):
        n, c = t.shape[:2]
        return torch.cat([stage(t).view(n, c, -1) for stage in self.stages], -1)


def key_transform(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU()))


class TorchANNStage(nn.Module):
    """The official _SelfAttentionBlock; ``low_channels is None`` is APNB's (f_query is f_key)."""

    def __init__(self, in_channels, key_channels, value_channels, out_channels, sizes, high_channels=None,
                 call_twice=True):
        super().__init__()
        self.key_channels, self.value_channels, self.call_twice = key_channels, value_channels, call_twice
        self.f_key = key_transform(in_channels, key_channels)
        self.f_query = self.f_key if high_channels is None else key_transform(high_channels, key_channels)
        self.f_value = nn.Conv2d(in_channels, value_channels, 1)
        self.W = nn.Conv2d(value_channels, out_channels, 1)
        self.psp = TorchPSP(sizes)

    def forward(self, low, high):
        b, _, h, w = high.shape
        value = self.psp(self.f_value(low)).permute(0, 2, 1)
        key_map = self.f_key(low)
        query_map = self.f_query(high) if (self.f_query is not self.f_key or self.call_twice) else key_map
        query = query_map.view(b, self.key_channels, -1).permute(0, 2, 1)
        sim = F.softmax(torch.matmul(query, self.psp(key_map)) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).contiguous().view(b, self.value_channels, h, w)
        return self.W(context)


class TorchAPNB(nn.Module):
    def __init__(self, channels, key_channels, value_channels, sizes=(1, 3, 6, 8), call_twice=True):
        super().__init__()
        self.stages = nn.ModuleList([TorchANNStage(channels, key_channels, value_channels, channels, sizes,
                                                   call_twice=call_twice)])
        self.conv_bn_dropout = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU()), nn.Dropout2d(0.0))

    def forward(self, x):
        return self.conv_bn_dropout(torch.cat([self.stages[0](x, x), x], 1))


class TorchAFNB(nn.Module):
    def __init__(self, low_channels, high_channels, out_channels, key_channels, value_channels, sizes=(1, 3, 6, 8)):
        super().__init__()
        self.stages = nn.ModuleList([TorchANNStage(low_channels, key_channels, value_channels, out_channels, sizes,
                                                   high_channels=high_channels)])
        self.conv_bn_dropout = nn.Sequential(nn.Conv2d(out_channels + high_channels, out_channels, 1),
                                             nn.BatchNorm2d(out_channels), nn.Dropout2d(0.0))

    def forward(self, low, high):
        return self.conv_bn_dropout(torch.cat([self.stages[0](low, high), high], 1))


# ---------------------------------------------------------------------------------------------
# CCNet


class TorchCrissCross(nn.Module):
    """The official pure-PyTorch CrissCrossAttention (column energies with a -inf diagonal)."""

    def __init__(self, channels):
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        q_h = q.permute(0, 3, 1, 2).reshape(b * w, -1, h).permute(0, 2, 1)
        q_w = q.permute(0, 2, 1, 3).reshape(b * h, -1, w).permute(0, 2, 1)
        k_h = k.permute(0, 3, 1, 2).reshape(b * w, -1, h)
        k_w = k.permute(0, 2, 1, 3).reshape(b * h, -1, w)
        v_h = v.permute(0, 3, 1, 2).reshape(b * w, -1, h)
        v_w = v.permute(0, 2, 1, 3).reshape(b * h, -1, w)
        minus_inf = torch.diag(torch.full((h,), float("-inf"), dtype=x.dtype)).unsqueeze(0)
        energy_h = (torch.bmm(q_h, k_h) + minus_inf).view(b, w, h, h).permute(0, 2, 1, 3)
        energy_w = torch.bmm(q_w, k_w).view(b, h, w, w)
        attention = F.softmax(torch.cat([energy_h, energy_w], 3), dim=3)
        att_h = attention[:, :, :, :h].permute(0, 2, 1, 3).reshape(b * w, h, h)
        att_w = attention[:, :, :, h:].reshape(b * h, w, w)
        out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x


class TorchRecurrentCCA(nn.Module):
    def __init__(self, channels, recurrence=2):
        super().__init__()
        self.recurrence = recurrence
        self.cca = TorchCrissCross(channels)

    def forward(self, x):
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


# ---------------------------------------------------------------------------------------------
# GCNet


class TorchContextBlock(nn.Module):
    def __init__(self, channels, ratio, pooling_type="att", fusion_types=("channel_add",)):
        super().__init__()
        planes = int(channels * ratio)
        self.pooling_type = pooling_type
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(channels, 1, 1)

        def bottleneck():
            return nn.Sequential(nn.Conv2d(channels, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(),
                                 nn.Conv2d(planes, channels, 1))

        self.channel_add_conv = bottleneck() if "channel_add" in fusion_types else None
        self.channel_mul_conv = bottleneck() if "channel_mul" in fusion_types else None

    def forward(self, x):
        b, c, h, w = x.shape
        if self.pooling_type == "att":
            mask = F.softmax(self.conv_mask(x).view(b, 1, h * w), dim=2).view(b, 1, h * w, 1)
            context = torch.matmul(x.view(b, 1, c, h * w), mask).view(b, c, 1, 1)
        else:
            context = F.adaptive_avg_pool2d(x, 1)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


# ---------------------------------------------------------------------------------------------
# comparison


def _torch(array):
    return torch.from_numpy(host(array).copy())


def _assert_close(what, actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert err <= TOL, f"{what}: max abs error {err:.3e} > {TOL}"


def check_twin(module, apply, params, inputs, train, state_dict=None):
    """npattn ``apply(params, *inputs, train=...)`` vs the torch ``module``: outputs, all gradients, buffers."""
    module = module.double()
    module.load_state_dict({k: _torch(v) for k, v in (state_dict or params).items()}, strict=True)
    module.train(train)
    out_shape = None

    inputs_t = [_torch(x).requires_grad_(True) for x in inputs]
    out_t = module(*inputs_t)
    out_shape = tuple(out_t.shape)
    cotangent = np.random.default_rng(11).standard_normal(out_shape)
    out_t.backward(torch.from_numpy(cotangent))

    float_keys = [k for k, v in params.items() if np.dtype(v.dtype).kind == "f"]

    def fn(float_params, *xs):
        return apply({**params, **float_params}, *xs, train=train)

    with npattn.track_running_stats() as new_stats:
        out, pullback = ag.vjp(fn, {k: params[k] for k in float_keys}, *inputs)
    grads = pullback(ag.from_numpy(cotangent))
    grad_params, grad_inputs = grads[0], grads[1:]

    _assert_close("output", host(out), out_t.detach().numpy())
    for i, (g, x_t) in enumerate(zip(grad_inputs, inputs_t)):
        _assert_close(f"grad input {i}", host(g), x_t.grad.numpy())
    torch_params = dict(module.named_parameters())
    assert set(torch_params) <= set(float_keys)
    for key, param in torch_params.items():
        expected = param.grad.numpy() if param.grad is not None else np.zeros(tuple(param.shape))
        _assert_close(f"grad {key}", host(grad_params[key]), expected)
    buffers = dict(module.named_buffers())
    if train:
        assert set(new_stats) == set(buffers), f"reported {sorted(new_stats)}, torch has {sorted(buffers)}"
        for key, buffer in buffers.items():
            _assert_close(f"buffer {key}", host(new_stats[key]), buffer.numpy())
    else:
        assert not new_stats
    return host(out)


def perturb_bn(params, seed=1):
    """Non-trivial BN/LN affine parameters and running statistics, so eval mode really uses them."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for key, value in params.items():
        shape = host(value).shape
        stem = key.rsplit(".", 1)[0]
        is_bn = f"{stem}.running_mean" in params
        if key.endswith("running_mean") or (key.endswith(".bias") and is_bn):
            out[key] = ag.from_numpy(0.3 * rng.standard_normal(shape))
        elif key.endswith("running_var") or (key.endswith(".weight") and is_bn):
            out[key] = ag.from_numpy(rng.uniform(0.5, 1.5, shape))
        elif key.endswith("num_batches_tracked"):
            out[key] = ag.from_numpy(np.array(3, dtype=np.int64))
    return out


def example(seed, shape):
    return ag.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def apply_of(name, **options):
    mech = npattn.get(name)
    return lambda params, *xs, train: mech.apply(params, *xs, train=train, **options)


# ---------------------------------------------------------------------------------------------
# Non-local tests

NL_MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
SUBSAMPLING = pytest.mark.parametrize("sub_sample,pool_first", [(True, True), (True, False), (False, True)],
                                      ids=["pool-conv", "conv-pool", "dense"])


@MODES
@SUBSAMPLING
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal(mode, sub_sample, pool_first, train):
    from npattn.self_attention import non_local

    params = perturb_bn(non_local.init(np.random.default_rng(0), 16, mode=mode, zero_init=False))
    x = example(2, (2, 16, 7, 5))        # odd sizes: floor-mode max-pool drops a row and a column
    twin = TorchNonLocal(16, 8, mode=mode, sub_sample=sub_sample, pool_first=pool_first)
    check_twin(twin, apply_of("nonlocal", mode=mode, sub_sample=sub_sample, pool_first=pool_first), params, [x], train)


def test_nonlocal_separable_concat_twin():
    """The benchmark's memory-light torch twin of the concatenation form agrees as well."""
    from npattn.self_attention import non_local

    params = perturb_bn(non_local.init(np.random.default_rng(0), 16, mode="concatenation", zero_init=False))
    twin = TorchNonLocal(16, 8, mode="concatenation", separable_concat=True)
    check_twin(twin, apply_of("nonlocal", mode="concatenation"), params, [example(2, (2, 16, 7, 5))], True)


@pytest.mark.parametrize("use_scale,scale", [(False, None), (True, 0.05)], ids=["paper-unscaled", "explicit"])
@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
def test_nonlocal_scale(mode, use_scale, scale):
    from npattn.self_attention import non_local

    params = perturb_bn(non_local.init(np.random.default_rng(0), 16, mode=mode, zero_init=False))
    twin = TorchNonLocal(16, 8, mode=mode, use_scale=use_scale, scale=scale)
    check_twin(twin, apply_of("nonlocal", mode=mode, use_scale=use_scale, scale=scale), params,
               [example(2, (2, 16, 6, 6))], False)


@MODES
def test_nonlocal_without_bn_and_custom_inter(train):
    from npattn.self_attention import non_local

    params = non_local.init(np.random.default_rng(0), 12, inter_channels=5, bn_layer=False, zero_init=False,
                            conv_std=0.2)
    twin = TorchNonLocal(12, 5, bn_layer=False)
    check_twin(twin, apply_of("nonlocal", bn_layer=False), params, [example(2, (2, 12, 6, 4))], train)


# ---------------------------------------------------------------------------------------------
# DANet tests


@MODES
@pytest.mark.parametrize("cam_form", ["official", "paper"])
def test_danet_head(train, cam_form):
    mech = npattn.get("danet")
    params = perturb_bn(mech.default_params())
    out = check_twin(TorchDANetHead(64, cam_form), apply_of("danet", cam_form=cam_form), params,
                     [example(2, (2, 64, 6, 5))], train)
    assert out.shape == (2, 16, 6, 5)


@MODES
def test_danet_pam(train):
    params = npattn.get("danet-pam").default_params()
    check_twin(TorchPAM(16), apply_of("danet-pam"), params, [example(2, (2, 16, 6, 7))], train)


@pytest.mark.parametrize("cam_form", ["official", "paper"])
def test_danet_cam(cam_form):
    params = npattn.get("danet-cam").default_params()
    check_twin(TorchCAM(cam_form), apply_of("danet-cam", cam_form=cam_form), params, [example(2, (2, 16, 5, 6))],
               False)


def test_danet_pam_plus_cam():
    from npattn.self_attention import danet

    params = danet.init(np.random.default_rng(0), 16, variant="pam+cam", gamma_init=0.7)
    check_twin(TorchPamCam(16), apply_of("danet", variant="pam+cam"), params, [example(2, (2, 16, 5, 6))], False)


# ---------------------------------------------------------------------------------------------
# ANN tests


@MODES
@pytest.mark.parametrize("updates", [1, 2], ids=["one-bn-update", "official-two-bn-updates"])
def test_ann_apnb(train, updates):
    params = perturb_bn(npattn.get("ann-apnb").default_params())
    twin = TorchAPNB(16, 8, 8, call_twice=updates == 2)
    check_twin(twin, apply_of("ann-apnb", query_key_bn_updates=updates), params, [example(2, (2, 16, 9, 10))],
               train, state_dict=ann.official_state_dict(params))


def test_ann_apnb_other_pyramid():
    params = perturb_bn(npattn.get("ann-apnb").default_params())
    twin = TorchAPNB(16, 8, 8, sizes=(1, 2, 3, 6))
    apply = apply_of("ann-apnb", psp_sizes=(1, 2, 3, 6), query_key_bn_updates=2)
    check_twin(twin, apply, params, [example(2, (2, 16, 7, 11))], True, state_dict=ann.official_state_dict(params))


@MODES
@pytest.mark.parametrize("low_size", [(9, 9), (7, 7), (5, 13)], ids=["larger", "same", "other"])
def test_ann_afnb(train, low_size):
    params = perturb_bn(npattn.get("ann-afnb").default_params())
    twin = TorchAFNB(12, 16, 16, 8, 8)
    check_twin(twin, apply_of("ann-afnb"), params, [example(2, (2, 12) + low_size), example(3, (2, 16, 7, 7))], train)


def test_ann_afnb_other_out_channels():
    from npattn.self_attention import ann as ann_module

    params = perturb_bn(ann_module.init_afnb(np.random.default_rng(0), 12, 16, out_channels=10, key_channels=4,
                                             value_channels=6, zero_init=False))
    twin = TorchAFNB(12, 16, 10, 4, 6)
    check_twin(twin, apply_of("ann-afnb"), params, [example(2, (2, 12, 8, 8)), example(3, (2, 16, 6, 6))], True)


# ---------------------------------------------------------------------------------------------
# CCNet tests


@pytest.mark.parametrize("recurrence", [1, 2, 3])
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 4)], ids=["5x7", "6x6", "1x4"])
def test_ccnet(recurrence, size):
    params = npattn.get("ccnet").default_params()
    check_twin(TorchRecurrentCCA(16, recurrence), apply_of("ccnet", recurrence=recurrence), params,
               [example(2, (2, 16) + size)], False)


# ---------------------------------------------------------------------------------------------
# GCNet tests


@pytest.mark.parametrize("fusion_types", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")],
                         ids=["add", "mul", "both"])
@pytest.mark.parametrize("pooling_type", ["att", "avg"])
def test_gcnet(pooling_type, fusion_types):
    from npattn.self_attention import gcnet

    params = gcnet.init(np.random.default_rng(0), 32, ratio=1 / 4, pooling_type=pooling_type,
                        fusion_types=fusion_types, zero_init=False)
    params = {**params, **{k: ag.from_numpy(np.random.default_rng(5).uniform(0.5, 1.5, host(v).shape))
                           for k, v in params.items() if k.endswith((".1.weight", ".1.bias"))}}
    twin = TorchContextBlock(32, 1 / 4, pooling_type, fusion_types)
    check_twin(twin, apply_of("gcnet", pooling_type=pooling_type, fusion_types=fusion_types), params,
               [example(2, (2, 32, 6, 7))], False)


def test_gcnet_ratio_truncates():
    from npattn.self_attention import gcnet

    params = gcnet.init(np.random.default_rng(0), 20, ratio=1 / 16 * 3, zero_init=False)   # int(3.75) = 3
    assert params["channel_add_conv.0.weight"].shape[0] == 3
    check_twin(TorchContextBlock(20, 1 / 16 * 3), apply_of("gcnet"), params, [example(2, (2, 20, 5, 5))], False)


def test_gcnet_single_plane_follows_the_official_code():
    """int(C * ratio) == 1: the twin's LayerNorm([1, 1, 1]) returns its bias too, so both ignore the context."""
    from npattn.self_attention import gcnet

    with pytest.warns(UserWarning, match="gcnet: int"):
        params = gcnet.init(np.random.default_rng(0), 16, ratio=1 / 16, fusion_types=("channel_add", "channel_mul"),
                            zero_init=False)
    params = {**params, **{k: ag.from_numpy(np.random.default_rng(5).uniform(0.5, 1.5, host(v).shape))
                           for k, v in params.items() if k.endswith((".1.weight", ".1.bias"))}}
    twin = TorchContextBlock(16, 1 / 16, "att", ("channel_add", "channel_mul"))
    with pytest.warns(UserWarning, match="gcnet: int"):
        check_twin(twin, apply_of("gcnet", fusion_types=("channel_add", "channel_mul")), params,
                   [example(2, (2, 16, 5, 4))], False)
    # torch's LayerNorm backward over one value leaves rounding (~1e-13) where the exact gradient is 0
    assert twin.conv_mask.weight.grad.abs().max() < 1e-10 and twin.channel_add_conv[0].weight.grad.abs().max() < 1e-10

