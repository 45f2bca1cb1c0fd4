"""The CPU rules for dense matmuls, depthwise convs, row reductions and the fallback, and the
operand-prefetch expansion, pinned
TVM dlight style: each rule's scheduled TensorIR for one small function on an AVX2 target,
compared structurally with the expected function below (the block-sparse rules are pinned in
test_pinned_schedules.py). A change to a rule that alters its output fails here until the
expected function is updated on purpose (print the new one with
``rule.apply(func, target, False).mod["main"].script()``)."""

# ruff: noqa: E501

from __future__ import annotations

import pytest
import tvm
from tvm import relax
from tvm.script import tirx as T

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cpu import DenseMatmul, ExpandOperandPrefetch, GroupedConv2d
from tetris_tvm.schedules.cpu.fallback import Fallback
from tetris_tvm.schedules.cpu.row_reduction import RowReduction

ZNVER3 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})  # AVX2, 8 lanes


def _legalized(build, shapes):
    """The one PrimFunc Relax makes of ``build`` (legalized and fused, as the pipeline does)."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(
        relax.transform.AnnotateTIROpPattern()(mod)))
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


def _dense_linear():
    return K.dense_linear((8, 32), 16, block_n=16, bias=True, activation="relu")


def _matmul_relu():
    return _legalized(lambda bb, x, w: relax.op.nn.relu(bb.emit(relax.op.matmul(x, w))),
                      [(8, 16), (16, 16)])


def _depthwise_conv():
    return _legalized(lambda bb, x, w: relax.op.nn.conv2d(x, w, padding=1, groups=8),
                      [(1, 8, 6, 6), (8, 1, 3, 3)])


def _softmax():
    return _legalized(lambda bb, x: relax.op.nn.softmax(x, axis=-1), [(4, 32)])


def _add_relu():
    return _legalized(lambda bb, x, y: relax.op.nn.relu(bb.emit(relax.op.add(x, y))),
                      [(64, 96), (64, 96)])


@T.prim_func(s_tir=True)
def pinned_dense_linear_8x32(x: T.Buffer((8, 32), "float32"), w_data: T.Buffer((1, 32, 16), "float32"), bias: T.Buffer((16,), "float32"), y: T.Buffer((8, 16), "float32")):
    T.func_attr({"tetris.activation": "relu", "tetris.block": [16, 32], "tetris.kernel": "dense_linear", "tetris.out_features": 16, "tetris.rows": 8})
    # with T.sblock("root"):
    buffer = T.decl_buffer((8, 32), data=x.data)
    buffer_1 = T.decl_buffer((8, 16), data=y.data)
    for v in T.parallel(1):
        with T.sblock("row"):
            v_1 = T.axis.spatial(1, v)
            T.reads(buffer[0:8, 0:32], w_data[v_1, 0:32, 0:16], bias[v_1 * 16:v_1 * 16 + 16])
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
                for v_0_1 in range(4):
                    for v_1_1 in T.unroll(8):
                        for v_1_2 in T.unroll(6):
                            for v_2 in T.vectorized(16):
                                with T.sblock("update_update"):
                                    v_3 = T.axis.spatial(8, v_0 * 6 + v_1_2)
                                    v_4 = T.axis.reduce(32, v_0_1 * 8 + v_1_1)
                                    v_5 = T.axis.spatial(16, v_2)
                                    T.where(v_0 * 6 + v_1_2 < 8)
                                    T.reads(buffer_2[v_3, v_5], buffer[v_3, v_4], w_data[v_1, v_4, v_5])
                                    T.writes(buffer_2[v_3, v_5])
                                    buffer_2[v_3, v_5] = buffer_2[v_3, v_5] + buffer[v_3, v_4] * w_data[v_1, v_4, v_5]
                for ax0 in T.unroll(6):
                    for ax1 in T.vectorized(16):
                        with T.sblock("store"):
                            v_2 = T.axis.spatial(8, v_0 * 6 + ax0)
                            v_3 = T.axis.spatial(16, ax1)
                            T.where(v_0 * 6 + ax0 < 8)
                            T.reads(buffer_2[v_2, v_3], bias[v_1 * 16 + v_3])
                            T.writes(buffer_1[v_2, v_1 * 16 + v_3])
                            buffer_1[v_2, v_1 * 16 + v_3] = T.Select(buffer_2[v_2, v_3] + bias[v_1 * 16 + v_3] < T.float32(0.0), T.float32(0.0), buffer_2[v_2, v_3] + bias[v_1 * 16 + v_3])


@T.prim_func(s_tir=True)
def pinned_generic_matmul_relu_8x16x16(x0: T.Buffer((T.int64(8), T.int64(16)), "float32"), x1: T.Buffer((T.int64(16), T.int64(16)), "float32"), compute_intermediate: T.Buffer((T.int64(8), T.int64(16)), "float32")):
    T.func_attr({"tirx.noalias": True})
    # with T.sblock("root"):
    matmul_intermediate = T.sblock_alloc_buffer((T.int64(8), T.int64(16)))
    for i1_0 in T.parallel(T.int64(1)):
        for i0_0 in T.serial(T.int64(2), annotations={"pragma_loop_partition_hint": 1}):
            for i0_1_init in T.unroll(T.int64(6)):
                for i1_1_init in T.vectorized(T.int64(16)):
                    with T.sblock("matmul_init"):
                        v_i0 = T.axis.spatial(T.int64(8), i0_0 * T.int64(6) + i0_1_init)
                        v_i1 = T.axis.spatial(T.int64(16), i1_0 * T.int64(16) + i1_1_init)
                        T.where(i0_0 * T.int64(6) + i0_1_init < T.int64(8))
                        T.reads()
                        T.writes(matmul_intermediate[v_i0, v_i1])
                        matmul_intermediate[v_i0, v_i1] = T.float32(0.0)
            for k in range(T.int64(16)):
                for i0_1 in T.unroll(T.int64(6)):
                    for i1_1 in T.vectorized(T.int64(16)):
                        with T.sblock("matmul_update"):
                            v_i0 = T.axis.spatial(T.int64(8), i0_0 * T.int64(6) + i0_1)
                            v_i1 = T.axis.spatial(T.int64(16), i1_0 * T.int64(16) + i1_1)
                            v_k = T.axis.reduce(T.int64(16), k)
                            T.where(i0_0 * T.int64(6) + i0_1 < T.int64(8))
                            T.reads(matmul_intermediate[v_i0, v_i1], x0[v_i0, v_k], x1[v_k, v_i1])
                            T.writes(matmul_intermediate[v_i0, v_i1])
                            matmul_intermediate[v_i0, v_i1] = matmul_intermediate[v_i0, v_i1] + x0[v_i0, v_k] * x1[v_k, v_i1]
            for ax0 in T.unroll(T.int64(6)):
                for ax1 in T.vectorized(T.int64(16)):
                    with T.sblock("compute"):
                        v_i0 = T.axis.spatial(T.int64(8), i0_0 * T.int64(6) + ax0)
                        v_i1 = T.axis.spatial(T.int64(16), ax1)
                        T.where(i0_0 * T.int64(6) + ax0 < T.int64(8))
                        T.reads(matmul_intermediate[v_i0, v_i1])
                        T.writes(compute_intermediate[v_i0, v_i1])
                        compute_intermediate[v_i0, v_i1] = T.max(matmul_intermediate[v_i0, v_i1], T.float32(0.0))


@T.prim_func(s_tir=True)
def pinned_depthwise_conv_8ch_6x6(x0: T.Buffer((T.int64(1), T.int64(8), T.int64(6), T.int64(6)), "float32"), x1: T.Buffer((T.int64(8), T.int64(1), T.int64(3), T.int64(3)), "float32"), group_conv2d_nchw: T.Buffer((T.int64(1), T.int64(8), T.int64(6), T.int64(6)), "float32")):
    T.func_attr({"op_pattern": 4, "tirx.noalias": True})
    # with T.sblock("root"):
    pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(8), T.int64(8), T.int64(8)))
    for nn_ff_fused in T.parallel(T.int64(8)):
        for ax0 in range(T.int64(8)):
            for ax1 in T.vectorized(T.int64(8)):
                with T.sblock("pad_temp"):
                    v_i0 = T.axis.spatial(T.int64(1), T.int64(0))
                    v_i1, v_i2, v_i3 = T.axis.remap("SSS", [nn_ff_fused, ax0, ax1])
                    T.reads(x0[v_i0, v_i1, v_i2 - T.int64(1), v_i3 - T.int64(1)])
                    T.writes(pad_temp[v_i0, v_i1, v_i2, v_i3])
                    pad_temp[v_i0, v_i1, v_i2, v_i3] = T.if_then_else(T.int64(1) <= v_i2 and v_i2 < T.int64(7) and T.int64(1) <= v_i3 and v_i3 < T.int64(7), x0[v_i0, v_i1, v_i2 - T.int64(1), v_i3 - T.int64(1)], T.float32(0.0))
        for yy, xx_0 in T.grid(T.int64(6), T.int64(1)):
            for xx_1_init in T.vectorized(T.int64(6)):
                with T.sblock("group_conv2d_nchw_init"):
                    v_nn = T.axis.spatial(T.int64(1), T.int64(0))
                    v_ff, v_yy = T.axis.remap("SS", [nn_ff_fused, yy])
                    v_xx = T.axis.spatial(T.int64(6), xx_0 * T.int64(6) + xx_1_init)
                    T.reads()
                    T.writes(group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx])
                    group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0.0)
            for rc in T.unroll(T.int64(1)):
                for ry in T.unroll(T.int64(3)):
                    for rx in T.unroll(T.int64(3)):
                        for xx_1 in T.vectorized(T.int64(6)):
                            with T.sblock("group_conv2d_nchw_update"):
                                v_nn = T.axis.spatial(T.int64(1), T.int64(0))
                                v_ff, v_yy = T.axis.remap("SS", [nn_ff_fused, yy])
                                v_xx = T.axis.spatial(T.int64(6), xx_0 * T.int64(6) + xx_1)
                                v_rc, v_ry, v_rx = T.axis.remap("RRR", [rc, ry, rx])
                                T.reads(group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx], pad_temp[v_nn, v_ff + v_rc, v_yy + v_ry, v_xx + v_rx], x1[v_ff, v_rc, v_ry, v_rx])
                                T.writes(group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx])
                                group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = group_conv2d_nchw[v_nn, v_ff, v_yy, v_xx] + pad_temp[v_nn, v_ff + v_rc, v_yy + v_ry, v_xx + v_rx] * x1[v_ff, v_rc, v_ry, v_rx]


@T.prim_func(s_tir=True)
def pinned_softmax_4x32(x0: T.Buffer((T.int64(4), T.int64(32)), "float32"), T_softmax_norm: T.Buffer((T.int64(4), T.int64(32)), "float32")):
    T.func_attr({"op_pattern": 4, "tirx.noalias": True})
    # with T.sblock("root"):
    T_softmax_maxelem = T.sblock_alloc_buffer((T.int64(4),))
    T_softmax_exp = T.sblock_alloc_buffer((T.int64(4), T.int64(32)))
    T_softmax_expsum = T.sblock_alloc_buffer((T.int64(4),))
    T_softmax_expsum_rf = T.sblock_alloc_buffer((T.int64(8), T.int64(4)))
    T_softmax_maxelem_rf = T.sblock_alloc_buffer((T.int64(8), T.int64(4)))
    for ax0_fused in T.parallel(T.int64(4)):
        for ax1 in range(T.int64(4)):
            for ax0 in T.vectorized(T.int64(8)):
                with T.sblock("T_softmax_maxelem_rf"):
                    vax1_1, v0, vax1_0 = T.axis.remap("SSR", [ax0, ax0_fused, ax1])
                    T.reads(x0[v0, vax1_0 * T.int64(8) + vax1_1])
                    T.writes(T_softmax_maxelem_rf[vax1_1, v0])
                    with T.init():
                        T_softmax_maxelem_rf[vax1_1, v0] = T.float32(-340282346638528859811704183484516925440.0)
                    T_softmax_maxelem_rf[vax1_1, v0] = T.max(T_softmax_maxelem_rf[vax1_1, v0], x0[v0, vax1_0 * T.int64(8) + vax1_1])
        for ax0 in range(T.int64(8)):
            with T.sblock("T_softmax_maxelem"):
                vax1_1, v0 = T.axis.remap("RS", [ax0, ax0_fused])
                T.reads(T_softmax_maxelem_rf[vax1_1, v0])
                T.writes(T_softmax_maxelem[v0])
                with T.init():
                    T_softmax_maxelem[v0] = T.float32(-340282346638528859811704183484516925440.0)
                T_softmax_maxelem[v0] = T.max(T_softmax_maxelem[v0], T_softmax_maxelem_rf[vax1_1, v0])
        for ax0_0 in range(T.int64(4)):
            for ax0_1 in T.vectorized(T.int64(8)):
                with T.sblock("T_softmax_exp"):
                    v0 = T.axis.spatial(T.int64(4), ax0_fused)
                    v1 = T.axis.spatial(T.int64(32), ax0_0 * T.int64(8) + ax0_1)
                    T.reads(x0[v0, v1], T_softmax_maxelem[v0])
                    T.writes(T_softmax_exp[v0, v1])
                    T_softmax_exp[v0, v1] = T.exp(x0[v0, v1] - T_softmax_maxelem[v0])
        for ax1 in range(T.int64(4)):
            for ax0 in T.vectorized(T.int64(8)):
                with T.sblock("T_softmax_expsum_rf"):
                    vax1_1, v0, vax1_0 = T.axis.remap("SSR", [ax0, ax0_fused, ax1])
                    T.reads(T_softmax_exp[v0, vax1_0 * T.int64(8) + vax1_1])
                    T.writes(T_softmax_expsum_rf[vax1_1, v0])
                    with T.init():
                        T_softmax_expsum_rf[vax1_1, v0] = T.float32(0.0)
                    T_softmax_expsum_rf[vax1_1, v0] = T_softmax_expsum_rf[vax1_1, v0] + T_softmax_exp[v0, vax1_0 * T.int64(8) + vax1_1]
        for ax0 in range(T.int64(8)):
            with T.sblock("T_softmax_expsum"):
                vax1_1, v0 = T.axis.remap("RS", [ax0, ax0_fused])
                T.reads(T_softmax_expsum_rf[vax1_1, v0])
                T.writes(T_softmax_expsum[v0])
                with T.init():
                    T_softmax_expsum[v0] = T.float32(0.0)
                T_softmax_expsum[v0] = T_softmax_expsum[v0] + T_softmax_expsum_rf[vax1_1, v0]
        for ax1_0 in range(T.int64(4)):
            for ax1_1 in T.vectorized(T.int64(8)):
                with T.sblock("T_softmax_norm"):
                    v0 = T.axis.spatial(T.int64(4), ax0_fused)
                    v1 = T.axis.spatial(T.int64(32), ax1_0 * T.int64(8) + ax1_1)
                    T.reads(T_softmax_exp[v0, v1], T_softmax_expsum[v0])
                    T.writes(T_softmax_norm[v0, v1])
                    T.sblock_attr({"axis": 1})
                    T_softmax_norm[v0, v1] = T_softmax_exp[v0, v1] / T_softmax_expsum[v0]


@T.prim_func(s_tir=True)
def pinned_add_relu_64x96(x0: T.Buffer((T.int64(64), T.int64(96)), "float32"), x1: T.Buffer((T.int64(64), T.int64(96)), "float32"), compute_intermediate: T.Buffer((T.int64(64), T.int64(96)), "float32")):
    T.func_attr({"tirx.noalias": True})
    # with T.sblock("root"):
    for ax0_ax1_fused_0 in T.parallel(T.int64(768)):
        for ax0_ax1_fused_1 in T.vectorized(T.int64(8)):
            with T.sblock("compute"):
                v0 = T.axis.spatial(T.int64(64), (ax0_ax1_fused_0 * T.int64(8) + ax0_ax1_fused_1) // T.int64(96))
                v1 = T.axis.spatial(T.int64(96), (ax0_ax1_fused_0 * T.int64(8) + ax0_ax1_fused_1) % T.int64(96))
                T.reads(x0[v0, v1], x1[v0, v1])
                T.writes(compute_intermediate[v0, v1])
                compute_intermediate[v0, v1] = T.max(x0[v0, v1] + x1[v0, v1], T.float32(0.0))


# ExpandOperandPrefetch: a block-sparse linear (32 rows, 16x16 blocks) as the CPU rule marks it
@T.prim_func(s_tir=True)
def prefetch_marked_bsr_32x32(x: T.Buffer((32, 32), "float32"), w_data: T.Buffer((1, 16, 16), "float32"), w_indices: T.Buffer((1,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((32, 32), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 16], "tetris.kernel": "bsr_linear", "tetris.out_features": 32, "tetris.rows": 32})
    # with T.sblock("root"):
    buffer = T.decl_buffer((32, 32), data=x.data)
    buffer_1 = T.decl_buffer((32, 32), data=y.data)
    for v in T.parallel(2):
        with T.sblock("row"):
            v_1 = T.axis.spatial(2, v)
            T.reads(w_indptr[v_1:v_1 + 2], buffer[0:32, 0:32], w_indices[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1])], w_data[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1]), 0:16, 0:16])
            T.writes(buffer_1[0:32, v_1 * 16:v_1 * 16 + 16])
            buffer_2 = T.sblock_alloc_buffer((32, 16))
            for v_0 in T.serial(6, annotations={"pragma_loop_partition_hint": 1}):
                for v_1_init in T.unroll(6):
                    for v_init in T.vectorized(16):
                        with T.sblock("update_init"):
                            v_2 = T.axis.spatial(32, v_0 * 6 + v_1_init)
                            v_3 = T.axis.spatial(16, v_init)
                            T.where(v_0 * 6 + v_1_init < 32)
                            T.reads()
                            T.writes(buffer_2[v_2, v_3])
                            buffer_2[v_2, v_3] = T.float32(0.0)
                for v_2 in T.serial(w_indptr[v_1 + 1] - w_indptr[v_1], annotations={"tetris.prefetch_operand": 1}):
                    for v_3 in T.unroll(16):
                        for v_1_1 in T.unroll(6):
                            for v_4 in T.vectorized(16):
                                with T.sblock("update_update"):
                                    v_5 = T.axis.spatial(32, v_0 * 6 + v_1_1)
                                    v_6, v_7, v_8 = T.axis.remap("RRS", [v_2, v_3, v_4])
                                    T.where(v_0 * 6 + v_1_1 < 32)
                                    T.reads(buffer_2[v_5, v_8], w_indptr[v_1:v_1 + 2], buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7], w_indices[w_indptr[v_1] + v_6], w_data[w_indptr[v_1] + v_6, v_7, v_8])
                                    T.writes(buffer_2[v_5, v_8])
                                    buffer_2[v_5, v_8] = buffer_2[v_5, v_8] + buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7] * w_data[w_indptr[v_1] + v_6, v_7, v_8]
                for ax0 in T.unroll(6):
                    for ax1 in T.vectorized(16):
                        with T.sblock("store"):
                            v_2 = T.axis.spatial(32, v_0 * 6 + ax0)
                            v_3 = T.axis.spatial(16, ax1)
                            T.where(v_0 * 6 + ax0 < 32)
                            T.reads(w_indptr[v_1:v_1 + 2], buffer_2[v_2, v_3])
                            T.writes(buffer_1[v_2, v_1 * 16 + v_3])
                            buffer_1[v_2, v_1 * 16 + v_3] = T.if_then_else(w_indptr[v_1 + 1] > w_indptr[v_1], buffer_2[v_2, v_3], T.float32(0.0))


# ... and as the pass expands the mark: one prefetch per register-tile row
@T.prim_func(s_tir=True)
def prefetch_expanded_bsr_32x32(x: T.Buffer((32, 32), "float32"), w_data: T.Buffer((1, 16, 16), "float32"), w_indices: T.Buffer((1,), "int32"), w_indptr: T.Buffer((3,), "int32"), y: T.Buffer((32, 32), "float32")):
    T.func_attr({"tetris.activation": "none", "tetris.block": [16, 16], "tetris.kernel": "bsr_linear", "tetris.out_features": 32, "tetris.rows": 32})
    # with T.sblock("root"):
    buffer = T.decl_buffer((32, 32), data=x.data)
    buffer_1 = T.decl_buffer((32, 32), data=y.data)
    for v in T.parallel(2):
        with T.sblock("row"):
            v_1 = T.axis.spatial(2, v)
            T.reads(w_indptr[v_1:v_1 + 2], buffer[0:32, 0:32], w_indices[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1])], w_data[w_indptr[v_1]:w_indptr[v_1] + (w_indptr[v_1 + 1] - w_indptr[v_1]), 0:16, 0:16])
            T.writes(buffer_1[0:32, v_1 * 16:v_1 * 16 + 16])
            buffer_2 = T.sblock_alloc_buffer((32, 16))
            for v_0 in T.serial(6, annotations={"pragma_loop_partition_hint": 1}):
                for v_1_init in T.unroll(6):
                    for v_init in T.vectorized(16):
                        with T.sblock("update_init"):
                            v_2 = T.axis.spatial(32, v_0 * 6 + v_1_init)
                            v_3 = T.axis.spatial(16, v_init)
                            T.where(v_0 * 6 + v_1_init < 32)
                            T.reads()
                            T.writes(buffer_2[v_2, v_3])
                            buffer_2[v_2, v_3] = T.float32(0.0)
                for v_2 in range(w_indptr[v_1 + 1] - w_indptr[v_1]):
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[T.Add(v_0 * 6, 0), T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[v_0 * 6 + 1, T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[v_0 * 6 + 2, T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[v_0 * 6 + 3, T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[v_0 * 6 + 4, T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(buffer[v_0 * 6 + 5, T.Add(w_indices[w_indptr[v_1] + T.min(v_2 + 1, w_indptr[v_1 + 1] - w_indptr[v_1] - 1)] * 16, 0)]), 0, 3, 1)
                    for v_3 in T.unroll(16):
                        for v_1_1 in T.unroll(6):
                            for v_4 in T.vectorized(16):
                                with T.sblock("update_update"):
                                    v_5 = T.axis.spatial(32, v_0 * 6 + v_1_1)
                                    v_6, v_7, v_8 = T.axis.remap("RRS", [v_2, v_3, v_4])
                                    T.where(v_0 * 6 + v_1_1 < 32)
                                    T.reads(buffer_2[v_5, v_8], w_indptr[v_1:v_1 + 2], buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7], w_indices[w_indptr[v_1] + v_6], w_data[w_indptr[v_1] + v_6, v_7, v_8])
                                    T.writes(buffer_2[v_5, v_8])
                                    buffer_2[v_5, v_8] = buffer_2[v_5, v_8] + buffer[v_5, w_indices[w_indptr[v_1] + v_6] * 16 + v_7] * w_data[w_indptr[v_1] + v_6, v_7, v_8]
                for ax0 in T.unroll(6):
                    for ax1 in T.vectorized(16):
                        with T.sblock("store"):
                            v_2 = T.axis.spatial(32, v_0 * 6 + ax0)
                            v_3 = T.axis.spatial(16, ax1)
                            T.where(v_0 * 6 + ax0 < 32)
                            T.reads(w_indptr[v_1:v_1 + 2], buffer_2[v_2, v_3])
                            T.writes(buffer_1[v_2, v_1 * 16 + v_3])
                            buffer_1[v_2, v_1 * 16 + v_3] = T.if_then_else(w_indptr[v_1 + 1] > w_indptr[v_1], buffer_2[v_2, v_3], T.float32(0.0))


CASES = {
    "dense_linear_8x32": (DenseMatmul, _dense_linear, pinned_dense_linear_8x32),
    "generic_matmul_relu_8x16x16": (DenseMatmul, _matmul_relu,
                                    pinned_generic_matmul_relu_8x16x16),
    "depthwise_conv_8ch_6x6": (GroupedConv2d, _depthwise_conv, pinned_depthwise_conv_8ch_6x6),
    "softmax_4x32": (RowReduction, _softmax, pinned_softmax_4x32),
    "add_relu_64x96": (Fallback, _add_relu, pinned_add_relu_64x96),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_rule_is_pinned(case):
    rule, build, expected = CASES[case]
    with ZNVER3:
        sch = rule().apply(build().with_attr("global_symbol", "main"), ZNVER3, False)
    got = (sch[0] if isinstance(sch, list) else sch).mod["main"]
    tvm.ir.assert_structural_equal(got.without_attr("global_symbol"),
                                   expected.without_attr("global_symbol"))


def test_operand_prefetch_expansion_is_pinned():
    mod = tvm.IRModule({"main": prefetch_marked_bsr_32x32})
    got = ExpandOperandPrefetch()(mod)["main"]
    tvm.ir.assert_structural_equal(got.without_attr("global_symbol"),
                                   prefetch_expanded_bsr_32x32.without_attr("global_symbol"))
