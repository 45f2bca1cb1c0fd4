"""CPU (llvm) schedule rules in the dlight style.

``tvm.s_tir.dlight.ApplyDefaultSchedule(*default_rules())`` schedules every tetris kernel and
every generic dense matmul of an IRModule (e.g. what Relax's LegalizeOps emits for
``matmul`` / ``linear``, fused with a bias and an elementwise epilogue)::

    from tvm.s_tir import dlight as dl
    from tetris_tvm.schedules.cpu import default_rules
    with target:
        mod = dl.ApplyDefaultSchedule(*default_rules(), dl.cpu.GEMV(), dl.cpu.Reduction())(mod)
    mod = ExpandOperandPrefetch()(mod)  # before building: see .prefetch
"""

from __future__ import annotations

from tvm.s_tir.dlight.base import ScheduleRule

from .block_sparse_matmul import BlockSparseMatmul, schedule_linear
from .conv2d import BlockSparseConv2d, schedule_conv2d
from .grouped_conv import GroupedConv2d
from .matmul import DenseMatmul
from .prefetch import ExpandOperandPrefetch

__all__ = [
    "BlockSparseConv2d",
    "BlockSparseMatmul",
    "DenseMatmul",
    "ExpandOperandPrefetch",
    "GroupedConv2d",
    "default_rules",
    "schedule_conv2d",
    "schedule_linear",
]


def default_rules() -> list[ScheduleRule]:
    """The tetris CPU rules, most specific first."""
    return [BlockSparseMatmul(), BlockSparseConv2d(), DenseMatmul(), GroupedConv2d()]
