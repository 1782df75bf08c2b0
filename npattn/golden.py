"""Golden vectors: one ``.npz`` per case, readable from any language (see docs/golden.md).

Each file holds, as plain arrays (``numpy.load(path, allow_pickle=False)`` reads it):

* ``input.<i>``          the inputs of ``apply`` (in order);
* ``param.<name>``       every parameter and buffer, named as in the parameter dict;
* ``output``             ``apply(params, *inputs)`` in eval mode;
* ``cotangent``          a random cotangent ``u`` of the output's shape;
* ``grad.input.<i>``     ``u^T d output / d input_i`` for each differentiable input;
* ``grad.param.<name>``  ``u^T d output / d param`` for each floating-point parameter;
* ``meta``               a JSON string: format version, npattn version, mechanism, config, options,
                         dtype, seed, backend, input/parameter names.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

import autograd as ag

from . import __version__
from .registry import Mechanism, get

FORMAT_VERSION = 1


class GoldenError(Exception):
    """A golden file is missing, corrupt, truncated or inconsistent."""


def _inputs(mech: Mechanism, seed: int, dtype, batch: int | None, size: int | None) -> list:
    rng = np.random.default_rng(seed + 1)
    inputs = [ag.to_numpy(x) for x in mech.example_input(rng, dtype=dtype)]
    if batch is not None:
        parts = [inputs]
        while sum(p[0].shape[0] for p in parts) < batch:  # draw more examples with the same rng
            parts.append([ag.to_numpy(x) for x in mech.example_input(rng, dtype=dtype)])
        inputs = [np.concatenate([p[i] for p in parts])[:batch] for i in range(len(inputs))]
    if size is not None:
        if mech.channel_axis != 1 or any(x.ndim != 4 or x.dtype.kind != "f" for x in inputs):
            raise ValueError(f"--size applies to mechanisms with (N, C, H, W) float inputs; {mech.name} has others")
        inputs = [rng.standard_normal(x.shape[:2] + (size, size)).astype(dtype) for x in inputs]
    return inputs


def _differentiable(mech: Mechanism, inputs) -> tuple:
    if mech.differentiable_inputs is not None:
        return tuple(mech.differentiable_inputs)
    return tuple(i for i, x in enumerate(inputs) if np.dtype(x.dtype).kind == "f")


def compute(mech: Mechanism, params: dict, inputs: list, cotangent=None, seed: int = 0):
    """Output, cotangent and gradients (host arrays) of ``mech`` at ``params``/``inputs``."""
    device_params = {k: ag.from_numpy(v) for k, v in params.items()}
    device_inputs = [ag.from_numpy(x) for x in inputs]
    diff = _differentiable(mech, inputs)
    float_keys = [k for k, v in params.items() if v.dtype.kind == "f"]

    def fn(float_params, *diff_inputs):
        full_params = {**device_params, **float_params}
        full_inputs = list(device_inputs)
        for i, value in zip(diff, diff_inputs):
            full_inputs[i] = value
        return mech.apply(full_params, *full_inputs)

    out, pullback = ag.vjp(fn, {k: device_params[k] for k in float_keys}, *[device_inputs[i] for i in diff])
    if cotangent is None:
        cotangent = np.random.default_rng(seed + 2).standard_normal(tuple(out.shape)).astype(out.dtype)
    grads = pullback(ag.from_numpy(cotangent))
    grad_params = {k: ag.to_numpy(v) for k, v in grads[0].items()}
    grad_inputs = {i: ag.to_numpy(g) for i, g in zip(diff, grads[1:])}
    return ag.to_numpy(out), cotangent, grad_inputs, grad_params


def write(name: str, directory: str, seed: int = 0, dtype: str = "float64", batch: int | None = None,
          size: int | None = None, force: bool = False) -> str:
    """Write the golden file of one mechanism; returns its path."""
    mech = get(name)
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    suffix = f"_b{batch}" if batch else ""
    suffix += f"_s{size}" if size else ""
    path = os.path.join(directory, f"{name}_{np_dtype.name}_seed{seed}{suffix}.npz")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    params = {k: ag.to_numpy(v) for k, v in mech.init(np.random.default_rng(seed), dtype=np_dtype, **mech.config).items()}
    inputs = _inputs(mech, seed, np_dtype, batch, size)
    out, cotangent, grad_inputs, grad_params = compute(mech, params, inputs, seed=seed)
    arrays = {f"input.{i}": x for i, x in enumerate(inputs)}
    arrays.update({f"param.{k}": v for k, v in params.items()})
    arrays["output"] = out
    arrays["cotangent"] = cotangent
    arrays.update({f"grad.input.{i}": g for i, g in grad_inputs.items()})
    arrays.update({f"grad.param.{k}": g for k, g in grad_params.items()})
    meta = {
        "format": FORMAT_VERSION, "npattn_version": __version__, "mechanism": name,
        "config": mech.config, "options": mech.options, "dtype": np_dtype.name, "seed": seed,
        "batch": batch, "size": size, "backend": ag.backend.name,
        "inputs": len(inputs), "params": list(params), "differentiable_inputs": list(grad_inputs),
    }
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))
    os.makedirs(directory, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def load(path: str) -> tuple[dict, dict]:
    """(meta, arrays) of a golden file; a corrupt or truncated file is a GoldenError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise GoldenError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise GoldenError(f"{path}: not a readable golden .npz file ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise GoldenError(f"{path}: no 'meta' entry; not an npattn golden file")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path}: corrupt metadata ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise GoldenError(f"{path}: golden format {meta.get('format')!r}, this npattn reads {FORMAT_VERSION}")
    return meta, arrays


@dataclass
class VerifyResult:
    path: str
    mechanism: str
    max_error: float
    ok: bool
    message: str = ""


def verify(path: str, rtol: float | None = None) -> VerifyResult:
    """Recompute a golden file with this npattn and compare everything in it."""
    meta, arrays = load(path)
    name = meta["mechanism"]
    try:
        mech = get(name)
    except KeyError as exc:
        raise GoldenError(f"{path}: {exc.args[0]}") from None
    dtype = np.dtype(meta["dtype"])
    if rtol is None:
        rtol = 1e-9 if dtype == np.float64 else 1e-4
    try:
        params = {k: arrays[f"param.{k}"] for k in meta["params"]}
        inputs = [arrays[f"input.{i}"] for i in range(meta["inputs"])]
        expected = {"output": arrays["output"]}
        expected.update({f"grad.input.{i}": arrays[f"grad.input.{i}"] for i in meta["differentiable_inputs"]})
        expected.update({f"grad.param.{k}": arrays[f"grad.param.{k}"] for k in meta["params"]
                         if f"grad.param.{k}" in arrays})
        cotangent = arrays["cotangent"]
    except KeyError as exc:
        raise GoldenError(f"{path}: missing entry {exc.args[0]!r}") from None
    if mech.config != meta["config"] or mech.options != meta["options"]:
        # same name, changed defaults: recompute with the recorded options
        mech = _with(mech, meta["options"])
    out, _, grad_inputs, grad_params = compute(mech, params, inputs, cotangent)
    actual = {"output": out}
    actual.update({f"grad.input.{i}": g for i, g in grad_inputs.items()})
    actual.update({f"grad.param.{k}": g for k, g in grad_params.items()})
    worst, messages = 0.0, []
    for key, value in expected.items():
        if key not in actual:
            messages.append(f"{key}: not produced by this npattn")
            continue
        if actual[key].shape != value.shape:
            messages.append(f"{key}: shape {actual[key].shape} != {value.shape}")
            continue
        scale = max(1.0, float(np.abs(value).max(initial=0.0)))
        err = float(np.abs(actual[key].astype(np.float64) - value).max(initial=0.0)) / scale
        worst = max(worst, err if math.isfinite(err) else math.inf)
        if not err <= rtol:
            messages.append(f"{key}: max error {err:.3g} (relative to max |value|) > {rtol:g}")
    return VerifyResult(path, name, worst, not messages, "; ".join(messages))


def _with(mech: Mechanism, options: dict) -> Mechanism:
    from dataclasses import replace

    return replace(mech, options=dict(options))
