"""Helpers shared by the CUDA schedule rules: target facts, tile tables, thread bindings."""

from __future__ import annotations

from tvm import DataType, s_tir, tirx
from tvm.target import Target

from ...attr_keys import Attr
from ..analysis import child_blocks, fresh_schedule, kernel_kind, loop_extent, row_block

__all__ = [
    "SHARED_BYTES",
    "dtype_bytes",
    "shared_bytes",
    "bind_elementwise",
    "bind_register_tile",
    "bind_thread_block",
    "bind_threads",
    "child_blocks",
    "cuda_target",
    "fresh_schedule",
    "is_cuda",
    "kernel_dtype",
    "kernel_kind",
    "largest_divisor",
    "loop_extent",
    "max_threads",
    "read_index",
    "row_block",
    "stage_shared",
    "unroll_loops",
]

# facts MetaSchedule / dlight read from a CUDA target (TVM 0.27 fills none of them for a bare
# {"kind": "cuda", "arch": ...}); the values hold for every sm_70+ part.
_CUDA_FACTS = {
    "max_threads_per_block": 1024,
    "max_shared_memory_per_block": 49152,
    "thread_warp_size": 32,
    "registers_per_block": 65536,
    "max_num_threads": 1024,
}


def cuda_target(arch: str = "sm_90", **attrs) -> Target:
    """A CUDA target with the attributes the schedule rules, dlight and MetaSchedule need.

    ``attrs`` override or extend the defaults (e.g. ``host={"kind": "llvm"}``).
    """
    config = {"kind": "cuda", "arch": arch, **_CUDA_FACTS, **attrs}
    return Target(config)


def is_cuda(target: Target) -> bool:
    """True for CUDA targets (the domain of these rules)."""
    return target.kind.name == "cuda"


def max_threads(target: Target) -> int:
    """``max_threads_per_block`` of the target (1024 when unset)."""
    value = target.attrs.get("max_threads_per_block")
    return int(value) if value is not None else 1024


def kernel_dtype(func: tirx.PrimFunc) -> str:
    """Operand dtype of a tetris kernel (``tetris.dtype``; float32 kernels carry none)."""
    value = func.attrs.get(Attr.DTYPE) if func.attrs is not None else None
    return "float32" if value is None else str(value)


def largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (>= 1)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def read_index(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, name: str | None) -> int:
    """Index in ``block``'s read regions of the buffer called ``name``.

    ``name=None`` selects the activation operand: the read that is neither the block's own
    output (the accumulator) nor a ``w_*`` weight argument.
    """
    stmt = sch.get(block)
    out = stmt.writes[0].source
    for i, region in enumerate(stmt.reads):
        src = region.source
        if name is not None and src.name == name:
            return i
        if name is None and not src.same_as(out) and not src.name.startswith("w_"):
            return i
    raise ValueError(f"block {stmt.name_hint} reads no buffer {name or '<operand>'}")


def unroll_loops(sch: s_tir.Schedule, loops, limit: int = 64) -> None:
    """Unroll ``loops`` whose constant extent is at most ``limit``."""
    for loop in loops:
        extent = loop_extent(sch, loop)
        if extent is not None and extent <= limit:
            sch.unroll(loop)


def bind_elementwise(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, threads: int = 256, skip: int = 0
) -> None:
    """A copy / elementwise block as its own kernel: all loops fused, blocks x threads.

    ``skip`` outer loops are left alone (already bound by the caller).
    """
    loops = sch.get_loops(block)[skip:]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = loop_extent(sch, fused) or threads
    bx, tx = sch.split(fused, [None, min(threads, extent)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")



def bind_threads(
    sch: s_tir.Schedule, loops, threads: tuple[int, int], vec: int = 1
) -> None:
    """``loops`` fused and split over ``threads`` (``ty`` x ``tx``) of one thread block, with an
    inner vector of ``vec`` lanes when the extent is a multiple of all of them."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ty_n, tx_n = threads
    extent = loop_extent(sch, fused) or 0
    if vec > 1 and extent % (ty_n * tx_n * vec) == 0:
        _, ty, tx, vv = sch.split(fused, [None, ty_n, tx_n, vec])
        sch.vectorize(vv)
    else:
        _, ty, tx = sch.split(fused, [None, ty_n, tx_n])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def stage_shared(
    sch: s_tir.Schedule,
    block: s_tir.schedule.SBlockRV,
    index: int,
    threads: tuple[int, int],
    vec: int = 1,
    transpose_rows: int = 0,
) -> s_tir.schedule.SBlockRV:
    """Cache read ``index`` of ``block`` into shared memory, fetched by all threads.

    The cache block lands at the top of ``block``'s scope (a blockized body); its loops are
    fused, split over ``threads`` (``ty`` x ``tx``) and an inner vector of ``vec`` lanes
    (:func:`bind_threads`). ``transpose_rows`` > 0 stores a ``(rows, k)`` operand transposed
    as ``(k, rows)`` with the row stride padded to ``rows + 1`` words (conflict-free
    transposed writes and reads).
    """
    cache = sch.cache_read(block, index, "shared")
    if transpose_rows:
        sch.transform_layout(cache, ("write", 0), lambda m, k: (k, m))
        sch.storage_align(cache, 0, axis=0, factor=32, offset=1)
    bind_threads(sch, sch.get_loops(cache), threads, vec)
    return cache


def bind_register_tile(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, threads: tuple[int, int]
) -> None:
    """The last two loops of ``block`` (rows, columns) split over ``threads`` (``ty`` rows x
    ``tx`` columns); each thread's tile is unrolled (the epilogue on the register tile)."""
    rows, cols = sch.get_loops(block)[-2:]
    ty, rows = sch.split(rows, [threads[0], None])
    tx, cols = sch.split(cols, [threads[1], None])
    sch.reorder(ty, tx, rows, cols)
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    unroll_loops(sch, [rows, cols])

SHARED_BYTES = 48 * 1024
"""Static shared memory a thread block may use without opting in."""


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def shared_bytes(sch: s_tir.Schedule) -> int:
    """Bytes of shared memory the blocks of ``sch`` allocate (what ptxas counts as the
    kernel's static shared data)."""
    total, todo = 0, [sch.get_sblock("root")]
    while todo:
        block = todo.pop()
        for buf in sch.get(block).alloc_buffers:
            if buf.scope() == "shared":
                size = 1
                for extent in buf.shape:
                    size *= int(extent)
                total += size * tvm_dtype_bytes(buf.dtype)
        todo.extend(sch.get_child_blocks(block))
    return total


def tvm_dtype_bytes(dtype: object) -> int:
    """Bytes of one element of a TVM dtype (``float16`` -> 2)."""
    d = DataType(str(dtype))
    return d.bits * d.lanes // 8


def bind_thread_block(
    sch: s_tir.Schedule,
    update: s_tir.schedule.SBlockRV,
    store: s_tir.schedule.SBlockRV,
    outer: s_tir.schedule.LoopRV,
    kept: s_tir.schedule.LoopRV,
    threads: tuple[s_tir.schedule.LoopRV, s_tir.schedule.LoopRV],
) -> s_tir.schedule.SBlockRV:
    """The thread-block tile shared by the GEMM-like rules: ``outer`` on ``blockIdx.x``,
    ``threads`` (``ty``, ``tx``) on ``threadIdx.y`` / ``.x``, the accumulator in registers
    (its init above the loop over kept blocks, ``kept``), the store computed per tile, and
    the per-kept-block body blockized (it will own the shared buffers). Returns the init
    block."""
    ty, tx = threads
    sch.bind(outer, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.set_scope(update, 0, "local")
    init = sch.decompose_reduction(update, kept)
    sch.reverse_compute_at(store, outer, preserve_unit_loops=True)
    sch.blockize(ty)
    return init
