"""Does a model compiled right after tune() in the same process run as fast as a default one?

Tunes the pruned MNIST CNN (75%, 8x8 blocks, batch 64) for a few trials per kernel, then in
the SAME process compiles it with the tuning records and times it interleaved against the
default build made before tuning; then does the same in a FRESH process from the same work
directory. Both ratios go to a JSON file. (One MiniLM run of benchmarks/tuning.py once showed
a tuned build 40x slower when compiled in the tuning process.)

    python benchmarks/tuning_same_process.py --json benchmarks/results/tuning_same_process.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import tetris_tvm  # noqa: E402
from tetris_tvm.bench import time_interleaved  # noqa: E402
from tetris_tvm.zoo import load_mnist_cnn, mnist_data  # noqa: E402


def measure(work: Path, tune_first: bool, trials: int, repeats: int) -> dict:
    torch.set_num_threads(2)
    model = load_mnist_cnn().eval()
    x = torch.from_numpy(mnist_data()[0][:64])
    default = tetris_tvm.compile(model, (x,), sparsity=0.75, block_size=(8, 8), progress=False)
    if tune_first:
        tetris_tvm.tune(model, (x,), work_dir=work, trials=trials, sparsity=0.75,
                        block_size=(8, 8), plan=default.plan, progress=False)
    tuned = tetris_tvm.compile(model, (x,), sparsity=0.75, block_size=(8, 8),
                               plan=default.plan, tuning=work, progress=False)
    xn = x.numpy()
    times = time_interleaved({"default": lambda: default.run_numpy(xn),
                              "tuned": lambda: tuned.run_numpy(xn)}, repeats=repeats)
    return {"default_ms": times["default"] * 1e3, "tuned_ms": times["tuned"] * 1e3,
            "tuned_over_default": times["tuned"] / times["default"],
            "tuned_kernels": tuned.report.totals["tuned_kernels"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--fresh", type=Path, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.fresh:
        print(json.dumps(measure(args.fresh, False, args.trials, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "tuning"
        same = measure(work, True, args.trials, args.repeats)
        child = subprocess.run([sys.executable, __file__, "--fresh", str(work),
                                "--repeats", str(args.repeats)], capture_output=True, text=True,
                               check=True)
        fresh = json.loads(child.stdout.strip().splitlines()[-1])
    out = {"same_process": same, "fresh_process": fresh, "trials": args.trials}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
