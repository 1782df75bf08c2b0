"""RA-CNN: Recurrent Attention Convolutional Neural Network (Fu, Zheng, Mei, "Look Closer to See Better",
CVPR 2017).

Three scales s = 1, 2, 3.  Each has its own small CNN; scales 1 and 2 also have an attention proposal
network (APN) whose box crops and zooms the input of the next scale:

    f_s   = CNN_s(X_s)                         (avgpool(tanh(conv)) twice, flattened)       _features
    Y_s   = W_s f_s + b_s                      class scores of scale s (eq. 1)             racnn
    [t_x, t_y, t_l] = APN_s(f_s)               square box: centre (t_x, t_y), half side t_l (eq. 2)   attention_box
    M(x, y) = [h(x - t_x(tl)) - h(x - t_x(br))] [h(y - t_y(tl)) - h(y - t_y(br))]   (eqs. 3-4) boxcar_mask
          t_x(tl) = t_x - t_l, t_x(br) = t_x + t_l (same for y),  h(z) = 1 / (1 + exp(-k z)), k = 10
    X_att = X_s * M                                                                   (eq. 5)
    X_amp(i, j) = sum_{a,b in {0,1}} |1 - a - {u_i}| |1 - b - {v_j}| X_att([u_i] + a, [v_j] + b)   (eq. 6)
          u_i = t_y(tl) + i / lambda,  v_j = t_x(tl) + j / lambda,  lambda = S / (2 t_l)       crop_and_zoom
    X_{s+1} = X_amp
    L = sum_s CE(Y_s, y) + sum_{s=1,2} max(0, p_t^(s) - p_t^(s+1) + margin),  margin = 0.05   (eqs. 7-8) loss

No official code was released; these choices are ours (spec sheet, "In PyTorch terms"):

* CNN: per scale conv3x3(pad 1) - tanh - avgpool2 - conv3x3(pad 1) - tanh - avgpool2, then a linear
  classifier on the flattened features; the input side S must be divisible by 4 and fixed by the
  parameters (as the paper's fixed-size VGG inputs).  The backbone is smooth on purpose: with ReLU and
  max-pooling (``activation="relu", pooling="max"``, VGG's choice) thousands of kinks sit in the zoomed
  inputs and a finite-difference check of the whole model straddles one in about a quarter of random
  directions; the attention parts (APN, mask, zoom) are the same either way.
* APN: Linear - tanh - Linear - sigmoid, giving a in (0, 1)^3, scaled to pixels:
  ``t_x = S a_0``, ``t_y = S a_1``, ``t_l = S/6 + (S/2 - S/6) a_2`` -- so the side 2 t_l lies in (S/3, S).
  Parts of a box outside the image read zeros.
* Coordinates: x is the column index, y the row index, pixel centres at integers 0..S-1; i indexes the
  output rows (sampled at u_i), j the output columns.  The crop corner (t_x(tl), t_y(tl)) is real-valued, so
  [.] and {.} are taken of the absolute source coordinate u_i = t_y(tl) + i/lambda (the paper's formula
  writes i/lambda relative to the crop; the two agree when the corner is an integer).  The zoomed image has
  the input's size S.
* ``grad_through_sampling=True`` (default) differentiates the mask *and* the sampling positions u_i, v_j --
  the derivative of the function computed, which finite differences confirm (away from integer u_i, v_j,
  where the bilinear weights have kinks).  ``grad_through_sampling=False`` is the paper's estimator
  (eqs. 9-10): the gradient reaches (t_x, t_y, t_l) through the mask M only.
* ``loss``: cross-entropy and ranking terms are averaged over the batch; p_t^(s) is the softmax
  probability of the true class at scale s.  Labels must be integer ids in [0, classes).

Parameters (the contract of :mod:`npattn.params`): no structural options; the sizes come from the shapes
(C from ``cnn1.conv1``, the width from the in-channels of ``cnn1.conv2``, S from the in-features of
``classifier1``, the APN width from the in-features of ``apn{s}.fc2``) and every parameter is checked on them.
"""
from __future__ import annotations

import numpy as np

import autograd as ag

from ..layers import check_dtype, check_input, conv, example, init_conv, init_linear, linear
from ..params import uses_params
from ..registry import Mechanism, Paper, register
from ..space import BATCH, Bools, Choice, Derived, Inputs, Ints, Space
from ._labels import check_labels
from ._sequence import prefix_view

NAME = "racnn"
SCALES = 3


def init(rng, channels: int = 3, *, image_size: int = 16, width: int = 8, apn_hidden: int = 16,
         num_classes: int = 5, dtype=np.float64) -> dict:
    """Parameters: ``cnn{s}.conv1/conv2`` (width, ., 3, 3) and ``classifier{s}`` (classes, width (S/4)^2)
    for s = 1, 2, 3; ``apn{s}.fc1`` (hidden, width (S/4)^2) and ``apn{s}.fc2`` (3, hidden) for s = 1, 2."""
    if image_size % 4:
        raise ValueError(f"racnn: image_size must be divisible by 4, got {image_size}")
    features = width * (image_size // 4) ** 2
    params: dict = {}
    for scale in range(1, SCALES + 1):
        init_conv(rng, params, f"cnn{scale}.conv1", width, channels, 3, dtype=dtype)
        init_conv(rng, params, f"cnn{scale}.conv2", width, width, 3, dtype=dtype)
        init_linear(rng, params, f"classifier{scale}", num_classes, features, dtype=dtype)
        if scale < SCALES:
            init_linear(rng, params, f"apn{scale}.fc1", apn_hidden, features, dtype=dtype)
            init_linear(rng, params, f"apn{scale}.fc2", 3, apn_hidden, dtype=dtype)
    return params


# ---------------------------------------------------------------------------------------------
# attention: box, mask, crop and zoom


def boxcar_mask(box, height: int, width: int, k: float = 10.0) -> ag.Tensor:
    """M (N, 1, H, W) for boxes (N, 3) = (t_x, t_y, t_l) in pixels: product of two logistic boxcars."""
    box = ag.as_tensor(box)
    tx, ty, tl = (ag.reshape(box[:, i], (-1, 1)) for i in range(3))
    cols = ag.from_numpy(np.arange(width, dtype=box.dtype)[None])  # x, (1, W)
    rows = ag.from_numpy(np.arange(height, dtype=box.dtype)[None])  # y, (1, H)

    def boxcar(coords, centre):  # h(c - (t - t_l)) - h(c - (t + t_l)), (N, len)
        return ag.sigmoid(k * (coords - (centre - tl))) - ag.sigmoid(k * (coords - (centre + tl)))

    mask = ag.expand_dims(boxcar(rows, ty), 2) * ag.expand_dims(boxcar(cols, tx), 1)  # (N, H, W)
    return ag.expand_dims(mask, 1)


def sampling_matrix(start, half_side, size_in: int, size_out: int, differentiable: bool = True) -> ag.Tensor:
    """(N, size_out, size_in) bilinear weights along one axis: row i holds 1 - {u_i} at [u_i] and {u_i} at
    [u_i] + 1 (out-of-range indices dropped), with u_i = start + i * 2 t_l / size_out.

    start, half_side: (N,) Tensors (t(tl) and t_l).  ``differentiable=False`` treats u as a constant.
    """
    xp = ag.xp
    step = 2.0 * half_side / float(size_out)  # 1 / lambda
    index = ag.from_numpy(np.arange(size_out, dtype=start.dtype))
    position = ag.expand_dims(start, 1) + ag.expand_dims(step, 1) * index  # u_i, (N, size_out)
    if not differentiable:
        position = ag.Tensor(position.data)
    lower = xp.floor(position.data)  # [u_i]: a selection, no gradient
    fraction = position - lower  # {u_i}
    source = xp.arange(size_in)
    at_lower = (xp.expand_dims(lower, 2) == source).astype(start.dtype)  # one-hot [u_i]      (N, out, in)
    at_upper = (xp.expand_dims(lower + 1, 2) == source).astype(start.dtype)  # one-hot [u_i] + 1
    return at_lower * ag.expand_dims(1.0 - fraction, 2) + at_upper * ag.expand_dims(fraction, 2)


def crop_and_zoom(x, box, *, k: float = 10.0, grad_through_sampling: bool = True, size=None) -> ag.Tensor:
    """X_amp: mask ``x`` (N, C, H, W) with the box (N, 3) = (t_x, t_y, t_l) and zoom the box to ``size``
    (default the input size) by the paper's bilinear formula.  Returns (N, C, size, size)."""
    x, box = ag.as_tensor(x), ag.as_tensor(box)
    n, _, h, w = x.shape
    size = h if size is None else int(size)
    attended = x * boxcar_mask(box, h, w, k)  # X_att = X * M
    tx, ty, tl = box[:, 0], box[:, 1], box[:, 2]
    rows = sampling_matrix(ty - tl, tl, h, size, grad_through_sampling)  # (N, size, H)
    cols = sampling_matrix(tx - tl, tl, w, size, grad_through_sampling)  # (N, size, W)
    return ag.matmul(ag.matmul(ag.expand_dims(rows, 1), attended), ag.expand_dims(ag.transpose(cols, (0, 2, 1)), 1))


def attention_box(params: dict, scale: int, features, image_size: int) -> ag.Tensor:
    """APN_s: features (N, F) -> (N, 3) = (t_x, t_y, t_l) in pixels of the scale's input.

    Reads ``apn{scale}.fc1`` (hidden, F) and ``apn{scale}.fc2`` (3, hidden) (given a whole dict, every key
    under ``apn{scale}`` must be one of them)."""
    view, owned = prefix_view(NAME, params, f"apn{scale}")
    box = _attention_box(view, scale, ag.as_tensor(features), image_size)
    if owned:
        view.check_all_used()
    return box


def _attention_box(params, scale: int, features: ag.Tensor, image_size: int) -> ag.Tensor:
    hidden = params.shape(f"apn{scale}.fc2.weight")[1]
    a = ag.sigmoid(linear(params, f"apn{scale}.fc2", ag.tanh(linear(params, f"apn{scale}.fc1", features, out=hidden)),
                          out=3))
    side = float(image_size)
    offset = ag.from_numpy(np.array([0.0, 0.0, side / 6.0], dtype=a.dtype))
    span = ag.from_numpy(np.array([side, side, side / 2.0 - side / 6.0], dtype=a.dtype))
    return a * span + offset


# ---------------------------------------------------------------------------------------------
# the network


ACTIVATIONS = {"tanh": ag.tanh, "relu": ag.relu}
POOLINGS = {"avg": ag.avg_pool2d, "max": ag.max_pool2d}


def _features(params, scale: int, x, activation: str, pooling: str) -> ag.Tensor:
    """CNN_s: (N, C, S, S) -> (N, width (S/4)^2); both convolutions are 3x3 with padding 1 (size kept)."""
    act, pool = ACTIVATIONS[activation], POOLINGS[pooling]
    width = params.shape("cnn1.conv2.weight")[1]
    params.take(f"cnn{scale}.conv1.weight", (width, x.shape[1], 3, 3))
    hidden = pool(act(conv(params, f"cnn{scale}.conv1", x, padding=1, out=width)), 2)
    params.take(f"cnn{scale}.conv2.weight", (width, width, 3, 3))
    hidden = pool(act(conv(params, f"cnn{scale}.conv2", hidden, padding=1, out=width)), 2)
    return ag.reshape(hidden, (hidden.shape[0], width * hidden.shape[2] * hidden.shape[3]))   # no -1: N may be 0


def _input_side(params) -> int:
    """S, from the classifiers' in-features F = width (S/4)^2."""
    width = params.shape("cnn1.conv2.weight")[1]
    features = params.shape("classifier1.weight")[1]
    quarter = int(round((features / width) ** 0.5)) if width else 0
    if width < 1 or quarter < 1 or width * quarter * quarter != features:
        raise ValueError(f"{NAME}: parameter 'classifier1.weight' must have width * (S/4)^2 in-features with "
                         f"width = {width} (in-channels of 'cnn1.conv2.weight'), got {features}")
    return 4 * quarter


def _check(params, x) -> ag.Tensor:
    channels = params.shape("cnn1.conv1.weight")[1]
    side = _input_side(params)
    x = check_input(NAME, x, channels=channels, min_size=side)
    check_dtype(NAME, x, params)
    if x.shape[2:] != (side, side):
        raise ValueError(f"{NAME}: x must be (N, {channels}, {side}, {side}) to match the classifiers, "
                         f"got shape {x.shape}")
    return x


def _check_options(k, grad_through_sampling, activation, pooling) -> None:
    if activation not in ACTIVATIONS or pooling not in POOLINGS:
        raise ValueError(f"{NAME}: activation must be one of {sorted(ACTIVATIONS)} and pooling one of "
                         f"{sorted(POOLINGS)}, got {activation!r}, {pooling!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not 0 < k < np.inf:
        raise ValueError(f"{NAME}: k (the boxcar's logistic steepness) must be a finite positive number, got {k!r}")
    if not isinstance(grad_through_sampling, (bool, np.bool_)):
        raise TypeError(f"{NAME}: grad_through_sampling must be True or False, got {grad_through_sampling!r}")


@uses_params(NAME)
def forward(params: dict, x, *, k: float = 10.0, grad_through_sampling: bool = True, activation: str = "tanh",
            pooling: str = "avg") -> dict:
    """All three scales.  x: (N, C, S, S).  ``activation`` ("tanh"/"relu"), ``pooling`` ("avg"/"max"): the
    backbone's nonlinearity and pooling.

    Returns dict: ``logits`` list of 3 (N, classes), ``boxes`` (N, 2, 3) the APN boxes (t_x, t_y, t_l) of
    scales 1 and 2 (each in its scale's input pixels), ``inputs`` list of the 3 scale inputs (N, C, S, S).
    """
    _check_options(k, grad_through_sampling, activation, pooling)
    x = _check(params, x)
    side = x.shape[2]
    classes = params.shape("classifier1.weight")[0]
    logits, boxes, inputs = [], [], [x]
    for scale in range(1, SCALES + 1):
        features = _features(params, scale, inputs[-1], activation, pooling)
        logits.append(linear(params, f"classifier{scale}", features, out=classes))
        if scale < SCALES:
            box = _attention_box(params, scale, features, side)
            boxes.append(box)
            inputs.append(crop_and_zoom(inputs[-1], box, k=k, grad_through_sampling=grad_through_sampling))
    return {"logits": logits, "boxes": ag.stack(boxes, axis=1), "inputs": inputs}


@uses_params(NAME)
def racnn(params: dict, x, *, train: bool = False, k: float = 10.0, grad_through_sampling: bool = True,
          activation: str = "tanh", pooling: str = "avg") -> ag.Tensor:
    """Class scores of the three scales, stacked: (N, 3, classes).  x: (N, C, S, S).  ``train``: no effect.
    Keywords as :func:`forward`."""
    out = forward(params, x, k=k, grad_through_sampling=grad_through_sampling, activation=activation,
                  pooling=pooling)
    return ag.stack(out["logits"], axis=1)


@uses_params(NAME)
def loss(params: dict, x, labels, *, margin: float = 0.05, k: float = 10.0, grad_through_sampling: bool = True,
         activation: str = "tanh", pooling: str = "avg") -> ag.Tensor:
    """L = sum_s mean_N CE(Y_s, y) + sum_{s=1,2} mean_N max(0, p_t^(s) - p_t^(s+1) + margin); a scalar.

    labels: (N,) integer class ids in [0, classes) (backend array); anything else is an error (a negative
    id would silently pick a class from the end).
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)) \
            or not np.isfinite(margin):
        raise ValueError(f"{NAME}: margin must be a finite number, got {margin!r}")
    xp = ag.xp
    logits = forward(params, x, k=k, grad_through_sampling=grad_through_sampling, activation=activation,
                     pooling=pooling)["logits"]
    n, classes = logits[0].shape
    labels = check_labels(NAME, labels, batch=n, classes=classes)
    rows = xp.arange(n)
    log_probs = [ag.log_softmax(scores, axis=-1) for scores in logits]
    classification = sum(-ag.mean(lp[rows, labels]) for lp in log_probs)
    true_prob = [ag.exp(lp[rows, labels]) for lp in log_probs]
    ranking = sum(ag.mean(ag.relu(true_prob[s] - true_prob[s + 1] + margin)) for s in range(SCALES - 1))
    return classification + ranking


register(Mechanism(
    name=NAME, family="origins",
    paper=Paper("Fu, Zheng, Mei", "Look Closer to See Better: Recurrent Attention Convolutional Neural Network "
                "for Fine-grained Image Recognition", "CVPR", 2017),
    init=init, apply_fn=racnn,
    config={"channels": 3, "image_size": 16, "width": 8, "apn_hidden": 16, "num_classes": 5},
    example_input=lambda rng, dtype=np.float64: (example(rng, (2, 3, 16, 16), dtype),),
    channel_axis=1, min_spatial=16,
    # S = 4 (S/4)^2-feature classifiers (init's rule: S divisible by 4), the input S x S as the parameters fix it;
    # one class, one APN unit; both backbones, both estimators, a soft and a steep boxcar; the default's S = 16
    # and 16 APN units as a choice beside the small ones
    space=Space(config={"channels": Ints(1, 3), "_quarter": Choice(Ints(1, 3), 4),
                        "image_size": Derived(lambda v: 4 * v._quarter),
                        "width": Ints(1, 8), "apn_hidden": Choice(Ints(1, 6), 16), "num_classes": Ints(1, 5)},
                options={"k": Choice(10.0, 1.0, 50.0), "grad_through_sampling": Bools(),
                         "activation": Choice("tanh", "relu"), "pooling": Choice("avg", "max")},
                # the map's side is the config's image_size (and "width" is the CNN's, so no height/width dims)
                inputs=Inputs({"batch": BATCH}, lambda rng, v, dtype: (
                    example(rng, (v.batch, v.channels, v.image_size, v.image_size), dtype),))),
    description="attention proposal network crops and zooms a box (differentiable boxcar mask) over three scales",
))
