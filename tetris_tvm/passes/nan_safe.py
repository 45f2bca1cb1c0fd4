"""Legalizations of max-like ops that keep NaN as torch does.

TVM lowers ``max(a, b)`` on floats to ``a > b ? a : b``, which drops a NaN in ``a``: its
``relu`` maps NaN to 0, and ``clip``, ``maximum`` / ``minimum``, ``max`` / ``min`` reductions
and max pooling lose NaN the same way. torch propagates NaN through all of them, and a NaN
that reaches the output is how a user learns that an input was broken. These replacements
compare so that NaN wins (``x < 0 ? 0 : x`` is NaN for NaN), at the same vector cost.
:func:`nan_safe_legalizations` is a ``customize_legalize_map`` for ``LegalizeOps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax, te, tirx, topi

__all__ = ["nan_max", "nan_min", "nan_safe_legalizations"]

Legalize = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]


def nan_max(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``max(a, b)``, NaN when either is NaN."""
    return tirx.Select(tirx.Or(a > b, tirx.isnan(a)), a, b)


def nan_min(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``min(a, b)``, NaN when either is NaN."""
    return tirx.Select(tirx.Or(a < b, tirx.isnan(a)), a, b)


def _is_float(expr: Any) -> bool:
    return str(getattr(expr.ty, "dtype", "")).startswith(("float", "bfloat"))


def _relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    def f(x: te.Tensor) -> te.Tensor:
        zero = tirx.const(0, x.dtype)
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)),
                          name="relu", tag="elemwise")

    return bb.call_te(f, call.args[0], primfunc_name_hint="relu")


def _value(arg: Any) -> float:
    v = getattr(arg, "value", arg)
    return float(getattr(v, "value", v))


def _clip(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    lo, hi = _value(call.args[1]), _value(call.args[2])

    def f(x: te.Tensor) -> te.Tensor:
        a, b = tirx.const(lo, x.dtype), tirx.const(hi, x.dtype)
        return te.compute(
            x.shape, lambda *i: tirx.Select(x(*i) < a, a, tirx.Select(x(*i) > b, b, x(*i))),
            name="clip", tag="elemwise")

    return bb.call_te(f, call.args[0], primfunc_name_hint="clip")


def _binary(pick: Callable[[Any, Any], Any], name: str) -> Legalize:
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        def f(a: te.Tensor, b: te.Tensor) -> te.Tensor:
            # broadcasting as topi does: compute on the broadcast shapes
            shape = topi.broadcast_to(a, _broadcast_shape(a, b)).shape
            a2, b2 = topi.broadcast_to(a, shape), topi.broadcast_to(b, shape)
            return te.compute(shape, lambda *i: pick(a2(*i), b2(*i)), name=name,
                              tag="broadcast")

        return bb.call_te(f, call.args[0], call.args[1], primfunc_name_hint=name)

    return legalize


def _broadcast_shape(a: te.Tensor, b: te.Tensor) -> list[Any]:
    na, nb = len(a.shape), len(b.shape)
    n = max(na, nb)
    sa = [1] * (n - na) + list(a.shape)
    sb = [1] * (n - nb) + list(b.shape)
    out = []
    for x, y in zip(sa, sb, strict=True):
        out.append(y if isinstance(x, tirx.IntImm) and int(x) == 1 else x)
    return out


def _reducer(pick: Callable[[Any, Any], Any], identity: float, name: str) -> Any:
    return te.comm_reducer(lambda x, y: pick(x, y),
                           lambda t: tirx.const(identity, t), name=name)


def _reduction(pick: Callable[[Any, Any], Any], identity: float, name: str,
               fallback: Callable[..., Any]) -> Legalize:
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if not _is_float(call.args[0]):
            return bb.call_te(fallback, call.args[0], call.attrs.axis, call.attrs.keepdims)
        x_ty = call.args[0].ty
        ndim = int(x_ty.ndim)
        axes = (list(range(ndim)) if call.attrs.axis is None
                else sorted(int(a) % ndim for a in call.attrs.axis))
        keep = bool(call.attrs.keepdims)
        reduce = _reducer(pick, identity, name)

        def f(x: te.Tensor) -> te.Tensor:
            raxes = {a: te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes}
            out_shape = [1 if a in raxes else x.shape[a] for a in range(ndim)] if keep else [
                x.shape[a] for a in range(ndim) if a not in raxes]

            def body(*i: Any) -> Any:
                it = iter(i)
                index = []
                for a in range(ndim):
                    if a in raxes:
                        if keep:
                            next(it)
                        index.append(raxes[a].var)
                    else:
                        index.append(next(it))
                return reduce(x(*index), axis=list(raxes.values()))

            return te.compute(out_shape, body, name=name)

        return bb.call_te(f, call.args[0], primfunc_name_hint=name)

    return legalize


def _max_pool2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    a = call.attrs
    if str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW" or not _is_float(call.args[0]):
        return bb.call_te(topi.nn.pool2d, call.args[0], kernel=a.pool_size, stride=a.strides,
                          dilation=a.dilation, padding=a.padding, pool_type="max",
                          ceil_mode=a.ceil_mode, layout=a.layout,
                          primfunc_name_hint="max_pool2d")
    kh, kw = (int(k) for k in a.pool_size)
    sh, sw = (int(s) for s in a.strides)
    dh, dw = (int(d) for d in a.dilation)
    pt, pl, pb, pr = (int(p) for p in a.padding)
    out_h, out_w = (int(d) for d in call.ty.shape.values[2:])
    reduce = _reducer(nan_max, float("-inf"), "nan_max")

    def f(x: te.Tensor) -> te.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        # ceil_mode windows may reach past the explicit padding: pad them with -inf too
        after_h = max(pb, (out_h - 1) * sh + (kh - 1) * dh + 1 - h - pt)
        after_w = max(pr, (out_w - 1) * sw + (kw - 1) * dw + 1 - w - pl)
        padded = x
        if pt or pl or after_h or after_w:  # no stage (a full copy) when nothing is padded
            padded = topi.nn.pad(x, [0, 0, pt, pl], [0, 0, after_h, after_w],
                                 pad_value=tirx.const(float("-inf"), x.dtype))
        rh = te.reduce_axis((0, kh), name="rh")
        rw = te.reduce_axis((0, kw), name="rw")
        return te.compute(
            (x.shape[0], x.shape[1], out_h, out_w),
            lambda n, c, i, j: reduce(padded[n, c, i * sh + rh * dh, j * sw + rw * dw],
                                      axis=[rh, rw]),
            name="max_pool2d", tag="pool_max")

    return bb.call_te(f, call.args[0], primfunc_name_hint="max_pool2d")


def nan_safe_legalizations() -> dict[str, Legalize]:
    """``LegalizeOps(customize_legalize_map=...)`` entries for the ops above (float inputs;
    others legalize as TVM does)."""
    def floats_only(rule: Legalize, op: str) -> Legalize:
        def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
            if not _is_float(call.args[0]):
                return tvm.ir.Op.get(op).get_attr("FLegalize")(bb, call)
            return rule(bb, call)

        return legalize

    rules = {
        "relax.nn.relu": _relu,
        "relax.clip": _clip,
        "relax.maximum": _binary(nan_max, "maximum"),
        "relax.minimum": _binary(nan_min, "minimum"),
    }
    out: dict[str, Legalize] = {op: floats_only(rule, op) for op, rule in rules.items()}
    out["relax.max"] = _reduction(nan_max, float("-inf"), "nan_max", topi.max)
    out["relax.min"] = _reduction(nan_min, float("inf"), "nan_min", topi.min)
    out["relax.nn.max_pool2d"] = _max_pool2d
    return out
