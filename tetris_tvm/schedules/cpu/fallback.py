"""CPU fallback rule: parallel + vectorised loops for the ops no other rule takes.

dlight's CPU package has only GEMV and Reduction rules, so everything else a Relax model
legalizes to (elementwise epilogues, reshapes/transposes, gathers, softmax and layer-norm
pieces) would run as one serial scalar loop nest. This rule inlines what can be inlined, then
for every remaining block fuses the spatial loops, runs the outer part in parallel and the
innermost in SIMD lanes when the innermost extent allows it.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import try_inline
from tvm.target import Target

from ._common import NormalizedRule, touches_bool, vector_lanes

__all__ = ["Fallback"]

# below this many iterations a parallel region costs more than it saves
_MIN_PARALLEL = 4096


_MAX_WINDOW = 64


def _small_window(sch: s_tir.Schedule, loops: list) -> bool:
    """A reduction over at most ``_MAX_WINDOW`` constant iterations (a pooling window)."""
    size = 1
    for lp in loops:
        extent = sch.get(lp).extent
        if not isinstance(extent, tirx.IntImm):
            return False
        size *= int(extent.value)
    return size <= _MAX_WINDOW


def _schedule_window(sch: s_tir.Schedule, block, spatial: list, window: list, lanes: int) -> None:
    """Pooling: outer outputs in parallel, the window unrolled, the last output axis vectorised.

    Measured on the MNIST CNN's 2x2 max-pools at batch 64: 2.4-4x faster than a serial
    window per output (e.g. 64x32x28x28 -> 14x14: 329 -> 140 us). A last axis longer than two
    vectors is cut into vectors first (or left scalar when it does not divide): a global
    average pool's last output axis is the channel axis, and one 1280-lane vector of 49
    unrolled window steps kept LLVM busy for over 10 minutes (7.8 s at 64 channels).
    """
    last = spatial[-1]
    extent = sch.get(last).extent
    n = int(extent.value) if isinstance(extent, tirx.IntImm) else None
    vector = n is not None and n <= 2 * lanes
    if n is not None and n > 2 * lanes and n % lanes == 0:
        outer_last, last = sch.split(last, [None, lanes])
        spatial = [*spatial[:-1], outer_last, last]
        vector = True
    sch.reorder(*spatial[:-1], *window, last)
    outer = sch.fuse(*spatial[:-1])
    for lp in window:
        sch.unroll(lp)
    if vector and not touches_bool(sch, block):
        try:
            sch.vectorize(last)
        except s_tir.ScheduleError:  # stays a scalar loop
            pass
    sch.parallel(outer)


class Fallback(NormalizedRule):
    """Inline, then parallelise and vectorise the spatial loops of each remaining block."""

    def schedule(  # noqa: D102 - NormalizedRule API
        self, sch: s_tir.Schedule, infos: list, target: Target
    ) -> s_tir.Schedule | None:
        if not any(info.is_reduction() for info in infos):
            infos = try_inline(sch, infos)
        # With a reduction (softmax, layer norm) keep the elementwise stages as their own loops:
        # inlined into the reduction they run scalar (exp is the bulk of a softmax); apart
        # they are vectorised and the reduction only adds.
        lanes = vector_lanes(target)
        for info in infos:
            block = info.block_rv
            loops = sch.get_loops(block)
            kinds = info.dom_kind()
            if not loops or len(kinds) != len(loops):
                continue
            spatial = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
            rest = [lp for lp, k in zip(loops, kinds, strict=True) if k != "S"]
            if not spatial:
                continue
            extents = [sch.get(lp).extent for lp in spatial]
            if not isinstance(extents[-1], tirx.IntImm):
                continue  # (outer extents may be symbolic: a dynamic batch)
            if rest and len(spatial) >= 2 and _small_window(sch, rest):
                _schedule_window(sch, block, spatial, rest, lanes)
                continue
            sch.reorder(*spatial, *rest)
            fused = sch.fuse(*spatial)
            total = 1
            for e in extents:  # a symbolic extent counts as large
                total *= int(e.value) if isinstance(e, tirx.IntImm) else _MIN_PARALLEL
            if rest:  # a reduction stays serial inside each parallel iteration
                if total >= 2:
                    sch.parallel(fused)
                continue
            divisible = int(extents[-1].value) % lanes == 0 or (
                all(isinstance(e, tirx.IntImm) for e in extents) and total % lanes == 0
            )
            if total >= _MIN_PARALLEL and divisible and not touches_bool(sch, block):
                outer, inner = sch.split(fused, [None, lanes])
                sch.parallel(outer)
                try:
                    sch.vectorize(inner)
                except Exception:  # noqa: BLE001 - gathers etc. cannot vectorise; stay scalar
                    pass
            elif total >= _MIN_PARALLEL:
                sch.parallel(fused)
        return sch
