"""Softmax, normalisation layers, linear, dropout and explicit-generator sampling.

Softmax semantics (docs/architecture.md, "Masks" and "Non-finite values"):

* A boolean ``mask`` in :func:`softmax` / :func:`log_softmax` is True where a position takes part (the
  convention of ``torch.nn.functional.scaled_dot_product_attention``).  Masked positions get exactly
  zero weight (``-inf`` from ``log_softmax``) and zero gradient, whatever cotangent they receive.
* The one policy for a *fully masked* row: zeros from ``softmax``, ``-inf`` from ``log_softmax``, zero
  gradient -- never NaN (PyTorch's ``masked_fill(-inf)`` + softmax gives NaN there; npattn does not).
* Values follow PyTorch: a row whose (kept) entries hold NaN or +inf, or are all -inf without a mask
  having removed them, is NaN throughout (masked positions included, as after ``masked_fill``); -inf
  entries among finite ones get weight 0.
"""
from __future__ import annotations

import warnings

import numpy as _np

from . import _threads, backend, ops
from .backend import xp
from .tensor import Tensor, record

# ---------------------------------------------------------------------------------------------
# softmax


def _mask_data(mask, shape, op: str = "softmax"):
    if mask is None:
        return None
    mask = mask.data if isinstance(mask, Tensor) else mask
    if mask.dtype != bool:
        raise TypeError(f"{op}: mask must be boolean (True = keep), got dtype {mask.dtype}")
    try:
        return xp.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"{op}: mask of shape {tuple(mask.shape)} does not broadcast to {shape}") from None


def _softmax_args(x, axis, mask, op: str, dtype=None):
    """(x, axis, keep-mask or None), validated (a real floating-point x, an axis in range, a boolean mask).

    A ``dtype`` (a real floating-point one) casts x first, as torch's ``dtype=``: an integer input is then
    accepted, and the gradient comes back in x's own dtype.
    """
    x = ops._lift(x)
    if dtype is not None:
        if not _np.issubdtype(_np.dtype(dtype), _np.floating):
            raise TypeError(f"{op}: dtype must be a real floating-point dtype, got {_np.dtype(dtype)}")
        x = ops.astype(x, dtype)
    ops._check_float(op, "input", x)
    axis = ops._one_axis(axis, x.ndim, op)
    keep = _mask_data(mask, x.shape, op)
    return x, axis, keep


def softmax(x, axis: int = -1, mask=None, dtype=None) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along ``axis``; optional boolean keep-mask (module docstring);
    ``dtype`` casts the input first (as torch's; the gradient comes back in the input's dtype).

    VJP: ``dx = y * (g - sum(g * y))`` (:func:`_softmax_vjp`, itself differentiable, so grad-of-grad
    works).  Both are computed row block by row block when ``axis`` is the last one (the common case:
    attention energies), which keeps the temporaries in cache and lets NumPy use every core; each row
    is computed exactly as in one pass, so the numbers do not depend on the blocking.  A 0-d input is one
    row of one entry (torch accepts axis 0 and -1 there); an empty axis gives an empty result.
    """
    x, axis, keep = _softmax_args(x, axis, mask, "softmax", dtype)
    if x.ndim == 0:
        return ops.reshape(softmax(ops.reshape(x, (1,)), 0, None if keep is None else xp.reshape(keep, (1,))), ())
    if x.shape[axis] == 0:
        return ops.mul(x, 0.0)  # nothing to normalise: an empty result, an empty gradient
    data = x.data if keep is None else xp.where(keep, x.data, -xp.inf)
    out = _along_rows(_softmax_kernel, axis, data, keep)
    holder = []

    def vjp(g):
        return _keep_only(_softmax_vjp(holder[0], g, axis), keep)

    result = record(out, ((x, vjp),))
    holder.append(result)
    return result


def _keep_only(grad: Tensor, keep) -> Tensor:
    """``grad`` with zeros at masked positions (a masked entry does not take part, even in a NaN row)."""
    return grad if keep is None else ops.where(keep, grad, 0.0)


def _softmax_kernel(out, data, keep, axis):
    """out = softmax(data) along ``axis``, in place in ``out``.

    The shift is the row maximum, unguarded: NaN, +inf and all--inf rows come out NaN, as in torch.
    Only a fully masked row (``keep`` all False) is shifted by 0 and divided by 1, giving zeros.
    """
    shift = xp.max(data, axis=axis, keepdims=True)
    masked_rows = None
    if keep is not None:
        masked_rows = ~xp.any(keep, axis=axis, keepdims=True)
        shift = xp.where(masked_rows, xp.zeros((), shift.dtype), shift)
    xp.subtract(data, shift, out=out)
    xp.exp(out, out=out)
    total = xp.sum(out, axis=axis, keepdims=True)
    if masked_rows is not None:
        total = xp.where(masked_rows, xp.ones((), total.dtype), total)
    xp.divide(out, total, out=out)


def _softmax_vjp(y, g, axis: int) -> Tensor:
    """dx = y * (g - sum(g * y, axis)): the VJP of softmax with output y, as one primitive.

    Its own VJPs (for higher orders), with a the cotangent of dx and s = sum(g * y):
    g <- y * (a - sum(a * y)) = _softmax_vjp(y, a);  y <- a * (g - s) - g * sum(a * y).
    """
    y, g = ops._lift(y), ops._lift(g)
    out = _along_rows(_softmax_vjp_kernel, axis, y.data, g.data)

    def vjp_y(a):
        total = ops.sum(ops.mul(g, y), axis=axis, keepdims=True)
        return ops.sub(ops.mul(a, ops.sub(g, total)), ops.mul(g, ops.sum(ops.mul(a, y), axis=axis, keepdims=True)))

    return record(out, ((y, vjp_y), (g, lambda a: _softmax_vjp(y, a, axis))))


def _softmax_vjp_kernel(out, y, g, axis):
    xp.multiply(g, y, out=out)
    total = xp.sum(out, axis=axis, keepdims=True)
    xp.subtract(g, total, out=out)
    xp.multiply(out, y, out=out)


def _along_rows(kernel, axis: int, *arrays):
    """kernel(out, *arrays, axis) on a new array; when ``axis`` is the last one, by blocks of whole rows
    of about :data:`_threads.BLOCK_BYTES` spread over threads (:func:`_threads.in_blocks`).

    Rows are independent, so each block computes its rows exactly as one call over the whole array
    would, and a block stays in the core's cache through the kernel's passes.  An array argument may
    be None (passed through as None).
    """
    shape = arrays[0].shape
    out = xp.empty(shape, dtype=arrays[0].dtype)
    if axis != len(shape) - 1 or not _threads.BLOCKED or out.size == 0:
        kernel(out, *arrays, axis)
        return out
    width = shape[-1]
    rows = out.size // width
    flat = [None if a is None else xp.reshape(xp.ascontiguousarray(a), (rows, width)) for a in arrays]
    out_rows = xp.reshape(out, (rows, width))
    per_block = max(1, _threads.BLOCK_BYTES // (width * out.dtype.itemsize))
    _threads.in_blocks(lambda a, b: kernel(out_rows[a:b], *(None if x is None else x[a:b] for x in flat), 1),
                       rows, per_block, out.size)
    return out


def log_softmax(x, axis: int = -1, mask=None, dtype=None) -> Tensor:
    """x - logsumexp(x) along ``axis`` (module docstring); masked positions give -inf and zero gradient;
    ``dtype`` as softmax's.

    VJP: ``dx = g - softmax(x) * sum(g)``, with the cotangent of masked positions dropped first.
    """
    x, axis, keep = _softmax_args(x, axis, mask, "log_softmax", dtype)
    if x.ndim == 0:
        flat_keep = None if keep is None else xp.reshape(keep, (1,))
        return ops.reshape(log_softmax(ops.reshape(x, (1,)), 0, flat_keep), ())
    if x.shape[axis] == 0:
        return ops.mul(x, 0.0)  # nothing to normalise: an empty result, an empty gradient
    data = x.data if keep is None else xp.where(keep, x.data, -xp.inf)
    shift = xp.max(data, axis=axis, keepdims=True)  # unguarded: NaN / +inf / all--inf rows give NaN (torch)
    masked_rows = None if keep is None else ~xp.any(keep, axis=axis, keepdims=True)
    if masked_rows is not None:
        shift = xp.where(masked_rows, xp.zeros((), shift.dtype), shift)
    total = xp.sum(xp.exp(data - shift), axis=axis, keepdims=True)
    if masked_rows is not None:
        # a fully masked row has total 0: log(1) keeps it at -inf without a -inf - -inf = NaN on the way
        total = xp.where(masked_rows, xp.ones((), total.dtype), total)
    out = data - shift - xp.log(total)
    holder = []

    def vjp(g):
        if keep is not None:
            g = ops.where(keep, g, 0.0)
        y = ops.exp(holder[0])  # softmax(x), through this node so that second derivatives see it
        return _keep_only(ops.sub(g, ops.mul(y, ops.sum(g, axis=axis, keepdims=True))), keep)

    result = record(out, ((x, vjp),))
    holder.append(result)
    return result


# ---------------------------------------------------------------------------------------------
# linear, dropout


def linear(x, weight, bias=None) -> Tensor:
    """x @ weight.T + bias, as torch.nn.functional.linear: x (..., in), weight (out, in)."""
    x, weight = ops._lift(x), ops._lift(weight)
    bias = None if bias is None else ops._lift(bias)
    ops._check_operands("linear", input=x, weight=weight, bias=bias)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {weight.shape}")
    if x.ndim < 1:
        raise ValueError("linear: input must have at least one axis (..., in), got a scalar")
    _check_shape("linear", "bias", bias, weight.shape[:1])
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {x.shape}) but weight {weight.shape} "
            f"expects {weight.shape[1]}"
        )
    if x.ndim > 2:
        # one GEMM over all leading axes, not NumPy's stack of per-slice GEMMs (each a BLAS call with its
        # own thread hand-off: on this loaded 2-core VM (64, 49, 96) @ (96, 288) took up to 1 s that way,
        # one (3136, 96) GEMM ~8 ms); the weight gradient is then one GEMM too, not 64 summed afterwards
        rows = 1
        for n in x.shape[:-1]:
            rows *= n
        out = ops.reshape(ops.matmul(ops.reshape(x, (rows, x.shape[-1])), ops.transpose(weight)),
                          x.shape[:-1] + (weight.shape[0],))
    else:
        out = ops.matmul(x, ops.transpose(weight))
    if bias is not None:
        out = ops.add(out, bias)
    return out


def dropout(x, p: float = 0.5, training: bool = False, rng=None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by 1/(1-p).

    Identity when ``training`` is False or ``p == 0``.  The mask is drawn from ``rng`` (a
    ``numpy.random.Generator``) on the host, so one seed gives bit-identical masks on every backend.
    """
    x = ops._lift(x)
    ops._check_float("dropout", "input", x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a number in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout in training mode needs an explicit rng (numpy.random.Generator)")
    if p == 1.0:
        return ops.mul(x, 0.0)
    keep = rng.random(x.shape) >= p
    scale = backend.from_numpy((keep / (1.0 - p)).astype(_np.dtype(x.dtype)))
    return ops.mul(x, Tensor(scale))


# ---------------------------------------------------------------------------------------------
# normalisation


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, return_running: bool = False):
    """Batch normalisation over axis 1 of (N, C, ...), as torch.nn.functional.batch_norm.

    Training normalises with the batch statistics (biased variance); the running statistics are
    updated as PyTorch does -- ``(1 - momentum) * running + momentum * batch`` with the *unbiased*
    batch variance -- but never in place: with ``return_running=True`` the result is
    ``(y, new_running_mean, new_running_var)`` (the inputs unchanged in eval mode).
    Eval mode normalises with the running statistics.
    """
    x = ops._lift(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must be (N, C, ...), got shape {x.shape}")
    c = x.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
        if value is not None and tuple(value.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},), got {tuple(value.shape)}")
    ops._check_operands("batch_norm", input=x, weight=_lifted(weight), bias=_lifted(bias),
                        running_mean=_lifted(running_mean), running_var=_lifted(running_var))
    stat_shape = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    new_mean, new_var = running_mean, running_var
    if training and x.size == 0:
        # an empty batch: as PyTorch, an empty output and unchanged running statistics (zero gradients);
        # the statistics used are placeholders -- they multiply nothing
        mean = Tensor(xp.zeros(stat_shape, dtype=x.dtype))
        var = Tensor(xp.ones(stat_shape, dtype=x.dtype))
    elif training:
        count = x.size // c
        if count < 2:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, got input shape {x.shape}")
        mean = ops.mean(x, axis=axes, keepdims=True)
        var = ops.var(x, axis=axes, keepdims=True)
        if running_mean is not None:
            batch_mean = xp.reshape(mean.data, (c,))
            new_mean = (1.0 - momentum) * _data(running_mean) + momentum * batch_mean
        if running_var is not None:
            unbiased = xp.reshape(var.data, (c,)) * (count / (count - 1))
            new_var = (1.0 - momentum) * _data(running_var) + momentum * unbiased
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        mean = ops.reshape(running_mean, stat_shape)
        var = ops.reshape(running_var, stat_shape)
    # y = (x - mean) / sqrt(var + eps) * w + b, applied as PyTorch's CPU kernel does: per channel
    # alpha = w / sqrt(var + eps), beta = b - mean * alpha, then y = x * alpha + beta -- one pass over x
    # (and one output array) instead of four; gradients reach mean/var/w/b through the (C,) vectors.
    alpha = ops.div(1.0, ops.sqrt(ops.add(ops.reshape(var, (c,)), eps)))
    if weight is not None:
        alpha = ops.mul(alpha, weight)
    beta = ops.neg(ops.mul(ops.reshape(mean, (c,)), alpha))
    if bias is not None:
        beta = ops.add(beta, bias)
    y = channel_affine(x, alpha, beta)
    if return_running:
        return y, new_mean, new_var
    return y


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, return_running: bool = False):
    """Instance normalisation of (N, C, ...), as torch.nn.functional.instance_norm.

    With ``use_input_stats`` each (sample, channel) plane is normalised by its own mean and biased variance;
    otherwise by the running statistics.  As torch, it is batch normalisation of the (1, N*C, ...) view with
    the per-channel vectors repeated N times, and the running statistics' update is the mean over N of the
    per-instance updates (unbiased instance variances, ``momentum``).  Nothing is updated in place: with
    ``return_running=True`` the result is ``(y, new_running_mean, new_running_var)``.
    """
    x = ops._lift(x)
    if x.ndim < 3:
        raise ValueError(f"instance_norm: input must be (N, C, ...) with at least one spatial axis, got shape "
                         f"{x.shape}")
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    vectors = {name: None if value is None else ops._lift(value) for name, value in vectors.items()}
    ops._check_operands("instance_norm", input=x, **vectors)  # real floats of one dtype, named as here
    running_mean, running_var, weight, bias = vectors.values()
    n, c = x.shape[:2]
    for name, value in vectors.items():
        if value is not None and tuple(value.shape) != (c,):
            raise ValueError(f"instance_norm: {name} must have shape ({c},), got {tuple(value.shape)}")
    if use_input_stats and _spatial(x) < 2:
        raise ValueError(f"instance_norm: training needs more than 1 spatial value per plane, got input shape "
                         f"{x.shape}")

    def per_instance(value):
        return None if value is None else ops.tile(value, (n,))

    y, new_mean, new_var = batch_norm(ops.reshape(x, (1, n * c) + x.shape[2:]), per_instance(running_mean),
                                      per_instance(running_var), per_instance(weight), per_instance(bias),
                                      training=use_input_stats, momentum=momentum, eps=eps, return_running=True)
    y = ops.reshape(y, x.shape)
    if not return_running:
        return y
    if use_input_stats:  # torch averages the N per-instance updates back to C channels (NaN for N = 0, as torch)
        with _np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "mean of empty slice"
            new_mean = None if new_mean is None else xp.mean(xp.reshape(_data(new_mean), (n, c)), axis=0)
            new_var = None if new_var is None else xp.mean(xp.reshape(_data(new_var), (n, c)), axis=0)
    else:
        new_mean, new_var = running_mean, running_var
    return y, new_mean, new_var


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def _lifted(value):
    """None, or ``value`` as a Tensor (for the dtype checks of optional parameters)."""
    return None if value is None else ops._lift(value)


def channel_affine(x, scale, shift) -> Tensor:
    """y = x * scale + shift with (C,) ``scale``/``shift`` broadcast along axis 1 of x (N, C, ...).

    One primitive with one output array.  VJPs (differentiable): x <- g * scale,
    scale <- sum over (N, ...) of g * x, shift <- sum over (N, ...) of g.
    """
    x, scale, shift = ops._lift(x), ops._lift(scale), ops._lift(shift)
    c = x.shape[1]
    stat_shape = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    out = xp.multiply(x.data, xp.reshape(scale.data, stat_shape))
    out += xp.reshape(shift.data, stat_shape)

    def vjp_scale(g):
        # sum(g * x) over every axis but 1, without a full-size product
        return ops.sum_product(g, x, axis=axes)

    return record(out, ((x, lambda g: ops.mul(g, ops.reshape(scale, stat_shape))),
                        (scale, vjp_scale),
                        (shift, lambda g: ops.sum(g, axis=axes))))


def _spatial(x: Tensor) -> int:
    """The number of positions per channel of (N, C, ...)."""
    return int(_np.prod(x.shape[2:], dtype=_np.int64))


def _check_shape(op: str, name: str, value, shape) -> None:
    """A clear error for an optional parameter (weight, bias) of the wrong shape."""
    if value is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` axes (biased variance), as torch's layer_norm."""
    x = ops._lift(x)
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or k > x.ndim or tuple(x.shape[-k:]) != normalized_shape:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    ops._check_operands("layer_norm", input=x, weight=_lifted(weight), bias=_lifted(bias))
    _check_shape("layer_norm", "weight", weight, normalized_shape)
    _check_shape("layer_norm", "bias", bias, normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.var(x, axis=axes, keepdims=True)
    y = ops.div(ops.sub(x, mean), ops.sqrt(ops.add(var, eps)))
    if weight is not None:
        y = ops.mul(y, weight)
    if bias is not None:
        y = ops.add(y, bias)
    return y


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Group normalisation of (N, C, ...) with C divisible by ``num_groups``, as torch's group_norm."""
    x = ops._lift(x)
    if x.ndim < 2:
        raise ValueError(f"group_norm: input must be (N, C, ...), got shape {x.shape}")
    n, c = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"group_norm: num_groups must be an int, got {num_groups!r}")
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: {c} channels are not divisible by num_groups={num_groups}")
    ops._check_operands("group_norm", input=x, weight=_lifted(weight), bias=_lifted(bias))
    _check_shape("group_norm", "weight", weight, (c,))
    _check_shape("group_norm", "bias", bias, (c,))
    # the group size spelled out (a -1 cannot be inferred from an empty batch)
    grouped = ops.reshape(x, (n, num_groups, c // num_groups * _spatial(x)))
    mean = ops.mean(grouped, axis=2, keepdims=True)
    var = ops.var(grouped, axis=2, keepdims=True)
    y = ops.reshape(ops.div(ops.sub(grouped, mean), ops.sqrt(ops.add(var, eps))), x.shape)
    affine_shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = ops.mul(y, ops.reshape(weight, affine_shape))
    if bias is not None:
        y = ops.add(y, ops.reshape(bias, affine_shape))
    return y


# ---------------------------------------------------------------------------------------------
# sampling with an explicit generator


def normal(rng, shape, mean=0.0, std=1.0, dtype=_np.float64):
    """Normal samples drawn on the host from ``rng`` (numpy.random.Generator), moved to the backend."""
    return backend.from_numpy((rng.standard_normal(shape) * std + mean).astype(dtype))


def uniform(rng, shape, low=0.0, high=1.0, dtype=_np.float64):
    """Uniform samples in [low, high) from ``rng``, moved to the backend."""
    return backend.from_numpy(rng.uniform(low, high, size=shape).astype(dtype))


def categorical(rng, probs):
    """One index per row of ``probs`` (..., K), sampled from ``rng`` by inverse CDF on the host."""
    host = backend.to_numpy(probs.data if isinstance(probs, Tensor) else probs)
    cdf = _np.cumsum(host, axis=-1)
    u = rng.random(host.shape[:-1] + (1,)) * cdf[..., -1:]
    index = (cdf <= u).sum(axis=-1)
    return backend.from_numpy(_np.minimum(index, host.shape[-1] - 1))
