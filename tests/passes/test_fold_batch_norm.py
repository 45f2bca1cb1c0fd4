"""FoldBatchNorm: TVMScript before/after, and whole models against torch (masked reference)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

import tetris_tvm
from tetris_tvm.passes import FoldBatchNorm

C, EPS = 4, 1e-5
RNG = np.random.default_rng(0)
W = RNG.standard_normal((C, 3, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal((1, C, 1, 1)).astype(np.float32)
GAMMA, BETA, MEAN = (RNG.standard_normal(C).astype(np.float32) for _ in range(3))
VAR = RNG.uniform(0.5, 2.0, C).astype(np.float32)
SCALE = GAMMA.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + EPS)
SHIFT = BETA - MEAN.astype(np.float64) * SCALE


def _bind(mod: tvm.IRModule, **values: np.ndarray) -> tvm.IRModule:
    return relax.transform.BindParams("main", {k: tvm.runtime.tensor(v)
                                               for k, v in values.items()})(mod)


BN_PARAMS = dict(g=GAMMA, b=BETA, m=MEAN, v=VAR)


@I.ir_module
class ConvBN:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32"),
             g: R.Tensor((4,), "float32"), b: R.Tensor((4,), "float32"),
             m: R.Tensor((4,), "float32"), v: R.Tensor((4,), "float32")
             ) -> R.Tensor((1, 4, 6, 6), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            t = R.nn.batch_norm(y, g, b, m, v, axis=1, epsilon=1e-5, training=False)
            z = t[0]
            o = R.clip(z, R.prim_value(0), R.prim_value(6))
            R.output(o)
        return o


@I.ir_module
class ConvScaled:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32"),
             s: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 4, 6, 6), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            z = R.add(y, s)
            o = R.clip(z, R.prim_value(0), R.prim_value(6))
            R.output(o)
        return o


@I.ir_module
class ConvBiasBN:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32"),
             c: R.Tensor((1, 4, 1, 1), "float32"),
             g: R.Tensor((4,), "float32"), b: R.Tensor((4,), "float32"),
             m: R.Tensor((4,), "float32"), v: R.Tensor((4,), "float32")
             ) -> R.Tensor((1, 4, 6, 6), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            yb = R.add(y, c)
            t = R.nn.batch_norm(yb, g, b, m, v, axis=1, epsilon=1e-5, training=False)
            z = t[0]
            R.output(z)
        return z


@I.ir_module
class InputBN:
    @R.function
    def main(x: R.Tensor((2, 4, 5, 5), "float32"),
             g: R.Tensor((4,), "float32"), b: R.Tensor((4,), "float32"),
             m: R.Tensor((4,), "float32"), v: R.Tensor((4,), "float32")
             ) -> R.Tensor((2, 4, 5, 5), "float32"):
        with R.dataflow():
            t = R.nn.batch_norm(x, g, b, m, v, axis=1, epsilon=1e-5, training=False)
            z = t[0]
            R.output(z)
        return z


@I.ir_module
class InputScaled:
    @R.function
    def main(x: R.Tensor((2, 4, 5, 5), "float32"), s: R.Tensor((1, 4, 1, 1), "float32"),
             h: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((2, 4, 5, 5), "float32"):
        with R.dataflow():
            y = R.multiply(x, s)
            z = R.add(y, h)
            R.output(z)
        return z


def _channel(v: np.ndarray) -> np.ndarray:
    return v.reshape(1, C, 1, 1).astype(np.float32)


def test_conv_batch_norm_scales_the_weight_and_becomes_its_bias():
    before = _bind(ConvBN, w=W, **BN_PARAMS)
    scaled = (W * SCALE.reshape(-1, 1, 1, 1)).astype(np.float32)
    expected = _bind(ConvScaled, w=scaled, s=_channel(SHIFT))
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), expected)


def test_a_bias_between_conv_and_batch_norm_takes_the_shift():
    before = _bind(ConvBiasBN, w=W, c=BIAS, **BN_PARAMS)
    scaled = (W * SCALE.reshape(-1, 1, 1, 1)).astype(np.float32)
    bias = BIAS.reshape(-1) * SCALE + SHIFT

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32"),
                 c: R.Tensor((1, 4, 1, 1), "float32")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                y = R.nn.conv2d(x, w)
                z = R.add(y, c)
                R.output(z)
            return z

    tvm.ir.assert_structural_equal(FoldBatchNorm()(before),
                                   _bind(Expected, w=scaled, c=_channel(bias)))


def test_batch_norm_without_a_weight_before_it_is_one_multiply_add():
    before = _bind(InputBN, **BN_PARAMS)
    expected = _bind(InputScaled, s=_channel(SCALE), h=_channel(SHIFT))
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), expected)


def test_unbound_statistics_and_modules_without_batch_norm_are_unchanged():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(ConvBN), ConvBN)  # params, not constants
    tvm.ir.assert_structural_equal(FoldBatchNorm()(InputScaled), InputScaled)


def test_folded_module_computes_the_batch_norm():
    before = _bind(ConvBiasBN, w=W, c=BIAS, **BN_PARAMS)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    outs = []
    for mod in (before, FoldBatchNorm()(before)):
        mod = relax.transform.DecomposeOpsForInference()(mod)
        vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


class _Block(torch.nn.Module):
    """conv(+bias) -> BN -> ReLU6, a depthwise conv -> BN -> ReLU6, a linear -> BatchNorm1d,
    and a BN whose conv output is also read elsewhere (not foldable into the conv)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(6, 48, 1, bias=bias)
        self.b1 = torch.nn.BatchNorm2d(48)
        self.dw = torch.nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False)
        self.b2 = torch.nn.BatchNorm2d(48)
        self.c2 = torch.nn.Conv2d(48, 40, 3, padding=1, bias=bias)
        self.b3 = torch.nn.BatchNorm2d(40)
        self.fc = torch.nn.Linear(40, 24)
        self.b4 = torch.nn.BatchNorm1d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu6(self.b1(self.c1(x)))
        x = torch.nn.functional.relu6(self.b2(self.dw(x)))
        y = self.c2(x)
        x = self.b3(y) + y  # y read twice: the BN stays a multiply-add
        x = x.mean(dim=(2, 3))
        return self.b4(self.fc(x))


def _randomised(bias: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = _Block(bias).eval()
    for bn in (m.b1, m.b2, m.b3, m.b4):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    return m


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("bias", [False, True])
def test_compiled_model_with_batch_norms_matches_the_masked_reference(sparsity, bias):
    m = _randomised(bias)
    x = torch.randn(3, 6, 9, 9)
    cm = tetris_tvm.compile(m, (x,), sparsity=sparsity, block_size=16, progress=False)
    ref = cm.plan.apply(copy.deepcopy(m))(x) if cm.plan is not None else m(x)
    (got,) = cm.run_numpy(x.numpy())
    got = torch.as_tensor(got)
    torch.testing.assert_close(got, ref.detach(), rtol=2e-4, atol=2e-4)
    fused = {row["name"]: row["fused"] for row in cm.report.to_dict()["layers"]}
    assert fused["c1.weight"] == "bias+relu6"  # BN shift + ReLU6 in the kernel's epilogue
    assert "bias" in fused["fc.weight"]  # BatchNorm1d after a Linear folds too


def test_batch_norms_fold_with_a_dynamic_batch():
    m = _randomised(bias=True)
    cm = tetris_tvm.compile(m, (torch.randn(2, 6, 9, 9),), sparsity=0.5, block_size=16,
                            dynamic_batch=True, progress=False)
    for batch in (1, 5):
        x = torch.randn(batch, 6, 9, 9)
        (got,) = cm.run_numpy(x.numpy())
        ref = cm.plan.apply(copy.deepcopy(m))(x)
        torch.testing.assert_close(torch.as_tensor(got), ref.detach(), rtol=2e-4, atol=2e-4)


def test_batch_norms_after_runtime_gathers_stay_exact():
    # allow_gathers permutes every axis: where a gather stays between a conv and its batch
    # norm, the batch norm becomes a multiply-add on the gathered output
    m = _randomised(bias=False)
    x = torch.randn(2, 6, 9, 9)
    cm = tetris_tvm.compile(m, (x,), sparsity=0.5, block_size=16, allow_gathers=True,
                            progress=False)
    (got,) = cm.run_numpy(x.numpy())
    ref = cm.plan.apply(copy.deepcopy(m))(x)
    torch.testing.assert_close(torch.as_tensor(got), ref.detach(), rtol=2e-4, atol=2e-4)
