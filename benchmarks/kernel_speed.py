"""Block-sparse kernel benchmark: ours (sparse) vs our dense, torch dense, torch BSR, scipy BSR.

One process, all candidates of a case timed interleaved (round-robin), median of repeats, 2
threads everywhere.  Random block masks with an exact kept-block count (this measures kernels,
not pruning quality).  Prints a table and optionally writes JSON:

    python benchmarks/kernel_speed.py --quick
    python benchmarks/kernel_speed.py --rounds 3 --json benchmarks/results/kernels.json \
        | tee benchmarks/results/kernels.txt

Columns: ``vs_dense`` = best dense time (our dense, torch) / ours; ``frac_ideal`` = vs_dense /
(1 / (1 - sparsity)); ``vs_torch_bsr`` / ``vs_scipy_bsr`` = their time / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tetris_tvm.bench import median_interleaved, random_block_mask, wall_sampler  # noqa: E402
from tetris_tvm.kernels import BSRMatrix  # noqa: E402
from tetris_tvm.schedules import build as B  # noqa: E402

THREADS = int(os.environ["TVM_NUM_THREADS"])

LINEAR_SHAPES = [(768, 3072), (3072, 768), (4096, 4096)]  # (in, out)
LINEAR_M = [1, 16, 128]
CONV_SHAPES = [(64, 128, 56), (256, 256, 14)]  # (cin, cout, hw), 3x3, stride 1, pad 1
CONV_BATCH = [1, 8]
BLOCKS = [16, 32]
SPARSITIES = [0.5, 0.75, 0.9]


def calls_for(seconds_estimate: float, budget: float = 0.02) -> int:
    """Calls per sample so that one sample takes about ``budget`` seconds."""
    return int(max(1, min(200, budget / max(seconds_estimate, 1e-6))))


def _estimate(fn) -> float:
    """Wall seconds of one call of ``fn`` (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _kernel_estimate(kernel, x) -> float:
    """Seconds of one run of a compiled kernel, as its own evaluator reports it.

    Not the wall time of an evaluator call: that adds about 1 ms of set-up, which sized a
    0.2 ms kernel's samples at 18 calls instead of about 100.  Short samples let the cold
    first call after the other candidates (which evict x and the weights) weigh 5-8% on
    the kernels whose reads from x are irregular.
    """
    sample = kernel.timer(x, 1)
    return float(np.median([sample() for _ in range(3)]))


def bench_linear(k_in, n_out, m, block, sparsity, rng, repeats, dense_cache) -> dict:
    """One linear case; returns a result row."""
    w = rng.standard_normal((n_out, k_in)).astype(np.float32)
    mask = random_block_mask((-(-n_out // block), -(-k_in // block)), sparsity, rng)
    bsr = BSRMatrix.from_dense(w, (block, block), mask)
    wm = bsr.to_dense()
    x = rng.standard_normal((m, k_in)).astype(np.float32)
    ours = B.build_block_sparse_linear(bsr, x.shape)
    key = ("linear", k_in, n_out, m)
    if key not in dense_cache:
        dense_cache[key] = B.build_dense_linear(w, x.shape)
    dense = dense_cache[key]
    ref = x @ wm.T
    err = float(np.abs(ours(x) - ref).max() / (np.abs(ref).max() + 1e-6))
    xt, wt = torch.from_numpy(x), torch.from_numpy(wm)
    wt_dense = torch.from_numpy(w)
    w_tbsr = wt.to_sparse_bsr((block, block))
    xt_t = xt.t().contiguous()
    w_sp = scipy.sparse.bsr_matrix(wm, blocksize=(block, block))
    x_t = np.ascontiguousarray(x.T)
    fns = {
        "ours": ours.timer(x, 1),
        "our_dense": dense.timer(x, 1),
        "torch_dense": lambda: F.linear(xt, wt_dense),
        "torch_bsr": lambda: torch.sparse.mm(w_tbsr, xt_t),
        "scipy_bsr": lambda: w_sp @ x_t,
    }
    cands = {}
    for name, fn in fns.items():
        if name in ("ours", "our_dense"):
            kern = ours if name == "ours" else dense
            cands[name] = kern.timer(x, calls_for(_kernel_estimate(kern, x)))
        else:
            cands[name] = wall_sampler(fn, calls_for(_estimate(fn)))
    times = median_interleaved(cands, repeats)
    return _row("linear", f"{k_in}->{n_out}", m, block, sparsity, bsr.density, times, err)


def bench_conv(cin, cout, hw, batch, block, sparsity, rng, repeats, dense_cache) -> dict:
    """One 3x3 conv case (stride 1, padding 1); returns a result row."""
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.1
    mask = random_block_mask((-(-cout // block), -(-cin // block)), sparsity, rng)
    bsr = BSRMatrix.from_dense(w.reshape(cout, -1), (block, block * 9), mask)
    wm = bsr.to_dense().reshape(w.shape)
    x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
    ours = B.build_block_sparse_conv2d(bsr, x.shape, 3, 1, 1)
    key = ("conv", cin, cout, hw, batch)
    if key not in dense_cache:
        dense_cache[key] = B.build_dense_conv2d(w, x.shape, 1, 1)
    dense = dense_cache[key]
    xt, wt, wd = torch.from_numpy(x), torch.from_numpy(wm), torch.from_numpy(w)
    ref = F.conv2d(xt, wt, None, 1, 1).numpy()
    err = float(np.abs(ours(x) - ref).max() / (np.abs(ref).max() + 1e-6))
    fns = {"ours": None, "our_dense": None, "torch_dense": lambda: F.conv2d(xt, wd, None, 1, 1)}
    cands = {}
    for name, fn in fns.items():
        if fn is None:
            kern = ours if name == "ours" else dense
            cands[name] = kern.timer(x, calls_for(_kernel_estimate(kern, x)))
        else:
            cands[name] = wall_sampler(fn, calls_for(_estimate(fn)))
    times = median_interleaved(cands, repeats)
    return _row("conv3x3", f"{cin}->{cout}@{hw}", batch, block, sparsity, bsr.density, times, err)


def _row(op, shape, m, block, sparsity, density, times, err) -> dict:
    best_dense = min(times["our_dense"], times["torch_dense"])
    ideal = 1.0 / density
    row = {
        "op": op,
        "shape": shape,
        "m_or_batch": m,
        "block": block,
        "sparsity": sparsity,
        "density": density,
        "times_ms": {k: v * 1e3 for k, v in times.items()},
        "max_rel_err": err,
        "vs_dense": best_dense / times["ours"],
        "ideal": ideal,
        "frac_ideal": best_dense / times["ours"] / ideal,
    }
    for other in ("torch_bsr", "scipy_bsr"):
        if other in times:
            row[f"vs_{other}"] = times[other] / times["ours"]
    return row


HEADER = (
    f"{'op':8} {'shape':16} {'M/N':>4} {'blk':>3} {'sp':>4} | {'ours':>8} {'ourDense':>8} "
    f"{'torchD':>8} {'tBSR':>8} {'scBSR':>8} ms | {'vsDense':>7} {'ideal':>5} {'frac':>5} "
    f"{'vsTBSR':>6} {'vsSci':>6}"
)


def format_row(r: dict) -> str:
    """One table line."""
    t = r["times_ms"]

    def ms(key):
        return f"{t[key]:8.3f}" if key in t else f"{'-':>8}"

    def ratio(key):
        return f"{r[key]:6.2f}" if key in r else f"{'-':>6}"

    return (
        f"{r['op']:8} {r['shape']:16} {r['m_or_batch']:4d} {r['block']:3d} {r['sparsity']:4.2f} | "
        f"{ms('ours')} {ms('our_dense')} {ms('torch_dense')} {ms('torch_bsr')} {ms('scipy_bsr')}"
        f"    | {r['vs_dense']:7.2f} {r['ideal']:5.1f} {r['frac_ideal']:5.2f} "
        f"{ratio('vs_torch_bsr')} {ratio('vs_scipy_bsr')}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="a few representative cases, fewer repeats (a couple of minutes)")
    parser.add_argument("--json", metavar="PATH", help="write all result rows as JSON here")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds per case (default 15, quick 7)")
    parser.add_argument("--only", choices=["linear", "conv"], help="run one op family only")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for weights and masks")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every case this many times, minutes apart (the list is "
                        "run through again), and report the median of each ratio: a shared "
                        "VM's slow spells then hit one round of a case, not the result")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(args.seed)
    repeats = args.repeats or (7 if args.quick else 15)
    if args.quick:
        linear_cases = [(768, 3072, m, 32, s) for m in (1, 16, 128) for s in (0.5, 0.9)]
        conv_cases = [(64, 128, 56, 1, 16, s) for s in (0.5, 0.9)]
    else:
        linear_cases = [
            (k, n, m, b, s)
            for (k, n) in LINEAR_SHAPES for m in LINEAR_M for b in BLOCKS for s in SPARSITIES
        ]
        conv_cases = [
            (ci, co, hw, bt, b, s)
            for (ci, co, hw) in CONV_SHAPES for bt in CONV_BATCH for b in BLOCKS for s in SPARSITIES
        ]
    if args.only == "linear":
        conv_cases = []
    if args.only == "conv":
        linear_cases = []

    print(f"# threads={THREADS} cpu={platform.processor() or platform.machine()} "
          f"torch={torch.__version__} target={B.default_target()}")
    start = time.time()
    rounds = []
    for k in range(args.rounds):
        if args.rounds > 1:
            print(f"# round {k + 1} of {args.rounds}")
        print(HEADER)
        rng = np.random.default_rng(args.seed)  # the same weights and masks every round
        rows = []
        dense_cache: dict = {}
        for case in linear_cases:
            rows.append(bench_linear(*case, rng, repeats, dense_cache))
            print(format_row(rows[-1]), flush=True)
        dense_cache.clear()
        for case in conv_cases:
            rows.append(bench_conv(*case, rng, repeats, dense_cache))
            print(format_row(rows[-1]), flush=True)
        rounds.append(rows)
    rows = combine_rounds(rounds)
    if args.rounds > 1:
        print(f"# median over {args.rounds} rounds")
        print(HEADER)
        for row in rows:
            print(format_row(row))
    print(f"# {len(rows)} cases in {time.time() - start:.0f} s; "
          f"max rel err {max(r['max_rel_err'] for r in rows):.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"threads": THREADS, "quick": args.quick, "rounds": args.rounds, "rows": rows},
                fh, indent=1,
            )
    return 0


RATIOS = ("vs_dense", "frac_ideal", "vs_torch_bsr", "vs_scipy_bsr")


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per case: median times and median ratios over the rounds (each round's
    ratios come from one interleaved measurement, so they are taken first, then the median)."""
    if len(rounds) == 1:
        return rounds[0]
    out = []
    for per_round in zip(*rounds, strict=True):
        row = dict(per_round[0])
        row["times_ms"] = {
            k: float(np.median([r["times_ms"][k] for r in per_round])) for k in row["times_ms"]
        }
        for key in RATIOS:
            if key in row:
                row[key] = float(np.median([r[key] for r in per_round]))
        row["max_rel_err"] = max(r["max_rel_err"] for r in per_round)
        row["rounds"] = [{k: r[k] for k in RATIOS if k in r} for r in per_round]
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
