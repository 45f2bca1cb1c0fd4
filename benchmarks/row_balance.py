"""How evenly the pruned layers' work is split over the threads: contiguous vs round-robin.

TVM's parallel loop hands each thread one contiguous range of iterations.  TETRIS orders the
channels so that the kept blocks cluster, so contiguous ranges of block-rows carry unequal
work.  The CPU linear kernels deal block-rows round-robin instead (``parallel_cyclic`` in
``tetris_tvm/schedules/cpu/_common.py``).  This script measures, on all-MiniLM-L6-v2's TETRIS
plans:

1. the split: for every pruned layer, the busier thread's kept blocks over an even share,
   with 2 threads, contiguous vs round-robin (no timing; all 37 layers);
2. kernels: a few layers at M = 128 (batch 1, sequence 128), both schedules timed
   interleaved in one process (median);
3. the whole model at batch 1, sequence 128, both schedules and torch eager, interleaved.
   (From 256 rows up, ``tetris_tvm.compile`` cuts a linear's rows into chunks and runs
   contiguous ranges of them, which balances the threads whatever the plan: see
   ``row_chunks.py``.  The committed results/row_balance.json was measured at batch 8
   before row chunks existed.)

    python benchmarks/row_balance.py --json benchmarks/results/row_balance.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from unittest import mock

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402
from tetris_tvm.bench import median_interleaved  # noqa: E402

THREADS = int(os.environ["TVM_NUM_THREADS"])
KERNEL_LAYERS = (
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.0.output.dense.weight",
    "encoder.layer.1.intermediate.dense.weight",
    "encoder.layer.3.attention.output.dense.weight",
    "encoder.layer.5.intermediate.dense.weight",
)


def busier_share(block_rows: np.ndarray, threads: int, cyclic: bool) -> float:
    """Kept blocks of the busiest thread over an even share (1.0 = perfectly even)."""
    n = len(block_rows)
    if cyclic:
        parts = [block_rows[t::threads].sum() for t in range(threads)]
    else:  # TVM's static split: contiguous ranges of ceil(n / threads)
        size = -(-n // threads)
        parts = [block_rows[t * size:(t + 1) * size].sum() for t in range(threads)]
    total = block_rows.sum()
    return float(max(parts) / (total / threads)) if total else 1.0


def split_stats(plan) -> dict:
    """Mean and max busier-thread share over the plan's layers, both schedules."""
    out = {}
    for cyclic in (False, True):
        shares = [busier_share(lp.block_mask.sum(axis=1), THREADS, cyclic) for lp in plan.values()
                  if lp.block_mask is not None]
        out["round_robin" if cyclic else "contiguous"] = {
            "mean": float(np.mean(shares)), "max": float(np.max(shares)), "layers": len(shares)}
    return out


def contiguous_schedules():
    """The linear kernels' parallel loops split contiguously (the ablation measured here)."""
    def plain(sch, loop, target):
        sch.parallel(loop)

    return mock.patch.multiple("tetris_tvm.schedules.cpu.block_sparse_matmul",
                               parallel_cyclic=plain)


def layer_operands(model, plan, name: str, block: int, m: int):
    """``(w, permuted masked weight, its BSR form, a random x of m rows)`` of one layer."""
    from tetris_tvm.kernels import BSRMatrix

    lp = plan[name]
    w = dict(model.named_parameters())[name].detach().numpy()
    wp = lp.permuted(w * lp.mask)
    x = np.random.default_rng(0).standard_normal((m, w.shape[1])).astype(np.float32)
    return w, wp, BSRMatrix.from_dense(wp, (block, block)), x


def save(result: dict, path: str | None) -> int:
    """Write ``result`` as JSON to ``path`` (if given); the scripts' exit status."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def kernel_rows(model, plan, block: int, m: int, repeats: int) -> list[dict]:
    """Both schedules of a few layers' kernels, interleaved."""
    import tvm
    from tvm import s_tir

    from tetris_tvm.kernels import compute as K
    from tetris_tvm.schedules.build import default_target
    from tetris_tvm.schedules.cpu.block_sparse_matmul import schedule_linear

    target, dev = default_target(), tvm.cpu()
    rows = []
    for name in KERNEL_LAYERS:
        lp = plan[name]
        w, wp, bsr, x = layer_operands(model, plan, name, block, m)
        func = K.block_sparse_linear(x.shape, bsr).with_attr("global_symbol", "main")
        args = [tvm.runtime.tensor(np.ascontiguousarray(c), dev)
                for c in K.linear_weight_args(bsr, None)]
        xt = tvm.runtime.tensor(x, dev)
        out = tvm.runtime.tensor(np.empty((m, w.shape[0]), np.float32), dev)
        samplers = {}
        for cyclic in (False, True):
            sch = s_tir.Schedule(func)
            schedule_linear(sch, target, cyclic=cyclic)
            lib = tvm.compile(sch.mod, target=target)
            lib["main"](xt, *args, out)
            np.testing.assert_allclose(out.numpy(), x @ wp.T, rtol=1e-3, atol=1e-3)
            ev = lib.mod.time_evaluator("main", dev, number=max(2, 2000 // m), repeat=1)
            samplers["round_robin" if cyclic else "contiguous"] = (
                lambda ev=ev, xt=xt, args=args, out=out: ev(xt, *args, out).mean)
        t = median_interleaved(samplers, repeats)
        block_rows = lp.block_mask.sum(axis=1)
        rows.append({
            "layer": name, "shape": list(w.shape), "m": m,
            "busier_share_contiguous": busier_share(block_rows, THREADS, False),
            "busier_share_round_robin": busier_share(block_rows, THREADS, True),
            "ms": {k: v * 1e3 for k, v in t.items()},
            "speedup": t["contiguous"] / t["round_robin"],
        })
        r = rows[-1]
        print(f"  {name:46s} {str(tuple(w.shape)):12s} share {r['busier_share_contiguous']:.2f}"
              f" -> {r['busier_share_round_robin']:.2f}: {t['contiguous']*1e3:.3f} ->"
              f" {t['round_robin']*1e3:.3f} ms ({r['speedup']:.2f}x)", flush=True)
    return rows


def compare_models(model, tokenizer, plan, batch: int, repeats: int, ablations: dict,
                   new: str) -> dict:
    """The whole model compiled as it is (``new``) and under each ablation (label -> context
    manager factory), and torch eager, interleaved; ``speedup`` is ablation time / ours."""
    ids = zoo.minilm_inputs(tokenizer, batch=batch, seq=128)
    builds = {new: tetris_tvm.compile(model, (ids,), plan=plan)}
    for label, patch in ablations.items():
        with patch():
            builds[label] = tetris_tvm.compile(model, (ids,), plan=plan)

    def first(y):
        return y[0] if isinstance(y, (tuple, list)) else y

    ref = first(builds[new](ids))
    diff = max(float((first(b(ids)) - ref).abs().max()) for b in builds.values())

    def timer(fn, n=3):
        def run():
            t0 = time.perf_counter()
            for _ in range(n):
                fn(ids)
            return (time.perf_counter() - t0) / n
        return run

    with torch.no_grad():
        t = median_interleaved({**{k: timer(b) for k, b in builds.items()},
                                "torch_eager": timer(model)}, repeats)
    row = {"batch": batch, "seq": 128, "ms": {k: v * 1e3 for k, v in t.items()},
           "max_abs_diff": diff, **{f"vs_torch_{k}": t["torch_eager"] / t[k] for k in builds}}
    for label in ablations:
        row["speedup" if len(ablations) == 1 else f"speedup_vs_{label}"] = t[label] / t[new]
    print(f"  MiniLM batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row["ms"].items())
          + f"; outputs differ by {diff:.1e}", flush=True)
    return row


def model_row(model, tokenizer, plan, batch: int, repeats: int) -> dict:
    """The whole model compiled with each schedule, and torch eager, interleaved."""
    return compare_models(model, tokenizer, plan, batch, repeats,
                          {"contiguous": contiguous_schedules}, new="round_robin")


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--block", type=int, default=32, help="square block size (default 32)")
    parser.add_argument("--batch", type=int, default=1, help="whole-model batch (default 1)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    model, tokenizer = zoo.load_minilm()
    result = {"threads": THREADS, "sparsity": args.sparsity, "block": args.block, "split": {}}
    for block in sorted({16, 32, args.block}):
        plan = tetris_tvm.prune(model, sparsity=args.sparsity, block_size=block)
        result["split"][str(block)] = split_stats(plan)
        s = result["split"][str(block)]
        print(f"block {block}: busier thread's share of kept blocks, mean (max) over "
              f"{s['contiguous']['layers']} layers: contiguous {s['contiguous']['mean']:.2f} "
              f"({s['contiguous']['max']:.2f}), round-robin {s['round_robin']['mean']:.2f} "
              f"({s['round_robin']['max']:.2f})", flush=True)
    plan = tetris_tvm.prune(model, sparsity=args.sparsity, block_size=args.block)
    print(f"kernels, M = 128, block {args.block}:")
    result["kernels"] = kernel_rows(model, plan, args.block, 128, args.repeats)
    print("whole model:")
    result["model"] = model_row(model, tokenizer, plan, args.batch, args.repeats)
    return save(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
