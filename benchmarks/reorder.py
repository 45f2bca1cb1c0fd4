"""Retained L1 and wall time of the pruning methods on real and synthetic weights.

Methods (same API, tetris_tvm.prune_weight / prune_elementwise):
  element   unstructured magnitude pruning (the upper bound any block method chases)
  block     block pruning without reordering
  swap      TETRIS as in the paper: greedy pairwise-swap M-step from the identity order
  assign    TETRIS with the exact assignment M-step (the default)
  balanced  TETRIS assign, every block-row keeps the same number of blocks

"gap closed" = (method - block) / (element - block): the share of the retained-L1 gap between
plain block pruning and element-wise pruning that reordering wins back.

    python benchmarks/reorder.py --quick
    python benchmarks/reorder.py --json benchmarks/results/reorder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from tetris_tvm.reorder import prune_elementwise, prune_weight

METHODS: dict[str, Callable[..., object]] = {
    "element": lambda w, b, s: prune_elementwise(w, s),
    "block": lambda w, b, s: prune_weight(w, b, s, reorder=False),
    # the paper's algorithm: greedy swaps from the identity order, hard E-steps only
    "swap": lambda w, b, s: prune_weight(w, b, s, solver="swap", inits=("identity",), anneal=()),
    "assign": lambda w, b, s: prune_weight(w, b, s),
    "balanced": lambda w, b, s: prune_weight(w, b, s, balanced=True),
}


def minilm_weights() -> list[tuple[str, np.ndarray]]:
    from tetris_tvm.zoo import load_minilm

    model, _ = load_minilm()
    return [
        (f"minilm/{n}", p.detach().numpy())
        for n, p in model.named_parameters()
        if n.endswith(".weight") and p.ndim == 2 and "embeddings" not in n
    ]


def mnist_weights() -> list[tuple[str, np.ndarray]]:
    from tetris_tvm.zoo import load_mnist_cnn

    model = load_mnist_cnn()
    return [
        (f"mnist-cnn/{n}", p.detach().numpy())
        for n, p in model.named_parameters()
        if n.endswith(".weight") and p.ndim in (2, 4)
    ]


def gaussian(n: int) -> list[tuple[str, np.ndarray]]:
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return [(f"gaussian/{n}x{n}", w)]


def clamp(block: int, shape: tuple[int, ...]) -> tuple[int, int]:
    return min(block, shape[0]), min(block, shape[1])


def run_grid(
    weights: Iterable[tuple[str, np.ndarray]],
    blocks: Iterable[int],
    sparsities: Iterable[float],
    methods: Iterable[str],
) -> list[dict]:
    rows = []
    for name, w in weights:
        for block in blocks:
            b = clamp(block, w.shape)
            for s in sparsities:
                row: dict = {
                    "weight": name, "shape": list(w.shape), "block_size": block, "sparsity": s
                }
                for m in methods:
                    t0 = time.perf_counter()
                    lp = METHODS[m](w, b, s)
                    row[m] = float(lp.retained_l1)  # type: ignore[attr-defined]
                    row[f"{m}_s"] = time.perf_counter() - t0
                gap = row.get("element", np.nan) - row.get("block", np.nan)
                for m in ("swap", "assign", "balanced"):
                    if m in row and gap > 0:
                        row[f"{m}_gap_closed"] = (row[m] - row["block"]) / gap
                rows.append(row)
                print(_fmt(row), flush=True)
    return rows


def _fmt(row: dict) -> str:
    parts = [f"{row['weight']:<58} b{row['block_size']:<3} s{row['sparsity']:<5}"]
    for m in METHODS:
        if m in row:
            gc = row.get(f"{m}_gap_closed")
            extra = f"({gc:+.2f})" if gc is not None else ""
            parts.append(f"{m} {row[m]:.4f}{extra} {row[m + '_s']:.2f}s")
    return " | ".join(parts)


def fc6_case() -> dict:
    """A 4096x25088 weight (VGG16 fc6), 32x32, 75%: time and peak memory in a fresh process."""
    code = (
        "import numpy as np, time, resource, json\n"
        "from tetris_tvm.reorder import prune_weight\n"
        "w = np.random.default_rng(0).standard_normal((4096, 25088)).astype(np.float32)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter(); lp = prune_weight(w, 32, 0.75); dt = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'seconds': dt, 'peak_rss_gib': peak / 2**20,"
        " 'weight_gib': w.nbytes / 2**30, 'retained_l1': lp.retained_l1,"
        " 'block_no_reorder': prune_weight(w, 32, 0.75, reorder=False).retained_l1}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict]) -> dict:
    """The figures the README quotes: MiniLM at 32x32 / 75%."""
    sel = [r for r in rows if r["weight"].startswith("minilm/") and r["block_size"] == 32
           and r["sparsity"] == 0.75 and "swap" in r and "assign" in r]
    if not sel:
        return {}
    ffn = [r for r in sel if "intermediate.dense" in r["weight"] or "output.dense" in r["weight"]
           and "attention" not in r["weight"]]
    return {
        "minilm_layers": len(sel),
        "assign_beats_swap_on_every_layer": all(r["assign"] > r["swap"] for r in sel),
        "assign_ge_swap_layers": sum(r["assign"] >= r["swap"] for r in sel),
        "ffn_mean_gap_closed_assign": float(np.mean([r["assign_gap_closed"] for r in ffn])),
        "ffn_mean_gap_closed_swap": float(np.mean([r["swap_gap_closed"] for r in ffn])),
        "attn_mean_gap_closed_assign": float(
            np.mean([r["assign_gap_closed"] for r in sel if r not in ffn])
        ),
        "attn_mean_gap_closed_swap": float(
            np.mean([r["swap_gap_closed"] for r in sel if r not in ffn])
        ),
        "mean_balanced_cost": float(np.mean([r["assign"] - r["balanced"] for r in sel])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few layers, 32x32 / 75%% only")
    ap.add_argument("--json", type=Path, help="write all rows and the summary here")
    ap.add_argument("--no-fc6", action="store_true", help="skip the 4096x25088 timing case")
    ap.add_argument("--headline", action="store_true",
                    help="only MiniLM at 32x32 / 75%% and the two timing targets")
    args = ap.parse_args()

    all_methods = list(METHODS)
    rows: list[dict] = []
    if args.headline:
        rows += run_grid(minilm_weights(), [32], [0.75], all_methods)
        rows += run_grid(gaussian(4096), [32], [0.75], ["block", "assign"])
    elif args.quick:
        mini = minilm_weights()
        pick = [w for w in mini if ".layer.0." in w[0]]
        rows += run_grid(pick, [32], [0.75], all_methods)
        rows += run_grid(mnist_weights(), [8], [0.75], all_methods)
    else:
        mini = minilm_weights()
        rows += run_grid(mini, [32], [0.5, 0.75, 0.9], all_methods)
        rows += run_grid(mini, [8, 16], [0.75], all_methods)
        rows += run_grid(mnist_weights(), [8, 16, 32], [0.5, 0.75, 0.9], all_methods)
        rows += run_grid(gaussian(1024), [8, 16, 32], [0.5, 0.75, 0.9], all_methods)
        rows += run_grid(gaussian(4096), [32], [0.75], all_methods)
        rows += run_grid(gaussian(4096), [16], [0.75], ["block", "assign"])
    summary = summarize(rows)
    if not args.quick and not args.no_fc6:  # --headline included
        summary["fc6_4096x25088"] = fc6_case()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cores": len(__import__("os").sched_getaffinity(0)),
            "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
        args.json.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
