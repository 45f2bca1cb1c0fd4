"""Fused scaled-dot-product attention for CPUs: ``softmax(q k^T * scale + bias) v`` per head.

Written out op by op (what torch's decomposition gives), attention costs a transformer as much
as its linears once those are pruned or quantized: the ``(batch, heads, seq, seq)`` scores are
written, re-read for the mask, the softmax and its NaN guard, and re-read for the second matmul,
and q, k, v and the output are each transposed between ``(batch, seq, heads, dim)`` and
``(batch, heads, seq, dim)``. This kernel reads q, k and v in the layout the linears write
(``(batch, seq, heads, dim)``, no transposes), keeps a tile of query rows' scores in a small
buffer (they stay in L1) and writes the output in the layout the next linear reads.

Per (batch, head), in parallel: ``k`` is copied transposed into a ``(dim, kv_len)`` buffer; then
per tile of query rows: the scores as register tiles (rows x 16-wide vectors of keys, ``dim``
innermost), scale + bias + row max, ``exp`` (a vectorisable polynomial), row sum, and the output
rows as register tiles over ``v``. Rows whose every score is ``-inf`` (fully masked) give 0, as
torch's ``scaled_dot_product_attention`` does.

The kernel comes scheduled (``tirx.is_scheduled``): vector widths are chosen so that every
vector divides the key length and the value dim (down to scalar code for odd sizes).
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as TB

from ..attr_keys import Attr
from ..quantization import int8_attention_sizes_fit
from .int8 import Dot

__all__ = ["attention", "attention_int8", "bias_broadcasts", "fast_exp", "int8_attention_fits"]

F32 = "float32"
ROW_TILE = 8  # query rows per register tile
MAX_VECS = 2  # vectors per register-tile row (ROW_TILE x MAX_VECS accumulators)

# exp(x) = 2^n * exp(f), |f| <= ln2 / 2: Cephes' float32 polynomial (as in topi.fast_exp)
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)
_EXP_HI, _EXP_LO = 88.3762626647950, -88.3762626647949


def _c(value: float, lanes: int) -> tirx.PrimExpr:
    return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """Vectorisable float32 ``exp`` (a few ulps; inputs below -88.38, ``-inf`` included, give
    exactly 0): LLVM lowers ``T.exp`` on vectors to scalar libm calls."""
    lanes = int(x.ty.dtype.lanes)
    x = T.max(T.min(x, _c(_EXP_HI, lanes)), _c(_EXP_LO, lanes))
    n = T.floor(x * _c(1.0 / math.log(2.0), lanes) + _c(0.5, lanes))
    f = x - n * _c(math.log(2.0), lanes)
    p = _c(_EXP_POLY[0], lanes)
    for coef in _EXP_POLY[1:]:
        p = p * f + _c(coef, lanes)
    y = p * f * f + f + _c(1.0, lanes)
    ity = "int32" if lanes == 1 else f"int32x{lanes}"
    bits = T.shift_left(T.Cast(ity, n + _c(127.0, lanes)),
                        T.int32(23) if lanes == 1 else T.broadcast(T.int32(23), lanes))
    return T.reinterpret(F32 if lanes == 1 else f"float32x{lanes}", bits) * y


def _lanes(extent: int) -> int:
    """The widest vector (16, 8, 4 or 1 floats) that divides ``extent``."""
    return next(w for w in (16, 8, 4, 1) if extent % w == 0)


def _group(vecs: int) -> int:
    """Vectors per register-tile row: the largest divisor of ``vecs`` up to MAX_VECS."""
    return next(g for g in range(min(MAX_VECS, vecs), 0, -1) if vecs % g == 0)


def attention(
    q_shape: tuple[int, int, int, int],
    kv_len: int,
    v_dim: int,
    *,
    scale: float | None = None,
    bias_shape: tuple[int, int, int, int] | None = None,
    name: str = "main",
) -> tirx.PrimFunc:
    """``out[b, i, h, :] = softmax_j(scale * q[b, i, h] . k[b, j, h] + bias[b, h, i, j]) @
    v[b, :, h, :]``.

    ``q_shape`` is ``(batch, seq, heads, dim)``; k is ``(batch, kv_len, heads, dim)``, v
    ``(batch, kv_len, heads, v_dim)``, the output ``(batch, seq, heads, v_dim)``; ``bias``
    (additive, ``-inf`` masks) has a shape that broadcasts to ``(batch, heads, seq, kv_len)``.
    ``scale`` defaults to ``1 / sqrt(dim)``. Arguments: ``(q, k, v, [bias], out)``.
    """
    (batch, seq, heads, dim), kv_len, v_dim, bias_shape, scale = _checked(
        q_shape, kv_len, v_dim, bias_shape, scale)
    kl, vl = _lanes(kv_len), _lanes(v_dim)
    k_vecs, v_vecs = kv_len // kl, v_dim // vl
    kg, vg = _group(k_vecs), _group(v_vecs)
    rt = min(ROW_TILE, seq)

    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                          Attr.KERNEL: "attention"})
            q, k, v, bias, out = _arguments((batch, seq, heads, dim), kv_len, v_dim,
                                            bias_shape)
            with T.sblock("root"), T.parallel(0, batch * heads) as bh:
                b = TB.bind(bh // heads)
                h = TB.bind(bh % heads)
                kt = TB.alloc_buffer((dim, kv_len), F32)
                with T.serial(0, kv_len) as j, T.serial(0, dim) as d:
                    T.buffer_store(kt, k[b, j, h, d], [d, j])
                scores = TB.alloc_buffer((rt, kv_len), F32)
                inv = TB.alloc_buffer((rt,), F32)
                ctx = _Ctx(q, kt, v, bias, out, scores, inv, b, h, dim, kv_len, v_dim, kl, vl,
                           kg, vg, scale)
                _each_row_tile(seq, rt, lambda i0, height: _rows(ctx, i0, height))
    return ib.get()


def bias_broadcasts(bias_shape: tuple[int, ...], full: tuple[int, int, int, int]) -> bool:
    """Whether an additive bias of ``bias_shape`` broadcasts to ``full`` = ``(batch, heads,
    seq, kv_len)`` the way the kernels index it (4-D, each axis 1 or full)."""
    return len(bias_shape) == 4 and all(d in (1, f) for d, f in zip(bias_shape, full,
                                                                         strict=True))


def _checked(q_shape, kv_len, v_dim, bias_shape, scale):
    """The sizes as ints, checked: ``((batch, seq, heads, dim), kv_len, v_dim, bias_shape,
    scale)`` with the default scale ``1 / sqrt(dim)``."""
    batch, seq, heads, dim = (int(d) for d in q_shape)
    kv_len, v_dim = int(kv_len), int(v_dim)
    if min(batch, seq, heads, dim, kv_len, v_dim) < 1:
        raise ValueError(f"attention needs positive sizes, got q {q_shape}, kv_len {kv_len}, "
                         f"v_dim {v_dim}")
    if bias_shape is not None:
        bias_shape = tuple(int(d) for d in bias_shape)
        full = (batch, heads, seq, kv_len)
        if not bias_broadcasts(bias_shape, full):
            raise ValueError(f"bias shape {bias_shape} does not broadcast to {full}")
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    return (batch, seq, heads, dim), kv_len, v_dim, bias_shape, scale


def _arguments(q_shape, kv_len: int, v_dim: int, bias_shape):
    """The kernel's buffers ``(q, k, v, bias or None, out)``, declared as its arguments."""
    batch, seq, heads, dim = q_shape
    q = TB.arg("q", T.Buffer((batch, seq, heads, dim), F32))
    k = TB.arg("k", T.Buffer((batch, kv_len, heads, dim), F32))
    v = TB.arg("v", T.Buffer((batch, kv_len, heads, v_dim), F32))
    bias = TB.arg("bias", T.Buffer(bias_shape, F32)) if bias_shape else None
    out = TB.arg("out", T.Buffer((batch, seq, heads, v_dim), F32))
    return q, k, v, bias, out


def _each_row_tile(seq: int, rt: int, rows) -> None:
    """``rows(i0, height)`` for every tile of ``rt`` query rows, then the ragged last one."""
    with T.serial(0, seq // rt) as t:
        rows(t * rt, rt)
    if seq % rt:
        rows(seq - seq % rt, seq % rt)


class _Ctx:
    """What one (batch, head) task's tiles read and write."""

    def __init__(self, q, kt, v, bias, out, scores, inv, b, h, dim, kv_len, v_dim, kl, vl, kg,
                 vg, scale):
        self.q, self.kt, self.v, self.bias, self.out = q, kt, v, bias, out
        self.scores, self.inv, self.b, self.h = scores, inv, b, h
        self.dim, self.kv_len, self.v_dim = dim, kv_len, v_dim
        self.kl, self.vl, self.kg, self.vg, self.scale = kl, vl, kg, vg, scale

    def bias_at(self, i, j, lanes: int):
        """``bias[b, h, i, j:j+lanes]`` with the broadcast axes pinned at 0."""
        shape = self.bias.shape
        idx = [self.b if int(shape[0]) > 1 else 0, self.h if int(shape[1]) > 1 else 0,
               i if int(shape[2]) > 1 else 0]
        if int(shape[3]) == 1:
            return _bcast(self.bias[idx[0], idx[1], idx[2], 0], lanes)
        if lanes == 1:
            return self.bias[idx[0], idx[1], idx[2], j]
        return self.bias.vload([idx[0], idx[1], idx[2], j], f"float32x{lanes}")


def _bcast(x, lanes: int):
    return x if lanes == 1 else T.broadcast(x, lanes)


def _vtype(lanes: int) -> str:
    return F32 if lanes == 1 else f"float32x{lanes}"


def _load(buf, idx, lanes: int):
    return buf[tuple(idx)] if lanes == 1 else buf.vload(list(idx), _vtype(lanes))


def _store(buf, value, idx, lanes: int) -> None:
    idx = list(idx)
    if lanes > 1:
        idx[-1] = T.ramp(idx[-1], 1, lanes)
    T.buffer_store(buf, value, idx)


def _running_max(height: int, kl: int):
    """Per query row, a vector of ``kl`` running maxima of its scores, all ``-inf``."""
    row_max = TB.alloc_buffer((height, kl), F32)
    for r in range(height):
        _store(row_max, _c(-math.inf, kl), [r, 0], kl)
    return row_max


def _store_score(c: _Ctx, s, i0, r: int, j, row_max) -> None:
    """Row ``r``'s scores ``s`` at keys ``j..j+kl`` (bias added) stored, its running max
    updated (from the stored value: an expression would be recomputed)."""
    kl = c.kl
    if c.bias is not None:
        s = s + c.bias_at(i0 + r, j, kl)
    _store(c.scores, s, [r, j], kl)
    _store(row_max, T.max(_load(row_max, [r, 0], kl), _load(c.scores, [r, j], kl)), [r, 0], kl)


def _row_shift(row_max, r, kl: int):
    """Row ``r``'s max score, the softmax's shift (0 for a fully masked row, all ``-inf``)."""
    with T.serial(1, kl) as li:
        T.buffer_store(row_max, T.max(row_max[r, 0], row_max[r, li]), [r, 0])
    top = TB.bind(row_max[r, 0])
    return TB.bind(T.Select(top == T.float32(-math.inf), T.float32(0.0), top))


def _store_inverse_sum(c: _Ctx, total, r, kl: int, numerator: float) -> None:
    """``inv[r] = numerator / sum`` of the ``kl`` partial sums (0 when the sum is 0)."""
    with T.serial(1, kl) as li:
        T.buffer_store(total, total[0] + total[li], [0])
    T.buffer_store(c.inv, T.Select(total[0] > T.float32(0.0),
                                   T.float32(numerator) / total[0], T.float32(0.0)), [r])


def _rows(c: _Ctx, i0, height: int) -> None:
    """``height`` query rows from ``i0``: scores, softmax, output."""
    kl, vl = c.kl, c.vl
    # 1. scores: register tiles of (height rows) x (kg vectors of kl keys), dim innermost;
    # stored scaled and biased, with a running max per row (one vector of kl lanes)
    width = c.kg * kl
    row_max = _running_max(height, kl)
    with T.serial(0, c.kv_len // width) as jc:
        acc = TB.alloc_buffer((height, width), F32)
        for r in range(height):
            for g in range(c.kg):
                _store(acc, _c(0.0, kl), [r, g * kl], kl)
        with T.serial(0, c.dim) as d:
            for r in range(height):
                qd = _bcast(c.q[c.b, i0 + r, c.h, d], kl)
                for g in range(c.kg):
                    kv = _load(c.kt, [d, jc * width + g * kl], kl)
                    _store(acc, _load(acc, [r, g * kl], kl) + qd * kv, [r, g * kl], kl)
        for r in range(height):
            for g in range(c.kg):
                j = jc * width + g * kl
                _store_score(c, _load(acc, [r, g * kl], kl) * _c(c.scale, kl), i0, r, j,
                             row_max)
    # 2. softmax per row: exp, sum; a fully masked row gives 0
    with T.serial(0, height) as r:
        shift = _row_shift(row_max, r, kl)
        total = TB.alloc_buffer((kl,), F32)
        _store(total, _c(0.0, kl), [0], kl)
        with T.serial(0, c.kv_len // kl) as jv:
            e = fast_exp(_load(c.scores, [r, jv * kl], kl) - _bcast(shift, kl))
            _store(c.scores, e, [r, jv * kl], kl)
            _store(total, _load(total, [0], kl) + _load(c.scores, [r, jv * kl], kl), [0], kl)
        _store_inverse_sum(c, total, r, kl, 1.0)
    # 3. output: register tiles of (height rows) x (vg vectors of vl values), keys innermost
    width = c.vg * vl
    with T.serial(0, c.v_dim // width) as dc:
        acc = TB.alloc_buffer((height, width), F32)
        for r in range(height):
            for g in range(c.vg):
                _store(acc, _c(0.0, vl), [r, g * vl], vl)
        with T.serial(0, c.kv_len) as j:
            for r in range(height):
                p = _bcast(c.scores[r, j], vl)
                for g in range(c.vg):
                    vv = _load(c.v, [c.b, j, c.h, dc * width + g * vl], vl)
                    _store(acc, _load(acc, [r, g * vl], vl) + p * vv, [r, g * vl], vl)
        for r in range(height):
            for g in range(c.vg):
                _store(c.out, _load(acc, [r, g * vl], vl) * _bcast(c.inv[r], vl),
                       [c.b, i0 + r, c.h, dc * width + g * vl], vl)


# ---------------------------------------------------------------------------------------------
# int8: both matmuls on the target's int8 dot-product instruction


def int8_attention_fits(dim: int, kv_len: int, v_dim: int, dot: Dot) -> bool:
    """Whether :func:`attention_int8` takes these sizes with ``dot``
    (:func:`tetris_tvm.quantization.int8_attention_sizes_fit`, which the reference follows)."""
    return int8_attention_sizes_fit(dim, kv_len, v_dim, dot.widths)


def attention_int8(
    q_shape: tuple[int, int, int, int],
    kv_len: int,
    v_dim: int,
    dot: Dot,
    *,
    scale: float | None = None,
    bias_shape: tuple[int, int, int, int] | None = None,
    name: str = "main",
) -> tirx.PrimFunc:
    """:func:`attention` (same arguments and result) with both matmuls in int8.

    Per (batch, head): each key row is quantized symmetrically to int8 (its own scale), each
    value column (over the keys) likewise, each query row asymmetrically to the dot's
    activation range; ``exp(s - max)`` (in [0, 1]) is quantized with the fixed scale
    ``1 / qmax`` and the row's ``1 / sum`` is applied to the int32 result. Scores, softmax
    and the output stay float32. ``int8_attention_fits`` says which sizes it takes.
    """
    (batch, seq, heads, dim), kv_len, v_dim, bias_shape, scale = _checked(
        q_shape, kv_len, v_dim, bias_shape, scale)
    if not int8_attention_fits(dim, kv_len, v_dim, dot):
        raise ValueError(f"int8 attention needs dim and kv_len in multiples of 4 and a lane "
                         f"count of {dot.name} dividing kv_len and v_dim, got dim {dim}, "
                         f"kv_len {kv_len}, v_dim {v_dim}")
    kl = next(w for w in dot.widths if kv_len % w == 0)
    vl = next(w for w in dot.widths if v_dim % w == 0)
    kg, vg = _group(kv_len // kl), _group(v_dim // vl)
    rt = min(ROW_TILE, seq)
    d4, t4 = dim // 4, kv_len // 4

    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name(name)
            TB.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                          Attr.KERNEL: "attention", Attr.DOT: dot.name})
            q, k, v, bias, out = _arguments((batch, seq, heads, dim), kv_len, v_dim, bias_shape)
            with T.sblock("root"), T.parallel(0, batch * heads) as bh:
                b = TB.bind(bh // heads)
                h = TB.bind(bh % heads)
                # keys: int8 per row, as words of 4 dims: (dim / 4, kv_len) for the dot's
                # vector operand (kl keys x 4 dims); the row sums correct the query zero point
                kq = TB.alloc_buffer((d4, kv_len), "int32")
                ks = TB.alloc_buffer((kv_len,), F32)
                ksum = TB.alloc_buffer((kv_len,), "int32")
                qw = _lanes(dim) if dim % 4 == 0 else 4  # floats per quantizer vector
                nw = qw // 4

                with T.serial(0, kv_len) as j:
                    def key_words(g, words, j=j):
                        for t in range(nw):
                            T.buffer_store(kq, _word(words, t, nw), [g * nw + t, j])

                    _quantize_row(lambda g, j=j: k.vload([b, j, h, qw * g], f"float32x{qw}"),
                                  dim // qw, qw, key_words, -127.0, 127.0, "int8",
                                  symmetric=True, scale_out=(ks, j), second_out=(ksum, j))
                # values: int8 per column (over the keys), as (kv_len / 4, v_dim, 4)
                vs = TB.alloc_buffer((v_dim,), F32)
                _column_scales(v, b, h, kv_len, v_dim, vl, vs)
                vq = TB.alloc_buffer((t4 * v_dim * 4,), "int8")
                with T.serial(0, t4) as jq, T.serial(0, v_dim // vl) as dv:
                    rows = []
                    for jr in range(4):
                        x = v.vload([b, jq * 4 + jr, h, dv * vl], f"float32x{vl}")
                        rows.append(_round_clip(x / vs.vload([dv * vl], f"float32x{vl}"),
                                                -127.0, 127.0, "int8", vl))
                    order = [r * vl + lane for lane in range(vl) for r in range(4)]
                    T.buffer_store(vq, T.Shuffle(rows, order),
                                   [T.ramp((jq * v_dim + dv * vl) * 4, 1, 4 * vl)])
                # queries: the dot's activation type per row, with a zero point
                qq = TB.alloc_buffer((seq, d4), "int32")
                qs = TB.alloc_buffer((seq,), F32)
                qz = TB.alloc_buffer((seq,), "int32")
                with T.serial(0, seq) as i:
                    def query_words(g, words, i=i):
                        T.buffer_store(qq, words, [i, g if nw == 1 else T.ramp(g * nw, 1, nw)])

                    _quantize_row(lambda g, i=i: q.vload([b, i, h, qw * g], f"float32x{qw}"),
                                  dim // qw, qw, query_words, float(dot.qmin), float(dot.qmax),
                                  dot.act_dtype, symmetric=False, scale_out=(qs, i),
                                  second_out=(qz, i))
                scores = TB.alloc_buffer((rt, kv_len), F32)
                pq = TB.alloc_buffer((rt, t4), "int32")  # exp(s - max) * qmax, 4 per word
                inv = TB.alloc_buffer((rt,), F32)
                ctx = _Ctx(q, None, v, bias, out, scores, inv, b, h, dim, kv_len, v_dim, kl,
                           vl, kg, vg, scale)
                ctx.int8 = (dot, kq, ks, ksum, vq, vs, qq, qs, qz, pq)
                _each_row_tile(seq, rt, lambda i0, height: _rows_int8(ctx, i0, height))
    return ib.get()


def _round_clip(x, lo: float, hi: float, dtype: str, lanes: int):
    """``clip(floor(x + 0.5), lo, hi)`` as ``dtype`` x ``lanes``."""
    v = T.floor(x + _c(0.5, lanes))
    v = T.Select(v > _c(hi, lanes), _c(hi, lanes), T.Select(v < _c(lo, lanes), _c(lo, lanes), v))
    return T.Cast(dtype if lanes == 1 else f"{dtype}x{lanes}", v)


def _quantize_row(load, vecs: int, width: int, store_words, qmin: float, qmax: float,
                  dtype: str, *, symmetric: bool, scale_out, second_out) -> None:
    """Quantize one row given as ``vecs`` loads of ``width`` floats; ``store_words(g, w)``
    stores vector ``g``'s values as ``width / 4`` words of 4 ``dtype`` values. Symmetric:
    scale ``max|x| / qmax``, ``second_out`` gets the sum of the quantized values; else the
    row's range (with 0) spans ``[qmin, qmax]`` and ``second_out`` gets the zero point. A zero
    row gets scale 1."""
    lo = TB.alloc_buffer((width,), F32)
    hi = TB.alloc_buffer((width,), F32)
    _store(lo, _c(0.0, width), [0], width)
    _store(hi, _c(0.0, width), [0], width)
    with T.serial(0, vecs) as g:
        x = load(g)
        if symmetric:
            _store(hi, T.max(_load(hi, [0], width), T.max(x, _c(0.0, width) - x)), [0], width)
        else:
            _store(lo, T.min(_load(lo, [0], width), x), [0], width)
            _store(hi, T.max(_load(hi, [0], width), x), [0], width)
    with T.serial(1, width) as li:
        T.buffer_store(lo, T.min(lo[0], lo[li]), [0])
        T.buffer_store(hi, T.max(hi[0], hi[li]), [0])
    span = hi[0] / T.float32(qmax) if symmetric else (hi[0] - lo[0]) / T.float32(qmax - qmin)
    sbuf, srow = scale_out
    T.buffer_store(sbuf, T.Select(span > T.float32(0.0), span, T.float32(1.0)), [srow])
    zbuf, zrow = second_out
    if symmetric:
        zero = T.float32(0.0)
    else:
        zf = T.float32(qmin) - T.floor(lo[0] / sbuf[srow] + T.float32(0.5))
        T.buffer_store(zbuf, T.Cast("int32", T.max(T.min(zf, T.float32(qmax)),
                                                   T.float32(qmin))), [zrow])
        zero = T.Cast(F32, zbuf[zrow])
    inv = TB.bind(T.float32(1.0) / sbuf[srow])
    sums = TB.alloc_buffer((width,), "int32")
    T.buffer_store(sums, T.broadcast(T.int32(0), width), [T.ramp(0, 1, width)])
    nw = width // 4
    with T.serial(0, vecs) as g:
        qv = _round_clip(load(g) * _bcast(inv, width) + _bcast(zero, width), qmin, qmax,
                         dtype, width)
        store_words(g, T.reinterpret("int32" if nw == 1 else f"int32x{nw}", qv))
        if symmetric:
            T.buffer_store(sums, sums.vload([0], f"int32x{width}") +
                           T.Cast(f"int32x{width}", qv), [T.ramp(0, 1, width)])
    if symmetric:
        with T.serial(1, width) as li:
            T.buffer_store(sums, sums[0] + sums[li], [0])
        T.buffer_store(zbuf, sums[0], [zrow])


def _word(words, t: int, nw: int):
    """Word ``t`` of a vector of ``nw`` int32 words."""
    return words if nw == 1 else T.Shuffle([words], [t])


def _column_scales(v, b, h, kv_len: int, v_dim: int, vl: int, vs) -> None:
    """``vs[d] = max_j |v[b, j, h, d]| / 127`` (1 for an all-zero column)."""
    with T.serial(0, v_dim // vl) as dv:
        top = TB.alloc_buffer((vl,), F32)
        _store(top, _c(0.0, vl), [0], vl)
        with T.serial(0, kv_len) as j:
            x = v.vload([b, j, h, dv * vl], f"float32x{vl}")
            _store(top, T.max(_load(top, [0], vl), T.max(x, _c(0.0, vl) - x)), [0], vl)
        span = _load(top, [0], vl) / _c(127.0, vl)
        _store(vs, T.Select(span > _c(0.0, vl), span, _c(1.0, vl)), [dv * vl], vl)


def _rows_int8(c: _Ctx, i0, height: int) -> None:
    """:func:`_rows` on int8 operands."""
    dot, kq, ks, ksum, vq, vs, qq, qs, qz, pq = c.int8
    kl, vl = c.kl, c.vl
    qmax = float(dot.qmax)
    # 1. scores = qs[i] * ks[j] * (sum_d qq[i, d] kq[j, d] - qz[i] * ksum[j]) * scale + bias
    width = c.kg * kl
    row_max = _running_max(height, kl)
    with T.serial(0, c.kv_len // width) as jc:
        acc = TB.alloc_buffer((height, width), "int32")
        for r in range(height):
            for g in range(c.kg):
                T.buffer_store(acc, T.broadcast(T.int32(0), kl), [r, T.ramp(g * kl, 1, kl)])
        with T.serial(0, c.dim // 4) as dq:
            for r in range(height):
                a4 = qq[i0 + r, dq]
                for g in range(c.kg):
                    w = T.reinterpret(f"int8x{4 * kl}",
                                      kq.vload([dq, jc * width + g * kl], f"int32x{kl}"))
                    cur = acc.vload([r, g * kl], f"int32x{kl}")
                    T.buffer_store(acc, dot.emit(cur, a4, w, kl), [r, T.ramp(g * kl, 1, kl)])
        for r in range(height):
            i = i0 + r
            for g in range(c.kg):
                j = jc * width + g * kl
                comp = acc.vload([r, g * kl], f"int32x{kl}") - \
                    T.broadcast(qz[i], kl) * ksum.vload([j], f"int32x{kl}")
                s = T.Cast(f"float32x{kl}", comp) * \
                    (T.broadcast(qs[i] * T.float32(c.scale), kl) * ks.vload([j], f"float32x{kl}"))
                _store_score(c, s, i0, r, j, row_max)
    # 2. softmax: exp(s - max) quantized with the fixed scale 1 / qmax; 1 / sum kept apart
    with T.serial(0, height) as r:
        shift = _row_shift(row_max, r, kl)
        total = TB.alloc_buffer((kl,), F32)
        _store(total, _c(0.0, kl), [0], kl)
        with T.serial(0, c.kv_len // kl) as jv:
            e = fast_exp(_load(c.scores, [r, jv * kl], kl) - _bcast(shift, kl))
            _store(total, _load(total, [0], kl) + e, [0], kl)
            nw = kl // 4
            words = T.reinterpret("int32" if nw == 1 else f"int32x{nw}",
                                  _round_clip(e * _c(qmax, kl), 0.0, qmax, dot.act_dtype, kl))
            T.buffer_store(pq, words, [r, jv if nw == 1 else T.ramp(jv * nw, 1, nw)])
        _store_inverse_sum(c, total, r, kl, 1.0 / qmax)
    # 3. output = inv[i] * vs[d] * sum_j pq[i, j] vq[j, d]
    width = c.vg * vl
    with T.serial(0, c.v_dim // width) as dc:
        acc = TB.alloc_buffer((height, width), "int32")
        for r in range(height):
            for g in range(c.vg):
                T.buffer_store(acc, T.broadcast(T.int32(0), vl), [r, T.ramp(g * vl, 1, vl)])
        with T.serial(0, c.kv_len // 4) as jq:
            for r in range(height):
                a4 = pq[r, jq]
                for g in range(c.vg):
                    w = vq.vload([(jq * c.v_dim + dc * width + g * vl) * 4], f"int8x{4 * vl}")
                    cur = acc.vload([r, g * vl], f"int32x{vl}")
                    T.buffer_store(acc, dot.emit(cur, a4, w, vl), [r, T.ramp(g * vl, 1, vl)])
        for r in range(height):
            for g in range(c.vg):
                d = dc * width + g * vl
                val = T.Cast(f"float32x{vl}", acc.vload([r, g * vl], f"int32x{vl}")) * \
                    vs.vload([d], f"float32x{vl}") * _bcast(c.inv[r], vl)
                _store(c.out, val, [c.b, i0 + r, c.h, d], vl)
