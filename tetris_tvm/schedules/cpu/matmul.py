"""CPU schedule for dense matmuls: our packed ``dense_linear`` kernel and generic matmuls."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import IterKind, detect_iter_traits
from tvm.target import Target

from ..analysis import fresh_schedule, kernel_kind, loop_extent
from ._common import is_cpu, register_tile, vector_lanes
from .block_sparse_matmul import schedule_linear


def _iter_types(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> set:
    return {iv.iter_type for iv in sch.get(block).iter_vars}


def schedule_generic_matmul(sch: s_tir.Schedule, target: Target) -> bool:
    """Schedule a generic matmul PrimFunc in place; False (schedule unusable) if it does not fit.

    Fits: one reduction block ``C[S.., I.., J] += A[S.., I.., K] * B[S.., K, J]`` (``B``
    contiguous along ``J``, as Relax's ``linear`` becomes after FoldConstant transposes the
    weight), with elementwise producers (inlined) and an elementwise epilogue chain (inlined
    into its last block, computed per register tile).  ``J`` must be a multiple of 8.
    Schedule: parallel over (S, outer I, J tiles), register tile ``MT x nb`` over the innermost I
    and J, K innermost-but-two, J vectorised, accumulator on the stack.
    """
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    spatial = {tirx.IterVar.DataPar}
    reductions = [b for b in blocks if tirx.IterVar.CommReduce in _iter_types(sch, b)]
    if len(reductions) != 1 or any(
        not _iter_types(sch, b) <= spatial for b in blocks if b not in reductions
    ):
        return False
    mm = reductions[0]
    pos = [sch.get(b).name_hint for b in blocks].index(sch.get(mm).name_hint)
    try:
        for producer in blocks[:pos]:
            sch.compute_inline(producer)
        consumers = blocks[pos + 1 :]
        for consumer in consumers[:-1]:
            sch.compute_inline(consumer)
    except s_tir.ScheduleError:
        return False
    epilogue = consumers[-1] if consumers else None

    stmt = sch.get(mm)
    traits = detect_iter_traits(stmt)
    if traits is None:
        return False
    block_traits = traits[3]
    loops = sch.get_loops(mm)
    if len(loops) != len(stmt.iter_vars):
        return False
    for loop, iv in zip(loops, stmt.iter_vars, strict=True):
        if loop_extent(sch, loop) != _const(iv.dom.extent):
            return False  # expect one loop per block iter var, in order (as LegalizeOps emits)
    kinds = [t.kind for t in block_traits]
    by_kind = {k: [lp for lp, kk in zip(loops, kinds, strict=True) if kk == k] for k in IterKind}
    s_loops = by_kind[IterKind.kIter_S] + by_kind[IterKind.kIter_T]
    i_loops, j_loops, k_loops = (by_kind[IterKind.kIter_I], by_kind[IterKind.kIter_J],
                                 by_kind[IterKind.kIter_K])
    if len(j_loops) != 1 or len(k_loops) != 1 or not i_loops:
        return False
    # B must be contiguous along J: its innermost index is the J iter var
    j_var = stmt.iter_vars[kinds.index(IterKind.kIter_J)].var
    b_last = stmt.reads[1].region[-1].min
    if not (isinstance(b_last, tirx.Var) and b_last.same_as(j_var)):
        return False
    (lj,), (lk,) = j_loops, k_loops
    j_ext = loop_extent(sch, lj)
    i_ext = loop_extent(sch, i_loops[-1])
    if j_ext is None or i_ext is None or j_ext % 8:
        return False
    lanes = vector_lanes(target)
    nb = 2 * lanes if j_ext % (2 * lanes) == 0 else (lanes if j_ext % lanes == 0 else 8)
    mt = register_tile(i_ext, nb, target)
    static = all(loop_extent(sch, lp) is not None for lp in s_loops)
    if not static:  # a symbolic batch: a tile height dividing the rows, nothing to partition
        mt = max(t for t in range(1, mt + 1) if i_ext % t == 0)
    sch.reorder(*s_loops, *i_loops, lj, lk)
    jo, ji = sch.split(lj, [None, nb])
    io, ii = sch.split(i_loops[-1], [None, mt])
    sch.reorder(*s_loops, *i_loops[:-1], jo, io, lk, ii, ji)
    outer = [*s_loops, *i_loops[:-1], jo]
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else jo)
    if epilogue is None:
        epilogue = sch.cache_write(mm, 0, "global")
    sch.reverse_compute_at(epilogue, io)
    sch.vectorize(ji)
    sch.unroll(ii)
    init = sch.decompose_reduction(mm, lk)
    for blk in (init, epilogue):
        blk_loops = sch.get_loops(blk)
        sch.vectorize(blk_loops[-1])
        sch.unroll(blk_loops[-2])
    if static:  # (under a symbolic batch loop, partitioning hit an int32/int64 mismatch)
        sch.annotate(io, "pragma_loop_partition_hint", 1)
    return True


def _const(expr) -> int | None:
    return int(expr) if isinstance(expr, tirx.IntImm) else None


class DenseMatmul(CPUScheduleRule):
    """dlight rule for dense matmuls on CPU.

    - ``dense_linear`` kernels of :mod:`..kernels` get the same register-tiled schedule as the
      block-sparse ones (the fair dense baseline);
    - any other PrimFunc that :func:`schedule_generic_matmul` accepts (e.g. what Relax's
      LegalizeOps + FuseOps + FuseTIR make of ``matmul`` / ``linear`` + bias + activation).
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` if it is a dense matmul on a CPU target, else None."""
        if not is_cpu(target) or not isinstance(func, tirx.PrimFunc):
            return None
        kind = kernel_kind(func)
        if kind == "dense_linear":
            sch = fresh_schedule(func)
            schedule_linear(sch, target)
            return sch
        if kind is not None:
            return None
        sch = fresh_schedule(func)
        try:
            ok = schedule_generic_matmul(sch, target)
        except (s_tir.ScheduleError, ValueError):
            return None
        return sch if ok else None
