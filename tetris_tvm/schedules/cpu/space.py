"""Tuning search spaces for the tetris CPU kernels (what ``tunable=True`` hands MetaSchedule).

Each rule offers its own space (:class:`tetris_tvm.schedules.rule.KernelRule`): one design
space per structural choice of the default schedule (register tile rows, unrolled in-block
reduction for linear; channel x pixel tile for conv), each with one structure-neutral sampled
decision (``pragma_auto_unroll_max_step`` on the tile loop). The XGBoost cost model ranks the
candidates; the rule table's choice is always the first space. This module gathers them.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from ..rule import design_spaces_of
from ._common import UNROLL_STEPS
from .block_sparse_matmul import BlockSparseMatmul, linear_configs
from .conv2d import BlockSparseConv2d, conv_configs

__all__ = ["UNROLL_STEPS", "conv_configs", "design_spaces", "linear_configs"]


def design_spaces(sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule] | None:
    """The design spaces of the CPU rule that takes ``sch``'s kernel, or None if no rule does.

    Usable as a MetaSchedule ``ScheduleFn`` (with no extra rules, postprocs or mutators).
    """
    return design_spaces_of((BlockSparseMatmul(), BlockSparseConv2d()), sch, target)
