"""ClipGatherIndices: every ``take`` clips its indices instead of trusting them.

Relax's ``take`` defaults to ``mode="fast"``: an out-of-range index reads outside the tensor
(a segfault, or garbage), and TVM warns "Fast mode segfaults when there are out-of-bounds
indices" once per gather when it legalizes one. Token ids in an embedding lookup come from
the user, so a bad id must not crash the process; the channel gathers our passes emit have
constant indices that are in range by construction, where clipping changes nothing. Clipping
costs two compares per gathered index.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from ._dataflow import mutate_functions

__all__ = ["ClipGatherIndices"]


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> Any:  # noqa: N802 - TVM visitor API
        call = super().visit_call_(call)
        if getattr(call.op, "name", None) != "relax.take" or str(call.attrs.mode) != "fast":
            return call
        axis = call.attrs.axis
        return relax.op.take(call.args[0], call.args[1],
                             axis=None if axis is None else int(axis), mode="clip")


@tvm.transform.module_pass(opt_level=0, name="ClipGatherIndices")
class ClipGatherIndices:
    """Rewrite ``take(x, idx, mode="fast")`` to ``mode="clip"`` in every Relax function."""

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        return mutate_functions(mod, _Rewriter)
