"""One dynamic-batch build against fixed-batch builds: same outputs, what the symbolic batch costs.

For MiniLM (seq 128, s=0.75): compile once with ``dynamic_batch=True`` and once per batch size
with the same plan; check every batch against the masked torch model; time both, interleaved,
median of repeats, 2 threads.

    python benchmarks/dynamic_batch.py --json benchmarks/results/dynamic_batch.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402
from tetris_tvm.bench import time_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = zoo.load_minilm()
    first = zoo.minilm_inputs(tok, max(args.batches), 128)
    dynamic = tetris_tvm.compile(model, (first,), sparsity=args.sparsity, dynamic_batch=True)
    masked = copy.deepcopy(model)
    masked.load_state_dict(dynamic.plan.masked_state_dict(model))
    rows = []
    for batch in args.batches:
        ids = zoo.minilm_inputs(tok, batch, 128)
        fixed = tetris_tvm.compile(model, (ids,), plan=dynamic.plan)
        with torch.no_grad():
            ref = masked(ids).last_hidden_state.numpy()
        err = {}
        for name, cm in (("dynamic", dynamic), ("fixed", fixed)):
            out = cm(ids)
            out = (out[0] if isinstance(out, tuple) else out).numpy()
            err[name] = float(np.abs(out - ref).max() / np.abs(ref).max())
            cm._ensure_vm()
        x = np.ascontiguousarray(ids.numpy())
        times = time_interleaved({"dynamic": lambda x=x: dynamic.run_numpy(x),
                                  "fixed": lambda x=x, cm=fixed: cm.run_numpy(x)}, args.repeats)
        row = {"batch": batch, "seq": 128, "sparsity": args.sparsity, "max_rel_err": err,
               "dynamic_ms": times["dynamic"] * 1e3, "fixed_ms": times["fixed"] * 1e3,
               "dynamic_over_fixed": times["dynamic"] / times["fixed"]}
        rows.append(row)
        print(f"minilm b{batch} s={args.sparsity}: dynamic {row['dynamic_ms']:.1f} ms, fixed "
              f"{row['fixed_ms']:.1f} ms ({row['dynamic_over_fixed']:.2f}x); max rel err "
              f"{err['dynamic']:.1e} / {err['fixed']:.1e}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": "minilm", "rows": rows}, indent=1))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
