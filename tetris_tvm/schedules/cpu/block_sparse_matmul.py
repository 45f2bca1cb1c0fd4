"""CPU schedule for the block-sparse (and packed dense) linear kernels of :mod:`..kernels`."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from ._common import (
    child_blocks,
    fresh_schedule,
    is_cpu,
    kernel_kind,
    loop_extent,
    loops_below,
    register_tile,
    schedule_pad,
    unroll_vectorize_tile,
)


def schedule_linear(
    sch: s_tir.Schedule,
    target: Target,
    tile_rows: int | None = None,
    unroll_k: bool | None = None,
) -> s_tir.schedule.LoopRV | None:
    """Schedule a ``*_linear`` kernel of :mod:`..kernels` in place.

    Parallel over output block-rows; inside a block-row, M is cut into register tiles of
    ``tile_rows`` rows (rule table: :func:`register_tile`; M = 1 gives a GEMV), the reduction
    runs over the kept blocks and their ``bk`` inputs (unrolled when short), the tile's rows are
    unrolled and the block's output axis (contiguous in the packed weight) is vectorised into a
    stack-resident accumulator.  The reduction is decomposed above the block loop so that empty
    block-rows are zeroed too, and the epilogue (bias, activation, slicing to N) runs per tile.
    A ragged last M tile is split off by loop partitioning instead of predicating the hot loop.
    ``tile_rows`` and ``unroll_k`` (unroll the in-block reduction) override the rule table
    (tuning); returns the M-tile loop (None when every block-row is empty).
    """
    func = sch.mod["main"]
    bn = int(func.attrs["tetris.block"][0])
    rows = int(func.attrs["tetris.rows"])
    root = child_blocks(sch, sch.get_sblock("root"))
    for name in ("x_pad", "y_slice"):
        if name in root:
            schedule_pad(sch, root[name])
    row = root["row"]
    (lnb,) = sch.get_loops(row)
    inner = child_blocks(sch, row)
    store = inner["store"]
    if "update" not in inner:  # every block-row empty: only the epilogue remains
        sch.vectorize(sch.get_loops(store)[-1])
        sch.parallel(lnb)
        return None
    update = inner["update"]
    if tile_rows is None:
        tile_rows = register_tile(rows, bn, target)
    loops = sch.get_loops(update)
    if len(loops) == 4:  # m, j (kept blocks of the row), k (inside a block), i (block outputs)
        lm, red_outer, lk, li = loops
    else:  # dense: m, k, i -> the k loop is cut into 8-wide steps that get unrolled
        lm, lk, li = loops
        k_ext = loop_extent(sch, lk) or 1
        step = 8 if k_ext % 8 == 0 else (4 if k_ext % 4 == 0 else 1)
        red_outer, lk = sch.split(lk, [None, step])
    mo, mi = sch.split(lm, [None, tile_rows])
    sch.reorder(mo, red_outer, lk, mi, li)
    sch.vectorize(li)
    sch.unroll(mi)
    if unroll_k is None:
        unroll_k = (loop_extent(sch, lk) or 64) <= 32
    if unroll_k:
        sch.unroll(lk)
    init = sch.decompose_reduction(update, red_outer)
    sch.reverse_compute_at(store, mo)
    for blk in (init, store):
        unroll_vectorize_tile(sch, loops_below(sch, blk, mo))
    sch.annotate(mo, "pragma_loop_partition_hint", 1)
    # last: in TVM 0.27 a split after parallel() was seen to modify the Schedule's source
    # IRModule in place (fatal for sch.copy(), which tuning design spaces rely on)
    sch.parallel(lnb)
    return mo


class BlockSparseMatmul(CPUScheduleRule):
    """dlight rule for the ``bsr_linear`` / ``ell_linear`` kernels (block-sparse ``x @ W.T``)."""

    kinds: tuple[str, ...] = ("bsr_linear", "ell_linear")

    def apply(
        self, func: tirx.PrimFunc, target: Target, tunable: bool
    ) -> s_tir.Schedule | list[s_tir.Schedule] | None:
        """Schedule ``func`` if it is one of :attr:`kinds` on a CPU target, else None.

        ``tunable=True`` returns the tuning design spaces (:mod:`.space`) instead.
        """
        if not is_cpu(target) or kernel_kind(func) not in self.kinds:
            return None
        if tunable:
            from .space import design_spaces

            return design_spaces(s_tir.Schedule(func), target)
        sch = fresh_schedule(func)
        schedule_linear(sch, target)
        return sch
