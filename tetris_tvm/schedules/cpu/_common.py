"""Helpers shared by the CPU schedule rules: target facts, the tile table, safe schedule setup."""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from ...attr_keys import Attr
from ..analysis import loop_extent
from ..rule import KernelRule

# below this many bytes an allocation inside a parallel loop is a stack alloca (TVM's
# kMaxStackAlloca is 1024); "local" scope always goes through TVMBackendAllocWorkspace on CPU,
# which LLVM cannot keep in registers, so accumulators use "global" scope small enough for this.
STACK_BYTES = 1024

UNROLL_STEPS = (0, 16, 64)
"""Values tuning samples for ``pragma_auto_unroll_max_step`` on a register-tile loop."""


def schedule_for(rule: CPUScheduleRule, func: Any, target: Target) -> s_tir.Schedule | None:
    """A schedule of ``func`` when ``rule`` may take it (a PrimFunc, a CPU target), else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    return s_tir.Schedule(func)


class NormalizedRule(CPUScheduleRule):
    """A dlight CPU rule that schedules the normalised blocks of a PrimFunc: subclasses give
    :meth:`schedule`, which sees only PrimFuncs for a CPU target that dlight could normalise."""

    def apply(  # noqa: D102 - ScheduleRule API
        self, func: tirx.PrimFunc, target: Target, _: bool
    ) -> s_tir.Schedule | None:
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        sch = schedule_for(self, func, target)
        infos = None if sch is None else normalize_prim_func(sch)
        return None if infos is None else self.schedule(sch, infos, target)

    def schedule(self, sch: s_tir.Schedule, infos: list, target: Target) -> s_tir.Schedule | None:
        """``sch`` scheduled (its blocks described by dlight's ``infos``), or None to pass."""
        raise NotImplementedError


def tile_rows_domain(func: tirx.PrimFunc) -> int:
    """Rows one ``row`` block of a linear kernel computes: its row chunk, else all rows."""
    chunk = func.attrs.get(Attr.ROW_CHUNK)
    return int(chunk) if chunk else int(func.attrs[Attr.ROWS])


def is_cpu(target: Target) -> bool:
    """True for llvm targets (the CPU rules' domain)."""
    return target.kind.name == "llvm"


def vector_lanes(target: Target) -> int:
    """float32 lanes of the widest SIMD register the target is known to have."""
    try:
        from tvm.target import codegen

        if codegen.target_has_features("avx512f", target):
            return 16
        if codegen.target_has_features("avx", target):
            return 8
    except Exception:  # noqa: BLE001 - feature query unsupported for this target
        pass
    return 4


def num_threads(target: Target) -> int:
    """Threads a kernel for ``target`` runs on: its ``num-cores``, else this machine's cores."""
    import os

    cores = target.attrs.get("num-cores") if target.attrs is not None else None
    return int(cores) if cores else len(os.sched_getaffinity(0))


def parallel_cyclic(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, target: Target) -> None:
    """Run ``loop`` in parallel with its iterations dealt round-robin to the threads.

    TVM's parallel loop gives each thread one contiguous range of iterations.  TETRIS orders
    the channels so that kept blocks cluster, so contiguous block-rows carry very unequal
    work: on MiniLM's plans at 75% sparsity the busier of 2 threads had on average 1.49x its
    even share of kept blocks (up to 1.99x); dealt round-robin, 1.07x (up to 1.26x).
    """
    threads = num_threads(target)
    extent = loop_extent(sch, loop)
    if threads < 2 or extent is None or extent <= threads:
        sch.parallel(loop)
        return
    outer, lane = sch.split(loop, [None, threads])
    sch.reorder(lane, outer)
    sch.parallel(lane)


def vector_registers(target: Target) -> int:
    """Architectural SIMD registers (16 on AVX2, 32 on AVX-512 / NEON)."""
    return 32 if vector_lanes(target) in (16, 4) else 16




def register_tile(rows: int, cols: int, target: Target, max_rows: int = 8) -> int:
    """Rows of a register tile whose other side is ``cols`` floats (vectorised).

    Rule table: the ``tile_rows * ceil(cols / lanes)`` accumulators plus the ``ceil(cols /
    lanes)`` loaded weight vectors and one broadcast fit in the vector registers (AVX2, 16:
    bn=8 -> 8 rows, bn=16 -> 6, bn=32 -> 2; measured: 3 rows at bn=32 spill and run 1.5x
    slower), the tile stays below the stack-alloca limit, and never exceeds the problem's rows
    (M = 1 is a GEMV).
    """
    lanes = vector_lanes(target)
    vecs = max(1, -(-cols // lanes))
    budget = vector_registers(target) - vecs - 1
    tile = max(1, min(max_rows, budget // vecs, rows))
    while tile > 1 and tile * cols * 4 >= STACK_BYTES:
        tile -= 1
    return tile


def linear_tile(rows: int, bn: int, target: Target) -> tuple[int, int]:
    """``(tile_rows, tile_cols)`` of a linear kernel's register tile for ``bn``-wide blocks.

    A block four vectors wide (bn=32 on AVX2) is cut into two 2-vector column halves, each
    run over the block-row's kept blocks in turn: 6 rows x 16 columns keep 12 accumulators
    busy where the whole width fits only 2 rows (8).  Measured on znver3 at M = 16 and 128:
    +5-15%.  One row (a GEMV) keeps the whole width (1x16 was slower), and so do blocks of 8+
    vectors (bn=64 on AVX2 ran 45 vs 79 GFLOP/s cut into halves).
    """
    lanes = vector_lanes(target)
    cols = 2 * lanes if rows > 1 and bn == 4 * lanes else bn
    return register_tile(rows, cols, target), cols






def schedule_pad(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, skip: int = 0) -> None:
    """A copy (padding / im2col / slice): parallel outer loops, vectorised inner loop.

    ``skip`` outer loops (e.g. the image loop the copy was computed at) are left alone.
    """
    loops = sch.get_loops(block)[skip:]
    if not loops:
        return
    inner = loops[-1]
    extent = loop_extent(sch, inner) or 0
    if len(loops) == 1:  # (unit loops dropped, e.g. a 1x1 output): split the one loop
        if extent % 8 == 0 and extent > 8:
            outer, vec = sch.split(inner, [None, 8])
            sch.vectorize(vec)
            sch.parallel(outer)
        else:
            sch.parallel(inner)
        return
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    if extent % 8 == 0:
        sch.vectorize(sch.split(inner, [None, 8])[1])
    sch.parallel(outer)  # after the split: see schedule_linear


def loops_below(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, loop: s_tir.schedule.LoopRV
) -> list[s_tir.schedule.LoopRV]:
    """The loops of ``block`` nested inside ``loop`` (after a compute-at under ``loop``).

    Unit loops are dropped by ``reverse_compute_at``, so "the last two loops" of a block can
    be ``loop`` itself: unrolling that (a 1-row tile of 1024 rows) took LLVM 40 s.
    """
    loops = sch.get_loops(block)
    target = sch.get(loop)
    for i, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return loops[i + 1 :]
    raise ValueError("block is not nested in the loop")


def unroll_vectorize_tile(sch: s_tir.Schedule, loops: list[s_tir.schedule.LoopRV]) -> None:
    """Register tile epilogue/prologue loops: unroll the rows, vectorise the last loop."""
    if not loops:
        return
    sch.vectorize(loops[-1])
    for lp in loops[:-1]:
        sch.unroll(lp)


def touches_bool(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether a block reads or writes a bool buffer.

    TVM 0.27's LLVM codegen turned a vectorised bool -> int8 cast into -1 for True (a
    sign-extended vector mask; MiniLM's attention-mask check came out as -1 instead of 1,
    found by the tuner's numerical check), so such blocks stay scalar.
    """
    stmt = sch.get(block)
    return any(str(r.source.dtype) == "bool" for r in [*stmt.reads, *stmt.writes])


def sample_unroll(space: s_tir.Schedule, tile_loop: s_tir.schedule.LoopRV | None) -> None:
    """Tuning's one structure-neutral decision: the auto-unroll step of the tile loop."""
    if tile_loop is None or (loop_extent(space, tile_loop) or 2) <= 1:
        return
    n = len(UNROLL_STEPS)
    step = space.sample_categorical(list(UNROLL_STEPS), [1.0 / n] * n)
    space.annotate(tile_loop, "pragma_auto_unroll_max_step", step)


class CPUKernelRule(KernelRule):
    """A CPU tetris kernel rule: configurations are keyword arguments of the scheduler, and
    each design space samples the auto-unroll step of the tile loop the scheduler returns."""

    target_kind = "llvm"

    def schedule(self, sch: s_tir.Schedule, target: Target, config: Any = None) -> Any:
        return type(self).scheduler(sch, target, **(config or {}))

    def finish_space(self, space: s_tir.Schedule, target: Target, scheduled: Any) -> None:
        sample_unroll(space, scheduled)
