"""Throughput of one compiled model called from several threads at once (a server's request
threads) against one thread, in one process, interleaved.

Every thread runs the same model on its own inputs; each output is checked against the
single-threaded output of that input. Rows: the MNIST CNN (batch 1 and 100) and MiniLM
(batch 1 x 128 tokens), pruned to 75%.

    python benchmarks/threads.py [--threads 1 2 4] [--calls 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

import tetris_tvm
from tetris_tvm import zoo

RESULTS = Path(__file__).parent / "results" / "threads.json"


def models() -> list[tuple[str, object, tuple]]:
    cnn = zoo.load_mnist_cnn()
    images = torch.from_numpy(zoo.mnist_data()[0][:100])
    minilm, tok = zoo.load_minilm()
    ids = zoo.minilm_inputs(tok, 1, 128)
    out = []
    for batch in (1, 100):
        x = images[:batch]
        cm = tetris_tvm.compile(cnn, (x,), sparsity=0.75, block_size=8, progress=False)
        out.append((f"MNIST CNN, batch {batch}", cm, x))
    cm = tetris_tvm.compile(minilm, (ids,), sparsity=0.75, block_size=32, progress=False)
    out.append(("MiniLM, batch 1 x 128", cm, ids))
    return out


def first(out):
    return out[0] if isinstance(out, tuple) else out


def throughput(cm, inputs: list, want: list, threads: int, calls: int) -> tuple[float, int]:
    """Calls per second with ``threads`` threads making ``calls`` calls in all, and the
    number of outputs that differ from the single-threaded ones."""
    wrong = [0]
    per = calls // threads

    def work(t: int) -> None:
        for i in range(per):
            k = (t + i) % len(inputs)
            got = first(cm(inputs[k]))
            if not np.allclose(got.numpy(), want[k], rtol=1e-5, atol=1e-5):
                wrong[0] += 1

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return per * threads / (time.perf_counter() - start), wrong[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--calls", type=int, default=200, help="calls per measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    rows = []
    for name, cm, x in models():
        g = torch.Generator().manual_seed(0)
        if x.dtype.is_floating_point:
            inputs = [torch.randn(x.shape, generator=g) for _ in range(8)]
        else:
            inputs = [torch.randint(1000, 2000, x.shape, generator=g) for _ in range(8)]
        want = [first(cm(i)).numpy().copy() for i in inputs]
        calls = args.calls if "MiniLM" not in name else max(args.calls // 10, 8)
        samples: dict[int, list[float]] = {t: [] for t in args.threads}
        wrong = 0
        for _ in range(args.repeats):
            for t in args.threads:
                rate, bad = throughput(cm, inputs, want, t, calls)
                samples[t].append(rate)
                wrong += bad
        med = {t: float(np.median(v)) for t, v in samples.items()}
        row = {"model": name, "calls_per_s": med, "wrong_outputs": wrong,
               "vs_one_thread": {t: med[t] / med[args.threads[0]] for t in args.threads}}
        rows.append(row)
        print(f"{name:<24} " + "  ".join(
            f"{t} threads {med[t]:8.1f}/s ({row['vs_one_thread'][t]:.2f}x)" for t in args.threads)
            + f"  wrong outputs {wrong}", flush=True)
    result = {"machine": platform.processor() or platform.machine(),
              "cores": len(os.sched_getaffinity(0)),
              "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
