"""int8 kernels for CUDA: the row quantizer and the block-sparse (and dense) int8 linear.

They compute what :mod:`.int8`'s CPU kernels compute (same quantization arithmetic, same
weight storage from :func:`.int8.int8_linear_args`, same ``(q_x, s_x, z_x, ...)`` arguments)
with the ``dot4`` of :data:`.int8.DOTS` ``["dp4a"]``: signed int8 activations and weights,
four products summed into an int32 per instruction (``__dp4a``, sm_61 and later).

Mapping: one thread per output (``threadIdx.x`` over the block's outputs, ``threadIdx.y``
over a tile of rows), one thread block per (block-row, row tile); a thread walks its
block-row's kept blocks reading 4 activations and 4 weights as one int32 each (threads of a
warp read consecutive weights). The quantizer gives each row one thread. Both come scheduled
(``tirx.is_scheduled``).

``gpu=False`` builds the same kernels with serial loops and :func:`.int8.dp4a_emulated`, so
that a CPU checks their arithmetic and indexing against numpy (the CUDA build itself compiles
with nvcc on a machine without a GPU, and runs where one is present).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as TB

from .compute import apply_activation
from .int8 import (
    DOTS,
    dp4a_emulated,
    extend_range,
    flat_rows,
    int8_linear_arguments,
    padded_k,
    quantizer_arguments,
    row_scale_zero,
    store_quantized,
)

__all__ = ["MAX_THREADS", "int8_linear_cuda", "quantize_rows_cuda"]

F32, I32 = "float32", "int32"
MAX_THREADS = 1024  # threads per CUDA block
ROW_THREADS = 64  # quantizer threads per block


def _loop(stack: ExitStack, extent: int | tirx.PrimExpr, thread: str, gpu: bool) -> Any:
    """A loop bound to ``thread`` (``gpu``), else serial."""
    if gpu:
        return stack.enter_context(T.thread_binding(0, extent, thread=thread))
    return stack.enter_context(T.serial(0, extent))


def quantize_rows_cuda(x_shape: tuple, k_pad: int, *,
                       static: tuple[float, int] | None = None, gpu: bool = True,
                       name: str = "main") -> tirx.PrimFunc:
    """``(q, scale, zero) = quantize(x)`` per row into int8, as :func:`.int8.quantize_rows`
    computes it (each row's own range, or the calibrated ``static`` scale and zero point);
    one thread per row."""
    dot = DOTS["dp4a"]
    rows, k = flat_rows(x_shape), int(x_shape[-1])
    qmin, qmax = float(dot.qmin), float(dot.qmax)
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            q, sc, zp, xf = quantizer_arguments(x_shape, k_pad, dot)
            with ExitStack() as stack:
                stack.enter_context(T.sblock("root"))
                bx = _loop(stack, -(-rows // ROW_THREADS), "blockIdx.x", gpu)
                tx = _loop(stack, ROW_THREADS, "threadIdx.x", gpu)
                m = bx * ROW_THREADS + tx
                with T.If(m < rows), T.Then(), T.sblock("row"):
                    if static is None:
                        lo = TB.alloc_buffer((1,), F32, scope="local")
                        hi = TB.alloc_buffer((1,), F32, scope="local")
                        T.buffer_store(lo, T.float32(0.0), [0])
                        T.buffer_store(hi, T.float32(0.0), [0])
                        with T.serial(0, k) as j:
                            extend_range(lo, hi, xf[m, j], lo[0], hi[0], [0])
                        s, z = row_scale_zero(lo[0], hi[0], qmin, qmax)
                    else:
                        s, z = T.float32(static[0]), T.float32(static[1])
                    T.buffer_store(sc, s, [m])
                    T.buffer_store(zp, T.Cast(I32, z), [m])
                    inv = T.float32(1.0) / sc[m]
                    zf = T.Cast(F32, zp[m])
                    store_quantized(q, xf, m, 0, k_pad, inv, zf, dot)
    return ib.get()


def int8_linear_cuda(
    x_shape: tuple,
    n: int,
    block: tuple[int, int],
    nnzb: int,
    *,
    dense: bool = False,
    bias: bool = False,
    activation: str | None = None,
    tile_rows: int = 16,
    gpu: bool = True,
    name: str = "main",
) -> tirx.PrimFunc:
    """``y[..., N] = act(s_x * s_w * (q_x @ q_w.T - z_x * sum_w) + bias)`` with ``__dp4a``.

    Arguments as :func:`.int8.int8_linear`'s (``int8_linear_args(..., threads=1)``; the
    block-row order table is not used): ``(q_x, s_x, z_x, w_data, [w_indices, w_indptr,
    w_order], w_scale, w_sum, [bias], y)``. The block's columns must be a multiple of 4.
    """
    dot = DOTS["dp4a"]
    emit = dot.emit if gpu else dp4a_emulated
    rows, k = flat_rows(x_shape), int(x_shape[-1])
    bn, bk = block
    if dense:
        bk = k
    if bk % 4:
        raise ValueError(f"CUDA int8 kernels read 4 columns at once: block columns {bk} "
                         "are not a multiple of 4")
    if bn > MAX_THREADS:
        raise ValueError(f"a block of {bn} outputs exceeds {MAX_THREADS} threads")
    nb, k4 = -(-n // bn), bk // 4
    kq = padded_k(k, bk)
    tm = max(1, min(tile_rows, MAX_THREADS // bn, rows))
    apply_activation(T.float32(0.0), activation)  # validate early
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            a = int8_linear_arguments(dot, rows, kq, (bn, bk), n, nb, nnzb, dense, bias,
                                      activation, 1)
            qx, sx, zx, w, ws, wsum, b = (a[key] for key in ("q_x", "s_x", "z_x", "w_data",
                                                             "w_scale", "w_sum", "bias"))
            ind, ptr = a.get("w_indices"), a.get("w_indptr")
            y = TB.arg("y", T.Buffer((*x_shape[:-1], n), F32))
            yf = TB.decl_buffer((rows, n), F32, data=y.data)
            x4 = TB.decl_buffer((rows, kq // 4), I32, data=qx.data)
            with ExitStack() as stack:
                stack.enter_context(T.sblock("root"))
                blk = _loop(stack, nb, "blockIdx.x", gpu)
                mt = _loop(stack, -(-rows // tm), "blockIdx.y", gpu)
                ty = _loop(stack, tm, "threadIdx.y", gpu)
                tx = _loop(stack, bn, "threadIdx.x", gpu)
                m = mt * tm + ty
                col = blk * bn + tx
                with T.If(m < rows), T.Then(), T.sblock("output"):
                    acc = TB.alloc_buffer((1,), I32, scope="local")
                    T.buffer_store(acc, T.int32(0), [0])

                    def step(a4: Any, w4: Any) -> None:
                        T.buffer_store(acc, emit(acc[0], a4, w4, 1), [0])

                    if dense:
                        with T.serial(0, k4) as ko:
                            step(x4[m, ko], w.vload([blk, ko, tx, 0], "int8x4"))
                    else:
                        with T.serial(ptr[blk], ptr[blk + 1]) as j, T.serial(0, k4) as ko:
                            step(x4[m, ind[j] * k4 + ko], w.vload([j, ko, tx, 0], "int8x4"))
                    val = T.Cast(F32, acc[0] - zx[m] * wsum[col]) * (sx[m] * ws[col])
                    if b is not None:
                        val = val + b[col]
                    with T.If(col < n), T.Then():
                        T.buffer_store(yf, apply_activation(val, activation), [m, col])
    return ib.get()
