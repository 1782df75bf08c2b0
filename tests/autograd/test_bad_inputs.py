"""A bad-input matrix over the public ops (issue 13 §5): wrong ndim, dtype and sizes raise the right
exception with a message that names the op and the argument; batch 0 gives an empty output of the right
shape with an empty gradient; NaN/Inf input runs and reaches the output; read-only and non-contiguous
arrays give the numbers of a contiguous writable copy and are never written to.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import autograd as ag

from .helpers import dev, host

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@dataclass
class Op:
    """One public op: ``call(x, **kwargs)`` on a valid input of ``shape`` (axis 0 the batch), and its bad
    calls as (kwargs, exception, the argument the message must name)."""

    name: str
    call: Callable
    shape: tuple
    bad: list = field(default_factory=list)
    ndim_arg: str = "input"  # the argument a wrong-ndim input must be named as
    unbatched: bool = False  # whether the op also takes one sample without its batch axis, as torch


def _w(*shape):
    return dev(np.random.default_rng(7).standard_normal(shape) * 0.3)


OPS = [
    Op("conv2d", lambda x, **k: ag.conv2d(x, k.pop("w", _w(4, 3, 3, 3)), **k), (2, 3, 6, 7), [
        (dict(groups=1.5), TypeError, "groups"), (dict(groups=2), ValueError, "groups"),
        (dict(stride=0), ValueError, "stride"), (dict(padding=-1), ValueError, "padding"),
        (dict(dilation=(1, 2.0)), TypeError, "dilation"), (dict(w=_w(4, 3, 9, 9)), ValueError, "kernel"),
        (dict(w=_w(4, 2, 3, 3)), ValueError, "weight"), (dict(bias=_w(3)), ValueError, "bias"),
        (dict(w=dev(np.ones((4, 3, 3, 3), np.float32))), TypeError, "weight"),
    ], unbatched=True),
    Op("conv1d", lambda x, **k: ag.conv1d(x, k.pop("w", _w(4, 3, 3)), **k), (2, 3, 9), [
        (dict(stride=1.5), TypeError, "stride"), (dict(groups=0), ValueError, "groups"),
        (dict(padding=(1, 1)), ValueError, "padding"),
    ], unbatched=True),
    Op("conv_transpose2d", lambda x, **k: ag.conv_transpose2d(x, k.pop("w", _w(3, 2, 3, 3)), **k), (2, 3, 4, 5), [
        (dict(output_padding=2, stride=2), ValueError, "output_padding"), (dict(stride=(1, 0)), ValueError, "stride"),
        (dict(w=_w(4, 2, 3, 3)), ValueError, "weight"), (dict(bias=_w(3)), ValueError, "bias"),
    ], unbatched=True),
    Op("unfold", lambda x, **k: ag.unfold(x, k.pop("kernel", 2), **k), (2, 3, 5, 5), [
        (dict(kernel=1.5), TypeError, "kernel_size"), (dict(stride=0), ValueError, "stride"),
    ]),
    Op("max_pool2d", lambda x, **k: ag.max_pool2d(x, k.pop("kernel", 3), **k), (2, 3, 7, 6), [
        (dict(kernel=0), ValueError, "kernel_size"), (dict(kernel=2.5), TypeError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"), (dict(padding=2), ValueError, "padding"),
        (dict(kernel=9), ValueError, "kernel_size"), (dict(dilation=True), TypeError, "dilation"),
    ], unbatched=True),
    Op("avg_pool2d", lambda x, **k: ag.avg_pool2d(x, k.pop("kernel", 2), **k), (2, 3, 7, 6), [
        (dict(divisor_override=0), ValueError, "divisor_override"),
        (dict(divisor_override=0, stride=1), ValueError, "divisor_override"),
        (dict(divisor_override=1.5), TypeError, "divisor_override"), (dict(kernel=(2, 9)), ValueError, "kernel_size"),
        (dict(stride=(1, 2, 3)), ValueError, "stride"),
    ], unbatched=True),
    Op("max_pool1d", lambda x, **k: ag.max_pool1d(x, k.pop("kernel", 2), **k), (2, 3, 9), [
        (dict(kernel=(2, 2)), ValueError, "kernel_size"), (dict(stride=1.5), TypeError, "stride"),
    ], unbatched=True),
    Op("avg_pool1d", lambda x, **k: ag.avg_pool1d(x, k.pop("kernel", 2), **k), (2, 3, 9), [
        (dict(kernel=10), ValueError, "kernel_size"), (dict(padding=1.0), TypeError, "padding"),
    ], unbatched=True),
    Op("adaptive_avg_pool2d", lambda x, **k: ag.adaptive_avg_pool2d(x, k.pop("size", (3, 4))), (2, 3, 7, 6), [
        (dict(size=2.5), TypeError, "output_size"), (dict(size=(2, -1)), ValueError, "output_size"),
        (dict(size=(1, 2, 3)), ValueError, "output_size"),
    ], unbatched=True),
    Op("adaptive_max_pool2d", lambda x, **k: ag.adaptive_max_pool2d(x, k.pop("size", (3, 4))), (2, 3, 7, 6), [
        (dict(size=(2.0, 2)), TypeError, "output_size"), (dict(size=-1), ValueError, "output_size"),
    ], unbatched=True),
    Op("adaptive_avg_pool1d", lambda x, **k: ag.adaptive_avg_pool1d(x, k.pop("size", 4)), (2, 3, 9), [
        (dict(size=1.5), TypeError, "output_size"),
    ], unbatched=True),
    Op("adaptive_max_pool1d", lambda x, **k: ag.adaptive_max_pool1d(x, k.pop("size", 4)), (2, 3, 9), [
        (dict(size=(2, 2)), ValueError, "output_size"),
    ], unbatched=True),
    # issue 14 section 3: 3-D convs and pools, transposed 1-D/3-D convs, lp pools, instance_norm
    Op("conv3d", lambda x, **k: ag.conv3d(x, k.pop("w", _w(4, 3, 2, 2, 2)), **k), (2, 3, 4, 5, 4), [
        (dict(groups=2), ValueError, "groups"), (dict(stride=(1, 1)), ValueError, "stride"),
        (dict(padding=1.5), TypeError, "padding"),
    ], unbatched=True),
    Op("conv_transpose1d", lambda x, **k: ag.conv_transpose1d(x, k.pop("w", _w(3, 2, 3)), **k), (2, 3, 6), [
        (dict(output_padding=3, stride=2), ValueError, "output_padding"), (dict(stride=(1, 1)), ValueError, "stride"),
    ], unbatched=True),
    Op("conv_transpose3d", lambda x, **k: ag.conv_transpose3d(x, k.pop("w", _w(3, 2, 2, 2, 2)), **k), (2, 3, 3, 4, 3), [
        (dict(groups=1.5), TypeError, "groups"), (dict(dilation=0), ValueError, "dilation"),
    ], unbatched=True),
    Op("max_pool3d", lambda x, **k: ag.max_pool3d(x, k.pop("kernel", 2), **k), (2, 3, 4, 5, 4), [
        (dict(kernel=0), ValueError, "kernel_size"), (dict(padding=2), ValueError, "padding"),
        (dict(stride=True), TypeError, "stride"),
    ], unbatched=True),
    Op("avg_pool3d", lambda x, **k: ag.avg_pool3d(x, k.pop("kernel", 2), **k), (2, 3, 4, 5, 4), [
        (dict(divisor_override=0), ValueError, "divisor_override"), (dict(kernel=(2, 2)), ValueError, "kernel_size"),
    ], unbatched=True),
    Op("adaptive_avg_pool3d", lambda x, **k: ag.adaptive_avg_pool3d(x, k.pop("size", (2, 3, 2))), (2, 3, 4, 5, 4), [
        (dict(size=(2, 2)), ValueError, "output_size"), (dict(size=1.5), TypeError, "output_size"),
    ], unbatched=True),
    Op("adaptive_max_pool3d", lambda x, **k: ag.adaptive_max_pool3d(x, k.pop("size", (2, 3, 2))), (2, 3, 4, 5, 4), [
        (dict(size=-1), ValueError, "output_size"),
    ], unbatched=True),
    Op("lp_pool2d", lambda x, **k: ag.lp_pool2d(x, k.pop("p", 2.0), k.pop("kernel", 2), **k), (2, 3, 6, 5), [
        (dict(p="2"), TypeError, "norm_type"), (dict(kernel=0), ValueError, "kernel_size"),
    ], unbatched=True),
    Op("lp_pool1d", lambda x, **k: ag.lp_pool1d(x, k.pop("p", 3.0), k.pop("kernel", 2), **k), (2, 3, 7), [
        (dict(kernel=(2, 2)), ValueError, "kernel_size"),
    ], unbatched=True),
    Op("instance_norm", lambda x, **k: ag.instance_norm(x, **k), (2, 3, 4, 5), [
        (dict(weight=_w(2)), ValueError, "weight"),
    ], ndim_arg=None),
    Op("global_avg_pool2d", lambda x, **k: ag.global_avg_pool2d(x), (2, 3, 5, 4)),
    Op("global_max_pool2d", lambda x, **k: ag.global_max_pool2d(x), (2, 3, 5, 4)),
    Op("interpolate", lambda x, **k: ag.interpolate(x, **({"size": (9, 5), "mode": "bilinear"} | k)), (2, 3, 6, 4), [
        (dict(size=2.5), TypeError, "size"), (dict(size=None, scale_factor=float("nan")), ValueError, "scale_factor"),
        (dict(size=None, scale_factor=-2.0), ValueError, "scale_factor"),
        (dict(size=None, scale_factor=float("inf")), ValueError, "scale_factor"),
        (dict(size=None, scale_factor="2"), TypeError, "scale_factor"), (dict(mode="bicubicx"), ValueError, "mode"),
        (dict(scale_factor=2.0), ValueError, "scale_factor"), (dict(size=(0, 3)), ValueError, "output size"),
        (dict(mode="nearest", align_corners=True), ValueError, "align_corners"),
    ]),
    Op("dct", lambda x, **k: ag.dct(x, **k), (2, 3, 8), [
        (dict(type=4), ValueError, "type"), (dict(norm="unit"), ValueError, "norm"), (dict(axis=3), ValueError, "axis"),
    ], ndim_arg=None),
    Op("dctn", lambda x, **k: ag.dctn(x, **k), (2, 3, 8), [(dict(axes=(1, -2)), ValueError, "axes")], ndim_arg=None),
    Op("softmax", lambda x, **k: ag.softmax(x, **({"axis": -1} | k)), (2, 3, 5), [
        (dict(axis=3), ValueError, "axis"), (dict(axis=1.0), TypeError, "axis"),
        (dict(mask=dev(np.ones((2, 3, 5)))), TypeError, "mask"), (dict(mask=dev(np.ones(4, bool))), ValueError, "mask"),
    ], ndim_arg=None),
    Op("log_softmax", lambda x, **k: ag.log_softmax(x, **({"axis": 1} | k)), (2, 3, 5), [
        (dict(axis=-4), ValueError, "axis"), (dict(mask=dev(np.ones((2, 3, 5), np.int64))), TypeError, "mask"),
    ], ndim_arg=None),
    Op("linear", lambda x, **k: ag.linear(x, k.pop("w", _w(4, 5)), **k), (2, 3, 5), [
        (dict(w=_w(4, 6)), ValueError, "weight"), (dict(w=_w(4, 5, 1)), ValueError, "weight"),
        (dict(bias=_w(5)), ValueError, "bias"), (dict(w=dev(np.ones((4, 5), np.float32))), TypeError, "weight"),
    ], ndim_arg=None),
    Op("matmul", lambda x, **k: ag.matmul(x, k.pop("w", _w(5, 2))), (2, 3, 5), [
        (dict(w=_w(4, 2)), ValueError, "axis"), (dict(w=dev(np.ones((5, 2), np.float32))), TypeError, "float32"),
    ], ndim_arg=None),
    Op("batch_norm", lambda x, **k: ag.batch_norm(x, _w(3), dev(np.ones(3)), **({"training": True} | k)),
       (2, 3, 4, 4), [(dict(weight=_w(4)), ValueError, "weight"), (dict(bias=_w(2)), ValueError, "bias")],
       ndim_arg=None),
    Op("layer_norm", lambda x, **k: ag.layer_norm(x, k.pop("shape", (4, 4)), **k), (2, 3, 4, 4), [
        (dict(shape=(3, 4)), ValueError, "normalized_shape"), (dict(weight=_w(4)), ValueError, "weight"),
    ], ndim_arg=None),
    Op("group_norm", lambda x, **k: ag.group_norm(x, k.pop("groups", 3), **k), (2, 6, 4, 4), [
        (dict(groups=4), ValueError, "num_groups"), (dict(groups=1.5), TypeError, "num_groups"),
        (dict(weight=_w(3)), ValueError, "weight"),
    ], ndim_arg=None),
    Op("logsumexp", lambda x, **k: ag.logsumexp(x, **({"axis": 1} | k)), (2, 3, 5), [
        (dict(axis=(1, 1)), ValueError, "axis"), (dict(axis=5), ValueError, "axis"),
    ], ndim_arg=None),
    Op("var", lambda x, **k: ag.var(x, **({"axis": (1, 2)} | k)), (2, 3, 5), [
        (dict(axis=(2, -1)), ValueError, "axis"),
    ], ndim_arg=None),
    Op("take_max", lambda x, **k: ag.take_max(x, **({"axis": 2} | k)), (2, 3, 5), [
        (dict(axis=3), ValueError, "axis"),
    ], ndim_arg=None),
    Op("dropout", lambda x, **k: ag.dropout(x, **({"p": 0.3, "training": True,
                                                    "rng": np.random.default_rng(0)} | k)), (2, 3, 5), [
        (dict(p=1.5), ValueError, "p"), (dict(p=-0.1, training=False), ValueError, "p"),
        (dict(p="0.5"), ValueError, "p"),
    ], ndim_arg=None),
]
BY_NAME = {op.name: op for op in OPS}
BAD_CASES = [(op.name, i) for op in OPS for i in range(len(op.bad))]


def _input(op, rng, batch=None):
    shape = op.shape if batch is None else (batch,) + op.shape[1:]
    return rng.standard_normal(shape)


@pytest.mark.parametrize("name, index", BAD_CASES, ids=[f"{n}-{i}" for n, i in BAD_CASES])
def test_bad_arguments_raise_naming_the_op_and_the_argument(rng, name, index):
    op = BY_NAME[name]
    kwargs, error, argument = op.bad[index]
    with pytest.raises(error) as caught:
        op.call(dev(_input(op, rng)), **dict(kwargs))
    message = str(caught.value)
    assert argument in message, f"{message!r} does not name {argument!r}"
    assert name.split("_pool")[0].rstrip("12d") in message or name in message, f"{message!r} does not name {name}"


@pytest.mark.parametrize("name", [op.name for op in OPS if op.ndim_arg])
def test_wrong_ndim_is_a_value_error_naming_the_input(rng, name):
    op = BY_NAME[name]
    for shape in (op.shape[2:] if op.unbatched else op.shape[1:], op.shape + (2,)):
        with pytest.raises(ValueError, match=f"{name}: .*{op.ndim_arg}") as caught:
            op.call(dev(rng.standard_normal(shape)))
        message = str(caught.value)
        assert f"{len(shape)}-D" in message or str(shape) in message, f"{message!r} does not say what it got"


@pytest.mark.parametrize("dtype", [np.int64, np.int32, bool, np.complex128])
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_integer_boolean_and_complex_input_is_a_type_error_naming_the_dtype(rng, name, dtype):
    """Never a truncated average, a logical sum or a dropped imaginary part."""
    op = BY_NAME[name]
    x = (_input(op, rng) * 3).astype(dtype)
    if name == "take_max" and np.dtype(dtype).kind in "biu":  # a max of integers is exact: torch.max's result
        x = np.asarray(x)
        np.testing.assert_array_equal(host(op.call(dev(x))), x.max(axis=2))
        return
    expected = "must be real" if name == "take_max" else "must be a real floating-point tensor"
    with pytest.raises(TypeError, match=rf"{name}: .*{expected}.*{np.dtype(dtype)}"):
        op.call(dev(x))


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_an_empty_batch_gives_an_empty_output_and_gradient(rng, name):
    """Batch 0 as torch: the output is the batch-1 output's shape with 0 samples; the gradient is empty."""
    op = BY_NAME[name]
    one = op.call(dev(_input(op, rng, 1)))
    out, pullback = ag.vjp(lambda v: op.call(v), dev(_input(op, rng, 0)))
    assert out.shape == (0,) + one.shape[1:]
    grad = host(pullback(dev(np.zeros(out.shape)))[0])
    assert grad.shape == (0,) + op.shape[1:]


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_nan_and_inf_input_runs_and_reaches_the_output(rng, name):
    op = BY_NAME[name]
    x = _input(op, rng)
    x.reshape(-1)[[0, 7]] = [np.nan, np.inf]
    before = x.copy()
    out, pullback = ag.vjp(lambda v: op.call(v), dev(x))
    assert not np.isfinite(host(out)).all()
    if name != "dropout":  # dropout may drop the NaN itself
        assert np.isnan(host(out)).any()
    pullback(dev(np.ones(out.shape)))
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched


@pytest.mark.parametrize("name", [op.name for op in OPS if op.unbatched])
def test_an_unbatched_input_gives_the_batched_result_of_its_sample(rng, name):
    """(C, *S) as torch: the output and gradient of the batch of one sample, without the batch axis."""
    op = BY_NAME[name]
    x = _input(op, rng, 1)
    out, pullback = ag.vjp(lambda v: op.call(v), dev(x))
    g = rng.standard_normal(out.shape)
    single, single_pullback = ag.vjp(lambda v: op.call(v), dev(x[0]))
    assert single.shape == out.shape[1:]
    np.testing.assert_array_equal(host(single), host(out)[0])
    np.testing.assert_array_equal(host(single_pullback(dev(g[0]))[0]), host(pullback(dev(g))[0])[0])


def _values_and_grad(op, x, g):
    out, pullback = ag.vjp(lambda v: op.call(v), x)
    return host(out), host(pullback(dev(g))[0])


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_read_only_and_non_contiguous_arrays_give_the_numbers_of_a_plain_copy(rng, name):
    op = BY_NAME[name]
    x = _input(op, rng)
    g = rng.standard_normal(op.call(dev(x)).shape)
    expected = _values_and_grad(op, dev(x.copy()), g)
    read_only = x.copy()
    read_only.setflags(write=False)
    strided = np.stack([x, np.full_like(x, 9.0)], axis=-1)[..., 0]  # same values, every other element
    assert not strided.flags.c_contiguous
    fortran = np.asfortranarray(x)
    for variant in (read_only, strided, fortran):
        keep = variant.copy()
        got = _values_and_grad(op, dev(variant), g)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(variant, keep)
