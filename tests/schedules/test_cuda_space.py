"""The CUDA tuning search spaces: configurations that fit a thread block, every design space
builds for sm_90, and (on a GPU) every one computes the same as numpy."""

import numpy as np
import pytest
import tvm
from kernel_helpers import random_bsr

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cuda import (
    BlockSparseConv2d,
    BlockSparseMatmul,
    block_sparse_linear_fp16,
    cuda_target,
    linear_tile,
)
from tetris_tvm.schedules.cuda.conv2d import conv_tile
from tetris_tvm.schedules.cuda.space import (
    SHARED_BYTES,
    conv_configs,
    design_spaces,
    linear_configs,
)


def _linear(m=64, shape=(96, 128), block=(32, 32), dtype="float32"):
    bsr = random_bsr(np.random.default_rng(0), shape, block, 0.5, empty_rows=(1,))
    if dtype == "float32":
        return bsr, K.block_sparse_linear((m, shape[1]), bsr, bias=True, activation="relu")
    return bsr, block_sparse_linear_fp16((m, shape[1]), bsr, dtype=dtype, bias=True)


def _conv():
    bsr = random_bsr(np.random.default_rng(1), (32, 16 * 9), (16, 16 * 9), 0.5)
    return bsr, K.block_sparse_conv2d((2, 16, 12, 12), bsr, 3, stride=1, padding=1)


def test_linear_configs_start_with_the_rule_table_and_fit_a_thread_block():
    target = cuda_target()
    _, func = _linear()
    configs = linear_configs(func, target)
    assert configs[0] == linear_tile(64, 32, 32, "float32", target)
    assert len(configs) >= 8 and len(set(configs)) == len(configs)
    for tile in configs:
        threads = (tile.tile_m // tile.thread_m) * (32 // tile.thread_n)
        assert 32 <= threads <= 1024 and 64 % tile.tile_m == 0
        assert (tile.tile_m * 33 + 32 * 32) * 4 <= SHARED_BYTES


def test_half_configs_include_wmma_fragments():
    _, func = _linear(m=128, block=(32, 32), dtype="float16")
    configs = linear_configs(func, cuda_target())
    wmma = [c for c in configs if c.tensor_core]
    assert configs[0].tensor_core and len(wmma) >= 3
    assert {(c.warp_m, c.warp_n) for c in wmma} >= {(1, 1), (2, 2)}
    assert any(not c.tensor_core for c in configs)  # CUDA-core candidates as well


def test_gemv_configs():
    _, func = _linear(m=1)
    configs = linear_configs(func, cuda_target())
    assert configs[0].tile_m == 1 and all(c.tile_m == 1 for c in configs)


def test_conv_configs():
    _, func = _conv()
    configs = conv_configs(func, cuda_target())
    pixels = int(func.attrs["tetris.rows"])
    assert configs[0] == conv_tile(16, pixels) and len(configs) >= 4
    for tile in configs[1:]:
        assert 32 <= (16 // tile.tc) * (tile.tile_p // tile.tp) <= 1024


@pytest.mark.parametrize("case", ["linear", "linear-fp16", "conv"])
def test_every_design_space_builds_for_sm90(case):
    target = cuda_target("sm_90")
    if case == "conv":
        _, func = _conv()
        rule, configs = BlockSparseConv2d(), conv_configs(func, target)
    else:
        dtype = "float16" if case == "linear-fp16" else "float32"
        _, func = _linear(m=128, dtype=dtype)
        rule, configs = BlockSparseMatmul(), linear_configs(func, target)
    spaces = rule.apply(func, target, True)
    assert isinstance(spaces, list) and len(spaces) == len(configs)
    sources = set()
    for sch in spaces[:: max(1, len(spaces) // 5)]:  # a spread of them (each build ~1 s)
        ex = tvm.compile(sch.mod, target=target)
        src = ex.mod.imports[0].inspect_source()
        assert "__global__" in src
        sources.add(src)
    assert len(sources) > 1  # the configurations give different kernels
    assert design_spaces(tvm.s_tir.Schedule(K.dense_linear((4, 8), 16)), target)


def test_tuning_uses_the_cuda_spaces():
    from tetris_tvm.tuning.search import _space, _space_size

    class Task:
        kind = "block-sparse"

    _, func = _linear()
    task = Task()
    task.mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    target = cuda_target()
    assert _space(task, target) is not None
    assert _space_size(task, target) == len(linear_configs(func, target))


@pytest.mark.gpu
@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")
def test_every_linear_design_space_matches_numpy_on_gpu():
    bsr, func = _linear(m=64)
    target = cuda_target()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    ref = np.maximum(x @ bsr.to_dense().T + bias, 0)
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *K.linear_weight_args(bsr, bias))]
    for sch in BlockSparseMatmul().apply(func, target, True):
        ex = tvm.compile(sch.mod, target=target)
        y = tvm.runtime.tensor(np.zeros((64, 96), np.float32), dev)
        ex["main"](*args, y)
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)
