"""CUDA int8 (``__dp4a``): the kernels' arithmetic and indexing checked on their CPU twin
against numpy, whole models built for CUDA without a GPU (nvcc compiles what they generate),
and with a GPU (``-m gpu``) the compiled model against its fake-quantised reference."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
import tvm

import tetris_tvm
from tetris_tvm.kernels import int8 as K8
from tetris_tvm.kernels.int8_cuda import int8_linear_cuda, quantize_rows_cuda
from tetris_tvm.quantization import fake_quantize_rows, quantize_weight, quantized_reference
from tetris_tvm.schedules.cuda.build import nvcc_compile

HAS_GPU = tvm.cuda(0).exist
HAS_NVCC = shutil.which("nvcc") is not None


def _run(func, args, outs):
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    tensors = [tvm.runtime.tensor(a) for a in (*args, *outs)]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors[len(args):]]


@pytest.mark.parametrize(("rows", "k", "n", "block", "dense", "static"), [
    (37, 64, 48, (16, 16), False, None),   # a ragged row tile, an empty block-row
    (1, 40, 20, (8, 8), False, None),      # one row, outputs cut inside the last block
    (9, 36, 24, (8, 36), True, None),      # dense: one block-column spanning K
    (16, 32, 64, (64, 4), False, (0.05, 3)),  # narrow blocks, static quantization
])
def test_cuda_int8_kernels_compute_the_integer_arithmetic(rows, k, n, block, dense, static):
    rng = np.random.default_rng(rows)
    bn, bk = block
    keep = rng.random((-(-n // bn), -(-k // bk))) < 0.5
    keep[-1] = False
    mask = np.kron(keep, np.ones(block, bool))[:n, :k]
    w = rng.standard_normal((n, k)).astype(np.float32) * (1 if dense else mask)
    q, scale = quantize_weight(w)
    x = (rng.standard_normal((rows, k)) * 2 + 0.3).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    kq = K8.padded_k(k, k if dense else bk)
    args = K8.int8_linear_args(q, scale, block, dense, b, threads=1)
    quantized = _run(quantize_rows_cuda((rows, k), kq, static=static, gpu=False), [x],
                     [np.zeros((rows, kq), np.int8), np.zeros(rows, np.float32),
                      np.zeros(rows, np.int32)])
    (y,) = _run(int8_linear_cuda((rows, k), n, block, args[0].shape[0], dense=dense,
                                 bias=True, activation="relu", gpu=False),
                [*quantized, *args], [np.zeros((rows, n), np.float32)])
    xq = fake_quantize_rows(torch.from_numpy(x), -128, 127, static).numpy()
    want = np.maximum(xq @ (q.astype(np.float32) * scale[:, None]).T + b, 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_cuda_int8_kernels_refuse_unaligned_columns():
    with pytest.raises(ValueError, match="multiple of 4"):
        int8_linear_cuda((8, 18), 16, (8, 9), 2)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 48),
                               torch.nn.ReLU(), torch.nn.Linear(48, 10)).eval()


def _cuda_build(model, x, **options):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="compiled for CUDA")
        return tetris_tvm.compile(model, (x,), target="cuda", quantize="int8", progress=False,
                                  **options)


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_int8_models_build_for_cuda_with_dp4a(activations):
    cm = _cuda_build(_mlp(), torch.randn(8, 64), sparsity=0.5, block_size=16,
                     activations=activations, calibration=[torch.randn(8, 64)],
                     reconstruct=False)
    assert cm.plan.quantization["dot"] == "dp4a"
    assert cm.plan.quantization["attention"] == "float32"
    assert {r["precision"] for r in cm.report.layers} == {"int8"}
    source = cm.device_source()
    assert "__dp4a" in source
    if HAS_NVCC:
        nvcc_compile(source, "sm_90")


def test_cuda_int8_leaves_convs_and_unaligned_blocks_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 6 * 6, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 6)).eval()
    with pytest.warns(UserWarning, match="columns in multiples of 4"):
        cm = _cuda_build(model, torch.randn(2, 2, 8, 8), sparsity=0.5, block_size=8,
                         overrides={"5.*": {"block_size": (8, 6)}})
    precision = {r["name"]: r["precision"] for r in cm.report.layers}
    assert precision == {"0.weight": "float32", "3.weight": "int8", "5.weight": "float32"}
    assert "dp4a" in cm.plan.quantization["float32"]["0.weight"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("sparsity", [0.0, 0.75])
def test_cuda_int8_build_equals_its_reference_on_a_gpu(sparsity):
    model = _mlp()
    x = torch.randn(16, 64)
    cm = _cuda_build(model, x, sparsity=sparsity, block_size=16)
    with torch.no_grad():
        want = quantized_reference(model, cm.plan)(x)
    torch.testing.assert_close(cm(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
