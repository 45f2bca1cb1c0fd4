"""NaN-safe legalizations: max pooling computes what torch does (NaN included) and adds no
padding stage when nothing is padded."""

import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import relax as R

from tetris_tvm.passes.nan_safe import nan_safe_legalizations


def _pool_module(shape, padding, ceil_mode):
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.max_pool2d(
                x, pool_size=(2, 2), strides=(2, 2), padding=padding, ceil_mode=ceil_mode))
        bb.emit_func_output(y)
    return bb.get()


def _legalized(mod):
    return relax.transform.LegalizeOps(nan_safe_legalizations())(mod)


def _blocks(func):
    return [b for b in re.findall(r'T\.sblock\("(\w+)"\)', func.script()) if b != "root"]


@pytest.mark.parametrize("padding,ceil_mode,stages", [
    ((0, 0, 0, 0), False, ["max_pool2d"]),
    ((1, 1, 1, 1), False, ["PadInput", "max_pool2d"]),
    ((0, 0, 0, 0), True, ["PadInput", "max_pool2d"]),
])
def test_max_pool_pads_only_when_a_window_reaches_outside(padding, ceil_mode, stages):
    shape = (2, 3, 7, 7)
    mod = _legalized(_pool_module(shape, padding, ceil_mode))
    pool = next(f for gv, f in mod.functions.items() if "max_pool2d" in gv.name_hint)
    assert _blocks(pool) == stages
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    x[0, 1, 2, 3] = np.nan
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, 2, padding[0],
                                          ceil_mode=ceil_mode).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want))
