"""Software prefetch of the next kept block's operand rows in the block-sparse linear kernels.

A kept block's operand is ``tile_rows`` short runs of ``x``, one per row of the register tile,
at a column that the weight's index array picks.  Nothing predicts that column (the hardware
prefetchers see a random jump per block), so each block starts with ``tile_rows`` cache misses
that the out-of-order window cannot cover: with 16-deep blocks the ~100 cycles of FMAs per
block are too short.  Measured on znver3, 2 threads, M = 128, 16x16 blocks: 3072->768 at
s = 0.75 ran at 0.81 of the ideal speedup and at s = 0.9 at 0.70; the same kernel on a mask
whose kept columns come in adjacent pairs (which the hardware does prefetch) ran at 0.87-0.90
and 0.83-0.88.  Prefetching the next block's rows while the current block runs gave 0.88 and
0.79.

The schedule marks the kept-block loop with :data:`PREFETCH_ATTR` (a traced annotation, so
tuned schedules keep it); :func:`expand_operand_prefetch` (the :class:`ExpandOperandPrefetch`
pass) turns the mark into ``llvm.prefetch`` calls at the top of the loop body.  It must run on
the scheduled TensorIR, before lowering: everything that builds a scheduled CPU module runs it
(:func:`tetris_tvm.schedules.build.schedule_module`, :func:`tetris_tvm.compile`, the tuner's
builder and checker).
"""

from __future__ import annotations

import itertools

import tvm
import tvm_ffi
from tvm import tirx
from tvm.target import Target

from ...attr_keys import Attr

__all__ = [
    "PREFETCH_ATTR",
    "ExpandOperandPrefetch",
    "expand_operand_prefetch",
    "prefetches_operand",
]

PREFETCH_ATTR = Attr.PREFETCH_OPERAND
"""Loop annotation: prefetch the operand of the kept block this many iterations ahead."""

_LINE_BYTES = 64
_MAX_PREFETCHES = 32  # per loop iteration; a bigger register tile is not one this rule marks


def prefetches_operand(rows: int, block_k: int, target: Target) -> bool:
    """Rule table: prefetch when the operand has at least 32 rows and a block's run of ``x``
    per row fits one cache line (``block_k`` <= 16 floats).

    Measured on znver3 (2 threads, 16x16 blocks, s = 0.5 / 0.75 / 0.9): M = 32-128 gained
    up to 0.12 of the ideal speedup (3072->768 M=64: 0.79 -> 0.91 at s = 0.75, 0.74 -> 0.85
    at 0.9); M = 16 lost 0.02-0.09 (its operand stays in L2, the prefetches only cost issue
    slots).  32-deep blocks were neutral (+-0.03): a block's two lines per row and 32 steps
    of FMAs give the core the time the 16-deep block lacks.
    """
    del target  # the table above is for x86-64 AVX2; kept as a parameter for other rules
    return rows >= 32 and block_k * 4 <= _LINE_BYTES


def _loads(expr: tirx.Expr) -> list:
    found: list = []

    def visit(load):  # noqa: ANN001, ANN202 - FFI node types
        found.append(load)
        return load

    tvm_ffi.structural_map(expr, [(tvm.ir.TensorLoad, visit)], order="post")
    return found


def _substitute(expr: tirx.Expr, pairs: list[tuple[tirx.Var, tirx.Expr]]) -> tirx.Expr:
    def replace(var):  # noqa: ANN001, ANN202
        for old, new in pairs:
            if var.same_as(old):
                return new
        return var

    return tvm_ffi.structural_map(expr, [(tirx.Var, replace)], order="post")


def _uses(expr: tirx.Expr, var: tirx.Var) -> bool:
    hit = []

    def visit(v):  # noqa: ANN001, ANN202
        if v.same_as(var):
            hit.append(v)
        return v

    tvm_ffi.structural_map(expr, [(tirx.Var, visit)], order="post")
    return bool(hit)


def _operand_load(realize) -> tirx.Expr | None:  # noqa: ANN001 - SBlockRealize
    """The ``x`` load of an ``acc = acc + x * w`` update block, in loop variables."""
    store = realize.block.body
    value = getattr(store, "value", None)
    product = getattr(value, "b", None)
    load = getattr(product, "a", None)
    if not isinstance(load, tvm.ir.TensorLoad) or len(load.indices) != 2:
        return None
    if not _loads(load.indices[1]):  # the column must come from the weight's index array
        return None
    block = realize.block
    bindings = [
        (iv.var, val) for iv, val in zip(block.iter_vars, realize.iter_values, strict=True)
    ]
    return _substitute(load, bindings)


def _prefetches(loop: tirx.For, distance: int) -> list[tirx.Stmt] | None:
    """``llvm.prefetch`` statements for the operand rows of iteration ``j + distance``."""
    chain, node = [], loop.body
    while isinstance(node, tirx.For):
        chain.append(node)
        node = node.body
    if type(node).__name__ != "SBlockRealize" or not node.block.name_hint.startswith("update"):
        return None
    load = _operand_load(node)
    if load is None:
        return None
    row_index, col_index = load.indices
    j = loop.loop_var
    ahead = tirx.min(j + distance, loop.min + loop.extent - 1)
    pairs = [(j, ahead)]
    row_loops, col_loops = [], []
    for inner in chain:
        if not isinstance(inner.extent, tirx.IntImm):
            return None
        if _uses(row_index, inner.loop_var):
            row_loops.append(inner)
        elif _uses(col_index, inner.loop_var):
            col_loops.append(inner)
        else:
            pairs.append((inner.loop_var, inner.min))
    if len(col_loops) > 1:
        return None
    per_line = _LINE_BYTES // 4
    col_steps = [0]
    if col_loops:
        col_steps = list(range(0, int(col_loops[0].extent), per_line))
    row_ranges = [range(int(lp.extent)) for lp in row_loops]
    if len(col_steps) * len(list(itertools.product(*row_ranges))) > _MAX_PREFETCHES:
        return None
    stmts = []
    i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
    for rows in itertools.product(*row_ranges):
        for step in col_steps:
            at = pairs + [
                (lp.loop_var, lp.min + i32(r)) for lp, r in zip(row_loops, rows, strict=True)
            ]
            if col_loops:
                at.append((col_loops[0].loop_var, col_loops[0].min + i32(step)))
            address = tirx.address_of(_substitute(load, at))
            call = tirx.call_llvm_intrin(
                "void", "llvm.prefetch.p0", address, i32(0), i32(3), i32(1)
            )  # read, keep in all cache levels, data cache
            stmts.append(tirx.Evaluate(call))
    return stmts


def expand_operand_prefetch(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every loop marked :data:`PREFETCH_ATTR` given its prefetch calls (and the
    mark removed).  A marked loop whose body is not a linear kernel's update keeps its body."""

    def on_for(loop: tirx.For) -> tirx.For:
        if loop.annotations is None or PREFETCH_ATTR not in loop.annotations:
            return loop
        distance = int(loop.annotations[PREFETCH_ATTR])
        annotations = {k: v for k, v in loop.annotations.items() if k != PREFETCH_ATTR}
        stmts = _prefetches(loop, distance)
        body = loop.body if not stmts else tirx.SeqStmt([*stmts, loop.body])
        return tirx.For(
            loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding,
            annotations, loop.step,
        )

    return tvm_ffi.structural_map(func, [(tirx.For, on_for)], order="post")


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="tetris.ExpandOperandPrefetch")
class ExpandOperandPrefetch:
    """Pass form of :func:`expand_operand_prefetch`; run it on scheduled CPU modules."""

    def transform_function(
        self, func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> tirx.PrimFunc:
        del mod, ctx
        return expand_operand_prefetch(func)
