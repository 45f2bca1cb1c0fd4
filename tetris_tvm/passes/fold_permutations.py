"""FoldPermutations: remove the channel gathers that TetrisPrune made explicit (a module pass).

Every ``take(x, idx, axis)`` with a constant 1-D index is held back as a *pending gather*
instead of being emitted, and pushed through the ops that commute with it
(:mod:`tetris_tvm.passes.gather_rules`: elementwise ops, per-channel constants such as biases,
layer norm over the channel axis, pooling, flattening; binary ops whose two inputs carry the
same gather). Two pending gathers compose into one and an identity gather disappears. A gather
that reaches a dense weight layer (``matmul`` with a constant right-hand side, ``conv2d`` with a
constant kernel) is absorbed into the weight: permuting a constant costs nothing at run time.
Anywhere else (a model output, a reshape into attention heads, a residual add with an
unpermuted tensor, a block-sparse layer whose input order differs) the gather is emitted: a
*runtime gather*. The pass records how many it left in :attr:`runtime_gathers` and in the
module attribute ``tetris.runtime_gathers``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..attr_keys import Attr
from ._dataflow import (
    const_lookup,
    const_value,
    is_const,
    main_bindings,
    op_name,
    rebuild_main,
    substitute,
    use_lists,
)
from .gather_rules import Gather, inverse, is_identity, push_gather

__all__ = ["FoldPermutations"]


@tvm.transform.module_pass(opt_level=0, name="FoldPermutations")
class FoldPermutations:
    """Push channel gathers down, compose and cancel them, absorb them into dense weights."""

    def __init__(self) -> None:
        self.runtime_gathers = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        state = _Folder(mod["main"])
        new = rebuild_main(mod, state.rewrite, finish=state.finish, raw=True)
        self.runtime_gathers = state.emitted
        return new.with_attr(Attr.RUNTIME_GATHERS, state.emitted)


class _Folder:
    def __init__(self, func: relax.Function) -> None:
        bindings = main_bindings(func)
        self.by_var = {b.var: b for b in bindings}
        self.uses = use_lists(bindings)
        self.old_const = const_lookup({}, self.by_var)
        self.lazy: dict[Any, Gather] = {}  # old var -> gather over a NEW var
        self.consts: dict[Any, np.ndarray] = {}  # new var -> value (constant-derived)
        self.emitted = 0
        self._bb: relax.BlockBuilder | None = None
        self._mapping: dict[Any, Any] = {}

    # -- helpers ------------------------------------------------------------------------------
    def const_of(self, expr: Any) -> np.ndarray | None:
        if is_const(expr):
            return const_value(expr)
        return self.consts.get(expr)

    def resolve(self, old: Any) -> Any:
        """The new expression for ``old``, materialising a pending gather if there is one."""
        if isinstance(old, relax.Var) and old in self.lazy:
            g = self.lazy.pop(old)
            assert self._bb is not None
            if is_identity(g.idx):
                new = g.base
            else:
                idx = relax.const(g.idx.astype("int64"))
                new = self._bb.emit(relax.op.take(g.base, idx, axis=g.axis))
                self.emitted += 1
            self._mapping[old] = new
            return new
        if isinstance(old, relax.Tuple):
            return relax.Tuple([self.resolve(f) for f in old.fields])
        return substitute(old, self._mapping)

    def _resolved_call(self, call: relax.Call) -> relax.Call:
        args = [self.resolve(a) for a in call.args]
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    # -- the binding callback -----------------------------------------------------------------
    def rewrite(self, bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
        self._bb, self._mapping = bb, mapping
        if not isinstance(value, relax.Call):
            return self._plain(value, var)
        if not isinstance(var, relax.DataflowVar):  # a function output: nothing stays pending
            lazy_pos = [i for i, a in enumerate(value.args) if a in self.lazy]
            if lazy_pos == [0]:
                absorbed = self._absorb_into_weight(value, 0, self.lazy[value.args[0]])
                if absorbed is not None:
                    return absorbed
            return self._plain(value, var)
        op = op_name(value)

        if op == "relax.take" and self._const_index(value) is not None:
            idx = self._const_index(value)
            x = value.args[0]
            axis = int(value.attrs.axis) % int(x.ty.ndim)
            inner = self.lazy.get(x)
            if inner is not None and inner.axis == axis:
                gather = Gather(inner.base, inner.idx[idx], axis)
            else:
                gather = Gather(self.resolve(x), idx, axis)
            if is_identity(gather.idx):
                mapping[var] = gather.base
            else:
                self.lazy[var] = gather
            return None

        lazy_pos = [i for i, a in enumerate(value.args) if a in self.lazy]
        if len(lazy_pos) == 1:
            pos = lazy_pos[0]
            g = self.lazy[value.args[pos]]
            absorbed = self._absorb_into_weight(value, pos, g)
            if absorbed is not None:
                return absorbed
            moved = push_gather(value, pos, g, lambda e: self.const_of(self.resolve(e)))
            if moved is not None and not self._fans_out(value.args[pos], g):
                call = moved[0]
                args = [a if i == pos else self.resolve(a) for i, a in enumerate(call.args)]
                new_var = bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
                self.lazy[var] = Gather(new_var, moved[1].idx, moved[1].axis)
                return None
        elif len(lazy_pos) == 2 and op in ("relax.add", "relax.multiply", "relax.subtract"):
            g0, g1 = (self.lazy[value.args[i]] for i in lazy_pos)
            if g0.axis == g1.axis and np.array_equal(g0.idx, g1.idx):
                new_var = bb.emit(relax.Call(value.op, [g0.base, g1.base], value.attrs))
                self.lazy[var] = Gather(new_var, g0.idx, g0.axis)
                return None
        return self._plain(value, var)

    def _fans_out(self, var: Any, g: Gather) -> bool:
        """Would pushing ``g`` on past ``var`` copy it? With several users, each one that
        cannot absorb the gather materialises its own copy, so a gather that does not sink
        cleanly down every path is materialised once, here."""
        return len(self.uses.get(var, [])) > 1 and not self._sinks(var, g.axis, g.idx.size, set())

    def _sinks(self, var: Any, axis: int, n: int, seen: set[Any]) -> bool:
        """Does a gather on ``var`` disappear on every path (into weights, or composed with
        another gather)?"""
        if var in seen:
            return True
        seen.add(var)
        for user, pos in self.uses.get(var, []):
            binding = self.by_var.get(user)
            call = None if binding is None else binding.value
            if not isinstance(call, relax.Call) or not isinstance(user, relax.DataflowVar):
                return False
            op = op_name(call)
            if op == "relax.take" and pos == 0 and self._const_index(call) is not None:
                continue
            if pos == 0 and op in ("relax.matmul", "relax.nn.conv2d"):
                weight = self.old_const(call.args[1])
                nd = int(call.args[0].ty.ndim)
                grouped = op == "relax.nn.conv2d" and int(call.attrs.groups) != 1
                if weight is not None and not grouped and axis == (
                    nd - 1 if op == "relax.matmul" else 1
                ):
                    continue
            moved = push_gather(call, pos, Gather(var, np.arange(n), axis), self.old_const)
            if moved is None or not self._sinks(user, moved[1].axis, moved[1].idx.size, seen):
                return False
        return True

    def _plain(self, value: Any, var: Any = None) -> Any:
        """Emit ``value`` with every pending gather among its inputs materialised."""
        if not isinstance(value, relax.Call):
            return self.resolve(value)
        new = self._resolved_call(value)
        foldable = op_name(new) in ("relax.permute_dims", "relax.reshape") and is_const(new.args[0])
        if foldable and isinstance(var, relax.DataflowVar):
            assert self._bb is not None
            out = self._bb.emit(new)
            self._record_const(out, new)
            return out
        return new

    def _record_const(self, new_var: Any, call: relax.Call) -> None:
        value = const_value(call.args[0])
        if op_name(call) == "relax.permute_dims":
            axes = call.attrs.axes
            order = None if axes is None else [int(a) for a in axes]
            self.consts[new_var] = np.transpose(value, order)
        else:
            shape = [int(s) for s in new_var.ty.shape]
            self.consts[new_var] = value.reshape(shape)

    @staticmethod
    def _const_index(call: relax.Call) -> np.ndarray | None:
        idx = call.args[1]
        if not is_const(idx):
            return None
        value = const_value(idx)
        if value.ndim != 1 or value.dtype.kind not in "iu":
            return None
        if not np.array_equal(np.sort(value), np.arange(value.size)):
            return None  # not a permutation (a real gather/embedding lookup)
        return value.astype(np.int64)

    def _absorb_into_weight(self, call: relax.Call, pos: int, g: Gather) -> Any:
        """matmul(take(x), B) -> matmul(x, B') and conv2d(take(x), W) -> conv2d(x, W')."""
        op = op_name(call)
        if pos != 0:
            return None
        inv = inverse(g.idx)
        if op == "relax.matmul":
            weight = self.const_of(self.resolve(call.args[1]))
            nd = int(call.args[0].ty.ndim)
            if weight is None or weight.ndim != 2 or g.axis != nd - 1:
                return None
            new_w = relax.const(np.ascontiguousarray(weight[inv, :]))
            return relax.Call(call.op, [g.base, new_w], call.attrs, call.ty_args)
        if op == "relax.nn.conv2d" and g.axis == 1 and int(call.attrs.groups) == 1:
            weight = self.const_of(self.resolve(call.args[1]))
            if weight is None:
                return None
            new_w = relax.const(np.ascontiguousarray(weight[:, inv]))
            return relax.Call(call.op, [g.base, new_w], call.attrs, call.ty_args)
        return None

    def finish(self, bb: relax.BlockBuilder, body: Any, mapping: dict) -> Any:
        self._bb, self._mapping = bb, mapping
        return self.resolve(body)
