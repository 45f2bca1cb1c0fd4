"""CPU schedule for the block-sparse and dense conv2d kernels of :mod:`..kernels`.

The conv is a GEMM with the weight on the left, ``y[n] (Cout, P) = W (Cout, K) @ col[n] (K, P)``
(``P = OH * OW``, contiguous in NCHW): the register tile is ``CT`` output channels x ``PV``
output pixels, the pixel axis is vectorised and each weight value is broadcast.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.target import Target

from ...attr_keys import Attr
from ...kernels.compute import CONV_KINDS
from ..analysis import child_blocks, kernel_kind
from ._common import (
    STACK_BYTES,
    CPUKernelRule,
    loops_below,
    schedule_pad,
    unroll_vectorize_tile,
    vector_lanes,
    vector_registers,
)


def conv_tile(bn: int, pixels: int, target: Target) -> tuple[int, int]:
    """``(CT, PV)``: channels x pixels of the register tile (rule table).

    ``PV`` is 2 vectors (a 3-vector, 24-lane tile was scalarised by TVM's vectoriser when the
    operand address is indirect), ``CT`` the largest divisor of the block height whose
    ``CT * PV / lanes`` accumulators fit in 3/4 of the registers and whose tile stays below
    the stack-alloca limit (TVM puts a larger one in a heap workspace: on AVX-512 an 8 x 32
    tile ran 1.6-2.9x slower than 4 x 32).
    """
    lanes = vector_lanes(target)
    vecs = max(1, min(2, -(-pixels // lanes)))
    pv = vecs * lanes
    budget = max(1, (vector_registers(target) * 3 // 4) // vecs)
    ct = max(d for d in range(1, bn + 1)
             if bn % d == 0 and (d == 1 or (d <= budget and d * pv * 4 < STACK_BYTES)))
    return ct, pv


def schedule_conv2d(
    sch: s_tir.Schedule, target: Target, tile: tuple[int, int] | None = None
) -> s_tir.schedule.LoopRV | None:
    """Schedule a ``*_conv2d`` kernel in place (see the module docstring).

    Parallel over (pixel chunk, image, output block-row); strided convs first build the
    im2col operand of each image in parallel, stride-1 convs read a zero-padded copy of the
    input in place (implicit GEMM).  Inside a block-row, pixel tiles are outer and channel
    tiles inner so an operand tile stays in L1 across channel tiles; kh x kw taps are
    unrolled.
    ``tile`` overrides the rule table's ``(CT, PV)`` (tuning); returns the pixel-tile loop
    (None when every block-row is empty).
    """
    func = sch.mod["main"]
    bn = int(func.attrs[Attr.BLOCK][0])
    pixels = int(func.attrs[Attr.ROWS])
    root = child_blocks(sch, sch.get_sblock("root"))
    row = root["row"]
    lpc, ln, lnb = sch.get_loops(row)  # pixel chunk (1 unless implicit), image, block-row
    if "im2col" in root:  # per image: build the operand (in parallel), then use it
        sch.compute_at(root["im2col"], ln)
        schedule_pad(sch, root["im2col"], skip=2)
        par = lnb
    else:
        # the padded input (implicit GEMM) is small: one parallel pass over all images.  Not
        # compute_at per image: its region is a flat (h * Wp + w) range, which compute_at
        # mapped back onto (h, w) incorrectly in TVM 0.27 (part of the copy was skipped).
        if "x_pad" in root:
            schedule_pad(sch, root["x_pad"])
        par = sch.fuse(lpc, ln, lnb)
    if "y_slice" in root:
        schedule_pad(sch, root["y_slice"])
    inner = child_blocks(sch, row)
    store = inner["store"]
    if "update" not in inner:
        sch.vectorize(sch.get_loops(store)[-1])
        sch.parallel(par)
        return None
    update = inner["update"]
    ct, pv = tile or conv_tile(bn, pixels, target)
    # co, p, then the reduction: [j (kept blocks)], k  or  [j], ci, kh, kw (implicit GEMM)
    li, lp, *red = sch.get_loops(update)
    red_outer = red[0]
    lio, lii = sch.split(li, [None, ct])
    lpo, lpi = sch.split(lp, [None, pv])
    sch.reorder(lpo, lio, *red, lii, lpi)
    sch.vectorize(lpi)
    sch.unroll(lii)
    if str(func.attrs[Attr.CONV_MODE]) == "implicit":
        for tap in red[-2:]:  # kh x kw taps
            sch.unroll(tap)
    init = sch.decompose_reduction(update, red_outer)
    sch.reverse_compute_at(store, lio)
    for blk in (init, store):
        unroll_vectorize_tile(sch, loops_below(sch, blk, lio))
    if pixels % pv and kernel_kind(func) == "dense_conv2d":
        # peels the ragged pixel tile: a clear win for the dense kernel, but with the indirect
        # (kept-block) loop in between it doubled the time of a 7x7 sparse conv; measured in
        # TVM 0.27 on 2 cores
        sch.annotate(lpo, "pragma_loop_partition_hint", 1)
    # contiguous, not round-robin (parallel_cyclic): with few block-rows the parallel loop
    # runs over pixel chunks too, and dealing them round-robin made every thread read every
    # chunk's input (64->128 at 56x56, 32x32 blocks: 0.71-0.85 of ideal -> 0.42-0.48)
    sch.parallel(par)  # last, as in schedule_linear
    return lpo


def conv_configs(func: tirx.PrimFunc, target: Target) -> list[dict[str, Any]]:
    """Channel x pixel register tiles; the rule-table default first."""
    bn = int(func.attrs[Attr.BLOCK][0])
    pixels = int(func.attrs[Attr.ROWS])
    lanes = vector_lanes(target)
    default = conv_tile(bn, pixels, target)
    tiles = [default]
    for pv in (lanes, 2 * lanes):
        for ct in (1, 2, 4, 6, 8, 12):
            if bn % ct == 0 and (ct, pv) != default and ct * pv * 4 < 4 * STACK_BYTES:
                tiles.append((ct, pv))
    return [{"tile": t} for t in tiles]


class BlockSparseConv2d(CPUKernelRule):
    """dlight rule for the ``bsr_conv2d`` / ``ell_conv2d`` / ``dense_conv2d`` kernels. Tuning
    tries channel x pixel register tiles (:func:`conv_configs`) with a sampled auto-unroll
    step."""

    kinds: tuple[str, ...] = CONV_KINDS
    scheduler = staticmethod(schedule_conv2d)
    config_space = staticmethod(conv_configs)
