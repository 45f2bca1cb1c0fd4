"""Compute definitions: the weight storage and the TensorIR kernels, apart from their schedules.

As TVM keeps compute definitions apart from schedules, this package only says WHAT a kernel
computes; :mod:`tetris_tvm.schedules` says how it runs on each target.

- :mod:`.bsr` -- :class:`BSRMatrix`, the block-sparse weight storage;
- :mod:`.compute` -- unscheduled PrimFunc builders: block-sparse / dense linear and conv2d
  (float32), tagged with their kind (:data:`KERNEL_ATTR`, :data:`KERNEL_KINDS`);
- :mod:`.half` -- the float16 / bfloat16 linear kernel with float32 accumulation.
"""

from .bsr import BSRMatrix
from .compute import (
    ACTIVATIONS,
    CONV_KINDS,
    KERNEL_ATTR,
    LINEAR_KINDS,
    Conv2dGeometry,
    apply_activation,
    block_sparse_conv2d,
    block_sparse_linear,
    conv2d_weight_args,
    dense_conv2d,
    dense_linear,
    linear_weight_args,
    pack_dense_weight,
    shape_dims,
    weight_format,
)
from .half import HALF_DTYPES, block_sparse_linear_fp16, half_weight_args

__all__ = [
    "ACTIVATIONS",
    "CONV_KINDS",
    "apply_activation",
    "block_sparse_conv2d",
    "block_sparse_linear",
    "block_sparse_linear_fp16",
    "BSRMatrix",
    "conv2d_weight_args",
    "Conv2dGeometry",
    "dense_conv2d",
    "dense_linear",
    "HALF_DTYPES",
    "half_weight_args",
    "KERNEL_ATTR",
    "LINEAR_KINDS",
    "linear_weight_args",
    "pack_dense_weight",
    "shape_dims",
    "weight_format",
]
