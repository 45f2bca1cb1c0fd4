"""CUDA schedule rules in the dlight style, plus the half-precision kernel builder.

``tvm.s_tir.dlight.ApplyDefaultSchedule(*default_rules(), *dense_rules())`` schedules every
tetris kernel (block-sparse / dense linear and conv2d, float32 and float16 / bfloat16) and every
dense op Relax's LegalizeOps + FuseOps emit (matmul + bias + activation, layer norm, softmax,
reductions, elementwise) for a CUDA target::

    from tvm.s_tir import dlight as dl
    from tetris_tvm.schedules import cuda
    target = cuda.cuda_target("sm_90")      # sets the attributes dlight / MetaSchedule need
    with target:
        mod = dl.ApplyDefaultSchedule(*cuda.default_rules(), *cuda.dense_rules())(mod)

:func:`tetris_tvm.schedules.pipeline.default_rules` picks these for CUDA targets (and the CPU
rules of :mod:`..cpu` for ``llvm``); each rule returns None on other targets and other kernels.
"""

from __future__ import annotations

from tvm.s_tir.dlight.base import ScheduleRule

from ...kernels.half import HALF_DTYPES, block_sparse_linear_fp16, half_weight_args
from ._common import cuda_target, is_cuda
from .block_sparse_matmul import BlockSparseMatmul, LinearTile, linear_tile, schedule_linear
from .conv2d import BlockSparseConv2d, schedule_conv2d

__all__ = [
    "HALF_DTYPES",
    "BlockSparseConv2d",
    "BlockSparseMatmul",
    "LinearTile",
    "block_sparse_linear_fp16",
    "cuda_target",
    "default_rules",
    "dense_rules",
    "half_weight_args",
    "is_cuda",
    "linear_tile",
    "schedule_conv2d",
    "schedule_linear",
]


def default_rules() -> list[ScheduleRule]:
    """The tetris CUDA rules (block-sparse and packed-dense kernels), most specific first."""
    return [BlockSparseMatmul(), BlockSparseConv2d()]


def dense_rules() -> list[ScheduleRule]:
    """dlight's generic GPU rules for the remaining dense ops, in dlight's recommended order.

    ``Matmul`` takes the legalized ``matmul`` / ``linear`` (+ fused epilogue), ``GEMV`` the
    M = 1 ones, ``Reduction`` / ``GeneralReduction`` sums, softmax and layer norm, ``Fallback``
    everything elementwise (and anything left).
    """
    from tvm.s_tir import dlight as dl

    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]
