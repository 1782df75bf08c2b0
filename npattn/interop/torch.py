"""PyTorch interop (needs ``torch``): state_dict conversion and side-by-side comparison.

npattn's parameter names *are* PyTorch ``state_dict`` names with PyTorch layouts, so conversion is a key
mapping (identity unless the module names its layers differently) and a dtype/device move.  Two layouts
differ and are converted here:

* ``torch.nn.MultiheadAttention`` (inside ``torch.nn.Transformer*Layer`` too) stores the Q/K/V projections
  fused as ``in_proj_weight`` = cat(W_q, W_k, W_v) and the output projection as ``out_proj``, where npattn's
  ``mha`` and ``transformer`` keep ``w_q/w_k/w_v/w_o`` (the paper's matrices, one per name).  Mechanisms
  listed in :data:`TORCH_NN_ATTENTION` get that layout both ways.
* Official modules that hold one layer under two names (APNB's shared ``f_query``/``f_key``): the
  mechanisms of :data:`OFFICIAL_LAYOUTS` import through their module's ``from_official_state_dict`` (the
  two entries must be equal tensors) and export through ``official_state_dict`` (the alias added back).

::

    from npattn.interop.torch import compare
    report = compare(my_torch_cbam, "cbam", x)          # runs both, forward and backward
    assert report.ok, report

``compare`` loads the module's state_dict into npattn parameters, runs both in the module's dtype
(use float64 for a golden comparison), feeds both the same random cotangent, and compares every tensor
(the rules are in :func:`compare`): it fails, rather than passes, when it could not compare something.
"""
from __future__ import annotations

import copy
import difflib
import re

import numpy as np

import autograd as ag

from ..registry import apply_keywords, get
from ..self_attention import ann
from ..testing import to_host
from ._verdict import NOT_COMPARED_FOR_SHAPE, Report, check_against_init, constant_buffers, run_npattn
from ._verdict import settings as _settings

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npattn.interop.torch needs PyTorch: pip install 'npattn[torch]'") from exc


#: Mechanisms whose attention parameters use torch.nn.MultiheadAttention's fused layout on the torch side.
TORCH_NN_ATTENTION = ("mha", "transformer")
PROJECTIONS = ("w_q", "w_k", "w_v")
_NPATTN_PROJECTION = re.compile(r"^(.*?)(w_q|w_k|w_v|w_o)\.(weight|bias)$")
_TORCH_PROJECTION = re.compile(r"^(.*?)(in_proj_|out_proj\.)(weight|bias)$")

#: Mechanisms whose official modules list one tensor under several names: the mechanism's module, with
#: ``OFFICIAL_ALIASES`` (official prefix -> npattn prefix), ``official_state_dict`` and ``from_official_state_dict``.
OFFICIAL_LAYOUTS = {"ann-apnb": ann}


# ---------------------------------------------------------------------------------------------
# names


def torch_key(name: str, key: str) -> tuple:
    """(torch ``state_dict`` key, part) of npattn parameter ``key`` of mechanism ``name``.

    ``part`` is None when the tensors are the same, else the index (0, 1, 2 = Q, K, V) of the equal
    row block of a fused ``in_proj_*`` tensor that holds it.
    """
    match = _NPATTN_PROJECTION.match(key) if name in TORCH_NN_ATTENTION else None
    if not match:
        return key, None
    prefix, projection, kind = match.groups()
    if projection == "w_o":
        return f"{prefix}out_proj.{kind}", None
    return f"{prefix}in_proj_{kind}", PROJECTIONS.index(projection)


def _unfused(name: str, key: str) -> list:
    """[(npattn key, part)] held by torch key ``key``: three row blocks of a fused ``in_proj_*``, else one."""
    match = _TORCH_PROJECTION.match(key) if name in TORCH_NN_ATTENTION else None
    if not match:
        return [(key, None)]
    prefix, which, kind = match.groups()
    if which == "out_proj.":
        return [(f"{prefix}w_o.{kind}", None)]
    return [(f"{prefix}{projection}.{kind}", part) for part, projection in enumerate(PROJECTIONS)]


def _unaliased(name: str, key: str) -> str:
    """The npattn key of an official alias (APNB's ``stages.0.f_query.*`` -> ``stages.0.f_key.*``), else ``key``."""
    layout = OFFICIAL_LAYOUTS.get(name)
    for alias, shared in (layout.OFFICIAL_ALIASES.items() if layout else ()):
        if key.startswith(alias):
            return shared + key[len(alias):]
    return key


def _checked_key_map(name: str, torch_keys, key_map: dict | None) -> dict:
    """``key_map`` after checking that every key it maps is one of the state_dict's (a KeyError otherwise)."""
    key_map = dict(key_map or {})
    unknown = [k for k in key_map if k not in torch_keys]
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(torch_keys), n=1) for k in unknown}
        raise KeyError(f"{name}: key_map maps {', '.join(repr(k) for k in unknown)}, which the torch state_dict does "
                       "not have" + "".join(f"; {k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h))
    return key_map


def _plan(name: str, torch_keys, key_map: dict) -> dict:
    """npattn key -> [(torch key, part)]: every torch state_dict entry that holds (a block of) that tensor."""
    plan: dict = {}
    for key in torch_keys:
        for npattn_key, part in _unfused(name, _unaliased(name, key_map.get(key, key))):
            plan.setdefault(npattn_key, []).append((key, part))
    return plan


# ---------------------------------------------------------------------------------------------
# state_dict conversion


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def from_torch_state_dict(name: str, state_dict: dict, key_map: dict | None = None, config: dict | None = None) -> dict:
    """npattn parameters (backend arrays) for mechanism ``name`` from a torch ``state_dict``.

    ``key_map`` maps torch keys to npattn keys where they differ (applied first; mapping a key the
    state_dict does not have is a KeyError); fused attention tensors are split for the mechanisms of
    :data:`TORCH_NN_ATTENTION`, and official aliases resolved for those of :data:`OFFICIAL_LAYOUTS`.  Several
    torch entries that become one npattn tensor (an alias) must hold equal arrays, else a ValueError.  The
    result must be exactly the parameters npattn's ``init`` makes for the mechanism's default configuration
    updated with ``config`` (e.g. ``{"num_layers": 6}``, ``{"attn_bias": True}``), with their shapes:
    a missing or unknown key is a KeyError, a wrong shape a ValueError (no silent drops).
    """
    mech = get(name)
    key_map = _checked_key_map(name, state_dict, key_map)
    renamed, origin = {}, {}
    for key, value in state_dict.items():
        target, host = key_map.get(key, key), np.array(to_host(value), copy=True)
        if target in renamed:  # two torch entries mapped to one name: an alias, so one tensor
            if not _same(renamed[target], host):
                raise ValueError(f"{name}: key_map sends {origin[target]!r} and {key!r} to {target!r}, but they hold "
                                 "different arrays (one npattn tensor can only alias equal tensors)")
            continue
        renamed[target], origin[target] = host, key
    if name in OFFICIAL_LAYOUTS:
        renamed = OFFICIAL_LAYOUTS[name].from_official_state_dict(renamed)
    params = {}
    for key, array in renamed.items():
        parts = _unfused(name, key)
        if len(parts) > 1 and array.shape[0] % len(parts):
            raise ValueError(f"{name}: {key} has {array.shape[0]} rows, not a multiple of 3 (fused Q, K, V)")
        blocks = np.split(array, len(parts), axis=0) if len(parts) > 1 else [array]
        for (npattn_key, _), block in zip(parts, blocks):
            params[npattn_key] = ag.from_numpy(block.copy())  # a contiguous copy (0-d stays 0-d)
    check_against_init(mech, params, _settings(mech, config))
    return params


def to_torch_state_dict(params: dict, key_map: dict | None = None, name: str | None = None) -> dict:
    """A torch ``state_dict`` (CPU tensors) from npattn parameters; ``key_map`` maps npattn -> torch keys.

    With ``name`` in :data:`TORCH_NN_ATTENTION`, Q/K/V projections are fused into ``in_proj_*`` and
    ``w_o`` becomes ``out_proj`` (torch.nn.MultiheadAttention's layout); with ``name`` in
    :data:`OFFICIAL_LAYOUTS`, the official aliases are added (APNB's ``f_query`` = ``f_key``).
    """
    key_map = key_map or {}
    if name in OFFICIAL_LAYOUTS:
        params = OFFICIAL_LAYOUTS[name].official_state_dict(params)
    state, fused = {}, {}
    for key, value in params.items():
        target, part = torch_key(name, key) if name else (key, None)
        if part is None:
            state[key_map.get(key, target)] = torch.from_numpy(ag.to_numpy(value).copy())
        else:
            fused.setdefault(target, [None] * len(PROJECTIONS))[part] = ag.to_numpy(value)
    for target, parts in fused.items():
        if any(p is None for p in parts):
            raise KeyError(f"{name}: {target} needs all of {PROJECTIONS}; some are missing")
        state[key_map.get(target, target)] = torch.from_numpy(np.concatenate(parts, axis=0))
    return state


# ---------------------------------------------------------------------------------------------
# compare


def _same_tensor(a, b) -> bool:
    """True when torch tensors ``a`` and ``b`` are one tensor (the same object, or the same memory and view)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def compare(module, name: str, *inputs, train: bool = False, key_map: dict | None = None, config: dict | None = None,
            rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0, equal_nan: bool = False, **options) -> Report:
    """Run torch ``module`` and npattn mechanism ``name`` on the same inputs and compare everything.

    ``inputs`` are NumPy arrays or torch tensors; gradients are taken w.r.t. every floating input and
    every module parameter (on a copy of the module: the caller's module, its mode, gradients and
    buffers are left as they were), for one random cotangent.  ``config`` is the configuration the
    module was built with (``init``'s keywords, e.g. ``{"bias": False}``); its structural entries reach
    ``apply`` too.  ``options`` go to the npattn ``apply``; ``key_map`` as in :func:`from_torch_state_dict`.

    The report has one row per tensor, and fails closed: ``output``; ``grad input i`` per floating
    input; ``grad <key>`` per npattn parameter held by a torch parameter (every one of them; a fused
    ``in_proj`` gradient is split into its Q/K/V rows; names that alias one npattn tensor must be one
    torch parameter, else a failing row); ``running <key>`` per buffer in train mode (the updated
    statistics) and ``buffer <key>`` in eval mode (unchanged by the forward pass); ``constant <key>`` for a
    buffer that ``init`` fixes for the configuration (FcaNet's DCT filters: the module's must be npattn's).
    Every torch state_dict entry must map to an npattn parameter and back, else :func:`from_torch_state_dict`'s
    KeyError.
    """
    mech = get(name)
    settings = _settings(mech, config)
    keywords = apply_keywords(mech, settings if config else {}, options)
    module = copy.deepcopy(module)  # train(), backward() and train-mode BN would change the caller's module
    state = module.state_dict(keep_vars=True)
    params = from_torch_state_dict(name, state, key_map, config)
    plan = _plan(name, state, _checked_key_map(name, state, key_map))
    torch_params = dict(module.named_parameters(remove_duplicate=False))
    for tensor in torch_params.values():
        tensor.requires_grad_(True)  # a frozen parameter's gradient is compared too

    host_inputs = [to_host(x) for x in inputs]
    out_t, torch_inputs, cotangent = _run_torch(module, host_inputs, train, seed)
    buffers_after = dict(module.named_buffers(remove_duplicate=False))
    run = run_npattn(mech, params, host_inputs, cotangent, train=train, keywords=keywords)

    constants = constant_buffers(mech, settings, params)
    report = Report(name)

    def add(what, torch_value, npattn_value):
        # the module under test is "actual", npattn (the reference) is "expected"
        report.add(what, torch_value, npattn_value, rtol=rtol, atol=atol, equal_nan=equal_nan)

    add("output", out_t, run.output)
    for i, x in enumerate(host_inputs):
        if x.dtype.kind != "f":
            continue
        if run.grad_inputs is None:
            report.fail(f"grad input {i}", NOT_COMPARED_FOR_SHAPE)
            continue
        grad = torch_inputs[i].grad
        add(f"grad input {i}", grad if grad is not None else torch.zeros_like(torch_inputs[i]), run.grad_inputs[i])
    for key in params:
        sources = plan[key]
        label = key if [k for k, _ in sources] == [key] else f"{key} (torch {', '.join(k for k, _ in sources)})"
        tensors = [torch_params.get(k, buffers_after.get(k)) for k, _ in sources]
        if any(t is None for t in tensors):
            report.fail(f"tensor {label}", "a state_dict entry that is neither a parameter nor a buffer of the "
                        "module; nothing to compare")
        elif any(not _same_tensor(t, tensors[0]) for t in tensors):
            report.fail(f"tensor {label}", "npattn holds one tensor here, the module separate ones (not tied: equal "
                        "now, but their gradients and updates are not one)")
        elif all(k in torch_params for k, _ in sources):
            if run.grad_params is None:
                report.fail(f"grad {label}", NOT_COMPARED_FOR_SHAPE)
                continue
            if key not in run.grad_params:
                report.fail(f"grad {label}", f"npattn's {key} is not floating-point; no gradient")
                continue
            grad = tensors[0].grad if tensors[0].grad is not None else torch.zeros_like(tensors[0])
            part = sources[0][1]
            if part is not None:  # this projection's rows of the fused in_proj gradient
                grad = torch.chunk(grad, len(PROJECTIONS), dim=0)[part]
            add(f"grad {label}", grad, run.grad_params[key])
        elif all(k in buffers_after for k, _ in sources):
            if train:  # npattn reports the new statistics; a buffer it leaves alone keeps its value
                add(f"running {label}", tensors[0], run.new_stats.get(key, params[key]))
            else:
                add(f"buffer {label} (eval: unchanged)", tensors[0], params[key])
            if key in constants:  # fixed by the configuration (FcaNet's DCT filters): loading it proves nothing
                add(f"constant {label} (npattn's init for config)", params[key], constants[key])
        else:
            report.fail(f"tensor {label}", "held by both parameters and buffers of the module")
    for key in sorted(set(run.new_stats) - set(params)):
        report.fail(f"running {key}", "npattn updated a buffer the module does not have")
    return report


def _run_torch(module, host_inputs: list, train: bool, seed: int):
    """(output, input tensors with .grad, cotangent) of the torch module, forward and backward."""
    module.train(train)
    torch_inputs = [torch.tensor(x, requires_grad=x.dtype.kind == "f") for x in host_inputs]
    out_t = module(*torch_inputs)
    if not isinstance(out_t, torch.Tensor):
        raise TypeError(f"compare: the module returned {type(out_t).__name__}, not one tensor; wrap it in a module "
                        "that returns the output npattn's apply returns")
    cotangent = np.random.default_rng(seed).standard_normal(tuple(out_t.shape)).astype(host_inputs[0].dtype)
    module.zero_grad(set_to_none=True)
    out_t.backward(torch.from_numpy(cotangent))
    return out_t, torch_inputs, cotangent


# ---------------------------------------------------------------------------------------------
# check_module: compare across the configurations of the entry's space


def _to_module_state(params: dict, name: str, key_map: dict) -> dict:
    """The torch state_dict of ``params`` under the module's names: ``key_map`` (torch -> npattn, as in
    :func:`compare`) inverted; several torch names of one npattn tensor (an alias) each get a copy."""
    state = to_torch_state_dict(params, name=name)
    torch_names: dict = {}
    for torch_name, npattn_name in key_map.items():
        torch_names.setdefault(npattn_name, []).append(torch_name)
    renamed = {}
    for key, tensor in state.items():
        for target in torch_names.get(key, [key]):
            renamed[target] = tensor.clone()
    return renamed


def check_module(factory, name: str, *, max_examples: int = 25, seed: int = 0, key_map=None, space=None,
                 rtol: float = 1e-10, atol: float = 1e-12, equal_nan: bool = False, **fixed):
    """Compare ``factory(**config)`` with npattn's ``name`` across configurations drawn from the entry's space.

    ::

        def test_my_se():
            check_module(lambda channels, reduction, bias: MySE(channels, reduction, bias), "se")

    For each configuration hypothesis draws (``max_examples`` of them, derandomised by ``seed``): npattn's
    ``init`` makes parameters for it, they are loaded (strictly) into ``factory(**config)`` -- ``config`` is
    ``init``'s keywords, the entry's ``config`` updated with the drawn values -- converted to float64, and
    :func:`compare` runs both on the drawn inputs (batch 0 and 1, odd sizes, train and eval): output, input
    gradients, every parameter gradient, and the running statistics in train mode.  ``fixed`` holds values of the
    space (``bias=False`` for a module without one, ``train=False``); ``space`` replaces the entry's space;
    ``key_map`` maps torch names to npattn names as in :func:`compare`, or is a function of ``config`` returning
    that mapping (names that depend on a layer count); ``rtol``, ``atol`` and ``equal_nan`` as in :func:`compare`
    (``equal_nan=True`` where both are meant to give NaN, as the official SimAM on a 1x1 map).

    Returns a :class:`~npattn.interop._fuzz.FuzzResult`.  On a mismatch -- or when the module raises, or its
    state does not load -- raises AssertionError naming the shrunk minimal configuration, the worst tensor and
    element, and the seed to replay, followed by the full report.  Needs hypothesis.
    """
    from ._fuzz import fuzz, host_inputs

    mech = get(name)

    def check_one(case):
        mapping = key_map(case.config) if callable(key_map) else dict(key_map or {})
        module = factory(**case.config)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"check_module: factory returned {type(module).__name__}, not a torch.nn.Module")
        module = module.to(torch.float64)
        module.load_state_dict(_to_module_state(case.params, mech.name, mapping), strict=True)
        return compare(module, mech.name, *host_inputs(case), train=case.train, key_map=mapping, config=case.config,
                       rtol=rtol, atol=atol, equal_nan=equal_nan, seed=case.seed, **case.point.options)

    label = getattr(factory, "__qualname__", type(factory).__name__)
    return fuzz(check_one, mech.name, max_examples=max_examples, seed=seed, fixed=fixed, space=space,
                actual=f"torch module from {label}",
                replay=f"check_module({label}, {mech.name!r}{''.join(f', {k}={v!r}' for k, v in fixed.items())})")
