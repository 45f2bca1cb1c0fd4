"""Whole-model latency against the dense runtimes users deploy with, and compile times.

Per case, timed in one process, interleaved, median of repeats, 2 threads:
torch eager, ONNX Runtime and OpenVINO (dense, float32: ``tetris_tvm.peers``, skipped with a
message when not installed), our dense build (s = 0) and our block-sparse builds. The speedup
that counts is against the BEST dense runtime of the case. Each build's compile time is
recorded too, and every output is checked against its reference (the masked model).

Cases: all-MiniLM-L6-v2 (input_ids only, seq 128) at batch 1 and 8, 32x32 blocks;
MobileNetV2 (torchvision's layout, random weights, 224x224) at batch 1 and 8, 16x16 blocks
on its 1x1 convs and classifier; the MNIST CNN at batch 1 and 64, 8x8 blocks. Pruning here
is one-shot magnitude TETRIS (speed only: held-out quality is benchmarks/quality.py's and
benchmarks/finetune.py's job).

    python benchmarks/models.py --quick
    python benchmarks/models.py --json benchmarks/results/models.json
    python benchmarks/models.py --cases minilm:8 mobilenet:1 --sparsity 0 --sparsity 0.75
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import peers, zoo  # noqa: E402
from tetris_tvm.bench import cpu_name, time_interleaved  # noqa: E402
from tetris_tvm.calibration import model_output  # noqa: E402

BLOCKS = {"minilm": 32, "mobilenet": 16, "mnist-cnn": 8}


def case_inputs(model_name: str, batch: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    if model_name == "minilm":
        model, tok = zoo.load_minilm()
        return model, (zoo.minilm_inputs(tok, batch, 128),)
    if model_name == "mobilenet":
        return zoo.mobilenet_v2(), (torch.randn(batch, 3, 224, 224),)
    if model_name == "mnist-cnn":
        x, _ = zoo.mnist_data()
        return zoo.load_mnist_cnn(), (torch.from_numpy(x[:batch]),)
    raise ValueError(f"unknown case model {model_name!r}")


def _first(out: Any) -> np.ndarray:
    return model_output(out).detach().numpy()


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def run_case(model_name: str, batch: int, sparsities: list[float], repeats: int,
             use_peers: bool) -> dict[str, Any]:
    model, inputs = case_inputs(model_name, batch)
    block = BLOCKS[model_name]
    with torch.no_grad():
        dense_out = _first(model(*inputs))
    fns: dict[str, Any] = {"torch eager": lambda: model(*inputs)}
    rows: dict[str, dict[str, Any]] = {"torch eager": {"kind": "dense", "rel_err": 0.0}}
    skipped = {}
    if use_peers:
        for name, reason in peers.available().items():
            if reason is not None:
                skipped[name] = reason
                print(f"  {name}: skipped ({reason})", flush=True)
                continue
            t0 = time.perf_counter()
            fn = peers.runner(name, model, inputs)
            rows[name] = {"kind": "dense", "compile_s": time.perf_counter() - t0,
                          "rel_err": _rel_err(peers.first_output(fn()), dense_out)}
            fns[name] = fn
    for s in sparsities:
        t0 = time.perf_counter()
        cm = tetris_tvm.compile(model, inputs, sparsity=s, block_size=(block, block),
                                progress=False)
        compile_s = time.perf_counter() - t0
        reference = cm.plan.apply(model, keep=False) if s > 0 else model
        with torch.no_grad():
            want = _first(reference(*inputs))
        arrays = [np.ascontiguousarray(x.numpy()) for x in inputs]
        got = cm.run_numpy(*arrays)[0]
        key = "ours dense" if s == 0 else f"ours s={s}"
        rows[key] = {"kind": "dense" if s == 0 else "sparse", "sparsity": s,
                     "block": block, "compile_s": compile_s, "rel_err": _rel_err(got, want),
                     "weights_kept": cm.report.totals["weights_kept_fraction"],
                     "runtime_gathers": cm.report.totals["runtime_gathers"]}
        fns[key] = lambda cm=cm, arrays=arrays: cm.run_numpy(*arrays)
        print(f"  {key}: compiled in {compile_s:.1f} s", flush=True)
    with torch.no_grad():
        times = time_interleaved(fns, repeats=repeats)
    best_dense = min(times[k] for k, r in rows.items() if r["kind"] == "dense")
    best_peer = min((times[k] for k in rows if k not in ("ours dense",)
                     and rows[k]["kind"] == "dense"), default=None)
    for k, row in rows.items():
        row["ms"] = times[k] * 1e3
        row["speedup_vs_best_dense"] = best_dense / times[k]
        row["speedup_vs_torch"] = times["torch eager"] / times[k]
        if best_peer is not None:
            row["speedup_vs_best_peer"] = best_peer / times[k]
    return {"model": model_name, "batch": batch, "block": block, "variants": rows,
            "best_dense_ms": best_dense * 1e3,
            "best_peer_ms": None if best_peer is None else best_peer * 1e3, "skipped": skipped}


def print_case(case: dict[str, Any]) -> None:
    print(f"\n{case['model']} batch {case['batch']} (best dense {case['best_dense_ms']:.2f} ms)")
    for name, row in case["variants"].items():
        extra = f"  compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
        peer = (f"  x{row['speedup_vs_best_peer']:.2f} vs best peer"
                if "speedup_vs_best_peer" in row else "")
        print(f"  {name:<14} {row['ms']:9.2f} ms  x{row['speedup_vs_best_dense']:.2f} vs best "
              f"dense{peer}  err {row['rel_err']:.1e}{extra}")


def call_overhead(repeats: int = 2000) -> dict[str, float]:
    """Microseconds per call of a trivial model (a 64x64 Linear at batch 1): ours vs torch."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64).eval()
    x = torch.randn(1, 64)
    cm = tetris_tvm.compile(lin, (x,), sparsity=0.5, block_size=(16, 16), progress=False)
    xn = x.numpy().copy()
    fns = {"torch": lambda: lin(x), "ours cm(x)": lambda: cm(x),
           "ours run_numpy": lambda: cm.run_numpy(xn)}
    out = {}
    with torch.no_grad():
        for _ in range(3):  # interleaved rounds; the median round counts
            for name, fn in fns.items():
                for _ in range(200):
                    fn()
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                out.setdefault(name, []).append((time.perf_counter() - t0) / repeats * 1e6)
    return {k: float(np.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases, few repeats")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cases", nargs="*", default=None,
                    help="model:batch, e.g. minilm:8 mobilenet:1 mnist-cnn:64")
    ap.add_argument("--sparsity", type=float, action="append",
                    help="our sparsities (repeatable); default 0, 0.5, 0.75")
    ap.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime and OpenVINO")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sparsities = args.sparsity or [0.0, 0.5, 0.75]
    if args.quick:
        specs, sparsities, args.repeats = ["mnist-cnn:8"], [0.0, 0.75], 3
    else:
        specs = args.cases or ["minilm:1", "minilm:8", "mobilenet:1", "mobilenet:8",
                               "mnist-cnn:1", "mnist-cnn:64"]
    cases = []
    for spec in specs:
        name, batch = spec.split(":")
        print(f"{name} batch {batch}", flush=True)
        case = run_case(name, int(batch), sparsities, args.repeats, not args.no_peers)
        print_case(case)
        cases.append(case)
    overhead = call_overhead(200 if args.quick else 2000)
    print("\ncall overhead, 64x64 Linear at batch 1 (us per call): "
          + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()))
    if args.json:
        meta = {"machine": platform.machine(), "processor": cpu_name(),
                "python": platform.python_version(), "torch": torch.__version__,
                "threads": 2, "peers": {n: _version(n) for n in peers.PEERS}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "cases": cases,
                                         "call_overhead_us": overhead}, indent=1))
        print(f"\nwritten {args.json}")


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
