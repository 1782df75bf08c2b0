"""Shared pieces of the package tier: configuration spaces for the comparisons, and package loaders.

The spaces are the package modules' configuration spaces expressed over the registry entry's ``init``
keywords (what the package's constructor can express: ``qkv_bias=False`` for vit-pytorch, RoPE tables
for LLaMA ...).  Entries of the channel family use their own declared space; the others get one here, so
this tier does not depend on which spaces other families declare.
"""
import importlib
import importlib.util
import sys
import types

import pytest

from npattn.space import BATCH, Bools, Choice, Derived, Ints, Space, bn_train, image, tokens

#: Batch sizes without the empty batch, for modules that refuse it (a finding recorded on its own).
NONEMPTY = Ints(1, 3)

SIMAM = Space(config={"channels": Ints(1, 8)}, options={"e_lambda": 1e-4}, inputs=image())
TRIPLET = Space(config={"no_spatial": Bools()}, inputs=image(3),
                where=(bn_train(lambda v: v.batch * min(v.height, v.width)),))
SHUFFLE = Space(config={"groups": Ints(1, 4), "_half": Ints(1, 3),
                        "channels": Derived(lambda v: 2 * v.groups * v._half), "official_init": False},
                inputs=image())
#: vit-pytorch's Attention: no qkv bias, no qk-norm, any head width (dim_head)
VIT = Space(config={"dim": Ints(1, 12), "num_heads": Ints(1, 4), "attn_head_dim": Ints(1, 8), "qkv_bias": False,
                    "qk_norm": False}, inputs=tokens("dim", length=Ints(1, 6)), train=Choice(False, True))
#: HF LLaMA attention: n_heads a multiple of n_kv_heads, even head_dim (RoPE), rotate-half layout, theta 1e4
LLAMA = Space(config={"_kv": Ints(1, 2), "_rep": Ints(1, 2), "n_kv_heads": Derived(lambda v: v._kv),
                      "n_heads": Derived(lambda v: v._kv * v._rep), "head_dim": Choice(2, 4), "dim": Ints(1, 12),
                      "bias": Bools()},
              options={"rope_layout": "half", "rope_theta": 10000.0},
              inputs=tokens("dim", batch=BATCH, length=Ints(1, 6)))
#: ... where LlamaConfig accepts it: hidden_size a multiple of the heads, even with an explicit head_dim
LLAMA_HF = LLAMA.require(lambda v: v.dim % v.n_heads == 0)


def package_file(package: str, relative: str, name: str):
    """Module ``relative`` (a .py file) of ``package`` loaded on its own, without running the package's
    ``__init__`` (vit_pytorch's imports torchvision, which has no CPU wheel here)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    file_spec = importlib.util.spec_from_file_location(name, f"{spec.submodule_search_locations[0]}/{relative}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def timm_layers(name: str):
    """``timm.layers.<name>``, imported normally where timm imports, else loaded on its own: under bare namespace
    packages ``timm`` and ``timm.layers`` (its relative imports resolve without the packages' ``__init__``, which
    import torchvision), with a stub ``torchvision.ops.misc`` holding a placeholder ``FrozenBatchNorm2d`` (norm_act.py
    imports it for batch-norm freezing helpers nothing here calls).  The stubs and bare packages are in
    ``sys.modules`` only while the file loads (a real torchvision, where installed, is put back).  Skips the test
    when timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    try:
        return importlib.import_module(f"timm.layers.{name}")
    except ImportError:
        pass
    root = importlib.util.find_spec("timm").submodule_search_locations[0]
    stubbed = ("timm", "timm.layers", "torchvision", "torchvision.ops", "torchvision.ops.misc")
    saved = {key: sys.modules.get(key) for key in stubbed}
    try:
        for key, path in (("timm", root), ("timm.layers", f"{root}/layers"),
                          ("torchvision", None), ("torchvision.ops", None), ("torchvision.ops.misc", None)):
            package = types.ModuleType(key)
            package.__path__ = [path] if path else []
            sys.modules[key] = package
        sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})  # unused here
        return importlib.import_module(f"timm.layers.{name}")
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
