"""CPU rule for grouped and depthwise conv2d (NCHW) as Relax legalizes them, with their epilogue.

MobileNet-style networks spend a large share of their time in 3x3 depthwise convs, which stay
dense (``groups > 1`` is not pruned) and reach us as TOPI's ``group_conv2d_nchw`` block, with
the zero-padding block before it and the folded batch norm's bias add and ReLU6 after it. The
generic fallback treats the conv as a pooling window: the accumulator lives in memory, the
padded input and the epilogue are separate passes over whole tensors.

This rule runs one parallel work item per (image, output channel): the padded plane is built
there, each output row is computed in vector registers -- the output-width axis in SIMD lanes,
the kernel taps unrolled -- and the epilogue is applied to the row while it is in cache.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym import detect_linear_equation
from tvm.target import Target

from ..analysis import child_blocks, loop_extent
from ._common import schedule_for, vector_lanes

__all__ = ["GroupedConv2d", "row_vector"]

_CONV_BLOCKS = ("group_conv2d_nchw", "depthwise_conv2d_nchw")


def row_vector(width: int, lanes: int) -> int:
    """The SIMD width for an output row of ``width`` pixels: the whole row when it fits in two
    vectors (a 7- or 14-wide vector is legal, and needs no predicated tail), else the largest
    divisor of the row that does."""
    if width <= 2 * lanes:
        return width
    return max(d for d in range(1, 2 * lanes + 1) if width % d == 0)


def _kinds(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> str:
    """``"S"`` / ``"R"`` (other: ``"O"``) per block iterator."""
    codes = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(codes.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def _column_stride(sch: s_tir.Schedule, conv: s_tir.schedule.SBlockRV,
                   pad: s_tir.schedule.SBlockRV) -> int | None:
    """How many padded columns one output column steps (the conv's width stride)."""
    block = sch.get(conv)
    padded = sch.get(pad).writes[0].source
    col = block.iter_vars[3].var  # n, c, h, w, then the reductions
    for region in block.reads:
        if region.source.same_as(padded):
            coef = detect_linear_equation(region.region[-1].min, [col])
            return int(coef[0]) if len(coef) == 2 and isinstance(coef[0], tirx.IntImm) else None
    return None


def _deinterleave(sch: s_tir.Schedule, pad: s_tir.schedule.SBlockRV) -> None:
    """Store the padded plane as its even columns, then its odd ones: a stride-2 conv then
    reads each tap's row contiguously (``2 * ow + s`` is column ``ow + s // 2`` of half
    ``s % 2``) instead of gathering every other lane. Needs an even padded width."""
    width = int(sch.get(pad).writes[0].source.shape[-1])
    if width % 2:
        return
    sch.transform_layout(pad, ("write", 0), lambda n, c, h, w: (n, c, h, w % 2, w // 2))
    sch.transform_block_layout(pad, lambda n, c, h, w: (n, c, h, w % 2, w // 2))


def _vectorize_row(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int) -> None:
    """Vectorise a row loop in :func:`row_vector` pieces (left scalar if it has no constant
    extent)."""
    width = loop_extent(sch, loop)
    if width is None:
        return
    vec = row_vector(width, lanes)
    if vec < width:
        loop = sch.split(loop, [None, vec])[1]
    sch.vectorize(loop)


class GroupedConv2d(CPUScheduleRule):
    """Schedule a legalized grouped / depthwise NCHW conv2d and its elementwise epilogue.

    ``deinterleave=False`` keeps a stride-2 conv's padded plane in its natural layout (the
    taps then read every other column): for measuring what the deinterleaved plane buys.
    """

    def __init__(self, deinterleave: bool = True) -> None:
        super().__init__()
        self.deinterleave = deinterleave

    def apply(  # noqa: D102 - ScheduleRule API
        self, func: tirx.PrimFunc, target: Target, _: bool
    ) -> s_tir.Schedule | None:
        sch = schedule_for(self, func, target)
        if sch is None:
            return None
        blocks = child_blocks(sch, sch.get_sblock("root"))
        convs = [name for name in blocks if name in _CONV_BLOCKS]
        if len(convs) != 1:
            return None
        conv = blocks[convs[0]]
        names = list(blocks)
        at = names.index(convs[0])
        before, after = names[:at], names[at + 1:]
        if before not in ([], ["pad_temp"]) or _kinds(sch, conv) != "SSSSRRR":
            return None
        if any(_kinds(sch, blocks[name]).strip("S") for name in after):
            return None  # only elementwise stages after the conv
        if len(sch.get_loops(conv)) != 7:
            return None
        nn, ff, yy, xx, rc, ry, rx = sch.get_loops(conv)
        width = loop_extent(sch, xx)
        if width is None or loop_extent(sch, rc) is None or loop_extent(sch, ry) is None:
            return None
        # the epilogue (bias add, activation, ...) into one block, then per output row
        for name in after[:-1]:
            sch.compute_inline(blocks[name])
        epilogue = blocks[after[-1]] if after else None

        plane = sch.fuse(nn, ff)
        lanes = vector_lanes(target)
        vec = row_vector(width, lanes)
        xo, xi = sch.split(xx, [None, vec])
        sch.reorder(plane, yy, xo, rc, ry, rx, xi)
        if before:
            pad = blocks["pad_temp"]
            if self.deinterleave and _column_stride(sch, conv, pad) == 2:
                _deinterleave(sch, pad)
            sch.compute_at(pad, plane)
            _vectorize_row(sch, sch.get_loops(pad)[-1], lanes)
        sch.parallel(plane)  # before the reduction is decomposed (it must still be one block)
        sch.vectorize(xi)
        for tap in (rc, ry, rx):
            sch.unroll(tap)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, yy)
            _vectorize_row(sch, sch.get_loops(epilogue)[-1], lanes)
        return sch
