"""Schedule helpers every target's rules share: which kernel a PrimFunc is, fresh schedules,
loop extents and child blocks."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx

from .._compat import deep_copy
from ..kernels.compute import KERNEL_ATTR

__all__ = ["child_blocks", "fresh_schedule", "kernel_kind", "loop_extent", "row_block"]


def kernel_kind(func: tirx.PrimFunc) -> str | None:
    """The ``tetris.kernel`` attribute of ``func`` (None for other functions)."""
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
        return None
    kind = func.attrs.get(KERNEL_ATTR)
    return None if kind is None else str(kind)


def fresh_schedule(func: tirx.PrimFunc) -> s_tir.Schedule:
    """A Schedule on a deep copy of ``func``.

    Some TVM 0.27 primitives mutate the scheduled PrimFunc in place
    (:func:`tetris_tvm._compat.deep_copy`); scheduling a copy keeps ``func`` intact.
    """
    return s_tir.Schedule(tvm.IRModule({"main": deep_copy(func)}))


def loop_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """Constant extent of ``loop`` or None."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def child_blocks(sch: s_tir.Schedule, parent: s_tir.schedule.SBlockRV) -> dict:
    """Direct child blocks of ``parent`` by name."""
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(parent)}


def row_block(
    sch: s_tir.Schedule,
    schedule_copy: Callable[[s_tir.Schedule, s_tir.schedule.SBlockRV], None],
    copies: tuple[str, ...] = ("x_pad", "y_slice"),
) -> s_tir.schedule.SBlockRV:
    """The ``row`` block of a tetris kernel, once ``schedule_copy(sch, block)`` has scheduled
    those of its copy blocks (``copies``: input padding, im2col, output slice) it has."""
    root = child_blocks(sch, sch.get_sblock("root"))
    for name in copies:
        if name in root:
            schedule_copy(sch, root[name])
    return root["row"]
