"""The RowReduction CPU rule: layer norm, softmax and masked softmax, scheduled row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from kernel_helpers import assert_close, cpu_target
from tvm import relax, s_tir
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms

from tetris_tvm.schedules.cpu.row_reduction import RowReduction


def _prim_funcs(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _legalized(build, *shapes):
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(build(*xs)))
        bb.emit_func_output(out)
    (func,) = _prim_funcs(relax.transform.LegalizeOps()(bb.get())).values()
    return func


def _args(func, rng):
    arrays = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        _, dtype, shape = info.as_json()
        shape = [int(d) for d in shape]
        if str(dtype) == "int8":
            arrays.append((rng.random(shape) < 0.5).astype("int8"))
        else:
            arrays.append(rng.standard_normal(shape).astype(str(dtype)))
    arrays[-1] = np.full_like(arrays[-1], np.nan)  # the output: poisoned
    return arrays


def _run(func, args, rule=None):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    if rule is not None:
        sch = rule.apply(func, cpu_target(), False)
        assert sch is not None, "the rule declined"
        mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=cpu_target())
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


CASES = {
    "layer_norm": lambda: _legalized(
        lambda x, g, b: relax.op.nn.layer_norm(x, g, b, axes=[-1]), (3, 5, 64), (64,), (64,)
    ),
    "softmax": lambda: _legalized(lambda x: relax.op.nn.softmax(x, axis=-1), (2, 3, 7, 32)),
    "rms_norm": lambda: _legalized(
        lambda x, g: relax.op.nn.rms_norm(x, g, axes=[-1]), (9, 48), (48,)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_row_reduction_matches_the_unscheduled_function(case):
    func = CASES[case]()
    args = _args(func, np.random.default_rng(0))
    expected = _run(func, args)
    assert_close(_run(func, args, RowReduction()), expected)


def _block_names(sch):
    names = []

    def visit(parent):
        for child in sch.get_child_blocks(parent):
            names.append(sch.get(child).name_hint)
            visit(child)

    visit(sch.get_sblock("root"))
    return names


def test_softmax_exp_is_computed_once_per_row_into_a_buffer():
    func = CASES["softmax"]()
    stored = _block_names(RowReduction().apply(func, cpu_target(), False))
    inlined = _block_names(RowReduction(store_shared=False).apply(func, cpu_target(), False))
    exp_blocks = [n for n in stored if "exp" in n and "sum" not in n]
    assert exp_blocks and not [n for n in inlined if "exp" in n and "sum" not in n]
    args = _args(func, np.random.default_rng(0))
    assert_close(_run(func, args, RowReduction(store_shared=False)), _run(func, args))


class _MaskedSoftmax(torch.nn.Module):
    """Softmax whose fully masked rows give 0, as torch's attention lowers a padding mask."""

    def forward(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        masked = scores.masked_fill(keep.unsqueeze(-2) == 0, float("-inf"))
        any_kept = (masked != float("-inf")).to(torch.int8).max(-1, keepdim=True).values > 0
        return torch.where(any_kept, torch.softmax(masked, -1), 0.0)


def test_masked_softmax_with_bool_stages_and_fully_masked_rows():
    from tetris_tvm.compiler import lower_model

    scores = torch.randn(2, 3, 16, 32)
    keep = (torch.rand(2, 1, 32) < 0.7).to(torch.int8)
    keep[0] = 0  # every row of image 0 fully masked -> 0, not NaN
    low = lower_model(_MaskedSoftmax(), (scores, keep), sparsity=0.0)
    funcs = _prim_funcs(low.mod)
    taken = {n: f for n, f in funcs.items() if RowReduction().apply(f, cpu_target(), False)}
    assert taken, f"RowReduction took none of {sorted(funcs)}"
    with cpu_target():
        mod = dl.ApplyDefaultSchedule(RowReduction())(low.mod)
    ex = relax.build(mod, target=cpu_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(scores.numpy()), tvm.runtime.tensor(keep.numpy()))
    got = got[0] if isinstance(got, tvm.ir.Array | list | tuple) else got
    expected = _MaskedSoftmax()(scores, keep).numpy()
    assert np.isfinite(got.numpy()).all()
    assert_close(got.numpy(), expected)


class _RowMaskedSoftmax(torch.nn.Module):
    """Softmax zeroed on masked query rows (a row mask of shape (..., 1), as MiniLM's)."""

    def forward(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(~keep.bool(), 0.0, torch.softmax(scores, -1))


def test_row_masked_softmax_vectorises_its_output_stage():
    from tetris_tvm.compiler import lower_model

    scores = torch.randn(2, 3, 16, 32)
    keep = (torch.rand(2, 3, 16, 1) < 0.6).to(torch.int8)
    low = lower_model(_RowMaskedSoftmax(), (scores, keep), sparsity=0.0)
    (func,) = [f for f in _prim_funcs(low.mod).values()
               if RowReduction().apply(f, cpu_target(), False)]
    base = s_tir.Schedule(func)
    last = base.get(base.get_child_blocks(base.get_sblock("root"))[-1]).name_hint
    sch = RowReduction().apply(func, cpu_target(), False)
    kinds = [sch.get(lp).kind for lp in sch.get_loops(sch.get_sblock(last))]
    assert tvm.tirx.ForKind.VECTORIZED in kinds, f"{last} was left scalar"
    with cpu_target():
        mod = dl.ApplyDefaultSchedule(RowReduction())(low.mod)
    vm = relax.VirtualMachine(relax.build(mod, target=cpu_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(scores.numpy()), tvm.runtime.tensor(keep.numpy()))
    got = got[0] if isinstance(got, tvm.ir.Array | list | tuple) else got
    assert_close(got.numpy(), _RowMaskedSoftmax()(scores, keep).numpy())


def test_declines_functions_without_a_row_reduction():
    add = _legalized(lambda x, y: relax.op.add(x, y), (4, 64), (4, 64))
    narrow = _legalized(lambda x: relax.op.nn.softmax(x, axis=-1), (4, 6))  # < 2 vectors wide
    assert RowReduction().apply(add, cpu_target(), False) is None
    assert RowReduction().apply(narrow, cpu_target(), False) is None


@pytest.mark.parametrize(
    "pool",
    [
        lambda x: relax.op.nn.max_pool2d(x, pool_size=2, strides=2),
        lambda x: relax.op.nn.max_pool2d(x, pool_size=3, strides=2, padding=1),
        lambda x: relax.op.nn.avg_pool2d(x, pool_size=3, strides=1, padding=1),
    ],
    ids=["max2x2", "max3x3_pad", "avg3x3"],
)
def test_fallback_pooling_windows_match_the_unscheduled_function(pool):
    """Fallback's pooling path: outer outputs in parallel, window unrolled, last axis vectorised."""
    from tetris_tvm.schedules.cpu.fallback import Fallback

    func = _legalized(pool, (2, 5, 13, 14))
    args = _args(func, np.random.default_rng(1))
    assert_close(_run(func, args, Fallback()), _run(func, args))
