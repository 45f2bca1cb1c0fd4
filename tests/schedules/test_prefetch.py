"""Operand prefetch in the block-sparse linear kernels: the rule, the expansion, correctness."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from kernel_helpers import assert_close, cpu_target, random_bsr
from tvm import tirx

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.analysis import fresh_schedule
from tetris_tvm.schedules.build import schedule_module
from tetris_tvm.schedules.cpu import ExpandOperandPrefetch, schedule_linear
from tetris_tvm.schedules.cpu._common import linear_tile
from tetris_tvm.schedules.cpu.prefetch import PREFETCH_ATTR, prefetches_operand


@pytest.mark.parametrize(
    "rows,block_k,want",
    [(32, 16, True), (128, 8, True), (16, 16, False), (1, 16, False), (128, 32, False)],
)
def test_rule_table(rows, block_k, want):
    assert prefetches_operand(rows, block_k, cpu_target()) is want


def _scheduled(func: tirx.PrimFunc, prefetch: bool | None) -> tvm.IRModule:
    sch = fresh_schedule(func)
    schedule_linear(sch, cpu_target(), prefetch=prefetch)
    return sch.mod


def test_default_schedule_marks_and_expansion_emits_prefetches():
    """Rows >= 32 with 16-deep blocks: the kept-block loop gets the mark; the pass turns it
    into one prefetch per register-tile row and the object code has them."""
    rng = np.random.default_rng(0)
    bsr = random_bsr(rng, (64, 96), (16, 16), 0.5)
    func = K.block_sparse_linear((64, 96), bsr)
    marked = _scheduled(func, None)["main"].script()
    assert PREFETCH_ATTR in marked
    expanded = schedule_module(tvm.IRModule({"main": func}), cpu_target())["main"].script()
    assert PREFETCH_ATTR not in expanded
    tile_rows, _ = linear_tile(64, 16, cpu_target())
    assert expanded.count("call_llvm_intrin") == tile_rows
    lib = tvm.compile(
        schedule_module(tvm.IRModule({"main": func}), cpu_target()), target=cpu_target()
    )
    if cpu_target().attrs.get("mtriple", "x86_64").startswith("x86_64"):
        assert "prefetcht0" in lib.mod.inspect_source("asm")


def test_no_mark_where_the_rule_says_no():
    rng = np.random.default_rng(1)
    bsr = random_bsr(rng, (64, 96), (16, 16), 0.5)
    text = _scheduled(K.block_sparse_linear((16, 96), bsr), None)["main"].script()
    assert PREFETCH_ATTR not in text
    dense = K.dense_linear((64, 96), 64, block_n=16)  # no kept-block loop to mark
    assert PREFETCH_ATTR not in _scheduled(dense, True)["main"].script()


CASES = [
    # x_shape, N, block, sparsity, empty rows, fmt
    ((37, 48), 64, (16, 16), 0.5, (1,), "bsr"),  # ragged last register tile
    ((33, 40), 50, (16, 16), 0.9, (0, 2), "bsr"),  # K and N padded, near-empty weight
    ((2, 20, 64), 48, (8, 8), 0.5, (), "bsr"),  # 8-deep blocks, 3-D input
    ((40, 96), 64, (16, 32), 0.75, (), "bsr"),  # 32-deep blocks: two lines per row
    ((64, 48), 40, (8, 8), 0.0, (), "ell"),  # constant-width kept-block loop
    ((32, 64), 32, (32, 32), 0.5, (), "bsr"),  # half-width column tiles
]


@pytest.mark.parametrize("x_shape,n,block,sparsity,empty,fmt", CASES)
def test_prefetching_kernels_match_the_reference(x_shape, n, block, sparsity, empty, fmt):
    """Forced on, the prefetches (addresses up to a register tile past the last row and at
    the last kept block) change no result."""
    rng = np.random.default_rng(len(x_shape) * 100 + n)
    bsr = random_bsr(rng, (n, x_shape[-1]), block, sparsity, empty)
    if fmt == "ell" and not bsr.is_balanced:
        pytest.skip("needs a balanced weight")
    func = K.block_sparse_linear(x_shape, bsr, fmt=fmt)
    mod = ExpandOperandPrefetch()(_scheduled(func, True))
    assert "call_llvm_intrin" in mod["main"].script()
    lib = tvm.compile(mod, target=cpu_target())
    x = rng.standard_normal(x_shape).astype(np.float32)
    out = tvm.runtime.tensor(np.full((*x_shape[:-1], n), np.nan, np.float32))
    consts = [tvm.runtime.tensor(c) for c in K.linear_weight_args(bsr, None, fmt)]
    lib["main"](tvm.runtime.tensor(x), *consts, out)
    assert_close(out.numpy(), x @ bsr.to_dense().T)


def test_symbolic_rows_prefetch():
    """The dynamic-batch kernel (padded operand, symbolic rows) with prefetches, any batch."""
    rng = np.random.default_rng(7)
    bsr = random_bsr(rng, (64, 48), (16, 16), 0.75, (2,))
    batch = tirx.Var("batch", "int64")
    func = K.block_sparse_linear((batch, 7, 48), bsr)
    mod = ExpandOperandPrefetch()(_scheduled(func, True))
    lib = tvm.compile(mod, target=cpu_target())
    consts = [tvm.runtime.tensor(c) for c in K.linear_weight_args(bsr, None)]
    for b in (1, 5):
        x = rng.standard_normal((b, 7, 48)).astype(np.float32)
        out = tvm.runtime.tensor(np.full((b, 7, 64), np.nan, np.float32))
        lib["main"](tvm.runtime.tensor(x), *consts, out)
        assert_close(out.numpy(), x @ bsr.to_dense().T)

