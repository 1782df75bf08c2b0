"""Cross-framework tier for the vision classics: Itti-Koch saliency, RAM, RA-CNN.

Each twin is written independently with torch.nn / torch.nn.functional from the papers and the conventions
stated in the modules' docstrings (the RAM port's retina with F.pad and slicing, RA-CNN's zoom with
F.grid_sample, Itti's local maxima with max_pool2d), loads the npattn parameter dict by name, and must
agree in float64 to 1e-10: outputs, gradients of the image and of every parameter for one random
cotangent; the losses too.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import autograd as ag  # noqa: E402
import npattn  # noqa: E402
from npattn.origins import itti, racnn, ram  # noqa: E402
from npattn.testing import assert_close  # noqa: E402
from tests.conftest import dev, host  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10


def _load(module, params):
    module.double()
    module.load_state_dict({k: torch.from_numpy(host(v).copy()) for k, v in params.items()}, strict=True)
    return module


def _check(actual, expected, what):
    assert_close(host(actual), expected.detach().numpy(), rtol=TOL, atol=TOL, name=what)
    return float(np.max(np.abs(host(actual) - expected.detach().numpy()), initial=0.0))


def _compare(np_fn, torch_fn, module, params, inputs, diff_inputs=(0,), scalar=False):
    """Run both, backpropagate one random cotangent (or 1 for a scalar), compare everything; return max error."""
    torch_inputs = [torch.tensor(host(x), requires_grad=i in diff_inputs) for i, x in enumerate(inputs)]
    out_t = torch_fn(*torch_inputs)
    cot = np.ones(()) if scalar else np.random.default_rng(99).standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(cot))
    diff = [inputs[i] for i in diff_inputs]

    def f(p, *xs):
        full = list(inputs)
        for i, x in zip(diff_inputs, xs):
            full[i] = x
        return np_fn(p, *full)

    out, pullback = ag.vjp(f, params, *diff)
    grads = pullback(dev(cot))
    worst = _check(out, out_t, "output")
    for k, i in enumerate(diff_inputs):
        worst = max(worst, _check(grads[1 + k], torch_inputs[i].grad, f"grad input {i}"))
    named = dict(module.named_parameters()) if module is not None else {}
    assert set(named) == set(params) or module is None
    for name, parameter in named.items():
        expected = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        worst = max(worst, _check(grads[0][name], expected, f"grad {name}"))
    return worst


# =============================================================================================
# Itti-Koch (no parameters: output and image gradient)


class TorchItti:
    """Saliency S from the paper's equations with the module's documented details."""

    def __init__(self, levels, centers, deltas, map_level, size=7, sigma=2.0, wavelength=4.0, gamma=0.5, M=1.0):
        self.levels, self.centers, self.deltas, self.map_level, self.M = levels, centers, deltas, map_level, M
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        y, x = torch.meshgrid(offsets, offsets, indexing="ij")
        kernels = []
        for deg in (0, 45, 90, 135):
            th = math.radians(deg)
            xr, yr = x * math.cos(th) + y * math.sin(th), -x * math.sin(th) + y * math.cos(th)
            g = torch.exp(-(xr**2 + gamma**2 * yr**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * xr / wavelength)
            g = g - g.mean()
            kernels.append(g / g.abs().sum())
        self.gabor = torch.stack(kernels)[:, None]
        self.taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16

    def pyramid(self, maps):
        out = [maps]
        k = maps.shape[1]
        for _ in range(self.levels - 1):
            padded = F.pad(out[-1], (2, 2, 2, 2), mode="replicate")
            blurred = F.conv2d(padded, self.taps.view(1, 1, 5, 1).repeat(k, 1, 1, 1), groups=k)
            blurred = F.conv2d(blurred, self.taps.view(1, 1, 1, 5).repeat(k, 1, 1, 1), groups=k)
            out.append(blurred[:, :, ::2, ::2])
        return out

    def normalize(self, maps):
        lo = maps.amin(dim=(2, 3), keepdim=True)
        spread = maps.amax(dim=(2, 3), keepdim=True) - lo
        scaled = (maps - lo) / spread * self.M
        with torch.no_grad():
            window_max = F.max_pool2d(F.pad(scaled, (1, 1, 1, 1), value=-math.inf), 3, stride=1)
            peak = (scaled == window_max) & (scaled >= self.M / 10)  # >= every neighbour <=> window max
            flat = peak.flatten(2)
            flat.scatter_(2, scaled.flatten(2).argmax(2, keepdim=True), False)
            peak = flat.view_as(peak).to(maps.dtype)
            count = peak.sum((2, 3), keepdim=True).clamp(min=1)
        mbar = (scaled * peak).sum((2, 3), keepdim=True) / count
        return scaled * (self.M - mbar) ** 2

    def across(self, maps, size):
        return maps if tuple(maps.shape[2:]) == tuple(size) else F.adaptive_avg_pool2d(maps, size)

    def __call__(self, image):
        r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
        intensity = (r + g + b) / 3
        bright = intensity > intensity.amax(dim=(2, 3), keepdim=True).detach() / 10
        safe = torch.where(bright, intensity, torch.ones_like(intensity))
        r, g, b = (torch.where(bright, c / safe, torch.zeros_like(c)) for c in (r, g, b))
        colours = [F.relu(r - (g + b) / 2), F.relu(g - (r + b) / 2), F.relu(b - (r + g) / 2),
                   F.relu((r + g) / 2 - (r - g).abs() / 2 - b)]
        feats = self.pyramid(torch.cat([intensity] + colours, 1))
        orient = [F.conv2d(F.pad(f[:, :1], (3, 3, 3, 3), mode="replicate"), self.gabor).abs() for f in feats]
        size = feats[self.map_level].shape[2:]
        total = 0
        for c in self.centers:
            for d in self.deltas:
                s = c + d
                centre = torch.cat([feats[c][:, :1], feats[c][:, 1:2] - feats[c][:, 2:3],
                                    feats[c][:, 3:4] - feats[c][:, 4:5], orient[c]], 1)
                surround = torch.cat([feats[s][:, :1], feats[s][:, 2:3] - feats[s][:, 1:2],
                                      feats[s][:, 4:5] - feats[s][:, 3:4], orient[s]], 1)
                up = F.interpolate(surround, size=centre.shape[2:], mode="bilinear", align_corners=False)
                total = total + self.across(self.normalize((centre - up).abs()), size)
        cons_i = total[:, 0:1]
        cons_c = total[:, 1:2] + total[:, 2:3]
        cons_o = sum(self.normalize(total[:, 3 + t:4 + t]) for t in range(4))
        return (self.normalize(cons_i) + self.normalize(cons_c) + self.normalize(cons_o)) / 3


def test_itti_matches_torch_twin():
    x = itti.example_image(np.random.default_rng(0), (2, 3, 32, 32))
    twin = TorchItti(**itti.SMALL_OPTIONS)
    worst = _compare(lambda p, image: itti.itti(p, image, **itti.SMALL_OPTIONS), twin, None, {}, [x])
    assert worst <= TOL


def test_itti_matches_torch_twin_other_geometry():
    options = {"levels": 5, "centers": (1,), "deltas": (2, 3), "map_level": 1}
    x = itti.example_image(np.random.default_rng(1), (1, 3, 20, 27), options=options)
    worst = _compare(lambda p, image: itti.itti(p, image, **options), TorchItti(**options), None, {}, [x])
    assert worst <= TOL


# =============================================================================================
# RAM


class _Glimpse(nn.Module):
    def __init__(self, glimpse_size, h_g, h_l):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(glimpse_size, h_g), nn.Linear(2, h_l)
        self.fc3, self.fc4 = nn.Linear(h_g, h_g + h_l), nn.Linear(h_l, h_g + h_l)


class _Core(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.i2h, self.h2h = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)


class _Head(nn.Module):
    def __init__(self, hidden, out):
        super().__init__()
        self.fc = nn.Linear(hidden, out)


class TorchRAM(nn.Module):
    """The kevinzakka port's model with the spec's exceptions (one-layer location mean, locations as input)."""

    def __init__(self, channels, g, k, s, h_g, h_l, classes, detach_policy=False, detach_baseline=True):
        super().__init__()
        self.g, self.k, self.s = g, k, s
        self.detach_policy, self.detach_baseline = detach_policy, detach_baseline
        self.sensor = _Glimpse(k * g * g * channels, h_g, h_l)
        self.rnn = _Core(h_g + h_l)
        self.locator = _Head(h_g + h_l, 2)
        self.classifier = _Head(h_g + h_l, classes)
        self.baseliner = _Head(h_g + h_l, 1)

    def foveate(self, x, l):
        phi, size = [], self.g
        for _ in range(self.k):
            b, _, h, _ = x.shape
            start = (0.5 * ((l.detach() + 1.0) * h)).long()
            padded = F.pad(x, (size // 2, size // 2, size // 2, size // 2))
            patch = torch.stack([padded[i, :, start[i, 1]:start[i, 1] + size, start[i, 0]:start[i, 0] + size]
                                 for i in range(b)])
            phi.append(F.avg_pool2d(patch, size // self.g) if size != self.g else patch)
            size = int(self.s * size)
        return torch.cat(phi, 1).view(x.shape[0], -1)

    def forward(self, x, locations):
        h = torch.zeros(x.shape[0], self.rnn.h2h.weight.shape[0], dtype=x.dtype)
        means, baselines = [], []
        for t in range(locations.shape[1] - 1):
            l_prev = locations[:, t].clamp(-1, 1)
            what = self.sensor.fc3(F.relu(self.sensor.fc1(self.foveate(x, l_prev))))
            where = self.sensor.fc4(F.relu(self.sensor.fc2(l_prev)))
            h = F.relu(self.rnn.i2h(F.relu(what + where)) + self.rnn.h2h(h))
            means.append(torch.tanh(self.locator.fc(h.detach() if self.detach_policy else h)))
            baselines.append(self.baseliner.fc(h.detach() if self.detach_baseline else h).squeeze(1))
        return F.log_softmax(self.classifier.fc(h), dim=1), torch.stack(means, 1), torch.stack(baselines, 1)

    def loss(self, x, locations, labels, std, advantage=None):
        log_probs, means, baselines = self(x, locations)
        log_pi = torch.distributions.Normal(means, std).log_prob(locations[:, 1:]).sum(-1)
        reward = (log_probs.argmax(1).detach() == labels).double().unsqueeze(1).repeat(1, baselines.shape[1])
        adjusted = reward - baselines.detach() if advantage is None else advantage
        reinforce = torch.sum(-log_pi * adjusted, dim=1).mean()
        return F.nll_loss(log_probs, labels) + F.mse_loss(baselines, reward) + 0.01 * reinforce


def _ram_case(seed=0):
    rng = np.random.default_rng(seed)
    options = {"patch_size": 4, "num_patches": 2, "glimpse_scale": 2}
    params = ram.init(rng, 2, patch_size=4, num_patches=2, glimpse_hidden=6, loc_hidden=5, num_classes=4)
    x = dev(rng.standard_normal((3, 2, 12, 12)))
    # pre-clamp locations; T = 4.  Some outside [-1, 1] (clamped) -- the port pads enough for l = +-1.
    locations = dev(np.concatenate([rng.uniform(-1, 1, (3, 1, 2)), rng.uniform(-1.2, 1.2, (3, 4, 2))], axis=1))
    return params, x, locations, options


@pytest.mark.parametrize("detach_policy", [False, True])
def test_ram_log_probs_match_torch_twin(detach_policy):
    params, x, locations, options = _ram_case()
    twin = _load(TorchRAM(2, 4, 2, 2, 6, 5, 4, detach_policy=detach_policy), params)
    worst = _compare(lambda p, image, loc: ram.ram(p, image, loc, detach_policy_input=detach_policy, **options),
                     lambda image, loc: twin(image, loc)[0], twin, params, [x, locations])
    assert worst <= TOL


def test_ram_rollout_means_and_baselines_match_torch_twin():
    params, x, locations, options = _ram_case(1)
    twin = _load(TorchRAM(2, 4, 2, 2, 6, 5, 4, detach_baseline=False), params)

    def np_fn(p, image, loc):
        out = ram.rollout(p, image, loc, detach_baseline_input=False, **options)
        return ag.concatenate([out["means"], ag.expand_dims(out["baselines"], 2)], axis=2)

    def torch_fn(image, loc):
        _, means, baselines = twin(image, loc)
        return torch.cat([means, baselines.unsqueeze(2)], 2)

    assert _compare(np_fn, torch_fn, twin, params, [x, locations]) <= TOL


@pytest.mark.parametrize("constant_advantage", [False, True])
def test_ram_hybrid_loss_matches_torch_twin(constant_advantage):
    params, x, locations, options = _ram_case(2)
    labels = np.array([0, 3, 1])
    # make one prediction right so that R has both values
    logp = host(ram.ram(params, x, locations, **options))
    labels[0] = int(np.argmax(logp[0]))
    advantage = np.random.default_rng(3).standard_normal((3, 4)) if constant_advantage else None
    twin = _load(TorchRAM(2, 4, 2, 2, 6, 5, 4), params)
    worst = _compare(
        lambda p, image, loc: ram.reinforce_loss(p, image, loc, dev(labels), std=0.2,
                                                 advantage=None if advantage is None else dev(advantage), **options),
        lambda image, loc: twin.loss(image, loc, torch.from_numpy(labels), 0.2,
                                     None if advantage is None else torch.from_numpy(advantage)),
        twin, params, [x, locations], scalar=True)
    assert worst <= TOL


# =============================================================================================
# RA-CNN


class _CNN(nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)


class _APN(nn.Module):
    def __init__(self, features, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(features, hidden), nn.Linear(hidden, 3)


class TorchRACNN(nn.Module):
    """Three scales; the zoom samples the masked image with F.grid_sample (bilinear, zeros, align_corners=True)
    at u_i = t_y - t_l + 2 t_l i / S (rows) and v_j = t_x - t_l + 2 t_l j / S (columns)."""

    def __init__(self, channels=3, side=16, width=8, hidden=16, classes=5, k=10.0, through_sampling=True,
                 activation="tanh", pooling="avg"):
        super().__init__()
        features = width * (side // 4) ** 2
        for s in (1, 2, 3):
            setattr(self, f"cnn{s}", _CNN(channels, width))
            setattr(self, f"classifier{s}", nn.Linear(features, classes))
        for s in (1, 2):
            setattr(self, f"apn{s}", _APN(features, hidden))
        self.side, self.k, self.through_sampling = side, k, through_sampling
        self.act = torch.tanh if activation == "tanh" else F.relu
        self.pool = F.avg_pool2d if pooling == "avg" else F.max_pool2d

    def features(self, s, x):
        cnn = getattr(self, f"cnn{s}")
        x = self.pool(self.act(cnn.conv1(x)), 2)
        return self.pool(self.act(cnn.conv2(x)), 2).flatten(1)

    def zoom(self, x, box):
        n, _, h, w = x.shape
        tx, ty, tl = box[:, 0:1], box[:, 1:2], box[:, 2:3]
        ys = torch.arange(h, dtype=x.dtype)[None]
        xs = torch.arange(w, dtype=x.dtype)[None]
        hk = lambda z: torch.sigmoid(self.k * z)  # noqa: E731
        row_box = hk(ys - (ty - tl)) - hk(ys - (ty + tl))
        col_box = hk(xs - (tx - tl)) - hk(xs - (tx + tl))
        mask = row_box[:, :, None] * col_box[:, None, :]
        attended = x * mask[:, None]
        b = box if self.through_sampling else box.detach()
        index = torch.arange(self.side, dtype=x.dtype)[None]
        rows = b[:, 1:2] - b[:, 2:3] + 2 * b[:, 2:3] * index / self.side  # (N, S)
        cols = b[:, 0:1] - b[:, 2:3] + 2 * b[:, 2:3] * index / self.side
        grid = torch.stack([(2 * cols / (w - 1) - 1)[:, None, :].expand(n, self.side, self.side),
                            (2 * rows / (h - 1) - 1)[:, :, None].expand(n, self.side, self.side)], dim=-1)
        return F.grid_sample(attended, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def forward(self, x):
        logits = []
        for s in (1, 2, 3):
            f = self.features(s, x)
            logits.append(getattr(self, f"classifier{s}")(f))
            if s < 3:
                apn = getattr(self, f"apn{s}")
                a = torch.sigmoid(apn.fc2(torch.tanh(apn.fc1(f))))
                S = float(self.side)
                box = torch.stack([S * a[:, 0], S * a[:, 1], S / 6 + (S / 2 - S / 6) * a[:, 2]], 1)
                x = self.zoom(x, box)
        return torch.stack(logits, 1)

    def loss(self, x, labels, margin=0.05):
        logits = self(x)
        total = sum(F.cross_entropy(logits[:, s], labels) for s in range(3))
        p = F.softmax(logits, -1).gather(2, labels[:, None, None].expand(-1, 3, 1))[..., 0]
        return total + sum(F.relu(p[:, s] - p[:, s + 1] + margin).mean() for s in range(2))


@pytest.mark.parametrize("through_sampling", [True, False])
def test_racnn_matches_torch_twin(through_sampling):
    mech = npattn.get("racnn")
    params = mech.default_params(seed=1)
    (x,) = mech.example_input(np.random.default_rng(2))
    twin = _load(TorchRACNN(through_sampling=through_sampling), params)
    worst = _compare(lambda p, image: racnn.racnn(p, image, grad_through_sampling=through_sampling), twin, twin,
                     params, [x])
    assert worst <= TOL


def test_racnn_relu_maxpool_backbone_matches_torch_twin():
    mech = npattn.get("racnn")
    params = mech.default_params(seed=3)
    (x,) = mech.example_input(np.random.default_rng(4))
    twin = _load(TorchRACNN(activation="relu", pooling="max"), params)
    worst = _compare(lambda p, image: racnn.racnn(p, image, activation="relu", pooling="max"), twin, twin,
                     params, [x])
    assert worst <= TOL


def test_racnn_loss_matches_torch_twin():
    mech = npattn.get("racnn")
    params = mech.default_params(seed=5)
    x = dev(np.random.default_rng(6).standard_normal((4, 3, 16, 16)))
    labels = np.array([0, 4, 2, 2])
    twin = _load(TorchRACNN(), params)
    worst = _compare(lambda p, image: racnn.loss(p, image, dev(labels)),
                     lambda image: twin.loss(image, torch.from_numpy(labels)), twin, params, [x], scalar=True)
    assert worst <= TOL


def test_racnn_zoom_matches_grid_sample_with_box_gradient():
    rng = np.random.default_rng(7)
    image = rng.standard_normal((3, 2, 16, 16))
    boxes = np.stack([rng.uniform(0, 16, 3), rng.uniform(0, 16, 3), rng.uniform(16 / 6, 8, 3)], 1)
    twin = TorchRACNN(channels=2).double()
    worst = _compare(lambda p, x, b: racnn.crop_and_zoom(x, b), lambda x, b: twin.zoom(x, b), None, {},
                     [dev(image), dev(boxes)], diff_inputs=(0, 1))
    assert worst <= TOL
