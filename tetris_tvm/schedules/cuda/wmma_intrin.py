"""The five 16x16x16 WMMA tensor intrinsics the tensor-core path uses (float16 in, float32 acc).

TVM ships them in ``tvm.s_tir.tensor_intrin.cuda``, but importing that module registers ~100
intrinsics and took 40+ s on the 2-core build machine; these are written here with the same
semantics (description = the scalar loop nest, implementation = the ``tvm_*_matrix_sync``
builtins that CUDA codegen turns into ``nvcuda::wmma`` calls) and registered once, lazily.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["FILL", "LOAD_A", "LOAD_B", "STORE", "SYNC", "register_wmma_intrinsics"]

LOAD_A = "tetris_wmma_load_a_f16_shared"
LOAD_B = "tetris_wmma_load_b_f16_shared"
SYNC = "tetris_wmma_sync_f16f16f32"
FILL = "tetris_wmma_fill_f32"
STORE = "tetris_wmma_store_f32_shared"

_REGISTERED = False


def _frag_index(buf, stride):
    """Index of the 16x16 fragment that ``buf`` (a view of a fragment array) starts at."""
    return buf.elem_offset // stride // 16 * (stride // 16) + buf.elem_offset % stride // 16


def _matrix_sync(frag, frag_stride, mem, mem_stride, dtype: str, load: bool):
    """``tvm_load_matrix_sync`` (memory -> fragment) or ``tvm_store_matrix_sync`` (back)."""
    op = T.tvm_load_matrix_sync if load else T.tvm_store_matrix_sync
    return op(
        frag.data, 16, 16, 16, _frag_index(frag, frag_stride),
        mem.access_ptr("r" if load else "w", ptr_type=dtype), mem_stride, "row_major",
        dtype="void",
    )


def _copy(dtype: str, src: str, dst: str, load: bool):
    """A 16x16 copy from scope ``src`` to ``dst``: a fragment load (``load``) or store."""
    name = "load" if load else "store"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 16), dtype, align=64, offset_factor=16, scope=src)
        C = T.match_buffer(c, (16, 16), dtype, align=64, offset_factor=16, scope=dst)
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock(name):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        a1 = T.int32()
        a0 = T.int32()
        c1 = T.int32()
        c0 = T.int32()
        A = T.match_buffer(a, (16, 16), dtype, align=64, offset_factor=16, scope=src,
                           strides=[a1, a0])
        C = T.match_buffer(c, (16, 16), dtype, align=64, offset_factor=16, scope=dst,
                           strides=[c1, c0])
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.evaluate(
                _matrix_sync(C, c1, A, a1, dtype, True) if load
                else _matrix_sync(A, a1, C, c1, dtype, False)
            )

    return desc, impl


def _load(scope: str, layout_b: bool):
    return _copy("float16", scope, "wmma.matrix_b" if layout_b else "wmma.matrix_a", True)


@T.prim_func(s_tir=True)
def _sync_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (16, 16), "float16", align=64, offset_factor=16, scope="wmma.matrix_a")
    B = T.match_buffer(b, (16, 16), "float16", align=64, offset_factor=16, scope="wmma.matrix_b")
    C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16,
                       scope="wmma.accumulator")
    with T.sblock("root"):
        T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
        T.writes(C[0:16, 0:16])
        for i, j, k in T.grid(16, 16, 16):
            with T.sblock(""):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                C[vi, vj] = C[vi, vj] + T.Cast("float32", A[vi, vk]) * T.Cast("float32", B[vk, vj])


@T.prim_func(s_tir=True)
def _sync_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    a1 = T.int32()
    a0 = T.int32()
    b1 = T.int32()
    b0 = T.int32()
    c1 = T.int32()
    c0 = T.int32()
    A = T.match_buffer(a, (16, 16), "float16", align=64, offset_factor=16, scope="wmma.matrix_a",
                       strides=[a1, a0])
    B = T.match_buffer(b, (16, 16), "float16", align=64, offset_factor=16, scope="wmma.matrix_b",
                       strides=[b1, b0])
    C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16,
                       scope="wmma.accumulator", strides=[c1, c0])
    with T.sblock("root"):
        T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
        T.writes(C[0:16, 0:16])
        T.evaluate(
            T.tvm_mma_sync(
                C.data, _frag_index(C, c1), A.data, _frag_index(A, a1), B.data,
                _frag_index(B, b1), C.data, _frag_index(C, c1), dtype="void",
            )
        )


@T.prim_func(s_tir=True)
def _fill_desc(c: T.handle) -> None:
    C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16,
                       scope="wmma.accumulator")
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:16, 0:16])
        for i, j in T.grid(16, 16):
            with T.sblock("init"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = T.float32(0)


@T.prim_func(s_tir=True)
def _fill_impl(c: T.handle) -> None:
    d1 = T.int32()
    d0 = T.int32()
    C = T.match_buffer(c, (16, 16), "float32", align=64, offset_factor=16,
                       scope="wmma.accumulator", strides=[d1, d0])
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:16, 0:16])
        T.evaluate(T.tvm_fill_fragment(C.data, 16, 16, 16, _frag_index(C, d1), T.float32(0),
                                       dtype="void"))


def register_wmma_intrinsics() -> None:
    """Register the five intrinsics (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    TensorIntrin.register(LOAD_A, *_load("shared", False), override=True)
    TensorIntrin.register(LOAD_B, *_load("shared", True), override=True)
    TensorIntrin.register(SYNC, _sync_desc, _sync_impl, override=True)
    TensorIntrin.register(FILL, _fill_desc, _fill_impl, override=True)
    TensorIntrin.register(STORE, *_copy("float32", "wmma.accumulator", "shared", False),
                          override=True)
    _REGISTERED = True
