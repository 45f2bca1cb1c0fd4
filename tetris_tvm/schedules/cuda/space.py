"""Tuning search spaces for the tetris CUDA kernels (what ``tunable=True`` hands MetaSchedule).

As on CPU (:mod:`..cpu.space`), MetaSchedule's generic rules cannot schedule loops bounded by
``indptr``, so the space is a list of design spaces: one per tile configuration of our own
schedule, the rule table's choice first. A configuration fixes every structural decision
(thread-block rows or pixels, outputs per thread, reduction step, WMMA fragments per warp), so
each design space is one candidate; MetaSchedule's XGBoost cost model ranks them and the
measured best is kept only when it beats the default (:mod:`tetris_tvm.tuning`).

Configurations are filtered so that they can run: 32 to ``max_threads_per_block`` threads
(warps for WMMA), and the two shared-memory staging buffers within the 48 KB a thread block
may use without opting in.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ..design_space import scheduled_copies
from ._common import kernel_dtype, largest_divisor, max_threads
from .block_sparse_matmul import LinearTile, linear_tile, schedule_linear
from .conv2d import ConvTile, conv_tile, schedule_conv2d

__all__ = ["SHARED_BYTES", "conv_configs", "design_spaces", "linear_configs"]

SHARED_BYTES = 48 * 1024
"""Static shared memory a thread block may use without opting in."""


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def linear_configs(func: tirx.PrimFunc, target: Target) -> list[LinearTile]:
    """Tile configurations for a linear kernel, the rule table's first.

    CUDA cores: thread-block rows (divisors of M up to 128), outputs per thread (1-8 rows x 1-4
    columns) and the unrolled reduction step; WMMA (float16 kernels): thread-block rows (a
    multiple of 16 dividing M) x 16x16 fragments per warp.
    """
    rows = int(func.attrs["tetris.rows"])
    bn, bk = (int(v) for v in func.attrs["tetris.block"])
    dtype = kernel_dtype(func)
    limit = max_threads(target)
    nbytes = _bytes(dtype)
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


def conv_configs(func: tirx.PrimFunc, target: Target) -> list[ConvTile]:
    """Tile configurations for a conv kernel (pixels per thread block, channels x pixels per
    thread), the rule table's first."""
    bn = int(func.attrs["tetris.block"][0])
    pixels = int(func.attrs["tetris.rows"])
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


def design_spaces(sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule] | None:
    """One scheduled copy of ``sch`` per configuration that schedules, or None if ``sch`` is
    no tetris kernel. Usable as a MetaSchedule ``ScheduleFn`` (no extra rules, postprocs or
    mutators)."""
    copies = scheduled_copies(
        sch,
        (lambda f: linear_configs(f, target), lambda s, c: schedule_linear(s, target, c)),
        (lambda f: conv_configs(f, target), lambda s, c: schedule_conv2d(s, target, c)),
        errors=(s_tir.ScheduleError, RuntimeError),  # TVM's checks raise RuntimeErrors
    )
    return None if copies is None else [space for space, _ in copies]
