"""Row chunks: parallel over (chunk of rows, block-row) vs over block-rows alone, at large M.

With many rows (MiniLM at batch 8: 8 x 128 = 1024), ``tetris_tvm.compile`` cuts the rows of
each block-sparse linear into chunks (``linear_row_chunk`` in
``tetris_tvm/kernels/compute.py``) and runs the chunks in parallel.  This script measures,
on all-MiniLM-L6-v2's TETRIS plans, both layouts interleaved in one process (median):

1. kernels: a few layers at M = 1024, chunked vs one chunk;
2. the whole model at batch 8, sequence 128, both builds and torch eager.

    python benchmarks/row_chunks.py --repeats 15 --json benchmarks/results/row_chunks.json
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from row_balance import KERNEL_LAYERS, THREADS, compare_models, layer_operands, save  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm import zoo  # noqa: E402
from tetris_tvm.bench import median_interleaved  # noqa: E402


def one_chunk():
    """Every linear kernel built with its rows in one chunk (the ablation measured here)."""
    return mock.patch("tetris_tvm.kernels.compute.linear_row_chunk", return_value=None)


def kernel_rows(model, plan, block: int, m: int, repeats: int) -> list[dict]:
    """Chunked and one-chunk kernels of a few layers, interleaved."""
    from tetris_tvm.kernels import compute as K
    from tetris_tvm.schedules.build import build_block_sparse_linear

    chunk = K.linear_row_chunk(m)
    rows = []
    for name in KERNEL_LAYERS:
        w, wp, bsr, x = layer_operands(model, plan, name, block, m)
        samplers = {}
        for label, rc in (("one_chunk", None), ("chunked", chunk)):
            kernel = build_block_sparse_linear(bsr, x.shape, row_chunk=rc)
            np.testing.assert_allclose(kernel(x), x @ wp.T, rtol=1e-3, atol=1e-3)
            samplers[label] = kernel.timer(x, max(2, 4000 // m))
        t = median_interleaved(samplers, repeats)
        rows.append({"layer": name, "shape": list(w.shape), "m": m, "row_chunk": chunk,
                     "ms": {k: v * 1e3 for k, v in t.items()},
                     "speedup": t["one_chunk"] / t["chunked"]})
        print(f"  {name:46s} {str(tuple(w.shape)):12s} {t['one_chunk']*1e3:.3f} -> "
              f"{t['chunked']*1e3:.3f} ms ({rows[-1]['speedup']:.2f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.75, 0.9])
    parser.add_argument("--block", type=int, default=32, help="square block size (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch (default 8: M = 1024)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    model, tokenizer = zoo.load_minilm()
    m = args.batch * 128
    result = {"threads": THREADS, "block": args.block, "batch": args.batch, "runs": []}
    for sparsity in args.sparsity:
        plan = tetris_tvm.prune(model, sparsity=sparsity, block_size=args.block)
        print(f"kernels, M = {m}, block {args.block}, sparsity {sparsity}:")
        run = {"sparsity": sparsity,
               "kernels": kernel_rows(model, plan, args.block, m, args.repeats)}
        print("whole model:")
        run["model"] = compare_models(model, tokenizer, plan, args.batch, args.repeats,
                                      {"one_chunk": one_chunk}, new="chunked")
        result["runs"].append(run)
    return save(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
