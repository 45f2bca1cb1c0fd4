"""TensorIR kernel builders: block-sparse and dense linear / conv2d, generated per shape.

Every builder returns an unscheduled :class:`tvm.tirx.PrimFunc` in destination-passing style (the
output is the last parameter, as ``relax.call_tir`` expects) whose ``"tetris.kernel"`` attribute
names the kernel kind; the schedule rules in :mod:`tetris_tvm.schedules.cpu` recognise that
attribute and the block names below.  Unscheduled kernels are already correct (slow): a block-row
with no kept block yields the bias (or 0), never garbage.

Structure shared by all kinds (``NB`` output block-rows of ``bn`` outputs each)::

    [x_pad / im2col]                  zero-padded copy of the input, only when needed
    for nb:                           block "row"   (one output block-row; parallel axis)
        acc = alloc (rows, bn)
        for m, [j], k, i:             block "update" (T.init acc = 0; acc += x * w)
        for m, i:                     block "store"  (y = act(acc + bias))
    [y_slice]                         copy to y when N is not a multiple of bn

``call_tir`` argument order: ``(x, *weight_args, [bias])`` with ``weight_args`` from
:func:`linear_weight_args` / :func:`conv2d_weight_args`; output ``y``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as TB

from ..attr_keys import Attr, kernel_attrs
from .bsr import BSRMatrix

__all__ = [
    "ACTIVATIONS",
    "CONV_KINDS",
    "KERNEL_ATTR",
    "LINEAR_KINDS",
    "Conv2dGeometry",
    "apply_activation",
    "block_sparse_conv2d",
    "block_sparse_linear",
    "conv2d_weight_args",
    "dense_conv2d",
    "dense_linear",
    "linear_weight_args",
    "pack_dense_weight",
    "shape_dims",
    "weight_format",
]

KERNEL_ATTR = Attr.KERNEL
"""PrimFunc attribute naming the kernel kind (``bsr_linear``, ``ell_linear``, ``dense_linear``,
``bsr_conv2d``, ``ell_conv2d``, ``dense_conv2d``)."""

LINEAR_KINDS = ("bsr_linear", "ell_linear", "dense_linear")
"""Kernel kinds of the linear builders (block-sparse CSR-like, ELL-padded, packed dense)."""
CONV_KINDS = ("bsr_conv2d", "ell_conv2d", "dense_conv2d")
"""Kernel kinds of the conv2d builders."""

ACTIVATIONS = (None, "relu", "relu6", "gelu", "gelu_tanh")
"""Fused epilogues: ``relu6`` is ``clip(v, 0, 6)`` (MobileNet), ``gelu`` the erf form (torch
default), ``gelu_tanh`` the tanh form."""

F32 = "float32"
I32 = "int32"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


ROWS_HINT = 128
"""Rows the schedule rules assume for a kernel whose row count is symbolic (dynamic batch)."""

ROW_ALIGN = 24
"""A symbolic row count is computed rounded up to this (every register tile height divides
it); the extra rows read zeros and are not stored."""


def linear_row_chunk(rows: int | tirx.Expr, lo: int = 48, hi: int = 128) -> int | None:
    """Rule table for ``block_sparse_linear(..., row_chunk=)`` on CPU: at 256+ static rows,
    the largest divisor of ``rows`` in ``[lo, hi]`` (None: no chunks).

    Parallel over block-rows, a layer with few of them is unbalanced (MiniLM's 384-wide
    outputs are 12 rows of 32x32 blocks for 2 threads) and every block-row streams all of x
    through the cache.  Parallel over chunks of rows is balanced and keeps a chunk's x in
    L2.  Measured on znver3 at M = 1024 (MiniLM at batch 8), 32x32 blocks, s = 0.5 / 0.75 /
    0.9, fraction of the ideal speedup: 1536->384 0.90 / 0.73 / 0.63 -> 0.91 / 0.85 / 0.85
    (chunks of 128), 384->384 0.91 / 0.76 / 0.71 -> 0.95 / 0.91 / 0.81 (random masks);
    MiniLM's TETRIS plans gain less (layers 0.98-1.38x, the whole model 1.03-1.05x;
    ``benchmarks/row_chunks.py``).  At M = 128 two chunks were mixed (-0.06 to +0.10), so
    smaller row counts keep one chunk.
    """
    if not isinstance(rows, int) or rows < 256:
        return None
    return next((c for c in range(hi, lo - 1, -1) if rows % c == 0), None)


def shape_dims(shape: Sequence) -> tuple:
    """Shape dims as ints; symbolic ones (``tirx.Var`` or expressions) kept."""
    out = []
    for d in shape:
        if isinstance(d, tirx.IntImm):
            d = int(d.value)
        out.append(d if isinstance(d, tirx.Expr) else int(d))
    return tuple(out)


def _product(dims: Sequence) -> int | tirx.Expr:
    """Product of dims: an int when every dim is static."""
    total: int | tirx.Expr = 1
    for d in dims:
        total = total * d
    return total


def _f32(v: float) -> tirx.Expr:
    return tirx.const(v, F32)


# Rational approximation of erf on [-4, 4] (Eigen's float32 coefficients; a few ulps): unlike
# T.erf, which LLVM lowers to a scalar libm call, it vectorises.
_ERF_NUM = (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02,
)
_ERF_DEN = (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
    -7.37332916720468e-03, -1.42647390514189e-02,
)


def _horner(x2: tirx.Expr, coeffs: Sequence[float]) -> tirx.Expr:
    acc = _f32(coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x2 + _f32(c)
    return acc


def fast_erf(v: tirx.Expr) -> tirx.Expr:
    """Vectorisable float32 ``erf`` (rational polynomial, max error a few ulps)."""
    x = T.max(T.min(v, _f32(4.0)), _f32(-4.0))
    x2 = x * x
    return x * _horner(x2, _ERF_NUM) / _horner(x2, _ERF_DEN)


def apply_activation(v: tirx.Expr, activation: str | None) -> tirx.Expr:
    """``activation`` of the float32 value (or vector) ``v``."""
    if activation is None:
        return v
    lanes = int(v.ty.dtype.lanes)

    def c(value: float) -> tirx.Expr:  # a constant of v's lanes
        return _f32(value) if lanes == 1 else T.broadcast(_f32(value), lanes)

    # written as selects that keep NaN (T.max(v, 0) is 0 for NaN; torch's relu is NaN)
    if activation == "relu":
        return T.Select(v < c(0.0), c(0.0), v)
    if activation == "relu6":
        return T.Select(v < c(0.0), c(0.0), T.Select(v > c(6.0), c(6.0), v))
    if activation == "gelu":
        return _f32(0.5) * v * (_f32(1.0) + fast_erf(v * _f32(1.0 / math.sqrt(2.0))))
    if activation == "gelu_tanh":
        inner = _f32(math.sqrt(2.0 / math.pi)) * (v + _f32(0.044715) * v * v * v)
        return _f32(0.5) * v * (_f32(1.0) + T.tanh(inner))
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def weight_format(weight: BSRMatrix, fmt: str = "auto") -> str:
    """Resolve ``fmt`` (``"auto"``, ``"bsr"``, ``"ell"``) for a weight.

    ``auto`` picks the static blocked-ELL form when the matrix is balanced, BSR otherwise.
    """
    if fmt == "auto":
        return "ell" if weight.is_balanced else "bsr"
    if fmt == "ell" and not weight.is_balanced:
        raise ValueError("blocked-ELL needs a balanced matrix (same block count in every row)")
    if fmt not in ("bsr", "ell"):
        raise ValueError(f"unknown format {fmt!r}")
    return fmt


def linear_weight_args(
    weight: BSRMatrix, bias: np.ndarray | None = None, fmt: str = "auto"
) -> list[np.ndarray]:
    """The constant arguments that follow ``x`` in ``call_tir`` for a block-sparse kernel.

    ``bsr``: ``[data (nnzb, bk, bn), indices (nnzb,), indptr (NB+1,)]``;
    ``ell``: ``[data (NB, P, bk, bn), indices (NB, P)]``; then ``bias (N,)`` when given.
    Blocks are transposed (output axis innermost).  Also used by the conv kernels.
    """
    fmt = weight_format(weight, fmt)
    if fmt == "bsr":
        args = [weight.packed_data(), weight.indices.astype(np.int32)]
        args.append(weight.indptr.astype(np.int32))
    else:
        data, indices = weight.to_ell()
        args = [np.ascontiguousarray(data.transpose(0, 1, 3, 2)), indices.astype(np.int32)]
    if bias is not None:
        args.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(weight.shape[0]))
    return args


conv2d_weight_args = linear_weight_args


def pack_dense_weight(w: np.ndarray, block_n: int) -> np.ndarray:
    """Pack a dense ``(N, K)`` weight for the dense kernels: ``(ceil(N/bn), K, bn)``, padded."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = _ceil_div(n, block_n)
    padded = np.zeros((nb * block_n, k), np.float32)
    padded[:n] = w
    return np.ascontiguousarray(padded.reshape(nb, block_n, k).transpose(0, 2, 1))


# ---------------------------------------------------------------------------------------------
# the reduction over one output block-row, shared by linear and conv
# ---------------------------------------------------------------------------------------------
class _Weight:
    """Buffers + index helpers of one weight format inside a kernel being built."""

    def __init__(
        self,
        fmt: str,
        n: int,
        kp: int,
        block: tuple[int, int],
        nnzb: int,
        width: int,
        dtype: str = F32,
    ):
        self.fmt, self.block = fmt, block
        bn, bk = block
        self.nb = _ceil_div(n, bn)
        if fmt == "bsr":
            self.data = TB.arg("w_data", T.Buffer((nnzb, bk, bn), dtype))
            self.indices = TB.arg("w_indices", T.Buffer((nnzb,), I32))
            self.indptr = TB.arg("w_indptr", T.Buffer((self.nb + 1,), I32))
        elif fmt == "ell":
            self.data = TB.arg("w_data", T.Buffer((self.nb, width, bk, bn), dtype))
            self.indices = TB.arg("w_indices", T.Buffer((self.nb, width), I32))
        else:  # dense: (NB, K, bn)
            self.data = TB.arg("w_data", T.Buffer((self.nb, kp, bn), dtype))
        self.width = width

    def row_extent(self, vnb: tirx.Var) -> tirx.Expr | int:
        if self.fmt == "bsr":
            return self.indptr[vnb + 1] - self.indptr[vnb]
        return self.width

    def row_nonempty(self, vnb: tirx.Var) -> tirx.Expr | None:
        if self.fmt == "bsr":
            return self.indptr[vnb + 1] > self.indptr[vnb]
        return None

    def col_base(self, vnb: tirx.Var, vj: tirx.Var) -> tirx.Expr:
        bk = self.block[1]
        if self.fmt == "bsr":
            return self.indices[self.indptr[vnb] + vj] * bk
        return self.indices[vnb, vj] * bk

    def value(self, vnb: tirx.Var, vj: tirx.Var | None, vk: tirx.Var, vi: tirx.Var) -> tirx.Expr:
        if self.fmt == "bsr":
            return self.data[self.indptr[vnb] + vj, vk, vi]
        if self.fmt == "ell":
            return self.data[vnb, vj, vk, vi]
        return self.data[vnb, vk, vi]


def _store_value(acc_val, weight: _Weight, vnb, bias_val, activation):
    nonempty = weight.row_nonempty(vnb)
    if nonempty is not None:  # a block-row without blocks never ran T.init: read 0, not acc
        acc_val = T.if_then_else(nonempty, acc_val, _f32(0.0))
    if bias_val is not None:
        acc_val = acc_val + bias_val
    return apply_activation(acc_val, activation)


def _linear_common(
    kind: str,
    fmt: str,
    x_shape: Sequence[int],
    n: int,
    block: tuple[int, int],
    nnzb: int,
    width: int,
    bias: bool,
    activation: str | None,
    name: str,
    row_chunk: int | None = None,
) -> tirx.PrimFunc:
    # a symbolic dim given as an expression (batch * 32) binds nothing at the kernel's API:
    # the kernel gets its own variable for it, bound from the tensor passed in
    x_shape = tuple(
        tirx.Var(f"n{i}", str(d.ty)) if isinstance(d, tirx.Expr) and not isinstance(d, tirx.Var)
        else d
        for i, d in enumerate(shape_dims(x_shape))
    )
    if len(x_shape) < 1:
        raise ValueError("x must have at least one dimension")
    m = _product(x_shape[:-1])
    k = int(x_shape[-1])
    dynamic = not isinstance(m, int)
    # symbolic rows (dynamic batch): computed rounded up to ROW_ALIGN, so that every register
    # tile height divides them and the hot loop needs no bounds predicate
    mp = tirx.floordiv(m + ROW_ALIGN - 1, ROW_ALIGN) * ROW_ALIGN if dynamic else m
    bn, bk = block
    if row_chunk is not None and (dynamic or row_chunk <= 0 or m % row_chunk):
        raise ValueError(f"row_chunk={row_chunk} must divide the (static) row count {m}")
    chunk = row_chunk if row_chunk is not None and row_chunk < m else None
    mc = chunk or mp  # rows one "row" block computes
    nbk = _ceil_div(k, bk) if fmt != "dense" else 1
    kp = nbk * bk if fmt != "dense" else k
    nb = _ceil_div(n, bn)
    apply_activation(_f32(0.0), activation)  # validate early
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr(
                {
                    **kernel_attrs(kind, (bn, bk), ROWS_HINT if dynamic else m, n, activation),
                    **({Attr.ROW_CHUNK: chunk} if chunk else {}),
                }
            )
            x = TB.arg("x", T.Buffer(x_shape, F32))
            w = _Weight(fmt, n, kp, block, nnzb, width)
            b = TB.arg("bias", T.Buffer((n,), F32)) if bias else None
            y = TB.arg("y", T.Buffer((*x_shape[:-1], n), F32))
            xf = TB.decl_buffer((m, k), F32, data=x.data)
            yf = TB.decl_buffer((m, n), F32, data=y.data)
            src = xf
            if kp != k or dynamic:
                xp = TB.sblock_alloc_buffer((mp, kp), F32)
                with T.grid(mp, kp) as (lm, lk):
                    with T.sblock("x_pad"):
                        vm, vk = T.axis.remap("SS", [lm, lk])
                        inside = tirx.all(vm < m, vk < k) if dynamic else vk < k
                        row = T.min(vm, m - 1) if dynamic else vm  # in bounds however lowered
                        T.buffer_store(
                            xp, T.if_then_else(inside, xf[row, vk], _f32(0.0)), [vm, vk]
                        )
                src = xp
            # N % bn != 0: the last block-row is computed whole into a padded buffer and sliced
            # afterwards (a predicate on "store" is lost by reverse_compute_at in TVM 0.27)
            dst = yf if n % bn == 0 and not dynamic else TB.sblock_alloc_buffer((mp, nb * bn), F32)
            with T.grid(*([mp // mc] if chunk else []), nb) as outer:
                with T.sblock("row"):
                    if chunk:  # row chunks outermost: a chunk's x stays in cache across rows
                        vc = T.axis.spatial(mp // mc, outer[0])
                        vnb = T.axis.spatial(nb, outer[1])
                        m0 = vc * mc
                    else:
                        vnb = T.axis.spatial(nb, outer)
                        m0 = 0
                    acc = TB.sblock_alloc_buffer((mc, bn), F32)
                    has_update = fmt != "ell" or width > 0
                    if fmt == "dense":
                        with T.grid(mc, k, bn) as (lm, lk, li):
                            with T.sblock("update"):
                                vm, vk, vi = T.axis.remap("SRS", [lm, lk, li])
                                with T.init():
                                    T.buffer_store(acc, _f32(0.0), [vm, vi])
                                T.buffer_store(
                                    acc,
                                    acc[vm, vi] + src[m0 + vm, vk] * w.value(vnb, None, vk, vi),
                                    [vm, vi],
                                )
                    elif has_update:
                        with T.grid(mc, w.row_extent(vnb), bk, bn) as (lm, lj, lk, li):
                            with T.sblock("update"):
                                vm, vj, vk, vi = T.axis.remap("SRRS", [lm, lj, lk, li])
                                with T.init():
                                    T.buffer_store(acc, _f32(0.0), [vm, vi])
                                xv = src[m0 + vm, w.col_base(vnb, vj) + vk]
                                T.buffer_store(
                                    acc, acc[vm, vi] + xv * w.value(vnb, vj, vk, vi), [vm, vi]
                                )
                    with T.grid(mc, bn) as (lm, li):
                        with T.sblock("store"):
                            vm, vi = T.axis.remap("SS", [lm, li])
                            acc_val = acc[vm, vi] if has_update else _f32(0.0)
                            bias_val = b[vnb * bn + vi] if b is not None else None
                            T.buffer_store(
                                dst,
                                _store_value(acc_val, w, vnb, bias_val, activation),
                                [m0 + vm, vnb * bn + vi],
                            )
            if dst is not yf:
                with T.grid(m, n) as (lm, ln):
                    with T.sblock("y_slice"):
                        vm, vn = T.axis.remap("SS", [lm, ln])
                        T.buffer_store(yf, dst[vm, vn], [vm, vn])
    return ib.get()


def block_sparse_linear(
    x_shape: Sequence[int],
    weight: BSRMatrix,
    *,
    bias: bool = False,
    activation: str | None = None,
    fmt: str = "auto",
    name: str = "main",
    row_chunk: int | None = None,
) -> tirx.PrimFunc:
    """``y[..., N] = act(x[..., K] @ W.T + bias)`` with ``W`` block-sparse.

    Parameters: ``x_shape`` is the full input shape (leading batch dims allowed, last = K);
    ``weight`` gives the structure sizes (nnzb, blocks per row); its values are runtime
    arguments, so one PrimFunc serves any weight with the same structure sizes.
    ``bias`` adds a ``bias (N,)`` parameter; ``activation`` in :data:`ACTIVATIONS`;
    ``fmt``: ``"bsr"`` (indptr-driven loops), ``"ell"`` (static, balanced weights only) or
    ``"auto"``.  ``row_chunk`` (a divisor of the static row count, see
    :func:`linear_row_chunk`) makes the outer loops (row chunk, block-row) instead of
    (block-row): a CPU schedule then runs chunks in parallel, balanced whatever the kept
    blocks per block-row.  Arguments: ``(x, *linear_weight_args(weight, bias, fmt), y)``.
    """
    if int(x_shape[-1]) != weight.shape[1]:
        raise ValueError(f"x has K={x_shape[-1]} but the weight is {weight.shape}")
    fmt = weight_format(weight, fmt)
    width = weight.ell_width if fmt == "ell" else 0
    return _linear_common(
        f"{fmt}_linear", fmt, x_shape, weight.shape[0], weight.block, weight.nnzb, width,
        bias, activation, name, row_chunk,
    )


def dense_linear(
    x_shape: Sequence[int],
    n: int,
    *,
    block_n: int = 16,
    bias: bool = False,
    activation: str | None = None,
    name: str = "main",
) -> tirx.PrimFunc:
    """Dense ``y[..., N] = act(x[..., K] @ W.T + bias)`` with ``W`` pre-packed.

    Arguments: ``(x, pack_dense_weight(W, block_n), [bias], y)``; ``block_n`` is the
    vectorised output tile (16 or 32 suit AVX2).
    """
    k = int(x_shape[-1])
    return _linear_common(
        "dense_linear", "dense", x_shape, n, (block_n, k), 0, 0, bias, activation, name
    )


# ---------------------------------------------------------------------------------------------
# conv2d (NCHW, groups=1) as a GEMM with the weight on the left: y[n] (Cout, P) = W @ col[n]
# ---------------------------------------------------------------------------------------------
class Conv2dGeometry:
    """Shapes of an NCHW conv2d (torch semantics for stride, padding, dilation)."""

    def __init__(
        self,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ):
        def pair(v):
            return (int(v), int(v)) if isinstance(v, int | np.integer) else tuple(int(a) for a in v)

        batch, self.cin, self.h, self.w = shape_dims(x_shape)
        self.batch = batch  # an int, or symbolic (dynamic batch)
        self.cout, cin_w, self.kh, self.kw = (int(d) for d in w_shape)
        if cin_w != self.cin:
            raise ValueError(f"weight has Cin={cin_w}, input has {self.cin} (groups=1 only)")
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        sh, sw = self.stride
        ph, pw = self.padding
        dh, dw = self.dilation
        self.oh = (self.h + 2 * ph - dh * (self.kh - 1) - 1) // sh + 1
        self.ow = (self.w + 2 * pw - dw * (self.kw - 1) - 1) // sw + 1
        if self.oh <= 0 or self.ow <= 0:
            raise ValueError("empty conv output")

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """``(N, Cout, OH, OW)``."""
        return (self.batch, self.cout, self.oh, self.ow)

    @property
    def is_pointwise(self) -> bool:
        """1x1, stride 1, no padding: the input itself is the GEMM operand."""
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0))

    @property
    def gemm_k(self) -> int:
        """``Cin * kh * kw`` (K ordered (cin, kh, kw) as in ``w.reshape(Cout, -1)``)."""
        return self.cin * self.kh * self.kw


COLUMN_MULTIPLE = 32
"""Implicit-GEMM convs compute their columns in multiples of this: two AVX-512 vectors (the
widest CPU pixel tile), four AVX2 ones, so no target's vectorised pixel loop has a ragged,
predicated (hence scalarised) tail."""


def conv_mode(geo: Conv2dGeometry, bi: int | None) -> str:
    """How the conv kernel reads its GEMM operand.

    ``direct``: pointwise conv with a multiple of :data:`COLUMN_MULTIPLE` pixels, the input is
    the operand; ``implicit``: stride 1, the operand is
    read in place from a zero-padded copy of the input (flat index ``oh * Wp + ow`` plus a
    constant per (kh, kw) tap, so it stays contiguous; the ``Wp - OW`` extra columns per row are
    computed and dropped); ``im2col``: strided convs materialise the operand per image.
    ``bi`` is the weight's input-channel block (None for dense).
    """
    if (geo.is_pointwise and (bi is None or geo.cin % bi == 0)
            and (geo.oh * geo.ow) % COLUMN_MULTIPLE == 0):
        return "direct"
    if geo.stride == (1, 1):
        return "implicit"
    return "im2col"


def pixel_chunks(columns: int, work_items: int) -> int:
    """Chunks to cut each image's GEMM columns into, so a conv has parallel work to share.

    A conv with few output block-rows (batch 1, 128 channels in 32-row blocks: 4 items) left
    threads idle, worse at high sparsity where one block-row may hold all kept blocks.  Aim for
    16 work items of at least 256 columns each; batch x block-rows >= 16 needs no chunks.
    """
    return max(1, min(columns // 256, _ceil_div(16, max(1, work_items))))


def _conv_common(
    kind: str,
    fmt: str,
    geo: Conv2dGeometry,
    block: tuple[int, int],
    nnzb: int,
    width: int,
    bias: bool,
    activation: str | None,
    name: str,
    dtype: str = F32,
) -> tirx.PrimFunc:
    """The conv kernels; ``dtype`` is the operand type (input, weight, bias, output and the
    padded / im2col copies); the accumulator and the epilogue are float32."""
    bn, bk = block
    kk = geo.kh * geo.kw

    def f32(v: tirx.Expr) -> tirx.Expr:
        return v if dtype == F32 else T.Cast(F32, v)

    zero = tirx.const(0.0, dtype)
    k = geo.gemm_k
    p = geo.oh * geo.ow
    sparse = fmt != "dense"
    bi = bk // kk if sparse else None
    nbk = _ceil_div(k, bk) if sparse else 1
    kp = nbk * bk if sparse else k
    cin_p = kp // kk
    nb = _ceil_div(geo.cout, bn)
    nbatch = geo.batch
    sh, sw = geo.stride
    ph, pw = geo.padding
    dh, dw = geo.dilation
    hp, wp = geo.h + 2 * ph, geo.w + 2 * pw
    mode = conv_mode(geo, bi)
    # GEMM columns actually computed. Implicit mode rounds them up to a multiple of 16 so the
    # vectorised pixel loop has no ragged (predicated, hence scalarised) tail: a 7x7 map has
    # 63 columns, and its sparse conv ran 5x slower than dense before this.
    q = _ceil_div(geo.oh * wp, COLUMN_MULTIPLE) * COLUMN_MULTIPLE if mode == "implicit" else p
    # implicit mode may also cut the columns into chunks, each a parallel work item
    images = geo.batch if isinstance(geo.batch, int) else 1  # a dynamic batch may be 1
    pc = pixel_chunks(q, images * nb) if mode == "implicit" else 1
    q = _ceil_div(q, COLUMN_MULTIPLE * pc) * COLUMN_MULTIPLE * pc if pc > 1 else q
    qc = q // pc
    # rows of the padded input: every tap of every computed column must stay in bounds
    pad_rows = max(hp + 1, _ceil_div(q + (geo.kh - 1) * dh * wp + (geo.kw - 1) * dw, wp))
    apply_activation(_f32(0.0), activation)
    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr(
                {
                    # rows: the GEMM columns of one work item
                    **kernel_attrs(kind, (bn, bk), qc, geo.cout, activation),
                    Attr.CONV_MODE: mode,
                    Attr.PIXEL_CHUNKS: pc,
                    **({} if dtype == F32 else {Attr.DTYPE: dtype}),
                }
            )
            x = TB.arg("x", T.Buffer((nbatch, geo.cin, geo.h, geo.w), dtype))
            w = _Weight(fmt, geo.cout, kp, block, nnzb, width, dtype)
            b = TB.arg("bias", T.Buffer((geo.cout,), dtype)) if bias else None
            y = TB.arg("y", T.Buffer(geo.out_shape, dtype))
            yf = TB.decl_buffer((nbatch, geo.cout, p), dtype, data=y.data)
            if mode == "direct":
                col = TB.decl_buffer((nbatch, k, p), dtype, data=x.data)
            elif mode == "implicit":
                # one extra zero row so the taps of the dropped columns stay in bounds
                xp = TB.sblock_alloc_buffer((nbatch, cin_p, pad_rows * wp), dtype)
                with T.grid(nbatch, cin_p, pad_rows, wp) as (ln, lc, lh, lw):
                    with T.sblock("x_pad"):
                        vn, vc, vh, vw = T.axis.remap("SSSS", [ln, lc, lh, lw])
                        ih, iw = vh - ph, vw - pw
                        inside = tirx.all(vc < geo.cin, ih >= 0, ih < geo.h, iw >= 0, iw < geo.w)
                        T.buffer_store(
                            xp,
                            T.if_then_else(inside, x[vn, vc, ih, iw], zero),
                            [vn, vc, vh * wp + vw],
                        )
            else:
                col = TB.sblock_alloc_buffer((nbatch, kp, p), dtype)
                with T.grid(nbatch, kp, geo.oh, geo.ow) as (ln, lk, lh, lw):
                    with T.sblock("im2col"):
                        vn, vk, voh, vow = T.axis.remap("SSSS", [ln, lk, lh, lw])
                        c = vk // kk
                        r = vk % kk // geo.kw
                        s = vk % geo.kw
                        ih = voh * sh - ph + r * dh
                        iw = vow * sw - pw + s * dw
                        inside = tirx.all(vk < k, ih >= 0, ih < geo.h, iw >= 0, iw < geo.w)
                        T.buffer_store(
                            col,
                            T.if_then_else(inside, x[vn, c, ih, iw], zero),
                            [vn, vk, voh * geo.ow + vow],
                        )
            if mode == "implicit" or geo.cout % bn:
                dst = TB.sblock_alloc_buffer((nbatch, nb * bn, q), dtype)
            else:
                dst = yf
            # chunks outermost: a block-row's chunks land on different threads
            with T.grid(pc, nbatch, nb) as (lpc, ln, lnb):
                with T.sblock("row"):
                    vpc, vn, vnb = T.axis.remap("SSS", [lpc, ln, lnb])
                    q0 = vpc * qc  # first column of this chunk
                    acc = TB.sblock_alloc_buffer((bn, qc), F32)
                    has_update = fmt != "ell" or width > 0
                    if has_update and mode == "implicit":
                        if sparse:
                            red_ext = [w.row_extent(vnb), bi, geo.kh, geo.kw]
                        else:
                            red_ext = [geo.cin, geo.kh, geo.kw]
                        with T.grid(bn, qc, *red_ext) as loops:
                            with T.sblock("update"):
                                vi, vq, *vred = T.axis.remap("SS" + "R" * len(red_ext), loops)
                                if sparse:
                                    vj, vci, vr, vs = vred
                                    c = w.col_base(vnb, vj) // kk + vci
                                    wv = w.value(vnb, vj, vci * kk + vr * geo.kw + vs, vi)
                                else:
                                    vc, vr, vs = vred
                                    c = vc
                                    wv = w.value(vnb, None, vc * kk + vr * geo.kw + vs, vi)
                                with T.init():
                                    T.buffer_store(acc, _f32(0.0), [vi, vq])
                                xv = xp[vn, c, q0 + vq + vr * dh * wp + vs * dw]
                                T.buffer_store(acc, acc[vi, vq] + f32(wv) * f32(xv), [vi, vq])
                    elif has_update and sparse:
                        with T.grid(bn, qc, w.row_extent(vnb), bk) as (li, lp, lj, lk):
                            with T.sblock("update"):
                                vi, vp, vj, vk = T.axis.remap("SSRR", [li, lp, lj, lk])
                                with T.init():
                                    T.buffer_store(acc, _f32(0.0), [vi, vp])
                                cv = col[vn, w.col_base(vnb, vj) + vk, q0 + vp]
                                wv = w.value(vnb, vj, vk, vi)
                                T.buffer_store(acc, acc[vi, vp] + f32(wv) * f32(cv), [vi, vp])
                    elif has_update:
                        with T.grid(bn, qc, k) as (li, lp, lk):
                            with T.sblock("update"):
                                vi, vp, vk = T.axis.remap("SSR", [li, lp, lk])
                                with T.init():
                                    T.buffer_store(acc, _f32(0.0), [vi, vp])
                                wv = w.value(vnb, None, vk, vi)
                                cv = col[vn, vk, q0 + vp]
                                T.buffer_store(acc, acc[vi, vp] + f32(wv) * f32(cv), [vi, vp])
                    with T.grid(bn, qc) as (li, lp):
                        with T.sblock("store"):
                            vi, vp = T.axis.remap("SS", [li, lp])
                            acc_val = acc[vi, vp] if has_update else _f32(0.0)
                            bias_val = f32(b[vnb * bn + vi]) if b is not None else None
                            value = _store_value(acc_val, w, vnb, bias_val, activation)
                            T.buffer_store(
                                dst,
                                value if dtype == F32 else T.Cast(dtype, value),
                                [vn, vnb * bn + vi, q0 + vp],
                            )
            if dst is not yf:
                with T.grid(nbatch, geo.cout, geo.oh, geo.ow) as (ln, lc, lh, lw):
                    with T.sblock("y_slice"):
                        vn, vc, vh, vw = T.axis.remap("SSSS", [ln, lc, lh, lw])
                        row_len = wp if mode == "implicit" else geo.ow
                        T.buffer_store(
                            yf, dst[vn, vc, vh * row_len + vw], [vn, vc, vh * geo.ow + vw]
                        )
    return ib.get()


def block_sparse_conv2d(
    x_shape: Sequence[int],
    weight: BSRMatrix,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    bias: bool = False,
    activation: str | None = None,
    fmt: str = "auto",
    name: str = "main",
    dtype: str = F32,
) -> tirx.PrimFunc:
    """Block-sparse NCHW conv2d (groups=1), torch semantics.

    ``weight`` is the BSR form of ``w.reshape(Cout, Cin * kh * kw)`` with blocks
    ``(bo, bi * kh * kw)`` (a whole kh x kw window inside each block); ``kernel_size`` gives
    ``(kh, kw)``.  Arguments: ``(x, *conv2d_weight_args(weight, bias, fmt), y)``.
    ``dtype="float16"`` / ``"bfloat16"``: input, weight, bias and output in that type (the
    weight arrays cast, e.g. by :func:`~tetris_tvm.schedules.cuda.half_weight_args`), float32
    accumulation; the PrimFunc then carries ``"tetris.dtype"``.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    cout, k = weight.shape
    if k % (kh * kw) or weight.block[1] % (kh * kw):
        raise ValueError("weight K and block K must be multiples of kh * kw")
    geo = Conv2dGeometry(x_shape, (cout, k // (kh * kw), kh, kw), stride, padding, dilation)
    fmt = weight_format(weight, fmt)
    width = weight.ell_width if fmt == "ell" else 0
    return _conv_common(
        f"{fmt}_conv2d", fmt, geo, weight.block, weight.nnzb, width, bias, activation, name,
        dtype,
    )


def dense_conv2d(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    block_n: int = 16,
    bias: bool = False,
    activation: str | None = None,
    name: str = "main",
) -> tirx.PrimFunc:
    """Dense NCHW conv2d with the same GEMM structure as the block-sparse one.

    Arguments: ``(x, pack_dense_weight(w.reshape(Cout, -1), block_n), [bias], y)``.
    """
    geo = Conv2dGeometry(x_shape, w_shape, stride, padding, dilation)
    return _conv_common(
        "dense_conv2d", "dense", geo, (block_n, geo.gemm_k), 0, 0, bias, activation, name
    )
