"""Deploy bundles: sizes, outputs against the masked reference, and the C++ runner's latency.

For each model (the pruned MNIST CNN at 75%, 8x8 blocks, batch 1 and 64; a pruned MLP at
batch 1) and each architecture (this machine; aarch64 under qemu-aarch64 when the cross
compiler and qemu are installed): build the bundle, run its C++ runner on .npy inputs, compare
the outputs with the masked torch reference, and record the bundle's sizes (model library vs
TVM runtime). On this machine, also time the runner (its own median over N runs, measured in
C++) against ``tetris_tvm.load`` + call from Python for the same library and input (median of
as many calls): the difference is the Python call overhead. Emulated latencies say nothing
about a real board and are not recorded as timings.

    python benchmarks/deploy.py --json benchmarks/results/deploy.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}


def models() -> list[tuple[str, torch.nn.Module, torch.Tensor, tuple[int, int], float]]:
    x, _ = zoo.mnist_data()
    cnn = zoo.load_mnist_cnn()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 10)).eval()
    return [
        ("mnist-cnn b1", cnn, torch.from_numpy(x[:1]), (8, 8), 0.75),
        ("mnist-cnn b64", cnn, torch.from_numpy(x[:64]), (8, 8), 0.75),
        ("mlp b1", mlp, torch.randn(1, 256), (16, 16), 0.75),
    ]


def python_latency_ms(path: Path, x: np.ndarray, runs: int) -> float:
    loaded = tetris_tvm.load(path)
    for _ in range(5):
        loaded(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        loaded(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_bundle(folder: Path, x: np.ndarray, runs: int, emulate: bool) -> tuple[np.ndarray, float]:
    np.save(folder / "x.npy", x)
    prefix = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"] if emulate else []
    done = subprocess.run([*prefix, "./run_model", "model.so", "--runs", str(runs), "x.npy"],
                          cwd=folder, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    median = float(re.search(r"median ([0-9.]+) ms", done.stdout).group(1))
    return np.load(folder / "output0.npy"), median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    arches = [("host", "llvm", False)]
    if shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64"):
        arches.append(("aarch64 (qemu)", AARCH64, True))
    else:
        print("aarch64: skipped (needs aarch64-linux-gnu-g++ and qemu-aarch64)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, x, block, s in models():
            for arch, target, emulate in arches:
                cm = tetris_tvm.compile(model, (x,), target=target, sparsity=s,
                                        block_size=block, progress=False)
                folder = cm.export_bundle(Path(tmp) / f"{name}-{arch}".replace(" ", "_"))
                reference = cm.plan.apply(model, keep=False)
                with torch.no_grad():
                    want = reference(x).numpy()
                runs = 3 if emulate else args.runs
                got, runner_ms = run_bundle(folder, x.numpy(), runs, emulate)
                sizes = json.loads((folder / "bundle.json").read_text())["bytes"]
                row: dict[str, Any] = {
                    "model": name, "arch": arch, "sparsity": s, "block": list(block),
                    "max_rel_err": float(np.abs(got - want).max() / np.abs(want).max()),
                    "model_bytes": sizes["model.so"],
                    "runtime_bytes": sizes["libtvm_runtime.so"] + sizes["libtvm_ffi.so"],
                    "runner_bytes": sizes["run_model"],
                }
                if not emulate:
                    row["runner_ms"] = runner_ms
                    row["python_load_ms"] = python_latency_ms(folder / "model.so", x.numpy(),
                                                              args.runs)
                rows.append(row)
                timing = (f", runner {row['runner_ms']:.3f} ms vs Python load() "
                          f"{row['python_load_ms']:.3f} ms" if "runner_ms" in row else "")
                print(f"{name:<14} {arch:<15} err {row['max_rel_err']:.1e}, model "
                      f"{row['model_bytes'] / 1024:.0f} KiB, runtime "
                      f"{row['runtime_bytes'] / 2**20:.1f} MiB{timing}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "runs": args.runs}, indent=1))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
