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

The compiler should pick these rules when ``target.kind.name == "cuda"`` (and the CPU rules of
:mod:`..cpu` for ``llvm``); :func:`rules_for` does that choice.  Each rule returns None on other
targets and other kernels, so mixing both sets is harmless.
"""

from __future__ import annotations

from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from ._common import cuda_target, is_cuda
from .block_sparse_matmul import BlockSparseMatmul, LinearTile, linear_tile, schedule_linear
from .conv2d import BlockSparseConv2d, schedule_conv2d
from .kernels import HALF_DTYPES, block_sparse_linear_fp16, half_weight_args

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
    "rules_for",
    "schedule_conv2d",
    "schedule_linear",
    "schedule_module",
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


def rules_for(target: Target) -> list[ScheduleRule]:
    """Every rule to try for ``target``: tetris rules first, then the generic dense ones."""
    if is_cuda(target):
        return [*default_rules(), *dense_rules()]
    from tvm.s_tir import dlight as dl

    from ..cpu import default_rules as cpu_rules

    return [*cpu_rules(), dl.cpu.GEMV(), dl.cpu.Reduction()]


def schedule_module(mod, target: Target):
    """Apply :func:`rules_for` ``target`` to every PrimFunc of ``mod`` (returns a new module)."""
    from tvm.s_tir import dlight as dl

    from ..cpu import ExpandOperandPrefetch

    with target:
        mod = dl.ApplyDefaultSchedule(*rules_for(target))(mod)
    return ExpandOperandPrefetch()(mod)  # CPU rules mark loops for it; a no-op on CUDA
