"""CUDA schedule for the linear kernels: block-sparse (BSR / blocked-ELL) and packed dense.

Kernel structure (see :mod:`tetris_tvm.kernels.compute`): an outer block ``row`` per output
block-row holding a reduction block ``update`` (``acc[m, i] += x[m, col(j, k)] * w[j, k, i]``
over the kept blocks ``j`` and their ``bk`` inputs ``k``) and an epilogue block ``store``.

Schedule (one kernel launch):

- ``blockIdx.y`` = output block-row, ``blockIdx.x`` = tile of ``TM`` rows of ``x``;
- the loop over the kept blocks of the row stays serial inside the thread block; its body is
  *blockized*, so the shared-memory buffers are allocated per kept block and their indices
  are local to it: the ``TM x bk`` slice of ``x`` that the block needs (the block-column is
  read from ``indices``, data-dependent) and the ``bk x bn`` weight block are staged in shared
  memory cooperatively by all threads, then every thread accumulates its ``tm x tn`` register
  tile (CUDA cores) or every warp its 16x16 fragments (tensor cores, float16, see
  :mod:`.tensor_core`);
- the accumulator is zeroed before the loop over kept blocks, so an empty block-row yields the
  bias (or 0); the epilogue (bias, activation, cast) runs on the register tile and writes ``y``.

Because the shared buffers live inside the blockized per-block body, no shared-memory index
depends on ``indices``: the data-dependent column only appears in the global load of the
staging copy (no ``T.min``/``T.max`` clamping is needed).  ``TM`` divides ``M`` exactly (the
largest divisor <= 64), so no predicate on rows enters the blockized body; a prime ``M`` falls
back to 1-row tiles (correct, slow).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from ...attr_keys import Attr
from ...kernels.compute import LINEAR_KINDS
from ..rule import KernelRule
from ._common import (
    SHARED_BYTES,
    bind_elementwise,
    bind_register_tile,
    bind_thread_block,
    child_blocks,
    dtype_bytes,
    kernel_dtype,
    largest_divisor,
    loop_extent,
    max_threads,
    read_index,
    row_block,
    stage_shared,
    unroll_loops,
)

__all__ = [
    "BlockSparseMatmul", "LinearTile", "linear_configs", "linear_tile", "schedule_linear",
]


@dataclass(frozen=True)
class LinearTile:
    """Tile sizes of the CUDA linear schedule.

    ``tile_m`` rows of ``x`` per thread block; each thread owns ``thread_m x thread_n``
    outputs (CUDA cores); ``k_step`` inputs of a block per unrolled step; ``tensor_core``
    selects the WMMA path (``warp_m x warp_n`` 16x16 fragments per warp).
    """

    tile_m: int
    thread_m: int
    thread_n: int
    k_step: int
    tensor_core: bool = False
    warp_m: int = 1
    warp_n: int = 1


def linear_tile(rows: int, bn: int, bk: int, dtype: str, target: Target) -> LinearTile:
    """Rule table for :class:`LinearTile`.

    - tensor cores (float16, ``bn``, ``bk`` multiples of 16, ``M`` a multiple of 16): ``TM`` =
      largest multiple-of-16 divisor of ``M`` up to 64 (128 when ``bn`` = 16); warps of 2x2
      fragments (fewer when the tile is smaller); a 16-row tile uses CUDA cores;
    - CUDA cores: ``TM`` = largest divisor of ``M`` <= 64; 4x4 outputs per thread, fewer rows for
      small ``M`` (GEMV-like) and 1 column when the block would have < 32 threads.
    """
    k_step = largest_divisor(bk, 8)
    cap = 128 if bn == 16 else 64
    tile_m = 16 * largest_divisor(rows // 16, cap // 16) if rows % 16 == 0 else 0
    # a single 16-row tile hit a TVM 0.27 storage-reuse bug (the float32 accumulator staging
    # buffer aliased a float16 one: "tvm_access_ptr element type must match"): CUDA cores there
    if dtype == "float16" and bn % 16 == 0 and bk % 16 == 0 and tile_m >= 32:
        warp_m = 2 if (tile_m // 16) % 2 == 0 else 1
        warp_n = 2 if (bn // 16) % 2 == 0 else 1
        return LinearTile(tile_m, 1, 1, 16, True, warp_m, warp_n)
    tile_m = largest_divisor(rows, 64)
    thread_m = largest_divisor(tile_m, 4) if tile_m >= 16 else 1
    thread_n = largest_divisor(bn, 4)
    if (tile_m // thread_m) * (bn // thread_n) < 32:
        thread_n = 1
    while (tile_m // thread_m) * (bn // thread_n) > max_threads(target):
        thread_m *= 2
    return LinearTile(tile_m, thread_m, thread_n, k_step)


def schedule_linear(sch: s_tir.Schedule, target: Target, tile: LinearTile | None = None) -> None:
    """Schedule a ``*_linear`` kernel of :mod:`..kernels` (or :mod:`.kernels`) in place."""
    func = sch.mod["main"]
    if func.attrs.get(Attr.ROW_CHUNK):
        raise ValueError("row-chunked linear kernels are a CPU layout; build with row_chunk=None")
    bn, bk = (int(v) for v in func.attrs[Attr.BLOCK])
    rows = int(func.attrs[Attr.ROWS])
    dtype = kernel_dtype(func)
    row = row_block(sch, bind_elementwise)
    (lnb,) = sch.get_loops(row)
    inner = child_blocks(sch, row)
    store = inner["store"]
    if "update" not in inner:  # every block-row empty: only the epilogue remains
        sch.bind(lnb, "blockIdx.y")
        lm, li = sch.get_loops(store)
        sch.bind(lm, "blockIdx.x")
        sch.bind(li, "threadIdx.x")
        return
    update = inner["update"]
    if tile is None:
        tile = linear_tile(rows, bn, bk, dtype, target)
    loops = sch.get_loops(update)
    if len(loops) == 4:  # m, j (kept blocks), k (inside a block), i (block outputs)
        lm, lj, lk, li = loops
    else:  # dense: m, k, i -> k cut into pseudo-blocks of bk inputs
        lm, lk, li = loops
        bk = largest_divisor(loop_extent(sch, lk) or 1, 32)
        lj, lk = sch.split(lk, [None, bk])
        sch.reorder(lm, lj, lk, li)
    if tile.tensor_core:
        from .tensor_core import schedule_linear_wmma

        schedule_linear_wmma(sch, row, lnb, update, store, (lm, lj, lk, li), bn, tile)
        return
    ty_n, tx_n = tile.tile_m // tile.thread_m, bn // tile.thread_n
    mo, ty, mi = sch.split(lm, [None, ty_n, tile.thread_m])
    tx, ni = sch.split(li, [tx_n, tile.thread_n])
    ko, ki = sch.split(lk, [None, tile.k_step])
    sch.reorder(mo, lj, ty, tx, ko, ki, mi, ni)
    sch.bind(lnb, "blockIdx.y")
    init = bind_thread_block(sch, update, store, mo, lj, (ty, tx))
    vec = 4 if dtype == "float32" else 8
    x_index = read_index(sch, update, None)
    w_index = read_index(sch, update, "w_data")
    stage_shared(sch, update, x_index, (ty_n, tx_n), transpose_rows=tile.tile_m)
    stage_shared(sch, update, w_index, (ty_n, tx_n), vec)
    unroll_loops(sch, [ki, mi, ni])
    # init and epilogue: the thread's register tile
    unroll_loops(sch, sch.get_loops(init)[-2:])
    bind_register_tile(sch, store, (ty_n, tx_n))


def linear_configs(func: tirx.PrimFunc, target: Target) -> list[LinearTile]:
    """Tile configurations for a linear kernel, the rule table's first.

    CUDA cores: thread-block rows (divisors of M up to 128), outputs per thread (1-8 rows x 1-4
    columns) and the unrolled reduction step; WMMA (float16 kernels): thread-block rows (a
    multiple of 16 dividing M) x 16x16 fragments per warp.
    """
    rows = int(func.attrs[Attr.ROWS])
    bn, bk = (int(v) for v in func.attrs[Attr.BLOCK])
    dtype = kernel_dtype(func)
    limit = max_threads(target)
    nbytes = dtype_bytes(dtype)
    configs = [linear_tile(rows, bn, bk, dtype, target)]

    def add(tile: LinearTile) -> None:
        staged = (tile.tile_m * (bk + 1) + bk * bn) * nbytes
        if tile not in configs and staged <= SHARED_BYTES:
            configs.append(tile)

    if configs[0].tensor_core:
        for tile_m in (32, 64, 128):
            for wm in (1, 2, 4):
                for wn in (1, 2, 4):
                    if rows % tile_m or tile_m % (16 * wm) or bn % (16 * wn):
                        continue
                    if (tile_m // (16 * wm)) * (bn // (16 * wn)) * 32 <= limit:
                        add(LinearTile(tile_m, 1, 1, 16, True, wm, wn))
    steps = sorted({largest_divisor(bk, 4), largest_divisor(bk, 8), largest_divisor(bk, 16)})
    for tile_m in sorted({largest_divisor(rows, cap) for cap in (16, 32, 64, 128)}):
        for thread_m in (1, 2, 4, 8):
            for thread_n in (1, 2, 4):
                if tile_m % thread_m or bn % thread_n:
                    continue
                threads = (tile_m // thread_m) * (bn // thread_n)
                if not 32 <= threads <= limit and not (threads < 32 and tile_m == rows == 1):
                    continue
                for k_step in steps:
                    add(LinearTile(tile_m, thread_m, thread_n, k_step))
    return configs


class BlockSparseMatmul(KernelRule):
    """dlight rule for the ``bsr_linear`` / ``ell_linear`` / ``dense_linear`` kernels on CUDA.

    Accepts the float32 kernels of :mod:`tetris_tvm.kernels.compute` and the float16 /
    bfloat16 ones of :func:`tetris_tvm.schedules.cuda.block_sparse_linear_fp16`.
    """

    kinds: tuple[str, ...] = LINEAR_KINDS
    target_kind = "cuda"
    config_errors = (s_tir.ScheduleError, RuntimeError)  # TVM's checks raise RuntimeErrors
    scheduler = staticmethod(schedule_linear)
    config_space = staticmethod(linear_configs)
