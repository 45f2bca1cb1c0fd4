"""Tuning search spaces for the tetris CUDA kernels (what ``tunable=True`` hands MetaSchedule).

As on CPU (:mod:`..cpu.space`), MetaSchedule's generic rules cannot schedule loops bounded by
``indptr``, so each rule offers a list of design spaces: one per tile configuration of our own
schedule, the rule table's choice first. A configuration fixes every structural decision
(thread-block rows or pixels, outputs per thread, reduction step, WMMA fragments per warp), so
each design space is one candidate; MetaSchedule's XGBoost cost model ranks them and the
measured best is kept only when it beats the default (:mod:`tetris_tvm.tuning`).

Configurations are filtered so that they can run: 32 to ``max_threads_per_block`` threads
(warps for WMMA), and the two shared-memory staging buffers within the 48 KB a thread block
may use without opting in (:data:`SHARED_BYTES`).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from ..rule import design_spaces_of
from ._common import SHARED_BYTES
from .block_sparse_matmul import BlockSparseMatmul, linear_configs
from .conv2d import BlockSparseConv2d, conv_configs

__all__ = ["SHARED_BYTES", "conv_configs", "design_spaces", "linear_configs"]


def design_spaces(sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule] | None:
    """The design spaces of the CUDA rule that takes ``sch``'s kernel, or None if no rule does.

    Usable as a MetaSchedule ``ScheduleFn`` (no extra rules, postprocs or mutators).
    """
    return design_spaces_of((BlockSparseMatmul(), BlockSparseConv2d()), sch, target)
