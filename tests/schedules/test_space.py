"""Tuning design spaces of the CPU kernels: every configuration computes the same result."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from kernel_helpers import assert_close, cpu_target, random_bsr
from tvm import s_tir

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cpu import BlockSparseConv2d, BlockSparseMatmul
from tetris_tvm.schedules.cpu._common import linear_tile
from tetris_tvm.schedules.cpu.block_sparse_matmul import schedule_linear
from tetris_tvm.schedules.cpu.conv2d import schedule_conv2d
from tetris_tvm.schedules.cpu.space import conv_configs, design_spaces, linear_configs


def _linear(fmt, rows=7, block=(16, 16)):
    rng = np.random.default_rng(3)
    bsr = random_bsr(rng, (40, 56), block, 0.5, empty_rows=() if fmt == "ell" else (1,))
    if fmt == "ell":  # balanced: two blocks in every block-row
        mask = np.zeros((3, 4), bool)
        for r in range(3):
            mask[r, [r, (r + 2) % 4]] = True
        bsr = type(bsr).from_dense(rng.standard_normal((40, 56)).astype("f4"), block, mask)
    func = K.block_sparse_linear((rows, 56), bsr, bias=True, activation="gelu", fmt=fmt)
    bias = rng.standard_normal(40).astype("f4")
    args = [rng.standard_normal((rows, 56)).astype("f4"), *K.linear_weight_args(bsr, bias, fmt)]
    return func, args, (rows, 40)


def _conv(stride):
    rng = np.random.default_rng(4)
    bsr = random_bsr(rng, (24, 16 * 9), (8, 8 * 9), 0.5, empty_rows=(2,))
    geo = K.Conv2dGeometry((2, 16, 9, 9), (24, 16, 3, 3), stride=stride, padding=1)
    func = K.block_sparse_conv2d((2, 16, 9, 9), bsr, 3, stride=stride, padding=1,
                                 activation="relu")
    args = [rng.standard_normal((2, 16, 9, 9)).astype("f4"), *K.conv2d_weight_args(bsr, None)]
    return func, args, geo.out_shape


def _run(mod, args, out_shape):
    lib = tvm.compile(mod, target=cpu_target())
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in args], out)
    return out.numpy()


CASES = {
    "bsr_linear": lambda: _linear("bsr"),
    "ell_linear": lambda: _linear("ell"),
    "bsr_linear_gemv": lambda: _linear("bsr", rows=1),
    "bsr_linear_32": lambda: _linear("bsr", rows=9, block=(32, 32)),
    "bsr_conv_implicit": lambda: _conv(1),
    "bsr_conv_im2col": lambda: _conv(2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_design_space_is_correct(case):
    func, args, out_shape = CASES[case]()
    expected = _run(tvm.IRModule({"main": func}), args, out_shape)  # unscheduled reference
    spaces = design_spaces(s_tir.Schedule(tvm.IRModule({"main": func})), cpu_target())
    configs = (conv_configs if "conv" in case else linear_configs)(func, cpu_target())
    assert len(spaces) == len(configs) >= 2
    for space in spaces:
        assert_close(_run(space.mod, args, out_shape), expected)


def test_default_configuration_comes_first():
    func, _, _ = _linear("bsr")
    first = linear_configs(func, cpu_target())[0]
    rows, cols = linear_tile(7, 16, cpu_target())
    assert first == {"tile_rows": rows, "tile_cols": cols, "unroll_k": None}
    conv, _, _ = _conv(1)
    from tetris_tvm.schedules.cpu.conv2d import conv_tile

    pixels = int(conv.attrs["tetris.rows"])
    assert conv_configs(conv, cpu_target())[0] == {"tile": conv_tile(8, pixels, cpu_target())}


@pytest.mark.parametrize(
    "case", ["bsr_linear", "ell_linear", "bsr_conv_implicit", "bsr_conv_im2col"]
)
def test_scheduling_a_copy_leaves_the_source_intact(case):
    """sch.copy() must be independent (tuning builds one design space per copy)."""
    func, _, _ = CASES[case]()
    mod = tvm.IRModule({"main": func})
    source = s_tir.Schedule(mod)
    copy = source.copy()
    (schedule_conv2d if "conv" in case else schedule_linear)(copy, cpu_target())
    assert tvm_ffi.structural_equal(source.mod, mod)
    assert not tvm_ffi.structural_equal(copy.mod, mod)


def test_rules_hand_out_design_spaces_when_tunable():
    func, _, _ = _linear("bsr")
    spaces = BlockSparseMatmul().apply(func, cpu_target(), True)
    assert isinstance(spaces, list) and len(spaces) == len(linear_configs(func, cpu_target()))
    conv, _, _ = _conv(1)
    assert len(BlockSparseConv2d().apply(conv, cpu_target(), True)) >= 2
    assert BlockSparseMatmul().apply(conv, cpu_target(), True) is None
