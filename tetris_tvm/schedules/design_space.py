"""What the CPU and CUDA tuning spaces share: one scheduled copy per tile configuration.

Both targets' spaces (:mod:`.cpu.space`, :mod:`.cuda.space`) are lists of design spaces, one per
configuration of our own schedule for the kernel's kind; a configuration the shape cannot take
is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tvm import s_tir

from .kernels import KERNEL_ATTR

__all__ = ["CONV_KINDS", "LINEAR_KINDS", "scheduled_copies"]

LINEAR_KINDS = ("bsr_linear", "ell_linear", "dense_linear")
CONV_KINDS = ("bsr_conv2d", "ell_conv2d", "dense_conv2d")


def scheduled_copies(
    sch: s_tir.Schedule,
    linear: tuple[Callable[[Any], Sequence[Any]], Callable[[s_tir.Schedule, Any], Any]],
    conv: tuple[Callable[[Any], Sequence[Any]], Callable[[s_tir.Schedule, Any], Any]],
    errors: tuple[type[BaseException], ...] = (s_tir.ScheduleError,),
) -> list[tuple[s_tir.Schedule, Any]] | None:
    """``(copy of sch, what scheduling it returned)`` for every configuration of the kernel's
    kind that schedules; None if ``sch`` is no tetris linear / conv kernel.

    ``linear`` / ``conv``: ``(configs(func), apply(space, config))`` for that kind.
    """
    func = sch.mod["main"]
    attrs = func.attrs
    kind = None if attrs is None or attrs.get(KERNEL_ATTR) is None else str(attrs[KERNEL_ATTR])
    if kind in LINEAR_KINDS:
        configs, apply = linear
    elif kind in CONV_KINDS:
        configs, apply = conv
    else:
        return None
    out = []
    for config in configs(func):
        space = sch.copy()
        try:
            result = apply(space, config)
        except errors:  # a configuration the shape cannot take
            continue
        out.append((space, result))
    return out
