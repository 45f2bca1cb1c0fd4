"""Tensor-core (WMMA) path of the CUDA linear schedule (float16 operands, float32 accumulator).

Same outer structure as the CUDA-core path of :mod:`.block_sparse_matmul` (thread block per
(block-row, ``TM`` rows), serial loop over the kept blocks, blockized body owning the shared
buffers), but each warp owns ``warp_m x warp_n`` 16x16 accumulator fragments
(``wmma.accumulator``) and every kept ``bk x bn`` block is consumed as ``bk / 16`` steps of
``wmma::load_matrix_sync`` (x slice and weight block from padded shared memory) and
``wmma::mma_sync`` (the intrinsics of :mod:`.wmma_intrin`).  The fragments are
stored to shared memory once per thread block, and the epilogue (bias, activation, cast) reads
them from there with all threads.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import SBlock

from . import wmma_intrin as W
from ._common import bind_threads, read_index

__all__ = ["schedule_linear_wmma"]

_LOAD_A, _LOAD_B, _SYNC, _FILL, _STORE = W.LOAD_A, W.LOAD_B, W.SYNC, W.FILL, W.STORE


def _fetch(sch: s_tir.Schedule, cache, warps: int, vec: int = 8) -> None:
    bind_threads(sch, sch.get_loops(cache)[-2:], (warps, 32), vec)


def _split_16(sch: s_tir.Schedule, block) -> tuple:
    """Split the last two loops of ``block`` into (outer, outer, 16, 16); returns the 16 loop."""
    i, j = sch.get_loops(block)[-2:]
    i0, i1 = sch.split(i, [None, 16])
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, i1, j1)
    return i0, j0, i1


def schedule_linear_wmma(sch: s_tir.Schedule, row, lnb, update, store, loops, bn: int, tile):
    """Schedule the ``row`` block of a float16 linear kernel with WMMA tensor cores in place.

    ``loops`` = ``(m, j, k, i)`` loops of ``update``; ``tile`` a
    :class:`~.block_sparse_matmul.LinearTile` with ``tensor_core=True``.
    """
    W.register_wmma_intrinsics()
    lm, lj, lk, li = loops
    wm, wn = tile.warp_m, tile.warp_n
    warps_m = tile.tile_m // (16 * wm)
    warps_n = bn // (16 * wn)
    warps = warps_m * warps_n
    mo, wy, mf, m16 = sch.split(lm, [None, warps_m, wm, 16])
    wx, nf, n16 = sch.split(li, [warps_n, wn, 16])
    kf, k16 = sch.split(lk, [None, 16])
    sch.reorder(mo, lj, wy, wx, kf, mf, nf, m16, n16, k16)
    sch.bind(lnb, "blockIdx.y")
    sch.bind(mo, "blockIdx.x")
    warp = sch.fuse(wy, wx)
    sch.bind(warp, "threadIdx.y")
    sch.set_scope(update, 0, "wmma.accumulator")
    # the accumulator fragments go through shared memory to the epilogue
    acc_shared = sch.cache_read(store, read_index(sch, store, None), "shared")
    init = sch.decompose_reduction(update, lj)
    sch.reverse_compute_at(acc_shared, mo, preserve_unit_loops=True)
    sch.reverse_compute_at(store, mo, preserve_unit_loops=True)
    body = sch.blockize(warp)  # one kept block: owns the staged operands
    del body
    x_shared = sch.cache_read(update, read_index(sch, update, None), "shared")
    w_shared = sch.cache_read(update, read_index(sch, update, "w_data"), "shared")
    ndim = len(sch.get(w_shared).writes[0].region)
    if ndim > 2:  # (1, [1,] bk, bn) -> (bk, bn)
        sch.transform_layout(
            w_shared, ("write", 0), lambda *idx: (idx[-2] + sum(idx[:-2]), idx[-1])
        )
    for cache in (x_shared, w_shared):
        sch.storage_align(cache, 0, axis=-2, factor=16, offset=8)
        _fetch(sch, cache, warps)
    # 16x16x16 tensor-core step
    mma = sch.blockize(m16)
    a_frag = sch.cache_read(mma, _operand(sch, mma, "x"), "wmma.matrix_a")
    b_frag = sch.cache_read(mma, _operand(sch, mma, "w"), "wmma.matrix_b")
    sch.compute_at(a_frag, kf)
    sch.compute_at(b_frag, kf)
    for frag, intrin in ((a_frag, _LOAD_A), (b_frag, _LOAD_B)):
        i0, j0, i1 = _split_16(sch, frag)
        sch.unroll(i0)
        sch.unroll(j0)
        sch.tensorize(i1, intrin)
    refresh_reads(sch, update)
    sch.reorder_block_iter_var(update, [0, 2, 1])  # (m, k, n) -> (m, n, k) as the intrinsic
    sch.tensorize(m16_of(sch, update), _SYNC)
    init_loops = sch.get_loops(init)
    # init: warp, mf, nf, m, n -> fragments of 16x16
    i_m, i_n = init_loops[-2:]
    m0, m1 = sch.split(i_m, [None, 16])
    n0, n1 = sch.split(i_n, [None, 16])
    sch.reorder(m0, n0, m1, n1)
    sch.tensorize(m1, _FILL)
    # fragments -> shared (per warp), then the epilogue with all threads
    am, an = sch.get_loops(acc_shared)[-2:]
    a_wy, a_mf, a_m16 = sch.split(am, [warps_m, wm, 16])
    a_wx, a_nf, a_n16 = sch.split(an, [warps_n, wn, 16])
    sch.reorder(a_wy, a_wx, a_mf, a_nf, a_m16, a_n16)
    sch.bind(sch.fuse(a_wy, a_wx), "threadIdx.y")
    sch.tensorize(a_m16, _STORE)
    bind_threads(sch, sch.get_loops(store)[-2:], (warps, 32))


def refresh_reads(sch: s_tir.Schedule, block) -> None:
    """Drop the stale index-array reads of ``block``.

    After the operands were moved to shared memory / fragments, the update block still lists
    the ``w_indptr`` / ``w_indices`` reads of the original column expression (cache_read only
    renames the cached buffer), which makes its signature differ from the tensor intrinsic's.
    """
    stmt = sch.get(block)
    reads = [r for r in stmt.reads if r.source.name not in ("w_indptr", "w_indices")]
    new = SBlock(
        stmt.iter_vars, reads, stmt.writes, stmt.name_hint, stmt.body, stmt.init,
        stmt.alloc_buffers, stmt.match_buffers, stmt.annotations,
    )
    sch.state.replace(sch.get_sref(block), new, {stmt: new})


def _operand(sch: s_tir.Schedule, block, which: str) -> int:
    """Read index of the x (``which="x"``) or weight (``"w"``) shared operand of ``block``."""
    for i, region in enumerate(sch.get(block).reads):
        name = region.source.name
        if "shared" in name and (name.startswith("w_") == (which == "w")):
            return i
    raise ValueError(f"no shared {which} operand in {sch.get(block).name_hint}")


def m16_of(sch: s_tir.Schedule, update) -> s_tir.schedule.LoopRV:
    """The outermost of the three 16-wide loops of the (inner) update block."""
    return sch.get_loops(update)[-3]
