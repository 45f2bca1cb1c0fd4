"""Tuning search spaces for the tetris CPU kernels (what ``tunable=True`` hands MetaSchedule).

MetaSchedule's generic rules cannot schedule a loop whose extent comes from ``indptr``, and its
mutators replay a trace with new decisions, which breaks when a decision changes the loop
structure (a 1-row register tile leaves no unit loop behind ``reverse_compute_at``).  So the
space is a list of design spaces, one per structural choice of the default schedule (register
tile rows, unrolled in-block reduction for linear; channel x pixel tile for conv), each with one
structure-neutral sampled decision (``pragma_auto_unroll_max_step`` on the tile loop).  The
XGBoost cost model ranks the candidates; the rule table's choice is always the first space.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.target import Target

from ..design_space import scheduled_copies
from ._common import (
    _STACK_BYTES,
    kernel_kind,
    linear_tile,
    loop_extent,
    tile_rows_domain,
    vector_lanes,
)
from .block_sparse_matmul import dense_k_step, schedule_linear, unrolls_k
from .conv2d import conv_tile, schedule_conv2d
from .prefetch import prefetches_operand

__all__ = ["UNROLL_STEPS", "conv_configs", "design_spaces", "linear_configs"]

UNROLL_STEPS = (0, 16, 64)
"""Values sampled for ``pragma_auto_unroll_max_step`` on the tile loop."""


def linear_configs(func: tirx.PrimFunc, target: Target) -> list[dict[str, Any]]:
    """Register tiles (rows x columns) x unrolled in-block reduction; the rule table's first.

    Columns: the whole block width, or two vectors of it when that divides the block; a
    one-row tile always spans the whole width.  Sparse kernels also get the rule table's tile
    with the operand prefetch (:mod:`.prefetch`) the other way round.
    """
    rows = tile_rows_domain(func)
    bn = int(func.attrs["tetris.block"][0])
    default = linear_tile(rows, bn, target)
    half = 2 * vector_lanes(target)
    widths = [bn] + ([half] if half < bn and bn % half == 0 else [])
    tiles = [default] + [
        (t, c)
        for c in widths
        for t in (1, 2, 3, 4, 6, 8)
        if (t, c) != default and t <= rows and t * c * 4 < _STACK_BYTES and (t > 1 or c == bn)
    ]
    bk = int(func.attrs["tetris.block"][1])
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


def conv_configs(func: tirx.PrimFunc, target: Target) -> list[dict[str, Any]]:
    """Channel x pixel register tiles; the rule-table default first."""
    bn = int(func.attrs["tetris.block"][0])
    pixels = int(func.attrs["tetris.rows"])
    lanes = vector_lanes(target)
    default = conv_tile(bn, pixels, target)
    tiles = [default]
    for pv in (lanes, 2 * lanes):
        for ct in (1, 2, 4, 6, 8, 12):
            if bn % ct == 0 and (ct, pv) != default and ct * pv * 4 < 4 * _STACK_BYTES:
                tiles.append((ct, pv))
    return [{"tile": t} for t in tiles]


def design_spaces(sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule] | None:
    """One traced copy of ``sch`` per configuration, or None if ``sch`` is no tetris kernel.

    Usable as a MetaSchedule ``ScheduleFn`` (with no extra rules, postprocs or mutators).
    """
    copies = scheduled_copies(
        sch,
        (lambda f: linear_configs(f, target), lambda s, c: schedule_linear(s, target, **c)),
        (lambda f: conv_configs(f, target), lambda s, c: schedule_conv2d(s, target, **c)),
    )
    if copies is None:
        return None
    for space, tile_loop in copies:
        if tile_loop is not None and (loop_extent(space, tile_loop) or 2) > 1:
            step = space.sample_categorical(
                list(UNROLL_STEPS), [1.0 / len(UNROLL_STEPS)] * len(UNROLL_STEPS)
            )
            space.annotate(tile_loop, "pragma_auto_unroll_max_step", step)
    return [space for space, _ in copies]
