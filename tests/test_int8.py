"""int8 builds: kernels against integer arithmetic in numpy, whole builds against their
fake-quantised masked reference, and what an int8 build refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

import tetris_tvm
from tetris_tvm.kernels import int8 as K8
from tetris_tvm.quantization import (
    fake_quantize_rows,
    quantize_weight,
    quantized_reference,
    static_params,
)


def _host():
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(),
                              "num-cores": 2})


HOST = _host()


def _host_dots() -> list[str]:
    """The dot-product forms this machine can run (the generic one always)."""
    from tvm.target import codegen

    cpu = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    best = K8.dot_for_target(cpu).name
    order = ["vnni", "avx512bw", "avx2"]
    usable = order[order.index(best):] if best in order else []
    return [*usable, "generic"]


def _run_linear(dot_name, rows, k, n, block, density, *, dense=False, bias=True,
                activation="relu", static=None, seed=0):
    rng = np.random.default_rng(seed)
    dot = K8.DOTS[dot_name]
    bn, bk = block
    keep = rng.random((-(-n // bn), -(-k // bk))) < density
    mask = np.kron(keep, np.ones(block, bool))[:n, :k]
    w = rng.standard_normal((n, k)).astype(np.float32) * mask
    q, scale = quantize_weight(w)
    x = (rng.standard_normal((rows, k)) * 2 + 0.3).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    kq = K8.padded_k(k, k if dense else bk)
    args = K8.int8_linear_args(q, scale, block, dense, b if bias else None, threads=2)
    quant = K8.quantize_rows((rows, k), kq, dot, static=static, threads=2)
    lin = K8.int8_linear((rows, k), n, block, args[0].shape[0], dot, dense=dense,
                         bias=bias, activation=activation, threads=2)
    target = HOST
    mq = tvm.compile(tvm.IRModule({"main": quant}), target=target)
    ml = tvm.compile(tvm.IRModule({"main": lin}), target=target)
    dev = tvm.cpu()
    tq = tvm.runtime.tensor(np.zeros((rows, kq), dot.act_dtype), dev)
    ts = tvm.runtime.tensor(np.zeros(rows, np.float32), dev)
    tz = tvm.runtime.tensor(np.zeros(rows, np.int32), dev)
    mq["main"](tvm.runtime.tensor(x, dev), tq, ts, tz)
    ty = tvm.runtime.tensor(np.full((rows, n), np.nan, np.float32), dev)
    ml["main"](tq, ts, tz, *[tvm.runtime.tensor(a, dev) for a in args], ty)
    qx, sx, zx = tq.numpy().astype(np.int64), ts.numpy(), tz.numpy()
    acc = qx[:, :k] @ q.astype(np.int64).T - zx[:, None] * q.astype(np.int64).sum(1)[None]
    want = acc.astype(np.float32) * (sx[:, None] * scale[None])
    if bias:
        want = want + b
    if activation == "relu":
        want = np.maximum(want, 0)
    return x, ty.numpy(), want, (qx, sx, zx, dot)


@pytest.mark.parametrize("dot", _host_dots())
@pytest.mark.parametrize(
    ("rows", "k", "n", "block", "density", "dense"),
    [
        (64, 96, 64, (32, 32), 0.5, False),
        (37, 50, 45, (16, 8), 0.5, False),   # odd shapes: padded K, a cut last block-row
        (10, 96, 64, (32, 32), 1.0, True),   # the dense kernel
        (1, 64, 32, (16, 16), 0.3, False),   # one row (batch 1)
        (13, 64, 64, (32, 32), 0.0, False),  # every block-row empty: bias (and relu) only
        (300, 96, 64, (32, 32), 0.97, False),  # row chunks
    ],
)
def test_int8_linear_is_integer_arithmetic(dot, rows, k, n, block, density, dense):
    if K8.DOTS[dot].widths[-1] > block[0] and dot != "generic":
        pytest.skip("block narrower than the instruction")
    _, got, want, _ = _run_linear(dot, rows, k, n, block, density, dense=dense)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("static", [None, (0.03, 120)])
def test_quantize_rows_matches_the_torch_fake_quantisation(static):
    dot = K8.DOTS["generic"]
    x, _, _, (qx, sx, zx, _) = _run_linear("generic", 20, 40, 16, (16, 8), 0.5, static=static)
    back = (qx[:, :40] - zx[:, None]) * sx[:, None]
    want = fake_quantize_rows(torch.from_numpy(x), dot.qmin, dot.qmax, static).numpy()
    np.testing.assert_allclose(back, want, rtol=1e-6, atol=1e-6)
    assert (qx >= dot.qmin).all() and (qx <= dot.qmax).all()


def test_static_params_cover_the_range():
    scale, zero = static_params(-1.0, 3.0, 0, 255)
    assert zero == 64 and abs(scale - 4.0 / 255) < 1e-7
    assert static_params(0.0, 0.0, 0, 255) == (1.0, 0)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 48),
                               torch.nn.ReLU(), torch.nn.Linear(48, 10)).eval()


@pytest.mark.parametrize("activations", ["dynamic", "static"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("batch", [1, 16])
def test_int8_build_equals_its_fake_quantised_reference(activations, sparsity, batch):
    model = _mlp()
    x = torch.randn(batch, 64)
    cm = tetris_tvm.compile(model, (x,), sparsity=sparsity, block_size=16, quantize="int8",
                            activations=activations,
                            calibration=[torch.randn(16, 64) for _ in range(3)],
                            progress=False)
    q = cm.plan.quantization
    assert q["scheme"] == "int8" and len(q["layers"]) == 3
    assert all(r["precision"] == "int8" for r in cm.report.layers)
    with torch.no_grad():
        want = quantized_reference(model, cm.plan)(x)
        dense = model(x)
    got = cm(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if sparsity == 0.0:  # int8 alone costs little on this model
        assert float((got - dense).abs().max() / dense.abs().max()) < 0.05


def _cnn():
    """Convs of every GEMM operand form (plain, padded + strided, dilated) and a grouped one."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1, groups=3),
                         nn.Conv2d(24, 32, (2, 3), padding=(1, 2), dilation=(1, 2)), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 6 * 5, 32), nn.ReLU(),
                         nn.Linear(32, 5)).eval()


@pytest.mark.parametrize("activations", ["dynamic", "static"])
@pytest.mark.parametrize(("sparsity", "batch"), [(0.0, 1), (0.5, 3), (0.9, 2)])
def test_int8_convs_equal_their_fake_quantised_reference(activations, sparsity, batch):
    """Convs run int8 (each image quantized, its patches gathered as bytes, the int8 GEMM
    over them); the grouped conv stays float32 and says why."""
    model = _cnn()
    x = torch.randn(batch, 3, 11, 11)
    cm = tetris_tvm.compile(model, (x,), sparsity=sparsity, block_size=8, quantize="int8",
                            activations=activations,
                            calibration=[torch.randn(4, 3, 11, 11) for _ in range(3)],
                            reconstruct=False, progress=False)
    precision = {r["name"]: r["precision"] for r in cm.report.layers}
    assert precision == {"0.weight": "int8", "2.weight": "int8", "5.weight": "int8",
                         "8.weight": "int8", "10.weight": "int8"}
    assert "groups=1" in cm.plan.quantization["float32"].get("4.weight", "groups=1")
    with torch.no_grad():
        want = quantized_reference(model, cm.plan)(x)
    # four quantized layers in a row: an input on a rounding boundary may land one step
    # apart (the float32 sums run in another order), which moves an output by ~1e-4 of its
    # range; a wrong patch or weight moves it by far more
    torch.testing.assert_close(cm(x), want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_int8_build_exports_and_plan_round_trips(tmp_path):
    model = _mlp()
    x = torch.randn(4, 64)
    cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=16, quantize="int8",
                            progress=False)
    loaded = tetris_tvm.load(cm.export(tmp_path / "m.so"))
    np.testing.assert_allclose(loaded(x.numpy()), cm(x).numpy(), rtol=1e-6, atol=1e-6)
    cm.plan.save(tmp_path / "p.npz")
    plan = tetris_tvm.PruningPlan.load(tmp_path / "p.npz")
    assert plan.quantization == cm.plan.quantization
    with torch.no_grad():
        np.testing.assert_allclose(quantized_reference(model, plan)(x).numpy(),
                                   quantized_reference(model, cm.plan)(x).numpy())
    again = tetris_tvm.compile(model, (x,), plan=plan, quantize="int8", progress=False)
    np.testing.assert_allclose(again(x).numpy(), cm(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int4"}, r"quantize must be None or 'int8'"),
        ({"quantize": "int8", "activations": "per-tensor"}, r"activations must be one of"),
        ({"quantize": "int8", "activations": "static"}, r"calibration=\[example inputs\]"),
        ({"quantize": "int8", "dynamic_batch": True}, r"fixed batch"),
        ({"quantize": "int8", "dtype": "float16"}, r"not both"),
    ],
)
def test_int8_refusals_are_in_our_words(options, message):
    with pytest.raises(ValueError, match=message):
        tetris_tvm.compile(_mlp(), (torch.randn(4, 64),), sparsity=0.5, block_size=16,
                           progress=False, **options)


def test_dot_instruction_follows_the_target_features():
    def dot(spec):
        return K8.dot_for_target(tvm.target.Target(spec)).name

    assert dot({"kind": "llvm", "mcpu": "znver4"}) == "vnni"
    assert dot({"kind": "llvm", "mcpu": "skylake-avx512"}) == "avx512bw"
    assert dot({"kind": "llvm", "mcpu": "znver3"}) == "avx2"
    assert dot({"kind": "llvm", "mcpu": "alderlake"}) == "avxvnni"
    assert dot({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+dotprod"]}) == "sdot"
    assert dot({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == "generic"
    assert dot({"kind": "cuda", "arch": "sm_80"}) == "dp4a"


def test_every_dot_form_builds_for_its_target():
    """Each instruction form compiles (also those this machine cannot run: sdot for aarch64,
    AVX-VNNI)."""
    targets = {
        "vnni": {"kind": "llvm", "mcpu": "znver4"},
        "avxvnni": {"kind": "llvm", "mcpu": "alderlake"},
        "avx512bw": {"kind": "llvm", "mcpu": "skylake-avx512"},
        "avx2": {"kind": "llvm", "mcpu": "znver3"},
        "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+dotprod"]},
        "generic": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
    }
    for name, spec in targets.items():
        dot = K8.DOTS[name]
        func = K8.int8_linear((8, 64), 32, (16, 16), 3, dot, bias=True, activation="gelu",
                              threads=2)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(spec))
        assert lib is not None, name


def test_rectangular_blocks_run_int8_or_say_why_not():
    """Blocks of 32 outputs x 4 (or 1) inputs run the int8 kernels; blocks of one output row
    cannot (the dot instruction fills a vector of outputs): they stay float32, with a
    warning that names the layers."""
    model = _mlp()
    x = torch.randn(8, 64)
    for block in ((32, 4), (32, 1)):
        cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=block, quantize="int8",
                                progress=False)
        assert {r["precision"] for r in cm.report.layers} == {"int8"}
        with torch.no_grad():
            want = quantized_reference(model, cm.plan)(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with pytest.warns(UserWarning, match=r"stay float32 because int8 blocks need rows"):
        cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=(1, 32), quantize="int8",
                                progress=False)
    assert {r["precision"] for r in cm.report.layers} == {"float32"}
