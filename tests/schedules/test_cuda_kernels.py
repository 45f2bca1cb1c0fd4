"""CUDA schedule rules: every kernel builds for sm_80 / sm_90 without a GPU, the generated CUDA
has the intended structure (and compiles with nvcc where present), export works; with a GPU
(``-m gpu``), results match numpy."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import tvm
from kernel_helpers import random_bsr
from scipy.special import erf
from tvm import relax

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cuda import (
    BlockSparseConv2d,
    BlockSparseMatmul,
    block_sparse_linear_fp16,
    cuda_target,
    default_rules,
    dense_rules,
    half_weight_args,
    linear_tile,
)
from tetris_tvm.schedules.cuda._common import SHARED_BYTES
from tetris_tvm.schedules.cuda.build import CudaKernel, compile_cuda, cuda_source, nvcc_compile
from tetris_tvm.schedules.pipeline import default_rules as pipeline_rules
from tetris_tvm.schedules.pipeline import schedule_module

ARCHS = ("sm_80", "sm_90")
HAS_GPU = tvm.cuda(0).exist
HAS_NVCC = shutil.which("nvcc") is not None
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def _linear_case(fmt: str, m: int, shape=(96, 80), block=(32, 32), dtype="float32", **kw):
    rng = np.random.default_rng(hash((fmt, m, shape, block, dtype)) % 2**32)
    balanced = fmt == "ell"
    bsr = random_bsr(rng, shape, block, 0.0 if balanced else 0.5,
                     empty_rows=() if balanced else (1,))
    if dtype == "float32":
        func = K.block_sparse_linear((m, shape[1]), bsr, fmt=fmt, **kw)
    else:
        func = block_sparse_linear_fp16((m, shape[1]), bsr, fmt=fmt, dtype=dtype, **kw)
    return bsr, func


def _kernels(src: str) -> int:
    return src.count("extern \"C\" __global__") // 2  # declaration + definition


# ------------------------------------------------------------------------------- rule matching
def test_rules_match_only_cuda_and_their_kernels():
    _, lin = _linear_case("bsr", 8)
    conv = K.block_sparse_conv2d(
        (1, 2, 4, 4), random_bsr(np.random.default_rng(0), (32, 18), (16, 18), 0.0), 3
    )
    cuda = cuda_target()
    llvm = tvm.target.Target({"kind": "llvm"})
    assert BlockSparseMatmul().apply(lin, cuda, False) is not None
    assert BlockSparseMatmul().apply(conv, cuda, False) is None
    assert BlockSparseMatmul().apply(lin, llvm, False) is None
    assert BlockSparseConv2d().apply(conv, cuda, False) is not None
    assert BlockSparseConv2d().apply(lin, cuda, False) is None
    assert len(pipeline_rules(cuda)) == len(default_rules()) + len(dense_rules())
    assert not any(".cuda." in type(r).__module__ for r in pipeline_rules(llvm))


def test_cuda_target_has_dlight_attributes():
    t = cuda_target("sm_80")
    for key in ("max_threads_per_block", "max_shared_memory_per_block", "thread_warp_size",
                "registers_per_block"):
        assert t.attrs.get(key) is not None
    assert str(t.attrs["arch"]) == "sm_80"


def test_tile_table():
    t = cuda_target()
    assert linear_tile(256, 64, 64, "float16", t).tensor_core
    assert not linear_tile(16, 32, 32, "float16", t).tensor_core  # TVM storage-reuse bug
    assert not linear_tile(256, 32, 32, "float32", t).tensor_core
    assert not linear_tile(256, 32, 32, "bfloat16", t).tensor_core
    tile = linear_tile(200, 32, 32, "float32", t)
    assert 200 % tile.tile_m == 0
    assert linear_tile(1, 32, 32, "float32", t).tile_m == 1


# ------------------------------------------------------------------------------- linear builds
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "fmt,m,shape,bias,act",
    [
        ("bsr", 64, (96, 96), True, "relu"),
        ("bsr", 200, (96, 80), False, None),  # ragged K (x_pad), ragged M tiles
        ("bsr", 1, (80, 64), True, "gelu"),  # ragged N (y_slice), GEMV-like
        ("ell", 32, (96, 96), True, "gelu_tanh"),
    ],
)
def test_linear_fp32_builds(arch, fmt, m, shape, bias, act):
    _, func = _linear_case(fmt, m, shape, bias=bias, activation=act)
    src = cuda_source(compile_cuda(func, cuda_target(arch)))
    assert "__shared__" in src and "__syncthreads()" in src
    assert "w_data_shared" in src  # weight block staged in shared memory
    assert "mma_sync" not in src


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_linear_builds(arch):
    func = K.dense_linear((64, 96), 64, bias=True, activation="relu")
    src = cuda_source(compile_cuda(func, cuda_target(arch)))
    assert "__shared__" in src and "__syncthreads()" in src


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt,block,m", [("bsr", 32, 64), ("ell", 64, 128), ("bsr", 16, 48)])
def test_linear_fp16_tensor_cores(arch, fmt, block, m):
    _, func = _linear_case(fmt, m, (128, 128), (block, block), "float16", bias=True,
                           activation="gelu")
    src = cuda_source(compile_cuda(func, cuda_target(arch)))
    assert "nvcuda::wmma::mma_sync" in src
    assert "nvcuda::wmma::load_matrix_sync" in src
    assert "fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>" in src
    assert "__shared__" in src and "__syncthreads()" in src


@pytest.mark.parametrize("dtype,m", [("float16", 16), ("float16", 9), ("bfloat16", 64)])
def test_linear_half_cuda_cores(dtype, m):
    _, func = _linear_case("bsr", m, (64, 64), (32, 32), dtype, bias=True)
    src = cuda_source(compile_cuda(func, cuda_target("sm_90")))
    assert "mma_sync" not in src and "__shared__" in src
    assert ("half" if dtype == "float16" else "nv_bfloat16") in src


def test_all_empty_rows_and_fp16_builder_checks():
    rng = np.random.default_rng(3)
    empty = random_bsr(rng, (64, 64), (32, 32), 1.0)
    assert empty.nnzb == 0
    for fmt in ("bsr", "ell"):
        src = cuda_source(compile_cuda(K.block_sparse_linear((8, 64), empty, fmt=fmt)))
        assert "__global__" in src
    with pytest.raises(ValueError):
        block_sparse_linear_fp16((4, 60), random_bsr(rng, (64, 60), (32, 32), 0.5))
    with pytest.raises(ValueError):
        block_sparse_linear_fp16((4, 64), empty, dtype="float64")


# ------------------------------------------------------------------------------- conv builds
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "x_shape,cout,ks,stride,pad,fmt,block",
    [
        ((2, 16, 8, 8), 32, 3, 1, 1, "bsr", (16, 72)),  # implicit GEMM
        ((1, 16, 9, 9), 32, 3, 2, 1, "bsr", (16, 72)),  # im2col
        ((2, 32, 8, 8), 32, 1, 1, 0, "ell", (16, 16)),  # direct (pointwise)
        ((1, 16, 8, 8), 24, 3, 1, 1, "ell", (16, 144)),  # ragged Cout (y_slice)
    ],
)
def test_conv_builds(arch, x_shape, cout, ks, stride, pad, fmt, block):
    rng = np.random.default_rng(5)
    bsr = random_bsr(rng, (cout, x_shape[1] * ks * ks), block, 0.5 if fmt == "bsr" else 0.0)
    func = K.block_sparse_conv2d(x_shape, bsr, ks, stride=stride, padding=pad, bias=True,
                                 activation="relu", fmt=fmt)
    src = cuda_source(compile_cuda(func, cuda_target(arch)))
    assert "__shared__" in src and "w_data_shared" in src


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("x_shape,stride", [((2, 16, 8, 8), 1), ((1, 16, 9, 9), 2)])
def test_half_conv_builds(dtype, x_shape, stride):
    bsr = random_bsr(np.random.default_rng(6), (32, 16 * 9), (16, 144), 0.5)
    func = K.block_sparse_conv2d(x_shape, bsr, 3, stride=stride, padding=1, bias=True,
                                 activation="relu", dtype=dtype)
    src = cuda_source(compile_cuda(func, cuda_target()))
    assert "__shared__" in src
    assert ("half" if dtype == "float16" else "nv_bfloat16") in src


@pytest.mark.parametrize("dtype,staged", [("float32", False), ("float16", True)])
def test_conv_stays_within_static_shared_memory(dtype, staged):
    """A 3x3 32x32 float32 weight block (36 KiB) and a 64-pixel tile of a 56-wide image do not
    fit 48 KiB together (ptxas refuses such a kernel): the weight is then read through L1."""
    import re

    bsr = random_bsr(np.random.default_rng(7), (128, 64 * 9), (32, 288), 0.5)
    func = K.block_sparse_conv2d((8, 64, 56, 56), bsr, 3, padding=1, dtype=dtype)
    src = cuda_source(compile_cuda(func, cuda_target()))
    sizes = {"float": 4, "half": 2}
    shared = sum(sizes[t] * int(n) for t, n in
                 re.findall(r"__shared__ alignas\(\d+\) (\w+) \w+\[(\d+)\]", src))
    assert 0 < shared <= SHARED_BYTES
    assert ("w_data_shared" in src) == staged


def test_dense_conv_builds():
    func = K.dense_conv2d((1, 16, 8, 8), (32, 16, 3, 3), padding=1, bias=True)
    assert "__shared__" in cuda_source(compile_cuda(func))


# ------------------------------------------------------------------------------- nvcc + export
@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ARCHS)
def test_generated_cuda_compiles_with_nvcc(arch):
    _, f16 = _linear_case("bsr", 64, (128, 128), (32, 32), "float16", bias=True, activation="gelu")
    _, f32 = _linear_case("bsr", 40, (96, 80), bias=True, activation="relu")
    _, bf16 = _linear_case("ell", 16, (64, 64), (32, 32), "bfloat16")
    conv = K.block_sparse_conv2d(
        (1, 16, 8, 8), random_bsr(np.random.default_rng(2), (32, 144), (16, 72), 0.5), 3,
        padding=1, bias=True, activation="relu",
    )
    for func in (f16, f32, bf16, conv):
        binary = nvcc_compile(cuda_source(compile_cuda(func, cuda_target(arch))), arch)
        assert len(binary) > 1000


def test_export_library(tmp_path):
    _, func = _linear_case("bsr", 64, (128, 128), (32, 32), "float16", bias=True)
    exe = compile_cuda(func)
    path = tmp_path / "kernel.so"
    exe.export_library(str(path))
    data = path.read_bytes()
    assert b"nvcuda::wmma::mma_sync" in data  # the CUDA module travels inside the library
    if HAS_GPU:  # loading needs the CUDA runtime (it compiles the kernels on load)
        assert tvm.runtime.load_module(str(path)) is not None


# ------------------------------------------------------------------------------- dense Relax ops
def test_dlight_schedules_legalized_dense_ops():
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((16, 64), "float32"))
    w = relax.Var("w", relax.TensorType((128, 64), "float32"))
    b = relax.Var("b", relax.TensorType((128,), "float32"))
    g = relax.Var("g", relax.TensorType((128,), "float32"))
    with bb.function("main", [x, w, b, g]):
        with bb.dataflow():
            h = bb.emit(R.nn.gelu(R.linear(x, w, b)))
            h = bb.emit(R.nn.layer_norm(h, g, g, axes=[-1]))
            h = bb.emit(R.nn.softmax(h, axis=-1))
            out = bb.emit_output(R.sum(h, axis=[0]))
        bb.emit_func_output(out)
    mod = bb.get()
    mod = relax.transform.LegalizeOps()(mod)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseOps()(mod)
    mod = relax.transform.FuseTIR()(mod)
    target = cuda_target()
    scheduled = schedule_module(mod, target)
    for gv, func in scheduled.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            assert func.attrs is not None and func.attrs.get("tirx.is_scheduled"), gv
    exe = tvm.compile(scheduled, target=target)
    cuda_mods = [m for m in _all_imports(exe.mod) if m.kind == "cuda"]
    assert cuda_mods and "__global__" in cuda_mods[0].inspect_source()


def _all_imports(mod):
    for sub in mod.imports:
        yield sub
        yield from _all_imports(sub)


# ------------------------------------------------------------------------------- on a GPU
def _ref_linear(x, w, bias, act):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y = y + bias
    if act == "relu":
        y = np.maximum(y, 0)
    elif act == "gelu":
        y = 0.5 * y * (1 + erf(y / math.sqrt(2)))
    return y


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt,m,dtype", [("bsr", 200, "float32"), ("ell", 64, "float32"),
                                         ("bsr", 128, "float16"), ("bsr", 16, "float16"),
                                         ("ell", 1, "float32")])
def test_linear_matches_numpy_on_gpu(fmt, m, dtype):
    bsr, func = _linear_case(fmt, m, (128, 128), (32, 32), dtype, bias=True, activation="gelu")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((m, 128)).astype(dtype)
    bias = rng.standard_normal(128).astype(np.float32)
    if dtype == "float32":
        consts = K.linear_weight_args(bsr, bias, fmt)
    else:
        consts = half_weight_args(bsr, bias, fmt, dtype)
        bias = bias.astype(dtype).astype(np.float32)
    w = bsr.to_dense().astype(dtype).astype(np.float32)
    out = CudaKernel(func, consts, (m, 128), dtype)(x)
    ref = _ref_linear(x.astype(np.float32), w, bias, "gelu")
    tol = 1e-4 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.gpu
@gpu
def test_conv_matches_numpy_on_gpu():
    import torch

    rng = np.random.default_rng(8)
    bsr = random_bsr(rng, (32, 16 * 9), (16, 72), 0.5, empty_rows=(1,))
    func = K.block_sparse_conv2d((2, 16, 8, 8), bsr, 3, padding=1, bias=True, fmt="bsr")
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    out = CudaKernel(func, K.conv2d_weight_args(bsr, bias, "bsr"), (2, 32, 8, 8))(x)
    w = torch.from_numpy(bsr.to_dense().reshape(32, 16, 3, 3))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), w, torch.from_numpy(bias), padding=1)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-3)


def test_whole_models_build_for_cuda(tmp_path):
    """tetris_tvm.compile(target="cuda"): an MLP and a CNN build, use our kernels, export."""
    import sys
    from pathlib import Path

    import torch

    import tetris_tvm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_compile import ResidualMLP, SmallCNN

    for model, x in ((ResidualMLP(), torch.randn(4, 48)), (SmallCNN(), torch.randn(2, 3, 16, 16))):
        for arch in ("sm_90", "sm_80"):
            cm = tetris_tvm.compile(
                model.eval(), (x,), target={"kind": "cuda", "arch": arch}, sparsity=0.5,
                block_size=(16, 16),
            )
            src = cm.device_source()
            assert "__global__" in src and "__shared__" in src
            assert any(r["kernel"].startswith(("bsr_", "ell_")) for r in cm.report.layers)
        assert cm.export(tmp_path / f"{type(model).__name__}.so").exists()


def test_whole_model_in_float16_uses_tensor_cores_for_cuda():
    """compile(dtype="float16"): the pruned linears run the half kernel, with WMMA on sm_80+."""
    import sys
    from pathlib import Path

    import torch

    import tetris_tvm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_compile import ResidualMLP

    torch.manual_seed(0)
    cm = tetris_tvm.compile(
        ResidualMLP(d=64, hidden=128, out=32).eval(), (torch.randn(32, 64),),
        target={"kind": "cuda", "arch": "sm_90"}, sparsity=0.5, block_size=(32, 32),
        dtype="float16",
    )
    kernels = [r["kernel"] for r in cm.report.layers]
    assert all(k.endswith("_float16") for k in kernels), kernels
    assert "mma_sync" in cm.device_source()
