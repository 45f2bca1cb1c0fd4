"""LowerAttention on TVMScript modules, and scaled_dot_product_attention compiled end to end.

The pass replaces float32 ``nn.attention`` (with or without a bias) with static shapes by the
fused CPU kernel and leaves causal attention for LegalizeOps; it cancels a pair of transposes
that compose to the identity and merges a pair that does not. Compiled models that call
``torch.nn.functional.scaled_dot_product_attention`` (bool mask with a fully masked row, float
mask, none, causal) match torch, with the fused kernel wherever the importer kept attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

import tetris_tvm
from tetris_tvm.attr_keys import Attr
from tetris_tvm.frontend import keepable_attention
from tetris_tvm.passes import LowerAttention


@I.ir_module
class Masked:
    @R.function
    def main(q: R.Tensor((2, 8, 3, 16), "float32"), k: R.Tensor((2, 12, 3, 16), "float32"),
             v: R.Tensor((2, 12, 3, 8), "float32"), m: R.Tensor((2, 1, 8, 12), "float32")
             ) -> R.Tensor((2, 8, 3, 8), "float32"):
        with R.dataflow():
            a = R.nn.attention(q, k, v, m, scale=0.5)
            R.output(a)
        return a


@I.ir_module
class Causal:
    @R.function
    def main(q: R.Tensor((1, 8, 2, 16), "float32")) -> R.Tensor((1, 8, 2, 16), "float32"):
        with R.dataflow():
            a = R.nn.attention(q, q, q, causal_mask="TopLeft")
            R.output(a)
        return a


@I.ir_module
class Transposes:
    @R.function
    def main(x: R.Tensor((2, 8, 3, 4), "float32")) -> R.Tuple(R.Tensor((2, 8, 3, 4), "float32"),
                                                              R.Tensor((3, 2, 8, 4), "float32")):
        with R.dataflow():
            a = R.permute_dims(x, [0, 2, 1, 3])
            b = R.permute_dims(a, [0, 2, 1, 3])
            c = R.permute_dims(a, [1, 0, 2, 3])
            d = R.add(b, x)
            R.output(d, c)
        return (d, c)


@I.ir_module
class TransposesExpected:
    @R.function
    def main(x: R.Tensor((2, 8, 3, 4), "float32")) -> R.Tuple(R.Tensor((2, 8, 3, 4), "float32"),
                                                              R.Tensor((3, 2, 8, 4), "float32")):
        with R.dataflow():
            c = R.permute_dims(x, [2, 0, 1, 3])
            d = R.add(x, x)
            R.output(d, c)
        return (d, c)


def _ops(mod: tvm.IRModule) -> list[str]:
    ops = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            op = getattr(binding.value, "op", None)
            ops.append(getattr(op, "name", None) or getattr(op, "name_hint", None))
    return ops


def _run(mod: tvm.IRModule, *args: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def test_attention_becomes_the_fused_kernel_and_computes_the_same():
    after = LowerAttention()(Masked)
    assert "relax.nn.attention_bias" not in _ops(after) and "relax.nn.attention" not in _ops(after)
    kernels = [f for _, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert [str(f.attrs[Attr.KERNEL]) for f in kernels] == ["attention"]
    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype(np.float32)
            for p in Masked["main"].params]
    args[3] = np.where(rng.random(args[3].shape) < 0.3, -np.inf, 0.0).astype(np.float32)
    args[3][..., 0] = 0.0
    np.testing.assert_allclose(_run(after, *args), _run(Masked, *args), rtol=1e-5, atol=1e-5)


def test_causal_attention_is_left_for_legalization():
    after = LowerAttention()(Causal)
    assert "relax.nn.attention" in _ops(after)
    assert not [f for _, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_transposes_cancel_or_merge():
    after = LowerAttention()(Transposes)
    after = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(after))
    tvm.ir.assert_structural_equal(after, TransposesExpected)


class SDPA(nn.Module):
    """Projections, heads, ``scaled_dot_product_attention`` and an output projection."""

    def __init__(self, mask: str | None = None, causal: bool = False, heads: int = 2,
                 dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = nn.Linear(dim * heads, 3 * dim * heads), nn.Linear(dim * heads, 8)
        self.mask, self.causal, self.heads = mask, causal, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        mask = None
        if self.mask == "bool":  # key padding, and query row 2 of example 1 sees nothing
            keep = torch.ones(b, 1, s, s, dtype=torch.bool)
            keep[0, :, :, s - 3:] = False
            keep[1, :, 2, :] = False
            mask = keep
        elif self.mask == "float":
            mask = torch.linspace(-2.0, 1.0, s).reshape(1, 1, 1, s)
        o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                       is_causal=self.causal)
        return self.out(o.transpose(1, 2).reshape(b, s, -1))


@pytest.mark.parametrize("mask,causal,fused", [
    ("bool", False, True), ("float", False, True), (None, False, True), (None, True, False),
])
def test_sdpa_models_compile_and_match_torch(mask, causal, fused):
    model = SDPA(mask, causal).eval()
    x = torch.randn(2, 8, 32)
    exported = torch.export.export(model, (x,))
    assert keepable_attention(exported) == fused
    lowered = tetris_tvm.lower(model, (x,), sparsity=0.0, progress=False)
    kinds = [str(f.attrs[Attr.KERNEL]) for _, f in lowered.mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and Attr.KERNEL in f.attrs]
    assert ("attention" in kinds) == fused
    assert lowered.report.attention == (["float32"] if fused else [])
    cm = tetris_tvm.build(lowered)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(np.asarray(cm(x)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", [None, "float32"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_int8_builds_quantize_attention_as_their_reference_does(attention, sparsity):
    from tetris_tvm.quantization import quantized_reference

    model = SDPA("bool", heads=2, dim=16).eval()
    x = torch.randn(2, 8, 32)
    cm = tetris_tvm.compile(model, (x,), sparsity=sparsity, block_size=16, quantize="int8",
                            attention=attention, progress=False)
    assert cm.plan.quantization["attention"] == (attention or "int8")
    assert cm.report.attention == [attention or "int8"]
    assert f"attention: fused kernel, 1 call {attention or 'int8'}" in cm.report.format_table()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        want = quantized_reference(model, cm.plan)(x)
        exact = model(x)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa  # restored after the run
    got = cm(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if sparsity == 0.0:  # int8 alone costs little
        assert float((got - exact).abs().max() / exact.abs().max()) < 0.05


def test_int8_attention_needs_an_int8_build():
    with pytest.raises(ValueError, match="attention='int8' needs quantize='int8'"):
        tetris_tvm.PruningSpec(attention="int8")
