"""Small helpers shared by the passes: walking and rebuilding ``main``'s bindings in order.

The Relax that torch.export produces is one dataflow block of ``var = op(args)`` bindings in A-
normal form. Our passes rewrite it binding by binding: :func:`rebuild_main` replays the
bindings through a BlockBuilder and lets a callback replace any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ..kernels.compute import shape_dims

__all__ = [
    "op_name",
    "const_value",
    "is_const",
    "rebuild_main",
    "substitute",
    "const_lookup",
    "main_bindings",
    "use_lists",
    "Rewriter",
    "channel_axis",
    "mutate_functions",
    "gv_name",
]


def op_name(expr: Any) -> str | None:
    """``"relax.matmul"`` for a call of that op, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


_CONSTANT = getattr(relax, "Constant", None) or tvm.ir.expr.Constant  # moved in TVM 0.27


def is_const(expr: Any) -> bool:
    return isinstance(expr, _CONSTANT)


def const_value(expr: Any) -> np.ndarray:
    """numpy value of a relax Constant."""
    value = expr.value if hasattr(expr, "value") else expr.data
    return value.numpy()


def substitute(expr: Any, mapping: dict[Any, Any]) -> Any:
    """Replace vars at the top level of an ANF expression (call args, tuple fields)."""
    if isinstance(expr, relax.Var):
        return mapping.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, mapping) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, mapping), expr.index)
    if isinstance(expr, relax.Call):
        args = [substitute(a, mapping) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    return expr


def main_bindings(func: relax.Function) -> list[Any]:
    """Every binding of ``func`` in order."""
    return [b for blk in func.body.blocks for b in blk.bindings]


def use_lists(bindings: list[Any]) -> dict[Any, list[tuple[Any, int]]]:
    """``var -> [(user var, argument position)]``: call arguments, tuple fields, and plain
    ``gv = lv`` bindings (position 0)."""
    uses: dict[Any, list[tuple[Any, int]]] = {}
    for b in bindings:
        v = b.value
        args = v.args if isinstance(v, relax.Call) else []
        args = v.fields if isinstance(v, relax.Tuple) else args
        args = [v] if isinstance(v, relax.Var) else args
        for i, a in enumerate(args):
            uses.setdefault(a, []).append((b.var, i))
    return uses


def const_lookup(
    weights: Mapping[str, np.ndarray], by_var: Mapping[Any, Any] | None = None
) -> Any:
    """``const_of(expr)``: the value of a constant, a weight parameter, or (given ``by_var``,
    var -> binding) a reshape / transpose / cast of one (torch.export reshapes conv biases)."""
    cache: dict[Any, np.ndarray | None] = {}

    def derived(expr: Any) -> np.ndarray | None:
        binding = by_var.get(expr) if by_var is not None else None
        value = None if binding is None else binding.value
        op = op_name(value)
        if op not in ("relax.reshape", "relax.permute_dims", "relax.astype"):
            return None
        src = const_of(value.args[0])
        if src is None:
            return None
        if op == "relax.permute_dims":
            axes = value.attrs.axes
            return np.transpose(src, None if axes is None else [int(a) for a in axes])
        if op == "relax.astype":
            return src.astype(str(value.attrs.dtype))
        try:
            return src.reshape([int(d) for d in expr.ty.shape])
        except (TypeError, ValueError):
            return None

    def const_of(expr: Any) -> np.ndarray | None:
        if is_const(expr):
            return const_value(expr)
        if isinstance(expr, relax.Var) and expr.name in weights:
            return weights[expr.name]
        if isinstance(expr, relax.DataflowVar):
            if expr not in cache:
                cache[expr] = derived(expr)
            return cache[expr]
        return None

    return const_of


def same_dims(a: Any, b: Any) -> bool:
    """Whether two shapes are equal (symbolic dims compared structurally)."""
    a, b = shape_dims(a), shape_dims(b)
    return len(a) == len(b) and all(
        x == y if isinstance(x, int) and isinstance(y, int) else tvm_ffi.structural_equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def channel_axis(ndim: int, op: str) -> int:
    """The channel axis a gather acts on: NCHW axis 1 for conv-like tensors, else the last."""
    return 1 if op == "conv2d" and ndim == 4 else ndim - 1


Rewriter = Callable[[relax.BlockBuilder, relax.Var, Any, dict[Any, Any]], Any]


def rebuild_main(
    mod: tvm.IRModule,
    rewrite: Rewriter,
    finish: Callable[[relax.BlockBuilder, Any, dict[Any, Any]], Any] | None = None,
    params: list[relax.Var] | None = None,
    raw: bool = False,
) -> tvm.IRModule:
    """Replay ``main``'s bindings through a BlockBuilder.

    ``rewrite(bb, var, value, mapping)`` is called for every binding with its value already
    substituted (``raw=True``: as it was; the callback substitutes); it returns None when it
    handled the binding itself, or the expression to bind (emitted by us), or a ``relax.Var`` it has
    emitted itself (used as the binding's new var). ``mapping`` maps old vars to new ones and
    can be extended by the callback. ``finish(bb, body, mapping)``, if given, returns the new
    function body from the old one (e.g. after materialising something). Functions other
    than ``main`` are kept as they are.
    """
    func = mod["main"]
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        raise ValueError("main must be a sequence of binding blocks")
    others = {gv: f for gv, f in mod.functions.items() if gv_name(gv) != "main"}
    bb = relax.BlockBuilder(tvm.IRModule(others, attrs=mod.attrs))
    mapping: dict[Any, Any] = {}
    new_params = list(func.params) if params is None else params
    attrs = {str(k): v for k, v in func.attrs.items()} if func.attrs is not None else {}
    with bb.function("main", new_params, attrs=attrs, private=False):
        out = None
        for block in body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            ctx = bb.dataflow() if dataflow else _null()
            with ctx:
                for binding in block.bindings:
                    if not isinstance(binding, relax.VarBinding):
                        raise ValueError(f"unsupported binding {type(binding).__name__}")
                    value = binding.value if raw else substitute(binding.value, mapping)
                    result = rewrite(bb, binding.var, value, mapping)
                    if result is None:  # the callback handled the binding (set mapping itself)
                        continue
                    is_output = not isinstance(binding.var, relax.DataflowVar)
                    if is_output and dataflow:
                        if isinstance(result, relax.Var) and not isinstance(
                            result, relax.DataflowVar
                        ):
                            new = result
                        else:
                            new = bb.emit_output(result, name_hint=binding.var.name)
                    elif isinstance(result, relax.Var) and result is not binding.var:
                        new = result
                    else:
                        new = bb.emit(result, name_hint=binding.var.name)
                    mapping[binding.var] = new
                    out = new
        if finish is not None:
            result_body = finish(bb, body.body, mapping)
        else:
            result_body = substitute(body.body, mapping)
        out = result_body if result_body is not None else out
        bb.emit_func_output(out)
    new_mod = bb.get()
    return new_mod


def gv_name(gv: Any) -> str:
    """The name of a GlobalVar (``name_hint`` in TVM 0.27)."""
    return str(getattr(gv, "name_hint", None) or gv.name)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def mutate_functions(mod: tvm.IRModule, mutator_class: Any) -> tvm.IRModule:
    """Run a ``PyExprMutator`` class over every Relax function of ``mod`` (a new module)."""
    rewriter = mutator_class(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
