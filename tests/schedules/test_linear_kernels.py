"""Block-sparse / dense linear kernels against a numpy / torch dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_close, cpu_target, random_bsr, run_poisoned

from tetris_tvm.kernels import BSRMatrix
from tetris_tvm.schedules.build import build_block_sparse_linear, build_dense_linear


def reference(x, w, bias=None, activation=None):
    y = torch.from_numpy(x) @ torch.from_numpy(w).T
    if bias is not None:
        y = y + torch.from_numpy(bias)
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "gelu":
        y = torch.nn.functional.gelu(y)
    elif activation == "gelu_tanh":
        y = torch.nn.functional.gelu(y, approximate="tanh")
    return y.numpy()


CASES = [
    # x_shape, (N, K) via x_shape[-1], N, block, sparsity, empty_rows, bias, activation, fmt
    ((1, 64), 96, (16, 16), 0.5, (), False, None, "bsr"),
    ((7, 64), 96, (16, 16), 0.5, (1,), True, "relu", "bsr"),
    ((64, 96), 64, (32, 32), 0.9, (0,), True, "gelu", "bsr"),
    ((2, 5, 40), 50, (16, 16), 0.5, (2,), True, None, "bsr"),  # 3-D, K and N not multiples
    ((7, 40), 50, (16, 32), 0.5, (), True, "gelu_tanh", "bsr"),  # non-square block
    ((64, 48), 40, (8, 8), 0.0, (), True, "relu", "auto"),  # sparsity 0 -> balanced, ELL
    ((7, 48), 64, (8, 8), 0.9, (0, 3), False, None, "bsr"),
    ((1, 96), 64, (32, 32), 0.0, (), True, None, "ell"),
    ((9, 96), 64, (32, 32), 0.0, (), True, "gelu", "ell"),  # 32-wide block cut in 2 columns
]


@pytest.mark.parametrize("x_shape,n,block,sparsity,empty,use_bias,act,fmt", CASES)
def test_block_sparse_linear(x_shape, n, block, sparsity, empty, use_bias, act, fmt):
    rng = np.random.default_rng(hash((x_shape, n, block)) % 2**32)
    bsr = random_bsr(rng, (n, x_shape[-1]), block, sparsity, empty)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if use_bias else None
    kernel = build_block_sparse_linear(bsr, x_shape, bias, act, cpu_target(), fmt)
    expected = reference(x, bsr.to_dense(), bias, act)
    assert_close(run_poisoned(kernel, x), expected)
    if empty:  # outputs of an empty block-row are exactly act(bias), or 0
        r = empty[0] % bsr.num_block_rows
        cols = slice(r * block[0], min(n, (r + 1) * block[0]))
        k = x_shape[-1]
        want = reference(np.zeros((1, k), np.float32), np.zeros((n, k), np.float32), bias, act)
        got = run_poisoned(kernel, x)[..., cols]
        np.testing.assert_allclose(got, np.broadcast_to(want[0, cols], got.shape), atol=1e-6)


def test_single_kept_block_and_all_empty():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    x = rng.standard_normal((5, 64)).astype(np.float32)
    one = BSRMatrix.from_dense(w, 16, mask)
    assert_close(run_poisoned(build_block_sparse_linear(one, x.shape, target=cpu_target()), x),
                 x @ one.to_dense().T)
    bias = rng.standard_normal(48).astype(np.float32)
    for fmt in ("bsr", "ell"):  # nothing kept: y = bias everywhere (ELL has zero width)
        none = BSRMatrix.from_dense(w, 16, np.zeros((3, 4), bool))
        kernel = build_block_sparse_linear(none, x.shape, bias, None, cpu_target(), fmt)
        np.testing.assert_array_equal(run_poisoned(kernel, x), np.broadcast_to(bias, (5, 48)))


def test_ell_matches_bsr_for_balanced_weight():
    rng = np.random.default_rng(6)
    mask = np.zeros((4, 4), bool)
    for r in range(4):
        mask[r, rng.choice(4, 2, replace=False)] = True
    bsr = BSRMatrix.from_dense(rng.standard_normal((64, 64)).astype(np.float32), 16, mask)
    x = rng.standard_normal((9, 64)).astype(np.float32)
    outs = [run_poisoned(build_block_sparse_linear(bsr, x.shape, target=cpu_target(), fmt=f), x)
            for f in ("bsr", "ell")]
    assert_close(outs[0], x @ bsr.to_dense().T)
    assert_close(outs[1], outs[0])


@pytest.mark.parametrize("x_shape,n,act", [((1, 72), 40, None), ((2, 7, 64), 96, "gelu"),
                                            ((64, 50), 33, "relu")])
def test_dense_linear(x_shape, n, act):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((n, x_shape[-1])).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = build_dense_linear(w, x_shape, bias, act, cpu_target())
    assert_close(run_poisoned(kernel, x), reference(x, w, bias, act))


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 20),
    n=st.integers(1, 70),
    k=st.integers(1, 70),
    bn=st.sampled_from([8, 16, 32]),
    bk=st.sampled_from([8, 16, 32]),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_linear_property(m, n, k, bn, bk, sparsity, seed):
    rng = np.random.default_rng(seed)
    bsr = random_bsr(rng, (n, k), (bn, bk), sparsity)
    x = rng.standard_normal((m, k)).astype(np.float32)
    kernel = build_block_sparse_linear(bsr, x.shape, target=cpu_target())
    assert_close(run_poisoned(kernel, x), x @ bsr.to_dense().T)


def test_symbolic_rows_one_kernel_for_every_batch():
    """A kernel built for (batch, 7, K) with a symbolic batch runs any batch size."""
    import tvm
    from tvm import tirx

    from tetris_tvm.kernels import compute as K
    from tetris_tvm.schedules.build import compile_prim_func

    rng = np.random.default_rng(5)
    bsr = random_bsr(rng, (64, 40), (32, 16), 0.5, (1,))
    bias = rng.standard_normal(64).astype(np.float32)
    batch = tirx.Var("batch", "int64")
    lib = compile_prim_func(K.block_sparse_linear((batch, 7, 40), bsr, bias=True),
                            cpu_target())
    consts = [tvm.runtime.tensor(c) for c in K.linear_weight_args(bsr, bias)]
    for b in (1, 4, 9):  # 7, 28 and 63 rows: below, above and not a multiple of 24
        x = rng.standard_normal((b, 7, 40)).astype(np.float32)
        out = tvm.runtime.tensor(np.full((b, 7, 64), np.nan, np.float32))
        lib["main"](tvm.runtime.tensor(x), *consts, out)
        assert_close(out.numpy(), x @ bsr.to_dense().T + bias)


@pytest.mark.parametrize("cores,n_rows", [(2, 5), (3, 7), (4, 3)])
def test_block_rows_are_dealt_round_robin_to_the_threads(cores, n_rows):
    """The parallel loop runs one iteration per thread, each taking every cores-th block-row
    (TETRIS clusters kept blocks, so contiguous ranges of rows are unequal work); a row count
    that the threads do not divide, and fewer rows than threads, still compute every row."""
    import re

    import tvm

    from tetris_tvm.schedules.build import default_target, schedule_module

    rng = np.random.default_rng(cores * 10 + n_rows)
    bsr = random_bsr(rng, (16 * n_rows, 48), (16, 16), 0.5, (1,))
    x = rng.standard_normal((5, 48)).astype(np.float32)
    target = default_target(num_cores=cores)
    kernel = build_block_sparse_linear(bsr, x.shape, None, None, target)
    assert_close(run_poisoned(kernel, x), reference(x, bsr.to_dense()))
    text = schedule_module(tvm.IRModule({"main": kernel.func}), target)["main"].script()
    extents = [int(e) for e in re.findall(r"T\.parallel\((\d+)\)", text)]
    assert extents == [cores if n_rows > cores else n_rows], text


@pytest.mark.parametrize("rows,want", [(1024, 128), (256, 128), (300, 100), (128, None),
                                       (257, None)])
def test_row_chunk_rule(rows, want):
    from tetris_tvm.kernels.compute import linear_row_chunk

    assert linear_row_chunk(rows) == want


ROW_CHUNK_CASES = [
    # x_shape, N, block, sparsity, empty rows, bias, activation, fmt, row_chunk
    ((256, 64), 96, (16, 16), 0.75, (1,), True, "relu", "bsr", 128),
    ((2, 150, 40), 50, (16, 16), 0.5, (0,), True, "gelu", "bsr", 100),  # padded K and N
    ((96, 48), 64, (32, 32), 0.9, (), False, None, "bsr", 32),  # half-width column tiles
    ((64, 48), 40, (8, 8), 0.0, (), True, None, "ell", 16),
]


@pytest.mark.parametrize("x_shape,n,block,sparsity,empty,use_bias,act,fmt,chunk",
                         ROW_CHUNK_CASES)
def test_row_chunked_linear(x_shape, n, block, sparsity, empty, use_bias, act, fmt, chunk):
    """Rows cut into chunks (outer loops: chunk, block-row; one fused parallel loop) compute
    what the unchunked kernel does, ragged register tiles and empty block-rows included."""
    import re

    import tvm

    from tetris_tvm.schedules.build import schedule_module

    rng = np.random.default_rng(chunk)
    bsr = random_bsr(rng, (n, x_shape[-1]), block, sparsity, empty)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if use_bias else None
    kernel = build_block_sparse_linear(bsr, x_shape, bias, act, cpu_target(), fmt, chunk)
    assert_close(run_poisoned(kernel, x), reference(x, bsr.to_dense(), bias, act))
    text = schedule_module(tvm.IRModule({"main": kernel.func}), cpu_target())["main"].script()
    rows = int(np.prod(x_shape[:-1]))
    parallel = re.findall(r"T\.parallel\((\d+)\)", text)  # padding copies have their own
    assert str(rows // chunk * bsr.num_block_rows) in parallel, parallel


def test_row_chunk_must_divide_static_rows():
    from tetris_tvm.kernels import compute as K

    bsr = random_bsr(np.random.default_rng(0), (32, 32), (16, 16), 0.5)
    with pytest.raises(ValueError, match="row_chunk"):
        K.block_sparse_linear((100, 32), bsr, row_chunk=48)
