"""Block-sparse / dense conv2d kernels (NCHW, groups=1) against torch.nn.functional.conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_close, cpu_target, run_poisoned

from tetris_tvm.kernels import BSRMatrix
from tetris_tvm.schedules.build import build_block_sparse_conv2d, build_dense_conv2d


def conv_bsr(rng, cout, cin, k, bo, bi, sparsity, empty_rows=()):
    """A random (Cout, Cin, k, k) weight block-pruned over (Cout, Cin) channel blocks."""
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    mask = rng.random((-(-cout // bo), -(-cin // bi))) >= sparsity
    for r in empty_rows:
        mask[r] = False
    return BSRMatrix.from_dense(w.reshape(cout, -1), (bo, bi * k * k), mask), w


def reference(x, w, bias, stride, padding, dilation, act):
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                 None if bias is None else torch.from_numpy(bias), stride, padding, dilation)
    return (torch.relu(y) if act == "relu" else y).numpy()


CASES = [
    # x_shape, cout, k, stride, padding, dilation, (bo, bi), sparsity, empty, bias, act
    ((2, 16, 9, 9), 24, 3, 1, 1, 1, (8, 8), 0.5, (0,), True, "relu"),  # implicit GEMM
    ((1, 32, 10, 10), 32, 3, 2, 1, 1, (16, 16), 0.5, (), True, None),  # stride 2: im2col
    ((2, 16, 8, 8), 32, 1, 1, 0, 1, (8, 8), 0.5, (1,), False, "relu"),  # 1x1: direct GEMM
    ((1, 12, 8, 8), 20, 1, 1, 0, 1, (8, 8), 0.0, (), True, None),  # 1x1, Cin % bi != 0
    ((1, 16, 12, 12), 16, 3, 1, 2, 2, (8, 8), 0.5, (), True, None),  # dilation 2
    ((1, 8, 7, 9), 8, 3, 2, 0, 1, (8, 8), 0.9, (), False, None),  # stride 2, no padding
    ((1, 16, 6, 6), 16, 3, 1, 1, 1, (16, 16), 0.0, (), True, "relu"),  # dense-as-sparse
    ((1, 8, 23, 24), 16, 3, 1, 1, 1, (8, 8), 0.5, (1,), True, "relu"),  # 2 pixel chunks
    ((1, 1, 3, 3), 1, 3, 2, 0, 1, (8, 8), 0.0, (), False, None),  # 1x1 output (hypothesis)
]


@pytest.mark.parametrize("x_shape,cout,k,stride,padding,dilation,blk,sp,empty,use_bias,act", CASES)
def test_block_sparse_conv2d(x_shape, cout, k, stride, padding, dilation, blk, sp, empty,
                             use_bias, act):
    rng = np.random.default_rng(cout * 100 + k)
    bsr, _ = conv_bsr(rng, cout, x_shape[1], k, *blk, sp, empty)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if use_bias else None
    kernel = build_block_sparse_conv2d(bsr, x_shape, k, stride, padding, dilation, bias, act,
                                       cpu_target())
    wm = bsr.to_dense().reshape(cout, x_shape[1], k, k)
    expected = reference(x, wm, bias, stride, padding, dilation, act)
    out = run_poisoned(kernel, x)
    assert out.shape == expected.shape
    assert_close(out, expected)


def test_few_block_rows_cut_the_pixels_into_parallel_chunks():
    from tetris_tvm.kernels import compute as K

    rng = np.random.default_rng(0)
    bsr, _ = conv_bsr(rng, 16, 8, 3, 8, 8, 0.5)
    func = K.block_sparse_conv2d((1, 8, 23, 24), bsr, 3, padding=1)
    assert int(func.attrs["tetris.pixel_chunks"]) == 2
    assert int(func.attrs["tetris.rows"]) * 2 >= 23 * 26  # every computed column is covered
    assert K.pixel_chunks(224, 64) == 1  # enough block-rows: no chunks


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation", [
    ((2, 8, 9, 9), (12, 8, 3, 3), 1, 1, 1),
    ((1, 8, 11, 11), (16, 8, 3, 3), 2, 1, 1),
    ((1, 16, 5, 5), (16, 16, 1, 1), 1, 0, 1),
])
def test_dense_conv2d(x_shape, w_shape, stride, padding, dilation):
    rng = np.random.default_rng(3)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = build_dense_conv2d(w, x_shape, stride, padding, dilation, bias, "relu", cpu_target())
    assert_close(run_poisoned(kernel, x), reference(x, w, bias, stride, padding, dilation, "relu"))


@settings(max_examples=5, deadline=None)
@given(
    cin=st.integers(1, 20),
    cout=st.integers(1, 20),
    hw=st.integers(3, 9),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 1),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_conv_property(cin, cout, hw, k, stride, padding, sparsity, seed):
    rng = np.random.default_rng(seed)
    bsr, _ = conv_bsr(rng, cout, cin, k, 8, 8, sparsity)
    x = rng.standard_normal((1, cin, hw, hw)).astype(np.float32)
    kernel = build_block_sparse_conv2d(bsr, x.shape, k, stride, padding, 1, target=cpu_target())
    wm = bsr.to_dense().reshape(cout, cin, k, k)
    assert_close(run_poisoned(kernel, x), reference(x, wm, None, stride, padding, 1, None))


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-2), ("bfloat16", 4e-2)])
@pytest.mark.parametrize("stride", [1, 2])  # implicit GEMM, im2col
def test_half_conv_matches_the_float32_conv_on_cpu(dtype, tol, stride):
    import tvm
    from kernel_helpers import random_bsr

    from tetris_tvm.kernels import compute as K
    from tetris_tvm.kernels.half import _numpy_dtype, half_weight_args
    from tetris_tvm.schedules.build import compile_prim_func

    rng = np.random.default_rng(3)
    bsr = random_bsr(rng, (32, 32 * 9), (16, 16 * 9), 0.0, empty_rows=(1,))
    assert bsr.nnzb > 0
    x_shape = (2, 32, 10, 10)
    func = K.block_sparse_conv2d(x_shape, bsr, 3, stride=stride, padding=1, bias=True,
                                 activation="relu", dtype=dtype)
    assert str(func.attrs["tetris.dtype"]) == dtype
    half = _numpy_dtype(dtype)
    bias = rng.standard_normal(32).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(half)
    w = bsr.to_dense().reshape(32, 32, 3, 3).astype(half).astype(np.float32)
    ref = F.relu(F.conv2d(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w),
                          torch.from_numpy(bias.astype(half).astype(np.float32)), stride, 1))
    ref = ref.numpy()
    ex = compile_prim_func(func, cpu_target())
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(ref.shape, half), dev)
    ex["main"](tvm.runtime.tensor(x, dev),
               *[tvm.runtime.tensor(c, dev) for c in half_weight_args(bsr, bias, dtype=dtype)],
               out)
    got = out.numpy().astype(np.float32)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.abs(got - ref).max() > 0  # half rounding is visible: the half path ran
    assert np.abs(ref[:, :16]).max() > 2 * np.abs(bias[:16]).max()  # the conv term counts
