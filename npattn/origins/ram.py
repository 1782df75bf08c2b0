"""Recurrent Models of Visual Attention, RAM (Mnih, Heess, Graves, Kavukcuoglu, NeurIPS 2014).

At each of T steps the model looks at the image through a glimpse at location l_{t-1}:

    rho(x, l)  = k patches of side g s^i (i = 0..k-1) centred at l, each average-pooled to g x g   glimpse_sensor
    g_t        = relu(fc3(relu(fc1(rho))) + fc4(relu(fc2(l_{t-1}))))                 glimpse network  _step
    h_t        = relu(i2h(g_t) + h2h(h_{t-1})),  h_0 = 0                             core RNN
    mu_t       = tanh(W_l h_t + b_l)                                                location network (mean)
    l_t        ~ N(mu_t, std^2 I), then clamped to [-1, 1] for the next glimpse     Gaussian policy
    b_t        = W_b h_t + b_b                                                      baseline
    log p(y|x) = log_softmax(W_a h_T + b_a)                                         action network   ram
    R          = 1[argmax log p = y]
    loss       = NLL + mean_{n,t}(b_t - R)^2 + 0.01 mean_n sum_t -log pi(l_t | mu_t) (R - b_t)   reinforce_loss

No official code exists; the conventions are those of the popular port
``kevinzakka/recurrent-visual-attention`` (modules.py, model.py, trainer.py), as the spec sheet lists them:

* locations are in [-1, 1]^2 with ``l[:, 0]`` the column (x) and ``l[:, 1]`` the row (y); the patch of side
  ``size`` starts at ``floor(0.5 (l + 1) H) - size // 2`` on *both* axes (the port uses H for the columns
  too; it pads the image with zeros by size // 2 -- here out-of-image pixels read as zero, which is the
  same for every location the port accepts and also covers odd sizes and W != H);
* patch i has side ``int(s * previous side)`` (= g s^i for integer s) and is reduced by
  ``avg_pool2d(kernel = side / g)``; the k patches are concatenated along channels and flattened;
* ``h_0 = 0``; the baseline reads ``h_t`` detached (``detach_baseline_input=True``);
* T glimpses, T sampled locations (the last one is unused except in log pi), T baselines;
* the loss: NLL + MSE(b, R) + 0.01 * mean_N sum_T -log pi (R - b.detach()); log pi is evaluated at the
  *unclamped* sample and summed over the two coordinates; defaults std = 0.05, g = 8, k = 1, s = 1,
  glimpse/location hidden 128 (core hidden 256), T = 6.

Exceptions to the port (spec sheet):

* the location mean is ``tanh(Linear(h))`` with no hidden layer (parameter ``locator.fc``);
* ``detach_policy_input=False`` (default, the paper: the policy gradient also trains the core) -- the port
  detaches ``h_t`` before the location network (``True``);
* **the sampled (pre-clamp) locations are an input** ``locations`` (N, T+1, 2): ``locations[:, 0]`` is l_0
  (the port draws it from U(-1, 1)), ``locations[:, t]`` for t >= 1 the sample at step t.  Forward and loss
  are then ordinary functions that finite differences can check; :func:`sample_locations` draws them from
  the policy with an explicit ``numpy.random.Generator``;
* ``reinforce_loss(..., advantage=None)``: pass the advantage as a constant for an FD-checkable surrogate;
  by default ``R - b.detach()`` is used (a stop-gradient that FD cannot confirm).

Gradients w.r.t. ``locations`` are defined but only piecewise (the glimpse position is an integer
function of l), so the registry checks gradients w.r.t. the image and every parameter.

Parameters (the contract of :mod:`npattn.params`): ``patch_size`` (g) and ``num_patches`` (k) are keywords
of :func:`init` *and* of the apply functions, with the same defaults (a registry entry's ``config`` reaches
both); ``glimpse_scale`` (s) has no parameters and is an apply option.  The hidden sizes come from the shapes
(in-features of ``sensor.fc3``, ``sensor.fc4`` and ``rnn.h2h``) and every parameter is checked on them.
Pixels outside the image read exactly zero (a selection, so a non-finite edge pixel does not leak into
them), and labels must be integer ids in [0, classes).
"""
from __future__ import annotations

import math

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, example, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, SIZE, Bools, Choice, Inputs, Ints, Space
from ._labels import check_labels

NAME = "ram"


def init(rng, channels: int = 1, *, patch_size: int = 8, num_patches: int = 1, glimpse_hidden: int = 128,
         loc_hidden: int = 128, num_classes: int = 10, dtype=np.float64) -> dict:
    """Parameters, named as the port's state_dict (``sensor.fc1..fc4``, ``rnn.i2h/h2h``, ``classifier.fc``,
    ``baseliner.fc``) plus ``locator.fc`` (2, hidden) for the one-layer location mean.  Core hidden size
    is ``glimpse_hidden + loc_hidden``."""
    hidden = glimpse_hidden + loc_hidden
    glimpse_size = num_patches * patch_size * patch_size * channels
    params: dict = {}
    init_linear(rng, params, "sensor.fc1", glimpse_hidden, glimpse_size, dtype=dtype)
    init_linear(rng, params, "sensor.fc2", loc_hidden, 2, dtype=dtype)
    init_linear(rng, params, "sensor.fc3", hidden, glimpse_hidden, dtype=dtype)
    init_linear(rng, params, "sensor.fc4", hidden, loc_hidden, dtype=dtype)
    init_linear(rng, params, "rnn.i2h", hidden, hidden, dtype=dtype)
    init_linear(rng, params, "rnn.h2h", hidden, hidden, dtype=dtype)
    init_linear(rng, params, "locator.fc", 2, hidden, dtype=dtype)
    init_linear(rng, params, "classifier.fc", num_classes, hidden, dtype=dtype)
    init_linear(rng, params, "baseliner.fc", 1, hidden, dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# glimpse sensor


def patch_sides(patch_size: int, num_patches: int, glimpse_scale: float) -> list:
    """Sides of the k patches: g, int(s g), int(s int(s g)), ... (the port's iteration); each must be a
    multiple of g so that average pooling gives exactly g x g."""
    sides, side = [], int(patch_size)
    for _ in range(num_patches):
        if side < 1 or side % patch_size:
            raise ValueError(f"ram: patch side {side} (glimpse_scale={glimpse_scale}) is not a multiple of "
                             f"patch_size={patch_size}")
        sides.append(side)
        side = int(glimpse_scale * side)
    return sides


def patch_starts(locations, side: int, height: int):
    """Top-left corner (row, column) of a patch of ``side`` around clamped ``locations`` (N, 2) (backend data):
    ``floor(0.5 ((l + 1) H)) - side // 2`` (the port's denormalise, H on both axes)."""
    xp = ag.xp
    centre = xp.floor(0.5 * ((locations + 1.0) * height)).astype(xp.int64)
    return centre[:, 1] - side // 2, centre[:, 0] - side // 2


def extract_patch(x: ag.Tensor, locations, side: int) -> ag.Tensor:
    """(N, C, side, side) patches of ``x`` (N, C, H, W) around ``locations`` (N, 2); outside the image is 0."""
    xp = ag.xp
    n, _, h, w = x.shape
    row0, col0 = patch_starts(locations, side, h)
    offsets = xp.arange(side)
    rows = xp.expand_dims(row0, 1) + offsets  # (N, side)
    cols = xp.expand_dims(col0, 1) + offsets
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = xp.reshape(xp.arange(n), (n, 1, 1))
    rows_in, cols_in = xp.clip(rows, 0, h - 1)[:, :, None], xp.clip(cols, 0, w - 1)[:, None, :]
    pixels = ag.transpose(x, (0, 2, 3, 1))[batch, rows_in, cols_in]  # (N, side, side, C), scatter-add VJP
    patch = ag.transpose(pixels, (0, 3, 1, 2))  # (N, C, side, side)
    # Outside the image the clipped index read an edge pixel: select 0 there (multiplying by 0 would turn a
    # NaN/Inf edge pixel into NaN where the port's zero padding gives 0).
    return ag.where(xp.expand_dims(inside, 1), patch, 0.0)


def glimpse_sensor(x, locations, *, patch_size: int = 8, num_patches: int = 1,
                   glimpse_scale: float = 1.0) -> ag.Tensor:
    """rho(x, l): (N, C, H, W), clamped locations (N, 2) -> (N, k C g g), patch-major, then channel, row,
    column (the port's ``torch.cat(phi, 1).view(N, -1)``)."""
    x = ag.as_tensor(x)
    locations = locations.data if isinstance(locations, ag.Tensor) else locations
    patches = []
    for side in patch_sides(patch_size, num_patches, glimpse_scale):
        patch = extract_patch(x, locations, side)
        if side != patch_size:
            patch = ag.avg_pool2d(patch, side // patch_size)
        patches.append(patch)
    glimpse = ag.concatenate(patches, axis=1)
    return ag.reshape(glimpse, (glimpse.shape[0], int(np.prod(glimpse.shape[1:]))))   # no -1: N may be 0


# ---------------------------------------------------------------------------------------------
# one step of the recurrence


def _detached(t: ag.Tensor) -> ag.Tensor:
    return ag.Tensor(t.data)


def _step(params, x, location, hidden, glimpse: dict, detach_policy_input: bool,
          detach_baseline_input: bool):
    """One glimpse: (clamped l_{t-1}, h_{t-1}) -> (h_t, mu_t, b_t)."""
    glimpse_hidden, loc_hidden = params.shape("sensor.fc3.weight")[1], params.shape("sensor.fc4.weight")[1]
    core = hidden.shape[-1]
    rho = glimpse_sensor(x, location, **glimpse)
    what = linear(params, "sensor.fc3", ag.relu(linear(params, "sensor.fc1", rho, out=glimpse_hidden)), out=core)
    where = linear(params, "sensor.fc4", ag.relu(linear(params, "sensor.fc2", location, out=loc_hidden)), out=core)
    g_t = ag.relu(what + where)
    hidden = ag.relu(linear(params, "rnn.i2h", g_t, out=core) + linear(params, "rnn.h2h", hidden, out=core))
    mean = ag.tanh(linear(params, "locator.fc", _detached(hidden) if detach_policy_input else hidden, out=2))
    baseline = linear(params, "baseliner.fc", _detached(hidden) if detach_baseline_input else hidden, out=1)
    return hidden, mean, baseline[:, 0]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{NAME}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _finite(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{NAME}: {name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


def _check_flags(**flags) -> None:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{NAME}: {name} must be True or False, got {type(value).__name__} {value!r}")


def _glimpse_options(patch_size, num_patches, glimpse_scale) -> dict:
    return {"patch_size": _positive_int("patch_size", patch_size),
            "num_patches": _positive_int("num_patches", num_patches),
            "glimpse_scale": _finite("glimpse_scale", glimpse_scale, positive=True)}


def _check_image(params, x, glimpse: dict) -> ag.Tensor:
    """Validate the image against the parameters and glimpse options; returns it as a Tensor."""
    in_features = params.shape("sensor.fc1.weight")[1]
    per_channel = glimpse["num_patches"] * glimpse["patch_size"] ** 2
    if in_features % per_channel:
        raise ValueError(f"{NAME}: sensor.fc1 takes {in_features} inputs, not a multiple of k g^2 = {per_channel}; "
                         "patch_size/num_patches do not match the parameters")
    patch_sides(glimpse["patch_size"], glimpse["num_patches"], glimpse["glimpse_scale"])
    x = check_input(NAME, x, channels=in_features // per_channel, min_size=1)   # a 0-size image has no pixel
    check_dtype(NAME, x, params)
    return x


def _check_locations(x: ag.Tensor, locations) -> ag.Tensor:
    locations = ag.as_tensor(locations)
    if locations.ndim != 3 or locations.shape[0] != x.shape[0] or locations.shape[2] != 2 or locations.shape[1] < 2:
        raise ValueError(f"{NAME}: locations must be (N, T+1, 2) with N = {x.shape[0]} and T >= 1, got shape "
                         f"{locations.shape}")
    if locations.dtype != x.dtype:
        raise TypeError(f"{NAME}: locations have dtype {locations.dtype} but x has {x.dtype}")
    if locations.data.size and not bool(ag.xp.all(ag.xp.isfinite(locations.data))):
        raise ValueError(f"{NAME}: locations must be finite (a glimpse position is an integer function of them)")
    return locations


@uses_params(NAME)
def rollout(params: dict, x, locations, *, patch_size: int = 8, num_patches: int = 1, glimpse_scale: float = 1.0,
            detach_policy_input: bool = False, detach_baseline_input: bool = True) -> dict:
    """Run the T = locations.shape[1] - 1 glimpses for given sampled locations.

    Args:
        x: (N, C, H, W) images.  locations: (N, T+1, 2) pre-clamp locations (l_0, then the samples).
        patch_size, num_patches: g and k, as given to :func:`init`; glimpse_scale: s.

    Returns:
        dict: ``log_probs`` (N, classes), ``means`` (N, T, 2) policy means mu_1..mu_T, ``baselines`` (N, T).
    """
    glimpse = _glimpse_options(patch_size, num_patches, glimpse_scale)
    _check_flags(detach_policy_input=detach_policy_input, detach_baseline_input=detach_baseline_input)
    x = _check_image(params, x, glimpse)
    locations = _check_locations(x, locations)
    hidden_size = params.shape("rnn.h2h.weight")[1]
    hidden = ag.Tensor(ag.xp.zeros((x.shape[0], hidden_size), dtype=x.dtype))
    means, baselines = [], []
    for t in range(locations.shape[1] - 1):
        location = ag.clip(locations[:, t], -1.0, 1.0)
        hidden, mean, baseline = _step(params, x, location, hidden, glimpse, detach_policy_input,
                                       detach_baseline_input)
        means.append(mean)
        baselines.append(baseline)
    log_probs = ag.log_softmax(linear(params, "classifier.fc", hidden), axis=-1)
    return {"log_probs": log_probs, "means": ag.stack(means, axis=1), "baselines": ag.stack(baselines, axis=1)}


@uses_params(NAME)
def ram(params: dict, x, locations, *, train: bool = False, patch_size: int = 8, num_patches: int = 1,
        glimpse_scale: float = 1.0, detach_policy_input: bool = False,
        detach_baseline_input: bool = True) -> ag.Tensor:
    """Class log-probabilities log p(y | x) (N, classes) after T glimpses at the given locations.

    x: (N, C, H, W); locations: (N, T+1, 2) pre-clamp (see :func:`rollout`).  ``train`` has no effect
    (the randomness is in ``locations``; draw them with :func:`sample_locations`).
    """
    return rollout(params, x, locations, patch_size=patch_size, num_patches=num_patches,
                   glimpse_scale=glimpse_scale, detach_policy_input=detach_policy_input,
                   detach_baseline_input=detach_baseline_input)["log_probs"]


@uses_params(NAME)
def sample_locations(params: dict, x, rng: np.random.Generator, num_glimpses: int, *, std: float = 0.05,
                     patch_size: int = 8, num_patches: int = 1, glimpse_scale: float = 1.0):
    """Draw (N, T+1, 2) pre-clamp locations from the policy: l_0 ~ U(-1, 1), l_t = mu_t + std * eps_t.

    Runs the recurrence without gradient, drawing from ``rng`` on the host (so a seed gives the same
    locations on every backend).  Returns a backend array in the dtype of ``x``.  Every parameter is read
    (the classifier's too, though no class is predicted here), so the parameters are those of :func:`ram`.
    """
    glimpse = _glimpse_options(patch_size, num_patches, glimpse_scale)
    num_glimpses = _positive_int("num_glimpses", num_glimpses)
    std = _finite("std", std, positive=True)
    x = _check_image(params, x, glimpse)
    n = x.shape[0]
    first = ag.uniform(rng, (n, 2), -1.0, 1.0, dtype=x.dtype)
    hidden = ag.Tensor(ag.xp.zeros((n, params.shape("rnn.h2h.weight")[1]), dtype=x.dtype))
    samples = [first]
    with ag.no_grad():
        for _ in range(num_glimpses):
            location = ag.xp.clip(samples[-1], -1.0, 1.0)
            hidden, mean, _ = _step(params, x, location, hidden, glimpse, False, False)
            samples.append(mean.data + ag.normal(rng, (n, 2), std=std, dtype=x.dtype))
        linear(params, "classifier.fc", hidden)          # validates the classifier (nothing else reads it here)
    return ag.xp.stack(samples, axis=1)


# ---------------------------------------------------------------------------------------------
# the hybrid loss


def log_policy(means, locations, std: float) -> ag.Tensor:
    """log pi(l_t | mu_t) = sum over (x, y) of log N(l_t; mu_t, std^2): means, locations (N, T, 2) -> (N, T)."""
    z = (ag.as_tensor(locations) - means) / std
    return ag.sum(-0.5 * z * z - math.log(std) - 0.5 * math.log(2.0 * math.pi), axis=-1)


@uses_params(NAME)
def reinforce_loss(params: dict, x, locations, labels, *, std: float = 0.05, advantage=None,
                   reinforce_weight: float = 0.01, patch_size: int = 8, num_patches: int = 1,
                   glimpse_scale: float = 1.0, detach_policy_input: bool = False,
                   detach_baseline_input: bool = True) -> ag.Tensor:
    """The hybrid loss (a scalar): NLL + MSE(b, R) + w * mean_N sum_T -log pi(l_t | mu_t) A_t.

    Args:
        labels: (N,) integer class ids in [0, classes) (backend array); anything else is an error.
        advantage: None (default) for A = R - b.detach() (the port), or a constant (N, T) (or broadcastable)
            array: then the loss is an ordinary function of the parameters that finite differences can check.
            Its gradient is never taken.
        reinforce_weight: w (0.01 in the port).
    """
    std = _finite("std", std, positive=True)
    reinforce_weight = _finite("reinforce_weight", reinforce_weight)
    out = rollout(params, x, locations, patch_size=patch_size, num_patches=num_patches,
                  glimpse_scale=glimpse_scale, detach_policy_input=detach_policy_input,
                  detach_baseline_input=detach_baseline_input)
    xp = ag.xp
    log_probs, baselines = out["log_probs"], out["baselines"]
    n, classes = log_probs.shape
    labels = check_labels(NAME, labels, batch=n, classes=classes)
    nll = -ag.mean(log_probs[xp.arange(n), labels])
    reward = (xp.argmax(log_probs.data, axis=1) == labels).astype(log_probs.dtype)  # R, no gradient
    reward = xp.broadcast_to(xp.expand_dims(reward, 1), baselines.shape)
    baseline_loss = ag.mean((baselines - reward) ** 2)
    if advantage is None:
        advantage = reward - baselines.data
    else:
        advantage = advantage.data if isinstance(advantage, ag.Tensor) else advantage
        try:
            advantage = xp.broadcast_to(advantage, baselines.shape)
        except ValueError:
            raise ValueError(f"{NAME}: advantage of shape {tuple(advantage.shape)} does not broadcast to the "
                             f"(N, T) = {tuple(baselines.shape)} of the rollout") from None
    log_pi = log_policy(out["means"], ag.as_tensor(locations)[:, 1:], std)
    reinforce = ag.mean(ag.sum(-log_pi * advantage, axis=1))
    return nll + baseline_loss + reinforce_weight * reinforce


SMALL_GLIMPSE = {"patch_size": 4, "num_patches": 2, "glimpse_scale": 2}


def _example(rng, dtype=np.float64):
    """Images (2, 1, 12, 12) and T = 3 pre-clamp locations, some outside [-1, 1] to exercise the clamp."""
    images = example(rng, (2, 1, 12, 12), dtype)
    first = rng.uniform(-1.0, 1.0, (2, 1, 2))
    samples = rng.uniform(-1.2, 1.2, (2, 3, 2))
    return images, ag.from_numpy(np.concatenate([first, samples], axis=1).astype(dtype))


def _space_inputs(rng, v, dtype):
    """Images (N, C, H, W) and T + 1 pre-clamp locations, some outside [-1, 1] (the clamp)."""
    locations = rng.uniform(-1.2, 1.2, (v.batch, v.glimpses + 1, 2))
    return example(rng, (v.batch, v.channels, v.height, v.width), dtype), ag.from_numpy(locations.astype(dtype))


def _sides_divide(v) -> bool:
    """patch_sides' rule: every patch side int(s * previous) a positive multiple of g."""
    side = v.patch_size
    for _ in range(v.num_patches):
        if side < 1 or side % v.patch_size:
            return False
        side = int(v.glimpse_scale * side)
    return True


# g, k and the hidden sizes from 1; glimpse scales below 1, fractional and integer (the sides must stay
# multiples of g: a constraint); patches larger than the image (outside reads zero); T from one glimpse
SPACE = Space(config={"channels": Ints(1, 3), "patch_size": Ints(1, 4), "num_patches": Ints(1, 3),
                      "glimpse_hidden": Ints(1, 8), "loc_hidden": Ints(1, 8), "num_classes": Ints(1, 5)},
              options={"glimpse_scale": Choice(2, 1, 3, 0.5, 1.5), "detach_policy_input": Bools(),
                       "detach_baseline_input": Bools()},
              inputs=Inputs({"batch": BATCH, "glimpses": Ints(1, 4), "height": SIZE, "width": SIZE}, _space_inputs),
              where=(_sides_divide,))


register(Mechanism(
    name=NAME, family="origins",
    paper=Paper("Mnih, Heess, Graves, Kavukcuoglu", "Recurrent Models of Visual Attention", "NeurIPS", 2014),
    init=init, apply_fn=ram,
    config={"channels": 1, "glimpse_hidden": 8, "loc_hidden": 8, "num_classes": 4,
            "patch_size": SMALL_GLIMPSE["patch_size"], "num_patches": SMALL_GLIMPSE["num_patches"]},
    options={"glimpse_scale": SMALL_GLIMPSE["glimpse_scale"]},        # g and k reach apply as structure
    example_input=_example, differentiable_inputs=(0,), channel_axis=1, space=SPACE,
    description="hard attention: a recurrent glimpse policy trained with REINFORCE; inputs are image and "
                "sampled locations",
))
