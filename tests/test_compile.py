"""End to end: tetris_tvm.compile vs the masked reference (the original model, weights * mask)."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm


class ResidualMLP(nn.Module):
    """Linear -> GELU -> Linear, a residual add and a layer norm, then a head."""

    def __init__(self, d=48, hidden=96, out=12):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, out)

    def forward(self, x):
        h = self.inp(x)
        h = self.norm(h + self.down(torch.nn.functional.gelu(self.up(h))))
        return self.head(h)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        x = torch.relu(self.c3(x))
        return self.fc(x.flatten(1))


def masked_reference(model, plan, *inputs):
    ref = copy.deepcopy(model)
    ref.load_state_dict(plan.masked_state_dict(model))
    with torch.no_grad():
        return ref.eval()(*inputs)


def assert_close(out, ref, rtol=1e-4):
    out, ref = np.asarray(out), np.asarray(ref)
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= rtol * scale + 1e-6, np.abs(out - ref).max() / scale


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("batch", [1, 5])
def test_residual_mlp(sparsity, batch):
    torch.manual_seed(0)
    model = ResidualMLP().eval()
    x = torch.randn(batch, 48)
    cm = tetris_tvm.compile(model, (x,), sparsity=sparsity, block_size=(16, 16))
    assert set(cm.plan) == {"inp.weight", "up.weight", "down.weight", "head.weight"}
    assert_close(cm(x), masked_reference(model, cm.plan, x))
    assert cm.report.totals["runtime_gathers"] == 0
    if sparsity > 0:
        assert all(r["kernel"] in ("bsr_linear", "ell_linear") for r in cm.report.layers)
        # up's output axis feeds only down (through GELU): it is the one TETRIS may permute
        assert cm.report.layers[1]["perm_out"]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_small_cnn(sparsity):
    torch.manual_seed(1)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    cm = tetris_tvm.compile(model, (x,), sparsity=sparsity, block_size=(8, 8))
    assert_close(cm(x), masked_reference(model, cm.plan, x))
    assert cm.report.totals["runtime_gathers"] == 0
    assert len(cm.report.layers) == 4


def test_odd_shapes_and_user_plan_with_gathers():
    torch.manual_seed(2)
    model = ResidualMLP(d=37, hidden=70, out=5).eval()
    x = torch.randn(3, 37)
    plan = tetris_tvm.prune(model, sparsity=0.6, block_size=(16, 8))
    cm = tetris_tvm.compile(model, (x,), plan=plan)
    assert cm.plan is plan
    assert cm.report.totals["runtime_gathers"] > 0  # the user's plan permutes inputs/outputs
    assert_close(cm(x), masked_reference(model, plan, x))
    assert_close(cm(x.numpy()), masked_reference(model, plan, x))


@pytest.mark.parametrize("dtype,rtol", [("float16", 1e-2), ("bfloat16", 4e-2)])
@pytest.mark.parametrize("model_cls,shape", [(ResidualMLP, (64,)), (SmallCNN, (3, 16, 16))])
def test_half_precision_layers_match_the_float32_reference(dtype, rtol, model_cls, shape):
    torch.manual_seed(0)
    model = (ResidualMLP(d=64, hidden=128, out=32) if model_cls is ResidualMLP
             else SmallCNN()).eval()
    x = torch.randn(5, *shape)
    cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=(16, 16), dtype=dtype)
    sparse = [r for r in cm.report.layers if not r["kernel"].startswith("dense")]
    assert sparse and all(r["kernel"].endswith(f"_{dtype}") for r in sparse)
    if model_cls is SmallCNN:
        assert any("conv2d" in r["kernel"] for r in sparse)
    out = cm(x)
    assert out.dtype == torch.float32  # inputs and outputs stay float32
    assert_close(out, masked_reference(model, cm.plan, x), rtol=rtol)
    with pytest.raises(AssertionError):  # the tolerance is tight enough to notice half math
        assert_close(out, masked_reference(model, cm.plan, x), rtol=1e-6)


@pytest.mark.parametrize("model_cls,shape", [(ResidualMLP, (48,)), (SmallCNN, (3, 16, 16))])
def test_dynamic_batch_runs_every_batch_size(model_cls, shape, tmp_path):
    torch.manual_seed(0)
    model = model_cls().eval()
    cm = tetris_tvm.compile(model, (torch.randn(4, *shape),), sparsity=0.5,
                            block_size=(16, 16), dynamic_batch=True)
    for batch in (1, 3, 7, 30):  # 30: more rows than the 24 a kernel pads to
        x = torch.randn(batch, *shape)
        assert_close(cm(x), masked_reference(model, cm.plan, x))
    loaded = tetris_tvm.load(cm.export(tmp_path / "dyn.so"))
    x = torch.randn(5, *shape)
    assert_close(loaded(x.numpy()), masked_reference(model, cm.plan, x))


def test_bounded_dynamic_batch_and_its_errors():
    torch.manual_seed(0)
    model = ResidualMLP().eval()
    cm = tetris_tvm.compile(model, (torch.randn(2, 48),), sparsity=0.5, block_size=(16, 16),
                            dynamic_batch=16)
    x = torch.randn(16, 48)
    assert_close(cm(x), masked_reference(model, cm.plan, x))
    with pytest.raises(ValueError, match="dynamic_batch must be"):
        tetris_tvm.compile(model, (x,), dynamic_batch=0)
    with pytest.raises(ValueError, match="fixed shapes"):
        tetris_tvm.tune(model, (x,), work_dir="unused", dynamic_batch=True)


def test_bad_arguments():
    model = ResidualMLP().eval()
    x = torch.randn(1, 48)
    with pytest.raises(ValueError, match="sparsity"):
        tetris_tvm.compile(model, (x,), sparsity=1.0)
    with pytest.raises(ValueError, match="unknown target"):
        tetris_tvm.compile(model, (x,), target="tpu")
    with pytest.raises(ValueError, match="dtype must be"):
        tetris_tvm.compile(model, (x,), dtype="float64")
    with pytest.raises(ValueError, match="example input"):
        tetris_tvm.compile(model, ("nope",))
    other = tetris_tvm.prune(ResidualMLP(d=40).eval(), sparsity=0.5, block_size=8)
    with pytest.raises(ValueError, match="plan was made for shape"):
        tetris_tvm.compile(model, (x,), plan=other)


def test_unexportable_model_gets_a_hint():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x

    with pytest.raises(RuntimeError, match="hint"):
        tetris_tvm.compile(Branchy(), (torch.randn(2, 3),))


def test_export_and_load_in_a_fresh_process_without_torch(tmp_path):
    torch.manual_seed(3)
    model = ResidualMLP().eval()
    x = torch.randn(4, 48)
    cm = tetris_tvm.compile(model, (x,), sparsity=0.75, block_size=(16, 16))
    path = cm.export(tmp_path / "model.so")
    np.save(tmp_path / "x.npy", x.numpy())
    expected = cm(x).numpy()
    script = f"""
import sys, json, numpy as np
sys.modules["torch"] = None  # torch must not be needed to run an exported model
import tetris_tvm
m = tetris_tvm.load({str(path)!r})
out = m(np.load({str(tmp_path / "x.npy")!r}))
np.save({str(tmp_path / "out.npy")!r}, out)
print(json.dumps({{"ok": True}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["ok"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_minilm_short_sequence(sparsity):
    zoo = pytest.importorskip("tetris_tvm.zoo")
    try:
        model, tok = zoo.load_minilm()
    except ImportError as e:
        pytest.skip(str(e))
    ids = zoo.minilm_inputs(tok, batch=2, seq=16)
    cm = tetris_tvm.compile(model, (ids,), sparsity=sparsity)
    out = cm(ids)
    out = out[0] if isinstance(out, tuple) else out
    ref = masked_reference(model, cm.plan, ids).last_hidden_state
    assert_close(out, ref)
    assert len(cm.plan) == 37


@pytest.mark.slow
def test_mnist_cnn():
    zoo = pytest.importorskip("tetris_tvm.zoo")
    try:
        model = zoo.load_mnist_cnn()
        x, _ = zoo.mnist_data()
    except ImportError as e:
        pytest.skip(str(e))
    xb = torch.from_numpy(x[:8])
    for sparsity in (0.0, 0.5, 0.9):
        cm = tetris_tvm.compile(model, (xb,), sparsity=sparsity, block_size=(8, 8))
        assert_close(cm(xb), masked_reference(model, cm.plan, xb))
        assert cm.report.totals["runtime_gathers"] == 0


def test_cross_compile_export_for_aarch64(tmp_path):
    """export(cross_compiler=...) links a library for another machine (ELF machine aarch64)."""
    import shutil

    cc = shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
    torch.manual_seed(4)
    model = ResidualMLP().eval()
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
    cm = tetris_tvm.compile(model, (torch.randn(2, 48),), target=target, sparsity=0.5,
                            block_size=(16, 16))
    path = cm.export(tmp_path / "model_aarch64.so", cross_compiler=cc)
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


class _RepeatedMask(nn.Module):
    """Two layers that each rebuild the same mask from the input, as transformer layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x).masked_fill(keep.unsqueeze(-1) == 0, 0.0)
        return self.fc2(h).masked_fill(keep.unsqueeze(-1) == 0, 0.0)


def test_a_computation_every_layer_repeats_runs_once():
    from tetris_tvm.compiler import lower_model

    torch.manual_seed(0)
    m = _RepeatedMask().eval()
    x, keep = torch.randn(4, 32), (torch.rand(4) < 0.5).to(torch.int64)
    low = lower_model(m, (x, keep), sparsity=0.5, block_size=16, progress=False)
    calls = [str(b.value.args[0]) for blk in low.mod["main"].body.blocks for b in blk.bindings
             if "call_tir" in str(getattr(b.value, "op", ""))]
    masks = [c for c in calls if "equal" in c]
    assert len(masks) == 1, calls
    cm = tetris_tvm.compile(m, (x, keep), sparsity=0.5, block_size=16, progress=False)
    ref = cm.plan.apply(copy.deepcopy(m))
    torch.testing.assert_close(cm(x, keep), ref(x, keep), rtol=1e-5, atol=1e-5)
