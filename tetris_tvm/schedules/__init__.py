"""Block-sparse TensorIR kernels and their default schedules, per target.

- :mod:`.bsr` -- :class:`BSRMatrix` (the weight storage);
- :mod:`.kernels` -- PrimFunc builders (block-sparse / dense linear and conv2d);
- :mod:`.cpu` -- dlight-style CPU schedule rules (``default_rules()``);
- :mod:`.build` -- compile a kernel for a weight and call it on numpy arrays.
"""

from .bsr import BSRMatrix
from .kernels import (
    block_sparse_conv2d,
    block_sparse_linear,
    conv2d_weight_args,
    dense_conv2d,
    dense_linear,
    linear_weight_args,
    pack_dense_weight,
)

__all__ = [
    "BSRMatrix",
    "block_sparse_conv2d",
    "block_sparse_linear",
    "conv2d_weight_args",
    "dense_conv2d",
    "dense_linear",
    "linear_weight_args",
    "pack_dense_weight",
]
