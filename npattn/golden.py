"""Golden vectors: one ``.npz`` or ``.safetensors`` file per case, readable from any language (docs/golden.md).

Each file holds, as plain arrays (``numpy.load(path, allow_pickle=False)`` reads an ``.npz``; a
``.safetensors`` file is an 8-byte header length, a JSON header and raw little-endian buffers):

* ``input.<i>``          the inputs of ``apply`` (in order);
* ``param.<name>``       every parameter and buffer, named as in the parameter dict;
* ``output``             ``apply(params, *inputs)`` in eval mode;
* ``cotangent``          a random cotangent ``u`` of the output's shape;
* ``grad.input.<i>``     ``u^T d output / d input_i`` for each differentiable input;
* ``grad.param.<name>``  ``u^T d output / d param`` for each floating-point parameter;
* ``meta``               a JSON string: format version, npattn version, mechanism, config, options,
                         dtype, seed, backend, input/parameter names.  In a ``.safetensors`` file the
                         same fields are the header's ``__metadata__`` (string values: the text fields
                         as they are, the others as JSON text; ``params`` keeps the parameter order).
"""
from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

import autograd as ag

from . import __version__
from . import _safetensors as safetensors
from .registry import Mechanism, apply_keywords, get

FORMAT_VERSION = 1
#: container formats of :func:`write`: file extension by name.
FORMATS = {"npz": ".npz", "safetensors": ".safetensors"}
#: meta fields a safetensors header stores as plain strings; the others are JSON text.
_STRING_FIELDS = ("npattn_version", "mechanism", "dtype", "backend")


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


def compute(mech: Mechanism, params: dict, inputs: list, cotangent=None, seed: int = 0, keywords: dict | None = None):
    """Output, cotangent and gradients (host arrays) of ``mech`` at ``params``/``inputs``, in eval mode.

    ``keywords=None`` runs the registry entry (``mech.apply``); a dict runs ``mech.apply_fn`` with exactly
    those keywords (a golden file's recorded configuration and options).  A ``cotangent`` that is not of
    the output's shape and dtype is a ValueError.
    """
    device_params = {k: ag.from_numpy(v) for k, v in params.items()}
    device_inputs = [ag.from_numpy(x) for x in inputs]
    diff = _differentiable(mech, inputs)
    float_keys = [k for k, v in params.items() if v.dtype.kind == "f"]

    def fn(float_params, *diff_inputs):
        full_params = {**device_params, **float_params}
        full_inputs = list(device_inputs)
        for i, value in zip(diff, diff_inputs):
            full_inputs[i] = value
        if keywords is None:
            return mech.apply(full_params, *full_inputs)
        return mech.apply_fn(full_params, *full_inputs, train=False, **keywords)

    out, pullback = ag.vjp(fn, {k: device_params[k] for k in float_keys}, *[device_inputs[i] for i in diff])
    if cotangent is None:
        cotangent = np.random.default_rng(seed + 2).standard_normal(tuple(out.shape)).astype(out.dtype)
    elif cotangent.shape != tuple(out.shape) or cotangent.dtype != np.dtype(out.dtype):
        raise ValueError(f"cotangent has shape {cotangent.shape} and dtype {cotangent.dtype}; the output has shape "
                         f"{tuple(out.shape)} and dtype {np.dtype(out.dtype)}")
    grads = pullback(ag.from_numpy(cotangent))
    grad_params = {k: ag.to_numpy(v) for k, v in grads[0].items()}
    grad_inputs = {i: ag.to_numpy(g) for i, g in zip(diff, grads[1:])}
    return ag.to_numpy(out), cotangent, grad_inputs, grad_params


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def write(name: str, directory: str, seed: int = 0, dtype: str = "float64", batch: int | None = None,
          size: int | None = None, force: bool = False, format: str = "npz") -> str:
    """Write the golden file of one mechanism (``format``: ``"npz"`` or ``"safetensors"``); returns its path."""
    mech = get(name)
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    _positive("batch", batch)
    _positive("size", size)
    suffix = f"_b{batch}" if batch else ""
    suffix += f"_s{size}" if size else ""
    path = os.path.join(directory, f"{name}_{np_dtype.name}_seed{seed}{suffix}{FORMATS[format]}")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    made = mech.init(np.random.default_rng(seed), dtype=np_dtype, **mech.config)
    params = {k: ag.to_numpy(v) for k, v in made.items()}
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
    os.makedirs(directory, exist_ok=True)
    if format == "safetensors":
        with open(path, "wb") as file:
            file.write(safetensors.dumps(arrays, to_metadata(meta)))
        return path
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))
    np.savez(path, **arrays)
    return path


def to_metadata(meta: dict) -> dict:
    """The safetensors ``__metadata__`` (strings only) of golden ``meta``: text fields as they are, others as JSON."""
    return {k: v if k in _STRING_FIELDS and isinstance(v, str) else json.dumps(v, default=_jsonable)
            for k, v in meta.items()}


def from_metadata(path: str, metadata: dict) -> dict:
    """Golden ``meta`` from a safetensors ``__metadata__``: the JSON text of the fields verify reads is decoded."""
    meta = {}
    for key, text in metadata.items():
        if key in _STRING_FIELDS:
            meta[key] = text
            continue
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError:
            if key in _META_FIELDS:
                raise GoldenError(f"{path}: __metadata__ {key!r} must be JSON text, got {text!r}") from None
            meta[key] = text  # an informational field of another writer, kept as written
    return meta


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


#: meta fields verify reads, with their JSON types (the others are informational).
_META_FIELDS = {"format": int, "mechanism": str, "config": dict, "options": dict, "dtype": str, "inputs": int,
                "params": list, "differentiable_inputs": list}
#: tolerance of verify by the dtype of the stored arrays: max |recomputed - stored| / max(1, max |stored|).
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def load(path: str) -> tuple[dict, dict]:
    """(meta, arrays) of a golden file (``.npz``, or ``.safetensors`` by name); any malformed file is a GoldenError."""
    if str(path).endswith(FORMATS["safetensors"]):
        meta, arrays = _load_safetensors(path)
    else:
        meta, arrays = _load_npz(path)
    _check_meta(path, meta)
    return meta, arrays


def _load_safetensors(path: str) -> tuple[dict, dict]:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise GoldenError(f"{path}: no such file") from None
    except OSError as exc:
        raise GoldenError(f"{path}: not readable ({type(exc).__name__}: {exc})") from None
    try:
        arrays, metadata = safetensors.loads(data)
    except safetensors.FormatError as exc:
        raise GoldenError(f"{path}: not a valid safetensors file: {exc}") from None
    if not metadata:
        raise GoldenError(f"{path}: no __metadata__ in the header; not an npattn golden file")
    if "meta" in arrays:
        raise GoldenError(f"{path}: a tensor named 'meta'; a safetensors golden file keeps its metadata in the "
                          "header's __metadata__")
    return from_metadata(path, metadata), arrays


def _load_npz(path: str) -> tuple[dict, dict]:
    unreadable = (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, TypeError, zlib.error)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GoldenError(f"{path}: no such file") from None
    except unreadable as exc:
        raise GoldenError(f"{path}: not a readable golden .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GoldenError(f"{path}: a single .npy array, not a golden .npz file")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except unreadable as exc:  # a member cut short or corrupt
        raise GoldenError(f"{path}: not a readable golden .npz file ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise GoldenError(f"{path}: no 'meta' entry; not an npattn golden file")
    raw = arrays.pop("meta")
    if raw.shape != () or raw.dtype.kind != "U":
        raise GoldenError(f"{path}: 'meta' must be a 0-d unicode string, got shape {raw.shape} dtype {raw.dtype}")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise GoldenError(f"{path}: 'meta' must be a JSON object, got a JSON {_json_type(meta)}")
    return meta, arrays


def _check_meta(path: str, meta: dict) -> None:
    """The fields verify reads are present and of their JSON types (both containers)."""
    if meta.get("format") != FORMAT_VERSION:
        raise GoldenError(f"{path}: golden format {meta.get('format')!r}, this npattn reads {FORMAT_VERSION}")
    for key, kind in _META_FIELDS.items():
        if key not in meta:
            raise GoldenError(f"{path}: meta has no {key!r} field")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise GoldenError(f"{path}: meta {key!r} must be a JSON {_json_type(kind())}, got "
                              f"{_json_type(meta[key])} {meta[key]!r}")
    if not all(isinstance(k, str) for k in meta["params"]):
        raise GoldenError(f"{path}: meta 'params' must be a list of strings, got {meta['params']!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in meta["differentiable_inputs"]):
        raise GoldenError(f"{path}: meta 'differentiable_inputs' must be a list of integers, got "
                          f"{meta['differentiable_inputs']!r}")


@dataclass
class VerifyResult:
    path: str
    mechanism: str
    max_error: float
    ok: bool
    message: str = ""
    #: the entries compared (output, every grad.input.*, every grad.param.*), in order.
    compared: tuple = ()
    tolerance: float = math.nan


def _as_recorded(registry_values: dict, recorded: dict) -> dict:
    """``recorded`` (JSON), with the registry's own value (a tuple, say) wherever JSON would write it the same."""
    return {k: registry_values[k] if k in registry_values and _json(registry_values[k]) == _json(v) else v
            for k, v in recorded.items()}


def _json(value):
    return json.loads(json.dumps(value, default=_jsonable))


def _stored_dtype(path: str, arrays: dict) -> np.dtype:
    """The one floating dtype of every float array in the file (float32 or float64)."""
    floats = {k: a.dtype for k, a in arrays.items() if a.dtype.kind == "f"}
    kinds = sorted({d.name for d in floats.values()})
    if len(kinds) != 1 or kinds[0] not in TOLERANCE:
        detail = ", ".join(f"{k}: {d}" for k, d in list(floats.items())[:6])
        raise GoldenError(f"{path}: the float arrays must all be float32 or all float64, got {kinds} ({detail})")
    if any(a.dtype.kind not in "fiub" for a in arrays.values()):
        odd = [f"{k}: {a.dtype}" for k, a in arrays.items() if a.dtype.kind not in "fiub"]
        raise GoldenError(f"{path}: entries of a non-numeric or complex dtype: {', '.join(odd)}")
    return np.dtype(kinds[0])


_PREFIXES = ("input.", "param.", "grad.input.", "grad.param.")


def _entries(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _check_params(path: str, mech: Mechanism, config: dict, params: dict, meta: dict, dtype: np.dtype) -> None:
    """The file's ``param.*`` must be exactly what ``init(**config)`` makes: names, shapes, dtypes."""
    try:
        made = mech.init(np.random.default_rng(0), dtype=dtype, **config)
    except Exception as exc:  # a config of another mechanism: TypeError, ValueError, ...
        raise GoldenError(f"{path}: meta config {config} is not a configuration of {mech.name!r} "
                          f"({type(exc).__name__}: {exc}); swapped mechanism or edited metadata?") from None
    missing, unexpected = sorted(set(made) - set(params)), sorted(set(params) - set(made))
    if missing or unexpected:
        raise GoldenError(f"{path}: the param.* entries do not match {mech.name!r} with config {config}: missing "
                          f"{missing}, unexpected {unexpected}; swapped mechanism, edited metadata or removed entries?")
    if sorted(meta["params"]) != sorted(params):
        raise GoldenError(f"{path}: meta 'params' {meta['params']} contradict the param.* entries {sorted(params)}")
    for key, value in made.items():
        if params[key].shape != tuple(value.shape) or params[key].dtype != np.dtype(value.dtype):
            raise GoldenError(f"{path}: param.{key} has shape {params[key].shape} dtype {params[key].dtype}; "
                              f"{mech.name!r} with config {config} makes {tuple(value.shape)} {np.dtype(value.dtype)}")


def _check_layout(path: str, mech: Mechanism, meta: dict, arrays: dict, dtype: np.dtype) -> tuple:
    """(params, inputs, cotangent, expected entries) after checking the file holds every entry, and only those."""
    params = _entries(arrays, "param.")
    inputs = _entries(arrays, "input.")
    if sorted(inputs) != [str(i) for i in range(len(inputs))] or len(inputs) != meta["inputs"]:
        raise GoldenError(f"{path}: input entries {sorted(inputs)} are not input.0 .. input.{meta['inputs'] - 1} "
                          f"(meta 'inputs' = {meta['inputs']})")
    inputs = [inputs[str(i)] for i in range(len(inputs))]
    diff = _differentiable(mech, inputs)
    if tuple(meta["differentiable_inputs"]) != diff:
        raise GoldenError(f"{path}: meta 'differentiable_inputs' {meta['differentiable_inputs']} contradict "
                          f"{mech.name!r} on these inputs, which differentiates {list(diff)}")
    if "cotangent" not in arrays:
        raise GoldenError(f"{path}: missing entry 'cotangent'")
    unknown = sorted(k for k in arrays if k not in ("output", "cotangent") and not k.startswith(_PREFIXES))
    if unknown:  # e.g. a misspelt gradient ('grad_param.x') that nobody would compare
        raise GoldenError(f"{path}: entries outside the golden format: {unknown}")
    # the entries this npattn produces: output, every differentiable input's and float parameter's gradient
    wanted = {"output": None}
    wanted.update({f"grad.input.{i}": inputs[i].shape for i in diff})
    wanted.update({f"grad.param.{k}": v.shape for k, v in params.items() if v.dtype.kind == "f"})
    stored = {k for k in arrays if k.startswith("grad.") or k == "output"}
    missing, unexpected = sorted(set(wanted) - stored), sorted(stored - set(wanted))
    if missing or unexpected:
        raise GoldenError(f"{path}: the file must hold every entry {mech.name!r} produces and no other: missing "
                          f"{missing}, unexpected {unexpected}")
    for key, shape in wanted.items():
        if shape is not None and arrays[key].shape != shape:
            raise GoldenError(f"{path}: {key} has shape {arrays[key].shape}, its argument {shape}")
    for i in diff:
        if inputs[i].dtype != dtype:
            raise GoldenError(f"{path}: input.{i} is differentiable but of dtype {inputs[i].dtype}, not {dtype}")
    return params, inputs, arrays["cotangent"], {k: arrays[k] for k in wanted}


def _error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(1, max |expected|) over finite pairs; inf where non-finite values differ."""
    if actual.shape != expected.shape:
        return math.inf
    finite = np.isfinite(expected) & np.isfinite(actual)
    if not np.array_equal(np.where(finite, 0, actual), np.where(finite, 0, expected), equal_nan=True):
        return math.inf  # a NaN or an infinity that the other side does not reproduce exactly
    scale = max(1.0, float(np.abs(np.where(finite, expected, 0)).max(initial=0.0)))
    diff = np.abs(np.where(finite, actual.astype(np.float64) - expected, 0.0))
    return float(diff.max(initial=0.0)) / scale


def verify(path: str, rtol: float | None = None) -> VerifyResult:
    """Recompute a golden file with this npattn and compare every entry it must hold.

    Fails closed: a file that lacks an entry the mechanism produces (the output, a differentiable input's
    or a float parameter's gradient), holds one it does not, or whose metadata contradict its arrays
    (dtype, mechanism, configuration, options, differentiable inputs) is a GoldenError, as is any malformed
    file.  The tolerance comes from the dtype of the stored arrays (:data:`TOLERANCE`), never from the
    metadata; ``rtol`` overrides it explicitly.
    """
    meta, arrays = load(path)
    name = meta["mechanism"]
    try:
        mech = get(name)
    except KeyError as exc:
        raise GoldenError(f"{path}: {exc.args[0]}") from None
    dtype = _stored_dtype(path, arrays)
    if meta["dtype"] != dtype.name:
        raise GoldenError(f"{path}: meta says dtype {meta['dtype']!r}, but the arrays are {dtype.name}")
    tolerance = TOLERANCE[dtype.name] if rtol is None else rtol
    config, options = _as_recorded(mech.config, meta["config"]), _as_recorded(mech.options, meta["options"])
    if _json(options) != _json(mech.options):
        raise GoldenError(f"{path}: meta options {meta['options']} are not {name!r}'s {_json(mech.options)}; "
                          "swapped mechanism or edited metadata?")
    _check_params(path, mech, config, _entries(arrays, "param."), meta, dtype)
    params, inputs, cotangent, expected = _check_layout(path, mech, meta, arrays, dtype)
    try:
        out, _, grad_inputs, grad_params = compute(mech, params, inputs, cotangent,
                                                   keywords=apply_keywords(mech, config, options))
    except Exception as exc:  # the mechanism refuses the file's arrays: say why, never a traceback
        raise GoldenError(f"{path}: {name} cannot recompute this file ({type(exc).__name__}: {exc})") from None
    actual = {"output": out}
    actual.update({f"grad.input.{i}": g for i, g in grad_inputs.items()})
    actual.update({f"grad.param.{k}": g for k, g in grad_params.items()})
    worst, messages = 0.0, []
    for key, value in expected.items():
        if actual[key].shape != value.shape:
            messages.append(f"{key}: shape {actual[key].shape} != stored {value.shape}")
            worst = math.inf
            continue
        err = _error(actual[key], value)
        worst = max(worst, err)
        if not err <= tolerance:
            messages.append(f"{key}: max error {err:.3g} (relative to max |value|) > {tolerance:g}")
    return VerifyResult(path, name, worst, not messages, "; ".join(messages), tuple(expected), tolerance)
