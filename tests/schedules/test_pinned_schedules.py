"""Schedule rules pinned on small kernels, TVM dlight style: the CPU and CUDA block-sparse
linear and conv2d rules' scheduled TensorIR for one shape and target, compared structurally
with the expected functions below. A change to a rule that alters its output fails here until
the expected function is updated on purpose (print the new one with
``rule.apply(func, target, False).mod["main"].script()``)."""

# ruff: noqa: E501

from __future__ import annotations

import numpy as np
import tvm
from kernel_helpers import random_bsr
from tvm.script import tirx as T

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cpu import BlockSparseConv2d as CpuBlockSparseConv2d
from tetris_tvm.schedules.cpu import BlockSparseMatmul as CpuBlockSparseMatmul
from tetris_tvm.schedules.cuda import BlockSparseConv2d as CudaBlockSparseConv2d
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


def _bsr_conv_16to32_6x6():
    """A 3x3 conv, 16 -> 32 channels on a padded 6x6 image, 16-channel output blocks."""
    bsr = random_bsr(np.random.default_rng(1), (32, 16 * 9), (16, 144), 0.5)
    return K.block_sparse_conv2d((1, 16, 6, 6), bsr, 3, padding=1, fmt="bsr")


@T.prim_func(s_tir=True)
def cpu_bsr_conv2d_16to32_6x6_znver3(x: T.Buffer((1, 16, 6, 6), "float32"), w_data: T.Buffer((2, 144, 16), "float32"), w_indices: T.Buffer((2,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((1, 32, 6, 6), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 144], "tetris.conv_mode": "implicit", "tetris.kernel": "bsr_conv2d", "tetris.out_features": 32, "tetris.pixel_chunks": 1, "tetris.rows": 64})
    # with T.sblock("root"):
    buffer = T.sblock_alloc_buffer((1, 16, 88))
    buffer_1 = T.sblock_alloc_buffer((1, 32, 64))
    buffer_2 = y.view(1, 32, 36)
    for v_v_v_fused in T.parallel(176):
        for v_0 in range(1):
            for v_1 in T.vectorized(8):
                with T.sblock("x_pad"):
                    v = T.axis.spatial(1, 0)
                    v_2 = T.axis.spatial(16, v_v_v_fused // 11)
                    v_3 = T.axis.spatial(11, v_v_v_fused % 11)
                    v_4 = T.axis.spatial(8, v_0 * 8 + v_1)
                    T.reads(x[v, v_2, v_3 - 1, v_4 - 1])
                    T.writes(buffer[v, v_2, v_3 * 8 + v_4])
                    buffer[v, v_2, v_3 * 8 + v_4] = T.if_then_else(v_2 < 16 and v_3 - 1 >= 0 and v_3 - 1 < 6 and v_4 - 1 >= 0 and v_4 - 1 < 6, x[v, v_2, v_3 - 1, v_4 - 1], T.float32(0.0))
    for v_v_v_fused in T.parallel(2):
        with T.sblock("row"):
            v = T.axis.spatial(1, 0)
            v_1 = T.axis.spatial(1, 0)
            v_2 = T.axis.spatial(2, v_v_v_fused)
            T.reads(w_indptr[v_2:v_2 + 2], w_data[w_indptr[v_2]:w_indptr[v_2] + (w_indptr[v_2 + 1] - w_indptr[v_2]), 0:144, 0:16], buffer[v_1, 0:16, v * 64:v * 64 + 82], w_indices[w_indptr[v_2]:w_indptr[v_2] + (w_indptr[v_2 + 1] - w_indptr[v_2])])
            T.writes(buffer_1[v_1, v_2 * 16:v_2 * 16 + 16, v * 64:v * 64 + 64])
            buffer_3 = T.sblock_alloc_buffer((16, 64))
            for v_0, v_0_1 in T.grid(4, 4):
                for v_1_init in T.unroll(4):
                    for v_1_init_1 in T.vectorized(16):
                        with T.sblock("update_init"):
                            v_3 = T.axis.spatial(16, v_0_1 * 4 + v_1_init)
                            v_4 = T.axis.spatial(64, v_0 * 16 + v_1_init_1)
                            T.reads()
                            T.writes(buffer_3[v_3, v_4])
                            buffer_3[v_3, v_4] = T.float32(0.0)
                for v_3, v_4 in T.grid(w_indptr[v_2 + 1] - w_indptr[v_2], 16):
                    for v_5 in T.unroll(3):
                        for v_6 in T.unroll(3):
                            for v_1_1 in T.unroll(4):
                                for v_1_2 in T.vectorized(16):
                                    with T.sblock("update_update"):
                                        v_7 = T.axis.spatial(16, v_0_1 * 4 + v_1_1)
                                        v_8 = T.axis.spatial(64, v_0 * 16 + v_1_2)
                                        v_9, v_10, v_11, v_12 = T.axis.remap("RRRR", [v_3, v_4, v_5, v_6])
                                        T.reads(buffer_3[v_7, v_8], w_indptr[v_2:v_2 + 2], w_data[w_indptr[v_2] + v_9, v_10 * 9 + v_11 * 3 + v_12, v_7], buffer[v_1, w_indices[w_indptr[v_2] + v_9] * 144 // 9 + v_10, v * 64 + v_8 + v_11 * 8 + v_12], w_indices[w_indptr[v_2] + v_9])
                                        T.writes(buffer_3[v_7, v_8])
                                        buffer_3[v_7, v_8] = buffer_3[v_7, v_8] + w_data[w_indptr[v_2] + v_9, v_10 * 9 + v_11 * 3 + v_12, v_7] * buffer[v_1, w_indices[w_indptr[v_2] + v_9] * 144 // 9 + v_10, v * 64 + v_8 + v_11 * 8 + v_12]
                for ax0 in T.unroll(4):
                    for ax1 in T.vectorized(16):
                        with T.sblock("store"):
                            v_3 = T.axis.spatial(16, v_0_1 * 4 + ax0)
                            v_4 = T.axis.spatial(64, v_0 * 16 + ax1)
                            T.reads(w_indptr[v_2:v_2 + 2], buffer_3[v_3, v_4])
                            T.writes(buffer_1[v_1, v_2 * 16 + v_3, v * 64 + v_4])
                            buffer_1[v_1, v_2 * 16 + v_3, v * 64 + v_4] = T.if_then_else(w_indptr[v_2 + 1] > w_indptr[v_2], buffer_3[v_3, v_4], T.float32(0.0))
    for v_v_v_fused in T.parallel(192):
        for v in range(6):
            with T.sblock("y_slice"):
                v_1 = T.axis.spatial(1, 0)
                v_2 = T.axis.spatial(32, v_v_v_fused // 6)
                v_3 = T.axis.spatial(6, v_v_v_fused % 6)
                v_4 = T.axis.spatial(6, v)
                T.reads(buffer_1[v_1, v_2, v_3 * 8 + v_4])
                T.writes(buffer_2[v_1, v_2, v_3 * 6 + v_4])
                buffer_2[v_1, v_2, v_3 * 6 + v_4] = buffer_1[v_1, v_2, v_3 * 8 + v_4]


@T.prim_func(s_tir=True)
def cuda_bsr_conv2d_16to32_6x6_sm80(x: T.Buffer((1, 16, 6, 6), "float32"), w_data: T.Buffer((2, 144, 16), "float32"), w_indices: T.Buffer((2,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((1, 32, 6, 6), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 144], "tetris.conv_mode": "implicit", "tetris.kernel": "bsr_conv2d", "tetris.out_features": 32, "tetris.pixel_chunks": 1, "tetris.rows": 64})
    # with T.sblock("root"):
    buffer = T.sblock_alloc_buffer((1, 16, 88))
    buffer_1 = T.sblock_alloc_buffer((1, 32, 64))
    buffer_2 = y.view(1, 32, 36)
    for v_v_v_v_fused_0 in T.thread_binding(6, thread="blockIdx.x"):
        for v_v_v_v_fused_1 in T.thread_binding(256, thread="threadIdx.x"):
            with T.sblock("x_pad"):
                v = T.axis.spatial(1, 0)
                v_1 = T.axis.spatial(16, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) // 88)
                v_2 = T.axis.spatial(11, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) % 88 // 8)
                v_3 = T.axis.spatial(8, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) % 8)
                T.where(v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1 < 1408)
                T.reads(x[v, v_1, v_2 - 1, v_3 - 1])
                T.writes(buffer[v, v_1, v_2 * 8 + v_3])
                buffer[v, v_1, v_2 * 8 + v_3] = T.if_then_else(v_1 < 16 and v_2 - 1 >= 0 and v_2 - 1 < 6 and v_3 - 1 >= 0 and v_3 - 1 < 6, x[v, v_1, v_2 - 1, v_3 - 1], T.float32(0.0))
    for v_v_v_fused in T.thread_binding(2, thread="blockIdx.y"):
        with T.sblock("row"):
            v = T.axis.spatial(1, 0)
            v_1 = T.axis.spatial(1, 0)
            v_2 = T.axis.spatial(2, v_v_v_fused)
            T.reads(w_indptr[v_2:v_2 + 2], w_data[w_indptr[v_2]:w_indptr[v_2] + (w_indptr[v_2 + 1] - w_indptr[v_2]), 0:144, 0:16], buffer[v_1, 0:16, v * 64:v * 64 + 82], w_indices[w_indptr[v_2]:w_indptr[v_2] + (w_indptr[v_2 + 1] - w_indptr[v_2])])
            T.writes(buffer_1[v_1, v_2 * 16:v_2 * 16 + 16, v * 64:v * 64 + 64])
            _local = T.sblock_alloc_buffer((16, 64), scope="local")
            for v_0 in T.thread_binding(1, thread="blockIdx.x"):
                for v_0_init in T.thread_binding(4, thread="threadIdx.y"):
                    for v_1_init in T.thread_binding(16, thread="threadIdx.x"):
                        for v_1_init_1 in T.unroll(4):
                            for v_2_init in T.unroll(4):
                                with T.sblock("update_init"):
                                    v_3 = T.axis.spatial(16, v_0_init * 4 + v_1_init_1)
                                    v_4 = T.axis.spatial(64, v_0 * 64 + v_1_init * 4 + v_2_init)
                                    T.reads()
                                    T.writes(_local[v_3, v_4])
                                    _local[v_3, v_4] = T.float32(0.0)
                for v_3 in range(w_indptr[v_2 + 1] - w_indptr[v_2]):
                    with T.sblock("update_update_o"):
                        _o = T.axis.spatial(1, 0)
                        _o_1, _o_2 = T.axis.remap("SR", [v_0, v_3])
                        _o_3 = T.axis.reduce(1, 0)
                        _o_4 = T.axis.reduce(1, 0)
                        _o_5 = T.axis.reduce(1, 0)
                        T.reads(_local[0:16, 0:64], w_indptr[v_2:v_2 + 2], w_data[w_indptr[v_2] + _o_2, 0:144, 0:16], buffer[v_1, w_indices[w_indptr[v_2] + _o_2] * 16:w_indices[w_indptr[v_2] + _o_2] * 16 + 16, v * 64:v * 64 + 82], w_indices[w_indptr[v_2] + _o_2])
                        T.writes(_local[0:16, 0:64])
                        _shared = T.sblock_alloc_buffer((1, 16, 82), scope="shared")
                        w_data_shared = T.sblock_alloc_buffer((1, 144, 16), scope="shared")
                        for ax0_ax1_ax2_fused_0 in range(36):
                            for ax0_ax1_ax2_fused_1 in T.thread_binding(4, thread="threadIdx.y"):
                                for ax0_ax1_ax2_fused_2 in T.thread_binding(16, thread="threadIdx.x"):
                                    with T.sblock("w_data_shared"):
                                        v0 = T.axis.spatial(1, 0)
                                        v1 = T.axis.spatial(144, (ax0_ax1_ax2_fused_0 * 64 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2) // 16)
                                        v2 = T.axis.spatial(16, (ax0_ax1_ax2_fused_0 * 64 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2) % 16)
                                        T.reads(w_data[w_indptr[v_2] + _o_2 + v0, v1, v2])
                                        T.writes(w_data_shared[v0, v1, v2])
                                        w_data_shared[v0, v1, v2] = w_data[w_indptr[v_2] + _o_2 + v0, v1, v2]
                        for ax0_ax1_ax2_fused_0 in range(21):
                            for ax0_ax1_ax2_fused_1 in T.thread_binding(4, thread="threadIdx.y"):
                                for ax0_ax1_ax2_fused_2 in T.thread_binding(16, thread="threadIdx.x"):
                                    with T.sblock("_shared"):
                                        v0 = T.axis.spatial(1, 0)
                                        v1 = T.axis.spatial(16, (ax0_ax1_ax2_fused_0 * 64 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2) // 82)
                                        v2 = T.axis.spatial(82, (ax0_ax1_ax2_fused_0 * 64 + ax0_ax1_ax2_fused_1 * 16 + ax0_ax1_ax2_fused_2) % 82)
                                        T.where((ax0_ax1_ax2_fused_0 * 4 + ax0_ax1_ax2_fused_1) * 16 + ax0_ax1_ax2_fused_2 < 1312)
                                        T.reads(buffer[v_1 + v0, w_indices[w_indptr[v_2] + _o_2] * 16 + v1, v * 64 + v2])
                                        T.writes(_shared[v0, v1, v2])
                                        _shared[v0, v1, v2] = buffer[v_1 + v0, w_indices[w_indptr[v_2] + _o_2] * 16 + v1, v * 64 + v2]
                        for v_0_1 in T.thread_binding(4, thread="threadIdx.y"):
                            for v_1_1 in T.thread_binding(16, thread="threadIdx.x"):
                                for v_4 in range(16):
                                    for v_5 in T.unroll(3):
                                        for v_6 in T.unroll(3):
                                            for v_1_2 in T.unroll(4):
                                                for v_2_1 in T.unroll(4):
                                                    with T.sblock("update_update"):
                                                        _i = T.axis.spatial(16, v_0_1 * 4 + v_1_2)
                                                        _i_1 = T.axis.spatial(64, v_1_1 * 4 + v_2_1)
                                                        _i_2, _i_3, _i_4 = T.axis.remap("RRR", [v_4, v_5, v_6])
                                                        T.reads(_local[_i, _i_1], w_indptr[v_2:v_2 + 2], w_data_shared[0, _i_2 * 9 + _i_3 * 3 + _i_4, _i], _shared[0, _i_2, _i_3 * 8 + _i_1 + _i_4], w_indices[w_indptr[v_2] + _o_2])
                                                        T.writes(_local[_i, _i_1])
                                                        _local[_i, _i_1] = _local[_i, _i_1] + w_data_shared[0, _i_2 * 9 + _i_3 * 3 + _i_4, _i] * _shared[0, _i_2, _i_3 * 8 + _i_1 + _i_4]
                for ax0_0 in T.thread_binding(4, thread="threadIdx.y"):
                    for ax1_0 in T.thread_binding(16, thread="threadIdx.x"):
                        for ax0_1 in T.unroll(4):
                            for ax1_1 in T.unroll(4):
                                with T.sblock("store"):
                                    v_3 = T.axis.spatial(16, ax0_0 * 4 + ax0_1)
                                    v_4 = T.axis.spatial(64, ax1_0 * 4 + ax1_1)
                                    T.reads(w_indptr[v_2:v_2 + 2], _local[v_3, v_4])
                                    T.writes(buffer_1[v_1, v_2 * 16 + v_3, v * 64 + v_4])
                                    buffer_1[v_1, v_2 * 16 + v_3, v * 64 + v_4] = T.if_then_else(w_indptr[v_2 + 1] > w_indptr[v_2], _local[v_3, v_4], T.float32(0.0))
    for v_v_v_v_fused_0 in T.thread_binding(5, thread="blockIdx.x"):
        for v_v_v_v_fused_1 in T.thread_binding(256, thread="threadIdx.x"):
            with T.sblock("y_slice"):
                v = T.axis.spatial(1, 0)
                v_1 = T.axis.spatial(32, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) // 36)
                v_2 = T.axis.spatial(6, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) % 36 // 6)
                v_3 = T.axis.spatial(6, (v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1) % 6)
                T.where(v_v_v_v_fused_0 * 256 + v_v_v_v_fused_1 < 1152)
                T.reads(buffer_1[v, v_1, v_2 * 8 + v_3])
                T.writes(buffer_2[v, v_1, v_2 * 6 + v_3])
                buffer_2[v, v_1, v_2 * 6 + v_3] = buffer_1[v, v_1, v_2 * 8 + v_3]



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



def test_cpu_block_sparse_conv2d_is_pinned():
    got = CpuBlockSparseConv2d().apply(_bsr_conv_16to32_6x6(), ZNVER3, False).mod["main"]
    _same(got, cpu_bsr_conv2d_16to32_6x6_znver3)


def test_cuda_block_sparse_conv2d_is_pinned():
    got = CudaBlockSparseConv2d().apply(_bsr_conv_16to32_6x6(), cuda_target("sm_80"), False)
    _same(got.mod["main"], cuda_bsr_conv2d_16to32_6x6_sm80)
