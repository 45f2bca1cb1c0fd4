"""Half-precision (float16 / bfloat16) block-sparse linear kernels for the CUDA rules.

:func:`tetris_tvm.kernels.compute.block_sparse_linear` builds float32 kernels only; GPUs want
16-bit operands (tensor cores).  :func:`block_sparse_linear_fp16` builds the same kernel -- same
block names (``row`` / ``update`` / ``store``), same ``tetris.*`` attributes, same argument order
``(x, *linear_weight_args(weight, bias, fmt), y)`` -- with ``dtype`` inputs, bias and output and a
float32 accumulator (the epilogue runs in float32 and casts once)::

    for nb:                      block "row"
        acc = alloc (M, bn) float32
        for m, j, k, i:          block "update" (acc += f32(x) * f32(w))
        for m, i:                block "store"  (y = dtype(act(acc + f32(bias))))

Restriction (documented, checked): ``K % bk == 0`` and ``N % bn == 0`` (no padding blocks),
which holds for the transformer / CNN layer sizes this project targets.  The weight arrays are
the float32 ones of :func:`~tetris_tvm.kernels.compute.linear_weight_args` cast to ``dtype``
(:func:`half_weight_args`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as TB

from ..attr_keys import Attr, kernel_attrs
from .bsr import BSRMatrix
from .compute import apply_activation, linear_weight_args, weight_format

__all__ = ["HALF_DTYPES", "block_sparse_linear_fp16", "half_weight_args"]

HALF_DTYPES = ("float16", "bfloat16")
F32 = "float32"
I32 = "int32"


def half_weight_args(
    weight: BSRMatrix,
    bias: np.ndarray | None = None,
    fmt: str = "auto",
    dtype: str = "float16",
) -> list[np.ndarray]:
    """:func:`linear_weight_args` with the block data and bias cast to ``dtype``.

    ``bfloat16`` arrays are returned as ``ml_dtypes.bfloat16`` (what ``tvm.runtime.tensor``
    accepts for a bfloat16 buffer).
    """
    np_dtype = _numpy_dtype(dtype)
    args = linear_weight_args(weight, bias, fmt)
    out = [args[0].astype(np_dtype)]
    out += [a for a in args[1:] if a.dtype == np.int32]
    if bias is not None:
        out.append(args[-1].astype(np_dtype))
    return out


def _numpy_dtype(dtype: str):
    if dtype == "float16":
        return np.float16
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    raise ValueError(f"dtype must be one of {HALF_DTYPES}, got {dtype!r}")


def block_sparse_linear_fp16(
    x_shape: Sequence[int],
    weight: BSRMatrix,
    *,
    bias: bool = False,
    activation: str | None = None,
    fmt: str = "auto",
    dtype: str = "float16",
    name: str = "main",
) -> tirx.PrimFunc:
    """``y[..., N] = act(x[..., K] @ W.T + bias)`` in ``dtype`` with float32 accumulation.

    Same contract as :func:`tetris_tvm.kernels.compute.block_sparse_linear` (``fmt``:
    ``"bsr"``, ``"ell"`` or ``"auto"``); arguments ``(x, *half_weight_args(weight, bias, fmt,
    dtype), y)``.  The PrimFunc carries ``"tetris.dtype" = dtype`` besides the usual attributes.
    """
    if dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be one of {HALF_DTYPES}, got {dtype!r}")
    x_shape = tuple(int(d) for d in x_shape)
    n, k = weight.shape
    bn, bk = weight.block
    if x_shape[-1] != k:
        raise ValueError(f"x has K={x_shape[-1]} but the weight is {weight.shape}")
    if k % bk or n % bn:
        raise ValueError(f"the half kernels need K % bk == 0 and N % bn == 0, got {weight.shape}"
                         f" with block {weight.block}")
    fmt = weight_format(weight, fmt)
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    nb = n // bn
    nnzb = weight.nnzb
    width = weight.ell_width if fmt == "ell" else 0
    apply_activation(tirx.const(0.0, F32), activation)  # validate early
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr(
                kernel_attrs(f"{fmt}_linear", (bn, bk), m, n, activation, **{Attr.DTYPE: dtype})
            )
            x = TB.arg("x", T.Buffer(x_shape, dtype))
            if fmt == "bsr":
                data = TB.arg("w_data", T.Buffer((nnzb, bk, bn), dtype))
                indices = TB.arg("w_indices", T.Buffer((nnzb,), I32))
                indptr = TB.arg("w_indptr", T.Buffer((nb + 1,), I32))
            else:
                data = TB.arg("w_data", T.Buffer((nb, width, bk, bn), dtype))
                indices = TB.arg("w_indices", T.Buffer((nb, width), I32))
                indptr = None
            b = TB.arg("bias", T.Buffer((n,), dtype)) if bias else None
            y = TB.arg("y", T.Buffer((*x_shape[:-1], n), dtype))
            xf = TB.decl_buffer((m, k), dtype, data=x.data)
            yf = TB.decl_buffer((m, n), dtype, data=y.data)
            with T.grid(nb) as lnb:
                with T.sblock("row"):
                    vnb = T.axis.spatial(nb, lnb)
                    acc = TB.sblock_alloc_buffer((m, bn), F32)
                    if indptr is not None:
                        extent = indptr[vnb + 1] - indptr[vnb]
                    else:
                        extent = width
                    has_update = fmt == "bsr" or width > 0
                    if has_update:
                        with T.grid(m, extent, bk, bn) as (lm, lj, lk, li):
                            with T.sblock("update"):
                                vm, vj, vk, vi = T.axis.remap("SRRS", [lm, lj, lk, li])
                                with T.init():
                                    T.buffer_store(acc, tirx.const(0.0, F32), [vm, vi])
                                if indptr is not None:
                                    col = indices[indptr[vnb] + vj] * bk + vk
                                    wv = data[indptr[vnb] + vj, vk, vi]
                                else:
                                    col = indices[vnb, vj] * bk + vk
                                    wv = data[vnb, vj, vk, vi]
                                T.buffer_store(
                                    acc,
                                    acc[vm, vi]
                                    + T.Cast(F32, xf[vm, col]) * T.Cast(F32, wv),
                                    [vm, vi],
                                )
                    with T.grid(m, bn) as (lm, li):
                        with T.sblock("store"):
                            vm, vi = T.axis.remap("SS", [lm, li])
                            val = acc[vm, vi] if has_update else tirx.const(0.0, F32)
                            if indptr is not None:  # empty block-row: T.init never ran
                                val = T.if_then_else(
                                    indptr[vnb + 1] > indptr[vnb], val, tirx.const(0.0, F32)
                                )
                            if b is not None:
                                val = val + T.Cast(F32, b[vnb * bn + vi])
                            T.buffer_store(
                                yf, T.Cast(dtype, apply_activation(val, activation)),
                                [vm, vnb * bn + vi],
                            )
    return ib.get()
