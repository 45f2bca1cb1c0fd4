"""LowerAttention: ``R.nn.attention`` / ``attention_bias`` -> the fused CPU attention kernel.

The importer keeps a model's ``scaled_dot_product_attention`` as Relax's ``nn.attention``
(``(batch, seq, heads, dim)`` operands, :func:`tetris_tvm.frontend.import_model` with
``keep_attention=True``) instead of torch's op-by-op decomposition. This pass replaces each one
whose shapes are static, whose operands are float32 and which has no causal mask by the
kernel of :mod:`tetris_tvm.kernels.attention`; any other stays for LegalizeOps.

It also cancels the transposes the model wraps around attention: a model computes
``q.view(b, s, h, d).transpose(1, 2)`` and the importer transposes back to ``(b, s, h, d)``
(and the same for the output), so ``permute_dims(permute_dims(x, a), b)`` whose axes compose
to the identity becomes ``x``, and two that do not compose into one.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, tirx
from tvm.relax import PyExprMutator, expr_functor

from ..kernels.attention import (
    attention,
    attention_int8,
    bias_broadcasts,
    int8_attention_fits,
)
from ..kernels.int8 import Dot
from ._dataflow import mutate_functions

__all__ = ["LowerAttention", "fused_attention_calls"]


def _static(shape: Any) -> tuple[int, ...] | None:
    values = getattr(shape, "values", shape)
    if values is None or any(not isinstance(d, tirx.IntImm) for d in values):
        return None
    return tuple(int(d) for d in values)


def _tensor_shape(expr: relax.Expr, dtype: str = "float32") -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != dtype or ty.shape is None:
        return None
    return _static(ty.shape)


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, dot: Dot | None = None) -> None:
        super().__init__(mod)
        self.dot = dot

    def visit_call_(self, call: relax.Call) -> Any:  # noqa: N802 - TVM visitor API
        call = super().visit_call_(call)
        op = getattr(call.op, "name", None)
        if op in ("relax.nn.attention", "relax.nn.attention_bias"):
            return self._attention(call)
        if op == "relax.permute_dims":
            return self._permute(call)
        return call

    def _attention(self, call: relax.Call) -> relax.Expr:
        attrs = call.attrs
        if attrs.causal_mask is not None or getattr(attrs, "window_size", None) is not None:
            return call
        q, k, v = call.args[:3]
        bias = call.args[3] if len(call.args) > 3 else None
        shapes = [_tensor_shape(t) for t in (q, k, v)]
        if any(s is None or len(s) != 4 for s in shapes):
            return call
        (b, s, h, d), (bk, t, hk, dk), (bv, tv, hv, dv) = shapes
        if (bk, hk, dk) != (b, h, d) or (bv, tv, hv) != (b, t, h):
            return call
        bias_shape = None
        if bias is not None:
            bias_shape = _tensor_shape(bias)
            if bias_shape is None or not bias_broadcasts(bias_shape, (b, h, s, t)):
                return call
        scale = None if attrs.scale is None else float(attrs.scale.value)
        if self.dot is not None and int8_attention_fits(d, t, dv, self.dot):
            func = attention_int8((b, s, h, d), t, dv, self.dot, scale=scale,
                                  bias_shape=bias_shape, name="attention")
        else:
            func = attention((b, s, h, d), t, dv, scale=scale, bias_shape=bias_shape,
                             name="attention")
        gv = self.builder_.add_func(func, "attention")
        args = [q, k, v] + ([bias] if bias is not None else [])
        return relax.call_tir(gv, args, relax.TensorType((b, s, h, dv), "float32"))

    def _permute(self, call: relax.Call) -> relax.Expr:
        inner = call.args[0]
        if isinstance(inner, relax.Var):
            bound = self.lookup_binding(inner)
            if bound is not None:
                inner = bound
        if not (isinstance(inner, relax.Call)
                and getattr(inner.op, "name", None) == "relax.permute_dims"):
            return call
        ndim = len(call.ty.shape.values) if call.ty.shape is not None else None
        if ndim is None:
            return call

        def axes(c: relax.Call) -> list[int]:
            return ([int(a) for a in c.attrs.axes] if c.attrs.axes is not None
                    else list(range(ndim))[::-1])

        first, second = axes(inner), axes(call)
        composed = [first[a] for a in second]
        if composed == list(range(ndim)):
            return inner.args[0]
        return relax.op.permute_dims(inner.args[0], composed)


@tvm.transform.module_pass(opt_level=0, name="LowerAttention")
class LowerAttention:
    """Replace float32 ``nn.attention`` with static shapes by the fused CPU kernel, and
    cancel the transposes around it (a CPU pass: run it only for llvm targets).

    ``dot``: compute the two matmuls in int8 with this dot-product instruction
    (:func:`tetris_tvm.kernels.int8.dot_for_target`) where the sizes allow; None: float32.
    """

    def __init__(self, dot: Dot | None = None) -> None:
        self.dot = dot

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        return mutate_functions(mod, lambda m: _Rewriter(m, self.dot))


def fused_attention_calls(mod: tvm.IRModule) -> list[str]:
    """The precision (``"int8"`` or ``"float32"``) of each call of the fused attention
    kernel in ``mod``'s Relax functions, in program order."""
    from ..attr_keys import Attr

    call_tir = tvm.ir.Op.get("relax.call_tir")
    kernels = {gv.name_hint: ("int8" if Attr.DOT in func.attrs else "float32")
               for gv, func in mod.functions_items()
               if isinstance(func, tirx.PrimFunc) and func.attrs is not None
               and str(func.attrs.get(Attr.KERNEL, "")) == "attention"}
    found: list[str] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            if name in kernels:
                found.append(kernels[name])

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
