"""Schedule rules pinned on small kernels, TVM dlight style: the scheduled TensorIR of a rule
for one shape and target, compared structurally with the expected function below. A change to
a rule that alters its output fails here until the expected function is updated on purpose
(print the new one with ``rule.apply(func, target, False).mod["main"].script()``)."""

# ruff: noqa: E501

from __future__ import annotations

import numpy as np
import tvm
from kernel_helpers import random_bsr
from tvm.script import tirx as T

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cpu import BlockSparseMatmul as CpuBlockSparseMatmul
from tetris_tvm.schedules.cuda import BlockSparseMatmul as CudaBlockSparseMatmul
from tetris_tvm.schedules.cuda import cuda_target

ZNVER3 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})  # AVX2, 8 lanes


def _bsr_linear_8x32():
    """y (8, 32) = x (8, 32) @ W.T, W block-sparse in 16x16 blocks (one kept block)."""
    bsr = random_bsr(np.random.default_rng(0), (32, 32), (16, 16), 0.5)
    return K.block_sparse_linear((8, 32), bsr, fmt="bsr")


@T.prim_func(s_tir=True)
def cpu_bsr_linear_8x32_b16_znver3(x: T.Buffer((8, 32), "float32"), w_data: T.Buffer((1, 16, 16), "float32"), w_indices: T.Buffer((1,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((8, 32), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 16], "tetris.kernel": "bsr_linear", "tetris.out_features": 32, "tetris.rows": 8})
    # with T.sblock("root"):
    buffer = T.decl_buffer((8, 32), data=x.data)
    buffer_1 = T.decl_buffer((8, 32), data=y.data)
    for v in T.parallel(2):
        with T.sblock("row"):
            v_1 = T.axis.spatial(2, v)
            T.reads(w_indptr[v_1:v_1 + 2], buffer[0:8, 0:32], w_indices[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1])], w_data[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1]), 0:16, 0:16])
            T.writes(buffer_1[0:8, v_1 * 16:v_1 * 16 + 16])
            buffer_2 = T.sblock_alloc_buffer((8, 16))
            for v_0 in T.serial(2, annotations={"pragma_loop_partition_hint": 1}):
                for v_1_init in T.unroll(6):
                    for v_init in T.vectorized(16):
                        with T.sblock("update_init"):
                            v_2 = T.axis.spatial(8, v_0 * 6 + v_1_init)
                            v_3 = T.axis.spatial(16, v_init)
                            T.where(v_0 * 6 + v_1_init < 8)
                            T.reads()
                            T.writes(buffer_2[v_2, v_3])
                            buffer_2[v_2, v_3] = T.float32(0.0)
                for v_2 in range(w_indptr[v_1 + 1] - w_indptr[v_1]):
                    for v_3 in T.unroll(16):
                        for v_1_1 in T.unroll(6):
                            for v_4 in T.vectorized(16):
                                with T.sblock("update_update"):
                                    v_5 = T.axis.spatial(8, v_0 * 6 + v_1_1)
                                    v_6, v_7, v_8 = T.axis.remap("RRS", [v_2, v_3, v_4])
                                    T.where(v_0 * 6 + v_1_1 < 8)
                                    T.reads(buffer_2[v_5, v_8], w_indptr[v_1:v_1 + 2], buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7], w_indices[w_indptr[v_1] + v_6], w_data[w_indptr[v_1] + v_6, v_7, v_8])
                                    T.writes(buffer_2[v_5, v_8])
                                    buffer_2[v_5, v_8] = buffer_2[v_5, v_8] + buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7] * w_data[w_indptr[v_1] + v_6, v_7, v_8]
                for ax0 in T.unroll(6):
                    for ax1 in T.vectorized(16):
                        with T.sblock("store"):
                            v_2 = T.axis.spatial(8, v_0 * 6 + ax0)
                            v_3 = T.axis.spatial(16, ax1)
                            T.where(v_0 * 6 + ax0 < 8)
                            T.reads(w_indptr[v_1:v_1 + 2], buffer_2[v_2, v_3])
                            T.writes(buffer_1[v_2, v_1 * 16 + v_3])
                            buffer_1[v_2, v_1 * 16 + v_3] = T.if_then_else(w_indptr[v_1 + 1] > w_indptr[v_1], buffer_2[v_2, v_3], T.float32(0.0))


@T.prim_func(s_tir=True)
def cuda_bsr_linear_8x32_b16_sm80(x: T.Buffer((8, 32), "float32"), w_data: T.Buffer((1, 16, 16), "float32"), w_indices: T.Buffer((1,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((8, 32), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 16], "tetris.kernel": "bsr_linear", "tetris.out_features": 32, "tetris.rows": 8})
    # with T.sblock("root"):
    buffer = T.decl_buffer((8, 32), data=x.data)
    buffer_1 = T.decl_buffer((8, 32), data=y.data)
    for v in T.thread_binding(2, thread="blockIdx.y"):
        with T.sblock("row"):
            v_1 = T.axis.spatial(2, v)
            T.reads(w_indptr[v_1:v_1 + 2], buffer[0:8, 0:32], w_indices[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1])], w_data[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1]), 0:16, 0:16])
            T.writes(buffer_1[0:8, v_1 * 16:v_1 * 16 + 16])
            _local = T.sblock_alloc_buffer((8, 16), scope="local")
            for v_0 in T.thread_binding(1, thread="blockIdx.x"):
                for v_1_init in T.thread_binding(8, thread="threadIdx.y"):
                    for v_0_init in T.thread_binding(4, thread="threadIdx.x"):
                        for v_2_init in T.unroll(1):
                            for v_1_init_1 in T.unroll(4):
                                with T.sblock("update_init"):
                                    v_2 = T.axis.spatial(8, v_0 * 8 + v_1_init + v_2_init)
                                    v_3 = T.axis.spatial(16, v_0_init * 4 + v_1_init_1)
                                    T.reads()
                                    T.writes(_local[v_2, v_3])
                                    _local[v_2, v_3] = T.float32(0.0)
                for v_2 in range(w_indptr[v_1 + 1] - w_indptr[v_1]):
                    with T.sblock("update_update_o"):
                        _o, _o_1 = T.axis.remap("SR", [v_0, v_2])
                        _o_2 = T.axis.reduce(1, 0)
                        _o_3 = T.axis.spatial(1, 0)
                        T.reads(_local[0:8, 0:16], w_indptr[v_1:v_1 + 2], buffer[0:8, w_indices[w_indptr[v_1] + _o_1] * 16:w_indices[w_indptr[v_1] + _o_1] * 16 + 16], w_indices[w_indptr[v_1] + _o_1], w_data[w_indptr[v_1] + _o_1, 0:16, 0:16])
                        T.writes(_local[0:8, 0:16])
                        _shared = T.sblock_alloc_buffer((16, 8), scope="shared")
                        w_data_shared = T.sblock_alloc_buffer((1, 16, 16), scope="shared")
                        for ax0_ax1_ax2_fused_0 in range(2):
                            for ax0_ax1_ax2_fused_1 in T.thread_binding(8, thread="threadIdx.y"):
                                for ax0_ax1_ax2_fused_2 in T.thread_binding(4, thread="threadIdx.x"):
                                    for ax0_ax1_ax2_fused_3 in T.vectorized(4):
                                        with T.sblock("w_data_shared"):
                                            v0 = T.axis.spatial(1, 0)
                                            v1 = T.axis.spatial(16, (ax0_ax1_ax2_fused_0 * 128 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2 * 4 + ax0_ax1_ax2_fused_3) // 16)
                                            v2 = T.axis.spatial(16, (ax0_ax1_ax2_fused_0 * 128 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2 * 4 + ax0_ax1_ax2_fused_3) % 16)
                                            T.reads(w_data[w_indptr[v_1] + _o_1 + v0, v1, v2])
                                            T.writes(w_data_shared[v0, v1, v2])
                                            w_data_shared[v0, v1, v2] = w_data[w_indptr[v_1] + _o_1 + v0, v1, v2]
                        for ax0_ax1_fused_0 in range(4):
                            for ax0_ax1_fused_1 in T.thread_binding(8, thread="threadIdx.y"):
                                for ax0_ax1_fused_2 in T.thread_binding(4, thread="threadIdx.x"):
                                    with T.sblock("_shared"):
                                        v0 = T.axis.spatial(8, (ax0_ax1_fused_0 * 32 + ax0_ax1_fused_1 * 4 + ax0_ax1_fused_2) // 16)
                                        v1 = T.axis.spatial(16, (ax0_ax1_fused_0 * 32 + ax0_ax1_fused_1 * 4 + ax0_ax1_fused_2) % 16)
                                        T.reads(buffer[v0, w_indices[w_indptr[v_1] + _o_1] * 16 + v1])
                                        T.writes(_shared[v1, v0])
                                        T.sblock_attr({"buffer_dim_align": [[0, 0, 32, 1]]})
                                        _shared[v1, v0] = buffer[v0, w_indices[w_indptr[v_1] + _o_1] * 16 + v1]
                        for v_1_1 in T.thread_binding(8, thread="threadIdx.y"):
                            for v_0_1 in T.thread_binding(4, thread="threadIdx.x"):
                                for v_0_2 in range(2):
                                    for v_1_2 in T.unroll(8):
                                        for v_2_1 in T.unroll(1):
                                            for v_1_3 in T.unroll(4):
                                                with T.sblock("update_update"):
                                                    _i = T.axis.spatial(8, v_1_1 + v_2_1)
                                                    _i_1 = T.axis.reduce(16, v_0_2 * 8 + v_1_2)
                                                    _i_2 = T.axis.spatial(16, v_0_1 * 4 + v_1_3)
                                                    T.reads(_local[_i, _i_2], w_indptr[v_1:v_1 + 2], _shared[_i_1, _i], w_indices[w_indptr[v_1] + _o_1], w_data_shared[0, _i_1, _i_2])
                                                    T.writes(_local[_i, _i_2])
                                                    _local[_i, _i_2] = _local[_i, _i_2] + _shared[_i_1, _i] * w_data_shared[0, _i_1, _i_2]
                for ax0_0 in T.thread_binding(8, thread="threadIdx.y"):
                    for ax1_0 in T.thread_binding(4, thread="threadIdx.x"):
                        for ax0_1 in T.unroll(1):
                            for ax1_1 in T.unroll(4):
                                with T.sblock("store"):
                                    v_2 = T.axis.spatial(8, ax0_0 + ax0_1)
                                    v_3 = T.axis.spatial(16, ax1_0 * 4 + ax1_1)
                                    T.reads(w_indptr[v_1:v_1 + 2], _local[v_2, v_3])
                                    T.writes(buffer_1[v_2, v_1 * 16 + v_3])
                                    buffer_1[v_2, v_1 * 16 + v_3] = T.if_then_else(w_indptr[v_1 + 1] > w_indptr[v_1], _local[v_2, v_3], T.float32(0.0))


def _same(got, expected) -> None:
    """Structural equality of two PrimFuncs, whatever their names."""
    tvm.ir.assert_structural_equal(got.without_attr("global_symbol"),
                                   expected.without_attr("global_symbol"))


def test_cpu_block_sparse_matmul_is_pinned():
    got = CpuBlockSparseMatmul().apply(_bsr_linear_8x32(), ZNVER3, False).mod["main"]
    _same(got, cpu_bsr_linear_8x32_b16_znver3)


def test_cuda_block_sparse_matmul_is_pinned():
    got = CudaBlockSparseMatmul().apply(_bsr_linear_8x32(), cuda_target("sm_80"), False)
    _same(got.mod["main"], cuda_bsr_linear_8x32_b16_sm80)
