"""What gather-free planning costs: retained L1 and runtime gathers per permutation policy.

``compile`` plans permutations so that all of them fold away (an input axis takes its
producer's order; an output axis is permuted only when every consumer absorbs it). The
alternative lets every layer permute both axes and keeps a runtime gather wherever nothing
absorbs it. This script compiles each model both ways and records retained L1 (mean over
pruned layers) and the gathers left, next to plain block pruning (no reordering).

    python benchmarks/permutation_policy.py --json benchmarks/results/permutation_policy.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402


def mean_l1(plan) -> float:
    return float(np.mean([lp.retained_l1 for lp in plan.values()]))


def run(name: str, model, inputs, block, sparsity: float) -> dict:
    row: dict = {"model": name, "sparsity": sparsity, "block": list(block)}
    for policy, kwargs in (
        ("no reorder", {"prune_options": {"reorder": False}}),
        ("gather-free (default)", {}),
        ("free axes + gathers", {"allow_gathers": True}),
    ):
        cm = tetris_tvm.compile(model, inputs, sparsity=sparsity, block_size=block, **kwargs)
        row[policy] = {
            "retained_l1": mean_l1(cm.plan),
            "runtime_gathers": cm.report.totals["runtime_gathers"],
        }
        print(f"{name:<10} s={sparsity} {policy:<22} retained L1 {row[policy]['retained_l1']:.4f}"
              f"  runtime gathers {row[policy]['runtime_gathers']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    model, tok = zoo.load_minilm()
    rows.append(run("minilm", model, (zoo.minilm_inputs(tok, 1, 32),), (32, 32), 0.75))
    cnn = zoo.load_mnist_cnn()
    x = torch.from_numpy(zoo.mnist_data()[0][:4])
    rows.append(run("mnist-cnn", cnn, (x,), (8, 8), 0.75))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
