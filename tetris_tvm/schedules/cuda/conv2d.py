"""CUDA schedule for the block-sparse and dense conv2d kernels of :mod:`..kernels`.

The conv is a GEMM with the weight on the left, ``y[n] (Cout, P) = W (Cout, K) @ col[n] (K, P)``
(see the CPU rule).  On CUDA: one thread block per (image, output block-row, tile of ``PT``
output pixels); the serial loop over the kept blocks is blockized so that, per kept block, the
operand slice it needs (``bk x PT`` of the im2col / direct operand, or the ``bi`` channels x
``PT + halo`` flat pixels of the zero-padded input for stride-1 implicit GEMM) and the weight
block are staged in shared memory by all threads; each thread accumulates ``tc x tp``
outputs in registers; the epilogue (bias, activation) writes ``y``.  The padding / im2col /
slice copies run as their own elementwise kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from ...attr_keys import Attr
from ...kernels.compute import CONV_KINDS
from ..rule import KernelRule
from ._common import (
    SHARED_BYTES,
    bind_elementwise,
    bind_register_tile,
    bind_thread_block,
    child_blocks,
    kernel_kind,
    largest_divisor,
    loop_extent,
    max_threads,
    read_index,
    row_block,
    shared_bytes,
    stage_shared,
    unroll_loops,
)

__all__ = ["BlockSparseConv2d", "ConvTile", "conv_configs", "conv_tile", "schedule_conv2d"]


@dataclass(frozen=True)
class ConvTile:
    """Tile sizes of the CUDA conv schedule: ``tile_p`` output pixels per thread block, each
    thread owning ``tc`` output channels x ``tp`` pixels."""

    tile_p: int
    tp: int
    tc: int


def conv_tile(bn: int, pixels: int) -> ConvTile:
    """Rule table: up to 64 pixels per thread block, 4x4 outputs per thread, one channel per
    thread when the block would otherwise have fewer than 32 threads."""
    tile_p = largest_divisor(pixels, 64)
    tp = largest_divisor(tile_p, 4) if tile_p >= 16 else 1
    tc = largest_divisor(bn, 4)
    if (bn // tc) * (tile_p // tp) < 32:
        tc = 1
    return ConvTile(tile_p, tp, tc)


def schedule_conv2d(sch: s_tir.Schedule, target: Target, tile: ConvTile | None = None) -> None:
    """Schedule a ``*_conv2d`` kernel in place (see the module docstring); ``tile`` overrides
    the rule table (:func:`conv_tile`, tuning)."""
    func = sch.mod["main"]
    bn = int(func.attrs[Attr.BLOCK][0])
    pixels = int(func.attrs[Attr.ROWS])
    implicit = str(func.attrs[Attr.CONV_MODE]) == "implicit"
    dense = kernel_kind(func) == "dense_conv2d"
    row = row_block(sch, bind_elementwise, ("x_pad", "im2col", "y_slice"))
    sch.bind(sch.fuse(*sch.get_loops(row)), "blockIdx.y")  # pixel chunk, image, block-row
    inner = child_blocks(sch, row)
    store = inner["store"]
    if "update" not in inner:
        lc, lp = sch.get_loops(store)
        sch.bind(lc, "blockIdx.x")
        sch.bind(lp, "threadIdx.x")
        return
    update = inner["update"]
    loops = sch.get_loops(update)
    li, lp = loops[:2]
    if dense:  # k (or cin) cut into pseudo-blocks
        first = loops[2]
        step = largest_divisor(loop_extent(sch, first) or 1, 8 if implicit else 32)
        lj, first = sch.split(first, [None, step])
        red = [first, *loops[3:]]
    else:
        lj, red = loops[2], list(loops[3:])
    tile = tile or conv_tile(bn, pixels)
    tile_p, tp, tc = tile.tile_p, tile.tp, tile.tc
    ty_n, tx_n = bn // tc, tile_p // tp
    ty, ci = sch.split(li, [ty_n, tc])
    po, tx, pi = sch.split(lp, [None, tx_n, tp])
    sch.reorder(po, lj, ty, tx, *red, ci, pi)
    init = bind_thread_block(sch, update, store, po, lj, (ty, tx))
    stage_shared(sch, update, read_index(sch, update, None), (ty_n, tx_n))
    # the weight block is staged too when both fit the static shared memory (a 3x3 32x32
    # float32 block alone is 36 KiB); otherwise its reads, the same for every thread of a
    # row, go through the L1 cache
    trial = sch.copy()
    stage_shared(trial, update, read_index(trial, update, "w_data"), (ty_n, tx_n))
    if shared_bytes(trial) <= SHARED_BYTES:
        stage_shared(sch, update, read_index(sch, update, "w_data"), (ty_n, tx_n))
    unroll_loops(sch, [*red[-2:], ci, pi], limit=16)
    unroll_loops(sch, sch.get_loops(init)[-2:])
    bind_register_tile(sch, store, (ty_n, tx_n))


def conv_configs(func: tirx.PrimFunc, target: Target) -> list[ConvTile]:
    """Tile configurations for a conv kernel (pixels per thread block, channels x pixels per
    thread), the rule table's first."""
    bn = int(func.attrs[Attr.BLOCK][0])
    pixels = int(func.attrs[Attr.ROWS])
    limit = max_threads(target)
    configs = [conv_tile(bn, pixels)]
    for tile_p in sorted({largest_divisor(pixels, cap) for cap in (32, 64, 128, 256)}):
        for tp in (1, 2, 4, 8):
            for tc in (1, 2, 4):
                if tile_p % tp or bn % tc:
                    continue
                threads = (bn // tc) * (tile_p // tp)
                tile = ConvTile(tile_p, tp, tc)
                if 32 <= threads <= limit and tile not in configs:
                    configs.append(tile)
    return configs


class BlockSparseConv2d(KernelRule):
    """dlight rule for the ``bsr_conv2d`` / ``ell_conv2d`` / ``dense_conv2d`` kernels on CUDA."""

    kinds: tuple[str, ...] = CONV_KINDS
    target_kind = "cuda"
    config_errors = (s_tir.ScheduleError, RuntimeError)  # TVM's checks raise RuntimeErrors
    scheduler = staticmethod(schedule_conv2d)
    config_space = staticmethod(conv_configs)
