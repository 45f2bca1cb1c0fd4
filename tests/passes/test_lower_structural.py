"""LowerBlockSparse on hand-built modules, compared structurally with the expected ones: a
pruned linear's composite call (with the bias add and ReLU after it) becomes one ``call_tir``
to the block-sparse kernel with the epilogue fused, as far as each value has one reader."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import tvm
from tvm import relax

from tetris_tvm.attr_keys import Attr
from tetris_tvm.kernels import compute as K
from tetris_tvm.kernels.bsr import BSRMatrix
from tetris_tvm.passes import LowerBlockSparse
from tetris_tvm.passes.lower import LoweredLayer

RNG = np.random.default_rng(0)
N, KIN, ROWS, BLOCK = 16, 16, 4, (8, 8)
MASK = np.kron(np.array([[1, 0], [1, 1]], bool), np.ones(BLOCK, bool))  # (N, K), one block pruned
W = (RNG.standard_normal((N, KIN)) * MASK).astype("float32")  # (out, in)
BIAS = RNG.standard_normal(N).astype("float32")
TY = relax.TensorType((ROWS, N), "float32")


def _with_composite(build_main):
    """A module with the composite of layer ``fc.weight`` (``x @ W.T`` as TetrisPrune emits
    it) and ``main`` built by ``build_main(bb, x, composite)``."""
    bb = relax.BlockBuilder()
    xc = relax.Var("x", relax.TensorType((ROWS, KIN), "float32"))
    attrs = {"Composite": Attr.LINEAR_COMPOSITE, Attr.BLOCK: list(BLOCK),
             Attr.LAYER: "fc.weight", Attr.BALANCED: False}
    with bb.function("tetris_linear_fc_weight", [xc], attrs=attrs, private=True):
        out = bb.emit(relax.op.matmul(xc, relax.const(np.ascontiguousarray(W.T))))
        bb.emit_func_output(out)
    comp = bb.get().get_global_var("tetris_linear_fc_weight")
    x = relax.Var("x", relax.TensorType((ROWS, KIN), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build_main(bb, x, comp))
        bb.emit_func_output(out)
    return bb.get()


def _kernel(bias: bool, activation: str | None):
    """The kernel the pass builds for the layer, its constant arguments and its record."""
    bsr = BSRMatrix.from_dense(W, BLOCK)
    func = K.block_sparse_linear((ROWS, KIN), bsr, bias=bias, activation=activation)
    consts = K.linear_weight_args(bsr, None) + ([BIAS] if bias else [])
    kernel = str(func.attrs[K.KERNEL_ATTR])
    fused = "+".join(p for p in ("bias" if bias else "", activation or "") if p)
    layer = LoweredLayer("fc.weight", "linear", (N, KIN), BLOCK, 3, 4, kernel, fused)
    return func.with_attr("global_symbol", f"{kernel}_fc_weight"), consts, layer


def _expected(bias: bool, activation: str | None, after=None):
    func, consts, layer = _kernel(bias, activation)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((ROWS, KIN), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(func, str(func.attrs["global_symbol"]))
            y = bb.emit(relax.call_tir(gv, [x, *(relax.const(c) for c in consts)], TY))
            out = bb.emit_output(after(bb, y) if after else y)
        bb.emit_func_output(out)
    return bb.get().with_attr(Attr.LOWERED_LAYERS, json.dumps([asdict(layer)]))


def test_bias_and_relu_fuse_into_the_kernel():
    def before(bb, x, comp):
        y = bb.emit(relax.Call(comp, [x]))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(BIAS)))))

    got = LowerBlockSparse()(_with_composite(before))
    tvm.ir.assert_structural_equal(got, _expected(True, "relu"))


def test_an_epilogue_read_twice_stops_the_fusion_there():
    """The bias add reads the kernel's output alone (fused); its result is read twice, so
    the ReLU stays a separate op."""

    def before(bb, x, comp):
        y = bb.emit(relax.op.add(bb.emit(relax.Call(comp, [x])), relax.const(BIAS)))
        return relax.op.add(y, bb.emit(relax.op.nn.relu(y)))

    def after(bb, y):
        return relax.op.add(y, bb.emit(relax.op.nn.relu(y)))

    got = LowerBlockSparse()(_with_composite(before))
    tvm.ir.assert_structural_equal(got, _expected(True, None, after))
