"""The tetris-tvm command: help, compile a user model (module:factory), export, report."""

import os
import subprocess
import sys

import pytest

FACTORY = '''
import torch
import torch.nn as nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
'''


def run(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tetris_tvm.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


@pytest.mark.parametrize("command", ["prune", "compile", "tune", "bench", "finetune", "report"])
def test_help(command):
    res = run(command, "--help")
    assert res.returncode == 0 and "usage: tetris-tvm" in res.stdout


def test_bad_arguments_are_clear():
    res = run("prune", "--sparsity", "1.5")
    assert res.returncode != 0 and "sparsity must be in [0, 1)" in res.stderr
    res = run("compile", "--model", "nope")
    assert res.returncode != 0 and "neither one of" in res.stderr
    res = run("compile", "--model", "mnist-cnn", "--attention", "int8")
    assert res.returncode != 0 and "attention='int8' needs quantize='int8'" in res.stderr
    res = run("compile", "--model", "mnist-cnn", "--latency", "2")
    assert res.returncode != 0 and "give milliseconds as a string" in res.stderr
    res = run("compile", "--model", "mnist-cnn", "--latency", "0.5", "--sparsity", "0.5")
    assert res.returncode != 0 and "give sparsity or latency, not both" in res.stderr


def test_compile_export_report_user_model(tmp_path):
    (tmp_path / "usermodel.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "m.so"
    res = run(
        "compile", "--model", "usermodel:make", "--input-shape", "4,32", "--block", "16",
        "--sparsity", "0.5", "--out", str(out), "--save-plan", str(tmp_path / "p.npz"), env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "runtime gathers 0" in res.stdout and out.exists()
    rep = run("report", str(out))
    assert rep.returncode == 0 and "0.weight" in rep.stdout
    # a block-sparse kernel: BSR, or blocked-ELL when the plan keeps as many blocks per row
    assert "bsr_linear" in rep.stdout or "ell_linear" in rep.stdout
    rep = run("report", str(tmp_path / "p.npz"))
    assert rep.returncode == 0 and "2.weight" in rep.stdout


RESIDUAL = '''
import torch
import torch.nn as nn

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.up = nn.Linear(32, 32), nn.Linear(32, 64)
        self.down, self.head = nn.Linear(64, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        return self.head(h + self.down(torch.relu(self.up(h))))

def make():
    torch.manual_seed(0)
    return Residual().eval()
'''


def test_compile_reports_the_residual_stream(tmp_path):
    (tmp_path / "resmodel.py").write_text(RESIDUAL)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "r.so"
    res = run("compile", "--model", "resmodel:make", "--input-shape", "4,32", "--block", "16",
              "--sparsity", "0.5", "--streams", "auto", "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stream of 32 channels, 4 layers, 1 joins" in res.stdout
    assert "-> shared" in res.stdout and "runtime gathers 0" in res.stdout
    rep = run("report", str(out))
    assert rep.returncode == 0 and "stream of 32 channels" in rep.stdout
    res = run("compile", "--model", "resmodel:make", "--input-shape", "4,32", "--streams", "x",
              env=env)
    assert res.returncode != 0 and "invalid choice" in res.stderr


def test_tune_then_compile_with_the_records(tmp_path):
    import json

    (tmp_path / "usermodel.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = ["--model", "usermodel:make", "--input-shape", "4,32", "--block", "16",
              "--sparsity", "0.5"]
    work, out = tmp_path / "tuning", tmp_path / "tune.json"
    res = run("tune", *common, "--work-dir", str(work), "--trials", "3", "--quiet",
              "--json", str(out), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "verdict" in res.stdout and "compile with --tuning" in res.stdout
    tasks = json.loads(out.read_text())["tasks"]
    assert tasks and all(0 < t["trials"] <= 3 for t in tasks)
    tuned = sum(t["verdict"] == "tuned" for t in tasks)
    res = run("compile", *common, "--tuning", str(work), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"tuned kernels {tuned}" in res.stdout
    res = run("compile", *common, "--tuning", str(tmp_path / "nothing"), env=env)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_recovery_flags_on_a_user_model(tmp_path):
    import torch

    (tmp_path / "usermodel.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cal = tmp_path / "cal.pt"
    torch.save([torch.randn(16, 32) for _ in range(3)], cal)
    res = run("prune", "--model", "usermodel:make", "--block", "16", "--sparsity", "0.5",
              "--calibration", str(cal), "--reconstruct", "--allocation", "sensitivity",
              "--out", str(tmp_path / "p.npz"), "--quiet", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sparsity" in res.stdout
    res = run("compile", "--model", "usermodel:make", "--input-shape", "4,32", "--block", "16",
              "--plan", str(tmp_path / "p.npz"), env=env)
    assert res.returncode == 0 and "runtime gathers" in res.stdout, res.stderr[-2000:]
    res = run("prune", "--model", "usermodel:make", "--reconstruct", env=env)
    assert res.returncode != 0 and "need calibration data" in res.stderr
    res = run("prune", "--model", "usermodel:make", "--calibrate", "8", env=env)
    assert res.returncode != 0 and "--calibration FILE" in res.stderr
