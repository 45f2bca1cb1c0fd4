"""ClipGatherIndices on TVMScript before/after, and what it buys: no segfault on a bad index."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tetris_tvm.passes import ClipGatherIndices


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), ids: R.Tensor((3,), "int64")) -> R.Tensor((4, 3), "float32"):  # noqa: E501
        with R.dataflow():
            y = R.take(x, ids, axis=1)
            z = R.take(y, ids, axis=1, mode="wrap")
            R.output(z)
        return z


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), ids: R.Tensor((3,), "int64")) -> R.Tensor((4, 3), "float32"):  # noqa: E501
        with R.dataflow():
            y = R.take(x, ids, axis=1, mode="clip")
            z = R.take(y, ids, axis=1, mode="wrap")  # an explicit mode is the user's choice
            R.output(z)
        return z


def test_fast_gathers_become_clipping_ones():
    tvm.ir.assert_structural_equal(ClipGatherIndices()(Before), Expected)


def test_a_module_without_gathers_is_unchanged():
    tvm.ir.assert_structural_equal(ClipGatherIndices()(Expected), Expected)


def test_out_of_range_index_is_clipped_not_a_crash():
    mod = ClipGatherIndices()(Before)
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    ids = np.array([0, 7, 1000], dtype=np.int64)  # 1000 is out of range
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(ids)).numpy()
    y = x[:, np.clip(ids, 0, 7)]
    np.testing.assert_array_equal(got, y[:, np.mod(ids, 3)])
