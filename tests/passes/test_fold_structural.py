"""FoldPermutations on small hand-built modules, compared structurally with the expected ones."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tetris_tvm.passes import FoldPermutations


def _module(build, attrs=None):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    mod = bb.get()
    for key, value in (attrs or {}).items():
        mod = mod.with_attr(key, value)
    return mod


RNG = np.random.default_rng(0)
IDX = RNG.permutation(8).astype("int64")
W = RNG.standard_normal((8, 6)).astype("float32")


def test_gather_through_relu_is_absorbed_into_the_next_weight():
    def before(bb, x):
        g = bb.emit(relax.op.take(x, relax.const(IDX), axis=1))
        return relax.op.matmul(bb.emit(relax.op.nn.relu(g)), relax.const(W))

    def expected(bb, x):  # matmul(x[:, idx], W) == matmul(x, W[argsort(idx)])
        return relax.op.matmul(bb.emit(relax.op.nn.relu(x)), relax.const(W[np.argsort(IDX)]))

    got = FoldPermutations()(_module(before))
    tvm.ir.assert_structural_equal(got, _module(expected, {"tetris.runtime_gathers": 0}))


def test_two_inverse_gathers_cancel():
    inv = np.argsort(IDX).astype("int64")

    def before(bb, x):
        g = bb.emit(relax.op.take(x, relax.const(IDX), axis=1))
        return relax.op.nn.relu(bb.emit(relax.op.take(g, relax.const(inv), axis=1)))

    def expected(bb, x):
        return relax.op.nn.relu(x)

    got = FoldPermutations()(_module(before))
    tvm.ir.assert_structural_equal(got, _module(expected, {"tetris.runtime_gathers": 0}))


def test_a_gather_nothing_absorbs_stays_and_is_counted():
    def before(bb, x):  # relu moves above the gather, which then meets the output
        return relax.op.nn.relu(bb.emit(relax.op.take(x, relax.const(IDX), axis=1)))

    got = FoldPermutations()(_module(before))
    assert int(got.attrs["tetris.runtime_gathers"]) == 1  # the report is a module attribute
    vm = relax.VirtualMachine(tvm.compile(got, target="llvm"), tvm.cpu())
    x = np.arange(32, dtype="float32").reshape(4, 8)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  np.maximum(x[:, IDX], 0))
