"""FoldBatchNorm: inference batch norms become a per-channel scale folded into the weights.

In eval mode ``batch_norm(y, gamma, beta, mean, var)`` is ``y * s + t`` with constants
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. When ``y`` is a weight layer's
output (a ``relax.nn.conv2d`` / ``matmul`` with a constant weight, or a call of a
``tetris.conv2d`` / ``tetris.linear`` composite), optionally followed by a constant bias add,
and nothing else reads it, ``s`` scales the weight's output channels and ``t`` becomes (part of)
its bias::

    bn = batch_norm(conv2d(x, W) [+ b], ...)[0]   ->   conv2d(x, W * s) + (b * s + t)

Scaling output channels keeps the block-sparsity pattern, so a pruned layer stays exactly as
sparse, and LowerBlockSparse then fuses the bias (and a following ReLU / ReLU6) into the
kernel's epilogue: a conv-BN-ReLU6 block is one kernel. Any other inference batch norm with
constant parameters becomes ``y * s + t``, which FuseOps joins with its neighbours. Training
mode batch norms, and ones whose statistics are not constants, are left alone.

Run it after the weights are bound (the parameters must be constants) and after
FoldPermutations (which permutes the batch-norm constants with the channels).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ._dataflow import (
    const_lookup,
    const_value,
    gv_name,
    is_const,
    main_bindings,
    op_name,
    rebuild_main,
)
from .prune import COMPOSITE_CONV2D, COMPOSITE_LINEAR

__all__ = ["FoldBatchNorm"]


def _users(bindings: list[Any], func: relax.Function) -> dict[Any, int]:
    """How often each var is read (call args, tuple fields, tuple items, plain bindings)."""
    count: dict[Any, int] = {}

    def read(e: Any) -> None:
        if isinstance(e, relax.Var):
            count[e] = count.get(e, 0) + 1
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                read(f)
        elif isinstance(e, relax.TupleGetItem):
            read(e.tuple_value)
        elif isinstance(e, relax.Call):
            for a in e.args:
                read(a)

    for b in bindings:
        read(b.value)
    read(func.body.body)
    return count


class _Fold:
    """What to do with one batch norm: the constants, and the weight op it folds into."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray, axis: int, ndim: int) -> None:
        self.scale = scale
        self.shift = shift
        self.axis = axis
        self.ndim = ndim
        self.weight_var: Any = None  # binding of the conv / matmul / composite call
        self.bias_var: Any = None  # binding of the bias add between them, if any
        self.bias: np.ndarray | None = None

    def per_channel(self, v: np.ndarray, dtype: str) -> relax.Constant:
        shape = [1] * self.ndim
        shape[self.axis] = v.size
        return relax.const(np.ascontiguousarray(v.reshape(shape).astype(dtype)))


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold every inference ``batch_norm`` with constant parameters of ``main`` into the weight
    layer before it (or into one multiply-add when there is none)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        func = mod["main"]
        bindings = main_bindings(func)
        by_var = {b.var: b for b in bindings}
        const_of = const_lookup({}, by_var)
        users = _users(bindings, func)
        calls_of = Counter(gv_name(b.value.op) for b in bindings
                           if isinstance(b.value, relax.Call)
                           and isinstance(b.value.op, relax.GlobalVar))

        folds: dict[Any, _Fold] = {}  # var of the batch norm's item 0 -> fold
        skip: set[Any] = set()  # batch norm tuples whose item 0 is rewritten
        weight_of: dict[Any, _Fold] = {}
        bias_of: dict[Any, _Fold] = {}
        for b in bindings:
            v = b.value
            if not (isinstance(v, relax.TupleGetItem) and v.index == 0):
                continue
            bn = by_var.get(v.tuple_value)
            if bn is None or op_name(bn.value) != "relax.nn.batch_norm":
                continue
            if users.get(bn.var, 0) != 1:
                continue  # the running statistics are read too
            fold = _plan(bn.value, const_of)
            if fold is None:
                continue
            folds[b.var] = fold
            skip.add(bn.var)
            _find_weight(fold, bn.value.args[0], by_var, users, const_of, calls_of, mod)
            if fold.weight_var is not None:
                weight_of[fold.weight_var] = fold
                if fold.bias_var is not None:
                    bias_of[fold.bias_var] = fold
        if not folds:
            return mod

        replaced: dict[str, relax.Function] = {}

        def rewrite(bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
            if var in skip:
                return None
            if var in weight_of:
                return _scaled(value, weight_of[var], mod, replaced)
            if var in bias_of:
                return None  # the batch norm's add below carries the bias
            if var in folds:
                fold = folds[var]
                dtype = _dtype(var)
                if fold.bias_var is not None:
                    bias = fold.bias.reshape(-1) * fold.scale + fold.shift
                    return relax.op.add(mapping[fold.weight_var], fold.per_channel(bias, dtype))
                y = value.tuple_value  # substituted: the batch norm's tuple is skipped
                src = mapping.get(by_var[y].value.args[0], by_var[y].value.args[0])
                if fold.weight_var is None:
                    src = relax.op.multiply(src, fold.per_channel(fold.scale, dtype))
                    src = bb.emit(src)
                return relax.op.add(src, fold.per_channel(fold.shift, dtype))
            return value

        new = rebuild_main(mod, rewrite)
        for name, f in replaced.items():
            new[new.get_global_var(name)] = f
        return new


def _plan(call: relax.Call, const_of: Any) -> _Fold | None:
    attrs = call.attrs
    if bool(attrs.training):
        return None
    values = [const_of(a) for a in call.args[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
    if not bool(attrs.scale):
        gamma = np.ones_like(var)
    if not bool(attrs.center):
        beta = np.zeros_like(var)
    ndim = int(call.args[0].ty.ndim)
    axis = int(attrs.axis) % ndim
    scale = gamma / np.sqrt(var + float(attrs.epsilon))
    shift = beta - mean * scale
    return _Fold(scale, shift, axis, ndim)


def _find_weight(
    fold: _Fold,
    y: Any,
    by_var: dict,
    users: dict,
    const_of: Any,
    calls_of: dict[str, int],
    mod: tvm.IRModule,
) -> None:
    """Set ``fold.weight_var`` (and the bias add) when ``y`` comes from a weight layer."""
    if users.get(y, 0) != 1 or y not in by_var:
        return
    value = by_var[y].value
    if op_name(value) == "relax.add" and len(value.args) == 2:
        for src, other in (value.args, value.args[::-1]):
            c = const_of(other)
            if (
                c is not None
                and _per_channel(c, fold)
                and isinstance(src, relax.DataflowVar)
                and users.get(src, 0) == 1
                and src in by_var
                and _weight_op(by_var[src].value, fold, const_of, calls_of, mod)
            ):
                fold.bias_var, fold.bias = y, np.asarray(c, dtype=np.float64)
                fold.weight_var = src
                return
        return
    if _weight_op(value, fold, const_of, calls_of, mod):
        fold.weight_var = y


def _scaled(
    value: relax.Call, fold: _Fold, mod: tvm.IRModule, replaced: dict[str, relax.Function]
) -> Any:
    """The weight op with its output channels scaled."""
    if isinstance(value.op, relax.GlobalVar):
        name = gv_name(value.op)
        replaced[name] = _scaled_composite(mod[name], fold.scale)
        return value
    weight = _scale_weight(value, fold.scale)
    return relax.Call(value.op, [value.args[0], weight], value.attrs, value.ty_args)


def _per_channel(c: np.ndarray, fold: _Fold) -> bool:
    """Whether constant ``c`` broadcasts as one value per channel of ``fold.axis``."""
    channels = fold.scale.size
    if c.size != channels or c.ndim > fold.ndim:
        return False
    full = (1,) * (fold.ndim - c.ndim) + tuple(c.shape)
    return full[fold.axis] == channels


def _dtype(var: Any) -> str:
    return str(var.ty.dtype)


def _weight_op(
    value: Any, fold: _Fold, const_of: Any, calls_of: dict[str, int], mod: tvm.IRModule
) -> bool:
    """Whether ``value`` is a layer whose output channels sit on ``fold.axis`` and whose
    weight is a constant we may scale."""
    name = op_name(value)
    if name == "relax.nn.conv2d":
        a = value.attrs
        return (
            fold.axis == 1
            and fold.ndim == 4
            and str(a.kernel_layout) == "OIHW"
            and str(a.data_layout) == "NCHW"
            and str(a.out_layout) == "NCHW"
            and is_const(value.args[1])
        )
    if name == "relax.matmul":
        w = value.args[1]
        return fold.axis == fold.ndim - 1 and is_const(w) and int(w.ty.ndim) == 2
    if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
        gname = gv_name(value.op)
        if calls_of.get(gname) != 1:
            return False
        f = mod[gname]
        comp = f.attrs.get("Composite") if f.attrs is not None else None
        if comp is None or str(comp) not in (COMPOSITE_CONV2D, COMPOSITE_LINEAR):
            return False
        want = 1 if str(comp) == COMPOSITE_CONV2D else fold.ndim - 1
        return fold.axis == want and _composite_weight(f) is not None
    return False


def _scale_weight(call: relax.Call, scale: np.ndarray) -> relax.Constant:
    w = const_value(call.args[1])
    if op_name(call) == "relax.nn.conv2d":  # (O, I, kh, kw): output channels first
        out = w * scale.reshape(-1, 1, 1, 1)
    else:  # matmul(x, W) with W (K, N): output channels last
        out = w * scale.reshape(1, -1)
    return relax.const(np.ascontiguousarray(out.astype(w.dtype)))


def _composite_weight(f: relax.Function) -> Any:
    body = f.body
    if not (
        isinstance(body, relax.SeqExpr)
        and len(body.blocks) == 1
        and len(body.blocks[0].bindings) == 1
    ):
        return None
    call = body.blocks[0].bindings[0].value
    if op_name(call) not in ("relax.nn.conv2d", "relax.matmul") or not is_const(call.args[1]):
        return None
    return call


def _scaled_composite(f: relax.Function, scale: np.ndarray) -> relax.Function:
    """The composite with its constant weight's output channels scaled (same attributes)."""
    call = _composite_weight(f)
    new_call = relax.Call(
        call.op, [call.args[0], _scale_weight(call, scale)], call.attrs, call.ty_args
    )
    (binding,) = f.body.blocks[0].bindings
    block = relax.BindingBlock([relax.VarBinding(binding.var, new_call)])
    body = relax.SeqExpr([block], f.body.body)
    return relax.Function(f.params, body, f.ret_ty, f.is_pure, f.attrs)
