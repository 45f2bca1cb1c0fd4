"""int8 kernels: block-sparse (and dense) linears on quantized operands, and the row quantizer.

A quantized linear computes ``y = act(s_x[m] * s_w[n] * (acc[m, n] - z_x[m] * sum_w[n]) +
bias[n])`` with ``acc = sum_k q_x[m, k] * q_w[n, k]`` accumulated in int32:

- weights are symmetric int8 per output channel (``s_w``, values in [-127, 127]), quantized
  after pruning, and only the kept blocks are stored;
- activations are quantized per row (a token, or one example of a batch) by
  :func:`quantize_rows`, either from the row's own range (dynamic) or with one scale and
  zero point calibrated ahead (static); their integer range depends on the dot-product
  instruction (:data:`DOTS`).

The inner loop is written with the target's dot-product instruction as a vector expression
(``vpdpbusd`` on AVX-512 VNNI / AVX-VNNI, ``vpmaddubsw`` + ``vpmaddwd`` on AVX-512BW and
AVX2, ``sdot`` on aarch64, plain int32 vector arithmetic elsewhere): every instruction reads
4 consecutive activations of one row, broadcast, against 4 inputs of ``L`` outputs, so a
stored block is ``(bk / 4, bn, 4)`` int8 (:func:`pack_int8_blocks`). These kernels come
scheduled (register tiles of rows x the block's outputs, unrolled; parallel over row chunks x
block-rows dealt round-robin to the threads) and carry ``tirx.is_scheduled``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as TB

from ..attr_keys import Attr, kernel_attrs
from ..quantization import quantize_weight
from .bsr import BSRMatrix
from .compute import KERNEL_ATTR, apply_activation, linear_row_chunk

__all__ = [
    "DOTS",
    "Dot",
    "dot_for_target",
    "int8_im2col",
    "int8_linear",
    "int8_linear_args",
    "int8_linear_arguments",
    "balanced_order",
    "int8_tile_rows",
    "pack_int8_blocks",
    "quantize_rows",
    "quantizer_arguments",
    "extend_range",
    "store_quantized",
    "quantize_weight",
]

F32, I32 = "float32", "int32"
STACK_BYTES = 1024  # an accumulator below this stays a stack array LLVM keeps in registers


@dataclass(frozen=True)
class Dot:
    """A 4-deep int8 dot-product instruction: ``acc[l] += sum_k a[k] * w[l, k]`` for ``lanes``
    int32 lanes, ``a`` broadcast to every lane.

    ``act_dtype`` / ``qmin`` / ``qmax``: the activations' integer type and range (7 bits where
    the instruction sums pairs in saturating int16)."""

    name: str
    act_dtype: str
    qmin: int
    qmax: int
    widths: tuple[int, ...]  # lane counts it comes in, widest first
    emit: Callable[[tirx.PrimExpr, tirx.PrimExpr, tirx.PrimExpr, int], tirx.PrimExpr]
    columns: int = 1  # block columns must be a multiple of this (aligned 4-byte reads)
    convs: bool = True  # whether convs run int8 with it
    gpu: bool = False  # a CUDA instruction: the kernels of .int8_cuda use it


def _bytes(a4: tirx.PrimExpr, lanes: int, dtype: str) -> tirx.PrimExpr:
    """4 activation bytes (one int32) broadcast to ``lanes`` int32 lanes, as bytes."""
    return T.reinterpret(f"{dtype}x{4 * lanes}", T.broadcast(a4, lanes))


def _vnni(acc, a4, w, lanes):
    bits = 32 * lanes
    return T.call_llvm_pure_intrin(f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{bits}",
                                   acc, _bytes(a4, lanes, "int8"), w)


def _pmadd(name16: str, name32: str):
    def emit(acc, a4, w, lanes):
        pairs = T.call_llvm_pure_intrin(f"int16x{2 * lanes}", name16,
                                        _bytes(a4, lanes, "uint8"), w)
        quads = T.call_llvm_pure_intrin(f"int32x{lanes}", name32, pairs,
                                        T.broadcast(T.int16(1), 2 * lanes))
        return acc + quads

    return emit


def _avx512bw(acc, a4, w, lanes):
    return _pmadd("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")(
        acc, a4, w, lanes)


def _avx2(acc, a4, w, lanes):
    if lanes == 8:
        return _pmadd("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")(acc, a4, w, lanes)
    return _pmadd("llvm.x86.ssse3.pmadd.ub.sw.128", "llvm.x86.sse2.pmadd.wd")(acc, a4, w, lanes)


def _sdot(acc, a4, w, lanes):
    name = "llvm.aarch64.neon.sdot.v4i32.v16i8" if lanes == 4 else \
        "llvm.aarch64.neon.sdot.v2i32.v8i8"
    return T.call_llvm_pure_intrin(f"int32x{lanes}", name, acc, _bytes(a4, lanes, "int8"), w)


def _generic(acc, a4, w, lanes):
    a = T.reinterpret("uint8x4", a4)
    wi = T.reinterpret(f"int32x{lanes}", w)  # 4 int8 per lane, little-endian
    out = acc
    for k in range(4):
        ak = T.broadcast(T.Cast(I32, T.Shuffle([a], [k])), lanes)
        wk = T.shift_right(T.shift_left(wi, T.broadcast(24 - 8 * k, lanes)),
                           T.broadcast(24, lanes))  # the k-th byte, sign-extended
        out = out + ak * wk
    return out


def _dp4a(acc, a4, w, lanes):
    """CUDA's ``__dp4a`` (signed x signed bytes, one int32 lane per thread)."""
    return T.call_pure_extern(I32, "__dp4a", a4, T.reinterpret(I32, w), acc)


def dp4a_emulated(acc, a4, w, lanes):
    """What ``__dp4a`` computes, in plain int32 arithmetic (the CUDA kernels' CPU twin)."""
    out = acc
    for k in range(4):
        shift = T.int32(24 - 8 * k)
        ak = T.shift_right(T.shift_left(a4, shift), T.int32(24))
        wk = T.shift_right(T.shift_left(T.reinterpret(I32, w), shift), T.int32(24))
        out = out + ak * wk
    return out


DOTS: dict[str, Dot] = {
    "vnni": Dot("vnni", "uint8", 0, 255, (16, 8, 4), _vnni),
    "avxvnni": Dot("avxvnni", "uint8", 0, 255, (8, 4), _vnni),
    "avx512bw": Dot("avx512bw", "uint8", 0, 127, (16,), _avx512bw),
    "avx2": Dot("avx2", "uint8", 0, 127, (8, 4), _avx2),
    "sdot": Dot("sdot", "int8", -128, 127, (4, 2), _sdot),
    "generic": Dot("generic", "uint8", 0, 255, (4,), _generic),
    "dp4a": Dot("dp4a", "int8", -128, 127, (1,), _dp4a, columns=4, convs=False, gpu=True),
}
"""The dot-product instructions the kernels use, by name."""


def dot_for_target(target: Any) -> Dot:
    """Rule table: the best dot-product instruction ``target`` has (by its features, not by
    the machine compiling): AVX-512 VNNI, AVX-VNNI, AVX-512BW, AVX2, aarch64 dotprod, else
    the generic int32 form; ``__dp4a`` on CUDA."""
    from tvm.target import codegen

    def has(*features: str) -> bool:
        try:
            return bool(codegen.target_has_features(list(features), target))
        except Exception:  # noqa: BLE001 - features unknown for this target
            return False

    kind = target.kind.name if target is not None else "llvm"
    if kind == "cuda":
        return DOTS["dp4a"]
    if kind != "llvm":
        return DOTS["generic"]
    if has("avx512vnni", "avx512bw", "avx512vl"):
        return DOTS["vnni"]
    if has("avxvnni"):
        return DOTS["avxvnni"]
    if has("avx512bw"):
        return DOTS["avx512bw"]
    if has("avx2"):
        return DOTS["avx2"]
    if has("dotprod"):
        return DOTS["sdot"]
    return DOTS["generic"]


def _lanes(dot: Dot, bn: int) -> int:
    """Widest lane count of ``dot`` that divides the block's outputs."""
    for lanes in dot.widths:
        if bn % lanes == 0:
            return lanes
    raise ValueError(f"int8 kernels need block rows in multiples of {dot.widths[-1]}, got {bn}")


def int8_tile_rows(bn: int, rows: int) -> int:
    """Rule table: rows of the register tile; the ``rows x bn`` int32 accumulator stays below
    the stack-array limit (so LLVM keeps it in registers), at most 8 rows (on a Zen 4, 4-7
    rows x 32 outputs all ran within 3% of each other), and preferably a divisor of ``rows``
    of at least 4 (no second, ragged tile to compile)."""
    top = max(1, min(8, (STACK_BYTES - 1) // (4 * bn), rows))
    return next((t for t in range(top, 3, -1) if rows % t == 0), top)


# ---------------------------------------------------------------------------------------------
# weights


def pack_int8_blocks(blocks: np.ndarray) -> np.ndarray:
    """int8 blocks ``(nb, bn, bk)`` as the kernels read them: ``(nb, ceil(bk/4), bn, 4)``,
    the input axis zero-padded to a multiple of 4."""
    nb, bn, bk = blocks.shape
    kp = -(-bk // 4) * 4
    padded = np.zeros((nb, bn, kp), np.int8)
    padded[:, :, :bk] = blocks
    return np.ascontiguousarray(padded.reshape(nb, bn, kp // 4, 4).transpose(0, 2, 1, 3))


def balanced_order(counts: np.ndarray, lanes: int, epilogue: float = 0.25) -> np.ndarray:
    """Block-rows dealt to ``lanes`` threads so that each gets about the same work: a
    ``(lanes, NB)`` table of block-row ids (ascending per lane, padded with -1). Work is the
    kept blocks plus ``epilogue`` for the row's dequantisation; the heaviest row goes to the
    least loaded lane first (TETRIS clusters kept blocks, so neighbouring block-rows differ a
    lot: on a MiniLM FFN at 75%, 0 to 12 kept blocks of 12)."""
    load = np.zeros(lanes)
    taken: list[list[int]] = [[] for _ in range(lanes)]
    for row in np.argsort(-(np.asarray(counts, float) + epilogue), kind="stable"):
        lane = int(np.argmin(load))
        load[lane] += counts[row] + epilogue
        taken[lane].append(int(row))
    order = np.full((lanes, len(counts)), -1, np.int32)
    for lane, rows in enumerate(taken):
        order[lane, :len(rows)] = sorted(rows)
    return order


def int8_linear_args(q: np.ndarray, scale: np.ndarray, block: tuple[int, int],
                     dense: bool, bias: np.ndarray | None = None,
                     threads: int = 1) -> list[np.ndarray]:
    """The constant arguments of :func:`int8_linear` for the int8 weight ``q (N, K)``
    (pruned blocks zero): ``[w, (indices, indptr, order,) w_scale, w_sum, (bias)]``, the
    output axis padded to a multiple of the block; ``order`` deals the block-rows to
    ``threads`` threads (:func:`balanced_order`)."""
    n, k = q.shape
    bn, bk = block
    if dense:
        bk = k
    nb = -(-n // bn)
    nbp = nb * bn
    if dense:  # every block, in block-row order: (NB, K/4, bn, 4)
        padded = np.zeros((nbp, k), np.int8)
        padded[:n] = q
        args = [pack_int8_blocks(padded.reshape(nb, bn, k))]
    else:
        bsr = BSRMatrix.from_dense(q.astype(np.float32), (bn, bk))
        args = [pack_int8_blocks(bsr.data.astype(np.int8)), bsr.indices.astype(np.int32),
                bsr.indptr.astype(np.int32),
                balanced_order(np.diff(bsr.indptr), _work_lanes(nb, threads))]
    w_scale = np.ones(nbp, np.float32)
    w_scale[:n] = scale
    w_sum = np.zeros(nbp, np.int32)
    w_sum[:n] = q.astype(np.int32).sum(axis=1)
    args += [w_scale, w_sum]
    if bias is not None:
        b = np.zeros(nbp, np.float32)
        b[:n] = np.asarray(bias, np.float32).reshape(-1)
        args.append(b)
    return args


# ---------------------------------------------------------------------------------------------
# kernels


def _work_lanes(block_rows: int, threads: int) -> int:
    return max(1, min(threads, block_rows))


def flat_rows(x_shape: tuple) -> int:
    """The static number of rows of ``x_shape`` (all axes but the last)."""
    rows = 1
    for d in x_shape[:-1]:
        if not isinstance(d, int):
            raise ValueError("int8 kernels need a static row count (no dynamic batch)")
        rows *= d
    return rows


def padded_k(k: int, bk: int) -> int:
    """Columns of the quantized activations: ``k`` rounded up so that the last block's
    4-wide reads stay inside (their weights are zero)."""
    return -(-k // bk) * bk + 4


def row_scale_zero(lo: tirx.PrimExpr, hi: tirx.PrimExpr, qmin: float,
                   qmax: float) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """Scale and (float) zero point mapping a row's ``[lo, hi]`` (``lo <= 0 <= hi``) onto
    ``[qmin, qmax]``: :func:`tetris_tvm.quantization.static_params` in TensorIR."""
    span = (hi - lo) / T.float32(qmax - qmin)
    s = T.Select(span > T.float32(0.0), span, T.float32(1.0))
    z = T.Cast(F32, qmin) - T.floor(lo / s + T.float32(0.5))
    return s, T.max(T.min(z, T.float32(qmax)), T.float32(qmin))


def quantized_value(v: tirx.PrimExpr, inv: tirx.PrimExpr, zf: tirx.PrimExpr, qmin: float,
                    qmax: float) -> tirx.PrimExpr:
    """``clip(floor(v * inv + 0.5) + zf, qmin, qmax)`` as float32 (one value)."""
    v = T.floor(v * inv + T.float32(0.5)) + zf
    return T.Select(v > T.float32(qmax), T.float32(qmax),
                    T.Select(v < T.float32(qmin), T.float32(qmin), v))


def quantizer_arguments(x_shape: tuple, k_pad: int, dot: Dot) -> tuple[Any, Any, Any, Any]:
    """Declare a row quantizer's attributes and arguments (inside its ``prim_func`` builder):
    ``x`` (float32, ``x_shape``), then the outputs ``q (rows, k_pad)``, ``scale (rows,)``,
    ``zero (rows,)``; returns ``(q, scale, zero, x as (rows, K))``."""
    rows, k = flat_rows(x_shape), int(x_shape[-1])
    TB.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                  KERNEL_ATTR: "quantize_rows"})
    x = TB.arg("x", T.Buffer(x_shape, F32))
    q = TB.arg("q", T.Buffer((rows, k_pad), dot.act_dtype))
    sc = TB.arg("scale", T.Buffer((rows,), F32))
    zp = TB.arg("zero", T.Buffer((rows,), I32))
    return q, sc, zp, TB.decl_buffer((rows, k), F32, data=x.data)


def extend_range(lo: Any, hi: Any, v: tirx.PrimExpr, lo_now: tirx.PrimExpr,
                 hi_now: tirx.PrimExpr, at: list) -> None:
    """Store at ``at`` of ``lo`` / ``hi`` the running minimum / maximum after ``v`` (a value
    or a vector); a NaN wins both, so the row's scale becomes NaN."""
    nan = v != v
    T.buffer_store(lo, T.Select(tirx.Or(v < lo_now, nan), v, lo_now), at)
    T.buffer_store(hi, T.Select(tirx.Or(v > hi_now, nan), v, hi_now), at)


def store_quantized(q: Any, xf: Any, m: Any, start: Any, k_pad: int, inv: tirx.PrimExpr,
                    zf: tirx.PrimExpr, dot: Dot) -> None:
    """Row ``m`` of ``q`` from column ``start`` to ``k_pad``, one value at a time: ``xf``
    quantized with ``inv`` (1 / scale) and zero point ``zf``; columns past ``xf``'s width
    get the zero point."""
    k = int(xf.shape[1])
    with T.serial(start, k_pad) as j:
        v = quantized_value(xf[m, T.min(j, k - 1)], inv, zf, float(dot.qmin), float(dot.qmax))
        T.buffer_store(q, T.Cast(dot.act_dtype, T.Select(j < k, v, zf)), [m, j])


def quantize_rows(
    x_shape: tuple,
    k_pad: int,
    dot: Dot,
    *,
    static: tuple[float, int] | None = None,
    threads: int = 1,
    name: str = "main",
) -> tirx.PrimFunc:
    """``(q, scale, zero) = quantize(x)`` per row: ``x ~= scale[m] * (q[m] - zero[m])``.

    Dynamic (``static=None``): each row's range ``[min(x, 0), max(x, 0)]`` spans the dot's
    integer range; static: the calibrated ``(scale, zero)`` for every row. Rounding is
    ``floor(x / scale + 0.5)`` (computed as ``x * (1 / scale)``); columns ``k..k_pad`` get
    ``zero`` (their weights are 0). A NaN in a row makes its scale NaN, so the row's outputs
    are NaN (as torch's are). Vectorised 16 floats at a time.
    """
    rows = flat_rows(x_shape)
    k = int(x_shape[-1])
    vl = 16
    full = k // vl
    qmin, qmax = float(dot.qmin), float(dot.qmax)

    def vec(value: float) -> tirx.PrimExpr:
        return T.broadcast(T.float32(value), vl)

    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            q, sc, zp, xf = quantizer_arguments(x_shape, k_pad, dot)
            with T.sblock("root"), T.parallel(0, rows) as m:
                if static is None:
                    lo = TB.alloc_buffer((vl,), F32)
                    hi = TB.alloc_buffer((vl,), F32)
                    lanes = T.ramp(0, 1, vl)
                    T.buffer_store(lo, vec(0.0), [lanes])
                    T.buffer_store(hi, vec(0.0), [lanes])
                    # NaN wins both comparisons: the row's scale becomes NaN
                    with T.serial(0, full) as j:
                        extend_range(lo, hi, xf.vload([m, j * vl], f"float32x{vl}"),
                                     lo.vload([0], f"float32x{vl}"),
                                     hi.vload([0], f"float32x{vl}"), [lanes])
                    with T.serial(full * vl, k) as j:
                        extend_range(lo, hi, xf[m, j], lo[0], hi[0], [0])
                    with T.serial(1, vl) as i:
                        T.buffer_store(lo, T.Select(tirx.Or(lo[i] < lo[0], lo[i] != lo[i]),
                                                    lo[i], lo[0]), [0])
                        T.buffer_store(hi, T.Select(tirx.Or(hi[i] > hi[0], hi[i] != hi[i]),
                                                    hi[i], hi[0]), [0])
                    s, z = row_scale_zero(lo[0], hi[0], qmin, qmax)
                else:
                    s = T.float32(static[0])
                    z = T.float32(static[1])
                T.buffer_store(sc, s, [m])
                T.buffer_store(zp, T.Cast(I32, z), [m])
                inv = T.float32(1.0) / sc[m]
                zf = T.Cast(F32, zp[m])
                with T.serial(0, full) as j:
                    v = T.floor(xf.vload([m, j * vl], f"float32x{vl}") * T.broadcast(inv, vl)
                                + vec(0.5)) + T.broadcast(zf, vl)
                    v = T.Select(v > vec(qmax), vec(qmax), T.Select(v < vec(qmin), vec(qmin), v))
                    T.buffer_store(q, T.Cast(f"{dot.act_dtype}x{vl}", v),
                                   [m, T.ramp(j * vl, 1, vl)])
                store_quantized(q, xf, m, full * vl, k_pad, inv, zf, dot)
    return ib.get()


def int8_im2col(
    geo: Any,
    k_pad: int,
    dot: Dot,
    *,
    name: str = "main",
) -> tirx.PrimFunc:
    """The GEMM operand of an int8 conv: quantized images -> quantized patches.

    ``geo`` is the conv's :class:`~tetris_tvm.kernels.compute.Conv2dGeometry` (static batch).
    Arguments ``(q (N, C*H*W), scale (N,), zero (N,), patches (N*OH*OW, k_pad), row_scale
    (N*OH*OW,), row_zero (N*OH*OW,))``: row ``(n, oh, ow)`` of ``patches`` holds the input
    values of that output pixel in ``(cin, kh, kw)`` order (the order of
    ``w.reshape(Cout, -1)``), padding and the columns past ``C*kh*kw`` as the image's zero
    point (they dequantize to 0), and each row inherits its image's scale and zero point.
    Working on the quantized bytes moves a quarter of what a float32 im2col would.
    """
    n, cin, h, w = (int(d) for d in (geo.batch, geo.cin, geo.h, geo.w))
    oh, ow, kh, kw = geo.oh, geo.ow, geo.kh, geo.kw
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    rows, k = n * oh * ow, cin * kh * kw
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                          KERNEL_ATTR: "int8_im2col"})
            q = TB.arg("q", T.Buffer((n, cin * h * w), dot.act_dtype))
            sc = TB.arg("scale", T.Buffer((n,), F32))
            zp = TB.arg("zero", T.Buffer((n,), I32))
            p = TB.arg("patches", T.Buffer((rows, k_pad), dot.act_dtype))
            rs = TB.arg("row_scale", T.Buffer((rows,), F32))
            rz = TB.arg("row_zero", T.Buffer((rows,), I32))
            with T.sblock("root"), T.parallel(0, n * oh) as t, T.serial(0, ow) as x:
                img = TB.bind(t // oh)
                m = TB.bind(t * ow + x)
                z = TB.bind(T.Cast(dot.act_dtype, zp[img]))
                T.buffer_store(rs, sc[img], [m])
                T.buffer_store(rz, zp[img], [m])
                with T.serial(0, cin) as c:
                    for i in range(kh):
                        iy = (t % oh) * sh - ph + i * dh
                        for j in range(kw):
                            ix = x * sw - pw + j * dw
                            inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
                            src = q[img, (c * h + T.max(T.min(iy, h - 1), 0)) * w
                                    + T.max(T.min(ix, w - 1), 0)]
                            T.buffer_store(p, T.Select(inside, src, z),
                                           [m, c * (kh * kw) + i * kw + j])
                with T.serial(k, k_pad) as col:
                    T.buffer_store(p, z, [m, col])
    return ib.get()


def int8_linear_arguments(dot: Dot, rows: int, kq: int, block: tuple[int, int], n: int,
                          nb: int, nnzb: int, dense: bool, bias: bool,
                          activation: str | None, order_lanes: int) -> dict[str, Any]:
    """Declare an int8 linear kernel's attributes and input arguments (inside its
    ``prim_func`` builder): ``q_x, s_x, z_x, w_data, [w_indices, w_indptr, w_order], w_scale,
    w_sum, [bias]`` (see :func:`int8_linear_args`), by name; ``bias`` None when absent."""
    bn, bk = block
    TB.func_attr({
        "tirx.noalias": True, "tirx.is_scheduled": True,
        **kernel_attrs("int8_dense_linear" if dense else "int8_bsr_linear", (bn, bk), rows, n,
                       activation, **{Attr.DOT: dot.name}),
    })
    nbp = nb * bn
    out = {"q_x": TB.arg("q_x", T.Buffer((rows, kq), dot.act_dtype)),
           "s_x": TB.arg("s_x", T.Buffer((rows,), F32)),
           "z_x": TB.arg("z_x", T.Buffer((rows,), I32)),
           "w_data": TB.arg("w_data", T.Buffer((nb if dense else nnzb, -(-bk // 4), bn, 4),
                                               "int8"))}
    if not dense:
        out["w_indices"] = TB.arg("w_indices", T.Buffer((nnzb,), I32))
        out["w_indptr"] = TB.arg("w_indptr", T.Buffer((nb + 1,), I32))
        out["w_order"] = TB.arg("w_order", T.Buffer((order_lanes, nb), I32))
    out["w_scale"] = TB.arg("w_scale", T.Buffer((nbp,), F32))
    out["w_sum"] = TB.arg("w_sum", T.Buffer((nbp,), I32))
    out["bias"] = TB.arg("bias", T.Buffer((nbp,), F32)) if bias else None
    return out


def int8_linear(
    x_shape: tuple,
    n: int,
    block: tuple[int, int],
    nnzb: int,
    dot: Dot,
    *,
    dense: bool = False,
    bias: bool = False,
    activation: str | None = None,
    threads: int = 1,
    tile_rows: int | None = None,
    pixels: int | None = None,
    name: str = "main",
) -> tirx.PrimFunc:
    """``y[..., N] = act(s_x * s_w * (q_x @ q_w.T - z_x * sum_w) + bias)`` on int8 operands.

    ``x_shape`` is the float input's shape (its rows are the quantized activations' rows),
    ``block`` the stored block (``dense``: one block-column spanning K, every block stored),
    ``nnzb`` the stored blocks. Arguments: ``(q_x, s_x, z_x, *int8_linear_args(...), y)``.
    ``pixels``: the rows are a conv's output pixels, ``pixels`` per image, and ``y`` is
    ``(rows / pixels, N, pixels)`` (NCHW) instead of ``(rows, N)``.
    """
    rows = flat_rows(x_shape)
    k = int(x_shape[-1])
    bn, bk = block
    if dense:
        bk = k
    lanes = _lanes(dot, bn)
    nb = -(-n // bn)
    kq = padded_k(k, bk)
    k4 = -(-bk // 4)
    chunk = linear_row_chunk(rows) or rows
    chunks = rows // chunk
    lanes_p = _work_lanes(nb, threads)
    tr = tile_rows or int8_tile_rows(bn, chunk)
    vecs = bn // lanes
    apply_activation(T.float32(0.0), activation)  # validate early
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            a = int8_linear_arguments(dot, rows, kq, (bn, bk), n, nb, nnzb, dense, bias,
                                      activation, lanes_p)
            qx, sx, zx, w, ws, wsum, b = (a[key] for key in ("q_x", "s_x", "z_x", "w_data",
                                                             "w_scale", "w_sum", "bias"))
            ind, ptr, order = a.get("w_indices"), a.get("w_indptr"), a.get("w_order")
            if pixels is None:
                y = TB.arg("y", T.Buffer((*x_shape[:-1], n), F32))
                yf = TB.decl_buffer((rows, n), F32, data=y.data)
            else:
                if rows % pixels:
                    raise ValueError(f"{rows} rows are not whole images of {pixels} pixels")
                yf = TB.arg("y", T.Buffer((rows // pixels, n, pixels), F32))
            # each thread walks the row chunks (its chunk of x stays in its cache) and, per
            # chunk, its share of the block-rows: round-robin when every row costs the same
            # (dense), else the balanced table ``order``
            per = nb if not dense else -(-nb // lanes_p)
            with T.sblock("root"), T.parallel(0, lanes_p) as lane, \
                    T.serial(0, chunks) as c, T.serial(0, per) as o:
                row = o * lanes_p + lane if dense else order[lane, o]
                valid = row < nb if dense else row >= 0
                with T.If(valid):
                    with T.Then():
                        blk = TB.bind(row)
                        m0 = TB.bind(c * chunk)
                        sparse = None if dense else (ind, ptr)
                        with T.serial(0, chunk // tr) as t:
                            _tile(qx, sx, zx, w, ws, wsum, b, yf, blk, m0 + t * tr, tr,
                                  lanes, vecs, bn, bk, k4, n, dot, activation, sparse, pixels)
                        if chunk % tr:  # the ragged last tile
                            _tile(qx, sx, zx, w, ws, wsum, b, yf, blk,
                                  m0 + chunk - chunk % tr, chunk % tr, lanes, vecs, bn, bk,
                                  k4, n, dot, activation, sparse, pixels)
    return ib.get()


def _tile(qx, sx, zx, w, ws, wsum, b, yf, blk, m0, height, lanes, vecs, bn, bk, k4, n, dot,
          activation, sparse, pixels=None) -> None:
    """One register tile: ``height`` rows from ``m0`` x the block-row ``blk`` (stored in
    NCHW when ``pixels`` is set)."""
    acc = TB.alloc_buffer((height, bn), I32)
    for r in range(height):
        for v in range(vecs):
            T.buffer_store(acc, T.broadcast(T.int32(0), lanes), [r, T.ramp(v * lanes, 1, lanes)])

    def step(src, col):  # 4 inputs, from column ``col`` of x, of the stored block ``src``
        for r in range(height):
            a4 = T.reinterpret(I32, qx.vload([m0 + r, col], f"{dot.act_dtype}x4"))
            for v in range(vecs):
                cur = acc.vload([r, v * lanes], f"int32x{lanes}")
                wv = src(v)
                T.buffer_store(acc, dot.emit(cur, a4, wv, lanes),
                               [r, T.ramp(v * lanes, 1, lanes)])

    if sparse is None:  # dense: the reduction walks K in steps of 4, unrolled by 4
        with T.serial(0, k4 // 4) as ko:
            for u in range(4):
                kk = ko * 4 + u
                step(lambda v, kk=kk: w.vload([blk, kk, v * lanes, 0], f"int8x{4 * lanes}"),
                     kk * 4)
        if k4 % 4:
            with T.serial(k4 - k4 % 4, k4) as kk:
                step(lambda v, kk=kk: w.vload([blk, kk, v * lanes, 0], f"int8x{4 * lanes}"),
                     kk * 4)
    else:
        ind, ptr = sparse
        with T.serial(ptr[blk], ptr[blk + 1]) as j:
            base = TB.bind(ind[j] * bk)
            for ko in range(k4):
                step(lambda v, j=j, ko=ko: w.vload([j, ko, v * lanes, 0], f"int8x{4 * lanes}"),
                     base + ko * 4)
    # epilogue: dequantise, bias, activation; the last block-row may be cut at N. The
    # accumulators are copied out with constant indices (so LLVM keeps ``acc`` in registers)
    # and the rows are walked by a loop: one copy of the epilogue code, not one per row
    res = TB.alloc_buffer((height, bn), I32)
    for r in range(height):
        for v in range(vecs):
            T.buffer_store(res, acc.vload([r, v * lanes], f"int32x{lanes}"),
                           [r, T.ramp(v * lanes, 1, lanes)])
    with T.serial(0, height) as r:
        m = m0 + r
        for v in range(vecs):
            n0 = blk * bn + v * lanes
            cols = T.ramp(n0, 1, lanes)
            comp = res.vload([r, v * lanes], f"int32x{lanes}") - \
                T.broadcast(zx[m], lanes) * wsum.vload([n0], f"int32x{lanes}")
            val = T.Cast(f"float32x{lanes}", comp) * \
                (T.broadcast(sx[m], lanes) * ws.vload([n0], f"float32x{lanes}"))
            if b is not None:
                val = val + b.vload([n0], f"float32x{lanes}")
            if pixels is None and n % bn == 0:
                T.buffer_store(yf, val, [m, cols])
                if activation is not None:  # on the stored value, not the expression above
                    T.buffer_store(yf, apply_activation(yf.vload([m, n0], f"float32x{lanes}"),
                                                        activation), [m, cols])
            else:  # lane by lane: outputs cut at N, or one output channel per lane (NCHW)
                tmp = TB.alloc_buffer((lanes,), F32)
                T.buffer_store(tmp, val, [T.ramp(0, 1, lanes)])
                with T.serial(0, lanes) as li:
                    with T.If(n0 + li < n):
                        with T.Then():
                            at = ([m, n0 + li] if pixels is None
                                  else [m // pixels, n0 + li, m % pixels])
                            T.buffer_store(yf, apply_activation(tmp[li], activation), at)
