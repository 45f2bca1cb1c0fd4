"""Deploy bundles: the model runs with TVM's runtime alone (a C++ runner, no Python), on this
machine and on aarch64 under emulation, and computes the masked torch reference."""

from __future__ import annotations

import platform
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import tetris_tvm
from tetris_tvm.deploy import runtime_libraries, target_arch

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.fc(torch.relu(self.c2(x)).flatten(1))


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(50, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    return [("mlp", mlp, torch.randn(4, 50)), ("cnn", CNN().eval(), torch.randn(2, 3, 8, 8))]


def _run(bundle, inputs, emulate: bool):
    for i, x in enumerate(inputs):
        np.save(bundle / f"in{i}.npy", x)
    command = [*(QEMU if emulate else []), "./run_model", "model.so", "--runs", "2",
               *(f"in{i}.npy" for i in range(len(inputs)))]
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)


def _check(tmp_path, target, emulate: bool, quantize=None):
    from tetris_tvm.quantization import quantized_reference

    for name, model, x in _models():
        cm = tetris_tvm.compile(model, (x,), target=target, sparsity=0.5, block_size=(16, 16),
                                quantize=quantize, progress=False)
        bundle = cm.export_bundle(tmp_path / name)
        assert sorted(p.name for p in (bundle / "lib").iterdir()) == ["libtvm_ffi.so",
                                                                      "libtvm_runtime.so"]
        done = _run(bundle, [x.numpy()], emulate)
        assert done.returncode == 0, done.stderr
        assert "latency: median" in done.stdout
        reference = quantized_reference(model, cm.plan)
        with torch.no_grad():
            want = reference(x).numpy()
        got = np.load(bundle / "output0.npy")
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), name


def test_host_bundle_runs_without_python(tmp_path):
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler")
    _check(tmp_path, "llvm", emulate=False)


def test_aarch64_bundle_runs_under_emulation(tmp_path):
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install g++-aarch64-linux-gnu "
                    "qemu-user)")
    _check(tmp_path, AARCH64, emulate=True)


def test_aarch64_int8_bundle_runs_under_emulation(tmp_path):
    """An int8 build for a board with the dot-product extension (``sdot``) matches its
    fake-quantised reference under emulation."""
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install g++-aarch64-linux-gnu "
                    "qemu-user)")
    target = {**AARCH64, "mattr": ["+neon", "+dotprod"]}
    _check(tmp_path, target, emulate=True, quantize="int8")


def test_target_arch():
    from tetris_tvm.schedules.targets import resolve_target

    assert target_arch(resolve_target(AARCH64)) == "aarch64"
    assert target_arch(resolve_target("llvm")) == platform.machine()


def test_runner_rejects_bad_inputs(tmp_path):
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler")
    _, model, x = _models()[0]
    cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=(16, 16), progress=False)
    bundle = cm.export_bundle(tmp_path / "b")
    cases = [
        (np.zeros((4, 51), np.float32), "input 'input': expected shape (4, 50) float32, got "
                                        "(4, 51)"),
        (np.zeros((4, 50), np.float64), "input 'input': expected dtype float32, got float64"),
    ]
    for array, message in cases:
        done = _run(bundle, [array], emulate=False)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    done = subprocess.run(["./run_model", "model.so", "missing.npy"], cwd=bundle,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "cannot open missing.npy" in done.stderr
    done = subprocess.run(["./run_model", "model.so"], cwd=bundle, capture_output=True,
                          text=True)
    assert done.returncode != 0 and "expected 1 input files (input (4, 50) float32)" in done.stderr


def test_runtime_that_cannot_be_found_fails_at_export(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no TVM runtime wheels are known for riscv64"):
        runtime_libraries("riscv64", tmp_path / "lib")
    empty = tmp_path / "empty"
    empty.mkdir()
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    with pytest.raises(ValueError, match="has neither libtvm_runtime.so and libtvm_ffi.so"):
        runtime_libraries(other, tmp_path / "lib2", runtime_dir=empty)
    monkeypatch.setenv("TETRIS_TVM_CACHE", str(tmp_path / "cache"))  # nothing cached
    with pytest.raises(RuntimeError, match=r"runtime for \w+ was not found.*runtime_dir"):
        runtime_libraries(other, tmp_path / "lib3", download=False)


def test_bundle_needs_a_cpu_target_and_a_compiler(tmp_path, monkeypatch):
    _, model, x = _models()[0]
    cm = tetris_tvm.compile(model, (x,), target=AARCH64, sparsity=0.5, block_size=(16, 16),
                            progress=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no cross compiler anywhere
    with pytest.raises(RuntimeError, match="building for aarch64 needs a cross compiler"):
        cm.export_bundle(tmp_path / "b")
