"""The dlight-style CPU rules: matching, ApplyDefaultSchedule, generic Relax matmuls."""

from __future__ import annotations

import numpy as np
import tvm
from kernel_helpers import assert_close, cpu_target, random_bsr
from tvm import relax
from tvm.s_tir import dlight as dl

from tetris_tvm.kernels import compute as K
from tetris_tvm.schedules.cpu import (
    BlockSparseConv2d,
    BlockSparseMatmul,
    DenseMatmul,
    default_rules,
)


def _run(mod, args, out_shape):
    lib = tvm.compile(mod, target=cpu_target())
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


def test_rules_match_only_their_kernels():
    rng = np.random.default_rng(0)
    bsr = random_bsr(rng, (32, 32), (16, 16), 0.5)
    lin = K.block_sparse_linear((4, 32), bsr)
    conv = K.block_sparse_conv2d((1, 2, 4, 4), random_bsr(rng, (32, 18), (16, 18), 0.0), 3)
    dense = K.dense_linear((4, 32), 32)
    tgt = cpu_target()
    assert BlockSparseMatmul().apply(lin, tgt, False) is not None
    assert BlockSparseMatmul().apply(conv, tgt, False) is None
    # the packed dense kernel takes the same register-tiled schedule (the fair baseline)
    assert BlockSparseMatmul().apply(dense, tgt, False) is not None
    assert BlockSparseConv2d().apply(conv, tgt, False) is not None
    assert BlockSparseConv2d().apply(lin, tgt, False) is None
    assert DenseMatmul().apply(dense, tgt, False) is not None
    assert DenseMatmul().apply(lin, tgt, False) is None
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert BlockSparseMatmul().apply(lin, cuda, False) is None


def test_apply_default_schedule_and_original_untouched():
    rng = np.random.default_rng(1)
    bsr = random_bsr(rng, (48, 40), (16, 16), 0.5, empty_rows=(1,))
    func = K.block_sparse_linear((9, 40), bsr, bias=True, activation="relu", fmt="bsr")
    before = func.script()
    mod = tvm.IRModule({"main": func})
    with cpu_target():
        scheduled = dl.ApplyDefaultSchedule(*default_rules())(mod)
    assert bool(scheduled["main"].attrs["tirx.is_scheduled"])
    assert func.script() == before  # scheduling works on a copy
    x = rng.standard_normal((9, 40)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    args = [x, *K.linear_weight_args(bsr, bias, "bsr")]
    expected = np.maximum(x @ bsr.to_dense().T + bias, 0)
    assert_close(_run(scheduled, args, (9, 48)), expected)
    # the unscheduled kernel is correct too (empty block-rows are guarded, not just decomposed)
    assert_close(_run(mod, args, (9, 48)), expected)


def _legalized_linear(x_shape, w, bias, activation):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.linear(x, relax.const(w), relax.const(bias)))
            if activation == "gelu":
                y = bb.emit(relax.op.nn.gelu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    seq = tvm.ir.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.FoldConstant(),
        relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
        relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(),
    ])
    return seq(bb.get())


def test_generic_relax_linear_is_scheduled():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((96, 64)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    x = rng.standard_normal((2, 7, 64)).astype(np.float32)
    mod = _legalized_linear(x.shape, w, bias, "gelu")
    with cpu_target():
        scheduled = dl.ApplyDefaultSchedule(*default_rules())(mod)
    prims = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and all(bool(f.attrs.get("tirx.is_scheduled", False)) for f in prims)
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=cpu_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    import torch

    expected = torch.nn.functional.gelu(torch.from_numpy(x @ w.T + bias)).numpy()
    assert_close(out, expected)


def test_generic_rule_declines_non_matmul():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.sum(x, axis=1)))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    prim = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)][0]
    assert DenseMatmul().apply(prim, cpu_target(), False) is None


def test_fallback_keeps_bool_to_int8_casts_correct():
    """A mask check as MiniLM's attention lowers it: max(int8(not(x == -inf))) over a row.

    Vectorised, TVM 0.27 produced -1 for True; the Fallback rule must keep the value 1.
    """
    from tvm.script import tirx as T

    from tetris_tvm.schedules.cpu.fallback import Fallback

    @T.prim_func(s_tir=True)
    def mask_check(x: T.Buffer((4, 64, 128), "float32"), out: T.Buffer((4, 64, 1), "int8")):
        eq = T.sblock_alloc_buffer((4, 64, 128), "bool")
        flag = T.sblock_alloc_buffer((4, 64, 128), "int8")
        for a, b, c in T.grid(4, 64, 128):
            with T.sblock("eq"):
                va, vb, vc = T.axis.remap("SSS", [a, b, c])
                eq[va, vb, vc] = not (x[va, vb, vc] == T.float32("-inf"))
        for a, b, c in T.grid(4, 64, 128):
            with T.sblock("cast"):
                va, vb, vc = T.axis.remap("SSS", [a, b, c])
                flag[va, vb, vc] = T.Cast("int8", eq[va, vb, vc])
        for a, b, z, c in T.grid(4, 64, 1, 128):
            with T.sblock("red"):
                va, vb, vz, vc = T.axis.remap("SSSR", [a, b, z, c])
                with T.init():
                    out[va, vb, vz] = T.int8(-128)
                out[va, vb, vz] = T.max(out[va, vb, vz], flag[va, vb, vc])

    x = np.random.default_rng(0).standard_normal((4, 64, 128)).astype("f4")
    x[0, 0, :] = -np.inf  # one fully masked row -> 0
    with cpu_target():
        mod = dl.ApplyDefaultSchedule(Fallback())(tvm.IRModule({"main": mask_check}))
    lib = tvm.compile(mod, target=cpu_target())
    out = tvm.runtime.tensor(np.zeros((4, 64, 1), "int8"))
    lib["main"](tvm.runtime.tensor(x), out)
    expected = np.ones((4, 64, 1), "int8")
    expected[0, 0, 0] = 0
    np.testing.assert_array_equal(out.numpy(), expected)
