"""Does a model compiled right after tune() in the same process run as fast as a default one?

Tunes a pruned model for a few trials per kernel -- the MNIST CNN (75%, 8x8 blocks, batch 64)
or MiniLM (75%, 32x32 blocks, batch 1, seq 128) -- then in the SAME process compiles it with
the tuning records and times it interleaved against the default build made before tuning;
then does the same in a FRESH process from the same work directory. Both ratios go to a JSON
file. (One MiniLM run of benchmarks/tuning.py once showed a tuned build 40x slower when
compiled in the tuning process.)

    python benchmarks/tuning_same_process.py --json benchmarks/results/tuning_same_process.json
    python benchmarks/tuning_same_process.py --model minilm --trials 8 \
        --json benchmarks/results/tuning_same_process_minilm.json
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
from tetris_tvm.zoo import load_minilm, load_mnist_cnn, minilm_inputs, mnist_data  # noqa: E402


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor, tuple[int, int]]:
    if name == "minilm":
        model, tok = load_minilm()
        return model.eval(), minilm_inputs(tok, 1, 128), (32, 32)
    return load_mnist_cnn().eval(), torch.from_numpy(mnist_data()[0][:64]), (8, 8)


def measure(name: str, work: Path, tune_first: bool, trials: int, repeats: int) -> dict:
    torch.set_num_threads(2)
    model, x, block = _model(name)
    default = tetris_tvm.compile(model, (x,), sparsity=0.75, block_size=block, progress=False)
    if tune_first:
        tetris_tvm.tune(model, (x,), work_dir=work, trials=trials, sparsity=0.75,
                        block_size=block, plan=default.plan, progress=False)
    tuned = tetris_tvm.compile(model, (x,), sparsity=0.75, block_size=block,
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
    ap.add_argument("--model", choices=["mnist-cnn", "minilm"], default="mnist-cnn")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--fresh", type=Path, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.fresh:
        print(json.dumps(measure(args.model, args.fresh, False, args.trials, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "tuning"
        same = measure(args.model, work, True, args.trials, args.repeats)
        child = subprocess.run([sys.executable, __file__, "--fresh", str(work), "--model",
                                args.model, "--repeats", str(args.repeats)],
                               capture_output=True, text=True, check=True)
        fresh = json.loads(child.stdout.strip().splitlines()[-1])
    out = {"model": args.model, "same_process": same, "fresh_process": fresh,
           "trials": args.trials}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
