"""FastActivations: vectorisable exp / erf / tanh for the ops that remain outside our kernels.

On CPU, LLVM lowers ``erf``/``exp``/``tanh`` to scalar libm calls, so an unfused GELU or
softmax over a transformer's activations costs more than the matmuls around it. TVM ships
polynomial versions (``topi.fast_exp``, ``topi.fast_erf``, ``topi.fast_tanh``, accurate to a
few float32 ulps) that vectorise. This pass rewrites ``nn.gelu``, ``nn.gelu_tanh``,
``nn.softmax``, ``exp``, ``erf`` and ``tanh`` into them (a superset of Relax's own
FastMathTransform, which does not see through ``gelu``).
"""

from __future__ import annotations

import math
from typing import Any

import tvm
from tvm import relax, te, topi
from tvm.relax import PyExprMutator, expr_functor

from ._dataflow import mutate_functions

__all__ = ["FastActivations"]


def _gelu(x: te.Tensor) -> te.Tensor:
    half = tvm.tirx.const(0.5, x.dtype)
    inv_sqrt2 = tvm.tirx.const(1.0 / math.sqrt(2.0), x.dtype)
    erf = topi.fast_erf(topi.multiply(x, inv_sqrt2))
    return topi.multiply(topi.multiply(x, half), topi.add(erf, tvm.tirx.const(1.0, x.dtype)))


def _gelu_tanh(x: te.Tensor) -> te.Tensor:
    c = tvm.tirx.const(math.sqrt(2.0 / math.pi), x.dtype)
    k = tvm.tirx.const(0.044715, x.dtype)
    inner = topi.multiply(topi.add(x, topi.multiply(topi.multiply(topi.multiply(x, x), x), k)), c)
    half = tvm.tirx.const(0.5, x.dtype)
    return topi.multiply(topi.multiply(x, half), topi.add(topi.fast_tanh(inner), 1.0))


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> Any:  # noqa: N802 - TVM visitor API
        call = super().visit_call_(call)
        op = getattr(call.op, "name", None)
        if op is None or not call.args:
            return call
        dtype = str(getattr(call.args[0].ty, "dtype", ""))
        if dtype != "float32":
            return call
        if op == "relax.nn.gelu":
            return self.builder_.call_te(_gelu, call.args[0], primfunc_name_hint="fast_gelu")
        if op == "relax.nn.gelu_tanh":
            return self.builder_.call_te(_gelu_tanh, call.args[0], primfunc_name_hint="fast_gelu")
        if op == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))
        if op == "relax.exp":
            return self.builder_.call_te(topi.fast_exp, call.args[0])
        if op == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, call.args[0])
        if op == "relax.tanh":
            return self.builder_.call_te(topi.fast_tanh, call.args[0])
        return call


@tvm.transform.module_pass(opt_level=0, name="FastActivations")
class FastActivations:
    """Rewrite float32 GELU / softmax / exp / erf / tanh to TVM's vectorisable fast versions."""

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        return mutate_functions(mod, _Rewriter)
