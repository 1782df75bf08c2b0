"""autograd -- the small tape-based reverse-mode autodiff core of npattn.

Arrays live on the backend chosen by ``NPATTN_BACKEND`` (``numpy`` by default, ``cupy`` for a GPU).
Operations follow ``torch`` / ``torch.nn.functional`` names and semantics (``axis`` instead of
``dim``).  Everything is importable from here::

    import autograd as ag
    y = ag.conv2d(x, w, padding=1)
    g = ag.grad(lambda w: ag.sum(ag.conv2d(x, w) ** 2))(w)

Note: the PyPI project "autograd" (HIPS) has the same import name; npattn checks that this package,
not that one, is the one imported (see ``__npattn_core__``).
"""
from __future__ import annotations

__npattn_core__ = True
__version__ = "0.1.0"

from . import backend
from .attention import scaled_dot_product_attention
from .backend import from_numpy, to_numpy, xp
from .conv import conv1d, conv2d, conv_transpose1d, conv_transpose2d, fold, unfold
from .conv3d import conv3d, conv_transpose3d
from .dct import dct, dct2, dct_matrix, dctn, idct, idct2, idct_matrix, idctn
from .functional import grad, tree_flatten, tree_map, tree_unflatten, value_and_grad, vjp
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .gridsample import grid_sample
from .nn import (batch_norm, categorical, dropout, group_norm, instance_norm, layer_norm, linear, log_softmax,
                 normal, softmax, uniform)
from .ops import (abs, add, argmax, argmin, astype, broadcast_to, cat, clip, concatenate, div, einsum,
                  exp, expand_dims, flatten, flip, getitem, index_add, leaky_relu, log, logsumexp, matmul,
                  max, maximum, mean, min, minimum, mul, neg, outer, pad, permute, pow, relu, repeat, reshape,
                  roll, sigmoid, sign, softplus, split, sqrt, squeeze, stack, std, sub, sum, sum_product, sum_to,
                  swapaxes, tanh, tile, transpose, unsqueeze, var, where, window_partition,
                  window_reverse)
from .pooling import (adaptive_avg_matrix, adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_bins,
                      adaptive_max_pool1d, adaptive_max_pool2d, avg_pool1d, avg_pool2d, global_avg_pool2d,
                      global_max_pool2d, lp_pool1d, lp_pool2d, max_pool1d, max_pool2d, take_along_axis,
                      take_max)
from .pooling3d import adaptive_avg_pool3d, adaptive_max_pool3d, avg_pool3d, lp_pool3d, max_pool3d
from .resize import interpolate, resize_matrix
from .tensor import Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad


def tensor(data, requires_grad: bool = False) -> Tensor:
    """Make a Tensor from a backend array, a Tensor, or a Python scalar / nested list."""
    return Tensor(data, requires_grad=requires_grad)
