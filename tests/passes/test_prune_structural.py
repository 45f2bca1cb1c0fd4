"""TetrisPrune on a hand-built module and a hand-made plan, compared structurally with the
expected module: the planned linear becomes a call of a private composite function holding
the masked weight in permuted storage order, between the gathers its permutations need."""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax

from tetris_tvm.attr_keys import Attr
from tetris_tvm.passes import TetrisPrune
from tetris_tvm.passes.gather_rules import inverse
from tetris_tvm.plan import PruningPlan
from tetris_tvm.reorder import LayerPlan

RNG = np.random.default_rng(0)
OUT, IN, ROWS = 8, 6, 2
W = RNG.standard_normal((OUT, IN)).astype("float32")
P_OUT = np.array([3, 0, 6, 1, 7, 2, 5, 4])
P_IN = np.array([5, 4, 3, 2, 1, 0])
BLOCK_MASK = np.array([[True, False], [False, True]])  # permuted order, blocks 4x3


def _plan(p_in: np.ndarray) -> PruningPlan:
    kept = np.kron(BLOCK_MASK, np.ones((4, 3), bool))  # permuted order
    mask = np.zeros_like(kept)
    mask[np.ix_(P_OUT, p_in)] = kept  # original coordinates
    lp = LayerPlan(mask, (P_OUT, p_in), (4, 3), 0.5, 0.5, "tetris-assign",
                   block_mask=BLOCK_MASK)
    return PruningPlan(layers={"fc.weight": lp})


def _main(body):
    """``main(x, w)`` with ``body(bb, x, w)`` as its dataflow block."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((ROWS, IN), "float32"))
    w = relax.Var("w", relax.TensorType((OUT, IN), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x, w))
        bb.emit_func_output(out)
    return bb


def _linear(bb, x, w):  # torch.export's nn.Linear without bias
    return relax.op.matmul(x, bb.emit(relax.op.permute_dims(w, [1, 0])))


def _expected(p_in: np.ndarray) -> tvm.IRModule:
    stored = (W * _plan(p_in)["fc.weight"].mask)[np.ix_(P_OUT, p_in)]
    cb = relax.BlockBuilder()
    xc = relax.Var("x", relax.TensorType((ROWS, IN), "float32"))
    attrs = {"Composite": Attr.LINEAR_COMPOSITE, Attr.LAYER: "fc.weight",
             Attr.BLOCK: [4, 3], Attr.BALANCED: False}
    with cb.function("tetris_linear_fc_weight", [xc], attrs=attrs, private=True):
        cb.emit_func_output(cb.emit(relax.op.matmul(xc, relax.const(np.ascontiguousarray(
            stored.T)))))
    composite = cb.get()["tetris_linear_fc_weight"]

    def body(bb, x, w):
        bb.emit(relax.op.permute_dims(w, [1, 0]))  # left for DeadCodeElimination
        if not np.array_equal(p_in, np.arange(IN)):
            x = bb.emit(relax.op.take(x, relax.const(p_in.astype("int64")), axis=1))
        gv = bb.add_func(composite, "tetris_linear_fc_weight")
        y = bb.emit(relax.Call(gv, [x]))
        return relax.op.take(y, relax.const(inverse(P_OUT).astype("int64")), axis=1)

    mod = _main(body).get()
    return mod.with_attr(Attr.PRUNED_LAYERS, json.dumps(["fc.weight"]))


def _pruned(p_in: np.ndarray) -> tvm.IRModule:
    return TetrisPrune(_plan(p_in), {"w": W}, {"w": "fc.weight"})(_main(_linear).get())


def test_both_axes_permuted_gather_the_input_and_restore_the_output():
    tvm.ir.assert_structural_equal(_pruned(P_IN), _expected(P_IN))


def test_an_unpermuted_input_is_read_as_it_is():
    identity = np.arange(IN)
    tvm.ir.assert_structural_equal(_pruned(identity), _expected(identity))


def test_the_rewrite_computes_the_masked_layer():
    got = _pruned(P_IN)
    bound = relax.transform.BindParams("main", {"w": tvm.runtime.tensor(W)})(got)
    vm = relax.VirtualMachine(tvm.compile(bound, target="llvm"), tvm.cpu())
    x = RNG.standard_normal((ROWS, IN)).astype("float32")
    want = x @ (W * _plan(P_IN)["fc.weight"].mask).T
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-5,
                               atol=1e-6)
