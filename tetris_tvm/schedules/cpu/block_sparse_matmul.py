"""CPU schedule for the block-sparse (and packed dense) linear kernels of :mod:`..kernels`."""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.target import Target

from ...attr_keys import Attr
from ...kernels.compute import LINEAR_KINDS
from ..analysis import child_blocks, kernel_kind, loop_extent, row_block
from ._common import (
    STACK_BYTES,
    CPUKernelRule,
    linear_tile,
    loops_below,
    parallel_cyclic,
    schedule_pad,
    tile_rows_domain,
    unroll_vectorize_tile,
    vector_lanes,
)
from .prefetch import PREFETCH_ATTR, prefetches_operand


def dense_k_step(k: int) -> int:
    """The dense kernels' reduction is cut into steps of 8 (or 4, or 1) for unrolling."""
    return 8 if k % 8 == 0 else (4 if k % 4 == 0 else 1)


def unrolls_k(k_extent: int | None, tile_rows: int, tile_cols: int, target: Target) -> bool:
    """Rule table: unroll the in-block reduction when the unrolled body is at most 256 FMAs.

    Measured on znver3: a 6x16 tile over a 32-deep block ran 3-8% faster rolled (384 FMAs);
    2x32 (256) and 6x16 over 16-deep blocks (192) ran the same or faster unrolled.
    """
    vecs = -(-tile_cols // vector_lanes(target))
    return k_extent is not None and k_extent * tile_rows * vecs <= 256


def schedule_linear(
    sch: s_tir.Schedule,
    target: Target,
    tile_rows: int | None = None,
    unroll_k: bool | None = None,
    tile_cols: int | None = None,
    cyclic: bool = True,
    prefetch: bool | None = None,
) -> s_tir.schedule.LoopRV | None:
    """Schedule a ``*_linear`` kernel of :mod:`..kernels` in place.

    Parallel over output block-rows, dealt round-robin to the threads (``cyclic``; TETRIS
    clusters the kept blocks, see :func:`._common.parallel_cyclic`).  Inside a block-row, M
    is cut into register tiles of ``tile_rows`` rows by ``tile_cols`` of the block's outputs
    (rule table: :func:`linear_tile`; M = 1 gives a GEMV), the reduction runs over the kept
    blocks and their ``bk`` inputs (unrolled when short), the tile's rows are unrolled and
    its columns (contiguous in the packed weight) are vectorised into a stack-resident
    accumulator.  The reduction is decomposed above the block loop so that empty block-rows
    are zeroed too, and the epilogue (bias, activation, slicing to N) runs per tile.
    A ragged last M tile is split off by loop partitioning instead of predicating the hot loop.
    The kept-block loop is marked to prefetch the next block's operand rows when the rule
    table says so (:func:`.prefetch.prefetches_operand`; the mark is expanded by
    :class:`.prefetch.ExpandOperandPrefetch`).
    ``tile_rows``, ``tile_cols``, ``unroll_k`` (unroll the in-block reduction) and
    ``prefetch`` override the rule table (tuning); returns the M-tile loop (None when every
    block-row is empty).
    """
    func = sch.mod["main"]
    bn = int(func.attrs[Attr.BLOCK][0])
    chunk = func.attrs.get(Attr.ROW_CHUNK)
    rows = tile_rows_domain(func)
    row = row_block(sch, schedule_pad)
    outer = sch.get_loops(row)
    if chunk:  # (row chunk, block-row): one parallel loop, contiguous ranges of chunks
        lnb = sch.fuse(*outer)
        cyclic = False
    else:
        (lnb,) = outer
    inner = child_blocks(sch, row)
    store = inner["store"]
    if "update" not in inner:  # every block-row empty: only the epilogue remains
        sch.vectorize(sch.get_loops(store)[-1])
        sch.parallel(lnb)
        return None
    update = inner["update"]
    default_rows, default_cols = linear_tile(rows, bn, target)
    if tile_rows is None:
        tile_rows = default_rows
    if tile_cols is None:
        tile_cols = default_cols if tile_rows > 1 else bn
    if bn % tile_cols:
        raise ValueError(f"tile_cols={tile_cols} does not divide the block width {bn}")
    loops = sch.get_loops(update)
    sparse = len(loops) == 4
    if sparse:  # m, j (kept blocks of the row), k (inside a block), i (block outputs)
        lm, red_outer, lk, li = loops
    else:  # dense: m, k, i -> the k loop is cut into 8-wide steps that get unrolled
        lm, lk, li = loops
        red_outer, lk = sch.split(lk, [None, dense_k_step(loop_extent(sch, lk) or 1)])
    mo, mi = sch.split(lm, [None, tile_rows])
    if tile_cols < bn:  # column tiles outside the reduction: one register tile each
        lc, li = sch.split(li, [None, tile_cols])
        sch.reorder(mo, lc, red_outer, lk, mi, li)
    else:
        sch.reorder(mo, red_outer, lk, mi, li)
    sch.vectorize(li)
    sch.unroll(mi)
    if unroll_k is None:
        unroll_k = unrolls_k(loop_extent(sch, lk), tile_rows, tile_cols, target)
    if unroll_k:
        sch.unroll(lk)
    init = sch.decompose_reduction(update, red_outer)
    sch.reverse_compute_at(store, mo)
    for blk in (init, store):
        unroll_vectorize_tile(sch, loops_below(sch, blk, mo))
    sch.annotate(mo, "pragma_loop_partition_hint", 1)
    bk = int(func.attrs[Attr.BLOCK][1])
    if prefetch is None:
        prefetch = prefetches_operand(rows, bk, target)
    if sparse and prefetch:
        sch.annotate(red_outer, PREFETCH_ATTR, 1)
    # last: in TVM 0.27 a split after parallel() was seen to modify the Schedule's source
    # IRModule in place (fatal for sch.copy(), which tuning design spaces rely on)
    if cyclic:
        parallel_cyclic(sch, lnb, target)
    else:
        sch.parallel(lnb)
    return mo


def linear_configs(func: tirx.PrimFunc, target: Target) -> list[dict[str, Any]]:
    """Register tiles (rows x columns) x unrolled in-block reduction; the rule table's first.

    Columns: the whole block width, or two vectors of it when that divides the block; a
    one-row tile always spans the whole width.  Sparse kernels also get the rule table's tile
    with the operand prefetch (:mod:`.prefetch`) the other way round.
    """
    rows = tile_rows_domain(func)
    bn = int(func.attrs[Attr.BLOCK][0])
    default = linear_tile(rows, bn, target)
    half = 2 * vector_lanes(target)
    widths = [bn] + ([half] if half < bn and bn % half == 0 else [])
    tiles = [default] + [
        (t, c)
        for c in widths
        for t in (1, 2, 3, 4, 6, 8)
        if (t, c) != default and t <= rows and t * c * 4 < STACK_BYTES and (t > 1 or c == bn)
    ]
    bk = int(func.attrs[Attr.BLOCK][1])
    sparse = kernel_kind(func) != "dense_linear"
    if not sparse:  # block = (bn, K); the reduction steps through K
        bk = dense_k_step(bk)
    configs = [
        {"tile_rows": t, "tile_cols": c, "unroll_k": u}
        for t, c in tiles
        for u in (None, not unrolls_k(bk, t, c, target))
    ]
    if sparse:  # the rule table's tile with the operand prefetch flipped
        flipped = not prefetches_operand(rows, bk, target)
        configs.insert(1, {**configs[0], "prefetch": flipped})
    return configs


class BlockSparseMatmul(CPUKernelRule):
    """dlight rule for the ``bsr_linear`` / ``ell_linear`` kernels (block-sparse ``x @ W.T``)
    and the packed ``dense_linear`` one (the same register-tiled schedule: the fair dense
    baseline). Tuning tries register tiles x unrolled in-block reduction (:func:`linear_configs`)
    with a sampled auto-unroll step."""

    kinds: tuple[str, ...] = LINEAR_KINDS
    scheduler = staticmethod(schedule_linear)
    config_space = staticmethod(linear_configs)
