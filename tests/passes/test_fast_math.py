"""FastActivations on small TVMScript modules: float32 GELU / softmax / exp become TVM's fast
TE versions; other dtypes and other ops are left as they are."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tetris_tvm.passes import FastActivations


@I.ir_module
class Activations:
    @R.function
    def main(x: R.Tensor((4, 64), "float32")) -> R.Tensor((4, 64), "float32"):
        with R.dataflow():
            a = R.nn.gelu(x)
            b = R.nn.softmax(a, axis=-1)
            c = R.exp(b)
            d = R.add(c, x)
            R.output(d)
        return d


@I.ir_module
class Half:
    @R.function
    def main(x: R.Tensor((4, 64), "float16")) -> R.Tensor((4, 64), "float16"):
        with R.dataflow():
            a = R.nn.gelu(x)
            b = R.nn.softmax(a, axis=-1)
            R.output(b)
        return b


def _ops(mod: tvm.IRModule) -> list[str]:
    names: list[str] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call):
            if isinstance(expr.op, tvm.ir.Op):
                names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def test_float32_activations_become_fast_kernels():
    after = FastActivations()(Activations)
    ops = _ops(after)
    assert "relax.nn.gelu" not in ops and "relax.nn.softmax" not in ops
    assert "relax.exp" not in ops and ops.count("relax.call_tir") == 3
    assert "relax.add" in ops  # other ops stay
    kernels = {gv.name_hint for gv, f in after.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    assert "fast_gelu" in kernels and any("softmax" in k for k in kernels)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype("float32") * 3
    vm = relax.VirtualMachine(tvm.compile(after, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    t = torch.from_numpy(x)
    want = (torch.softmax(torch.nn.functional.gelu(t), -1).exp() + t).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_other_dtypes_are_left_as_they_are():
    tvm.ir.assert_structural_equal(FastActivations()(Half), Half)
