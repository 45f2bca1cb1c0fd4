"""int8 block-sparse linear kernels against our int8 dense kernel, per dot-product form.

MiniLM's FFN shapes (384 -> 1536 and 1536 -> 384) at M = 128 and 1024 rows, 32x32 blocks,
random block masks with an exact kept-block count, 2 threads. For each dot-product form
this CPU can run (AVX-512 VNNI, AVX-512BW, AVX2 and the generic form, each compiled for a
target that has just that), the GEMM's time at sparsity 0.5 / 0.75 / 0.9 against the dense
int8 kernel of the same form: ``frac_ideal`` = (dense / sparse) / (1 / (1 - sparsity)). The
row quantizer (shared by both) is timed apart. Interleaved, median of repeats.

    python benchmarks/int8_kernels.py [--quick] [--json benchmarks/results/int8_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm.target import codegen  # noqa: E402

from tetris_tvm.bench import median_interleaved, random_block_mask, wall_sampler  # noqa: E402
from tetris_tvm.kernels import int8 as K8  # noqa: E402
from tetris_tvm.quantization import quantize_weight  # noqa: E402

SHAPES = [(384, 1536), (1536, 384)]  # (in, out)
ROWS = [128, 1024]
SPARSITIES = [0.5, 0.75, 0.9]
BLOCK = (32, 32)
CPUS = {"vnni": "znver4", "avx512bw": "skylake-avx512", "avx2": "znver3", "generic": None}


def forms_here() -> list[str]:
    """The dot forms this machine runs (its own best and every weaker x86 form)."""
    best = K8.dot_for_target(tvm.target.Target(
        {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})).name
    order = ["vnni", "avx512bw", "avx2"]
    return (order[order.index(best):] if best in order else []) + ["generic"]


def build(form: str, k: int, n: int, rows: int, q: np.ndarray, scale: np.ndarray,
          dense: bool) -> tuple[object, list]:
    dot = K8.DOTS[form]
    cpu = CPUS[form]
    spec = {"kind": "llvm", "num-cores": 2, **({"mcpu": cpu} if cpu else {})}
    args = K8.int8_linear_args(q, scale, BLOCK, dense, np.zeros(n, np.float32), threads=2)
    func = K8.int8_linear((rows, k), n, BLOCK, args[0].shape[0], dot, dense=dense, bias=True,
                          threads=2)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(spec))
    dev = tvm.cpu()
    kq = K8.padded_k(k, k if dense else BLOCK[1])
    rng = np.random.default_rng(1)
    qx = rng.integers(dot.qmin, dot.qmax + 1, (rows, kq)).astype(dot.act_dtype)
    tensors = [tvm.runtime.tensor(qx, dev), tvm.runtime.tensor(np.ones(rows, np.float32), dev),
               tvm.runtime.tensor(np.zeros(rows, np.int32), dev)]
    tensors += [tvm.runtime.tensor(a, dev) for a in args]
    tensors.append(tvm.runtime.tensor(np.zeros((rows, n), np.float32), dev))
    return lib, tensors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="VNNI form (or the best one) only")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    forms = forms_here()[:1] if args.quick else forms_here()
    rng = np.random.default_rng(0)
    rows_out = []
    print(f"{'form':<9} {'shape':<11} {'M':>5} {'s':>5} {'dense ms':>9} {'sparse ms':>10} "
          f"{'speedup':>8} {'frac ideal':>10}")
    for form in forms:
        for k, n in SHAPES:
            w = rng.standard_normal((n, k)).astype(np.float32)
            for m in ROWS:
                q, scale = quantize_weight(w)
                dense_lib, dense_args = build(form, k, n, m, q, scale, dense=True)
                samplers = {"dense": wall_sampler(lambda lib=dense_lib, a=dense_args:
                                                  lib["main"](*a), number=10)}
                for s in SPARSITIES:
                    blocks = random_block_mask((n // BLOCK[0], k // BLOCK[1]), s, rng)
                    mask = np.kron(blocks, np.ones(BLOCK, np.float32))
                    qs, ss = quantize_weight(w * mask)
                    lib, targs = build(form, k, n, m, qs, ss, dense=False)
                    samplers[s] = wall_sampler(lambda lib=lib, a=targs: lib["main"](*a),
                                               number=10)
                times = median_interleaved(samplers, repeats=args.repeats)
                for s in SPARSITIES:
                    speedup = times["dense"] / times[s]
                    frac = speedup * (1 - s)
                    row = {"form": form, "in": k, "out": n, "m": m, "sparsity": s,
                           "dense_ms": times["dense"] * 1e3, "sparse_ms": times[s] * 1e3,
                           "speedup": speedup, "frac_ideal": frac}
                    rows_out.append(row)
                    print(f"{form:<9} {f'{k}->{n}':<11} {m:>5} {s:>5.2f} "
                          f"{row['dense_ms']:>9.3f} {row['sparse_ms']:>10.3f} {speedup:>7.2f}x "
                          f"{frac:>10.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": 2, "block": list(BLOCK),
                                               "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
