"""JAX / Flax interop (needs ``jax``; Flax modules need ``flax``): parameters both ways and side-by-side comparison.

npattn's parameters are PyTorch ``state_dict`` tensors (NCHW world, ``(out, in)`` weights); Flax keeps other
layouts under other names.  A **key map** says, layer by layer, which Flax module holds which npattn layer
and in which layout -- nothing is guessed from names::

    from npattn.interop import jax as njax
    key_map = {"fc1": njax.dense("Dense_0"), "fc2": njax.dense("Dense_1")}   # npattn prefix -> Flax layer
    report = njax.compare(flax_se, "se", x, key_map=key_map, channels_last=True)
    assert report.ok, report

The layer kinds and their layouts (npattn leaf -> Flax leaf):

============  ==============================================================================================
``conv``       ``weight`` (out, in/groups, *k) -> ``kernel`` (*k, in/groups, out) (HWIO), ``bias`` -> ``bias``
``dense``      ``weight`` (out, in) -> ``kernel`` (in, out), ``bias`` -> ``bias``
``batch_norm`` ``weight``/``bias`` -> ``scale``/``bias`` (params), ``running_mean``/``running_var`` ->
               ``mean``/``var`` (batch_stats); ``num_batches_tracked`` has no Flax counterpart (0 on import,
               dropped on export: Flax's BatchNorm keeps no counter, and npattn's never enters an output)
``layer_norm`` ``weight``/``bias`` -> ``scale``/``bias``
``attention``  ``MultiHeadDotProductAttention`` (Linen) / ``MultiHeadAttention`` (NNX): ``w_q``/``w_k``/``w_v``
               ``.weight`` (H*D, in) -> ``query``/``key``/``value`` ``/kernel`` (in, H, D), ``.bias`` (H*D,) ->
               ``/bias`` (H, D); ``w_o.weight`` (out, H*D) -> ``out/kernel`` (H, D, out), ``w_o.bias`` -> ``out/bias``
``param``      one tensor in the same layout (a scalar ``gamma``, a position table); ``collection`` names the
               Flax collection that holds it (``"params"`` by default)
============  ==============================================================================================

Every conversion is a permutation of the elements (a transpose, a reshape), so a gradient converts exactly as
its parameter does.  Flax keeps BatchNorm statistics in float32 whatever ``param_dtype`` is; on import they
are widened (exactly) to the parameters' dtype.

:func:`compare` runs a Flax module (NNX or Linen) or a JAX function and npattn on the same inputs in the
parameters' dtype (float64 under ``jax_enable_x64``, switched on for the comparison), backpropagates one
random cotangent through both and lists every tensor, with the fail-closed rules of
:func:`npattn.interop.torch.compare`.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

import autograd as ag

from ..params import is_buffer
from ..registry import apply_keywords, get
from ..testing import to_host
from ._verdict import NOT_COMPARED_FOR_SHAPE, Report, check_against_init, constant_buffers, run_npattn
from ._verdict import settings as _settings

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npattn.interop.jax needs JAX: pip install 'npattn[jax]'") from exc


def _flax():
    """(nnx, linen), or (None, None) without Flax (plain JAX functions need no Flax)."""
    try:
        from flax import linen, nnx
    except ImportError:  # pragma: no cover - depends on the environment
        return None, None
    return nnx, linen


# ---------------------------------------------------------------------------------------------
# layer kinds


KINDS = ("conv", "dense", "batch_norm", "layer_norm", "attention", "param")


@dataclass(frozen=True)
class Layer:
    """The Flax module that holds one npattn layer.

    ``path`` is the Flax module's path in the variables, ``/``-separated (``"Dense_0"``, ``"mlp/layers/0"``,
    ``""`` for the root module itself; for kind ``param``, the path of the leaf itself); ``heads`` is the head
    count of an ``attention`` layer (needed to export npattn's (H*D, in) matrices into Flax's (in, H, D)
    kernels); ``collection`` the Flax collection of a ``param`` leaf.
    """

    path: str
    kind: str
    heads: int | None = None
    collection: str = "params"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"npattn.interop.jax: layer kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.path, str) or (self.path == "" and self.kind == "param") or \
                self.path.startswith("/") or self.path.endswith("/") or "//" in self.path:
            raise ValueError(f"npattn.interop.jax: a Flax path is a '/'-separated string ('' for the root module, "
                             f"not for a param leaf), got {self.path!r}")
        if self.heads is not None and (isinstance(self.heads, bool) or not isinstance(self.heads, int)
                                       or self.heads < 1):
            raise ValueError(f"npattn.interop.jax: heads must be a positive integer, got {self.heads!r}")


def conv(path: str) -> Layer:
    """A Flax ``Conv``: HWIO kernel ``(*k, in/groups, out)`` for npattn's ``(out, in/groups, *k)``."""
    return Layer(path, "conv")


def dense(path: str) -> Layer:
    """A Flax ``Dense`` / ``nnx.Linear``: kernel ``(in, out)`` for npattn's ``(out, in)``."""
    return Layer(path, "dense")


def batch_norm(path: str) -> Layer:
    """A Flax ``BatchNorm``: scale, bias (params), mean, var (batch_stats)."""
    return Layer(path, "batch_norm")


def layer_norm(path: str) -> Layer:
    """A Flax ``LayerNorm``: scale, bias."""
    return Layer(path, "layer_norm")


def attention(path: str, heads: int | None = None) -> Layer:
    """A Flax ``MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention`` for npattn's ``w_q/w_k/w_v/w_o``."""
    return Layer(path, "attention", heads=heads)


def param(path: str, collection: str = "params") -> Layer:
    """One Flax leaf holding one npattn tensor in the same layout (its npattn key is the key map's key)."""
    return Layer(path, "param", collection=collection)


@dataclass(frozen=True)
class _Leaf:
    """How one npattn tensor of a layer is held in Flax: ``flax`` is None for the BatchNorm counter."""

    npattn: str  # npattn leaf name ("weight"), "" for a ``param`` layer (the key itself)
    collection: str
    flax: str | None  # '/'-separated, below the layer's path
    to_flax: Callable
    to_npattn: Callable
    #: the Flax leaf's dimensions ("3+": at least 3), None for any: a key map of the wrong kind fails here.
    ndim: int | str | None = None

    def check(self, layer: Layer, prefix: str, shape: tuple) -> None:
        wanted = self.ndim
        ok = wanted is None or (len(shape) >= 3 if wanted == "3+" else len(shape) == wanted)
        if not ok:
            raise ValueError(f"npattn.interop.jax: key_map[{prefix!r}] = {layer.kind}({layer.path!r}), but Flax's "
                             f"{self.flax} there has shape {shape}; a {layer.kind} {self.flax} has {wanted} "
                             "dimensions (is the layer of another kind?)")


def _same(array, *_):
    return array


def _conv_to_flax(weight, *_):
    return np.transpose(weight, tuple(range(2, weight.ndim)) + (1, 0))  # (O, I, *k) -> (*k, I, O)


def _conv_to_npattn(kernel):
    n = kernel.ndim
    return np.transpose(kernel, (n - 1, n - 2) + tuple(range(n - 2)))  # (*k, I, O) -> (O, I, *k)


def _transpose(array, *_):
    return array.T


def _heads(layer: Layer, rows: int) -> int:
    if layer.heads is None:
        raise ValueError(f"npattn.interop.jax: attention layer {layer.path!r} needs heads=... to export npattn's "
                         "(H*D, in) projections into Flax's (in, H, D) kernels")
    if rows % layer.heads:
        raise ValueError(f"npattn.interop.jax: attention layer {layer.path!r}: {rows} features do not split into "
                         f"{layer.heads} heads")
    return layer.heads


def _qkv_kernel_to_flax(weight, layer):  # (H*D, in) -> (in, H, D)
    heads = _heads(layer, weight.shape[0])
    return weight.T.reshape(weight.shape[1], heads, weight.shape[0] // heads)


def _qkv_kernel_to_npattn(kernel):  # (in, H, D) -> (H*D, in)
    return kernel.reshape(kernel.shape[0], -1).T


def _qkv_bias_to_flax(bias, layer):  # (H*D,) -> (H, D)
    heads = _heads(layer, bias.shape[0])
    return bias.reshape(heads, bias.shape[0] // heads)


def _qkv_bias_to_npattn(bias):  # (H, D) -> (H*D,)
    return bias.reshape(-1)


def _out_kernel_to_flax(weight, layer):  # (out, H*D) -> (H, D, out)
    heads = _heads(layer, weight.shape[1])
    return weight.T.reshape(heads, weight.shape[1] // heads, weight.shape[0])


def _out_kernel_to_npattn(kernel):  # (H, D, out) -> (out, H*D)
    return kernel.reshape(-1, kernel.shape[-1]).T


def _leaves(layer: Layer) -> list:
    kind = layer.kind
    if kind == "conv":
        return [_Leaf("weight", "params", "kernel", _conv_to_flax, _conv_to_npattn, "3+"),
                _Leaf("bias", "params", "bias", _same, _same, 1)]
    if kind == "dense":
        return [_Leaf("weight", "params", "kernel", _transpose, _transpose, 2),
                _Leaf("bias", "params", "bias", _same, _same, 1)]
    if kind == "batch_norm":
        return [_Leaf("weight", "params", "scale", _same, _same), _Leaf("bias", "params", "bias", _same, _same),
                _Leaf("running_mean", "batch_stats", "mean", _same, _same),
                _Leaf("running_var", "batch_stats", "var", _same, _same),
                _Leaf("num_batches_tracked", "batch_stats", None, _same, _same)]
    if kind == "layer_norm":
        return [_Leaf("weight", "params", "scale", _same, _same), _Leaf("bias", "params", "bias", _same, _same)]
    if kind == "attention":
        leaves = []
        for projection, flax_name in (("w_q", "query"), ("w_k", "key"), ("w_v", "value")):
            leaves += [_Leaf(f"{projection}.weight", "params", f"{flax_name}/kernel", _qkv_kernel_to_flax,
                             _qkv_kernel_to_npattn, 3),
                       _Leaf(f"{projection}.bias", "params", f"{flax_name}/bias", _qkv_bias_to_flax,
                             _qkv_bias_to_npattn, 2)]
        return leaves + [_Leaf("w_o.weight", "params", "out/kernel", _out_kernel_to_flax, _out_kernel_to_npattn, 3),
                         _Leaf("w_o.bias", "params", "out/bias", _same, _same, 1)]
    return [_Leaf("", layer.collection, "", _same, _same)]  # param


def _npattn_key(prefix: str, leaf: _Leaf) -> str:
    return ".".join(part for part in (prefix, leaf.npattn) if part)


def _flax_key(layer: Layer, leaf: _Leaf) -> tuple | None:
    """(collection, *path) of ``leaf`` of ``layer`` in a flat view of the Flax variables."""
    if leaf.flax is None:
        return None
    parts = [p for p in layer.path.split("/") + leaf.flax.split("/") if p]
    return (leaf.collection, *parts)


def _label(flax_key: tuple) -> str:
    return "/".join(flax_key)


def _layers(key_map: Mapping) -> dict:
    """``key_map`` with every value a :class:`Layer` (``(path, kind)`` and ``(path, kind, heads)`` accepted)."""
    if not isinstance(key_map, Mapping) or not key_map:
        raise TypeError("npattn.interop.jax: key_map must be a non-empty dict {npattn prefix: Layer}, got "
                        f"{key_map!r}")
    layers = {}
    for prefix, value in key_map.items():
        if not isinstance(prefix, str):
            raise TypeError(f"npattn.interop.jax: key_map keys are npattn key prefixes (strings), got {prefix!r}")
        if isinstance(value, tuple) and 2 <= len(value) <= 3:
            value = Layer(value[0], value[1], *value[2:])
        if not isinstance(value, Layer):
            raise TypeError(f"npattn.interop.jax: key_map[{prefix!r}] must be a Layer (conv(...), dense(...), ...) "
                            f"or a (path, kind) tuple, got {value!r}")
        if prefix == "" and value.kind == "param":
            raise ValueError("npattn.interop.jax: a param layer's key is the npattn key itself, not ''")
        layers[prefix] = value
    return layers


def _resolve(key: str, layers: dict) -> tuple:
    """(prefix, layer, leaf) holding npattn ``key``; KeyError when no layer of the key map does."""
    found = []
    for prefix, layer in layers.items():
        for leaf in _leaves(layer):
            if _npattn_key(prefix, leaf) == key:
                found.append((prefix, layer, leaf))
    if len(found) > 1:
        raise ValueError(f"npattn.interop.jax: npattn key {key!r} is held by several layers of the key map: "
                         f"{[p for p, _, _ in found]}")
    if not found:
        close = difflib.get_close_matches(key, list(layers), n=1)
        raise KeyError(f"npattn.interop.jax: npattn parameter {key!r} is held by no layer of the key map "
                       f"{sorted(layers)}" + (f" (prefix {close[0]!r} with another kind?)" if close else ""))
    return found[0]


# ---------------------------------------------------------------------------------------------
# flat views of Flax variables


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict:
    """(collection, *path) -> leaf of nested Linen-style variables (dicts, FrozenDicts)."""
    flat = {}
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _nnx_collection(nnx, variable) -> str | None:
    """The collection name of an NNX variable; None for random-number state (not a tensor of the model)."""
    if isinstance(variable, nnx.RngState):
        return None
    if isinstance(variable, nnx.Param):
        return "params"
    if isinstance(variable, nnx.BatchStat):
        return "batch_stats"
    return type(variable).__name__


def _nnx_leaves(module) -> dict:
    """(collection, *path) -> the NNX module's variables (RNG state left out)."""
    nnx, _ = _flax()
    flat = {}
    for path, variable in nnx.to_flat_state(nnx.state(module)):
        collection = _nnx_collection(nnx, variable)
        if collection is not None:
            flat[(collection, *map(str, path))] = variable
    return flat


def _is_nnx(obj) -> bool:
    nnx, _ = _flax()
    return nnx is not None and isinstance(obj, nnx.Module)


def _is_linen(obj) -> bool:
    _, linen = _flax()
    return linen is not None and isinstance(obj, linen.Module)


def _host_leaves(source) -> dict:
    """(collection, *path) -> host array of Linen-style variables or an NNX module."""
    if _is_nnx(source):
        return {k: np.asarray(v.get_value()) for k, v in _nnx_leaves(source).items()}
    if isinstance(source, Mapping):
        return {k: to_host(v) for k, v in _flatten(source).items()}
    raise TypeError("npattn.interop.jax: Flax parameters are an NNX module or Linen variables "
                    f"({{'params': ..., 'batch_stats': ...}}), got {type(source).__name__}")


# ---------------------------------------------------------------------------------------------
# conversion


def to_flax_variables(params: dict, key_map: Mapping) -> dict:
    """Linen-style variables ``{"params": {...}, "batch_stats": {...}}`` (host NumPy arrays) from npattn parameters.

    Every npattn key must be held by a layer of ``key_map`` (a KeyError otherwise); BatchNorm counters are
    dropped (Flax keeps none).  ``module.apply(variables, x)`` runs a Linen module on them; the same nested
    dict, below each collection, is an NNX module's pure state (:func:`load_nnx` loads it).
    """
    layers = _layers(key_map)
    flat = {}
    for key, value in params.items():
        _, layer, leaf = _resolve(key, layers)
        flax_key = _flax_key(layer, leaf)
        if flax_key is not None:
            flat[flax_key] = np.array(leaf.to_flax(to_host(value), layer), copy=True)
    return _nest(flat)


def load_nnx(module, params: dict, key_map: Mapping):
    """Set the variables of NNX ``module`` (in place) from npattn parameters; returns the module.

    Every npattn key must reach a variable of the module and every Param/BatchStat (and other non-RNG
    variable) of the module must receive a value of its shape (KeyError / ValueError otherwise).  float64
    values need ``jax_enable_x64``.
    """
    if not _is_nnx(module):
        raise TypeError(f"npattn.interop.jax.load_nnx: expected a flax.nnx.Module, got {type(module).__name__}")
    values = _flatten(to_flax_variables(params, key_map))
    variables = _nnx_leaves(module)
    _check_same_keys(values, variables, "npattn's parameters", "the NNX module")
    if any(v.dtype == np.float64 for v in values.values()) and not jax.config.jax_enable_x64:
        raise ValueError("npattn.interop.jax.load_nnx: float64 values need jax_enable_x64 (jax.config.update("
                         "'jax_enable_x64', True)), else JAX would round them to float32")
    for flax_key, variable in variables.items():
        old, new = variable.get_value(), values[flax_key]
        if tuple(old.shape) != new.shape:
            raise ValueError(f"npattn.interop.jax.load_nnx: {_label(flax_key)} has shape {tuple(old.shape)} in the "
                             f"module, npattn's value {new.shape}")
        variable.set_value(jnp.asarray(new))
    return module


def _check_same_keys(produced: dict, held: dict, produced_name: str, held_name: str) -> None:
    missing, extra = sorted(set(held) - set(produced)), sorted(set(produced) - set(held))
    if missing or extra:
        raise KeyError(f"npattn.interop.jax: {produced_name} and {held_name} differ: {held_name} has "
                       f"{[_label(k) for k in missing]} that nothing maps to, {produced_name} give "
                       f"{[_label(k) for k in extra]} that {held_name} lacks (map every layer, no more)")


@dataclass(frozen=True)
class _Source:
    """Where npattn key's tensor lives in Flax: ``key`` None for the BatchNorm counter (no counterpart)."""

    key: tuple | None
    to_npattn: Callable
    #: the float dtype the Flax value is widened to on import (float32 BatchNorm statistics), else None.
    widen: np.dtype | None = None

    def convert(self, value):
        value = self.to_npattn(value)
        return value.astype(self.widen) if self.widen is not None else value


def _plan(leaves: dict, layers: dict) -> dict:
    """npattn key -> :class:`_Source`, after checking that every Flax leaf is held by exactly one npattn key."""
    plan, owner = {}, {}
    for prefix, layer in layers.items():
        found = False
        for leaf in _leaves(layer):
            flax_key, key = _flax_key(layer, leaf), _npattn_key(prefix, leaf)
            if flax_key is None:
                continue  # the counter, added once the layer is known to exist
            if flax_key not in leaves:
                continue
            if flax_key in owner:
                raise ValueError(f"npattn.interop.jax: Flax leaf {_label(flax_key)} would hold both npattn "
                                 f"{owner[flax_key]!r} and {key!r}; one Flax tensor cannot be two npattn tensors "
                                 "(their gradients would be summed)")
            leaf.check(layer, prefix, tuple(np.shape(leaves[flax_key])))
            owner[flax_key] = key
            plan[key] = _Source(flax_key, leaf.to_npattn)
            found = True
        if not found:
            close = difflib.get_close_matches(layer.path, sorted({"/".join(k[1:-1]) for k in leaves}), n=1)
            close = [c for c in close if c != layer.path]
            raise KeyError(f"npattn.interop.jax: key_map[{prefix!r}] = {layer.kind}({layer.path!r}), but the Flax "
                           f"variables hold no {layer.kind} leaves under {layer.path!r}"
                           + (f" (did you mean {close[0]!r}?)" if close else ""))
        if layer.kind == "batch_norm":
            plan[f"{prefix}.num_batches_tracked"] = _Source(None, _same)
    unmapped = sorted(set(leaves) - set(owner))
    if unmapped:
        raise KeyError(f"npattn.interop.jax: Flax leaves that no layer of the key map holds: "
                       f"{[_label(k) for k in unmapped]} (a layer npattn does not have, or a key map that skips it)")
    return plan


def _import(name: str, leaves: dict, plan: dict, config: dict | None) -> dict:
    """npattn parameters (host arrays) from host Flax leaves, checked against ``init`` for the configuration."""
    mech = get(name)
    settings = _settings(mech, config)
    float_dtypes = {leaves[s.key].dtype for s in plan.values() if s.key is not None and s.key[0] == "params"
                    and leaves[s.key].dtype.kind == "f"}
    main = max(float_dtypes, key=lambda d: d.itemsize) if float_dtypes else np.dtype(np.float64)
    params = {}
    for key, source in plan.items():
        if source.key is None:  # npattn's BatchNorm counter: an integer buffer no output reads
            params[key] = np.zeros((), np.int64)
            continue
        value = leaves[source.key]
        if value.dtype.kind == "f" and source.key[0] != "params" and value.dtype.itemsize < main.itemsize:
            plan[key] = source = _Source(source.key, source.to_npattn, main)  # float32 statistics, widened exactly
        params[key] = np.ascontiguousarray(source.convert(value))
    check_against_init(mech, params, settings, source="the Flax variables",
                       hint="map every npattn layer in key_map={npattn_prefix: layer}")
    return params


def from_flax(name: str, source, key_map: Mapping, config: dict | None = None) -> dict:
    """npattn parameters (backend arrays) for mechanism ``name`` from an NNX module or Linen variables.

    Fails closed: a Flax leaf that no layer of ``key_map`` holds, a layer of ``key_map`` the variables lack,
    or parameters that are not exactly those npattn's ``init`` makes for the default configuration updated
    with ``config`` are a KeyError; a wrong shape a ValueError.  BatchNorm counters are 0; float32 BatchNorm
    statistics are widened to the parameters' dtype.
    """
    leaves = _host_leaves(source)
    params = _import(name, leaves, _plan(leaves, _layers(key_map)), config)
    return {k: ag.from_numpy(v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# models: what compare runs


class _Model:
    """A JAX model as compare sees it: flat leaves and a function of them."""

    label = "JAX function"
    leaves: dict  # (collection, *path) -> host array

    def run(self, values: dict, inputs: list):
        """(output, updated leaves) for leaf values ``values`` (JAX arrays, every leaf) and JAX inputs."""
        raise NotImplementedError


class _NnxModel(_Model):
    label = "Flax NNX module"

    def __init__(self, module, train: bool, call_kwargs: dict):
        nnx, _ = _flax()
        module = nnx.clone(module)  # train()/eval() and train-mode statistics would change the caller's module
        module.train() if train else module.eval()
        self.graphdef, state = nnx.split(module)
        self.templates = list(nnx.to_flat_state(state))
        self.keys = {}
        for path, variable in self.templates:
            collection = _nnx_collection(nnx, variable)
            if collection is not None:
                self.keys[path] = (collection, *map(str, path))
        self.leaves = {self.keys[p]: np.asarray(v.get_value()) for p, v in self.templates if p in self.keys}
        self.call_kwargs = call_kwargs

    def run(self, values, inputs):
        nnx, _ = _flax()
        # fresh variables at this trace level: NNX refuses to update variables made outside a traced function
        state = nnx.from_flat_state([(p, v.replace(values[self.keys[p]] if p in self.keys else v.get_value()))
                                     for p, v in self.templates])
        module = nnx.merge(self.graphdef, state)
        out = module(*inputs, **self.call_kwargs)
        updated = {k: v.get_value() for k, v in _nnx_leaves(module).items() if k[0] != "params"}
        return out, updated


class _LinenModel(_Model):
    label = "Flax Linen module"

    def __init__(self, module, variables, train: bool, call_kwargs: dict, seed: int, inputs: list):
        self.module = module
        self.call_kwargs = dict(call_kwargs)
        if "train" not in self.call_kwargs and "train" in inspect.signature(module.__call__).parameters:
            self.call_kwargs["train"] = train  # the usual Linen convention for BatchNorm/Dropout modes
        if variables is None:  # the module's own initialisation, as a torch module comes with its own
            variables = module.init(jax.random.PRNGKey(seed), *inputs, **self.call_kwargs)
        self.leaves = {k: to_host(v) for k, v in _flatten(variables).items()}
        self.mutable = sorted({k[0] for k in self.leaves if k[0] != "params"}) if train else False

    def run(self, values, inputs):
        variables = _nest(values)
        if self.mutable:
            out, updated = self.module.apply(variables, *inputs, mutable=self.mutable, **self.call_kwargs)
            return out, _flatten(updated)
        return self.module.apply(variables, *inputs, **self.call_kwargs), {}


class _FunctionModel(_Model):
    """``fn(variables, *inputs)``: Linen-style nested variables, or npattn's flat dict when there is no key map."""

    def __init__(self, fn, variables, flat: bool, train: bool, call_kwargs: dict):
        if not isinstance(variables, Mapping):
            raise TypeError("npattn.interop.jax.compare: a JAX function needs variables=... (a dict of arrays), "
                            f"got {type(variables).__name__}")
        self.fn, self.flat, self.train, self.call_kwargs = fn, flat, train, call_kwargs
        if flat:  # npattn's names and layouts: trainable entries are "params", buffers are not differentiated
            self.leaves = {("params" if _trainable(k, v) else "buffers", k): to_host(v)
                           for k, v in variables.items()}
        else:
            self.leaves = {k: to_host(v) for k, v in _flatten(variables).items()}

    def run(self, values, inputs):
        variables = {k[1]: v for k, v in values.items()} if self.flat else _nest(values)
        result = self.fn(variables, *inputs, **self.call_kwargs)
        if not self.train:
            return result, {}
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
            raise TypeError("npattn.interop.jax.compare: in train mode a JAX function returns (output, updated "
                            "variables), as Linen's apply(..., mutable=[...]) does")
        out, updated = result
        if self.flat:
            return out, {(k[0], k[1]): updated[k[1]] for k in self.leaves if k[1] in updated}
        return out, _flatten(updated)


def _trainable(key: str, value) -> bool:
    return not is_buffer(key) and np.dtype(value.dtype).kind == "f"


def _identity_plan(leaves: dict) -> dict:
    return {key[1]: _Source(key, _same) for key in leaves}


# ---------------------------------------------------------------------------------------------
# compare


def _to_jax_layout(array: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if channels_last and array.ndim >= 3 else array


def _to_npattn_layout(array: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(array, -1, 1) if channels_last and array.ndim >= 3 else array


def _check_dtypes(leaves: dict, host_inputs: list) -> np.dtype | None:
    """The one float dtype of the parameters and float inputs (TypeError for a mix)."""
    found = {}
    for key, value in leaves.items():
        if key[0] == "params" and value.dtype.kind == "f":
            found.setdefault(value.dtype, f"parameter {_label(key)}")
    for i, x in enumerate(host_inputs):
        if x.dtype.kind == "f":
            found.setdefault(x.dtype, f"input {i}")
    if len(found) > 1:
        detail = ", ".join(f"{where} is {dtype}" for dtype, where in found.items())
        raise TypeError(f"npattn.interop.jax.compare: parameters and inputs must share one float dtype ({detail}); "
                        "build Flax modules with param_dtype=jnp.float64 (and dtype) for a float64 comparison")
    return next(iter(found), None)


def _model(fn_or_module, variables, key_map, train, call_kwargs, seed, jax_inputs) -> _Model:
    if _is_nnx(fn_or_module):
        if variables is not None:
            raise TypeError("npattn.interop.jax.compare: an NNX module holds its own variables; load npattn's with "
                            "load_nnx(module, params, key_map) instead of passing variables=")
        return _NnxModel(fn_or_module, train, call_kwargs)
    if _is_linen(fn_or_module):
        return _LinenModel(fn_or_module, variables, train, call_kwargs, seed, jax_inputs)
    if not callable(fn_or_module):
        raise TypeError("npattn.interop.jax.compare: expected a Flax module (NNX or Linen) or a JAX function "
                        f"fn(variables, *inputs), got {type(fn_or_module).__name__}")
    return _FunctionModel(fn_or_module, variables, key_map is None, train, call_kwargs)


def compare(fn_or_module, name: str, *inputs, variables=None, key_map: Mapping | None = None,
            config: dict | None = None, train: bool = False, channels_last: bool = False,
            call_kwargs: dict | None = None, rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0,
            equal_nan: bool = False, **options) -> Report:
    """Run a Flax module or JAX function and npattn mechanism ``name`` on the same inputs and compare everything.

    ``fn_or_module`` is

    * an NNX module (its own variables; compare works on a clone in ``train()``/``eval()`` mode);
    * a Linen module, with ``variables`` (``{"params": ..., "batch_stats": ...}``) or, without them, its own
      ``init`` from ``jax.random.PRNGKey(seed)``; a ``train`` argument of its ``__call__`` gets ``train``
      unless ``call_kwargs`` sets it, and in train mode every collection but ``params`` is mutable;
    * a JAX function ``fn(variables, *inputs)`` returning the output (in train mode ``(output, updated
      variables)``), with ``variables`` nested as Linen's (and a ``key_map``), or -- without a key map -- a flat
      dict in npattn's own names and layouts (the trainable entries are differentiated, buffers are not).

    ``inputs`` are in npattn's layout (NumPy, JAX or torch arrays); with ``channels_last`` every input and the
    output of 3 or more dimensions is moved between npattn's (N, C, ...) and JAX's (N, ..., C).  ``key_map``
    (npattn prefix -> :class:`Layer`) is required for Flax modules; ``config`` is the configuration the module
    was built with (``init``'s keywords), its structural entries reach ``apply`` too; ``options`` go to npattn's
    ``apply``; ``call_kwargs`` to the module's ``__call__`` (or the function).

    The report lists every tensor and fails closed, as :func:`npattn.interop.torch.compare`'s: ``output``;
    ``grad input i`` per float input; ``grad <key>`` per npattn parameter held in Flax's ``params`` collection;
    ``running <key>`` (train) / ``buffer <key> (eval: unchanged)`` per statistic or other non-``params`` leaf;
    ``constant <key>`` for a buffer the configuration fixes.  A BatchNorm counter, which Flax lacks, is listed
    as not compared.  Every Flax leaf must be held by one npattn parameter and every npattn parameter by one
    Flax leaf (:func:`from_flax`'s KeyError); parameters and float inputs must share one float dtype.
    """
    mech = get(name)
    settings = _settings(mech, config)
    keywords = apply_keywords(mech, settings if config else {}, options)
    call_kwargs = dict(call_kwargs or {})
    if key_map is None and (_is_nnx(fn_or_module) or _is_linen(fn_or_module)):
        raise TypeError("npattn.interop.jax.compare: a Flax module needs key_map={npattn_prefix: layer} (e.g. "
                        "{'fc1': dense('Dense_0')}); Flax names and layouts are not npattn's")
    host_inputs = [to_host(x) for x in inputs]
    wide = any(x.dtype == np.float64 for x in host_inputs)
    with jax.enable_x64(True) if wide or jax.config.jax_enable_x64 else contextlib.nullcontext():
        jax_inputs = [jnp.asarray(_to_jax_layout(x, channels_last)) for x in host_inputs]
        model = _model(fn_or_module, variables, key_map, train, call_kwargs, seed, jax_inputs)
        _check_dtypes(model.leaves, host_inputs)
        plan = _identity_plan(model.leaves) if key_map is None else _plan(model.leaves, _layers(key_map))
        params = _import(name, model.leaves, plan, config)
        out, grads, updated, cotangent = _run_jax(model, jax_inputs, host_inputs, channels_last, seed)
    run = run_npattn(mech, {k: ag.from_numpy(v) for k, v in params.items()}, host_inputs, cotangent, train=train,
                     keywords=keywords)
    return _report(mech, settings, model, plan, params, out, grads, updated, run, train,
                   dict(rtol=rtol, atol=atol, equal_nan=equal_nan))


def _run_jax(model: _Model, jax_inputs: list, host_inputs: list, channels_last: bool, seed: int):
    """(output, gradients, updated leaves, cotangent), host arrays in npattn's layout."""
    float_idx = [i for i, x in enumerate(host_inputs) if x.dtype.kind == "f"]
    trainable = {k: jnp.asarray(v) for k, v in model.leaves.items() if k[0] == "params" and v.dtype.kind == "f"}
    fixed = {k: jnp.asarray(v) for k, v in model.leaves.items() if k not in trainable}

    def fn(values, *diff_inputs):
        full = list(jax_inputs)
        for i, value in zip(float_idx, diff_inputs):
            full[i] = value
        out, updated = model.run({**fixed, **values}, full)
        if not isinstance(out, jax.Array):
            raise TypeError(f"npattn.interop.jax.compare: the {model.label} returned {type(out).__name__}, not one "
                            "array; wrap it in a function that returns the output npattn's apply returns")
        return out, updated

    out, pullback, updated = jax.vjp(fn, trainable, *[jax_inputs[i] for i in float_idx], has_aux=True)
    out_host = _to_npattn_layout(np.asarray(out), channels_last)
    dtype = out_host.dtype if out_host.dtype.kind == "f" else np.float64
    cotangent = np.random.default_rng(seed).standard_normal(out_host.shape).astype(dtype)
    grads = pullback(jnp.asarray(_to_jax_layout(cotangent, channels_last)))
    grad_params = {k: np.asarray(g) for k, g in grads[0].items()}
    grad_inputs = {i: _to_npattn_layout(np.asarray(g), channels_last) for i, g in zip(float_idx, grads[1:])}
    return out_host, (grad_params, grad_inputs), {k: np.asarray(v) for k, v in updated.items()}, cotangent


def _report(mech, settings, model, plan, params, out, grads, updated, run, train, tolerances) -> Report:
    grad_params, grad_inputs = grads
    report = Report(mech.name, actual=model.label)
    report.add("output", out, run.output, **tolerances)
    for i, grad in sorted(grad_inputs.items()):
        if run.grad_inputs is None:
            report.fail(f"grad input {i}", NOT_COMPARED_FOR_SHAPE)
        else:
            report.add(f"grad input {i}", grad, run.grad_inputs[i], **tolerances)
    constants = constant_buffers(mech, settings, params)
    for key in params:
        source = plan[key]
        if source.key is None:
            report.rows.append((f"counter {key}", True, "not compared: Flax's BatchNorm keeps no counter (npattn's "
                                "is 0 on import and never enters an output)"))
            continue
        label = key if source.key == ("params", key) else f"{key} (flax {_label(source.key)})"
        if source.key[0] == "params":
            if run.grad_params is None:
                report.fail(f"grad {label}", NOT_COMPARED_FOR_SHAPE)
            elif key not in run.grad_params or source.key not in grad_params:
                report.fail(f"grad {label}", f"npattn's {key} is not floating-point; no gradient")
            else:
                report.add(f"grad {label}", source.convert(grad_params[source.key]), run.grad_params[key],
                           **tolerances)
            continue
        after = source.convert(updated.get(source.key, model.leaves[source.key]))
        if train:  # npattn reports the new statistics; a buffer it leaves alone keeps its value
            report.add(f"running {label}", after, run.new_stats.get(key, params[key]), **tolerances)
        else:
            report.add(f"buffer {label} (eval: unchanged)", after, params[key], **tolerances)
        if key in constants:  # fixed by the configuration (FcaNet's DCT filters): loading it proves nothing
            report.add(f"constant {label} (npattn's init for config)", params[key], constants[key], **tolerances)
    for key in sorted(set(run.new_stats) - set(params)):
        report.fail(f"running {key}", "npattn updated a buffer the module does not have")
    for key in sorted(set(run.new_stats) & set(params)):
        if plan[key].key is not None and plan[key].key[0] == "params":
            report.fail(f"running {key}", "npattn updated a buffer that the Flax side holds as a trainable parameter")
    return report


# ---------------------------------------------------------------------------------------------
# check_module: compare across the configurations of the entry's space


def check_module(factory, name: str, *, key_map, max_examples: int = 25, seed: int = 0, space=None,
                 channels_last: bool = False, call_kwargs: dict | None = None, rtol: float = 1e-10,
                 atol: float = 1e-12, equal_nan: bool = False, **fixed):
    """Compare the Flax module ``factory(**config)`` with npattn's ``name`` across the entry's space.

    ::

        def test_my_flax_se():
            check_module(lambda channels, reduction, bias: MySE(reduction, bias), "se",
                         key_map={"fc1": dense("Dense_0"), "fc2": dense("Dense_1")}, channels_last=True)

    As :func:`npattn.interop.torch.check_module`: for each configuration hypothesis draws from the space
    (derandomised by ``seed``; ``fixed`` values held, ``space`` replacing the entry's), npattn's ``init``
    parameters are loaded into the module -- an NNX module through :func:`load_nnx`, a Linen module as
    ``variables`` from :func:`to_flax_variables` -- and :func:`compare` runs both in float64 (``jax_enable_x64``
    on while the factory builds the module and during the comparison).  ``key_map`` (npattn prefix ->
    :class:`Layer`) may be a function of ``config``.  A mismatch, or a module that raises, is an AssertionError
    naming the shrunk configuration, the worst tensor and element, and the seed.
    """
    from ._fuzz import fuzz, host_inputs

    mech = get(name)

    def check_one(case):
        mapping = key_map(case.config) if callable(key_map) else key_map
        with jax.enable_x64(True):
            module = factory(**case.config)
            kwargs = dict(key_map=mapping, config=case.config, train=case.train, channels_last=channels_last,
                          call_kwargs=call_kwargs, rtol=rtol, atol=atol, equal_nan=equal_nan, seed=case.seed,
                          **case.point.options)
            if _is_nnx(module):
                return compare(load_nnx(module, case.params, mapping), mech.name, *host_inputs(case), **kwargs)
            if _is_linen(module):
                return compare(module, mech.name, *host_inputs(case),
                               variables=to_flax_variables(case.params, mapping), **kwargs)
        raise TypeError(f"check_module: factory returned {type(module).__name__}, not a Flax module (NNX or Linen)")

    label = getattr(factory, "__qualname__", type(factory).__name__)
    return fuzz(check_one, mech.name, max_examples=max_examples, seed=seed, fixed=fixed, space=space,
                actual=f"Flax module from {label}",
                replay=f"check_module({label}, {mech.name!r}{''.join(f', {k}={v!r}' for k, v in fixed.items())})")
